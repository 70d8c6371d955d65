#!/usr/bin/env bash
# Builds every fuzz target of fuzz/ and runs each for a bounded time over its committed corpus,
# so the targets cannot rot and shallow crashes show up in CI (.ci/run runs it after the tests).
#   scripts/fuzz-ci.sh [SECONDS_PER_TARGET]      (default 20; env FUZZ_SECONDS too)
#   FUZZ_TARGETS="gguf_parse chat_template" scripts/fuzz-ci.sh    (a subset)
#   FUZZ_SEED=N: libFuzzer's seed (random by default; a failure prints it, to replay the run).
# Cost on 2 cores: ~4 min to build (6.6 CPU-minutes measured) plus SECONDS per target.
#
# No cargo-fuzz and no nightly: the build passes the flags `cargo fuzz build -s none` passes
# (SanitizerCoverage for libFuzzer's feedback, --cfg fuzzing; debug assertions and overflow
# checks come from fuzz/Cargo.toml's release profile) to the stable toolchain, with an explicit
# --target so build scripts and proc-macros stay uninstrumented, as cargo-fuzz does. No
# AddressSanitizer (it needs nightly): the code under test is safe Rust apart from the mmap and
# plugin FFI. The same targets run under `cargo fuzz run` (fuzz/README.md).
#
# A crash fails the run; libFuzzer prints the input, which is also saved under
# fuzz/artifacts/<target>/ (reproduce: `fuzz/target/<triple>/release/<target> FILE`). Turn it into
# a regression test before fixing it (fuzz/README.md lists where each target's tests live).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS="${1:-${FUZZ_SECONDS:-20}}"
# Every [[bin]] of fuzz/Cargo.toml, so a new target is built and run without editing this file.
ALL="$(sed -n 's/^name = "\([a-z0-9_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^rocmforge-fuzz$' | tr '\n' ' ')"
TARGETS="${FUZZ_TARGETS:-$ALL}"
command -v c++ >/dev/null || { echo "fuzz-ci: libFuzzer needs a C++ compiler (c++)" >&2; exit 1; }

# hf_config loads the workspace's plugin .so files (a no-op when scripts/test.sh built them).
MAIN_TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case " $TARGETS " in *" hf_config "*) cargo build --workspace --quiet ;; esac
export ROCMFORGE_PLUGINS="$MAIN_TARGET/debug"

# The fuzz workspace resolves dependencies like the main one (its own Cargo.lock is git-ignored).
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
HOST="$(rustc -vV | sed -n 's/^host: //p')"
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}"
SANCOV="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
bins=()
for t in $TARGETS; do bins+=(--bin "$t"); done
t0=$(date +%s)
RUSTFLAGS="$SANCOV" cargo build --manifest-path fuzz/Cargo.toml --release --target "$HOST" \
  --target-dir "$FUZZ_TARGET_DIR" "${bins[@]}"
echo "fuzz-ci: built $(( ${#bins[@]} / 2 )) targets in $(( $(date +%s) - t0 )) s" >&2

# Extra read-only seed directories (fetched test data), when present.
extra_corpus() {
  case "$1" in
    chat_template) [ -d .cache/llama.cpp/models/templates ] && echo .cache/llama.cpp/models/templates ;;
  esac
  return 0
}

summary=()
for t in $TARGETS; do
  run="fuzz/corpus-run/$t"
  mkdir -p "$run" "fuzz/artifacts/$t" "fuzz/corpus/$t"
  dict=()
  [ -f "fuzz/dicts/$t.dict" ] && dict=(-dict="fuzz/dicts/$t.dict")
  log="$(mktemp)"
  # The targets keep scratch files (model directories, tokenizer.json) under TMPDIR.
  scratch="$(mktemp -d)"
  # New inputs go to the first (git-ignored) directory; the committed seeds are only read.
  # -timeout: one input may take 10 s at most (a hang is a crash); -rss_limit_mb: 2 GiB.
  status=0
  # shellcheck disable=SC2046
  # `timeout`: libFuzzer's own -timeout only covers time inside the target; this bounds the rest.
  TMPDIR="$scratch" timeout -k 10 $((SECS + 120)) "$FUZZ_TARGET_DIR/$HOST/release/$t" "$run" "fuzz/corpus/$t" $(extra_corpus "$t") "${dict[@]}" \
    ${FUZZ_SEED:+-seed="$FUZZ_SEED"} -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
  rm -rf "$scratch"
  if [ "$status" -ne 0 ]; then
    grep -m1 'Seed:' "$log" >&2 || true
    tail -n 60 "$log" >&2
    echo "fuzz-ci: $t FAILED (exit $status); the input is under fuzz/artifacts/$t/" >&2
    rm -f "$log"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  summary+=("$t: ${runs:-?} runs, ${cov:-cov: ?}")
  rm -f "$log"
done
printf 'fuzz-ci: %s\n' "${summary[@]}" >&2
