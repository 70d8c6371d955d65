//! Wire-layer tests of all three dialects through the real router, in process, over a scripted
//! fake model ([`backend::fake::Fake`]): framing, chunk sequences, option mapping, error shapes.
//! No weights needed; the end-to-end tests with real models are `tests/server_*.rs`.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use serde_json::{json, Value as Json};
use tower::ServiceExt;

use crate::backend::fake::{byte_tokenizer, Fake};
use crate::backend::{Backend, BackendError, Loader, ModelFacts};
use crate::options::KeepAlive;
use crate::ServerConfig;

struct FakeLoader;

impl Loader for FakeLoader {
    fn load(&self, path: &std::path::Path, n_ctx: Option<usize>) -> Result<Arc<dyn Backend>, BackendError> {
        let embedding = path.to_string_lossy().contains("embed");
        let facts = ModelFacts {
            path: path.to_path_buf(),
            arch: "llama".into(),
            n_ctx: n_ctx.unwrap_or(64),
            n_ctx_train: 2048,
            n_vocab: 256,
            is_embedding: embedding,
            template_stops: vec![],
            ..Default::default()
        };
        // Idle engine counters: 8 KV blocks, all free; 12 prompt tokens looked up, 4 found.
        let stats = crate::backend::EngineStats {
            kv_blocks_total: 8,
            kv_blocks_free: 8,
            prefix_queries: 12,
            prefix_hits: 4,
            steps: 5,
            ..Default::default()
        };
        Ok(Arc::new(Fake { facts, tok: byte_tokenizer(), pieces: vec!["Hel", "lo", " there", "!"], stats: Some(stats) }))
    }
}

fn app() -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // Files only need to exist: the fake loader never reads them.
    let m = dir.path().join("fake.gguf");
    let e = dir.path().join("embed.gguf");
    std::fs::write(&m, b"x").unwrap();
    std::fs::write(&e, b"x").unwrap();
    let cfg = ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        store_root: dir.path().join("store"),
        models_dirs: vec![],
        aliases: vec![("fake".into(), m), ("emb".into(), e)],
        keep_alive: KeepAlive::For(std::time::Duration::from_secs(300)),
        default_ctx: None,
        max_loaded: 3,
        api_key: None,
        origins: vec![],
        body_limit: 1 << 20,
        max_predict: None,
        preload: vec![],
        max_num_seqs: 4,
        request_cache: 0,
    };
    (crate::router(crate::state(cfg, Arc::new(FakeLoader))), dir)
}

async fn call(app: &axum::Router, method: &str, path: &str, body: &str) -> (StatusCode, String, String) {
    let req = Request::builder().method(method).uri(path).header("host", "127.0.0.1:11434").body(Body::from(body.to_string())).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ct = resp.headers().get("content-type").and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let b = to_bytes(resp.into_body(), 1 << 24).await.unwrap();
    (status, ct, String::from_utf8_lossy(&b).into_owned())
}

fn lines(body: &str) -> Vec<Json> {
    assert!(body.ends_with('\n'));
    body.split_terminator('\n').map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn events(body: &str) -> Vec<String> {
    body.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_generate_stream_and_final() {
    let (app, _d) = app();
    let (st, ct, body) = call(&app, "POST", "/api/generate", r#"{"model":"fake","prompt":"hi","raw":true}"#).await;
    assert_eq!((st, ct.as_str()), (StatusCode::OK, "application/x-ndjson"));
    let l = lines(&body);
    assert_eq!(l.len(), 5);
    assert_eq!(l[0]["response"], "Hel");
    assert!(l[0].get("eval_count").is_none());
    let last = &l[4];
    assert_eq!((last["done"].as_bool(), last["done_reason"].as_str()), (Some(true), Some("stop")));
    assert_eq!(last["eval_count"], 4);
    assert_eq!(last["prompt_eval_count"], 2);
    assert_eq!(last["eval_duration"], 3_000_000);
    assert!(last.get("context").is_none(), "raw: no context");
    // Non-streaming concatenates; num_predict maps to max_tokens (length).
    let (_, _, body) =
        call(&app, "POST", "/api/generate", r#"{"model":"fake","prompt":"hi","stream":false,"options":{"num_predict":2}}"#).await;
    let v: Json = serde_json::from_str(&body).unwrap();
    assert_eq!((v["response"].as_str(), v["done_reason"].as_str()), (Some("Hello"), Some("length")));
    assert_eq!(v["context"].as_array().unwrap().len(), 3 + 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_chat_load_unload_ps() {
    let (app, _d) = app();
    let (st, _, body) = call(&app, "POST", "/api/chat", r#"{"model":"fake","messages":[]}"#).await;
    assert_eq!(st, StatusCode::OK);
    let v: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(v["done_reason"], "load");
    let (_, _, ps) = call(&app, "GET", "/api/ps", "").await;
    let ps: Json = serde_json::from_str(&ps).unwrap();
    assert_eq!(ps["models"][0]["model"], "fake:latest");
    let (_, _, body) = call(
        &app,
        "POST",
        "/api/chat",
        r#"{"model":"fake","messages":[{"role":"user","content":"x"}],"stream":false,"logprobs":true,"top_logprobs":2}"#,
    )
    .await;
    let v: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(v["message"], json!({"role":"assistant","content":"Hello there!"}));
    assert_eq!(v["logprobs"].as_array().unwrap().len(), 4);
    assert_eq!(v["logprobs"][0]["top_logprobs"].as_array().unwrap().len(), 2);
    let (_, _, body) = call(&app, "POST", "/api/generate", r#"{"model":"fake","keep_alive":0}"#).await;
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap()["done_reason"], "unload");
    let (_, _, ps) = call(&app, "GET", "/api/ps", "").await;
    assert_eq!(ps, r#"{"models":[]}"#);
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_errors() {
    let (app, _d) = app();
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/api/generate", "", 400, "missing request body"),
        ("/api/generate", r#"{"model":"nope","prompt":"x"}"#, 404, "model 'nope' not found"),
        ("/api/generate", r#"{"model":"fake","prompt":"x","top_logprobs":30}"#, 400, "top_logprobs must be between 0 and 20"),
        (
            "/api/generate",
            r#"{"model":"fake","prompt":"x","raw":true,"context":[1]}"#,
            400,
            "raw mode does not support template, system, or context",
        ),
        ("/api/generate", r#"{"model":"fake","prompt":"x","keep_alive":"10"}"#, 400, "time: missing unit in duration \"10\""),
        (
            "/api/generate",
            r#"{"model":"fake","prompt":"x","format":"xml"}"#,
            400,
            "invalid format: \"xml\"; expected \"json\" or a valid JSON Schema object",
        ),
        ("/api/chat", r#"{"model":"emb","messages":[{"role":"user","content":"x"}]}"#, 400, "\"emb\" does not support chat"),
        ("/api/embed", r#"{"model":"emb","input":[1]}"#, 400, "invalid input type"),
        ("/api/embed", r#"{"model":"nope","input":"x"}"#, 404, "model \"nope\" not found, try pulling it first"),
        ("/api/show", r#"{}"#, 400, "model is required"),
        ("/api/copy", r#"{"source":"a","destination":"../b"}"#, 400, "destination \"../b\" is invalid"),
    ];
    for (path, body, status, msg) in cases {
        let (st, ct, b) = call(&app, "POST", path, body).await;
        assert_eq!(st.as_u16(), *status, "{path} {body}: {b}");
        assert!(ct.starts_with("application/json"), "{ct}");
        assert_eq!(serde_json::from_str::<Json>(&b).unwrap(), json!({ "error": msg }), "{path} {body}");
    }
    // Prompt longer than the context (64 here): a clear error, never truncated.
    let long = format!(r#"{{"model":"fake","prompt":"{}","raw":true}}"#, "a".repeat(100));
    let (st, _, b) = call(&app, "POST", "/api/generate", &long).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(b.contains("exceeds the available context size"), "{b}");
    assert_eq!(call(&app, "GET", "/nope", "").await.2, "404 page not found");
    let (st, _, b) = call(&app, "GET", "/api/chat", "").await;
    assert_eq!((st.as_u16(), b.as_str()), (405, "405 method not allowed"));
    // DNS-rebinding guard.
    let req = Request::builder().uri("/api/tags").header("host", "evil.example:11434").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::FORBIDDEN);
}

/// Open WebUI 0.12 sends its built-in tools with every chat: a model whose template cannot show
/// tools answers as without them (Ollama would refuse with 400, which broke chatting from the
/// UI). Only a call the client requires (`tool_choice`) is refused.
#[tokio::test(flavor = "multi_thread")]
async fn tools_on_a_model_without_tool_support() {
    let (app, _d) = app();
    let tools = r#"[{"type":"function","function":{"name":"search_memories","description":"d","parameters":{"type":"object","properties":{"query":{"type":"string"}},"required":["query"]}}}]"#;
    let body = format!(r#"{{"model":"fake","messages":[{{"role":"user","content":"hi"}}],"tools":{tools},"stream":false}}"#);
    let (st, _, b) = call(&app, "POST", "/api/chat", &body).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let v: Json = serde_json::from_str(&b).unwrap();
    assert_eq!(v["message"]["content"], "Hello there!");
    assert!(v["message"].get("tool_calls").is_none(), "{v}");
    let body = format!(r#"{{"model":"fake","messages":[{{"role":"user","content":"hi"}}],"tools":{tools}}}"#);
    let (st, _, b) = call(&app, "POST", "/v1/chat/completions", &body).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    // OpenAI content parts: text parts reach a string-content template joined; images are refused.
    let (st, _, b) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"fake","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let (st, _, b) = call(
        &app,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"fake","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,AA"}}]}]}"#,
    )
    .await;
    assert_eq!(
        (st, serde_json::from_str::<Json>(&b).unwrap()["error"]["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("\"fake\" does not support vision"))
    );
    let body = format!(r#"{{"model":"fake","messages":[{{"role":"user","content":"hi"}}],"tools":{tools},"tool_choice":"required"}}"#);
    let (st, _, b) = call(&app, "POST", "/v1/chat/completions", &body).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    assert!(b.contains("does not support tools"), "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn embed_normalised_and_legacy_raw() {
    let (app, _d) = app();
    let (st, _, b) = call(&app, "POST", "/api/embed", r#"{"model":"emb","input":["abc","de"]}"#).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let v: Json = serde_json::from_str(&b).unwrap();
    assert_eq!(v["embeddings"], json!([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]));
    let (_, _, b) = call(&app, "POST", "/api/embeddings", r#"{"model":"emb","prompt":"abc"}"#).await;
    assert_eq!(serde_json::from_str::<Json>(&b).unwrap(), json!({"embedding": [3.0, 0.0, 0.0]}));
    let (_, _, b) = call(&app, "POST", "/v1/embeddings", r#"{"model":"emb","input":"abc","encoding_format":"base64"}"#).await;
    let v: Json = serde_json::from_str(&b).unwrap();
    assert_eq!(v["data"][0]["embedding"], "AACAPwAAAAAAAAAA");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_chat_sse_sequence() {
    let (app, _d) = app();
    let (st, ct, body) = call(&app, "POST", "/v1/chat/completions", r#"{"model":"fake","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":3}"#).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ct, "text/event-stream");
    let ev = events(&body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let c: Vec<Json> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(c.len(), 3 + 2);
    assert_eq!(c[0]["choices"][0]["delta"], json!({"role":"assistant","content":"Hel"}));
    assert_eq!(c[1]["choices"][0]["delta"], json!({"content":"lo"}));
    assert_eq!(c[3]["choices"][0], json!({"index":0,"delta":{},"finish_reason":"length"}));
    // llama-server's timings ride on the finish chunk (Open WebUI's OpenAI connection reads them).
    assert_eq!((c[3]["timings"]["predicted_n"].as_u64(), c[3]["timings"]["prompt_n"].as_u64()), (Some(3), Some(3)));
    assert!(c[..3].iter().all(|x| x.get("timings").is_none()));
    assert_eq!(c[4]["choices"], json!([]));
    assert_eq!(c[4]["usage"]["completion_tokens"], 3);
    assert!(c.iter().all(|x| x["id"] == c[0]["id"] && x["created"] == c[0]["created"] && x["object"] == "chat.completion.chunk"));
    // n = 2 streams both choices.
    let (_, _, body) =
        call(&app, "POST", "/v1/chat/completions", r#"{"model":"fake","messages":[{"role":"user","content":"x"}],"stream":true,"n":2}"#)
            .await;
    let ev = events(&body);
    let finishes = ev.iter().filter(|e| e.contains("\"finish_reason\":\"stop\"")).count();
    assert_eq!(finishes, 2);
    // Non-streaming shape and OpenAI errors.
    let (_, _, body) = call(&app, "POST", "/v1/chat/completions", r#"{"model":"fake","messages":[{"role":"user","content":"x"}]}"#).await;
    let v: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello there!");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], v["usage"]["prompt_tokens"].as_u64().unwrap() + 4);
    assert_eq!(v["timings"]["predicted_n"], 4);
    let (st, _, body) = call(&app, "POST", "/v1/chat/completions", r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let v: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "not_found_error");
    let (st, _, _) = call(&app, "POST", "/v1/embeddings", r#"{"model":"emb","input":"x","encoding_format":"int8"}"#).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn llama_server_shapes() {
    let (app, _d) = app();
    let (_, _, body) = call(&app, "POST", "/completion", r#"{"model":"fake","prompt":[1,2,"ab"],"n_predict":2,"stream":true}"#).await;
    let ev = events(&body);
    assert!(ev.iter().all(|e| e != "[DONE]"));
    let last: Json = serde_json::from_str(ev.last().unwrap()).unwrap();
    assert_eq!(
        (last["stop"].as_bool(), last["stop_type"].as_str(), last["tokens_predicted"].as_u64()),
        (Some(true), Some("limit"), Some(2))
    );
    let (st, _, body) = call(&app, "POST", "/completion", r#"{"model":"fake","prompt":[1000]}"#).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap()["error"]["code"], 400);
    let (_, _, body) = call(&app, "POST", "/tokenize", r#"{"model":"fake","content":"hi"}"#).await;
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap(), json!({"tokens":[104,105]}));
    let (_, _, body) = call(&app, "POST", "/detokenize", r#"{"model":"fake","tokens":[104,105]}"#).await;
    assert_eq!(serde_json::from_str::<Json>(&body).unwrap(), json!({"content":"hi"}));
    let (_, _, m) = call(&app, "GET", "/metrics", "").await;
    assert!(m.contains("llamacpp:tokens_predicted_total 2\n"), "{m}");
    assert_eq!(call(&app, "GET", "/health", "").await.2, r#"{"status":"ok"}"#);
}

/// [T-LS-MET-01] [T-LS-SLOTS-01] [T-LS-PROPS-01] the engines' snapshots reach `/metrics`,
/// `/slots` and `/props`; counters keep their value after the model is unloaded.
#[tokio::test(flavor = "multi_thread")]
async fn engine_stats_in_metrics_slots_props() {
    let (app, _d) = app();
    let metric = |text: &str, name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    // Nothing loaded: gauges at 0, /slots empty.
    let (_, _, m) = call(&app, "GET", "/metrics", "").await;
    assert_eq!((metric(&m, "vllm:num_requests_running"), metric(&m, "vllm:gpu_cache_usage_perc")), (0.0, 0.0));
    assert_eq!(metric(&m, "rocmforge:models_loaded"), 0.0);
    assert_eq!(call(&app, "GET", "/slots", "").await.2, "[]");
    let (st, _, _) = call(&app, "POST", "/slots/0?action=erase", "").await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let (st, _, _) = call(&app, "POST", "/api/generate", r#"{"model":"fake","prompt":"hi","stream":false}"#).await;
    assert_eq!(st, StatusCode::OK);
    let (_, _, m) = call(&app, "GET", "/metrics", "").await;
    for name in ["vllm:prefix_cache_queries_total", "rocmforge:prefix_cache_queries_total"] {
        assert_eq!(metric(&m, name), 12.0, "{name}: {m}");
    }
    assert_eq!(metric(&m, "vllm:prefix_cache_hits_total"), 4.0);
    assert_eq!(metric(&m, "llamacpp:n_decode_total"), 5.0);
    assert_eq!(metric(&m, "rocmforge:kv_cache_blocks_total"), 8.0);
    assert_eq!(metric(&m, "llamacpp:kv_cache_usage_ratio"), 0.0);
    assert!(m.contains("vllm:lora_requests_info{max_lora=\"0\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} "), "{m}");

    let (_, _, body) = call(&app, "GET", "/slots", "").await;
    let slots: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(slots[0]["model"], "fake:latest");
    assert_eq!((slots[0]["is_processing"].as_bool(), slots[0]["kv_blocks_total"].as_u64()), (Some(false), Some(8)));
    let (st, _, _) = call(&app, "GET", "/slots?fail_on_no_slot=1", "").await;
    assert_eq!(st, StatusCode::OK);
    let (_, _, body) = call(&app, "GET", "/props", "").await;
    let props: Json = serde_json::from_str(&body).unwrap();
    assert_eq!((props["total_slots"].as_u64(), props["default_generation_settings"]["is_processing"].as_bool()), (Some(4), Some(false)));

    let (st, _, body) = call(&app, "POST", "/slots/0?action=erase", "").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, _, body) = call(&app, "POST", "/slots/0?action=save", "").await;
    assert_eq!(st, StatusCode::NOT_IMPLEMENTED, "{body}");
    let (st, _, _) = call(&app, "POST", "/slots/x?action=erase", "").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Unload: the gauges drop, the counters stay.
    let (st, _, _) = call(&app, "POST", "/api/generate", r#"{"model":"fake","keep_alive":0}"#).await;
    assert_eq!(st, StatusCode::OK);
    let mut m = String::new();
    for _ in 0..50 {
        m = call(&app, "GET", "/metrics", "").await.2;
        if metric(&m, "rocmforge:models_loaded") == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&m, "rocmforge:models_loaded"), 0.0, "{m}");
    assert_eq!(metric(&m, "rocmforge:kv_cache_blocks_total"), 0.0);
    assert_eq!(metric(&m, "vllm:prefix_cache_queries_total"), 12.0, "{m}");
    // Loaded again: a new engine instance adds to the retired one.
    call(&app, "POST", "/api/generate", r#"{"model":"fake"}"#).await;
    let (_, _, m) = call(&app, "GET", "/metrics", "").await;
    assert_eq!(metric(&m, "vllm:prefix_cache_queries_total"), 24.0, "{m}");
}

/// Nothing a client sends panics a handler (a small structured fuzz over the parsers).
#[tokio::test(flavor = "multi_thread")]
async fn no_panics_on_odd_bodies() {
    let (app, _d) = app();
    let bodies = [
        "null",
        "[]",
        "1",
        "\"s\"",
        "{}",
        r#"{"model":1}"#,
        r#"{"model":"fake","prompt":5}"#,
        r#"{"model":"fake","messages":"x"}"#,
        r#"{"model":"fake","messages":[{"role":"user","content":[1]}]}"#,
        r#"{"model":"fake","options":[]}"#,
        r#"{"model":"fake","prompt":"x","options":{"stop":"a","seed":1e300,"top_k":-5,"num_predict":-2}}"#,
        r#"{"model":"fake","input":{"a":1}}"#,
        r#"{"model":"fake","tokens":["x"]}"#,
        r#"{"model":"fake","prompt":[[1]]}"#,
        r#"{"model":"fake","messages":[{"role":"user","content":"x"}],"n":0}"#,
        r#"{"model":"fake","keep_alive":{}}"#,
        r#"{"model":"../../etc/passwd","prompt":"x"}"#,
        "\u{0}\u{1}",
        r#"{"model":"fake","prompt":"x","logit_bias":{"x":1}}"#,
    ];
    let paths = [
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/api/create",
        "/api/copy",
        "/api/pull",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/completion",
        "/tokenize",
        "/detokenize",
        "/apply-template",
        "/embedding",
        "/infill",
    ];
    for p in paths {
        for b in bodies {
            let (st, _, _) = call(&app, "POST", p, b).await;
            assert!(st.as_u16() < 500 || st == StatusCode::NOT_IMPLEMENTED || st == StatusCode::BAD_GATEWAY, "{p} {b}: {st}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_kv_cache_type_option() {
    let (app, _d) = app();
    // An unknown type (or Ollama's q4_0, which we do not implement) is a 400 naming the valid ones.
    for (path, body) in [
        ("/api/generate", r#"{"model":"fake","prompt":"x","options":{"kv_cache_type":"q4_0"}}"#),
        ("/api/chat", r#"{"model":"fake","messages":[{"role":"user","content":"x"}],"options":{"kv_cache_type":"int4"}}"#),
    ] {
        let (st, _, b) = call(&app, "POST", path, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{path} {body}: {b}");
        let e = serde_json::from_str::<Json>(&b).unwrap()["error"].as_str().unwrap().to_string();
        assert!(e.contains("kv_cache_type") && e.contains("f16|q8_0|fp8"), "{e}");
    }
    let (st, _, b) = call(&app, "POST", "/api/generate", r#"{"model":"fake","prompt":"x","options":{"kv_cache_type":1}}"#).await;
    assert_eq!((st, b.as_str()), (StatusCode::BAD_REQUEST, r#"{"error":"option \"kv_cache_type\" must be of type string"}"#));
    // A valid type reaches the loader: this fake loader has no KV cache types and refuses it,
    // naming the type (the engine loader is exercised by tests/kv_cache_types.rs and the CLI).
    let (st, _, b) = call(&app, "POST", "/api/generate", r#"{"model":"fake","prompt":"x","options":{"kv_cache_type":"q8_0"}}"#).await;
    assert!(st.is_server_error() && b.contains("kv cache type q8_0 is not supported by this backend"), "{st} {b}");
    // Without the option the model loads and answers as before.
    let (st, _, _) = call(&app, "POST", "/api/generate", r#"{"model":"fake","prompt":"x","stream":false}"#).await;
    assert_eq!(st, StatusCode::OK);
}
