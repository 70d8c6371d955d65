#!/usr/bin/env bash
# Build (here, on the dev machine) what the GPU backend checks need on the GPU machine, which has
# no Rust: the stripped `gpu_backend` test binary of rocmforge-runtime, the `gpu_ops` and
# `gpu_fault` test binaries of rocmforge-gpu, `gemv_bench`, the llama / qwen / gemma plugins and
# the slim real models (tests/gpu_backend.rs `make_slim_models`), into
# .gpu-carry/rt/ (ignored by git, < 64 MiB) for the device tool's `carry` argument.
# Then, in one device call: bash host/gpu/scripts/gpu-backend-check.sh  (carry: [".gpu-carry/rt"]).
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-gpu}"
C=.gpu-carry/rt
mkdir -p "$C/models"
cargo build --release -p rocmforge-plugin-llama -p rocmforge-plugin-qwen -p rocmforge-plugin-gemma
json=$(cargo test --release -p rocmforge-runtime --test gpu_backend --no-run --message-format=json 2>/dev/null)
bin=$(printf '%s\n' "$json" | grep '"executable":"' | grep gpu_backend | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -1)
[ -n "$bin" ] || { echo "build-backend-carry: no gpu_backend test executable" >&2; exit 1; }
ROCMFORGE_SLIM_MODELS="$PWD/$C/models" "$bin" make_slim_models --ignored --quiet
cp "$bin" "$C/gpu_backend"
ops=$(cargo test --release -p rocmforge-gpu --test gpu_ops --no-run --message-format=json 2>/dev/null | grep '"executable":"' | grep gpu_ops | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -1)
[ -n "$ops" ] && cp "$ops" "$C/gpu_ops"
# The device-fault test: its own binary (the sticky error it causes ruins the device for the rest
# of the process).
fault=$(cargo test --release -p rocmforge-gpu --test gpu_fault --no-run --message-format=json 2>/dev/null | grep '"executable":"' | grep gpu_fault | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -1)
[ -n "$fault" ] || { echo "build-backend-carry: no gpu_fault test executable" >&2; exit 1; }
cp "$fault" "$C/gpu_fault"
cargo build --release -p rocmforge-gpu --example gemv_bench
cp "$CARGO_TARGET_DIR/release/examples/gemv_bench" "$C/"
for p in llama qwen gemma; do cp "$CARGO_TARGET_DIR/release/librocmforge_plugin_$p.so" "$C/"; done
strip "$C/gpu_backend" "$C/gpu_ops" "$C/gpu_fault" "$C/gemv_bench" "$C"/*.so
du -sh "$C"; ls -la "$C" "$C/models"
