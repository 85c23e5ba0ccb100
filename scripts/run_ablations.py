"""The Section 3 ablations on the built-in data, with the small-run recipe, and the table of
`alexnet report` over them (the README's ablation table; issue "The paper's experiments").

For each variant (the paper's net; one column, Section 3.2; no LRN, 3.3; traditional pooling,
3.4) and each seed: `alexnet train` with the small-run recipe (width 0.25, Kaiming init, batch 32,
8 epochs), then `alexnet eval --ten-crop` of its best.pt (recorded in the run's
evaluations.jsonl). Then `alexnet report` over every run. Sample data and shards are made once.

    python scripts/run_ablations.py --work /tmp/ablations --seeds 0 1
"""
import argparse
import os
import subprocess
import sys
import time

VARIANTS = {"paper": [], "one-column": ["--columns", "1"], "no-lrn": ["--no-lrn"],
            "traditional-pool": ["--pool", "traditional"]}
RECIPE = ["--width", "0.25", "--init", "kaiming", "--batch-size", "32", "--epochs", "8", "--device", "cpu"]


def alexnet(*args):
    cmd = [sys.executable, "-m", "alexnet_cli", *map(str, args)]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL if "train" in args[:1] else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/ablations")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    a = ap.parse_args()
    raw, shards = os.path.join(a.work, "sample-data"), os.path.join(a.work, "shards")
    if not os.path.isdir(raw):
        alexnet("sample-data", raw)
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        alexnet("preprocess", raw, shards)
    runs = []
    for seed in a.seeds:
        for name in a.variants:
            run = os.path.join(a.work, f"{name}-seed{seed}")
            if not os.path.exists(os.path.join(run, "best.pt")):
                t = time.perf_counter()
                alexnet("train", shards, "--out", run, "--seed", seed, *RECIPE, *VARIANTS[name])
                print(f"   {time.perf_counter() - t:.0f} s", flush=True)
                alexnet("eval", shards, os.path.join(run, "best.pt"), "--ten-crop", "--device", "cpu")
            runs.append(run)
    alexnet("report", *runs, "--plot", os.path.join(a.work, "ablations.png"))


if __name__ == "__main__":
    main()
