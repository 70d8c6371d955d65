#!/usr/bin/env bash
# Open WebUI 0.12.4 against the real `rocmforge serve`, in a real browser (Debian's Chromium,
# headless, driven by playwright-core): open the UI, create the admin account, pick the model,
# send a chat message, wait for the streamed reply, save screenshots. Exits non-zero on failure.
#
# Not part of CI: the first run installs Open WebUI (~7.3 GB venv: PyTorch with CUDA libraries
# comes with it; several minutes) — see compat/README.md for the numbers. Later runs reuse it.
#
# Needs: the binary and plugins built (`cargo build --workspace`; ROCMFORGE_BIN overrides the
# binary, default $CARGO_TARGET_DIR/debug/rocmforge or target/debug/rocmforge), SmolLM2 from
# scripts/fetch-test-data.sh, python3.11 or 3.12 with venv, node + npm, chromium (installed with
# apt-get when missing and we are root), PyPI and npm access the first time.
#
# Where things go (all under .cache/, git-ignored):
#   .cache/webui-venv   Open WebUI (pip)          .cache/webui-node   playwright-core (npm)
#   .cache/webui-run/   this run: shots/*.png, rocmforge.log, open-webui.log, data/ (fresh each run)
# Env: WEBUI_CONNECTION=ollama (default: Open WebUI's Ollama connection, /api/*) or openai (its
# OpenAI connection, /v1/*), WEBUI_OUT (run folder), WEBUI_KEEP=1 (leave both servers running).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
T0=$(date +%s)
OWUI_VERSION=0.12.4
PLAYWRIGHT_VERSION=1.65.1
VENV="$ROOT/.cache/webui-venv"
NODE_DIR="$ROOT/.cache/webui-node"
CONNECTION="${WEBUI_CONNECTION:-ollama}"
OUT="${WEBUI_OUT:-$ROOT/.cache/webui-run}"
MODEL_FILE="$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
BIN="${ROCMFORGE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/rocmforge}"

say() { echo "[webui $(( $(date +%s) - T0 ))s] $*"; }
die() { echo "[webui] FAILED: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "$BIN not found: run cargo build --workspace (or set ROCMFORGE_BIN)"
[ -f "$MODEL_FILE" ] || die "$MODEL_FILE missing: run scripts/fetch-test-data.sh"
command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are needed"

# --- installs (skipped when present) -------------------------------------------------------
if ! command -v chromium >/dev/null; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "chromium missing: apt-get install chromium"
    say "installing chromium (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x "$VENV/bin/open-webui" ] || ! grep -qx "$OWUI_VERSION" "$VENV/.owui-version" 2>/dev/null; then
    PY=""
    for c in python3.11 python3.12 python3; do
        if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))'; then
            PY=$c; break
        fi
    done
    [ -n "$PY" ] || die "Open WebUI $OWUI_VERSION needs Python 3.11 or 3.12"
    say "installing open-webui==$OWUI_VERSION into $VENV (large: PyTorch comes with it)"
    t=$(date +%s)
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "open-webui==$OWUI_VERSION"
    echo "$OWUI_VERSION" > "$VENV/.owui-version"
    say "open-webui installed in $(( $(date +%s) - t ))s, $(du -sh "$VENV" | cut -f1)"
fi
if [ ! -f "$NODE_DIR/node_modules/playwright-core/package.json" ]; then
    say "installing playwright-core@$PLAYWRIGHT_VERSION (npm; no browser download)"
    mkdir -p "$NODE_DIR"
    npm install --silent --no-audit --no-fund --prefix "$NODE_DIR" "playwright-core@$PLAYWRIGHT_VERSION"
fi

# --- servers -------------------------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT/shots" "$OUT/data" "$OUT/store"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RF_PORT=$(free_port)
UI_PORT=$(free_port)
PIDS=()
cleanup() {
    local rc=$?
    if [ -n "${WEBUI_KEEP:-}" ] && [ "$rc" = 0 ]; then
        say "left running: rocmforge http://127.0.0.1:$RF_PORT (pid ${PIDS[0]:-}), Open WebUI http://127.0.0.1:$UI_PORT (pid ${PIDS[1]:-})"
        return
    fi
    # Only the processes this script started, by their ids.
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

say "starting rocmforge serve on 127.0.0.1:$RF_PORT"
env -u OLLAMA_HOST OLLAMA_MODELS="$OUT/store" RUST_LOG=info NO_COLOR=1 \
    "$BIN" serve --host "127.0.0.1:$RF_PORT" --model "smollm2=$MODEL_FILE" --ctx-size 2048 \
    >"$OUT/rocmforge.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    grep -q "rocmforge listening on" "$OUT/rocmforge.log" 2>/dev/null && break
    kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$OUT/rocmforge.log" >&2; die "rocmforge serve exited"; }
    sleep 0.1
done
grep -q "rocmforge listening on" "$OUT/rocmforge.log" || die "rocmforge serve did not start"

case "$CONNECTION" in
    ollama) CONN_ENV=(OLLAMA_BASE_URL="http://127.0.0.1:$RF_PORT" ENABLE_OLLAMA_API=True ENABLE_OPENAI_API=False) ;;
    openai) CONN_ENV=(OPENAI_API_BASE_URL="http://127.0.0.1:$RF_PORT/v1" OPENAI_API_KEY=unused ENABLE_OPENAI_API=True ENABLE_OLLAMA_API=False) ;;
    *) die "WEBUI_CONNECTION must be ollama or openai" ;;
esac
say "starting Open WebUI $OWUI_VERSION on 127.0.0.1:$UI_PORT ($CONNECTION connection)"
# Offline and quiet: no update checks, no telemetry, only the one connection to rocmforge,
# the RAG embedding model is not fetched (its load error in the log is harmless for chat).
# Runs in $OUT: it writes .webui_secret_key into its working directory.
(
    cd "$OUT"
    exec env DATA_DIR="$OUT/data" \
        "${CONN_ENV[@]}" \
        OFFLINE_MODE=True HF_HUB_OFFLINE=1 RAG_EMBEDDING_MODEL_AUTO_UPDATE=False \
        ENABLE_VERSION_UPDATE_CHECK=False ANONYMIZED_TELEMETRY=False DO_NOT_TRACK=true SCARF_NO_ANALYTICS=true \
        WEBUI_SECRET_KEY=rocmforge-webui-test \
        "$VENV/bin/open-webui" serve --host 127.0.0.1 --port "$UI_PORT"
) >"$OUT/open-webui.log" 2>&1 &
PIDS+=($!)
t=$(date +%s)
until curl -fsS "http://127.0.0.1:$UI_PORT/health" >/dev/null 2>&1; do
    kill -0 "${PIDS[1]}" 2>/dev/null || { tail -40 "$OUT/open-webui.log" >&2; die "Open WebUI exited"; }
    [ $(( $(date +%s) - t )) -lt 240 ] || { tail -40 "$OUT/open-webui.log" >&2; die "Open WebUI did not come up in 240 s"; }
    sleep 1
done
say "Open WebUI up after $(( $(date +%s) - t ))s"

# --- the browser ---------------------------------------------------------------------------
say "driving chromium"
status=0
NODE_PATH="$NODE_DIR/node_modules" WEBUI_CONNECTION="$CONNECTION" WEBUI_URL="http://127.0.0.1:$UI_PORT" WEBUI_MODEL="smollm2:latest" \
    WEBUI_SHOTS="$OUT/shots" CHROMIUM="$(command -v chromium)" \
    node --test --test-timeout=600000 "$ROOT/compat/webui/chat.test.mjs" || status=$?

# The engine's view afterwards (background tasks may still be running).
say "rocmforge /metrics after the chat:"
curl -fsS "http://127.0.0.1:$RF_PORT/metrics" | grep -E '^(vllm:(num_requests_running|num_requests_waiting|kv_cache_usage_perc|prefix_cache_queries_total|prefix_cache_hits_total)|llamacpp:tokens_predicted_total) ' | sed 's/^/    /' || true

# What Open WebUI asked of rocmforge (the request log), and no 5xx among it.
say "rocmforge requests (method path status):"
sed 's/\x1b\[[0-9;]*m//g' "$OUT/rocmforge.log" > "$OUT/rocmforge.plain.log"
grep -o 'rocmforge::http: .*' "$OUT/rocmforge.plain.log" | sed 's/rocmforge::http: //' | awk '{print "   ", $1, $2, $3}' | sort | uniq -c || true
if grep -E 'rocmforge::http: [A-Z]+ [^ ]+ 5[0-9][0-9] ' "$OUT/rocmforge.plain.log"; then
    echo "[webui] rocmforge answered 5xx (above)" >&2
    status=1
fi
[ "$status" = 0 ] || { echo "[webui] logs: $OUT/rocmforge.log $OUT/open-webui.log" >&2; die "browser test failed"; }
say "passed; screenshots in $OUT/shots"
