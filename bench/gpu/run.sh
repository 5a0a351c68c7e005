#!/usr/bin/env bash
# The whole GPU run of issue 13 in one call (about 8 minutes on an H200):
#
#   bench/gpu/run.sh OUT_DIR            on the GPU host (device tool: carry build/gpu-carry)
#   bench/gpu/run.sh OUT_DIR --dry-run  here on cpu with tiny shapes (proves the script)
#
# Prepare here first: scripts/build.sh && bench/gpu/package.sh (-> build/gpu-carry).
# On the host the binaries run against the host's own torch 2.11 libraries
# (LD_LIBRARY_PATH from its python3) and the carried Debian libraries.
#
# Steps (each under its own timeout; a failing step is recorded, the rest run):
#  1. environment (nvidia-smi, torch), 2. engine tests on $DEVICE in float32
#     and bfloat16 (SINKSCOPE_TEST_DEVICE / SINKSCOPE_TEST_DTYPE), 3. a cuda
#     worker behind a real server: scan, sinks, constant substitution, 4. the
#     transformers parity test on $DEVICE (float32 and bfloat16) if present,
#  5. figures: plain forward, activation scan and sink scan tokens/s, their
#     ratios and peak device memory on random Llama-2-7B (bf16, 4096 tokens)
#     and ~1B shapes, the fraction of the measured bf16 matmul rate, and the
#     first-token probe over 32,000 ids on the 7B shape.
# Writes figures.json, figures.txt, steps.jsonl and logs.tgz (every step's log
# and JSON) into OUT_DIR: four files, within the device tool's 8 files back.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: run.sh OUT_DIR [--dry-run]}
DRY=0; [ "${2:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
FINAL=$(cd "$OUT" && pwd)
OUT=$FINAL/raw   # per-step files; packed into logs.tgz at the end
mkdir -p "$OUT"
CARRY=${SINKSCOPE_GPU_CARRY:-$ROOT/build/gpu-carry}
PY=${PYTHON:-python3}
if [ $DRY = 1 ]; then
  DEVICE=cpu; SHAPES="tiny"; TOKENS=64; BATCH=2; PROBE_TOKENS=64; ITERS=2
  PY=${PYTHON:-$ROOT/build/venv/bin/python}
else
  DEVICE=cuda; SHAPES="7b 1b"; TOKENS=4096; BATCH=${BATCH:-4}; PROBE_TOKENS=32000; ITERS=3
fi
TORCH_LIB=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")')
NV_LIBS=$($PY - <<'EOF'
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib")) + glob.glob(os.path.join(sp, "nvidia", "cu*", "lib")))
print(":".join(dict.fromkeys(dirs)))
EOF
)
export LD_LIBRARY_PATH="$TORCH_LIB:$CARRY/lib${NV_LIBS:+:$NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN=$CARRY/bin
STEPS=$OUT/steps.jsonl; : >"$STEPS"
WORK=$(mktemp -d /tmp/sinkscope-gpu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# step NAME TIMEOUT_S CMD...: runs CMD with its log in OUT/NAME.log, records rc and seconds.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(echo "$(date +%s.%N) - $t0" | bc)
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $dt}" >>"$STEPS"
  echo "step $name: rc $rc in ${dt}s" >&2
  return $rc
}

# ---- 1. environment ----
step env 30 bash -c "nvidia-smi 2>&1 || echo 'no nvidia-smi'; $PY -c 'import torch, transformers; print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), transformers.__version__)'; ldd $BIN/sinkscope-run | grep 'not found' || echo 'all libraries found'"

# ---- 2. engine tests on the device, float32 and bfloat16 ----
for dtype in float32 bfloat16; do
  for t in model_test scan_test sinks_test spikes_test experiments_test; do
    SINKSCOPE_TEST_DEVICE=$DEVICE SINKSCOPE_TEST_DTYPE=$dtype \
      step "test-$dtype-$t" 120 "$BIN/$t" --gtest_brief=1 "--gtest_output=json:$OUT/test-$dtype-$t.json"
  done
done

# ---- 3. a cuda worker behind a real server ----
$PY "$ROOT/bench/gpu/make_random_hf.py" --shape tiny --dtype float32 --spike 500 --out "$WORK/tiny" --device cpu >/dev/null
cat >"$WORK/catalog.json" <<EOF
{"models": [{"name": "tiny-planted", "format": "hf", "path": "$WORK/tiny", "default_dtype": "float32"}]}
EOF
cat >"$WORK/server.json" <<EOF
{"listen": "unix:$WORK/server.sock", "catalog": "$WORK/catalog.json", "database": "$WORK/jobs.db",
 "worker_binary": "$BIN/sinkscope-worker", "runtime_dir": "$WORK", "metrics_listen": "off",
 "workers": "$DEVICE"}
EOF
service_e2e() {
  "$BIN/sinkscope-server" --config "$WORK/server.json" >"$OUT/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do [ -S "$WORK/server.sock" ] && break; sleep 0.2; done
  local c=("$BIN/sinkscope" --server "unix:$WORK/server.sock")
  local ids=1,5,9,33,2,17,60,4,4,8,12,3,40,41,42,43
  local rc=0
  "${c[@]}" models || rc=1
  "${c[@]}" scan --model tiny-planted --ids $ids --json >"$OUT/service-scan.json" || rc=1
  "${c[@]}" sinks --model tiny-planted --ids $ids --json >"$OUT/service-sinks.json" || rc=1
  "${c[@]}" constant-substitution --model tiny-planted --ids $ids,$ids --mode zero --json >"$OUT/service-substitution.json" || rc=1
  kill -TERM $pid; wait $pid
  return $rc
}
step service 120 service_e2e

# ---- 4. transformers parity on the device ----
parity=$(ls "$ROOT"/tests/python/test_*parity*.py 2>/dev/null | head -1)
if [ -n "$parity" ]; then
  for dtype in float32 bfloat16; do
    SINKSCOPE_TEST_DEVICE=$DEVICE SINKSCOPE_TEST_DTYPE=$dtype SINKSCOPE_RUN="$BIN/sinkscope-run" \
      step "parity-$dtype" 180 "$PY" -m pytest -q -x "$parity" --junitxml="$OUT/parity-$dtype.xml"
  done
else
  echo '{"step": "parity", "rc": -1, "seconds": 0, "note": "no tests/python/test_*parity*.py"}' >>"$STEPS"
fi

# ---- 5. figures ----
ids=$($PY -c "import random; random.seed(0); print(','.join(['1'] + [str(random.randrange(3, 256 if $DRY else 32000)) for _ in range($TOKENS - 1)]))")
for shape in $SHAPES; do
  dtype=bfloat16; [ $DRY = 1 ] && dtype=float32
  step "make-$shape" 120 "$PY" "$ROOT/bench/gpu/make_random_hf.py" --shape "$shape" --dtype $dtype \
    --max-positions $TOKENS --spike 500 --out "$WORK/$shape" --device "$([ $DRY = 1 ] && echo cpu || echo cuda)"
  step "bench-$shape" 240 bash -c "'$BIN/sinkscope-run' bench --model '$WORK/$shape' --device $DEVICE --dtype $dtype \
    --ids $ids --batch $BATCH --iters $ITERS --warmup 1 --variants plain,scan,sinks > '$OUT/bench-$shape.json'"
  if [ "$shape" = 7b ] || [ $DRY = 1 ]; then
    step "probe-$shape" 240 bash -c "'$BIN/sinkscope-run' bench --model '$WORK/$shape' --device $DEVICE --dtype $dtype \
      --ids 1,2 --variants probe --iters 1 --warmup 0 --probe-tokens $PROBE_TOKENS --probe-batch 1024 > '$OUT/probe-$shape.json'"
  fi
  rm -rf "${WORK:?}/$shape"
done
$PY "$ROOT/bench/gpu/figures.py" "$OUT" --matmul-tflops "${MATMUL_TFLOPS:-790}" --measure-matmul $([ $DRY = 1 ] && echo --cpu)
mv "$OUT/figures.json" "$OUT/figures.txt" "$STEPS" "$FINAL/" 2>/dev/null
tar czf "$FINAL/logs.tgz" -C "$FINAL" raw && rm -rf "$OUT"
echo "run.sh: done; $(grep -c '"rc": 0' "$FINAL/steps.jsonl") of $(wc -l <"$FINAL/steps.jsonl") steps passed" >&2
