"""Does training learn, every time? Seeds x torch threads x recipe -> best error, max loss, seconds.

Each run is `alexnet train` in a fresh process with OMP_NUM_THREADS set (the trainer never
overrides it), exactly the recipe's command line plus `--log-every 1` (so every step's loss is
logged: a logging setting, it changes nothing that is trained) and the run directory. Recipes:

  small     --device cpu --width 0.25 --init kaiming --batch-size 32 --epochs 8
            (the small-run recipe of `alexnet train --help`; the demo trains exactly this)
  full      --device cpu --batch-size 128 --max-steps STEPS   (the full-size defaults: --init caffe)
  literal   the same with --init paper (Section 5's init as the paper writes it)

Columns: best validation top-1 error (centre crop), the last one, the largest logged loss in units
of ln C (chance), the first step whose loss is below 0.8 ln C, the share of fc7 units that are
dead (zero after ReLU for every image of a held-out batch of 128 validation images, eval mode)
at the end, and the wall-clock seconds of the whole command.

    python scripts/bench_learning.py                       # small: seeds 0-4 x threads 1, 2
    python scripts/bench_learning.py --recipes full,literal --seeds 0 --threads 2 --max-steps 200
    python scripts/bench_learning.py --shards /data/shards --recipes full --device cuda

The built-in data (`alexnet sample-data` + `alexnet preprocess`, 10 classes, 999 training and 200
validation images) is made under --work when --shards is not given. Prints a Markdown table.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

RECIPES = {
    "small": ["--width", "0.25", "--init", "kaiming", "--batch-size", "32", "--epochs", "8"],
    "full": ["--batch-size", "128"],
    "literal": ["--batch-size", "128", "--init", "paper"],
}


def alexnet(*args, env=None, quiet=True):
    cmd = [sys.executable, "-m", "alexnet_cli", *args]
    out = subprocess.DEVNULL if quiet else None
    return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.PIPE, text=True)


def built_in_shards(work):
    shards = os.path.join(work, "shards")
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        raw = os.path.join(work, "sample-data")
        for args in (["sample-data", raw], ["preprocess", raw, shards]):
            r = alexnet(*args)
            if r.returncode:
                sys.exit(f"bench_learning: alexnet {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return shards


def dead_fc7(shards, run, device):
    """Share of fc7 units that are zero after ReLU for every image of one held-out batch of 128."""
    import torch

    from pipeline import build_loader
    from train.checkpoint import model_from_checkpoint

    devices = None if device == "cpu" else (device,)
    model, _ = model_from_checkpoint(os.path.join(run, "last.pt"), devices=devices)
    loader = build_loader(shards, "val", 128, device=device, mean=model.config["input_norm"])
    images, _ = next(iter(loader))
    loader.close()
    with torch.no_grad():
        _, fc7 = model(images, return_features=True)
    return (fc7 <= 0).all(dim=0).float().mean().item()


def one_run(shards, recipe, seed, threads, work, device, max_steps):
    run = os.path.join(work, f"{recipe}-seed{seed}-threads{threads}")
    if os.path.exists(run):
        import shutil

        shutil.rmtree(run)
    args = ["train", shards, "--out", run, "--device", device, "--seed", str(seed), "--log-every", "1",
            *RECIPES[recipe]]
    if recipe != "small":
        args += ["--max-steps", str(max_steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    r = alexnet(*args, env=env)
    seconds = time.perf_counter() - t0
    rows = []
    if os.path.exists(os.path.join(run, "metrics.jsonl")):
        with open(os.path.join(run, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    losses = [(row["step"], row["loss"]) for row in rows if "loss" in row and "top1_error" not in row]
    errors = [row["top1_error"] for row in rows if "top1_error" in row]
    with open(os.path.join(shards, "manifest.json")) as f:
        classes = len(json.load(f)["classes"])
    ln_c = math.log(classes)
    below = next((step for step, loss in losses if loss < 0.8 * ln_c), None)
    result = dict(recipe=recipe, seed=seed, threads=threads, ok=r.returncode == 0, seconds=seconds,
                  best=min(errors) if errors else float("nan"), last=errors[-1] if errors else float("nan"),
                  max_loss=max((loss for _, loss in losses), default=float("nan")) / ln_c,
                  below=below, steps=losses[-1][0] if losses else 0,
                  dead=dead_fc7(shards, run, device) if r.returncode == 0 else float("nan"),
                  error=r.stderr.strip().splitlines()[-1] if r.returncode else "")
    return result


def table(results):
    lines = ["| recipe | seed | threads | best top-1 err | last top-1 err | max loss / ln C | "
             "first step < 0.8 ln C | steps | dead fc7 | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        status = "" if r["ok"] else f" (failed: {r['error']})"
        lines.append(f"| {r['recipe']}{status} | {r['seed']} | {r['threads']} | {100 * r['best']:.1f} % | "
                     f"{100 * r['last']:.1f} % | {r['max_loss']:.2f} | {r['below'] if r['below'] else '-'} | "
                     f"{r['steps']} | {100 * r['dead']:.1f} % | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", help="shard directory (default: the built-in sample data, made under --work)")
    p.add_argument("--work", default="bench-learning", help="folder for the data and the runs")
    p.add_argument("--recipes", default="small", help="comma-separated: " + ", ".join(RECIPES))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--threads", default="1,2", help="OMP_NUM_THREADS values")
    p.add_argument("--full-seeds", default=None, help="seeds for full/literal (default: the first of --seeds)")
    p.add_argument("--max-steps", type=int, default=200, help="steps of the full-size recipes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results to this JSON file")
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    shards = a.shards or built_in_shards(a.work)
    seeds = [int(s) for s in a.seeds.split(",")]
    full_seeds = [int(s) for s in a.full_seeds.split(",")] if a.full_seeds else seeds[:1]
    threads = [int(t) for t in a.threads.split(",")]
    results = []
    for recipe in a.recipes.split(","):
        if recipe not in RECIPES:
            sys.exit(f"bench_learning: --recipes: {recipe!r} is not one of {', '.join(RECIPES)}")
        for seed in seeds if recipe == "small" else full_seeds:
            for t in threads:
                r = one_run(shards, recipe, seed, t, a.work, a.device, a.max_steps)
                results.append(r)
                print(f"{recipe} seed {seed} threads {t}: best {100 * r['best']:.1f} %, max loss "
                      f"{r['max_loss']:.2f} ln C, {r['seconds']:.0f} s{'' if r['ok'] else ' FAILED ' + r['error']}",
                      file=sys.stderr, flush=True)
    print(f"shards: {shards}; device: {a.device}; machine: {os.cpu_count()} cores")
    print(table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
