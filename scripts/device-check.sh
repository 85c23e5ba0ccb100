#!/usr/bin/env bash
# The GPU check, in one call on a lent H100/H200 (torch and triton there; DALI carried over).
#
# Here, once:  bash scripts/device-check.sh --pack     # DALI + webdataset -> .dw0 .dw1 .dw2 (xz, < 60 MB each)
# There, in three calls while the machine stays warm (carry one .dwK each):
#   mkdir -p /tmp/parts && cp .dw0/part /tmp/parts/p0
#   cp .dw1/part /tmp/parts/p1
#   cp .dw2/part /tmp/parts/p2 && bash scripts/device-check.sh
# It unpacks DALI, runs the GPU-marked tests, the pipeline benchmark (lighting vs none vs the
# stock loader), `alexnet profile` (data wait) and the model benchmark (LRN variants), writes
# $OUT/device-check.json and prints a summary. Budget: under 5 minutes.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "${1:-}" = "--pack" ]; then
  work=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$work/whl" \
    nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-libnvcomp-cu13==5.3.0.16 \
    nvidia-nvjpeg==13.3.2.43 nvidia-nvjpeg2k-cu13==0.11.0.51 nvidia-nvtiff-cu13==0.8.0.82 \
    astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.17 makefun==1.16.0 libcst==1.9.0 \
    webdataset==1.0.2 braceexpand==0.1.7
  mkdir -p "$work/site"
  for w in "$work"/whl/*.whl; do unzip -q -o "$w" -d "$work/site"; done
  rm -f "$work/site/nvidia/libnvcomp/bin/nvlzcat"
  tar cf - -C "$work/site" . | xz -9 -T0 > "$work/site.tar.xz"   # 261 MB of wheels -> ~177 MB
  grep -qx '/.dw\*/' .git/info/exclude 2>/dev/null || echo '/.dw*/' >> .git/info/exclude
  rm -rf .dw[0-9]*
  split -n 3 -d -a 1 "$work/site.tar.xz" "$work/q"
  for i in 0 1 2; do mkdir -p ".dw$i"; mv "$work/q$i" ".dw$i/part"; done
  rm -rf "$work"
  ls -la .dw*/part
  exit 0
fi

OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
t0=$(date +%s)
if [ -d /tmp/parts ] && [ ! -d /tmp/site/nvidia/dali ]; then
  mkdir -p /tmp/site && cat $(ls /tmp/parts/p* | sort -V) | xz -d | tar x -C /tmp/site || echo "unpack failed"
fi
export PYTHONPATH=/tmp/site:$root:$root/tests PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, nvidia.dali, webdataset; print('torch', torch.__version__, 'dali', nvidia.dali.__version__)" 2>&1 | tail -1

step() {  # step NAME SECONDS CMD...: run with a time limit, keep the log, never stop the script
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s, at $(( $(date +%s) - t0 ))s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$?" >> "$OUT/$name.log"
  tail -n "${TAIL:-6}" "$OUT/$name.log"
}

python3 -c "from shardkit import make_shards; import os; os.makedirs('/tmp/dc-shards', exist_ok=True); \
make_shards('/tmp/dc-shards', n_train=3072, n_val=0, classes=1000, shard_size=512, seed=0)" \
  || echo "shard generation failed"
step pytest-gpu "${PYTEST_S:-60}" python3 -m pytest -q -m gpu -x tests/test_dali_loader.py tests/test_model.py tests/test_response_norm.py
step bench-pipeline "${PIPE_S:-50}" python3 scripts/bench_pipeline.py --device cuda --samples 2000 --repeats 1 --batch-size 256 --json
TAIL=12 step profile-stages "${STAGES_S:-40}" python3 -m alexnet_cli profile /tmp/dc-shards --device cuda --batch-size 256 --batches 10 --warmup 3 --peer-workers 16 --stages --plot "$OUT/stages.png"
TAIL=8 step profile "${PROF_S:-45}" python3 -m alexnet_cli profile /tmp/dc-shards --device cuda --batch-size 256 --batches 15 --warmup 3 --peer-workers 16 --json --plot "$OUT/profile.png"
# The full-size recipe's learning check (issue "Training that learns", item 2): the built-in
# sample data, larger (10 classes x 400 training images: 31 steps of 128 an epoch), then
# `alexnet train --batch-size 128` with no other option for 200 steps; bench_learning prints
# the max loss / ln C (bar 1.5), the first step below 0.8 ln C (bar 200) and the dead fc7 share
# (bar 10 %). The training is capped at 60 s of GPU time.
if [ -z "${NO_LEARN:-}" ]; then
  step learn-data "${LEARN_DATA_S:-120}" bash -c "python3 -m alexnet_cli sample-data /tmp/learn/raw --classes 10 \
    --train-per-class 400 --val-per-class 20 && python3 -m alexnet_cli preprocess /tmp/learn/raw /tmp/learn/shards"
  TAIL=8 step learn-full "${LEARN_S:-60}" python3 scripts/bench_learning.py --shards /tmp/learn/shards \
    --work /tmp/learn --recipes "${LEARN_RECIPES:-full}" --seeds 0 --threads 4 --max-steps 200 --device cuda \
    --json "$OUT/learn-full.json"
fi
if [ -n "${MODEL:-}" ]; then  # the model benchmark (~130 s), measured separately
  TAIL=14 step bench-model "${MODEL_S:-100}" python3 scripts/bench_gpu_model.py --compile on --steps 8 --windows 3 --json "$OUT/bench-model.json"
fi
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rec = {"gpu": open(os.path.join(out, "gpu.txt")).read().strip()}
for name in ("bench-pipeline", "profile"):
    try:
        lines = [l for l in open(os.path.join(out, name + ".log")) if l.startswith("{")]
        rec[name] = json.loads(lines[-1])
    except Exception as e:
        rec[name] = f"no result ({e})"
p = os.path.join(out, "learn-full.json")
if os.path.exists(p):
    rec["learn-full"] = json.load(open(p))
p = os.path.join(out, "bench-model.json")
if os.path.exists(p):
    rec["bench-model"] = json.load(open(p)).get("summary", "see bench-model.json")
json.dump(rec, open(os.path.join(out, "device-check.json"), "w"), indent=1)
print("device-check.json written")
PY
echo "total $(( $(date +%s) - t0 ))s"
