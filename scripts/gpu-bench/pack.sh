#!/usr/bin/env bash
# Packs what scripts/gpu-bench/run.sh needs on the GPU machine (no Rust, no network there) into
# .gpu-carry/bench/ (ignored by git; carry it with the device call: carry [".gpu-carry/bench"]):
#   rocmforge.tar.xz        release `rocmforge` + every plugin .so, stripped (plugins load from
#                           the binary's folder)
#   vocab-llama-bpe.gguf.xz llama.cpp's models/ggml-vocab-llama-bpe.gguf (the Llama-3 tokenizer
#                           `rocmforge synth` copies into the synthetic models)
#   llama.cpp-src.tar.xz    llama.cpp from the llama-cpp-python sdist (perf.md §10's commit),
#                           trimmed to what a CUDA llama-bench build reads: no models/, docs/,
#                           tests/, examples/, other ggml backends (~4 MB)
#   BUILD_INFO              what was packed, and when
# If llama-prebuilt.tar.xz (or its .part-* pieces) is already here (brought back from an earlier
# device call's $OUT), run.sh uses it and skips the 4-5 minute llama.cpp build; the source is
# then left out to keep the carry small (WITH_SRC=1 keeps it, as a fallback).
#
#   scripts/gpu-bench/pack.sh                 # build (release) and pack
#   NO_BUILD=1 scripts/gpu-bench/pack.sh      # pack binaries already built
# Env: CARGO_TARGET_DIR (default /work/target-bench), LCP_VERSION (default 0.3.36), WITH_SRC,
# BENCH_DIR (default .gpu-carry/bench).
# The device call carries at most 64 MiB in all (the repo itself is ~25 MB): the size of the
# folder and an estimate of the whole are printed last.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET="${CARGO_TARGET_DIR:-/work/target-bench}"
VER="${LCP_VERSION:-0.3.36}"
SRC_PARENT=".cache/llama-server/llama_cpp_python-$VER/vendor"
VOCAB="$SRC_PARENT/llama.cpp/models/ggml-vocab-llama-bpe.gguf"
DEST="${BENCH_DIR:-.gpu-carry/bench}"
PLUGINS=(llama qwen gemma mistral phi glm4 deepseek2 gptoss bert)

[[ -f "$SRC_PARENT/llama.cpp/CMakeLists.txt" ]] || {
    echo "no llama.cpp sources under $SRC_PARENT: run scripts/build-llama-server.sh (it fetches the sdist)" >&2
    exit 1
}
mkdir -p "$DEST"

# 1. Binaries. Only the binary package and the plugins: nothing else is needed on the device.
if [[ -z "${NO_BUILD:-}" ]]; then
    pkgs=(-p rocmforge)
    for p in "${PLUGINS[@]}"; do pkgs+=(-p "rocmforge-plugin-$p"); done
    CARGO_TARGET_DIR="$TARGET" cargo build --release "${pkgs[@]}" >&2
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
strip -o "$stage/rocmforge" "$TARGET/release/rocmforge"
for p in "${PLUGINS[@]}"; do
    strip -o "$stage/librocmforge_plugin_$p.so" "$TARGET/release/librocmforge_plugin_$p.so"
done
# -T0: all cores; the binary is ~15 MB stripped and ~4 MB compressed.
tar -C "$stage" -cf - . | xz -T0 -6 > "$DEST/rocmforge.tar.xz"

# 2. The vocab (7.5 MB, ~2x smaller compressed).
xz -T0 -6 -c "$VOCAB" > "$DEST/vocab-llama-bpe.gguf.xz"

# 3. llama.cpp sources, unless prebuilt binaries are here. CMake still configures every tool
#    under tools/ (tools/CMakeLists.txt adds them unconditionally), so those stay; the server
#    and its web UI are only added with LLAMA_BUILD_SERVER (off), the app with LLAMA_BUILD_APP.
have_prebuilt=""
[[ -f "$DEST/llama-prebuilt.tar.xz" ]] || compgen -G "$DEST/llama-prebuilt.tar.xz.part-*" >/dev/null && have_prebuilt=1
if [[ -n "$have_prebuilt" && -z "${WITH_SRC:-}" ]]; then
    rm -f "$DEST/llama.cpp-src.tar.xz"
    echo "llama-prebuilt found: llama.cpp sources left out (WITH_SRC=1 keeps them)" >&2
else
    excludes=()
    for d in models docs tests examples pocs media gguf-py conversion benches scripts app skills requirements ci \
        .devops .github .gemini .pi tools/ui tools/server; do
        excludes+=("--exclude=llama.cpp/$d")
    done
    for b in cann metal musa hip rpc sycl vulkan opencl hexagon webgpu zdnn zendnn openvino et virtgpu blas; do
        excludes+=("--exclude=llama.cpp/ggml/src/ggml-$b")
    done
    tar -C "$SRC_PARENT" -cf - --exclude-vcs "${excludes[@]}" '--exclude=llama.cpp/*.py' llama.cpp | xz -T0 -9 > "$DEST/llama.cpp-src.tar.xz"
fi

{
    echo "packed: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "rocmforge: $("$stage/rocmforge" --version 2>/dev/null || echo '?')"
    echo "llama.cpp: llama-cpp-python $VER sdist (vendor/llama.cpp)"
    if [[ -n "$have_prebuilt" ]]; then
        echo "llama-prebuilt: present ($(cat "$DEST"/llama-prebuilt.tar.xz* | wc -c) bytes)"
    fi
} > "$DEST/BUILD_INFO"

# 4. Sizes. The repo part is what travels without carry: everything but .git and ignored paths
#    (an estimate from .gitignore's top-level entries; no git calls, other engineers commit).
bench_bytes=$(du -sb "$DEST" | cut -f1)
repo_bytes=$(du -sb --exclude=./.git --exclude=./target --exclude=./.cache --exclude=./.gpu-carry --exclude=./.whl \
    --exclude=./fuzz/target --exclude=./fuzz/artifacts --exclude='__pycache__' . | cut -f1)
ls -l "$DEST" >&2
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "$DEST: $(mib "$bench_bytes"); repo (estimate): $(mib "$repo_bytes"); together $(mib $((bench_bytes + repo_bytes))) of the 64 MiB a device call carries" >&2
if (( bench_bytes + repo_bytes > 62 * 1048576 )); then
    echo "WARNING: too close to the 64 MiB limit: drop the llama.cpp sources (have a prebuilt) or other carried files" >&2
fi
