"""Drawing the figures of `train.figures` (matplotlib, Agg backend): Figure 3's kernel blocks,
Figure 4's predictions and neighbours, and the training curves. Pure drawing: arrays in, PNG out.
"""
import json
import math

import numpy as np


def _agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str, limit: int = 22) -> str:
    """The first synonym of an ImageNet class name, shortened to fit a figure cell."""
    s = name.split(",")[0].strip() or name
    return s if len(s) <= limit else s[: limit - 1] + "…"


def kernel_mosaic(kernels, cols=16, scale=4, gap=3, background=1.0):
    """One block of kernels (K×3×h×w) as an RGB float image in [0,1].

    Each kernel is normalised by its own min/max, enlarged `scale` times by pixel repetition and
    placed on a grid of `cols` columns with `gap` pixels of `background` between kernels and
    around the block. Returns (mosaic H×W×3, (rows, cols)).
    """
    k = np.asarray(kernels, dtype=np.float64)
    n, c, h, w = k.shape
    lo = k.reshape(n, -1).min(axis=1)[:, None, None, None]
    hi = k.reshape(n, -1).max(axis=1)[:, None, None, None]
    span = hi - lo
    norm = np.where(span > 0, (k - lo) / np.where(span > 0, span, 1.0), 0.5)
    norm = norm.transpose(0, 2, 3, 1)  # K×h×w×3
    if c == 1:
        norm = np.repeat(norm, 3, axis=3)
    norm = norm.repeat(scale, axis=1).repeat(scale, axis=2)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    th, tw = h * scale, w * scale
    mosaic = np.full((rows * th + (rows + 1) * gap, cols * tw + (cols + 1) * gap, 3), background)
    for i in range(n):
        r, cc = divmod(i, cols)
        y, x = gap + r * (th + gap), gap + cc * (tw + gap)
        mosaic[y : y + th, x : x + tw] = norm[i]
    return mosaic, (rows, cols)


def plot_kernels(weight, out_png, columns=2, cols=16, scale=None, gap=3, title_px=28, places=None):
    """Figure 3: conv1 kernels (K×3×11×11, column 1 first) as one block per column, stacked.

    The mosaics are placed pixel for pixel (`figimage`), so the nearest-neighbour upscaling is
    what ends up in the PNG; `scale` defaults to about 1000 px a row (6× for the paper's 16
    kernels a row, more for fewer), so the kernels read at a glance as in the paper. `places`
    names where each column ran (e.g. "cuda:0", "cpu"), in its block's title. Returns the
    layout: {"blocks": [{"title", "kernels", "grid", "box": (x0, y0, x1, y1) in PNG pixels}],
    "size": (W, H)}.
    """
    plt = _agg()
    w = weight.detach().float().cpu().numpy() if hasattr(weight, "detach") else np.asarray(weight)
    if w.shape[0] % columns:
        raise ValueError(f"{w.shape[0]} kernels do not split into {columns} columns")
    per = w.shape[0] // columns
    if scale is None:  # 6× for the paper's 16 kernels a row; larger for narrow models (~1000 px)
        scale = max(6, min(16, 1000 // (min(cols, per) * w.shape[-1])))
    mosaics = [kernel_mosaic(w[i * per : (i + 1) * per], cols=cols, scale=scale, gap=gap) for i in range(columns)]
    width = max(m.shape[1] for m, _ in mosaics)
    height = sum(title_px + m.shape[0] for m, _ in mosaics) + gap * (columns - 1) * 2
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    blocks = []
    top = 0  # from the top of the PNG
    for i, (m, grid) in enumerate(mosaics):
        place = places[i] if places and i < len(places) else None
        title = f"column {i + 1}" + (f" (on {place})" if place else "")
        fig.text(0.5, 1 - (top + title_px * 0.55) / height, title, ha="center", va="center", fontsize=11)
        y0 = top + title_px
        # figimage's offsets count from the bottom-left corner, and its rows from the bottom up
        fig.figimage(m, xo=0, yo=height - (y0 + m.shape[0]), origin="upper")
        blocks.append({"title": title, "kernels": per, "grid": list(grid), "box": (0, y0, m.shape[1], y0 + m.shape[0])})
        top = y0 + m.shape[0] + gap * 2
    fig.savefig(out_png, dpi=dpi, facecolor="white")
    plt.close(fig)
    return {"blocks": blocks, "size": (width, height), "scale": scale}


def plot_predictions(images, labels, top_probs, top_idx, class_names, out_png, cols=4):
    """Figure 4 (left): each image, its true label under it, and its top-5 labels as bars.

    The true class's bar is red when it is among the five; the others are grey-blue.
    """
    plt = _agg()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    cell_w = 2.5
    fig = plt.figure(figsize=(cols * cell_w, rows * cell_w * 1.62), facecolor="white")
    gs = fig.add_gridspec(rows * 2, cols, height_ratios=[2.5, 1.3] * rows, hspace=0.12, wspace=0.12,
                          left=0.02, right=0.98, top=0.98, bottom=0.02)
    for j in range(n):
        r, c = divmod(j, cols)
        ax = fig.add_subplot(gs[2 * r, c])
        ax.imshow(images[j], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        truth = int(labels[j])
        ax.set_xlabel(_short(class_names[truth], 30), fontsize=9, fontweight="bold", labelpad=3)
        bx = fig.add_subplot(gs[2 * r + 1, c])
        probs = [float(p) for p in top_probs[j]]
        idx = [int(i) for i in top_idx[j]]
        ys = np.arange(len(idx))
        colours = ["#d62728" if i == truth else "#9fb7d4" for i in idx]
        bx.barh(ys, probs, height=0.8, color=colours)
        for y, (p, i) in enumerate(zip(probs, idx)):
            bx.text(0.02, y, _short(class_names[i], 24), va="center", ha="left", fontsize=7.5,
                    fontweight="bold" if i == truth else "normal")
            bx.text(0.99, y, f"{p:.2f}", va="center", ha="right", fontsize=6.5)
        bx.set_xlim(0, 1)
        bx.set_ylim(len(idx) - 0.5, -0.5)  # most probable on top
        bx.set_xticks([])
        bx.set_yticks([])
        for side in ("top", "right", "left"):
            bx.spines[side].set_visible(False)
    fig.savefig(out_png, dpi=100, facecolor="white")
    plt.close(fig)


def plot_neighbours(query_images, query_labels, nb_images, nb_labels, class_names, out_png):
    """Figure 4 (right): each row a validation image, then its nearest training images.

    A neighbour's class name is green when it matches the query's true class.
    """
    plt = _agg()
    nq, k = len(query_images), nb_images.shape[1]
    size, header = 1.45, 0.5  # inches per image, inches above the first row
    height = size * 1.18 * nq + header
    fig = plt.figure(figsize=(size * (k + 1.2), height), facecolor="white")
    gs = fig.add_gridspec(nq, k + 2, width_ratios=[1, 0.15] + [1] * k, wspace=0.05, hspace=0.28,
                          left=0.01, right=0.99, top=1 - header / height, bottom=0.01)
    first = last = query = None
    for r in range(nq):
        truth = int(query_labels[r])
        ax = fig.add_subplot(gs[r, 0])
        query = query or ax
        ax.imshow(query_images[r], interpolation="nearest")
        ax.set_title(_short(class_names[truth], 18), fontsize=7.5, fontweight="bold", pad=2)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_edgecolor("black")
            s.set_linewidth(1.5)
        for c in range(k):
            ax = fig.add_subplot(gs[r, c + 2])
            first = first or ax
            last = ax if r == 0 else last
            ax.imshow(nb_images[r, c], interpolation="nearest")
            lab = int(nb_labels[r, c])
            ax.set_title(_short(class_names[lab], 18), fontsize=7, pad=2,
                         color="#1a7f37" if lab == truth else "#555555")
            ax.axis("off")
    y = 1 - 0.1 / height

    def centre(a, b):
        return (a.get_position().x0 + b.get_position().x1) / 2

    fig.text(centre(query, query), y, "validation", ha="center", va="top", fontsize=9)
    if first is not None:
        fig.text(centre(first, last), y, f"{k} nearest training images (fc7 features, Euclidean distance)",
                 ha="center", va="top", fontsize=9)
    fig.savefig(out_png, dpi=100, facecolor="white")
    plt.close(fig)


def read_metrics(metrics_path):
    """(training rows, validation rows) of a metrics.jsonl; blank or torn lines are skipped."""
    train, val = [], []
    with open(metrics_path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # e.g. a last line cut short by a crash
            if not isinstance(row, dict) or "step" not in row:
                continue
            if "top1_error" in row:
                val.append(row)
            elif "loss" in row:
                train.append(row)
    return train, val


def plot_curves(metrics_path, out_png):
    """Training loss (and learning rate) and validation top-1/top-5 error against the step."""
    plt = _agg()
    train, val = read_metrics(metrics_path)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), facecolor="white")
    if train:
        steps = np.array([r["step"] for r in train], float)
        loss = np.array([r["loss"] for r in train], float)
        a1.plot(steps, loss, color="#9fb7d4" if len(loss) > 50 else "#1f77b4", lw=0.8, label="training loss")
        if len(loss) > 50:  # a moving average over ~2% of the run, so the trend is readable
            w = max(5, len(loss) // 50)
            smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
            a1.plot(steps[w - 1 :], smooth, color="#1f77b4", lw=1.5, label=f"training loss (mean of {w})")
    if val and any("loss" in r for r in val):
        vr = [r for r in val if "loss" in r]
        a1.plot([r["step"] for r in vr], [r["loss"] for r in vr], "o-", color="#ff7f0e", ms=3, lw=1.2,
                label="validation loss")
    a1.set_xlabel("step")
    a1.set_ylabel("cross-entropy loss")
    a1.set_title("loss")
    a1.grid(alpha=0.3)
    lr_rows = [r for r in train if "lr" in r]
    lr_axis = None
    if lr_rows:
        a3 = a1.twinx()
        a3.plot([r["step"] for r in lr_rows], [r["lr"] for r in lr_rows], "--", color="#7f7f7f", lw=1, label="learning rate")
        lrs = [r["lr"] for r in lr_rows]
        if min(lrs) > 0 and max(lrs) / min(lrs) > 5:
            a3.set_yscale("log")
        elif max(lrs) > 0:  # from 0, so that a constant or gently changing rate reads as such
            a3.set_ylim(0, 1.25 * max(lrs))
        a3.set_ylabel("learning rate" + (f" (constant {lrs[0]:g})" if min(lrs) == max(lrs) else ""), color="#7f7f7f")
        lr_axis = tuple(float(v) for v in a3.get_ylim())
        h1, l1 = a1.get_legend_handles_labels()
        h3, l3 = a3.get_legend_handles_labels()
        a1.legend(h1 + h3, l1 + l3, fontsize=8, loc="lower left")
    elif a1.lines:
        a1.legend(fontsize=8, loc="lower left")
    if not train and not val:
        a1.text(0.5, 0.5, "no rows in metrics.jsonl", ha="center", va="center", transform=a1.transAxes)
    if val:
        vs = [r["step"] for r in val]
        a2.plot(vs, [100 * r["top1_error"] for r in val], "o-", ms=3, label="top-1 error")
        if any("top5_error" in r for r in val):
            v5 = [r for r in val if "top5_error" in r]
            a2.plot([r["step"] for r in v5], [100 * r["top5_error"] for r in v5], "s-", ms=3, label="top-5 error")
        a2.set_ylim(0, 100)
        a2.legend(fontsize=8)
    else:
        a2.text(0.5, 0.5, "no validation rows", ha="center", va="center", transform=a2.transAxes)
    a2.set_xlabel("step")
    a2.set_ylabel("error (%)")
    a2.set_title("validation error (centre crop)")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100, facecolor="white")
    plt.close(fig)
    return {"train_rows": len(train), "val_rows": len(val), "lr_axis": lr_axis}
