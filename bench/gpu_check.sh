#!/usr/bin/env bash
# The GPU check, in one command, for a machine with an NVIDIA GPU (written for the lent H200 box:
# python3 with torch + CUDA, nvcc, no internet). From the repository root:
#
#     bash bench/gpu_check.sh            # results under $OUT (default ./out/gpu_check)
#
# 1. builds the extension in place for the local GPU (TORCH_CUDA_ARCH_LIST, default 9.0);
# 2. runs every CUDA test (tests/test_cuda.py, INNAprop's in tests/test_innaprop_op.py) and the
#    emulated-CUDA tests;
# 3. runs bench/gpu_bench.py (copy bandwidth, fused INNA vs Adam(fused) vs foreach on a
#    GPT-2-XL-shaped list, the op alone for each param x phase dtype pair: fp32/fp32 20 B/element,
#    fp32 + bf16 phase 16 B, bf16 + fp32 phase 14 B, bf16 + bf16 phase 10 B; fused INNAprop vs
#    AdamW(fused) on the same list, both 28 B/element in fp32, eager and CUDA graph; INNAprop's op
#    alone per param x state dtype (phase and exp_avg_sq): 28 / 20 / 22 / 14 B/element; 10k small
#    tensors vs one flat tensor, launches per step);
# 4. with the time left, the rest of the test suite and `python -m inna_fused bench --device cuda`.
# Files under $OUT (8 at most, so that the device tool brings them all back): summary.txt (the
# table and every phase's verdict), build.log, tests_cuda.log, gpu_bench.log, gpu_bench.json,
# tests_rest.log, bench_cli.log, bench_cuda.json.
# Every phase has a time limit and the whole run stays under ~8 minutes; a phase that fails is
# reported and the next one still runs. The exit status is non-zero if the build, the CUDA tests
# or the benchmark failed. Without a visible GPU the script stops cleanly before building (a SKIP
# line in summary.txt, exit status 0): there is nothing to measure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-460}
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
export INNA_FUSED_CUDA=1
export INNA_FUSED_NVCC_VERBOSE=1  # ptxas register/spill report in build.log
export INNA_FUSED_BUILD_TESTING=1  # inna_fused._C_testing: the emulated-CUDA tests need it
START=$(date +%s)
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }
elapsed() { echo $(( $(date +%s) - START )); }
# Seconds a phase may take: its own cap, or what is left of the budget.
limit() { local left=$(( BUDGET_S - $(elapsed) )); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
# run NAME CAP LOG CMD...: time-limited phase, status recorded in the summary.
run() {
  local name=$1 cap=$2 log=$3; shift 3
  local t; t=$(limit "$cap")
  if [ "$t" -lt 20 ]; then note "SKIP  $name (time budget spent)"; return 99; fi
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$t" "$@" > "$log" 2>&1
  local rc=$?
  local verdict=OK
  [ $rc -ne 0 ] && verdict="FAIL"
  [ $rc -eq 124 ] && verdict="FAIL (timed out)"
  note "$(printf '%-5s %s  [rc=%s, %ss, log %s]' "$verdict" "$name" "$rc" "$(( $(date +%s) - t0 ))" "$(basename "$log")")"
  tail -n 15 "$log"
  return $rc
}

note "gpu_check $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
note "python $($PY -c 'import sys; print(sys.version.split()[0])'), torch $($PY -c 'import torch; print(torch.__version__, torch.version.cuda)'), nvcc $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo missing)"

if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' > /dev/null 2>&1; then
  note "SKIP  everything: no CUDA device visible to torch (this check needs the GPU machine)"
  note "total $(elapsed) s, status 0 (nothing run)"
  exit 0
fi

status=0
run "build (arch $TORCH_CUDA_ARCH_LIST)" 240 "$OUT/build.log" \
    $PY setup.py build_ext --inplace || { note "build failed: nothing else can run"; exit 1; }
grep -E "registers|spill" "$OUT/build.log" | sort | uniq -c | head -20 >> "$SUMMARY"  # ptxas -v
note "build_info: $($PY -c 'import inna_fused; print(inna_fused.build_info())' 2>&1 | tail -1)"

run "CUDA tests" 200 "$OUT/tests_cuda.log" \
    $PY -m pytest tests/test_cuda.py tests/test_cuda_emulated.py tests/test_innaprop_op.py -q -rs -p no:cacheprovider || status=1
grep -E "passed|failed|error" "$OUT/tests_cuda.log" | tail -1 >> "$SUMMARY"

run "GPU benchmark" 200 "$OUT/gpu_bench.log" \
    $PY bench/gpu_bench.py --md "$OUT/gpu_bench.md" --json "$OUT/gpu_bench.json" || status=1
[ -f "$OUT/gpu_bench.md" ] && cat "$OUT/gpu_bench.md" >> "$SUMMARY" && rm "$OUT/gpu_bench.md"

run "rest of the test suite" 150 "$OUT/tests_rest.log" \
    $PY -m pytest tests -q -x -p no:cacheprovider --ignore=tests/test_cuda.py \
        --ignore=tests/test_cuda_emulated.py --ignore=tests/test_innaprop_op.py
grep -E "passed|failed|error" "$OUT/tests_rest.log" | tail -1 >> "$SUMMARY"

if $PY -c "import inna_fused.bench.command" > /dev/null 2>&1; then
  run "python -m inna_fused bench --device cuda" 90 "$OUT/bench_cli.log" \
      $PY -m inna_fused bench --device cuda --json "$OUT/bench_cuda.json" || true
else
  note "SKIP  python -m inna_fused bench (command not in this tree)"
fi

note "total $(elapsed) s, status $status"
exit $status
