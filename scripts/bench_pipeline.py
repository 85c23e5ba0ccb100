#!/usr/bin/env python
"""Throughput of the input pipelines, in one run on the same shards: img/s of

  dali           the DALI loader (training: random crop + mirror, mean image), no lighting
  dali+lighting  the same with PCA lighting σ = 0.1 (the paper's training input)
  reference      the reference loader (webdataset + PIL + DataLoader), same work as dali+lighting
  bare           the benchmark's anchor, not the product: a bare DALI pipeline on the same shards
                 (readers.webdataset -> decode -> crop_mirror_normalize of the uint8 image to
                 --dtype at random corners and flips drawn inside DALI; no mean image, no lighting,
                 no external source, no hand-off to torch), timed with Pipeline.run
  bare+source    the anchor with its corners and flips fed from the host through
                 fn.external_source, as the loader feeds its draws: the cost of the external source

and the ratios lighting / no lighting, DALI / reference, and every loader / bare. Warm-up batches (with the pipeline
build at the start of the epoch; for the reference, until every worker has delivered) are excluded; each figure is the median over --repeats runs.

Candidate graphs of the loader (issue 13) run beside them with --variant NAME=KEY:VALUE,...,
each a DALI loader with lighting 0.1 unless it says otherwise; the keys are build_loader's
switches: lighting (σ), dtype (float32 | float16 | bfloat16), handoff (float | uint8), cpu
(cpu_decode), hw (hw_decoder_load), threads, prefetch, layout (nchw | nhwc). For example

    --variant uint8=handoff:uint8 --variant cpu40=handoff:uint8,cpu:0.4,hw:1 --variant pf4=prefetch:4

Every loader is timed by pipeline.stages.time_loader, the timer of `alexnet profile`'s "pipeline
alone" and of its stage table's torch row, so the three figures are one measurement.

    python scripts/bench_pipeline.py                      # ~2000 generated samples, CPU or GPU
    python scripts/bench_pipeline.py --shards /data/shards --device cuda --json

Without --shards it writes 256×256 quality-90 samples with tests/shardkit.py into a temporary
directory, and lists them --repeat-shards times over (symlinks) so an epoch outlasts the
measurement on a fast GPU.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def generate(directory, samples, repeat):
    """Shards of `samples` generated images, their tars listed `repeat` times in the manifest."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from shardkit import make_shards

    from shards import ShardInfo

    manifest = make_shards(directory, n_train=samples, n_val=0, classes=1000, shard_size=250, seed=0)
    split = manifest.splits["train"]
    originals = list(split.shards)
    for r in range(1, repeat):
        for s in originals:
            names = {}
            for ext, name in (("tar", s.tar), ("idx", s.index)):
                copy = name.replace("train-", f"train-r{r:03d}-")
                os.symlink(name, os.path.join(directory, copy))
                names[ext] = copy
            split.shards.append(ShardInfo(tar=names["tar"], index=names["idx"], samples=s.samples, sha256=s.sha256))
    split.samples = sum(s.samples for s in split.shards)
    manifest.save(directory)
    return split.samples


def measure(loader, warmup, batches, device):
    """(img/s, seconds to the first batch) by the project's one loader timer
    (pipeline.stages.time_loader: the figure `alexnet profile` reports for the same loader)."""
    from pipeline.stages import time_loader

    try:
        t = time_loader(loader, batches, warmup, device)
    finally:
        if hasattr(loader, "close"):
            loader.close()
    return t.img_s, t.first_batch_s


def _loader_dtypes():
    from pipeline.dali_loader import DTYPES  # the loader's own list (torch dtypes)

    return tuple(str(d).removeprefix("torch.") for d in DTYPES)


DTYPES = _loader_dtypes()  # float32, float16, bfloat16


def parse_variant(text):
    """("NAME", build_loader keyword arguments) of one --variant NAME=KEY:VALUE,..."""
    import torch

    name, _, spec = text.partition("=")
    if not name or not spec:
        raise SystemExit(f"--variant {text!r}: expected NAME=KEY:VALUE[,KEY:VALUE...], e.g. fp16=dtype:float16")
    kw = {"lighting": 0.1}
    for item in spec.split(","):
        key, _, value = item.partition(":")
        try:
            if key == "lighting":
                kw["lighting"] = float(value)
            elif key == "dtype" and value in DTYPES:
                kw["dtype"] = getattr(torch, value)
            elif key == "handoff" and value in ("float", "uint8"):
                kw["handoff"] = value
            elif key == "cpu":
                kw["cpu_decode"] = float(value)
            elif key == "hw":
                kw["hw_decoder_load"] = float(value)
            elif key in ("threads", "prefetch"):
                kw["num_threads" if key == "threads" else "prefetch"] = int(value)
            elif key == "layout" and value in ("nchw", "nhwc"):
                kw["memory_format"] = torch.channels_last if value == "nhwc" else torch.contiguous_format
            else:
                raise ValueError
        except ValueError:
            raise SystemExit(f"--variant {text!r}: {item!r} is not one of lighting:σ, dtype:{'|'.join(DTYPES)}, "
                             "handoff:float|uint8, cpu:0..1, hw:0..1, threads:N, prefetch:N, layout:nchw|nhwc") from None
    return name, kw


def bare_pipeline(shards, batch, device, threads, prefetch=2, dtype="float32", source=False):
    """The anchor: the least a DALI training pipeline can do on these shards (see the docstring);
    `source`: its corners and flips from the host through fn.external_source instead."""
    import numpy as np
    from nvidia.dali import Pipeline, fn, types

    from pipeline.draws import CROP
    from shards import Manifest

    m = Manifest.load(shards)
    tars, idx = zip(*m.shard_paths(shards, "train"))
    gpu = device.startswith("cuda")
    pipe = Pipeline(batch_size=batch, num_threads=threads or len(os.sched_getaffinity(0)),
                    device_id=0 if gpu else None, seed=0, prefetch_queue_depth=prefetch)
    with pipe:
        jpegs, cls = fn.readers.webdataset(paths=list(tars), index_paths=list(idx), ext=["jpg", "cls"],
                                           random_shuffle=True, initial_fill=4096, name="reader")
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        if source:  # the loader's way: per-sample arrays from the host each batch
            rng = np.random.default_rng(0)
            draws = lambda info: (rng.random(batch, np.float32), rng.random(batch, np.float32),  # noqa: E731
                                  rng.integers(0, 2, batch, np.int32))
            x, y, mirror = fn.external_source(source=draws, num_outputs=3, batch=True, batch_info=True,
                                              dtype=[types.FLOAT, types.FLOAT, types.INT32])
        else:
            x, y, mirror = fn.random.uniform(range=(0, 1)), fn.random.uniform(range=(0, 1)), fn.random.coin_flip()
        # float32 or float16 as --dtype (DALI has no bfloat16: the anchor writes float16 for it)
        out = fn.crop_mirror_normalize(images, crop=(CROP, CROP), crop_pos_x=x, crop_pos_y=y, mirror=mirror,
                                       dtype=types.FLOAT if dtype == "float32" else types.FLOAT16, output_layout="CHW")
        pipe.set_outputs(out, cls)
    pipe.build()
    return pipe


def measure_bare(shards, batch, device, threads, warmup, batches, **kw):
    """(img/s of the anchor, seconds to its first batch)."""
    import torch

    from pipeline.stages import time_pipeline

    start = time.perf_counter()
    pipe = bare_pipeline(shards, batch, device, threads, **kw)
    pipe.run()
    first = time.perf_counter() - start
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    return batches * batch / time_pipeline(pipe, batches, warmup - 1, sync), first


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="shard directory (default: generate one in a temporary directory)")
    p.add_argument("--samples", type=int, default=2000, help="images to generate without --shards")
    p.add_argument("--repeat-shards", type=int, default=None, help="list the generated tars N times (default 1 on CPU, 16 on GPU)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 on CPU, 128 on GPU")
    p.add_argument("--warmup", type=int, default=3, help="batches excluded at the start")
    p.add_argument("--batches", type=int, default=None, help="batches timed (default: the rest of an epoch, at most 200)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each loader; the median is reported")
    p.add_argument("--threads", type=int, default=None, help="DALI CPU threads (default: all cores of this process)")
    p.add_argument("--ref-workers", type=int, default=None, help="reference DataLoader workers (default 2 on CPU, 16 on GPU)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference loader")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="output of the loaders and the anchor")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY:VALUE,...",
                   help="a candidate loader graph to time beside the others (see the docstring); repeatable")
    p.add_argument("--json", action="store_true", help="print one JSON object on one line")
    a = p.parse_args(argv)

    import torch

    from pipeline import build_loader, build_reference_loader
    from shards import Manifest

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    batch = a.batch_size or (128 if gpu else 64)
    ref_workers = a.ref_workers if a.ref_workers is not None else (16 if gpu else 2)
    tmp = None
    if a.shards:
        shards = a.shards
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-shards-")
        shards = tmp.name
        t = time.perf_counter()
        generate(shards, a.samples, a.repeat_shards or (16 if gpu else 1))
        if not a.json:
            print(f"generated {a.samples} samples in {time.perf_counter() - t:.1f} s: {shards}", file=sys.stderr)
    samples = Manifest.load(shards).split("train").samples
    warmup = {"dali": a.warmup, "dali+lighting": a.warmup, "reference": max(a.warmup, ref_workers)}  # all workers started
    batches = a.batches or min(200, samples // batch - max(warmup.values()) - 1)
    if batches < 1:
        sys.exit(f"bench_pipeline: {samples} samples are too few for batch {batch} after "
                 f"{max(warmup.values())} warm-up batches; use more --samples")

    def dali(**kw):  # as training builds it (the timer waits for a next epoch's background build)
        kw = {"num_threads": a.threads, "dtype": getattr(torch, a.dtype), **kw}
        return lambda: build_loader(shards, "train", batch, device=device, **kw)

    loaders = {"dali": dali(lighting=0.0), "dali+lighting": dali(lighting=0.1)}
    for name, kw in map(parse_variant, a.variant):
        if name in loaders or name in ("reference", "bare", "bare+source"):
            sys.exit(f"--variant {name}: the name is taken; choose another")
        loaders[name] = dali(**kw)
        warmup[name] = a.warmup
    if not a.no_reference:
        loaders["reference"] = lambda: build_reference_loader(shards, "train", batch, lighting=0.1, num_workers=ref_workers)
    runs = {name: [] for name in [*loaders, "bare", "bare+source"]}
    firsts = {name: [] for name in runs}
    for _ in range(a.repeats):  # interleaved, so slow drifts of a shared machine hit all alike
        for name, make in loaders.items():
            rate, first = measure(make(), warmup[name], batches, device)
            runs[name].append(rate)
            firsts[name].append(first)
        for name, source in (("bare", False), ("bare+source", True)):
            rate, first = measure_bare(shards, batch, device, a.threads, a.warmup, batches, dtype=a.dtype,
                                       source=source)
            runs[name].append(rate)
            firsts[name].append(first)
    rates = {name: statistics.median(r) for name, r in runs.items()}
    result = {
        "device": torch.cuda.get_device_name() if gpu else f"cpu ({len(os.sched_getaffinity(0))} cores)",
        "batch_size": batch,
        "dtype": a.dtype,
        "variants": a.variant,
        "samples": samples,
        "batches_timed": batches,
        "img_per_s": {k: round(v, 1) for k, v in rates.items()},
        "runs": {k: [round(v, 1) for v in r] for k, r in runs.items()},
        "first_batch_s": {k: round(statistics.median(v), 3) for k, v in firsts.items()},
        "lighting_ratio": round(rates["dali+lighting"] / rates["dali"], 3),
        "ref_workers": ref_workers,
    }
    if "reference" in rates:
        result["dali_vs_reference"] = round(rates["dali+lighting"] / rates["reference"], 2)
    result["vs_bare"] = {k: round(v / rates["bare"], 3) for k, v in rates.items() if k != "bare"}
    result["vs_dali_lighting"] = {k: round(v / rates["dali+lighting"], 3) for k, v in rates.items()
                                  if k not in ("dali+lighting", "reference", "bare", "bare+source")}
    if a.json:
        print(json.dumps(result))
    else:
        print(f"{result['device']}, batch {batch}, {samples} samples, {batches} batches timed, median of {a.repeats}")
        for name, rate in rates.items():
            print(f"  {name:14s} {rate:10.1f} img/s   (first batch {result['first_batch_s'][name]:.2f} s)")
        print(f"  lighting / no lighting: {result['lighting_ratio']:.3f}")
        if "dali_vs_reference" in result:
            print(f"  DALI / reference ({ref_workers} workers): {result['dali_vs_reference']:.2f}x")
        print("  / bare anchor: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["vs_bare"].items()))
        if result["vs_dali_lighting"]:
            print("  / dali+lighting: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["vs_dali_lighting"].items()))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
