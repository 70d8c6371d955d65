#!/usr/bin/env bash
# Run on the GPU machine (one device call, carry: [".gpu-carry/rt"] from build-backend-carry.sh):
# the GPU backend against the CPU backend on the slim real models, then SmolLM2-135M decode
# tokens/s through Executor::forward (with and without decode-step graphs). Logs under $OUT;
# a short table last.
set -uo pipefail
cd "$(dirname "$0")/../../.."
C=.gpu-carry/rt
OUT="${OUT:-/tmp/rocmforge-gpu-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/card.txt"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export ROCMFORGE_KERNEL_CACHE=/tmp/rocmforge-kernels ROCMFORGE_REQUIRE_GPU=1 ROCMFORGE_PLUGINS="$PWD/$C" \
  ROCMFORGE_SLIM_MODELS="$PWD/$C/models" ROCMFORGE_TEST_GPU="${ROCMFORGE_TEST_GPU:-cuda:0}"
status=0
if [ -x "$C/gpu_ops" ]; then
  echo "== kernel tests (gpu_ops) =="
  timeout 240 "$C/gpu_ops" --test-threads=2 --nocapture > "$OUT/ops.log" 2>&1 || status=1
  grep -E "^BLAS|panicked|FAILED|test result" "$OUT/ops.log" | head -20
fi
echo "== tests =="
timeout 300 "$C/gpu_backend" --test-threads=1 --nocapture > "$OUT/tests.log" 2>&1 || status=1
grep -E "^device:|panicked|FAILED|test result|^test " "$OUT/tests.log" | head -30
echo "== tests, every product of >= 2 tokens through the GEMM path =="
ROCMFORGE_GEMM_MIN_TOKENS=2 timeout 300 "$C/gpu_backend" --test-threads=1 --nocapture gpu_matches_cpu > "$OUT/tests-gemm.log" 2>&1 || status=1
grep -E "panicked|FAILED|test result" "$OUT/tests-gemm.log" | head -10
echo "== bench (graphs on, CPU too) =="
ROCMFORGE_BENCH=1 timeout 150 "$C/gpu_backend" decode_speed --nocapture > "$OUT/bench.log" 2>&1 || status=1
echo "== bench (graphs off) =="
ROCMFORGE_BENCH=gpu ROCMFORGE_GPU_GRAPHS=0 timeout 90 "$C/gpu_backend" decode_speed --nocapture > "$OUT/bench-nograph.log" 2>&1 || status=1
echo "== long-context decode, split-K attention on / off, per KV cache type =="
ROCMFORGE_BENCH=gpu timeout 150 "$C/gpu_backend" split_k_long_context --nocapture --test-threads=1 > "$OUT/bench-long.log" 2>&1 || status=1
if [ -x "$C/gemv_bench" ]; then
  echo "== GEMV bandwidth =="
  timeout 150 "$C/gemv_bench" ${GEMV_ARGS:-} > "$OUT/gemv.log" 2>&1 || status=1
fi
# Device errors last: each run poisons the device for its own process (gpu_fault.rs, and the
# executor-level test that gpu_backend skips unless asked for).
if [ -x "$C/gpu_fault" ]; then
  echo "== device fault (gpu_fault, then the executor) =="
  timeout 120 "$C/gpu_fault" --nocapture > "$OUT/fault.log" 2>&1 || status=1
  timeout 180 "$C/gpu_backend" --ignored --exact device_fault_fails_every_later_forward --nocapture > "$OUT/fault-exec.log" 2>&1 || status=1
  grep -hE "^RESULT\|(gpu_fault|device_fault)|panicked|test result" "$OUT/fault.log" "$OUT/fault-exec.log" | cut -c1-240
fi
grep -hE "panicked|Error|error" "$OUT"/bench*.log "$OUT"/gemv.log 2>/dev/null | head -5
echo
echo "== real models, GPU vs CPU (default, then GEMM for every product) =="
grep -h '^RESULT' "$OUT/tests.log" | cut -d'|' -f2- | tr '|' ' '
grep -h '^RESULT' "$OUT/tests-gemm.log" | cut -d'|' -f2- | tr '|' ' ' | sed 's/^/gemm: /'
if [ -f "$OUT/ops.log" ]; then
  echo "== kernels: max normalised error per op and reference (bound) =="
  grep -h '^RESULT' "$OUT/ops.log" | awk -F'|' '$5 ~ /e/ {k=$2"|"$4; if (!(k in m) || $5+0 > m[k]+0) m[k]=$5; b[k]=$6} END {for (k in m) printf "%-22s %-9s max %s (bound %s)\n", substr(k,1,index(k,"|")-1), substr(k,index(k,"|")+1), m[k], b[k]}' | sort
fi
grep -h "bench device" "$OUT/bench.log" | head -2
echo "graphs on:";  grep -h '^BENCH' "$OUT/bench.log" | cut -d'|' -f2-
echo "graphs off:"; grep -h '^BENCH' "$OUT/bench-nograph.log" | cut -d'|' -f2-
echo "long context:"; grep -h '^BENCH' "$OUT/bench-long.log" | cut -d'|' -f2-
[ -f "$OUT/gemv.log" ] && { echo "GEMV:"; grep -h '^BENCH' "$OUT/gemv.log" | cut -d'|' -f2- | tr '|' '\t'; }
exit $status
