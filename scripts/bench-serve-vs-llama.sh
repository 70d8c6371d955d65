#!/usr/bin/env bash
# Serving benchmark, ROCmForge vs llama.cpp, same GGUF, same machine, same run:
# `rocmforge serve` and `llama-server -np N` (built by scripts/build-llama-server.sh) each get the same
# workload from scripts/bench-serve.py (vLLM `bench serve` style) for every N, one server at a time;
# then the chat-turn (prefix cache) scenario on both. Prints a table with the ratio rocmforge/llama-server.
#   scripts/bench-serve-vs-llama.sh [MODEL.gguf] [N ...]          (default: SmolLM2-135M Q4_1, N = 1 4 16)
# Env: INPUT_LEN=128 OUTPUT_LEN=64 PROMPTS_PER_N=4 (M = max(8, 4*N)) THREADS=2 CTX=4096 (per sequence)
#      DIALECT=llamacpp|openai  HISTORY_LEN=2000 CHAT_REPS=3 CHAT=1  SEED=0
#      ROCMFORGE=path/to/rocmforge (skips the cargo build; plugins must sit next to it)
#      LLAMA_SERVER=path (skips build-llama-server.sh)  RF_PORT=18080 LS_PORT=18081
#      QUIET_WAIT=1200 BUSY_MAX=25: before each measurement wait (polling every 60 s, up to QUIET_WAIT s) while
#      compilers run or the idle machine's CPUs are more than BUSY_MAX % busy; the 1-minute load average
#      and the compiler count are recorded with every figure.
# Results: .cache/bench-serve/<timestamp>/ (server logs, one JSON line per run in results.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
shift || true
NS=("$@")
[[ ${#NS[@]} -gt 0 ]] || NS=(1 4 16)
INPUT_LEN="${INPUT_LEN:-128}"
OUTPUT_LEN="${OUTPUT_LEN:-64}"
PER_N="${PROMPTS_PER_N:-4}"
THREADS="${THREADS:-2}"
CTX="${CTX:-4096}"
DIALECT="${DIALECT:-llamacpp}"
HISTORY_LEN="${HISTORY_LEN:-2000}"
CHAT_REPS="${CHAT_REPS:-3}"
CHAT="${CHAT:-1}"
SEED="${SEED:-0}"
RF_PORT="${RF_PORT:-18080}"
LS_PORT="${LS_PORT:-18081}"
QUIET_WAIT="${QUIET_WAIT:-1200}"
PY="${PYTHON:-python3}"

if [[ ! -f "$MODEL" ]]; then
    [[ "$MODEL" == .cache/models/* ]] && bash scripts/fetch-test-data.sh >&2
    [[ -f "$MODEL" ]] || { echo "model not found: $MODEL" >&2; exit 1; }
fi
if [[ -z "${ROCMFORGE:-}" ]]; then
    nice -n 10 cargo build --release --workspace >&2
    ROCMFORGE="${CARGO_TARGET_DIR:-target}/release/rocmforge"
fi
if [[ -z "${LLAMA_SERVER:-}" ]]; then
    bash scripts/build-llama-server.sh
    LLAMA_SERVER=.cache/llama-server/bin/llama-server
fi

OUT=".cache/bench-serve/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap stop_server EXIT INT TERM

# Compilers (others' builds) or any other busy process make a figure meaningless on a small machine:
# before each measurement (servers idle) wait while a compiler runs or the CPUs are more than
# BUSY_MAX % busy over 3 s.
BUSY_MAX="${BUSY_MAX:-25}"
busy() { ps -eo comm= | grep -Ec '^(rustc|cc1|cc1plus|cc1obj|collect2|ld|ld\.lld|lld|clang|clang\+\+|nvcc)$' || true; }
cpu_busy() {  # percent of all CPUs busy over 3 s
    local a b
    a=($(head -1 /proc/stat)); sleep 3; b=($(head -1 /proc/stat))
    local ta=0 tb=0 i
    for i in 1 2 3 4 5 6 7 8; do ta=$((ta + a[i])); tb=$((tb + b[i])); done
    local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) tot=$((tb - ta))
    echo $(( tot > 0 ? 100 * (tot - idle) / tot : 0 ))
}
wait_quiet() {
    local waited=0 n c
    while n=$(busy); c=$(cpu_busy); [[ ( "$n" -gt 0 || "$c" -gt "$BUSY_MAX" ) && "$waited" -lt "$QUIET_WAIT" ]]; do
        echo "  [$(date +%T)] $n compiler(s), CPU ${c}% busy, load $(cut -d' ' -f1-3 /proc/loadavg); waiting 60 s" >&2
        ps -eo pcpu,comm --sort=-pcpu | sed -n 2,4p | sed 's/^/      /' >&2
        sleep 57; waited=$((waited + 60))
    done
    [[ "$n" -eq 0 && "$c" -le "$BUSY_MAX" ]] || echo "  WARNING: machine still busy after ${QUIET_WAIT}s ($n compilers, CPU ${c}%); measuring anyway" >&2
    echo "  [$(date +%T)] load $(cut -d' ' -f1-3 /proc/loadavg), CPU ${c}% busy, compilers running: $n" >&2
}

wait_health() {  # url pid log
    for _ in $(seq 600); do
        if ! kill -0 "$2" 2>/dev/null; then echo "server died; log:" >&2; tail -20 "$3" >&2; exit 1; fi
        if "$PY" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1] + "/health", timeout=2).status == 200 else 1)
EOF
        then return 0; fi
        sleep 0.5
    done
    echo "server at $1 not healthy after 300 s" >&2; exit 1
}

start_rf() {  # max-num-seqs N
    local log="$OUT/rocmforge-$2.log"
    ROCMFORGE_THREADS="$THREADS" "$ROCMFORGE" serve "$MODEL" --host "127.0.0.1:$RF_PORT" --ctx-size "$CTX" \
        --max-num-seqs "$1" --preload "$MODEL" >"$log" 2>&1 &
    SERVER_PID=$!
    wait_health "http://127.0.0.1:$RF_PORT" "$SERVER_PID" "$log"
}
start_ls() {  # N
    local log="$OUT/llama-server-$1.log"
    "$LLAMA_SERVER" -m "$MODEL" -np "$1" -c $(( $1 * CTX )) -t "$THREADS" --host 127.0.0.1 --port "$LS_PORT" \
        >"$log" 2>&1 &
    SERVER_PID=$!
    wait_health "http://127.0.0.1:$LS_PORT" "$SERVER_PID" "$log"
}

bench() {  # label port N M prompts-file
    wait_quiet
    echo "== $1 N=$3 M=$4 ==" >&2
    "$PY" scripts/bench-serve.py --url "http://127.0.0.1:$2" --dialect "$DIALECT" --concurrency "$3" --num-prompts "$4" \
        --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --seed "$SEED" --prompts "$5" --server-pid "$SERVER_PID" | tee "$OUT/$1-$3.txt" >&2
    tail -1 "$OUT/$1-$3.txt" | "$PY" -c 'import json,sys; r=json.loads(sys.stdin.read()); r["server"]=sys.argv[1]; print(json.dumps(r))' "$1" >>"$RESULTS"
}
chat() {  # label port
    wait_quiet
    echo "== $1 chat turn ==" >&2
    "$PY" scripts/bench-serve.py --url "http://127.0.0.1:$2" --scenario chat-turn --dialect "$3" --history-len "$HISTORY_LEN" \
        --reps "$CHAT_REPS" --output-len "$OUTPUT_LEN" --seed "$SEED" | tee "$OUT/$1-chat-$3.txt" >&2
    tail -1 "$OUT/$1-chat-$3.txt" | "$PY" -c 'import json,sys; r=json.loads(sys.stdin.read()); r["server"]=sys.argv[1]; print(json.dumps(r))' "$1" >>"$RESULTS"
}

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') x $(nproc); model $MODEL; threads $THREADS; out $OUT" >&2
for n in "${NS[@]}"; do
    m=$(( PER_N * n )); (( m >= 8 )) || m=8
    pf="$OUT/prompts-$n.json"   # written by the first run, reused by the second: same token ids
    start_rf "$(( n > 64 ? n : 64 ))" "$n"; bench rocmforge "$RF_PORT" "$n" "$m" "$pf"
    [[ "$n" == 1 && "$CHAT" == 1 ]] && { chat rocmforge "$RF_PORT" llamacpp; chat rocmforge "$RF_PORT" openai; }
    stop_server
    start_ls "$n"; bench llama-server "$LS_PORT" "$n" "$m" "$pf"
    [[ "$n" == 1 && "$CHAT" == 1 ]] && { chat llama-server "$LS_PORT" llamacpp; chat llama-server "$LS_PORT" openai; }
    stop_server
done

"$PY" - "$RESULTS" <<'EOF'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
tp = {(r["server"], r["concurrency"]): r for r in rs if r["scenario"] == "throughput"}
ns = sorted({n for _, n in tp})
print()
print(f"{'N':>3} {'M':>4} | {'out tok/s RF':>12} {'llama':>8} {'ratio':>6} | {'TTFT p50 ms RF':>14} {'llama':>8} | "
      f"{'ITL p50 ms RF':>13} {'llama':>7} | {'ITL p99 RF':>10} {'llama':>7} | {'fail':>5} | other CPU % RF/llama | load1m RF/llama")
for n in ns:
    a, b = tp.get(("rocmforge", n)), tp.get(("llama-server", n))
    if not a or not b:
        continue
    print(f"{n:>3} {a['num_prompts']:>4} | {a['output_throughput']:>12.1f} {b['output_throughput']:>8.1f} "
          f"{a['output_throughput'] / b['output_throughput']:>5.2f}x | {a['median_ttft_ms']:>14.1f} {b['median_ttft_ms']:>8.1f} | "
          f"{a['median_itl_ms']:>13.2f} {b['median_itl_ms']:>7.2f} | {a['p99_itl_ms']:>10.2f} {b['p99_itl_ms']:>7.2f} | "
          f"{a['failed']:>2}/{b['failed']:<2} | {a.get('cpu_other_pct', float('nan')):>8.1f}/{b.get('cpu_other_pct', float('nan')):<8.1f} | "
          f"{a['load_avg_1m_before']:.2f}/{b['load_avg_1m_before']:.2f}")
a1 = tp.get(("rocmforge", 1)); a16 = tp.get(("rocmforge", max(ns))) if ns else None
if a1 and a16 and max(ns) > 1:
    print(f"rocmforge scaling N={max(ns)} / N=1: {a16['output_throughput'] / a1['output_throughput']:.2f}x")
ch = [r for r in rs if r["scenario"] == "chat-turn"]
if ch:
    print()
    print(f"{'chat turn (history ' + str(ch[0]['history_len']) + ')':<32} {'TTFT turn1 ms':>14} {'turn2 ms':>9} {'turn2/turn1':>12}  load1m  cached(turn2)")
    for r in ch:
        print(f"{r['server'] + ' ' + r['dialect']:<32} {r['median_turn1_ttft_ms']:>14.1f} {r['median_turn2_ttft_ms']:>9.1f} "
              f"{r['ratio_turn2_turn1']:>12.3f}  {r['load_avg_1m']:>6.2f}  {r['turn2_cached_tokens']}")
EOF
echo "results: $RESULTS" >&2
