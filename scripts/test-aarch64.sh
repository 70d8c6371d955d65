#!/usr/bin/env bash
# Test the CPU backend's AArch64 NEON kernels on any machine: build rocmforge-cpu's tests for
# aarch64-unknown-linux-gnu and run them under qemu-user (its default CPU model "max" has NEON and
# FEAT_DotProd, so both `Isa::Neon` and `Isa::NeonDot` are checked against the scalar path, the
# f64 references and llama.cpp's fixtures). On an AArch64 host the tests run natively instead.
#
# Installs what is missing, idempotently: gcc-aarch64-linux-gnu and qemu-user (apt-get, as root
# or through passwordless sudo) and the Rust target (rustup). If it cannot (no root, no apt-get,
# no network), it says what is missing and exits non-zero.
#
# Usage: scripts/test-aarch64.sh [extra `cargo test` arguments]
# Time on a 2-core x86 machine: see the report printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
LINKER=aarch64-linux-gnu-gcc
SYSROOT=/usr/aarch64-linux-gnu
start=$(date +%s)

die() {
  echo "test-aarch64: $*" >&2
  exit 1
}
# Exit status 2: the tools are missing and this user cannot install them (no root, no sudo, no
# apt-get); scripts/test.sh then skips the pass with a warning outside CI.
cannot_install() {
  echo "test-aarch64: $*" >&2
  exit 2
}

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"

if [ "$(uname -m)" = aarch64 ] || [ "$(uname -m)" = arm64 ]; then
  echo "test-aarch64: AArch64 host, running natively"
  cargo test -p rocmforge-cpu --no-fail-fast "$@"
  exit 0
fi

# --- system packages: the cross linker (with the arm64 glibc sysroot) and qemu-user -------------
qemu_bin() { command -v qemu-aarch64 || command -v qemu-aarch64-static || true; }
missing=()
command -v "$LINKER" >/dev/null && [ -d "$SYSROOT/lib" ] || missing+=(gcc-aarch64-linux-gnu)
# The C runtime objects come with the arm64 libc headers package (a sysroot without them links nothing).
[ -e "$SYSROOT/lib/crti.o" ] || missing+=(libc6-dev-arm64-cross)
[ -n "$(qemu_bin)" ] || missing+=(qemu-user)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || cannot_install "missing ${missing[*]} and no apt-get here: install them with the system's package manager"
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    cannot_install "missing ${missing[*]}; installing needs root or passwordless sudo: run 'sudo apt-get install -y ${missing[*]}'"
  fi
  echo "test-aarch64: installing ${missing[*]}"
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    || die "apt-get update failed (no network?); needed: ${missing[*]}"
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed"
  command -v "$LINKER" >/dev/null || die "$LINKER still missing after installing gcc-aarch64-linux-gnu"
fi
QEMU=$(qemu_bin)
[ -n "$QEMU" ] || die "qemu-aarch64 still missing after installing qemu-user"

# --- the Rust standard library for the target -------------------------------------------------
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$TARGET/lib" ]; then
  command -v rustup >/dev/null || die "the Rust target $TARGET is missing and rustup is not available to add it"
  echo "test-aarch64: rustup target add $TARGET"
  rustup target add "$TARGET" || die "rustup target add $TARGET failed (no network?)"
fi

# --- build and run under qemu --------------------------------------------------------------------
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="$LINKER"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$QEMU -L $SYSROOT"
# qemu's default CPU ("max") has FEAT_DotProd: tests/isa.rs then insists on both NEON levels, so
# the sdot kernels cannot silently drop out. A chosen QEMU_CPU may lack it: no such demand then.
if [ -z "${QEMU_CPU:-}" ]; then
  export ROCMFORGE_EXPECT_DOTPROD=1
fi
unset ROCMFORGE_CPU_ISA
echo "test-aarch64: cargo test -p rocmforge-cpu --target $TARGET (runner: $QEMU)"
status=0
cargo test -p rocmforge-cpu --target "$TARGET" --no-fail-fast "$@" || status=1
# Second pass with the detected level lowered to scalar: the ops and the activation quantizer
# take their portable paths, while the matmul tests still compare every level (they pass the
# level explicitly), so NEON kernels also meet portable-quantized activations.
echo "test-aarch64: again with ROCMFORGE_CPU_ISA=scalar"
ROCMFORGE_CPU_ISA=scalar cargo test -p rocmforge-cpu --target "$TARGET" --no-fail-fast "$@" || status=1
[ "$status" -eq 0 ] || die "tests failed (see above)"
echo "test-aarch64: done in $(($(date +%s) - start)) s"
