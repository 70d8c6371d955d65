"""The official `ollama` Python client against rocmforge (api.md §5 T-CLI-PY-*, §1)."""
import pytest
import ollama

from conftest import MINILM, SMOL, MODELS

OPTS = {"num_predict": 8, "temperature": 0}


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server)


def test_list_and_show(client):  # T-TAGS-07, T-SHOW-03
    names = [m.model for m in client.list().models]
    assert f"{SMOL}:latest" in names and f"{MINILM}:latest" in names
    m = next(m for m in client.list().models if m.model == f"{SMOL}:latest")
    assert m.details.family == "llama" and m.size > 0 and m.modified_at is not None
    s = client.show(SMOL)
    assert s.modelinfo["general.architecture"] == "llama"
    assert "completion" in s.capabilities


def test_generate(client):  # T-GEN-R02
    r = client.generate(model=SMOL, prompt="Say hi.", options=OPTS)
    assert r.done and r.done_reason in ("stop", "length")
    assert 1 <= r.eval_count <= 8 and r.total_duration > 0 and r.context


def test_generate_stream(client):  # T-GEN-R01
    parts = list(client.generate(model=SMOL, prompt="Say hi.", options=OPTS, stream=True))
    assert parts[-1].done and all(not p.done for p in parts[:-1])
    assert "".join(p.response for p in parts)


def test_chat_and_stream(client):  # T-CHAT-07/08
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat(model=SMOL, messages=msgs, options=OPTS)
    assert r.message.role == "assistant" and r.message.content
    parts = list(client.chat(model=SMOL, messages=msgs, options=OPTS, stream=True))
    assert parts[-1].done and "".join(p.message.content for p in parts) == r.message.content


def test_chat_json_format(client):  # T-FMT-01
    r = client.chat(model=SMOL, messages=[{"role": "user", "content": "A JSON object about a dog."}],
                    format="json", options={"num_predict": 24, "temperature": 0})
    assert r.message.content.lstrip().startswith(("{", "["))


def test_embed(client):  # T-EMB-01/02/06
    r = client.embed(model=MINILM, input=["hello world", "goodbye"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 384
    assert abs(sum(x * x for x in r.embeddings[0]) - 1.0) < 1e-3
    assert len(client.embeddings(model=MINILM, prompt="hello").embedding) == 384


def test_ps_and_unload(client):  # T-PS-01, T-LOAD-02
    client.generate(model=SMOL, prompt="")
    assert f"{SMOL}:latest" in [m.model for m in client.ps().models]
    r = client.generate(model=SMOL, prompt="", keep_alive=0)
    assert r.done_reason == "unload"


def test_errors(client):  # T-ERR-*, T-CLI-PY-02
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and "not found" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=SMOL, prompt="x", think=True)
    assert e.value.status_code == 400


def test_create_copy_delete(client):  # T-CREATE-01, T-COPY-01, T-DEL-01
    gguf = str(MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")
    statuses = [p.status for p in client.create(model="compat-smol", from_=gguf, system="Be brief.", stream=True)]
    assert statuses[-1] == "success"
    assert client.generate(model="compat-smol", prompt="Hi", options=OPTS).done
    client.copy("compat-smol", "compat-copy")
    names = [m.model for m in client.list().models]
    assert "compat-smol:latest" in names and "compat-copy:latest" in names
    client.delete("compat-smol")
    client.delete("compat-copy")
    with pytest.raises(ollama.ResponseError):
        client.delete("compat-copy")


def test_pull_without_registry(client):  # T-PULL-04
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama3.2")
    assert "cannot reach" in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        for _ in client.pull("llama3.2", stream=True):  # the error is the stream's last line
            pass
    assert "cannot reach" in str(e.value)


def _local_registry(gguf):
    """An Ollama registry on 127.0.0.1 (stdlib http.server) serving `library/compat-pulled:latest`
    with SmolLM2 as its model layer. Returns (server, host:port)."""
    import hashlib
    import http.server
    import json
    import threading

    blobs = {}

    def add(b):
        d = "sha256:" + hashlib.sha256(b).hexdigest()
        blobs[d] = b
        return {"digest": d, "size": len(b)}

    config = add(b'{"model_format":"gguf","model_family":"llama"}')
    layer = add(gguf)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": dict(mediaType="application/vnd.docker.container.image.v1+json", **config),
        "layers": [dict(mediaType="application/vnd.ollama.image.model", **layer)],
    }).encode()

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            p = self.path.split("/")
            if self.path == "/v2/library/compat-pulled/manifests/latest":
                body = manifest
            elif len(p) == 6 and p[4] == "blobs" and p[5] in blobs:
                body = blobs[p[5]]
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"127.0.0.1:{srv.server_address[1]}"


def test_pull_from_local_registry(client):  # T-PULL-01..03
    srv, host = _local_registry((MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes())
    try:
        name = f"{host}/library/compat-pulled:latest"
        progress = list(client.pull(name, insecure=True, stream=True))
        statuses = [p.status for p in progress]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        blob = [p for p in progress if p.digest and p.total and p.total > 90_000_000]
        assert blob and blob[-1].completed == blob[-1].total
        assert blob[0].status == f"pulling {blob[0].digest[7:19]}"
        assert name in [m.model for m in client.list().models]
        assert client.generate(model=name, prompt="Hi", options=OPTS).done
        assert client.pull(name, insecure=True).status == "success"  # already there: no download
        with pytest.raises(ollama.ResponseError) as e:
            client.pull(f"{host}/library/nope", insecure=True)
        assert e.value.status_code == 404 and "not found in registry" in str(e.value)
        client.delete(name)
    finally:
        srv.shutdown()


def test_version(server):  # T-VER-01
    import httpx
    v = httpx.get(f"{server}/api/version").json()["version"]
    assert tuple(int(x) for x in v.split("-")[0].split("."))
