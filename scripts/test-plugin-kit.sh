#!/usr/bin/env bash
# The plugin kit, built and checked the way a third party would (docs/plugins.md): the two example
# plugins outside the workspace, the C one with its Makefile against an *installed* copy of the
# header, the Rust one as a standalone crate depending only on rocmforge-abi; then
# `rocmforge plugins check` on each, plugin precedence through ROCMFORGE_PLUGINS, and the Rust
# example (which claims `llama`) generating exactly what the built-in llama plugin generates.
# Needs cargo, cc and make (gcc and make: .ci/run). Called by scripts/test.sh after the workspace
# is built; runs on its own too (it builds what it needs).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v make >/dev/null || { echo "make not found: install make (the C example plugin is built with it)" >&2; exit 1; }
command -v cc >/dev/null || { echo "cc not found: install gcc or clang (the C example plugin is C99)" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-target}"
# The host and the built-in plugins (a no-op after scripts/test.sh's `cargo build --workspace`).
cargo build --workspace --quiet
bin="$target/debug/rocmforge"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "test-plugin-kit: FAILED: $*" >&2; exit 1; }

echo "== C example: make against the installed header"
mkdir -p "$work/prefix/include" "$work/plugins"
cp host/abi/include/rocmforge_plugin.h "$work/prefix/include/"
make -C examples/plugin-c PREFIX="$work/prefix" OUT="$work/plugins" ROCMFORGE="$PWD/$bin"
# The Makefile must have used the installed copy, not this checkout's header.
[ "$(make -s -C examples/plugin-c PREFIX="$work/prefix" --eval='print-inc: ; @echo $(ROCMFORGE_INCLUDE)' print-inc)" = "$work/prefix/include" ] ||
  fail "examples/plugin-c/Makefile did not pick the installed header under $work/prefix/include"

echo "== Rust example: a standalone crate (own workspace and target dir)"
cargo build --quiet --release --manifest-path examples/plugin-rust/Cargo.toml --target-dir "$work/rust-target"
cp "$work/rust-target/release/librocmforge_plugin_example_rust.so" "$work/plugins/"

c_so="$work/plugins/librocmforge_plugin_example_llama.so"
rust_so="$work/plugins/librocmforge_plugin_example_rust.so"

echo "== rocmforge plugins check (synthetic tiny models)"
"$bin" plugins check "$c_so" | tee "$work/check-c.txt"
grep -q "claims     gguf: example_llama" "$work/check-c.txt" || fail "check of the C example does not report its claim"
"$bin" plugins check "$rust_so" | tee "$work/check-rust.txt"
grep -q "conflict   gguf 'llama' also claimed by 'llama'" "$work/check-rust.txt" || fail "check of the Rust example does not report its conflict with the built-in llama plugin"

echo "== rocmforge plugins check --model (a real tiny LLaMA)"
"$bin" plugins check "$rust_so" --model tests/fixtures/tiny-llama.f32.gguf

echo "== every built-in plugin passes the check on its synthetic tiny models"
# Families the LLaMA-shaped synthetic model cannot express (MLA, attention sinks) are checked on
# their tiny fixtures instead.
for so in "$target"/debug/librocmforge_plugin_*.so; do
    name="$(basename "$so" .so)"
    case "${name#librocmforge_plugin_}" in
        deepseek2) model=(--model tests/fixtures/hf-tiny/deepseek2) ;;
        gptoss) model=(--model tests/fixtures/hf-tiny/gptoss) ;;
        *) model=() ;;
    esac
    "$bin" plugins check "$so" "${model[@]}" > "$work/builtin.txt" 2>&1 || { cat "$work/builtin.txt"; fail "built-in plugin $name fails plugins check"; }
done

echo "== a file that is not a plugin fails the check"
if "$bin" plugins check examples/plugin-c/Makefile >"$work/bad.txt" 2>&1; then fail "plugins check accepted a Makefile"; fi
grep -q "cannot load" "$work/bad.txt" || { cat "$work/bad.txt"; fail "no clear error for a file that is not a plugin"; }

echo "== precedence: ROCMFORGE_PLUGINS comes before the built-in plugins"
ROCMFORGE_PLUGINS="$work/plugins" "$bin" plugins | tee "$work/list.txt"
grep -q "gguf 'llama': served by 'example_rust'; also claimed by 'llama'" "$work/list.txt" || fail "example_rust does not take precedence over llama"
grep -q " 1\. example_llama" "$work/list.txt" || fail "plugins from ROCMFORGE_PLUGINS are not ranked first"

echo "== the Rust example serves llama and generates what the built-in plugin generates"
gen() { "$bin" generate tests/fixtures/tiny-llama.f32.gguf "Once upon a time" -n 12 --temperature 0 --device cpu 2>/dev/null; }
builtin="$(gen)"
override="$(ROCMFORGE_PLUGINS="$work/plugins" gen)"
[ -n "$builtin" ] || fail "the built-in llama plugin generated nothing"
[ "$builtin" = "$override" ] || fail "example_rust generated '$override', the built-in llama plugin '$builtin'"
echo "test-plugin-kit: OK"
