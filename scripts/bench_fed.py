#!/usr/bin/env python
"""Is the GPU fed? The compiled training step fed by each candidate loader, side by side in one
process (issue 22, docs/PERFORMANCE.md "Feeding the GPU").

For each loader variant (NAME=KEY:VALUE,...; the keys are build_loader's options handoff,
cpu_decode, hw_decoder_load, prefetch, num_threads, and `stream` for the training step on a
high-priority CUDA stream), on the same shards, batch size and compiled model:

  alone     the loader alone (pipeline.stages.time_loader: the project's one loader timer)
  fed       the loader feeding the training step over --epochs whole epochs (train.profile's
            end-to-end measurement): img/s, and the data wait over epochs 2+
  fed/model fed over the model alone on synthetic input of the variant's input dtype, measured
            in the same process (what training loses to its input; the target is >= 0.95)
  trace     a torch.profiler trace of 8 fed steps (train.trace): the loader's kernel time per
            image on the SMs, the model's per batch, and how much they overlap

    python scripts/bench_fed.py --shards /data/shards --device cuda --batch-size 256 --compile \\
        --variant base= --variant uint8=handoff:uint8 --variant cpu40=handoff:uint8,cpu_decode:0.4,hw_decoder_load:1

Writes one JSON object (--json FILE, rewritten after every variant, so a time limit keeps
what was measured) and prints a table. On the CPU it runs too (the rehearsal of the device
check), with a small net.
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LOADER_KEYS = {"handoff": str, "cpu_decode": float, "hw_decoder_load": float, "prefetch": int, "num_threads": int}


def parse_variant(text):
    """(NAME, build_loader options, step stream on) of NAME=KEY:VALUE,... (empty: today's defaults)."""
    name, _, spec = text.partition("=")
    if not name:
        raise SystemExit(f"--variant {text!r}: expected NAME=KEY:VALUE[,KEY:VALUE...]")
    options, stream = {}, False
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition(":")
        if key == "stream":
            stream = bool(int(value))
        elif key in LOADER_KEYS:
            options[key] = LOADER_KEYS[key](value)
        else:
            raise SystemExit(f"--variant {text!r}: {key!r} is not one of stream, {', '.join(LOADER_KEYS)}")
    return name, options, stream


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--init", default="caffe")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the model (as alexnet train --compile)")
    p.add_argument("--epochs", type=int, default=2, help="whole epochs of the fed measurement")
    p.add_argument("--batches", type=int, default=60, help="batches of the loader-alone and model-alone timings")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY:VALUE,...")
    p.add_argument("--trace-dir", default=None, help="keep each variant's Chrome trace here")
    p.add_argument("--json", default=None, help="write the results here (after every variant)")
    a = p.parse_args(argv)

    import tempfile

    import torch

    from pipeline import build_loader
    from pipeline.draws import CROP
    from pipeline.stages import time_loader
    from shards import TRAIN, Manifest
    from train.config import TrainConfig
    from train.profile import _time_epochs, _time_steps
    from train.step import StepStream, build_model, build_optimizer, compiled, memory_format_for, train_step
    from train.trace import trace_steps

    device = torch.device(a.device)
    cuda = device.type == "cuda"
    cfg = TrainConfig(shards=a.shards, width=a.width, init=a.init, batch_size=a.batch_size, device=a.device,
                      compile=a.compile)
    manifest = Manifest.load(a.shards)
    mf = memory_format_for(cfg, device)
    model = build_model(cfg, manifest.num_classes, [str(device)] if cuda else None)
    net, optimizer = compiled(model, cfg), build_optimizer(model, cfg)
    n = a.batch_size
    variants = [parse_variant(v) for v in (a.variant or ["base="])]
    out = {"device": torch.cuda.get_device_name(device) if cuda else f"cpu ({len(os.sched_getaffinity(0))} cores)",
           "batch_size": n, "samples": manifest.split(TRAIN).samples, "compile": a.compile, "width": a.width,
           "epochs": a.epochs, "model": {}, "variants": [], "complete": False}
    trace_dir = a.trace_dir or tempfile.mkdtemp(prefix="bench-fed-")
    os.makedirs(trace_dir, exist_ok=True)

    def save():
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)

    def stepper(stream_on):
        stream = StepStream(device, stream_on)

        def step(images, labels):
            with stream():
                train_step(net, optimizer, images, labels, device, cfg.amp)
        return step

    def model_alone(dtype, stream_on):
        key = f"{str(dtype).removeprefix('torch.')}{'+stream' if stream_on else ''}"
        if key not in out["model"]:
            scale = 60.0 if cfg.input_norm == "image" else 1.0
            x = (torch.randn(n, 3, CROP, CROP, device=device) * scale).to(dtype).contiguous(memory_format=mf)
            y = torch.randint(0, manifest.num_classes, (n,), device=device)
            t = time.perf_counter()
            r = _time_steps(stepper(stream_on), ((x, y) for _ in range(a.batches + a.warmup)), a.warmup, device)
            out["model"][key] = {"img_s": r["img_s"], "seconds": time.perf_counter() - t}
            print(f"model alone, {key} input: {r['img_s']:.0f} img/s ({time.perf_counter() - t:.0f} s with compile)",
                  flush=True)
        return out["model"][key]["img_s"]

    for name, options, stream_on in variants:
        t0 = time.perf_counter()
        row = {"variant": name, "options": options, "stream": stream_on}
        try:
            dtype = torch.bfloat16 if (options.get("handoff") == "uint8" and cuda) else torch.float32
            if not cuda:
                options = {k: v for k, v in options.items() if k not in ("cpu_decode", "hw_decoder_load")}
            alone_model = model_alone(dtype, stream_on)
            loader = build_loader(a.shards, TRAIN, n, device=str(device), memory_format=mf, mean=cfg.input_norm,
                                  lighting=cfg.lighting, dtype=dtype, **options)
            row["alone"] = time_loader(loader, a.batches, a.warmup, device).img_s
            fed = _time_epochs(stepper(stream_on), loader, a.epochs, a.warmup, device)
            row.update(fed=fed["img_s"], data_wait=fed["data_wait"], data_wait_later=fed.get("data_wait_later"),
                       epochs=fed["epochs"], model=alone_model, fed_ratio=fed["img_s"] / alone_model)
            from pipeline.stages import take

            tr = trace_steps(stepper(stream_on), take(loader, 10), os.path.join(trace_dir, f"{name}.json"), device)
            row["trace"] = {k: v for k, v in tr.items() if k != "path"}
            loader.close()
        except Exception as e:  # a variant that fails (a DALI graph the GPU refuses) is a row, not the end
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        row["seconds"] = time.perf_counter() - t0
        out["variants"].append(row)
        save()
        print(format_row(row), flush=True)
    out["complete"] = True
    save()
    print(format_table(out))


def format_row(r):
    if "error" in r:
        return f"{r['variant']:<14} ERROR {r['error']}"
    t = r.get("trace", {})
    us = f"{t['loader_gpu_us_per_image']:.1f}" if "loader_gpu_us_per_image" in t else "-"
    later = f"{100 * r['data_wait_later']:.1f}%" if r.get("data_wait_later") is not None else "-"
    return (f"{r['variant']:<14}{r['alone']:>9.0f}{r['fed']:>9.0f}{r['model']:>9.0f}{r['fed_ratio']:>8.2f}x"
            f"{later:>9}{us:>10}  ({r['seconds']:.0f} s)")


def format_table(out):
    head = f"{'variant':<14}{'alone':>9}{'fed':>9}{'model':>9}{'fed/mdl':>9}{'wait 2+':>9}{'ld µs/im':>10}"
    lines = [f"{out['device']}, batch {out['batch_size']}, {out['samples']} samples, {out['epochs']} epochs fed, "
             f"compile {out['compile']}", head]
    lines += [format_row(r) for r in out["variants"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
