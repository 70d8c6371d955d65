#!/usr/bin/env bash
# Conformance suite: the official `ollama` and `openai` Python clients (from PyPI) against the
# real `rocmforge serve` with the real small models (SmolLM2-135M, all-MiniLM-L6-v2).
#
# Needs: the binary and plugins built (`cargo build --workspace`; ROCMFORGE_BIN overrides the
# binary, default $CARGO_TARGET_DIR/debug/rocmforge or target/debug/rocmforge), the models of
# scripts/fetch-test-data.sh in .cache/models, python3 with venv, and PyPI access the first time.
# The venv lives in .cache/compat-venv (reused; delete it to reinstall).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.cache/compat-venv
if [ ! -x "$VENV/bin/pytest" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r compat/requirements.txt
fi
exec "$VENV/bin/pytest" -q compat "$@"
