#!/usr/bin/env bash
# Build (here, on the dev machine) the GPU test binary and the GEMV benchmark of rocmforge-gpu in
# release mode, strip them and copy them to .gpu-carry/ (ignored by git) for the device tool's
# `carry` argument; host/gpu/scripts/gpu-check.sh runs them on the GPU machine, which has no Rust.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-gpu}"
mkdir -p .gpu-carry
json=$(cargo test -p rocmforge-gpu --release --test gpu_ops --no-run --message-format=json 2>/dev/null)
test_bin=$(printf '%s\n' "$json" | grep '"executable":"' | grep gpu_ops | sed 's/.*"executable":"\([^"]*\)".*/\1/' | tail -1)
[ -n "$test_bin" ] || { echo "build-carry: no gpu_ops test executable found" >&2; exit 1; }
cargo build -p rocmforge-gpu --release --example gemv_bench --example check_kernels
cp "$test_bin" .gpu-carry/gpu_ops
cp "$CARGO_TARGET_DIR/release/examples/gemv_bench" "$CARGO_TARGET_DIR/release/examples/check_kernels" .gpu-carry/
strip .gpu-carry/gpu_ops .gpu-carry/gemv_bench .gpu-carry/check_kernels
ls -la .gpu-carry
