"""How fast is the input? The one loader timer, and the training graph cut after each stage for
`alexnet profile --stages` (docs/DESIGN.md, "Profile").

`time_loader` is the only timer of a loader in the project: `alexnet profile` ("pipeline
alone", the reference loader, the stage table's torch row) and `scripts/bench_pipeline.py` all
call it, so their figures are one measurement (issue 22 found three timers 1.6–1.7× apart).
It times the loader the way training reads it: epoch after epoch from one loader, the batches
delivered on the device (a CUDA event after each on a GPU), after a warm-up that covers the
pipeline's build and its prefetch queue (at least prefetch + 1 batches, whose early delivery
would otherwise inflate the figure) and after the next epoch's pipeline, when the loader
prepares one in the background, has finished building: its build and shuffle-buffer fill take
seconds once per epoch, which a 60-batch window would count as the loader's steady speed.

The cuts (pipeline.graph.CUTS), each adding one piece of the loader's work to the one before,
on the same shards with the same reader settings, threads and prefetch depth:

    read        fn.readers.webdataset alone (the JPEG bytes and labels)
    decode      + JPEG decoding (nvJPEG on a GPU, libjpeg-turbo on the CPU; with cpu_decode, both)
    crop        + crop and mirror at the host's corners and flips (float: no normalisation;
                  uint8 hand-off: the whole DALI graph, with ROI decoding where it applies)
    mean_image  + the input normalisation of the run (float hand-off)
    lighting    + the per-image PCA lighting offset (Section 4.1; float hand-off)
    torch       + the hand-off to torch: the loader as training sees it (labels parsed, layout;
                  for the uint8 hand-off the fused normalisation on the device)

The DALI cuts are timed by running the pipeline (`Pipeline.run`); `torch` is `time_loader`.
"""
import time
from dataclasses import dataclass

STAGES = ("read", "decode", "crop", "mean_image", "lighting", "torch")
_CUT_OF = {"read": "read", "decode": "decode", "crop": "crop", "mean_image": "mean_image", "lighting": "views"}


def stages_of(loader) -> tuple:
    """The stages of `loader`'s graph: the uint8 hand-off normalises in torch, not in DALI."""
    if loader.spec.handoff == "uint8":
        return ("read", "decode", "crop", "torch")
    return STAGES


def stage_pipeline(loader, stage: str, epoch: int = 0):
    """The DALI pipeline of `loader`'s epoch `epoch` cut after `stage` (one of its stages but
    torch). `loader` is a training DaliLoader with lighting on (the graph the lighting stage
    adds to)."""
    from pipeline.graph import build_pipeline

    if loader.spec.lighting <= 0:
        raise ValueError("profile --stages needs a training loader with lighting on (--lighting > 0)")
    if stage not in stages_of(loader)[:-1]:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(stages_of(loader)[:-1])}")
    cut = "views" if loader.spec.handoff == "uint8" and stage == "crop" else _CUT_OF[stage]
    return build_pipeline(loader.graph(epoch, stop=cut), loader.source(epoch))


def time_pipeline(pipe, batches: int, warmup: int, sync=None) -> float:
    """Seconds for `batches` runs of a built pipeline after `warmup` runs (images stay in DALI)."""
    for _ in range(warmup):
        pipe.run()
    if sync:
        sync()
    t0 = time.perf_counter()
    for _ in range(batches):
        pipe.run()
    if sync:
        sync()
    return time.perf_counter() - t0


class Clock:
    """Marks between batches. As in training, the host queues work ahead of the device, so on a
    GPU a mark is an event recorded on the current stream; `intervals()` gives the seconds
    between consecutive marks."""

    def __init__(self, device):
        import torch

        self.cuda = torch.device(device).type == "cuda"
        self.marks = []

    def mark(self):
        if self.cuda:
            import torch

            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self):
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def reset(self):
        self.marks = []


@dataclass
class LoaderTiming:
    """What `time_loader` measured."""

    per_batch_s: list  # seconds between consecutive deliveries, the timed batches only
    sizes: list  # images in each timed batch
    first_batch_s: float  # from the first request to the first batch (the pipeline's start-up)
    warmup: int  # batches excluded

    @property
    def img_s(self) -> float:
        total = sum(self.per_batch_s)
        return sum(self.sizes) / total if total else 0.0


def min_warmup(loader) -> int:
    """The fewest warm-up batches that leave the build and the prefetch queue out: the DALI
    loader's prefetch depth + 1 (the reference loader: one batch per worker)."""
    spec = getattr(loader, "spec", None)
    prefetch = getattr(spec, "prefetch", None)
    workers = getattr(loader, "num_workers", 0)
    return max(1, (prefetch + 1) if prefetch else 1, workers)


def time_loader(loader, batches: int, warmup: int, device=None) -> LoaderTiming:
    """Time `batches` batches of `loader` after `warmup` (raised to `min_warmup`), epoch after
    epoch as training reads them, delivered on `device` (the reference loader's CPU batches are
    moved there, as training would). See the module docstring for what is left out and why."""
    import torch

    device = torch.device(device or getattr(loader, "device", "cpu"))
    warmup = max(warmup, min_warmup(loader))
    clock, sizes = Clock(device), []
    t0 = time.perf_counter()
    first = None
    for i, (images, _) in enumerate(take(loader, warmup + batches)):
        if first is None:
            first = time.perf_counter() - t0
        if images.device != device:
            images = images.to(device, non_blocking=True)
        if i == warmup - 1:
            _wait_for_next_epoch(loader)
        if i >= warmup - 1:
            clock.mark()
        if i >= warmup:
            sizes.append(images.shape[0])
    return LoaderTiming(clock.intervals(), sizes, first, warmup)


def take(loader, n):
    """n batches from a loader, going on to its next epochs as needed (as a training loop does)."""
    while n > 0:
        for batch in loader:
            yield batch
            n -= 1
            if n == 0:
                return


def _wait_for_next_epoch(loader) -> None:
    """Block until the loader's background build of its next epoch's pipeline (if any) is done."""
    ready = getattr(loader, "_next", None)
    if ready is not None:
        ready[1].result()


def profile_stages(loader, batches: int = 20, warmup: int = 3, progress=None) -> dict:
    """{stage: {"img_s", "ms_per_batch", "share"}} for every stage of `stages_of(loader)` (a
    training DaliLoader). `share` is the stage's own cost (its time per batch less the previous
    stage's) over the whole loader's time per batch: which stage bounds the input."""
    import torch

    sync = torch.cuda.synchronize if loader.device.type == "cuda" else None
    warmup = max(warmup, min_warmup(loader))
    n = loader.spec.batch_size
    per_batch = {}
    for stage in stages_of(loader):
        if progress:
            progress(f"profile: stage {stage}")
        if stage == "torch":
            per_batch[stage] = 1.0 / time_loader(loader, batches, warmup).img_s * n
        else:
            pipe = stage_pipeline(loader, stage)
            per_batch[stage] = time_pipeline(pipe, batches, warmup, sync) / batches
            del pipe
    total = per_batch["torch"]
    out, before = {}, 0.0
    for stage, seconds in per_batch.items():
        out[stage] = {"img_s": n / seconds, "ms_per_batch": 1e3 * seconds,
                      "share": max(0.0, seconds - before) / total}
        before = max(before, seconds)
    return out
