"""`alexnet profile --trace FILE`: where the GPU's time goes when the loader feeds the step
(docs/DESIGN.md, "Profile").

A few fed training steps run under torch.profiler (CUDA activity included, so DALI's and
nvJPEG's kernels appear beside the model's) and are written as a Chrome trace (open it in
chrome://tracing or Perfetto). The summary sorts every GPU kernel of the traced window by who
launched it:

  model   launched inside a training step (the `alexnet.step` range around each step)
  loader  everything else: DALI's kernels (launched from its own threads) and the uint8
          hand-off's fused op (inside the `alexnet.handoff` range)

and gives each side's kernel time per batch and per image, and how much of the two overlap in
time on the device. Kernel time is SM time: copies and the hardware JPEG decoder's engine time
are not kernels and are left out. On a CPU the trace holds the CPU ops only and the summary
says so.
"""
import json

import torch

TRACE_STEPS = 8  # fed steps in the trace, after 2 untraced ones
STEP_RANGE = "alexnet.step"
HANDOFF_RANGE = "alexnet.handoff"


def trace_steps(step, batches, path, device, skip: int = 2) -> dict:
    """Run `step` on each (images, labels) of `batches` (the first `skip` untraced), traced
    with torch.profiler; write the Chrome trace to `path`; return `summarise` of it."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = torch.device(device)
    cuda = device.type == "cuda"
    it = iter(batches)
    for _, (images, labels) in zip(range(skip), it):
        step(images, labels)
    if cuda:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    steps = images_seen = 0
    with profile(activities=activities) as prof:
        for images, labels in it:
            with record_function(STEP_RANGE):
                step(images, labels)
            steps += 1
            images_seen += images.shape[0]
        if cuda:
            torch.cuda.synchronize(device)
    prof.export_chrome_trace(str(path))
    with open(path) as f:
        events = json.load(f).get("traceEvents", [])
    return {"path": str(path), **summarise(events, steps, images_seen, cuda)}


def summarise(events: list, steps: int, images: int, cuda: bool = True) -> dict:
    """{"steps", "images", "model_gpu_ms", "loader_gpu_ms" (per batch), "loader_gpu_us_per_image",
    "overlap_ms" (per batch: both sides' kernels running at once), "loader_kernels" (the five
    costliest loader kernels)} from the events of a Chrome trace."""
    out = {"steps": steps, "images": images, "cuda": cuda}
    kernels = [e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"]
    if not cuda or not kernels or not steps:
        return out
    in_step = _launched_within(events, STEP_RANGE)
    sides = {"model": [], "loader": []}
    for k in kernels:
        sides["model" if k.get("args", {}).get("correlation") in in_step else "loader"].append(k)
    busy = {side: _union([(k["ts"], k["ts"] + k["dur"]) for k in ks]) for side, ks in sides.items()}
    for side, ks in sides.items():
        out[f"{side}_gpu_ms"] = sum(k["dur"] for k in ks) / 1e3 / steps
    out["loader_gpu_us_per_image"] = sum(k["dur"] for k in sides["loader"]) / images
    out["overlap_ms"] = _overlap(busy["model"], busy["loader"]) / 1e3 / steps
    costs = {}
    for k in sides["loader"]:
        costs[k["name"]] = costs.get(k["name"], 0.0) + k["dur"]
    out["loader_kernels"] = [{"name": name[:120], "us_per_image": us / images}
                             for name, us in sorted(costs.items(), key=lambda kv: -kv[1])[:5]]
    return out


def _launched_within(events: list, name: str) -> set:
    """Correlation ids of the kernel launches made inside a user range called `name` (same thread)."""
    ranges = {}
    for e in events:
        if e.get("cat") == "user_annotation" and e.get("name") == name:
            ranges.setdefault(e.get("tid"), []).append((e["ts"], e["ts"] + e.get("dur", 0)))
    found = set()
    for e in events:
        if e.get("cat") not in ("cuda_runtime", "cuda_driver") or "correlation" not in e.get("args", {}):
            continue
        if any(a <= e["ts"] <= b for a, b in ranges.get(e.get("tid"), ())):
            found.add(e["args"]["correlation"])
    return found


def _union(intervals: list) -> list:
    """Disjoint sorted intervals covering the same time as `intervals`."""
    merged = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return merged


def _overlap(xs: list, ys: list) -> float:
    """Total time in both of two disjoint sorted interval lists."""
    total, i, j = 0.0, 0, 0
    while i < len(xs) and j < len(ys):
        lo, hi = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        total += max(0.0, hi - lo)
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return total


def format_trace(t: dict) -> str:
    """The summary's lines for the profile's table."""
    if "model_gpu_ms" not in t:
        return f"trace of {t['steps']} fed steps written to {t['path']} (no CUDA kernels traced: CPU ops only)"
    return (f"trace of {t['steps']} fed steps written to {t['path']}: per batch, model kernels "
            f"{t['model_gpu_ms']:.2f} ms, loader kernels {t['loader_gpu_ms']:.2f} ms "
            f"({t['loader_gpu_us_per_image']:.2f} µs per image), both at once {t['overlap_ms']:.2f} ms")
