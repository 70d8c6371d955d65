//! Ollama's native API end to end: the real `rocmforge serve` binary, the real SmolLM2-135M and
//! all-MiniLM-L6-v2 models, real HTTP. Test ids in comments are `../shared/specs/api.md`'s.
//! Contents are checked by meaning (fields, counts, framing), never by exact model text.

mod server_util;

use serde_json::json;
use server_util::{ndjson_lines, Server, MINILM, MINILM_TAG, SMOL, SMOL_TAG};

/// [T-TR-01/05/06/09/10] [T-GEN-R01/R02] [T-LOAD-01..05] [T-PS-01] generate: streaming and not,
/// load / unload by empty prompt, `/api/ps`.
#[test]
fn generate_stream_and_load_unload() {
    let s = Server::start(&[]);
    assert_eq!(s.head("/"), 200);
    let (st, _, body) = s.get("/");
    assert_eq!((st, body.as_str()), (200, "Ollama is running"));
    assert_eq!(s.get_json("/api/version")["version"].as_str().map(|v| v.split('.').count()), Some(3));

    // Load (single object even though streaming is the default).
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL}));
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["done"].as_bool(), v["done_reason"].as_str()), (Some(true), Some("load")));
    let ps = s.get_json("/api/ps");
    assert_eq!(ps["models"][0]["name"], SMOL_TAG);
    assert!(ps["models"][0]["expires_at"].as_str().is_some_and(|t| t.contains('T')));
    assert_eq!(ps["models"][0]["context_length"], 1024);

    // Streaming NDJSON.
    let (st, ct, body) =
        s.post("/api/generate", &json!({"model": SMOL, "prompt": "Say hello.", "options": {"num_predict": 8, "temperature": 0}}));
    assert_eq!(st, 200, "{body}");
    assert_eq!(ct, "application/x-ndjson");
    let lines = ndjson_lines(&body);
    let (last, rest) = lines.split_last().unwrap();
    assert!(!rest.is_empty(), "no token chunks: {body}");
    for l in rest {
        assert_eq!(l["done"], false);
        assert!(l["response"].is_string() && l.get("eval_count").is_none() && l.get("total_duration").is_none(), "{l}");
        assert_eq!(l["model"], SMOL);
        assert!(l["created_at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(last["done"], true);
    assert!(matches!(last["done_reason"].as_str(), Some("stop" | "length")), "{last}");
    let eval_count = last["eval_count"].as_u64().unwrap();
    assert!((1..=8).contains(&eval_count), "{last}");
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 3);
    // Nanoseconds: total >= eval duration, and a 135M model needs more than 1 µs per token.
    assert!(last["total_duration"].as_u64().unwrap() >= last["eval_duration"].as_u64().unwrap());
    assert!(last["eval_duration"].as_u64().unwrap() > 1000 * eval_count);
    let ctx = last["context"].as_array().unwrap();
    assert_eq!(ctx.len() as u64, last["prompt_eval_count"].as_u64().unwrap() + eval_count);

    // Non-streaming: same content as the concatenation (greedy: deterministic).
    let (st, ct, body) = s.post(
        "/api/generate",
        &json!({"model": SMOL, "prompt": "Say hello.", "stream": false, "options": {"num_predict": 8, "temperature": 0}}),
    );
    assert_eq!(st, 200);
    assert_eq!(ct, "application/json; charset=utf-8");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let streamed: String = rest.iter().map(|l| l["response"].as_str().unwrap()).collect();
    assert_eq!(v["response"].as_str().unwrap(), streamed);
    assert_eq!(v["eval_count"].as_u64().unwrap(), eval_count);

    // `context` continues the conversation; raw mode has no context.
    let (st, v) = s.json(
        "/api/generate",
        &json!({"model": SMOL, "prompt": "And again.", "context": ctx, "stream": false, "options": {"num_predict": 4}}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["prompt_eval_count"].as_u64().unwrap() > ctx.len() as u64 / 2);
    let (st, v) = s.json(
        "/api/generate",
        &json!({"model": SMOL, "prompt": "The sky is", "raw": true, "stream": false, "options": {"num_predict": 4}}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v.get("context").is_none(), "{v}");

    // Unload.
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "keep_alive": 0}));
    assert_eq!((st, v["done_reason"].as_str()), (200, Some("unload")));
    assert!(s.wait_for(5, || s.get_json("/api/ps")["models"].as_array().unwrap().is_empty()));
}

/// [T-CHAT-01..08] chat streaming and not; `keep_alive: 0` after a request unloads it.
#[test]
fn chat_stream_and_not() {
    let s = Server::start(&[]);
    let msgs = json!([{"role": "system", "content": "You are terse."}, {"role": "USER", "content": "What is 2+2?"}]);
    let (st, _, body) = s.post("/api/chat", &json!({"model": SMOL, "messages": msgs, "options": {"num_predict": 6}}));
    assert_eq!(st, 200, "{body}");
    let lines = ndjson_lines(&body);
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["message"]["role"], "assistant");
    assert!(last["message"]["content"].is_string());
    assert!(lines.len() >= 2);
    let content: String = lines.iter().map(|l| l["message"]["content"].as_str().unwrap()).collect();
    assert!(!content.trim().is_empty(), "{body}");

    let (st, v) = s.json(
        "/api/chat",
        &json!({"model": SMOL, "messages": msgs, "stream": false, "keep_alive": 0, "options": {"num_predict": 6, "seed": 1}}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["message"]["content"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(v["eval_count"].as_u64().unwrap() >= 1);
    assert!(v.get("context").is_none());
    assert!(s.wait_for(5, || s.get_json("/api/ps")["models"].as_array().unwrap().is_empty()), "keep_alive 0 did not unload");

    // Load by an empty message list.
    let (st, v) = s.json("/api/chat", &json!({"model": SMOL, "messages": []}));
    assert_eq!((st, v["done_reason"].as_str(), v["message"]["content"].as_str()), (200, Some("load"), Some("")));

    // format: "json" constrains the output to JSON.
    let (st, v) = s.json(
        "/api/chat",
        &json!({"model": SMOL, "messages": [{"role": "user", "content": "Give me a JSON object about a cat."}], "format": "json", "stream": false, "options": {"num_predict": 24, "temperature": 0}}),
    );
    assert_eq!(st, 200, "{v}");
    let text = v["message"]["content"].as_str().unwrap();
    assert!(text.trim_start().starts_with('{') || text.trim_start().starts_with('['), "not JSON-shaped: {text:?}");

    // logprobs.
    let (st, v) = s.json(
        "/api/chat",
        &json!({"model": SMOL, "messages": msgs, "stream": false, "logprobs": true, "top_logprobs": 2, "options": {"num_predict": 3}}),
    );
    assert_eq!(st, 200, "{v}");
    let lp = v["logprobs"].as_array().unwrap();
    assert_eq!(lp.len() as u64, v["eval_count"].as_u64().unwrap());
    assert!(lp[0]["logprob"].as_f64().unwrap() <= 0.0);
    assert_eq!(lp[0]["top_logprobs"].as_array().unwrap().len(), 2);
}

/// [T-TR-02/03/04/11] [T-ERR-*] [T-OPT-01..04] [T-KA-01] [T-THK-01/02] [T-FMT-04] errors and
/// lenient parsing.
/// [T-OWUI-OLL-01..10] [T-OPT-04] a chat shaped like Open WebUI 0.12.4's: its built-in tools
/// on a model whose template has no tool support (answered as without them, not refused: the
/// UI's chat broke on that), legacy options, extra fields; streamed, then a background task's
/// non-streaming call.
#[test]
fn open_webui_shaped_chat() {
    let s = Server::start(&[]);
    let tools = json!([
        {"type": "function", "function": {"name": "search_memories", "description": "Search the user's memories.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "what to look for"}}, "required": ["query"]}}},
        {"type": "function", "function": {"name": "get_current_timestamp", "description": "Now.", "parameters": {"type": "object", "properties": {}}}}
    ]);
    let body = json!({
        "model": SMOL_TAG,
        "messages": [{"role": "user", "content": "Write two sentences about the sea."}],
        "stream": true,
        "tools": tools,
        "keep_alive": "5m",
        "options": {"temperature": 0.8, "mirostat": 0, "mirostat_eta": 0.1, "mirostat_tau": 5.0, "use_mlock": false, "num_predict": 12},
        "metadata": {"chat_id": "x"},
    });
    let (st, ct, out) = s.post("/api/chat", &body);
    assert_eq!(st, 200, "{out}");
    assert_eq!(ct, "application/x-ndjson");
    let lines = ndjson_lines(&out);
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{out}");
    assert!(last["eval_count"].as_u64().unwrap() >= 1 && last["eval_duration"].as_u64().unwrap() > 0, "{last}");
    let content: String = lines.iter().map(|l| l["message"]["content"].as_str().unwrap()).collect();
    assert!(!content.trim().is_empty(), "{out}");
    assert!(lines.iter().all(|l| l["message"].get("tool_calls").is_none()), "{out}");
    // A title task: not streamed, a system prompt, no tools.
    let (st, v) = s.json(
        "/api/chat",
        &json!({"model": SMOL_TAG, "stream": false, "messages": [{"role": "system", "content": "Reply with a title."}, {"role": "user", "content": content}], "options": {"num_predict": 8}}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
}

#[test]
fn errors_and_lenient_parsing() {
    let s = Server::start(&[]);
    // Content-Type not required; unknown fields ignored; legacy options accepted.
    let body = br#"{"model":"smollm2","prompt":"Hi","stream":false,"whatever":1,"options":{"num_predict":2,"mirostat":0,"tfs_z":1,"use_mlock":false,"made_up":3}}"#;
    let (st, _, b) = s.post_raw("/api/generate", body);
    assert_eq!(st, 200, "{b}");
    let (st, _, b) = s.post_raw("/api/generate", b"");
    assert_eq!((st, b.as_str()), (400, r#"{"error":"missing request body"}"#));
    let (st, _, b) = s.post_raw("/api/generate", b"{not json");
    assert_eq!(st, 400);
    assert!(serde_json::from_str::<serde_json::Value>(&b).unwrap()["error"].is_string());
    let (st, v) = s.json("/api/generate", &json!({"model": "nope", "prompt": "x"}));
    assert_eq!(st, 404);
    assert!(v["error"].as_str().unwrap().contains("not found"));
    let (st, v) = s.json("/api/chat", &json!({"model": "nope:7b", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.json("/api/generate", &json!({"prompt": "x"}));
    assert_eq!((st, v["error"].as_str()), (400, Some("model is required")));
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "prompt": "x", "raw": true, "system": "s"}));
    assert_eq!((st, v["error"].as_str()), (400, Some("raw mode does not support template, system, or context")));
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "prompt": "x", "top_logprobs": 21}));
    assert_eq!((st, v["error"].as_str()), (400, Some("top_logprobs must be between 0 and 20")));
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "prompt": "x", "keep_alive": "10"}));
    assert_eq!((st, v["error"].as_str()), (400, Some("time: missing unit in duration \"10\"")));
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "prompt": "x", "think": "huge"}));
    assert_eq!(st, 400, "{v}");
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "prompt": "x", "think": true}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("does not support thinking"));
    let (st, _) =
        s.json("/api/generate", &json!({"model": SMOL, "prompt": "x", "think": false, "stream": false, "options": {"num_predict": 1}}));
    assert_eq!(st, 200);
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "prompt": "x", "format": "xml"}));
    assert_eq!(st, 400, "{v}");
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "prompt": "x", "options": {"num_ctx": "big"}}));
    assert_eq!((st, v["error"].as_str()), (400, Some("option \"num_ctx\" must be of type integer")));
    let (st, v) = s.json("/api/chat", &json!({"model": SMOL, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("does not support vision"));
    // An embedding model cannot chat.
    let (st, v) = s.json("/api/chat", &json!({"model": MINILM, "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(st, 400, "{v}");
    // A prompt longer than the context is an error (never truncated).
    let long = "word ".repeat(3000);
    let (st, v) = s.json("/api/generate", &json!({"model": SMOL, "prompt": long}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("context"), "{v}");
    // Router: 404 / 405 in plain text.
    let (st, _, b) = s.get("/api/nothing");
    assert_eq!((st, b.as_str()), (404, "404 page not found"));
    let (st, _, b) = s.get("/api/generate");
    assert_eq!((st, b.as_str()), (405, "405 method not allowed"));
}

/// [T-EMB-01..07] [T-TAGS-*] [T-SHOW-01..04] embeddings and inventory.
#[test]
fn embeddings_tags_show() {
    let s = Server::start(&[]);
    let (st, v) = s.json(
        "/api/embed",
        &json!({"model": MINILM, "input": ["The cat sat on the mat.", "A feline rested on a rug.", "Stock markets fell."]}),
    );
    assert_eq!(st, 200, "{v}");
    let e = v["embeddings"].as_array().unwrap();
    assert_eq!(e.len(), 3);
    let vecs: Vec<Vec<f64>> = e.iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect();
    assert_eq!(vecs[0].len(), 384);
    for r in &vecs {
        let n: f64 = r.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((n - 1.0).abs() < 1e-3, "not normalised: {n}");
    }
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(dot(&vecs[0], &vecs[1]) > dot(&vecs[0], &vecs[2]), "paraphrases should be closer");
    assert!(v["prompt_eval_count"].as_u64().unwrap() > 10);
    let (st, v) = s.json("/api/embed", &json!({"model": MINILM, "input": "hello", "dimensions": 8}));
    assert_eq!((st, v["embeddings"][0].as_array().map(Vec::len)), (200, Some(8)));
    let (st, v) = s.json("/api/embed", &json!({"model": MINILM, "input": []}));
    assert_eq!((st, v["embeddings"].as_array().map(Vec::len)), (200, Some(0)));
    let (st, v) = s.json("/api/embed", &json!({"model": MINILM, "input": [1, 2]}));
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid input type")));
    let (st, v) = s.json("/api/embeddings", &json!({"model": MINILM, "prompt": "hello"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["embedding"].as_array().unwrap().len(), 384);
    let (st, v) = s.json("/api/embeddings", &json!({"model": "nope", "prompt": "hello"}));
    assert_eq!(st, 404, "{v}");

    let tags = s.get_json("/api/tags");
    let models = tags["models"].as_array().unwrap();
    let smol = models.iter().find(|m| m["name"] == SMOL_TAG).expect("smollm2 listed");
    assert_eq!(smol["model"], SMOL_TAG);
    assert_eq!(smol["details"]["family"], "llama");
    assert_eq!(smol["details"]["quantization_level"], "Q4_1");
    assert_eq!(smol["details"]["format"], "gguf");
    assert!(smol["size"].as_u64().unwrap() > 50_000_000);
    assert!(chrono_like(smol["modified_at"].as_str().unwrap()));
    let mini = models.iter().find(|m| m["name"] == MINILM_TAG).unwrap();
    assert_eq!(mini["capabilities"], json!(["embedding"]));

    let (st, v) = s.json("/api/show", &json!({"model": SMOL}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["model_info"]["general.architecture"], "llama");
    assert!(v["model_info"]["llama.context_length"].as_u64().unwrap() >= 2048);
    assert!(v["model_info"].get("general.name").is_none());
    assert!(v["template"].as_str().unwrap().contains("im_start"));
    assert!(v["capabilities"].as_array().unwrap().contains(&json!("completion")));
    assert!(v["modelfile"].as_str().unwrap().starts_with("# Modelfile generated by"));
    let (st, v) = s.json("/api/show", &json!({"name": "nope"}));
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.json("/api/show", &json!({}));
    assert_eq!((st, v["error"].as_str()), (400, Some("model is required")));
}

fn chrono_like(t: &str) -> bool {
    t.len() >= 20 && t.as_bytes()[4] == b'-' && t.contains('T') && (t.ends_with('Z') || t[19..].contains(['+', '-']))
}

/// [T-STORE-*] [T-CREATE-01] [T-COPY-01] [T-DEL-01] [T-BLOB-01..03] [T-PULL-*] the store routes:
/// the model created from a GGUF file is then served by name.
#[test]
fn store_create_copy_delete_blobs() {
    let s = Server::start(&[]);
    let gguf = server_util::model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (st, ct, body) = s.post(
        "/api/create",
        &json!({"model": "MySmol:v1", "from": gguf.display().to_string(), "system": "You are a pirate.", "parameters": {"temperature": 0, "stop": ["\n\n"]}}),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(ct, "application/x-ndjson");
    let lines = ndjson_lines(&body);
    assert_eq!(lines.last().unwrap()["status"], "success", "{body}");
    // On disk in Ollama's layout.
    assert!(s.store.path().join("manifests/registry.ollama.ai/library/MySmol/v1").is_file());
    let tags = s.get_json("/api/tags");
    let m = tags["models"].as_array().unwrap().iter().find(|m| m["name"] == "MySmol:v1").expect("created model listed").clone();
    assert_eq!(m["digest"].as_str().unwrap().len(), 64);
    // Served by its name, case-insensitively.
    let (st, v) = s.json("/api/generate", &json!({"model": "mysmol:V1", "prompt": "Hi", "stream": false, "options": {"num_predict": 3}}));
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.json("/api/show", &json!({"model": "MySmol:v1"}));
    assert_eq!(st, 200);
    assert_eq!(v["system"], "You are a pirate.");
    assert!(v["parameters"].as_str().unwrap().contains("temperature"));

    let (st, _, b) = s.post("/api/copy", &json!({"source": "MySmol:v1", "destination": "other/smol"}));
    assert_eq!((st, b.as_str()), (200, ""));
    let (st, _, _) = s.post("/api/copy", &json!({"source": "missing", "destination": "x"}));
    assert_eq!(st, 404);
    let (st, _, _) = s.post("/api/copy", &json!({"source": "MySmol:v1", "destination": "../evil"}));
    assert_eq!(st, 400);
    let (st, _, b) = s.delete("/api/delete", &json!({"model": "MySmol:v1"}));
    assert_eq!((st, b.as_str()), (200, ""));
    let (st, _, _) = s.delete("/api/delete", &json!({"model": "MySmol:v1"}));
    assert_eq!(st, 404);
    assert!(s.get_json("/api/tags")["models"].as_array().unwrap().iter().any(|m| m["name"] == "other/smol:latest"));

    // Blobs: upload, check, create from it.
    let data = b"not really a model";
    let digest = format!("sha256:{}", sha256_hex(data));
    assert_eq!(s.head(&format!("/api/blobs/{digest}")), 404);
    assert_eq!(s.head("/api/blobs/sha256:xyz"), 400);
    let (st, _, b) = s.post_raw(&format!("/api/blobs/sha256:{}", "0".repeat(64)), data);
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("digest mismatch"));
    let (st, _, _) = s.post_raw(&format!("/api/blobs/{digest}"), data);
    assert_eq!(st, 201);
    assert_eq!(s.head(&format!("/api/blobs/{digest}")), 200);
    let (st, _, _) = s.post_raw(&format!("/api/blobs/{digest}"), data);
    assert_eq!(st, 200);
    let (st, v) = s.json("/api/create", &json!({"model": "junk", "files": {"junk.gguf": digest}, "stream": false}));
    assert_eq!(st, 500, "{v}");

    // Pull: the registry (a closed local port here) cannot be reached: the error names it, as a
    // streamed line and as a 502 (tests/server_pull.rs pulls from a local registry); push: not supported.
    let (st, _, body) = s.post("/api/pull", &json!({"model": "llama3.2"}));
    assert_eq!(st, 200);
    let lines = ndjson_lines(&body);
    assert_eq!(lines[0]["status"], "pulling manifest");
    assert!(lines.last().unwrap()["error"].as_str().unwrap().contains("cannot reach 127.0.0.1:9"), "{body}");
    let (st, v) = s.json("/api/pull", &json!({"model": "other/smol", "stream": false}));
    assert_eq!(st, 502, "{v}");
    let (st, v) = s.json("/api/push", &json!({"model": "other/smol"}));
    assert_eq!(st, 501, "{v}");
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// [T-CREATE-02] `/api/create` with `quantize`: an F16 GGUF (written by `rocmforge synth`) becomes
/// a Q8_0 model in the store, with Ollama's progress lines, and is served; an already quantized
/// source and an unknown type are refused with errors that say why.
#[test]
fn create_quantizes_an_unquantized_source() {
    let dir = tempfile::tempdir().unwrap();
    let f16 = dir.path().join("smol-f16.gguf");
    let vocab = server_util::model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
        .args(["synth", "--shape", "smollm2-135m", "--type", "f16", "--n-layer", "2", "--vocab"])
        .arg(&vocab)
        .arg(&f16)
        .output()
        .unwrap();
    assert!(out.status.success(), "synth: {}", String::from_utf8_lossy(&out.stderr));
    let s = Server::start(&[]);
    let (st, _, body) = s.post("/api/create", &json!({"model": "smolq", "from": f16.display().to_string(), "quantize": "q8_0"}));
    assert_eq!(st, 200, "{body}");
    let lines = ndjson_lines(&body);
    assert_eq!(lines.last().unwrap()["status"], "success", "{body}");
    assert!(lines.iter().any(|l| l["status"] == "quantizing F16 model to Q8_0"), "{body}");
    let last_progress = lines.iter().rev().find(|l| l.get("total").is_some()).expect("progress with totals");
    assert_eq!(last_progress["completed"], last_progress["total"], "{body}");
    let (st, v) = s.json("/api/show", &json!({"model": "smolq"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["details"]["quantization_level"], "Q8_0", "{v}");
    let (st, v) = s.json("/api/generate", &json!({"model": "smolq", "prompt": "Hi", "stream": false, "options": {"num_predict": 2}}));
    assert_eq!(st, 200, "{v}");

    // A quantized source: refused (as Ollama does), naming the tensor type.
    let (st, v) =
        s.json("/api/create", &json!({"model": "bad", "from": vocab.display().to_string(), "quantize": "q4_K_M", "stream": false}));
    assert_eq!(st, 500, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Q4_1"), "{v}");
    // An unknown type: 400 with the supported list.
    let (st, v) = s.json("/api/create", &json!({"model": "bad", "from": f16.display().to_string(), "quantize": "q3_banana"}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("Q4_K_M"), "{v}");
    assert!(!s.get_json("/api/tags")["models"].as_array().unwrap().iter().any(|m| m["name"] == "bad:latest"));
}

/// [T-CREATE-02] `/api/create` `from` a Hugging Face directory on the server's disk: converted to
/// an F16 GGUF (Ollama's default for safetensors imports) or to `quantize`'s type, with Ollama's
/// progress lines, then listed, shown and served. A path that is neither a GGUF nor an HF
/// directory, a directory without `config.json` or weights, and an architecture no plugin
/// serves are 400s naming the problem, and register nothing.
#[test]
fn create_converts_a_hugging_face_directory() {
    let fixtures = server_util::repo().join("tests/fixtures");
    // tiny-llama-hf: a llama checkpoint with a tokenizer.json, so the result can generate.
    let hf = fixtures.join("tiny-llama-hf");
    let s = Server::start(&[]);
    let (st, _, body) = s.post("/api/create", &json!({"model": "hfllama", "from": hf.display().to_string()}));
    assert_eq!(st, 200, "{body}");
    let lines = ndjson_lines(&body);
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    assert_eq!(statuses.first(), Some(&"converting model"), "{body}");
    assert!(statuses.contains(&"quantizing F32 model to F16"), "{body}");
    assert!(
        statuses.iter().any(|s| s.starts_with("using existing layer sha256:") || s.starts_with("creating new layer sha256:")),
        "{body}"
    );
    assert!(statuses.contains(&"writing manifest"), "{body}");
    assert_eq!(lines.last().unwrap()["status"], "success", "{body}");
    let last_progress = lines.iter().rev().find(|l| l.get("total").is_some()).expect("progress with totals");
    assert_eq!(last_progress["completed"], last_progress["total"], "{body}");
    assert!(s.get_json("/api/tags")["models"].as_array().unwrap().iter().any(|m| m["name"] == "hfllama:latest"));
    let (st, v) = s.json("/api/show", &json!({"model": "hfllama"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["details"]["quantization_level"], "F16", "{v}");
    assert_eq!(v["details"]["family"], "llama", "{v}");
    assert_eq!(v["model_info"]["general.architecture"], "llama", "{v}");
    let (st, v) = s.json(
        "/api/generate",
        &json!({"model": "hfllama", "prompt": "Hello world", "stream": false, "options": {"num_predict": 4, "temperature": 0}}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["eval_count"].as_u64().is_some_and(|n| (1..=4).contains(&n)), "{v}");

    // `quantize` picks the type (hf-tiny/llama: no tokenizer, so not generated with).
    let (st, v) = s.json(
        "/api/create",
        &json!({"model": "hfq8", "from": fixtures.join("hf-tiny/llama").display().to_string(), "quantize": "q8_0", "stream": false}),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.json("/api/show", &json!({"model": "hfq8"}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["details"]["quantization_level"], "Q8_0", "{v}");

    // Bad directories: 400 naming what is wrong, nothing registered.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let no_weights = dir.path().join("no-weights");
    std::fs::create_dir(&no_weights).unwrap();
    std::fs::copy(hf.join("config.json"), no_weights.join("config.json")).unwrap();
    let unknown = dir.path().join("unknown-arch");
    std::fs::create_dir(&unknown).unwrap();
    std::fs::copy(hf.join("model.safetensors"), unknown.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    cfg["architectures"] = json!(["BananaForCausalLM"]);
    std::fs::write(unknown.join("config.json"), cfg.to_string()).unwrap();
    for (from, want) in [
        (hf.join("config.json"), "neither a GGUF file nor a Hugging Face model directory"),
        (empty, "no config.json"),
        (no_weights, "no *.safetensors or pytorch_model*.bin"),
        (unknown, "BananaForCausalLM"),
    ] {
        let (st, v) = s.json("/api/create", &json!({"model": "bad", "from": from.display().to_string()}));
        assert_eq!(st, 400, "{}: {v}", from.display());
        assert!(v["error"].as_str().unwrap().contains(want), "{}: {v}", from.display());
    }
    assert!(!s.get_json("/api/tags")["models"].as_array().unwrap().iter().any(|m| m["name"] == "bad:latest"));
}
