"""Starts one `rocmforge serve` for the whole suite: a fresh store, SmolLM2 named `smollm2`
and all-MiniLM-L6-v2 named `minilm`, on a free port; yields its base URL."""
import os
import pathlib
import subprocess
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / ".cache" / "models"
SMOL = "smollm2"
MINILM = "minilm"


def _binary():
    if os.environ.get("ROCMFORGE_BIN"):
        return os.environ["ROCMFORGE_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(pathlib.Path(target) / "debug" / "rocmforge")


@pytest.fixture(scope="session")
def server():
    smol = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
    mini = MODELS / "all-MiniLM-L6-v2-q8_0.gguf"
    for m in (smol, mini):
        if not m.exists():
            pytest.fail(f"{m} missing: run scripts/fetch-test-data.sh")
    store = tempfile.mkdtemp(prefix="rocmforge-compat-")
    # Pulls of default names go to a closed local port: the suite never downloads from the real
    # registry or Hugging Face (test_pull_from_local_registry serves its own registry).
    env = dict(os.environ, OLLAMA_MODELS=store, RUST_LOG="warn",
               ROCMFORGE_REGISTRY_URL="http://127.0.0.1:9", ROCMFORGE_HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("OLLAMA_HOST", None)
    p = subprocess.Popen(
        [_binary(), "serve", "--host", "127.0.0.1:0", "--ctx-size", "1024",
         "--model", f"{SMOL}={smol}", "--model", f"{MINILM}={mini}"],
        stdout=subprocess.PIPE, env=env, text=True)
    line = p.stdout.readline().strip()
    prefix = "rocmforge listening on "
    if not line.startswith(prefix):
        p.kill()
        pytest.fail(f"server did not start: {line!r}")
    url = line[len(prefix):]
    yield url
    p.terminate()
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
