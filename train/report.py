"""`alexnet report`: several runs side by side (the paper's ablations at a glance), with the
paper's one-CNN row of Table 2 beside them, as a Markdown table, JSON, and one PNG of their
curves."""
import json
import os

from shards.errors import file_error
from shards.files import read_json
from train.plots import _agg, read_metrics

# Table 2, "1 CNN": top-1 and top-5 error on the ILSVRC-2012 validation set, with Section 4.1's
# ten-patch averaging (footnote 5 gives the single-crop figures for ILSVRC-2010 only).
PAPER_ONE_CNN = {"name": "paper: 1 CNN (Table 2)", "ten_crop_top1": 0.407, "ten_crop_top5": 0.182}
# settings that say how a run was logged or where it lies, not what it trained
BOOKKEEPING = {"shards", "out", "resume", "apply_changes", "log_every", "checkpoint_every", "num_threads",
               "devices", "device"}
NONE = "–"


def read_run(run) -> dict:
    """One run directory's settings and results; ValueError (one line) when it is not one."""
    run = str(run)
    config = os.path.join(run, "config.json")
    if not os.path.isfile(config):
        raise ValueError(f"{run}: not a run directory of `alexnet train` (no config.json)")
    try:
        settings = read_json(config)
    except (OSError, ValueError) as e:  # JSON and UnicodeDecodeError are ValueErrors
        raise file_error(e, config, "the run's settings are damaged") from None
    metrics = os.path.join(run, "metrics.jsonl")
    train, val = read_metrics(metrics) if os.path.exists(metrics) else ([], [])
    r = {"name": os.path.basename(os.path.normpath(run)), "path": run, "settings": settings,
         "train": train, "val": val, "epochs": _epochs(run, val)}
    if val:
        best = min(val, key=lambda row: row["top1_error"])
        r.update(top1=best["top1_error"], top5=best.get("top5_error"), best_epoch=best["epoch"])
    ten = _ten_crop(run)
    if ten:
        r.update(ten_crop_top1=ten["top1_error"], ten_crop_top5=ten["top5_error"], ten_crop_of=ten["checkpoint"])
    rows = train + val
    if rows:
        r["wall_s"] = max(row.get("wall_s", 0.0) for row in rows) or None
    rates = sorted(row["images_per_s"] for row in train if "images_per_s" in row)
    if rates:
        r["img_s"] = rates[len(rates) // 2]  # the median logging window
    return r


def _epochs(run, val):
    """Epochs completed: from last.pt when there is one (mapped, not read), else the validations."""
    last = os.path.join(run, "last.pt")
    if os.path.exists(last):
        from train.checkpoint import load_checkpoint

        try:
            return load_checkpoint(last, mmap=True)["epoch"]
        except ValueError:
            pass
    return val[-1]["epoch"] + 1 if val else None


def _ten_crop(run):
    """The run's latest ten-crop evaluation of best.pt, else its latest ten-crop evaluation."""
    path = os.path.join(run, "evaluations.jsonl")
    if not os.path.exists(path):
        return None
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("ten_crop") and "top1_error" in row:
                rows.append(row)
    best = [row for row in rows if row.get("checkpoint") == "best.pt"]
    return (best or rows or [None])[-1]


def report(runs) -> dict:
    """{"runs": [read_run(...)], "differ": [setting names whose values differ], "paper": row}."""
    read = [read_run(r) for r in runs]
    keys = sorted({k for r in read for k in r["settings"]} - BOOKKEEPING)
    differ = [k for k in keys if len({json.dumps(r["settings"].get(k)) for r in read}) > 1]
    return {"runs": read, "differ": differ, "paper": PAPER_ONE_CNN}


def _pct(v):
    return NONE if v is None else f"{100 * v:.1f}%"


def format_markdown(rep) -> str:
    """The table `alexnet report` prints."""
    head = ["run", "settings", "epochs", "top-1", "top-5", "ten-crop top-1", "ten-crop top-5", "wall", "img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rep["runs"]:
        settings = ", ".join(f"{k} {r['settings'].get(k)}" for k in rep["differ"]) or NONE
        wall = NONE if r.get("wall_s") is None else f"{r['wall_s']:.0f} s"
        img_s = NONE if r.get("img_s") is None else f"{r['img_s']:.0f}"
        cells = [r["name"], settings, NONE if r["epochs"] is None else str(r["epochs"]), _pct(r.get("top1")),
                 _pct(r.get("top5")), _pct(r.get("ten_crop_top1")), _pct(r.get("ten_crop_top5")), wall, img_s]
        lines.append("| " + " | ".join(cells) + " |")
    p = rep["paper"]
    lines.append(f"| {p['name']} | ImageNet, 90 epochs | – | – | – | {_pct(p['ten_crop_top1'])} | "
                 f"{_pct(p['ten_crop_top5'])} | – | – |")
    lines.append("")
    lines.append("top-1/top-5: the best validation top-1 error during training (centre crop) and the top-5 "
                 "error of that validation; ten-crop: from `alexnet eval --ten-crop` of the run's checkpoints.")
    return "\n".join(lines)


def to_json(rep) -> dict:
    """The report without the metrics rows."""
    slim = [{k: v for k, v in r.items() if k not in ("train", "val")} for r in rep["runs"]]
    return {"runs": slim, "differ": rep["differ"], "paper": rep["paper"]}


def plot_report(rep, path):
    """Training loss against the step and validation top-1 error against the epoch, one colour
    per run, in one PNG at `path`."""
    import numpy as np

    plt = _agg()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), facecolor="white")
    for i, r in enumerate(rep["runs"]):
        colour = f"C{i % 10}"
        label = r["name"]  # the table says the settings
        if r["train"]:
            steps = np.array([row["step"] for row in r["train"]], float)
            loss = np.array([row["loss"] for row in r["train"]], float)
            w = max(1, len(loss) // 50)  # a moving average over ~2% of the run, so the trend reads
            if w > 1:
                loss, steps = np.convolve(loss, np.ones(w) / w, mode="valid"), steps[w - 1:]
            a1.plot(steps, loss, color=colour, lw=1.2, label=label)
        if r["val"]:
            a2.plot([row["epoch"] + 1 for row in r["val"]], [100 * row["top1_error"] for row in r["val"]], "o-",
                    color=colour, ms=3, lw=1.2, label=label)
    a1.set(xlabel="step", ylabel="training loss", title="training loss")
    a2.set(xlabel="epoch", ylabel="top-1 error (%)", title="validation top-1 error (centre crop)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        if a.lines:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
