//! The OpenAI and llama-server dialects end to end (real binary, real models, real HTTP).
//! Test ids in comments are `../shared/specs/api.md`'s.

mod server_util;

use serde_json::{json, Value as Json};
use server_util::{sse_events, Server, MINILM, SMOL, SMOL_TAG};

/// [T-SSE-01..08] [T-OAI-RES-01..05] [T-OAI-REQ-*] chat completions: exact chunk sequence,
/// include_usage, n, logprobs, non-streaming shape.
#[test]
fn chat_completions() {
    let s = Server::start(&[]);
    let msgs = json!([{"role": "user", "content": "Name a color."}]);
    let (st, ct, body) = s.post(
        "/v1/chat/completions",
        &json!({"model": SMOL, "messages": msgs, "stream": true, "max_tokens": 6, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(st, 200, "{body}");
    assert!(ct.starts_with("text/event-stream"));
    let ev = sse_events(&body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Json> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let (id, created) = (chunks[0]["id"].clone(), chunks[0]["created"].clone());
    assert!(id.as_str().unwrap().starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!((&c["id"], &c["created"], c["object"].as_str()), (&id, &created, Some("chat.completion.chunk")));
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[1..].iter().all(|c| c["choices"].get(0).is_none_or(|ch| ch["delta"].get("role").is_none())));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    let finish = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(finish["delta"], json!({}));
    assert!(matches!(finish["finish_reason"].as_str(), Some("stop" | "length")));
    // llama-server's timings on the finish chunk (what Open WebUI's OpenAI connection reads).
    let timings = &chunks[chunks.len() - 2]["timings"];
    assert_eq!(timings["predicted_n"], usage["usage"]["completion_tokens"], "{timings}");
    assert!(timings["prompt_n"].as_u64().unwrap() >= 1 && timings["predicted_per_second"].as_f64().unwrap() > 0.0, "{timings}");
    for c in &chunks[..chunks.len() - 2] {
        assert!(c["choices"][0]["finish_reason"].is_null());
    }
    let completion = usage["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=6).contains(&completion));
    assert_eq!(usage["usage"]["total_tokens"].as_u64().unwrap(), completion + usage["usage"]["prompt_tokens"].as_u64().unwrap());

    // OpenAI content parts on a template that concatenates `content` as a string (SmolLM2's):
    // the text parts are joined, not handed to the template as a list (which failed to render).
    let parts = json!([{"role": "user", "content": [{"type": "text", "text": "Name a"}, {"type": "text", "text": "color."}]}]);
    let (st, v) = s.json("/v1/chat/completions", &json!({"model": SMOL, "messages": parts, "max_tokens": 3}));
    assert_eq!(st, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    let (st, v) = s.json("/apply-template", &json!({"model": SMOL, "messages": parts}));
    assert_eq!(st, 200, "{v}");
    assert!(v["prompt"].as_str().unwrap().contains("Name a\ncolor."), "{v}");
    let img = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]);
    let (st, v) = s.json("/v1/chat/completions", &json!({"model": SMOL, "messages": img}));
    assert_eq!((st, v["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("does not support vision"), "{v}");

    // Non-streaming, n = 2, logprobs, seed.
    let (st, v) = s.json(
        "/v1/chat/completions",
        &json!({"model": SMOL, "messages": msgs, "max_completion_tokens": 4, "n": 2, "seed": 7, "logprobs": true, "top_logprobs": 3}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let ch = v["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 2);
    assert_eq!((ch[0]["index"].as_u64(), ch[1]["index"].as_u64()), (Some(0), Some(1)));
    assert_eq!(ch[0]["message"]["role"], "assistant");
    let lp = ch[0]["logprobs"]["content"].as_array().unwrap();
    assert!(!lp.is_empty() && lp[0]["top_logprobs"].as_array().unwrap().len() == 3);
    // The same seed gives the same text.
    let (_, v2) = s.json("/v1/chat/completions", &json!({"model": SMOL, "messages": msgs, "max_completion_tokens": 4, "n": 2, "seed": 7}));
    assert_eq!(v2["choices"][0]["message"]["content"], ch[0]["message"]["content"]);

    // response_format json_object.
    let (st, v) = s.json(
        "/v1/chat/completions",
        &json!({"model": SMOL, "messages": [{"role": "user", "content": "A JSON object with a name."}], "max_tokens": 20, "temperature": 0, "response_format": {"type": "json_object"}}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().trim_start().starts_with('{'), "{v}");

    // Errors in OpenAI's shape.
    let (st, v) = s.json("/v1/chat/completions", &json!({"model": "nope", "messages": msgs}));
    assert_eq!(st, 404);
    assert_eq!(v["error"]["type"], "not_found_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("not found"));
    let (st, v) = s.json("/v1/chat/completions", &json!({"model": SMOL, "messages": []}));
    assert_eq!((st, v["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    let (st, _, b) = s.post_raw("/v1/chat/completions", b"{");
    assert_eq!(st, 400);
    assert!(serde_json::from_str::<Json>(&b).unwrap()["error"]["message"].is_string());
}

/// [T-OAI-CMPL-01..04] [T-OAI-MOD-01..03] [T-OAI-EMB-01..04] completions, models, embeddings.
#[test]
fn completions_models_embeddings() {
    let s = Server::start(&[]);
    let (st, v) = s.json("/v1/completions", &json!({"model": SMOL, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // ignore_eos (llama-server / vLLM extension): the end-of-turn token does not end the reply.
    // The chat template's answer to "Say hi." ends within a few tokens when EOS is honoured.
    let msgs = json!([{"role": "user", "content": "Say hi."}]);
    let (st, w) = s.json("/v1/chat/completions", &json!({"model": SMOL, "messages": msgs, "max_tokens": 48, "temperature": 0}));
    assert_eq!(st, 200, "{w}");
    let natural = w["usage"]["completion_tokens"].as_u64().unwrap();
    let (st, w) =
        s.json("/v1/chat/completions", &json!({"model": SMOL, "messages": msgs, "max_tokens": 48, "temperature": 0, "ignore_eos": true}));
    assert_eq!(st, 200, "{w}");
    assert_eq!((w["usage"]["completion_tokens"].as_u64(), w["choices"][0]["finish_reason"].as_str()), (Some(48), Some("length")), "{w}");
    assert!(natural < 48, "the reply without ignore_eos ends by itself ({natural} tokens)");
    let (st, _, body) =
        s.post("/v1/completions", &json!({"model": SMOL, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, "stream": true}));
    assert_eq!(st, 200);
    let ev = sse_events(&body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let text: String = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Json>(e).unwrap()["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(text, v["choices"][0]["text"].as_str().unwrap());

    let m = s.get_json("/v1/models");
    assert_eq!(m["object"], "list");
    assert!(m["data"].as_array().unwrap().iter().any(|d| d["id"] == SMOL_TAG && d["object"] == "model" && d["owned_by"] == "library"));
    assert_eq!(s.get_json(&format!("/v1/models/{SMOL}"))["id"], SMOL);
    let (st, _, b) = s.get("/v1/models/nope");
    assert_eq!(st, 404, "{b}");

    let (st, v) = s.json("/v1/embeddings", &json!({"model": MINILM, "input": ["a", "b"]}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 384);
    let (st, v) = s.json("/v1/embeddings", &json!({"model": MINILM, "input": "a", "encoding_format": "base64"}));
    assert_eq!(st, 200);
    assert_eq!(v["data"][0]["embedding"].as_str().unwrap().len(), 384 * 4 * 4 / 3);
    let (st, v) = s.json("/v1/embeddings", &json!({"model": MINILM, "input": "a", "encoding_format": "int8"}));
    assert_eq!(st, 400, "{v}");
    let (st, _) = s.json("/v1/embeddings", &json!({"model": MINILM, "input": []}));
    assert_eq!(st, 400);
}

/// [T-LS-HEALTH-02] [T-LS-CMPL-*] [T-LS-STREAM-01..05] [T-LS-TOK-01..04] [T-LS-TPL-01]
/// [T-LS-EMB-01] [T-LS-PROPS-01] [T-LS-SLOTS-01] [T-LS-MET-01] llama-server's routes.
#[test]
fn llama_server_routes() {
    let s = Server::start(&[]);
    assert_eq!(s.get_json("/health"), json!({"status": "ok"}));
    let (st, v) = s
        .json("/completion", &json!({"model": SMOL, "prompt": "The capital of France is", "n_predict": 4, "temperature": 0, "n_probs": 2}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["stop"], true);
    assert_eq!(v["tokens_predicted"], 4);
    assert_eq!(v["stop_type"], "limit");
    assert!(v["timings"]["predicted_n"].as_u64() == Some(4));
    assert_eq!(v["completion_probabilities"].as_array().unwrap().len(), 4);
    // Token-array prompt; SSE without [DONE].
    let (_, t) = s.json("/tokenize", &json!({"model": SMOL, "content": "Hello world", "with_pieces": true}));
    let ids: Vec<u64> = t["tokens"].as_array().unwrap().iter().map(|x| x["id"].as_u64().unwrap()).collect();
    assert!(!ids.is_empty() && t["tokens"][0]["piece"].is_string());
    let (_, d) = s.json("/detokenize", &json!({"model": SMOL, "tokens": ids}));
    assert_eq!(d["content"], "Hello world");
    let (st, _, body) = s.post("/completion", &json!({"model": SMOL, "prompt": ids, "n_predict": 3, "stream": true}));
    assert_eq!(st, 200);
    let ev = sse_events(&body);
    assert!(ev.iter().all(|e| e != "[DONE]"));
    let last: Json = serde_json::from_str(ev.last().unwrap()).unwrap();
    assert_eq!(last["stop"], true);
    let first: Json = serde_json::from_str(&ev[0]).unwrap();
    assert_eq!(first["stop"], false);

    let (st, v) = s.json("/apply-template", &json!({"model": SMOL, "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(st, 200);
    assert!(v["prompt"].as_str().unwrap().contains("<|im_start|>user\nhi"), "{v}");
    let (st, v) = s.json("/embedding", &json!({"model": MINILM, "content": "hello"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v[0]["embedding"][0].as_array().unwrap().len(), 384);
    let (st, v) = s.json("/detokenize", &json!({"model": SMOL, "tokens": [99999999]}));
    assert_eq!((st, v["error"]["type"].as_str()), (400, Some("invalid_request_error")));

    let props = s.get_json("/props");
    assert!(props["model_path"].as_str().unwrap().ends_with(".gguf"));
    let slots = s.get_json("/slots");
    assert!(slots.as_array().unwrap().iter().any(|x| x["n_ctx"] == 1024));
    let (st, ct, m) = s.get("/metrics");
    assert_eq!(st, 200);
    assert!(ct.starts_with("text/plain"));
    assert!(m.contains("# TYPE llamacpp:prompt_tokens_total counter"));
    let n: f64 = m.lines().find_map(|l| l.strip_prefix("llamacpp:tokens_predicted_total ")).unwrap().parse().unwrap();
    assert!(n >= 7.0, "{m}");
}

/// A dropped client connection cancels its request; the API key guards the routes.
#[test]
fn cancel_on_disconnect_and_api_key() {
    let s = Server::start(&["--api-key", "sekrit"]);
    let (st, _, _) = s.get("/api/tags");
    assert_eq!(st, 401);
    assert_eq!(s.get_json("/health")["status"], "ok");
    // Raw TCP: ask for a long streamed generation, read a little, then hang up.
    use std::io::{Read, Write};
    let addr = s.url.strip_prefix("http://").unwrap().to_string();
    let body = json!({"model": SMOL, "prompt": "Write a long story.", "options": {"num_predict": 100000}}).to_string();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "POST /api/generate HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer sekrit\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(c);
    // The request ends (the engine frees it): nothing stays in flight.
    let metric = |name: &str| -> f64 {
        let r = ureq::get(format!("{}/metrics", s.url))
            .header("Authorization", "Bearer sekrit")
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap();
        r.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap().parse().unwrap()
    };
    assert!(
        s.wait_for(20, || metric("rocmforge:http_requests_in_flight") == 0.0 && metric("rocmforge:requests_cancelled_total") == 1.0),
        "request not cancelled"
    );
}
