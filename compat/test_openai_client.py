"""The official `openai` Python client against rocmforge's /v1 (api.md §2, T-CLI-OAI-*)."""
import json

import httpx
import openai
import pytest

from conftest import MINILM, SMOL

MSGS = [{"role": "user", "content": "Name a fruit."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused")


def test_models(client):  # T-OAI-MOD-01/03
    ids = [m.id for m in client.models.list()]
    assert f"{SMOL}:latest" in ids
    assert client.models.retrieve(SMOL).id == SMOL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat(client):  # T-OAI-RES-01..05
    r = client.chat.completions.create(model=SMOL, messages=MSGS, max_tokens=6, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_usage(client):  # T-SSE-01..08
    chunks = list(client.chat.completions.create(model=SMOL, messages=MSGS, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    r = client.chat.completions.create(model=SMOL, messages=MSGS, max_tokens=6, temperature=0)
    assert text == r.choices[0].message.content


def test_n_logprobs_seed(client):
    r = client.chat.completions.create(model=SMOL, messages=MSGS, max_completion_tokens=4, n=2, seed=3,
                                       logprobs=True, top_logprobs=2)
    assert len(r.choices) == 2
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 2


def test_response_format(client):
    r = client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Give a JSON object with a name."}], max_tokens=24,
        temperature=0, response_format={"type": "json_object"})
    assert r.choices[0].message.content.lstrip().startswith("{")


def test_completions(client):  # T-OAI-CMPL-01..04
    r = client.completions.create(model=SMOL, prompt="Once upon a time", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.usage.completion_tokens == 5
    s = "".join(c.choices[0].text for c in client.completions.create(
        model=SMOL, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert s == r.choices[0].text


def test_embeddings(client):  # T-OAI-EMB-01..04
    r = client.embeddings.create(model=MINILM, input=["a", "b"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 384
    b = client.embeddings.create(model=MINILM, input="a", encoding_format="base64")
    # Asked for explicitly, base64 comes back as the string: little-endian float32s.
    import base64
    import struct
    raw = base64.b64decode(b.data[0].embedding)
    assert len(raw) == 384 * 4
    floats = struct.unpack("<384f", raw)
    assert abs(sum(x * x for x in floats) - 1.0) < 1e-3


def test_errors(client, server):  # T-OAI-ERR-01..03
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSGS)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=SMOL, messages=[])
    r = httpx.post(f"{server}/v1/chat/completions", content=b"{")
    assert r.status_code == 400 and "message" in r.json()["error"]


def test_raw_framing(server):  # T-TR-07, T-SSE-*, T-LS-STREAM-*
    r = httpx.post(f"{server}/api/chat", json={"model": SMOL, "messages": MSGS, "options": {"num_predict": 4}})
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = r.text.split("\n")
    assert lines[-1] == "" and all(json.loads(line) for line in lines[:-1])
    r = httpx.post(f"{server}/completion", json={"model": SMOL, "prompt": "Hi", "n_predict": 3, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream") and "[DONE]" not in r.text
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
