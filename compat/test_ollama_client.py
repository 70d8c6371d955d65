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
    with pytest.raises(ollama.ResponseError):
        client.pull("llama3.2")


def test_version(server):  # T-VER-01
    import httpx
    v = httpx.get(f"{server}/api/version").json()["version"]
    assert tuple(int(x) for x in v.split("-")[0].split("."))
