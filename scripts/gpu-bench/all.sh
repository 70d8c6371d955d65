#!/usr/bin/env bash
# Everything GPU in one device call (≤ 600 s): the kernel and backend tests
# (host/gpu/scripts/build-backend-carry.sh's binaries and slim models, in the background while
# llama.cpp builds; they use the GPU little and finish long before the benchmarks start), then
# scripts/gpu-bench/run.sh (rocmforge bench vs llama-bench, table last).
#   Here: bash host/gpu/scripts/build-backend-carry.sh; bash scripts/gpu-bench/pack.sh
#   Device: run(command="bash scripts/gpu-bench/all.sh", carry=[".gpu-carry/rt", ".gpu-carry/bench"])
# Both carries and the repository must fit the call's 64 MiB: carry two of the three slim models
# when it is tight (the backend test checks every model it finds).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-/tmp/gpu-bench-out}"
mkdir -p "$OUT"
C=.gpu-carry/rt
export ROCMFORGE_KERNEL_CACHE=/tmp/rfk
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
(
    export ROCMFORGE_REQUIRE_GPU=1 ROCMFORGE_PLUGINS="$PWD/$C" ROCMFORGE_SLIM_MODELS="$PWD/$C/models" ROCMFORGE_TEST_GPU=cuda:0
    timeout 240 "$C/gpu_ops" --test-threads=2 --nocapture
    timeout 240 "$C/gpu_backend" --test-threads=1 --nocapture
    ROCMFORGE_GEMM_MIN_TOKENS=2 timeout 120 "$C/gpu_backend" --test-threads=1 --nocapture gpu_matches_cpu
) > "$OUT/tests.log" 2>&1 &
tests=$!
BUDGET_S="${BUDGET_S:-550}" bash scripts/gpu-bench/run.sh
wait "$tests"
echo
echo "== tests =="
grep -E "^test result|panicked|FAILED|^RESULT\|[a-z0-9]+-slim" "$OUT/tests.log" | cut -c1-260
