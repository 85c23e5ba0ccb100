"""The paper's qualitative figures (Section 6.1, Figures 3 and 4) and the training curves.

`make_figures(shards, checkpoint, out_dir)` writes, from a checkpoint and its shard directory:

- `kernels.png` (Figure 3): the conv1 kernels, column 1 (GPU 1) in the top block and
  column 2 (GPU 2) in the bottom block, each kernel stretched to [0,1] by its own min/max
  and enlarged with nearest-neighbour upscaling (pixels are placed exactly, not resampled).
- `predictions.png` (Figure 4, left): validation images, the true label under each, and the
  five most probable labels as horizontal bars; the true class's bar is red when it is in the
  top 5. `predictions.json` holds the same numbers.
- `neighbours.png` (Figure 4, right): validation images in the first column, then the six
  training images whose last-hidden-layer (fc7) features are nearest in Euclidean distance.
  `neighbours.json` holds the labels and distances.
- `curves.png`: training loss and validation top-1/top-5 error against the step, from the
  `metrics.jsonl` next to the checkpoint (skipped, with a note, when there is none).

Images are shown as the network sees them: the loader's centre crop (offset 16, no flip) with
the per-pixel mean image added back and clipped to 0–255. The nearest-neighbour search streams
over the training split once, keeping only the current best k per query, so it needs no memory
for the 1.2 M × 4096 training features.
"""
import json
import math
import os

import numpy as np

NEIGHBOURS_K = 6  # the paper's six training images per query
CROP = 224


# --------------------------------------------------------------------------------------------
# helpers


def _agg():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(name: str, limit: int = 22) -> str:
    """The first synonym of an ImageNet class name, shortened to fit a figure cell."""
    s = name.split(",")[0].strip() or name
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _devices_for(device):
    """(model devices for AlexNet, the device the inputs live on)."""
    if device is None:
        return None, "cpu"
    if isinstance(device, (tuple, list)):
        devs = tuple(str(d) for d in device)
    else:
        devs = tuple(d.strip() for d in str(device).split(",") if d.strip())
    if not devs or devs == ("cpu",):
        return None, "cpu"
    return devs, devs[0]


def mean_crop(shards, manifest=None):
    """The 224×224×3 centre crop of the training mean image, in 0–255 units (float32)."""
    from shards import Manifest

    manifest = manifest or Manifest.load(shards)
    if manifest.stats is None:
        raise ValueError(f"{shards}: the manifest has no training statistics (mean image)")
    mean = np.load(os.path.join(str(shards), manifest.stats.mean_image)).astype(np.float32)
    off = (mean.shape[0] - CROP) // 2
    return mean[off : off + CROP, off : off + CROP] * 255.0


def to_display(images, mean_crop_255):
    """Model inputs (N×3×224×224, 0–255 minus the mean) → uint8 N×224×224×3 for display."""
    x = images.detach().float().cpu().numpy().transpose(0, 2, 3, 1) + mean_crop_255[None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Figure 3: conv1 kernels


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


def plot_kernels(weight, out_png, columns=2, cols=16, scale=None, gap=3, title_px=28):
    """Figure 3: conv1 kernels (K×3×11×11, column 1 first) as one block per column, stacked.

    The mosaics are placed pixel for pixel (`figimage`), so the nearest-neighbour upscaling is
    what ends up in the PNG; `scale` defaults to 4 for 16 kernels a row, more for fewer. Returns the layout: {"blocks": [{"title", "kernels", "grid",
    "box": (x0, y0, x1, y1) in PNG pixels}], "size": (W, H)}.
    """
    plt = _agg()
    w = weight.detach().float().cpu().numpy() if hasattr(weight, "detach") else np.asarray(weight)
    if w.shape[0] % columns:
        raise ValueError(f"{w.shape[0]} kernels do not split into {columns} columns")
    per = w.shape[0] // columns
    if scale is None:  # 4× for the paper's 16 kernels a row; larger for narrow models (≥ ~600 px)
        scale = max(4, min(10, 600 // (min(cols, per) * w.shape[-1])))
    mosaics = [kernel_mosaic(w[i * per : (i + 1) * per], cols=cols, scale=scale, gap=gap) for i in range(columns)]
    width = max(m.shape[1] for m, _ in mosaics)
    height = sum(title_px + m.shape[0] for m, _ in mosaics) + gap * (columns - 1) * 2
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    blocks = []
    top = 0  # from the top of the PNG
    for i, (m, grid) in enumerate(mosaics):
        title = f"column {i + 1} (GPU {i + 1})"
        fig.text(0.5, 1 - (top + title_px * 0.55) / height, title, ha="center", va="center", fontsize=11)
        y0 = top + title_px
        # figimage's offsets count from the bottom-left corner, and its rows from the bottom up
        fig.figimage(m, xo=0, yo=height - (y0 + m.shape[0]), origin="upper")
        blocks.append({"title": title, "kernels": per, "grid": list(grid), "box": (0, y0, m.shape[1], y0 + m.shape[0])})
        top = y0 + m.shape[0] + gap * 2
    fig.savefig(out_png, dpi=dpi, facecolor="white")
    plt.close(fig)
    return {"blocks": blocks, "size": (width, height), "scale": scale}


# --------------------------------------------------------------------------------------------
# Figure 4, left: top-5 predictions


def top_predictions(model, inputs, k=5):
    """(probabilities N×k, class indices N×k) of the model's softmax, most probable first."""
    import torch

    with torch.no_grad():
        probs = model(inputs).float().softmax(dim=1)
    p, i = probs.topk(min(k, probs.shape[1]), dim=1)
    return p.cpu(), i.cpu()


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


# --------------------------------------------------------------------------------------------
# Figure 4, right: nearest neighbours in fc7 space


def nearest(query_feats, train_feats, k):
    """The k training features nearest each query in Euclidean distance, nearest first.

    Returns (distances Q×k, indices Q×k into `train_feats`); k is capped at the number of
    training rows. Computed in float64 from the differences themselves (no |a|²+|b|²−2ab
    cancellation), ties broken by the lower index. NumPy in, NumPy out; torch in, torch out.
    """
    import torch

    as_numpy = not isinstance(query_feats, torch.Tensor)
    q = torch.as_tensor(query_feats).double()
    t = torch.as_tensor(train_feats).double().to(q.device)
    if q.dim() != 2 or t.dim() != 2 or q.shape[1] != t.shape[1]:
        raise ValueError(f"features must be Q×D and N×D, got {tuple(q.shape)} and {tuple(t.shape)}")
    k = min(int(k), t.shape[0])
    d = torch.cdist(q, t, compute_mode="donot_use_mm_for_euclid_dist")
    d, i = torch.sort(d, dim=1, stable=True)
    d, i = d[:, :k], i[:, :k]
    if as_numpy:
        return d.cpu().numpy(), i.cpu().numpy()
    return d, i


class NeighbourSearch:
    """Streaming k-nearest search: feed training batches, keep the best k per query.

    Holds only the k best candidates' distances, indices, labels and display images, so the
    training set's features are never all in memory.
    """

    def __init__(self, query_feats, k=NEIGHBOURS_K):
        import torch

        self.q = query_feats.detach().double()
        self.k = k
        nq = self.q.shape[0]
        self.dist = torch.empty(nq, 0, dtype=torch.float64)
        self.index = torch.empty(nq, 0, dtype=torch.int64)
        self.labels = torch.empty(nq, 0, dtype=torch.int64)
        self.images = np.zeros((nq, 0, CROP, CROP, 3), np.uint8)
        self.seen = 0

    def add(self, feats, labels, images, mean_crop_255):
        """One batch: features B×D, labels B, model inputs B×3×224×224 (for display)."""
        import torch

        d, i = nearest(self.q, feats.detach().to(self.q.device), self.k)
        d, i = d.cpu(), i.cpu()
        want = sorted(set(i.flatten().tolist()))
        shown = dict(zip(want, to_display(images[want], mean_crop_255)))
        cand_imgs = np.stack([np.stack([shown[j] for j in row]) for row in i.tolist()])
        labels = labels.detach().cpu().long()
        dist = torch.cat([self.dist, d], dim=1)
        index = torch.cat([self.index, i + self.seen], dim=1)
        labs = torch.cat([self.labels, labels[i]], dim=1)
        imgs = np.concatenate([self.images, cand_imgs], axis=1)
        order = torch.sort(dist, dim=1, stable=True).indices[:, : self.k]  # earlier batches win ties
        self.dist = torch.gather(dist, 1, order)
        self.index = torch.gather(index, 1, order)
        self.labels = torch.gather(labs, 1, order)
        self.images = np.stack([imgs[r, order[r].numpy()] for r in range(imgs.shape[0])])
        self.seen += feats.shape[0]


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


# --------------------------------------------------------------------------------------------
# training curves


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
    if lr_rows:
        a3 = a1.twinx()
        a3.plot([r["step"] for r in lr_rows], [r["lr"] for r in lr_rows], "--", color="#7f7f7f", lw=1, label="learning rate")
        lrs = [r["lr"] for r in lr_rows]
        if min(lrs) > 0 and max(lrs) / min(lrs) > 5:
            a3.set_yscale("log")
        a3.set_ylabel("learning rate", color="#7f7f7f")
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
    return {"train_rows": len(train), "val_rows": len(val)}


# --------------------------------------------------------------------------------------------
# all of them


def _take(loader, n):
    """The first n (inputs, labels) of a loader, concatenated (inputs stay on their device)."""
    import torch

    xs, ys, have = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        have += x.shape[0]
        if have >= n:
            break
    if not xs:
        return None, None
    return torch.cat(xs)[:n], torch.cat(ys)[:n].long()


def make_figures(shards, checkpoint, out_dir, device="cpu", n_predictions=8, n_neighbours=4, n_train=None,
                 batch_size=64, k=NEIGHBOURS_K, progress=False):
    """Write the figures of Section 6.1 for a checkpoint; returns {name: path}.

    `n_predictions` validation images for predictions.png, `n_neighbours` validation queries
    (rows) for neighbours.png, each with its `k` (6) nearest training images, searched over the
    first `n_train` training images (all when None) read in shard order as centre crops without
    flips (`neighbours.json` indices are positions in that order).
    `device`: "cpu", "cuda", "cuda:1", or two devices ("cuda:0,cuda:1") for the two columns.
    Names: kernels, predictions, predictions_json, neighbours, neighbours_json, curves; when a
    figure cannot be made (no metrics.jsonl, no validation or training split) its name is
    absent and `notes` (a list of strings) says why.
    """
    import torch

    from shards import Manifest
    from train.checkpoint import model_from_checkpoint

    shards, checkpoint, out_dir = str(shards), str(checkpoint), str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    manifest = Manifest.load(shards)
    names = [c.name or c.wnid for c in manifest.classes]
    devices, in_device = _devices_for(device)
    model, state = model_from_checkpoint(checkpoint, devices=devices)
    model.eval()
    out, notes = {}, []

    # Figure 3
    path = os.path.join(out_dir, "kernels.png")
    plot_kernels(model.conv1_weight(), path, columns=2)
    out["kernels"] = path

    mcrop = mean_crop(shards, manifest)
    val_x = val_y = None
    want = max(n_predictions, n_neighbours)
    if want <= 0:
        pass
    elif "val" in manifest.splits and manifest.splits["val"].samples > 0:
        from pipeline import build_loader  # train never opens a tar: the pipeline reads the shards

        val = build_loader(shards, "val", batch_size, in_device)
        val_x, val_y = _take(val, want)
        del val
    else:
        notes.append("predictions and neighbours skipped: the shard directory has no validation split")

    # Figure 4, left
    if val_x is not None and n_predictions > 0:
        x, y = val_x[:n_predictions], val_y[:n_predictions]
        probs, idx = top_predictions(model, x, k=5)
        path = os.path.join(out_dir, "predictions.png")
        plot_predictions(to_display(x, mcrop), y.tolist(), probs.tolist(), idx.tolist(), names, path)
        out["predictions"] = path
        jpath = os.path.join(out_dir, "predictions.json")
        with open(jpath, "w") as f:
            json.dump([{"position": j, "label": int(y[j]), "top5": idx[j].tolist(), "probs": probs[j].tolist()}
                       for j in range(len(y))], f, indent=1)
        out["predictions_json"] = jpath

    # Figure 4, right
    if val_x is not None and n_neighbours > 0:
        if "train" not in manifest.splits or manifest.splits["train"].samples == 0:
            notes.append("neighbours skipped: the shard directory has no training split")
        else:
            qx, qy = val_x[:n_neighbours], val_y[:n_neighbours]
            with torch.no_grad():
                _, qf = model(qx, return_features=True)
            search = NeighbourSearch(qf.float(), k=k)
            # validation mode: centre crops, no flips, no lighting, shard order, every image once
            train = build_loader(shards, "train", batch_size, in_device, augment=False, lighting=0.0,
                                 shuffle=False, drop_last=False)
            limit = n_train if n_train is not None else manifest.splits["train"].samples
            bar = None
            if progress:
                try:
                    from tqdm import tqdm

                    bar = tqdm(total=limit, desc="fc7 features", unit="img")
                except ImportError:
                    pass
            with torch.no_grad():
                for x, y in train:
                    if search.seen >= limit:
                        break
                    x, y = x[: limit - search.seen], y[: limit - search.seen]
                    _, f = model(x, return_features=True)
                    search.add(f.float(), y, x, mcrop)
                    if bar is not None:
                        bar.update(x.shape[0])
            if bar is not None:
                bar.close()
            del train
            path = os.path.join(out_dir, "neighbours.png")
            plot_neighbours(to_display(qx, mcrop), qy.tolist(), search.images, search.labels.numpy(), names, path)
            out["neighbours"] = path
            jpath = os.path.join(out_dir, "neighbours.json")
            with open(jpath, "w") as f:
                json.dump({"train_images_searched": search.seen,
                           "queries": [{"position": r, "label": int(qy[r]),
                                        "neighbours": search.index[r].tolist(),
                                        "labels": search.labels[r].tolist(),
                                        "distances": search.dist[r].tolist()} for r in range(len(qy))]},
                          f, indent=1)
            out["neighbours_json"] = jpath

    # curves
    run_dir = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(metrics):
        path = os.path.join(out_dir, "curves.png")
        plot_curves(metrics, path)
        out["curves"] = path
    else:
        notes.append(f"curves skipped: no metrics.jsonl in {run_dir}")
    if notes:
        out["notes"] = notes
    return out
