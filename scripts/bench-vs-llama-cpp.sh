#!/usr/bin/env bash
# Side-by-side CPU benchmark: `rocmforge bench` and llama.cpp (llama-cpp-python, built from PyPI)
# on the same GGUF, same machine, same run; prints both and the ratio (rocmforge / llama.cpp).
#   scripts/bench-vs-llama-cpp.sh [MODEL.gguf] [THREADS]
# Needs a Python with llama-cpp-python (PYTHON=..., default python3; `pip install llama-cpp-python==0.3.36`
# builds llama.cpp from source, ~15 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
THREADS="${2:-2}"
PY="${PYTHON:-python3}"
cargo build --release --workspace >&2
ours=$(ROCMFORGE_THREADS=$THREADS target/release/rocmforge bench "$MODEL" -p 512 -n 128 -r 3 --json)
theirs=$("$PY" scripts/llama_cpp_bench.py "$MODEL" 512 128 3 "$THREADS")
"$PY" - "$ours" "$theirs" <<'PYEOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
tb = {r["test"]: r for r in b["results"]}
print(f"model: {a['model']}   threads: {a['threads']}")
print(f"{'test':<8}{'rocmforge t/s':>18}{'llama.cpp t/s':>18}{'ratio':>8}")
for r in a["results"]:
    o = tb[r["test"]]
    print(f"{r['test']:<8}{r['t/s']:>11.2f} ± {r['stddev']:<5.2f}{o['t/s']:>11.2f} ± {o['stddev']:<5.2f}{r['t/s'] / o['t/s']:>7.2f}x")
PYEOF
