"""`alexnet profile`: is the GPU fed? (docs/DESIGN.md, "Profile")

Measured in one run, on the same shards, at the same batch size and precision:
  pipeline    the DALI training loader alone (img/s)
  model       the trainer's own training step (train.step) alone, on synthetic input (img/s)
  end_to_end  the loader feeding the training steps (img/s, and the fraction of step time spent
              waiting for data); with `epochs`, over whole epochs, each epoch's figures apart
              and the data wait of the second and later epochs (after the first pipeline's
              start-up, with each next epoch's pipeline build in them)
  peer        the stock webdataset + PIL + DataLoader reference loader doing the same work (img/s)
Warm-up batches are excluded from every figure. Per-batch rates are kept for the plot.
"""
import os
import time

import torch

from shards.format import TRAIN
from pipeline.stages import Clock, take, time_loader
from train.step import (StepStream, build_model, build_optimizer, compiled, input_dtype_for, memory_format_for,
                        train_step, uses_cuda_graphs)


def _time_steps(step, batches, warmup, device, raw=False):
    """`_summary` of training steps on `batches` (an iterable of (images, labels)), warm-up
    excluded, with the fraction of the steps' time the host waited for the next batch; `raw`:
    also the per-batch seconds of waiting and of the whole step, and the batch sizes."""
    clock, waits, sizes = Clock(device), [], []
    batches = iter(batches)
    i = 0
    while True:
        t = time.perf_counter()
        try:
            images, labels = next(batches)  # the host blocks here only when data is late
        except StopIteration:
            break
        if i >= warmup:
            waits.append(time.perf_counter() - t)
            sizes.append(images.shape[0])
        step(images, labels)
        if i >= warmup - 1:
            clock.mark()
        i += 1
    times = clock.intervals()
    out = {**_summary(times, sizes), "data_wait": _wait_share(waits, times, range(len(times)))}
    return (out, (waits, times, sizes)) if raw else out


def _wait_share(waits, times, batches) -> float:
    """The fraction of those batches' step time the host spent waiting for data."""
    return min(1.0, sum(waits[i] for i in batches) / sum(times[i] for i in batches))


def _time_epochs(step, loader, epochs, warmup, device):
    """`_time_steps` over `epochs` whole epochs of `loader` (warm-up batches at the start of the
    first excluded), with "epochs": each epoch's img/s, data wait and wait for its first batch
    (its pipeline's start-up; on a GPU each is built in the background during the epoch
    before, the first during the profile's earlier measurements), and "data_wait_later": the
    data wait over the second and later epochs."""
    if epochs * len(loader) <= warmup:
        raise ValueError(f"--epochs {epochs} of {len(loader)} batches leave nothing after --warmup {warmup}: "
                         "use more epochs or fewer warm-up batches")
    epoch_of, first = [], []

    def batches():
        for e in range(epochs):
            t = time.perf_counter()
            for batch in loader:
                if len(first) == e:
                    first.append(time.perf_counter() - t)
                epoch_of.append(e)
                yield batch

    out, (waits, times, sizes) = _time_steps(step, batches(), warmup, device, raw=True)
    epoch_of = epoch_of[warmup:]
    rows = []
    for e in range(epochs):
        mine = [i for i, k in enumerate(epoch_of) if k == e]
        if not mine:
            continue
        rows.append({"epoch": e + 1, "batches": len(mine),
                     "img_s": sum(sizes[i] for i in mine) / sum(times[i] for i in mine),
                     "data_wait": _wait_share(waits, times, mine), "first_batch_wait_s": first[e]})
    later = [i for i, k in enumerate(epoch_of) if k >= 1]
    if later:
        out["data_wait_later"] = _wait_share(waits, times, later)
    out["epochs"] = rows
    return out


def _timing(t) -> dict:
    """`_summary` of a `pipeline.stages.LoaderTiming`, with its warm-up and first batch."""
    return {**_summary(t.per_batch_s, t.sizes), "warmup_batches": t.warmup, "first_batch_s": t.first_batch_s}


def _summary(times, sizes):
    total = sum(times)
    return {"img_s": sum(sizes) / total if total else 0.0, "batches": len(times),
            "per_batch_img_s": [s / t for s, t in zip(sizes, times)]}


def run_profile(cfg, devices=None, batches=20, warmup=3, peer_workers=None, progress=print, stages=False,
                epochs=None, trace=None):
    """The four measurements of the module docstring, for the model and loader that `cfg` (a
    TrainConfig: shards, width, init, batch size, amp, channels-last, compile and its mode,
    conv) describes, on `devices` (train.launch.resolve_devices; None for the CPU). The model
    runs the trainer's own step. `stages`: also time the training graph cut after each stage
    (pipeline.stages), under result["stages"]. `epochs`: the end-to-end figure over that many
    whole epochs (`_time_epochs`) instead of `batches` batches."""
    from pipeline import build_loader
    from pipeline.draws import CROP
    from pipeline.reference import build_reference_loader
    from shards import Manifest

    device = torch.device(devices[0] if devices else "cpu")
    warmup = max(1, warmup)  # the first timed interval starts at the end of a warm-up batch
    manifest = Manifest.load(cfg.shards)
    mf = memory_format_for(cfg, device)
    peer_workers = peer_workers or min(16, os.cpu_count() or 1)
    n = cfg.batch_size
    result = {"device": str(device) if devices is None or len(devices) == 1 else ",".join(devices),
              "batch_size": n, "width": cfg.width, "batches": batches, "warmup_batches": warmup,
              "amp_bf16": bool(cfg.amp and device.type == "cuda"),
              "compile": cfg.compile_mode if cfg.compile else None, "conv": cfg.conv}

    loader = build_loader(cfg.shards, TRAIN, n, device=str(device), memory_format=mf, mean=cfg.input_norm,
                          lighting=cfg.lighting, handoff=cfg.handoff, dtype=input_dtype_for(cfg, device),
                          cpu_decode=cfg.cpu_decode if device.type == "cuda" else 0.0,
                          cache_dir=cfg.cache_dir, cache_limit=cfg.cache_limit)  # first: its errors come first
    progress(f"profile: pipeline alone ({warmup} warm-up + {batches} batches of {n})")
    result["pipeline"] = _timing(time_loader(loader, batches, warmup, device))
    if loader.cache is not None:  # s3://: the shard cache's download rate beside the loader's
        result["pipeline"]["download_MB_s"] = loader.cache.rate() / 1e6
    if stages:
        from pipeline.stages import profile_stages

        result["stages"] = profile_stages(loader, batches, warmup, progress)

    progress("profile: model alone on synthetic input")
    model = build_model(cfg, manifest.num_classes, devices)
    net, optimizer, graphs = compiled(model, cfg), build_optimizer(model, cfg), uses_cuda_graphs(cfg)

    stream = StepStream(device, cfg.step_stream)

    def step(images, labels):
        with stream():
            train_step(net, optimizer, images, labels, device, cfg.amp, graphs)

    scale = 60.0 if cfg.input_norm == "image" else 1.0  # the loader's output scale
    x = torch.randn(n, 3, CROP, CROP, device=device).mul_(scale).to(input_dtype_for(cfg, device)).contiguous(
        memory_format=mf)  # what the loader hands over
    y = torch.randint(0, manifest.num_classes, (n,), device=device)
    result["model"] = _time_steps(step, ((x, y) for _ in range(batches + warmup)), warmup, device)

    if epochs:
        progress(f"profile: pipeline feeding the model over {epochs} epochs of {len(loader)} batches")
        result["end_to_end"] = _time_epochs(step, loader, epochs, warmup, device)
    else:
        progress("profile: pipeline feeding the model")
        result["end_to_end"] = _time_steps(step, take(loader, batches + warmup), warmup, device)
    if trace:
        from train.trace import TRACE_STEPS, trace_steps

        progress(f"profile: trace of {TRACE_STEPS} fed steps -> {trace}")
        result["trace"] = trace_steps(step, take(loader, TRACE_STEPS + 2), trace, device, skip=2)
    loader.close()
    result["data_wait"] = result["end_to_end"]["data_wait"]
    result["fed_ratio"] = result["end_to_end"]["img_s"] / result["model"]["img_s"]  # what training loses to its input

    progress(f"profile: reference loader (webdataset + PIL + DataLoader, {peer_workers} workers)")
    peer = build_reference_loader(cfg.shards, TRAIN, n, num_workers=peer_workers, mean=cfg.input_norm,
                                  cache_dir=cfg.cache_dir, cache_limit=cfg.cache_limit)  # s3://: the same cache
    # every worker's first batch is built during start-up: warm up until all have delivered
    peer_warmup = max(warmup, peer_workers)
    result["peer"] = _timing(time_loader(peer, batches, peer_warmup, device))
    result["peer"].update(workers=peer_workers)
    return result


def plot_profile(result, path):
    """img/s per batch of each measurement, one panel each, every panel on its own scale (a
    reference loader's per-batch spikes no longer flatten the others), with each mean as a
    dashed line; the title gives the verdict (fed / model alone) and the data wait."""
    import matplotlib.pyplot as plt

    fig = profile_figure(result)
    fig.savefig(path)
    plt.close(fig)
    return path


def profile_figure(result):
    """The figure of `plot_profile`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = (("pipeline", "pipeline alone", "#1f77b4"), ("model", "model alone (synthetic input)", "#d62728"),
              ("end_to_end", "pipeline + model (fed)", "#2ca02c"), ("peer", "reference loader", "#7f7f7f"))
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), dpi=120, sharex=False)
    for ax, (key, label, colour) in zip(axes.flat, series):
        rates = result[key]["per_batch_img_s"]
        mean = result[key]["img_s"]
        ax.plot(range(1, len(rates) + 1), rates, marker=".", color=colour, lw=1)
        ax.axhline(mean, color=colour, ls="--", lw=1)
        top = sorted(rates)[int(0.95 * (len(rates) - 1))] if rates else mean  # spikes above the 95th centile clip
        ax.set_ylim(0, 1.15 * max(top, mean))
        ax.set_title(f"{label}: {mean:,.0f} img/s", fontsize=10)
        ax.set(xlabel="batch", ylabel="images / s")
        ax.grid(alpha=0.3)
    fed = result.get("fed_ratio", result["end_to_end"]["img_s"] / result["model"]["img_s"])
    fig.suptitle(f"{result['device']}, batch {result['batch_size']}, width {result['width']} "
                 f"({result['warmup_batches']} warm-up batches left out): fed / model alone = {fed:.2f}x, "
                 f"data wait {100 * result['data_wait']:.1f}% of step time", fontsize=11)
    fig.tight_layout()
    return fig


def plot_stages(result, path):
    """Bars of each stage's img/s, and of its share of the loader's time per batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["stages"])
    rates = [result["stages"][k]["img_s"] for k in names]
    shares = [100 * result["stages"][k]["share"] for k in names]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    a1.bar(names, rates, color="#1f77b4")
    a1.axhline(result["model"]["img_s"], color="#d62728", ls="--", lw=1.2,
               label=f"model alone: {result['model']['img_s']:.0f} img/s")
    a1.set_yscale("log")
    a1.set(ylabel="images / s (log scale)", title="the training graph cut after each stage")
    a1.legend(fontsize=8)
    worst = max(range(len(names)), key=lambda i: shares[i])
    a2.bar(names, shares, color=["#d62728" if i == worst else "#7f7f7f" for i in range(len(names))])
    a2.set(ylabel="% of the loader's time per batch", title=f"each stage's own cost ({names[worst]} bounds the input)")
    for a in (a1, a2):
        a.tick_params(axis="x", rotation=20)
        a.grid(alpha=0.3, axis="y")
    fig.suptitle(f"input stages on {result['device']}, batch {result['batch_size']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(r):
    rows = [
        ("pipeline alone", r["pipeline"]["img_s"],
         f"shard cache downloaded {r['pipeline']['download_MB_s']:.1f} MB/s" if "download_MB_s" in r["pipeline"] else ""),
        ("model alone (synthetic)", r["model"]["img_s"], ""),
        ("pipeline + model", r["end_to_end"]["img_s"], f"data wait {100 * r['data_wait']:.1f}% of step time"),
        (f"reference loader ({r['peer']['workers']} workers)", r["peer"]["img_s"], ""),
    ]
    lines = [f"{'':<34}{'img/s':>10}", *(f"{n:<34}{v:>10.0f}  {note}" for n, v, note in rows)]
    fed = r["fed_ratio"]  # the data wait understates the loss when loader and model share a device
    verdict = "the model is fed" if fed >= 0.95 else "INPUT-BOUND: training loses to its input"
    lines.append(f"fed / model alone = {fed:.2f}x ({verdict}); data wait {100 * r['data_wait']:.1f}%; "
                 f"pipeline / model = {r['pipeline']['img_s'] / r['model']['img_s']:.2f}x; "
                 f"pipeline / reference = {r['pipeline']['img_s'] / r['peer']['img_s']:.2f}x")
    for row in r["end_to_end"].get("epochs", []):
        lines.append(f"  epoch {row['epoch']}: {row['batches']} batches, {row['img_s']:.0f} img/s, data wait "
                     f"{100 * row['data_wait']:.1f}%, first batch waited {1e3 * row['first_batch_wait_s']:.0f} ms")
    if "data_wait_later" in r["end_to_end"]:
        lines.append(f"  data wait over epochs 2+: {100 * r['end_to_end']['data_wait_later']:.1f}% of step time")
    lines.append(f"({r['warmup_batches']} warm-up batches excluded from every figure; "
                 f"{r['peer']['warmup_batches']} for the reference loader, until each worker has delivered)")
    if "trace" in r:
        from train.trace import format_trace

        lines.append(format_trace(r["trace"]))
    if "stages" in r:
        lines += ["", f"{'stage (cumulative)':<34}{'img/s':>10}{'ms/batch':>10}{'own share':>11}"]
        lines += [f"{k:<34}{v['img_s']:>10.0f}{v['ms_per_batch']:>10.1f}{100 * v['share']:>10.0f}%"
                  for k, v in r["stages"].items()]
        worst = max(r["stages"], key=lambda k: r["stages"][k]["share"])
        lines.append(f"the input is bound by: {worst}")
    return "\n".join(lines)
