#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU, Release, -march=native) from the llama.cpp vendored in the
# llama-cpp-python source package on PyPI, for scripts/bench-serve-vs-llama.sh.
#   scripts/build-llama-server.sh            -> .cache/llama-server/bin/llama-server
# Env: LCP_VERSION (default 0.3.36), JOBS (default nproc), NICE (default 10).
# No web UI (neither npm nor a download), no curl, no OpenSSL; only the llama-server target.
# ~10-15 min on 2 cores. Idempotent: does nothing if the binary for this version already exists.
set -euo pipefail
cd "$(dirname "$0")/.."
VER="${LCP_VERSION:-0.3.36}"
JOBS="${JOBS:-$(nproc)}"
NICE="${NICE:-10}"
DIR=.cache/llama-server
SRC="$DIR/llama_cpp_python-$VER/vendor/llama.cpp"
BUILD="$DIR/build-$VER"
BIN="$DIR/bin/llama-server"

if [[ -x "$BIN" && -f "$DIR/.done-$VER" ]]; then
    echo "$BIN (llama-cpp-python $VER) already built" >&2
    exit 0
fi
mkdir -p "$DIR/dl" "$DIR/bin"

# 1. The sdist. `--no-binary llama-cpp-python` (not `:all:`): with `:all:` pip would also build the
#    build backend's own dependencies (cmake, ninja) from source just to read the metadata.
if [[ ! -d "$SRC" ]]; then
    pip download "llama-cpp-python==$VER" --no-deps --no-binary llama-cpp-python -d "$DIR/dl" >&2
    tar -xzf "$DIR/dl/llama_cpp_python-$VER.tar.gz" -C "$DIR"
fi
[[ -f "$SRC/CMakeLists.txt" ]] || { echo "no llama.cpp under $SRC" >&2; exit 1; }

# 2. CMake (a wheel into a private venv if the system has none).
CMAKE=cmake
if ! command -v cmake >/dev/null; then
    if [[ ! -x "$DIR/venv/bin/cmake" ]]; then
        python3 -m venv "$DIR/venv"
        "$DIR/venv/bin/pip" install -q cmake >&2
    fi
    CMAKE="$DIR/venv/bin/cmake"
fi

# 3. Configure + build just llama-server.
#    LLAMA_BUILD_UI=OFF + LLAMA_USE_PREBUILT_UI=OFF: no npm build, no HF download (the server then
#    serves no web page, the API is unaffected). LLAMA_CURL is deprecated in this llama.cpp (no-op).
t0=$(date +%s)
nice -n "$NICE" "$CMAKE" -S "$SRC" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DBUILD_SHARED_LIBS=OFF >&2
nice -n "$NICE" "$CMAKE" --build "$BUILD" --target llama-server -j "$JOBS" >&2
cp "$BUILD/bin/llama-server" "$BIN"
touch "$DIR/.done-$VER"
echo "built $BIN in $(( $(date +%s) - t0 )) s" >&2
"$BIN" --version 2>&1 | head -3 >&2 || true
