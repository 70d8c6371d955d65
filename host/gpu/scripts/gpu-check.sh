#!/usr/bin/env bash
# Run on the GPU machine (one device call): every GPU kernel check against the CPU backend, then
# the GEMV benchmark; prints a short table last and keeps the logs under $OUT. Expects the
# binaries from host/gpu/scripts/build-carry.sh in .gpu-carry/ (pass `carry: [".gpu-carry"]`).
# Usage (device tool): bash host/gpu/scripts/gpu-check.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/../../.."
C=.gpu-carry
OUT="${OUT:-/tmp/rocmforge-gpu-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader 2>/dev/null | tee "$OUT/card.txt"
# NVRTC sits in the toolkit directory, off the loader path (specs/ecosystem.md).
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
ls /usr/local/cuda/lib64 2>/dev/null | grep -E 'nvrtc' | head -5
export ROCMFORGE_KERNEL_CACHE=/tmp/rocmforge-kernels ROCMFORGE_REQUIRE_GPU=1
status=0
echo "== kernels compile (NVRTC, sm_90 and sm_80) =="
$C/check_kernels cuda:sm_90 cuda:sm_80 2>&1 | tee "$OUT/check.log" || status=1
echo "== GPU tests =="
$C/gpu_ops --test-threads=2 --nocapture > "$OUT/tests.log" 2>&1 || status=1
grep -E "^device:|^kernels ready|panicked|FAILED|test result" "$OUT/tests.log" | head -20
echo "== GEMV benchmark =="
$C/gemv_bench "$@" > "$OUT/bench.log" 2>&1 || status=1
grep -v '^BENCH' "$OUT/bench.log" | head -5
echo
echo "== max normalised error per op and reference (bound) =="
grep '^RESULT' "$OUT/tests.log" | awk -F'|' '$5 ~ /e/ {k=$2"|"$4; if (!(k in m) || $5+0 > m[k]+0) m[k]=$5; b[k]=$6} END {for (k in m) printf "%-22s %-9s max %s (bound %s)\n", substr(k,1,index(k,"|")-1), substr(k,index(k,"|")+1), m[k], b[k]}' | sort
echo "== bandwidth =="
grep '^BENCH' "$OUT/bench.log" | cut -d'|' -f2- | tr '|' '\t'
exit $status
