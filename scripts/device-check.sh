#!/usr/bin/env bash
# The GPU check, in one call on a lent H100/H200 (torch and triton there; DALI carried over).
#
# Here, once:  bash scripts/device-check.sh --pack     # DALI + webdataset -> .dw0 .dw1 .dw2 (xz, < 60 MB each)
# There, in three calls while the machine stays warm (carry one .dwK each):
#   mkdir -p /tmp/parts && cp .dw0/part /tmp/parts/p0
#   cp .dw1/part /tmp/parts/p1
#   cp .dw2/part /tmp/parts/p2 && bash scripts/device-check.sh
# Issue 13 ("Is the GPU fed?") in one run of at most $BUDGET seconds (default 300): it unpacks
# DALI; builds $SAMPLES (40,960: 160 batches of 256 an epoch) training samples on every core
# while the GPU-marked tests run; then prints
#   bench-pipeline  the training loader, its candidate graphs (--variant) and the stock loader,
#                   each with its ratio to the bare DALI anchor measured in the same run
#   profile-stages  `alexnet profile --stages`: the graph cut after each stage (table + PNG)
#   profile-e2e     `alexnet profile --compile --epochs 3`: the compiled model fed by the loader,
#                   each epoch apart, the data wait of epochs 2+ (the next-epoch build in them)
#   bench-model     split vs grouped convolutions, eager / compiled / CUDA graphs
# Every step has a time limit and the steps stop at the budget. Six files come back from $OUT
# (the device returns at most 8): device-check.log (copy it to docs/device-logs/), the figures
# stages.png and profile.png, device-check.json (a summary), bench-model.json and logs.tar.gz
# (every step's whole log).
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
BUDGET=${BUDGET:-300}
CORES=$(nproc)
if [ -n "${SMOKE:-}" ]; then  # the rehearsal: tiny sizes, a tiny net
  SAMPLES=${SAMPLES:-512}; BATCH=${BATCH:-32}; BATCHES=8; NET=(--width 0.125 --init kaiming)
  MODEL_ARGS=(--batch-size 4 --steps 2 --windows 1 --warmup 1)
else
  SAMPLES=${SAMPLES:-40960}; BATCH=${BATCH:-256}; BATCHES=60; NET=(); MODEL_ARGS=(--steps 8 --windows 3 --warmup 3)
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

# The limits below sum to 305 s; the budget (300 s, the unpack in it) trims the last step, whose rows are kept as they come.
shards=${SHARDS_DIR:-/tmp/dc-shards}  # not under $OUT: that comes back from the device
rm -rf "$shards" && mkdir -p "$shards"
gen_workers=$(( CORES > 4 ? CORES - 2 : CORES ))  # two cores left to the GPU tests beside it
echo "== shards: $SAMPLES training samples on $gen_workers processes (in the background)"
( s=$(date +%s); $PY -c "from shardkit import make_shards; m = make_shards('$shards', n_train=$SAMPLES, n_val=0, \
classes=1000, shard_size=1024, seed=0, workers=$gen_workers); print(m.split('train').samples, 'samples')" \
  && echo "shards built in $(( $(date +%s) - s ))s" ) > "$LOGS/shards.log" 2>&1 &
gen=$!
# the GPU tests of the loader (unmeasured on a GPU since the loader was split into modules) and of
# the grouped net; the files are named, so that no test file needing a package missing there stops collection
TAIL=4 step pytest-gpu "${PYTEST_S:-60}" $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_dali_loader.py \
  tests/test_model_grouped.py
wait $gen; cat "$LOGS/shards.log"
TAIL=16 step bench-pipeline "${PIPE_S:-55}" $PY scripts/bench_pipeline.py --shards "$shards" --device "$DEVICE" \
  --batch-size "$BATCH" --repeats 1 --batches "$BATCHES" --ref-workers "$CORES" \
  --variant after=after:1 --variant fp16=dtype:float16 --variant fp16+after=dtype:float16,after:1 \
  --variant hw0=hw:0 --variant hw1=hw:1 --variant prefetch4=prefetch:4 --variant threads-half=threads:$(( (CORES + 1) / 2 ))
TAIL=20 step profile-stages "${STAGES_S:-40}" $PY -m alexnet_cli profile "$shards" --device "$DEVICE" ${NET[@]+"${NET[@]}"} \
  --batch-size "$BATCH" --batches "$BATCHES" --warmup 5 --peer-workers "$CORES" --stages --plot "$OUT/stages.png"
TAIL=16 step profile-e2e "${E2E_S:-75}" $PY -m alexnet_cli profile "$shards" --device "$DEVICE" ${NET[@]+"${NET[@]}"} \
  --batch-size "$BATCH" "${COMPILE:---compile}" --epochs 3 --batches "$BATCHES" --warmup 5 --peer-workers "$CORES" \
  --plot "$OUT/profile.png"
# split vs grouped, eager, compiled (the profile's split compile is in the inductor cache), CUDA
# graphs; then, as time allows, the compiled net without LRN (the target: LRN within 0.97x of it)
TAIL=24 step bench-model "${MODEL_S:-75}" $PY scripts/bench_gpu_model.py --device "$DEVICE" "${MODEL_ARGS[@]}" \
  --skip lrn two-device --variants conv= "no LRN + torch.compile" --extra --json "$OUT/bench-model.json"
$PY - "$OUT" "$LOGS" <<'PY'
import json, os, sys
out, logs = sys.argv[1:]
rec = {"gpu": open(os.path.join(logs, "gpu.txt")).read().strip()}
for name in ("pytest-gpu", "bench-pipeline", "profile-stages", "profile-e2e", "bench-model"):
    try:
        rec[name] = open(os.path.join(logs, name + ".log")).read().strip().splitlines()[-40:]
    except OSError as e:
        rec[name] = f"no result ({e})"
p = os.path.join(out, "bench-model.json")
if os.path.exists(p):
    model = json.load(open(p))
    rec["bench-model-ratios"] = model.get("ratios")
    rec["bench-model-rows"] = [{k: r.get(k) for k in ("variant", "img_per_s", "error") if k in r}
                               for r in model.get("results", []) if r.get("section") == "model"]
json.dump(rec, open(os.path.join(out, "device-check.json"), "w"), indent=1)
print("device-check.json written")
PY
tar czf "$OUT/logs.tar.gz" -C "$LOGS" .
echo "total $(( $(date +%s) - t0 ))s; back from $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exec 1>&- 2>&-
wait "$tee_pid"
