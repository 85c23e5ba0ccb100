"""`alexnet profile`: is the GPU fed? (DESIGN.md Contract 4)

Measured in one run, on the same shards, at the same batch size and precision:
  pipeline    the DALI training loader alone (img/s)
  model       training steps of the model alone on synthetic input (img/s)
  end_to_end  the loader feeding the training steps (img/s, and the fraction of step time spent
              waiting for data)
  peer        the stock webdataset + PIL + DataLoader reference loader doing the same work (img/s)
Warm-up batches are excluded from every figure. Per-batch rates are kept for the plot.
"""
import os
import time

import torch
import torch.nn.functional as F

from train.evaluate import autocast_for


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _batches(loader, n):
    """n batches from a loader, going on to its next epochs as needed (as a training loop does)."""
    while True:
        for batch in loader:
            yield batch
            n -= 1
            if n == 0:
                return


def _time_loader(loader, n, warmup, device):
    """Per-batch seconds of pulling batches onto the device, warm-up excluded."""
    times, sizes = [], []
    t = time.perf_counter()
    for i, (images, labels) in enumerate(_batches(loader, n + warmup)):
        images = images.to(device, non_blocking=True)
        _sync(device)
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - t)
            sizes.append(images.shape[0])
        t = now
    return times, sizes


class _Stepper:
    """One training step of the model (forward, backward, Section 5's SGD), as in `alexnet train`."""

    def __init__(self, num_classes, device, width, amp, channels_last):
        from train.model import AlexNet
        from train.optim import PaperSGD, param_groups

        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.model = AlexNet(num_classes, devices=(str(self.device),) if cuda else None, width=width, init="kaiming")
        self.memory_format = torch.channels_last if (cuda and channels_last) else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.opt = PaperSGD(param_groups(self.model, 5e-4), lr=0.001)
        self.amp = amp and cuda

    def __call__(self, images, labels):
        with autocast_for(self.device, self.amp):
            loss = F.cross_entropy(self.model(images).float(), labels.to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def _summary(times, sizes):
    total = sum(times)
    return {"img_s": sum(sizes) / total if total else 0.0, "batches": len(times),
            "per_batch_img_s": [s / t for s, t in zip(sizes, times)]}


def run_profile(shards, device="cpu", width=1.0, batch_size=128, batches=20, warmup=3, peer_workers=None,
                amp=True, channels_last=True, progress=print):
    from pipeline import build_loader
    from pipeline.reference import build_reference_loader
    from shards import Manifest

    manifest = Manifest.load(shards)
    mf = torch.channels_last if (torch.device(device).type == "cuda" and channels_last) else torch.contiguous_format
    peer_workers = peer_workers or min(16, os.cpu_count() or 1)
    result = {"device": str(device), "batch_size": batch_size, "width": width, "batches": batches,
              "warmup_batches": warmup, "amp_bf16": bool(amp and torch.device(device).type == "cuda")}

    progress(f"profile: pipeline alone ({warmup} warm-up + {batches} batches of {batch_size})")
    loader = build_loader(shards, "train", batch_size, device=device, memory_format=mf)
    result["pipeline"] = _summary(*_time_loader(loader, batches, warmup, device))

    progress("profile: model alone on synthetic input")
    step = _Stepper(manifest.num_classes, device, width, amp, channels_last)
    x = torch.randn(batch_size, 3, 224, 224, device=device).mul_(60).contiguous(memory_format=mf)
    y = torch.randint(0, manifest.num_classes, (batch_size,), device=device)
    times = []
    for i in range(batches + warmup):
        t = time.perf_counter()
        step(x, y)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    result["model"] = _summary(times, [batch_size] * len(times))

    progress("profile: pipeline feeding the model")
    times, waits, sizes = [], [], []
    t = time.perf_counter()
    for i, (images, labels) in enumerate(_batches(loader, batches + warmup)):
        got = time.perf_counter()
        step(images, labels)
        _sync(device)
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - t)
            waits.append(got - t)
            sizes.append(images.shape[0])
        t = now
    result["end_to_end"] = _summary(times, sizes)
    loader.close()
    result["data_wait"] = sum(waits) / sum(times)
    result["end_to_end"]["data_wait"] = result["data_wait"]

    progress(f"profile: reference loader (webdataset + PIL + DataLoader, {peer_workers} workers)")
    peer = build_reference_loader(shards, "train", batch_size, num_workers=peer_workers)
    result["peer"] = _summary(*_time_loader(peer, batches, warmup, device))
    result["peer"]["workers"] = peer_workers
    return result


def plot_profile(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for key, label in (("pipeline", "pipeline alone"), ("model", "model alone (synthetic input)"),
                       ("end_to_end", "pipeline + model"), ("peer", "reference loader")):
        rates = result[key]["per_batch_img_s"]
        ax.plot(range(1, len(rates) + 1), rates, marker=".", label=f"{label}: {result[key]['img_s']:.0f} img/s")
    ax.set_xlabel(f"batch (after {result['warmup_batches']} warm-up batches)")
    ax.set_ylabel("images / s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"input vs model throughput on {result['device']} (batch {result['batch_size']}, "
                 f"width {result['width']}); data wait {100 * result['data_wait']:.1f}% of step time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(r):
    rows = [
        ("pipeline alone", r["pipeline"]["img_s"], ""),
        ("model alone (synthetic)", r["model"]["img_s"], ""),
        ("pipeline + model", r["end_to_end"]["img_s"], f"data wait {100 * r['data_wait']:.1f}% of step time"),
        (f"reference loader ({r['peer']['workers']} workers)", r["peer"]["img_s"], ""),
    ]
    lines = [f"{'':<34}{'img/s':>10}", *(f"{n:<34}{v:>10.0f}  {note}" for n, v, note in rows)]
    fed = r["pipeline"]["img_s"] / r["model"]["img_s"]
    lines.append(f"pipeline / model = {fed:.2f}x ({'the model is fed' if fed >= 1 else 'INPUT-BOUND: the model waits for data'}); "
                 f"pipeline / reference = {r['pipeline']['img_s'] / r['peer']['img_s']:.2f}x")
    lines.append(f"({r['warmup_batches']} warm-up batches excluded from every figure)")
    return "\n".join(lines)
