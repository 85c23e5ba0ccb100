#!/usr/bin/env bash
# The GPU check, in one call on a lent H100/H200 (torch and triton there; DALI carried over).
#
# Here, once:  bash scripts/device-check.sh --pack     # DALI + webdataset -> .dw0 .dw1 .dw2 (xz, < 60 MB each)
# There, in three calls while the machine stays warm (carry one .dwK each):
#   mkdir -p /tmp/parts && cp .dw0/part /tmp/parts/p0
#   cp .dw1/part /tmp/parts/p1
#   cp .dw2/part /tmp/parts/p2 && bash scripts/device-check.sh
# Issue 22 ("Feed the GPU") in one run of at most $BUDGET seconds (default 450): it unpacks DALI;
# builds $SAMPLES (40,960: 160 batches of 256 an epoch) training samples on every core while the
# GPU-marked tests run; then prints
#   bench-fed       the compiled training step fed by today's loader and by each remedy, alone
#                   and combined (scripts/bench_fed.py): loader alone, fed over 2 epochs, model
#                   alone, fed / model, data wait over epoch 2, the loader's SM µs per image
#   one-truth       the loader's speed by bench_pipeline's training loader, profile's "pipeline
#                   alone" and profile's torch stage, in one run: they must agree within 10 %
# Every step has a time limit and the steps stop at the budget. Files back from $OUT (the device
# returns at most 8): device-check.log (copy it to docs/device-logs/), bench-fed.json,
# profile.json, bench-pipeline.json, stages.png, traces.tar.gz (two variants' Chrome traces) and
# logs.tar.gz (every step's whole log).
# A CPU rehearsal at tiny sizes: SMOKE=1 DEVICE=cpu bash scripts/device-check.sh (tests/test_device_check.py
# runs it with COMPILE=--no-compile).
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
LOGS=${LOGS:-/tmp/device-check-logs}  # one log per step, packed into $OUT/logs.tar.gz at the end
mkdir -p "$OUT" && rm -rf "$LOGS" && mkdir -p "$LOGS"
exec > >(tee "$OUT/device-check.log") 2>&1
tee_pid=$!
t0=$(date +%s)
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-450}
CORES=$(nproc)
if [ -n "${SMOKE:-}" ]; then  # the rehearsal: tiny sizes, a tiny net
  SAMPLES=${SAMPLES:-512}; BATCH=${BATCH:-32}; BATCHES=4; NET=(--width 0.125 --init kaiming); FED_EPOCHS=1
else
  SAMPLES=${SAMPLES:-40960}; BATCH=${BATCH:-256}; BATCHES=60; NET=()
fi
if [ -d /tmp/parts ] && [ ! -d /tmp/site/nvidia/dali ]; then
  mkdir -p /tmp/site && cat $(ls /tmp/parts/p* | sort -V) | xz -d | tar x -C /tmp/site || echo "unpack failed"
fi
export PYTHONPATH=/tmp/site:$root:$root/tests${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}  # compiled once, reused by later steps
PY=${PYTHON:-python3}
git log -1 --format='commit %h %s' 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$LOGS/gpu.txt" \
  || echo "no GPU: $DEVICE" | tee "$LOGS/gpu.txt"
$PY -c "import torch, nvidia.dali, webdataset; print('torch', torch.__version__, 'dali', nvidia.dali.__version__)" 2>&1 | tail -1

step() {  # step NAME SECONDS CMD...: at most SECONDS and never past the budget; keep the log, go on
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - t0) ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then echo "== $name: skipped (budget spent)"; return; fi
  echo "== $name (limit ${limit}s, at $(( $(date +%s) - t0 ))s)"
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  echo "rc=$?" >> "$LOGS/$name.log"
  tail -n "${TAIL:-6}" "$LOGS/$name.log"
}

# The limits below sum to 470 s; the budget (450 s, the unpack in it) trims the last step.
shards=${SHARDS_DIR:-/tmp/dc-shards}  # not under $OUT: that comes back from the device
rm -rf "$shards" && mkdir -p "$shards"
gen_workers=$(( CORES > 4 ? CORES - 2 : CORES ))  # two cores left to the GPU tests beside it
echo "== shards: $SAMPLES training samples on $gen_workers processes (in the background)"
( s=$(date +%s); $PY -c "from shardkit import make_shards; m = make_shards('$shards', n_train=$SAMPLES, n_val=0, \
classes=1000, shard_size=1024, seed=0, workers=$gen_workers); print(m.split('train').samples, 'samples')" \
  && echo "shards built in $(( $(date +%s) - s ))s" ) > "$LOGS/shards.log" 2>&1 &
gen=$!
# the GPU tests of the loader (the uint8 hand-off, split decoding, the hardware decoder's share)
# and of the grouped net; the files are named, so that no test file needing a package missing
# there stops collection
TAIL=4 step pytest-gpu "${PYTEST_S:-80}" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_dali_loader.py \
  tests/test_model_grouped.py
wait $gen; cat "$LOGS/shards.log"
VARIANTS=(--variant base= --variant uint8=handoff:uint8 --variant stream=stream:1
  --variant cpu30=cpu_decode:0.3,hw_decoder_load:1 --variant u8+hw1=handoff:uint8,hw_decoder_load:1
  --variant u8+cpu30=handoff:uint8,cpu_decode:0.3,hw_decoder_load:1
  --variant u8+cpu45=handoff:uint8,cpu_decode:0.45,hw_decoder_load:1
  --variant u8+cpu30+s=handoff:uint8,cpu_decode:0.3,hw_decoder_load:1,stream:1
  --variant u8+cpu45+s=handoff:uint8,cpu_decode:0.45,hw_decoder_load:1,stream:1)
[ -n "${SMOKE:-}" ] && VARIANTS=(--variant base= --variant u8+cpu45+s=handoff:uint8,cpu_decode:0.45,hw_decoder_load:1,stream:1)
# today's loader, each remedy alone, and combined (the CPU share with the hardware decoder
# taking every GPU-decoded JPEG: no image on nvJPEG's CUDA path); the compiled split net, bf16,
# channels-last, as issue 22 measured it
TAIL=16 step bench-fed "${FED_S:-270}" $PY scripts/bench_fed.py --shards "$shards" --device "$DEVICE" \
  --batch-size "$BATCH" ${NET[@]+"${NET[@]}"} "${COMPILE:---compile}" --epochs "${FED_EPOCHS:-2}" --batches "$BATCHES" --warmup 5 \
  --trace-dir "$LOGS/traces" --json "$OUT/bench-fed.json" "${VARIANTS[@]}"
# one truth for the loader's speed: the same loader by three harnesses, in one run
TAIL=3 step bench-pipeline "${PIPE_S:-40}" $PY scripts/bench_pipeline.py --shards "$shards" --device "$DEVICE" \
  --batch-size "$BATCH" --repeats 1 --batches "$BATCHES" --warmup 5 --no-reference --json
grep '^{' "$LOGS/bench-pipeline.log" | tail -1 > "$OUT/bench-pipeline.json"
TAIL=3 step profile-stages "${STAGES_S:-80}" $PY -m alexnet_cli profile "$shards" --device "$DEVICE" ${NET[@]+"${NET[@]}"} \
  --batch-size "$BATCH" --batches "$BATCHES" --warmup 5 --peer-workers "$CORES" --stages --plot "$OUT/stages.png" --json
grep '^{' "$LOGS/profile-stages.log" | tail -1 > "$OUT/profile.json"
$PY - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
try:
    bench = json.load(open(os.path.join(out, "bench-pipeline.json")))["img_per_s"]["dali+lighting"]
    prof = json.load(open(os.path.join(out, "profile.json")))
    figures = {"bench_pipeline training loader": bench, "profile pipeline alone": prof["pipeline"]["img_s"],
               "profile torch stage": prof["stages"]["torch"]["img_s"]}
    spread = max(figures.values()) / min(figures.values())
    print("== one-truth: " + ", ".join(f"{k} {v:.0f}" for k, v in figures.items())
          + f"; spread {spread:.2f}x ({'agree within 10%' if spread <= 1.1 else 'DISAGREE'})")
except (OSError, KeyError, ValueError) as e:
    print(f"== one-truth: no result ({e})")
PY
tar czf "$OUT/traces.tar.gz" -C "$LOGS/traces" $(cd "$LOGS/traces" 2>/dev/null && ls base.json u8+cpu45+s.json 2>/dev/null) 2>/dev/null
rm -rf "$LOGS/traces"
tar czf "$OUT/logs.tar.gz" -C "$LOGS" .
echo "total $(( $(date +%s) - t0 ))s; back from $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exec 1>&- 2>&-
wait "$tee_pid"
