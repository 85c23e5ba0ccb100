"""The DALI training graph cut after each stage, for `alexnet profile --stages` (docs/DESIGN.md,
"Profile"): which stage bounds the input?

Each stage adds one piece of the training loader's work to the one before; all read the same
shards with the same reader settings, threads and prefetch depth:

    read        fn.readers.webdataset alone (the JPEG bytes and labels)
    decode      + JPEG decoding (nvJPEG on a GPU, libjpeg-turbo on the CPU)
    crop        + crop_mirror_normalize at the host's crop corners and flips, no normalisation
    mean_image  + the input normalisation of the run (the mean image, or the channel mean/std)
    lighting    + the per-image PCA lighting offset (Section 4.1)
    torch       + the hand-off to torch: the loader as training sees it (labels parsed, layout)

The first five are timed by running the DALI pipeline (`Pipeline.run`); `torch` iterates the
loader itself (`pipeline.build_loader`).
"""
import dataclasses
import time

STAGES = ("read", "decode", "crop", "mean_image", "lighting", "torch")


def stage_pipeline(loader, stage: str, epoch: int = 0):
    """The DALI pipeline of `loader`'s epoch `epoch` cut after `stage` (one of STAGES but torch).
    `loader` is a training DaliLoader with lighting on (the graph the lighting stage adds to)."""
    from pipeline.graph import build_pipeline

    if loader.options.lighting <= 0:
        raise ValueError("profile --stages needs a training loader with lighting on (--lighting > 0)")
    spec = loader._spec(epoch)
    if stage in ("read", "decode"):
        spec = dataclasses.replace(spec, stop=stage, per_sample_mean=False)
    elif stage == "crop":
        spec = dataclasses.replace(spec, mean="none", per_sample_mean=False)
    elif stage == "mean_image":
        spec = dataclasses.replace(spec, per_sample_mean=False)
    elif stage != "lighting":
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES[:-1])}")
    source = loader._source(loader.draws(epoch))  # (x, y, mirror, mean) per batch
    if not spec.per_sample_mean:
        return build_pipeline(spec, lambda i: tuple(source(i))[:-1])
    return build_pipeline(spec, source)


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


def time_loader(loader, batches: int, warmup: int, sync=None) -> float:
    """Seconds for `batches` batches of the loader itself after `warmup`, across epochs as needed."""
    def take():
        while True:
            yield from loader

    it = take()
    for _ in range(warmup):
        next(it)
    if sync:
        sync()
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    if sync:
        sync()
    return time.perf_counter() - t0


def profile_stages(loader, batches: int = 20, warmup: int = 3, progress=None) -> dict:
    """{stage: {"img_s", "ms_per_batch", "share"}} for every stage of STAGES on `loader` (a
    training DaliLoader). `share` is the stage's own cost (its time per batch less the previous
    stage's) over the whole loader's time per batch: which stage bounds the input."""
    import torch

    sync = torch.cuda.synchronize if loader.device.type == "cuda" else None
    n = loader.options.batch_size
    seconds = {}
    for stage in STAGES:
        if progress:
            progress(f"profile: stage {stage}")
        if stage == "torch":
            seconds[stage] = time_loader(loader, batches, warmup, sync)
        else:
            pipe = stage_pipeline(loader, stage)
            seconds[stage] = time_pipeline(pipe, batches, warmup, sync)
            del pipe
    total = seconds["torch"] / batches
    out, before = {}, 0.0
    for stage in STAGES:
        per_batch = seconds[stage] / batches
        out[stage] = {"img_s": n / per_batch, "ms_per_batch": 1e3 * per_batch,
                      "share": max(0.0, per_batch - before) / total}
        before = max(before, per_batch)
    return out
