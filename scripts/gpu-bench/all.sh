#!/usr/bin/env bash
# Everything GPU in one device call (≤ 600 s): the kernel and backend tests
# (host/gpu/scripts/build-backend-carry.sh's binaries and slim models) in the background while the
# models are written (and llama.cpp builds, when no prebuilt llama-bench is carried), then
# scripts/gpu-bench/run.sh (rocmforge bench vs llama-bench; its timed steps wait for the tests),
# then the GEMV bandwidth benchmark with its tuning ablation (gemv_bench), tables last.
#   Here: bash host/gpu/scripts/build-backend-carry.sh; bash scripts/gpu-bench/pack.sh
#   Device: run(command="bash scripts/gpu-bench/all.sh", carry=[".gpu-carry/rt", ".gpu-carry/bench"])
# Both carries and the repository must fit the call's 64 MiB: carry two of the three slim models
# when it is tight (the backend test checks every model it finds).
# Env: BUDGET_S (run.sh's budget, default 550), GEMV_MAX_S (default 150; 0 skips gemv_bench).
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
QUIET_WAIT_PID=$tests BUDGET_S="${BUDGET_S:-550}" bash scripts/gpu-bench/run.sh
wait "$tests"
gemv_max="${GEMV_MAX_S:-150}"
if [[ -x "$C/gemv_bench" ]] && (( gemv_max > 0 )); then
    timeout "$gemv_max" "$C/gemv_bench" > "$OUT/gemv.log" 2>&1 || echo "gemv_bench: exit $? (gemv.log)"
fi
# Device errors after load, last (each run poisons the device for its own process only): the
# runtime layer (gpu_fault), then the executor (gpu_backend's ignored fault test).
if [[ -x "$C/gpu_fault" ]]; then
    (
        export ROCMFORGE_REQUIRE_GPU=1 ROCMFORGE_PLUGINS="$PWD/$C" ROCMFORGE_SLIM_MODELS="$PWD/$C/models" ROCMFORGE_TEST_GPU=cuda:0 ROCMFORGE_TEST_DEVICE=cuda:0
        timeout 120 "$C/gpu_fault" --nocapture
        timeout 180 "$C/gpu_backend" --ignored --exact device_fault_fails_every_later_forward --nocapture
    ) > "$OUT/fault.log" 2>&1 || echo "device fault tests: exit $? (fault.log)"
fi
echo
echo "== tests =="
grep -E "^test result|panicked|FAILED|^RESULT\|[a-z0-9]+-slim" "$OUT/tests.log" | cut -c1-260
if [[ -f "$OUT/fault.log" ]]; then
    echo "== device fault =="
    grep -E "^test result|panicked|FAILED|^RESULT\|(gpu_fault|device_fault)" "$OUT/fault.log" | cut -c1-260
fi
if [[ -f "$OUT/gemv.log" ]]; then
    echo "== GEMV (% of the copy bandwidth measured in the same run) =="
    grep -hE '^(device|BENCH\|copy)' "$OUT/gemv.log"
    # The plain cases (no variant), then per ablated matrix the default and the best three.
    python3 - "$OUT/gemv.log" <<'PYEOF'
import re, sys
plain, abl = [], {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("|")
    if not line.startswith("BENCH|mmv") or len(f) < 8:
        continue
    pct = float(re.match(r"([0-9.]+)%", f[7]).group(1))
    if " rows" not in f[2]:
        plain.append(f"{f[1]:10} {f[2]:24} {f[3]:3} {f[5]:>10} {f[6]:>10} {f[7]}")
        continue
    shape, variant = f[2].split(" ", 1)
    abl.setdefault((f[1], shape), []).append((pct, variant, f[5]))
print("\n".join(plain))
for (ty, shape), rs in abl.items():
    d = next((r for r in rs if r[1] == "default rows4"), None)
    best = sorted(rs, reverse=True)[:3]
    print(f"{ty} {shape}: default rows4 {d[0] if d else '-'}%; best: " + "; ".join(f"{v} {p:.0f}%" for p, v, _ in best))
PYEOF
    echo "== ablation: variants whose output differs from the default's by > 1e-5 (relative) =="
    grep -h '^ABL' "$OUT/gemv.log" | awk -F'|' '{split($4, a, " "); if (a[3] + 0 > 1e-5) print}'
fi
