//! `pull` with the real binary: `rocmforge serve` pulls the real SmolLM2-135M from a local Ollama
//! registry and from a local Hugging Face-like hub (host/server/tests/fake_hub: axum on
//! 127.0.0.1, pointed at with `ROCMFORGE_REGISTRY_URL` / `ROCMFORGE_HF_ENDPOINT`), then lists,
//! loads and runs it; `rocmforge pull` (the CLI) drives the same through the server.
//! The protocol's corner cases (resume, Range ignored, digest mismatch, quant errors) are tested
//! in host/server/tests/pull.rs.

#[path = "../host/server/tests/fake_hub/mod.rs"]
mod fake_hub;
mod server_util;

use fake_hub::{HfFile, Hub};
use serde_json::json;
use server_util::{model, ndjson_lines, Server};

#[test]
fn pull_from_local_registry_and_hub_then_generate() {
    let hub = Hub::start_in_thread();
    let gguf = std::fs::read(model("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    hub.publish(
        "library",
        "smol-pulled",
        "latest",
        &[("application/vnd.ollama.image.model", gguf.clone()), ("application/vnd.ollama.image.params", br#"{"temperature":0}"#.to_vec())],
    );
    hub.add_hf_repo("org/SmolLM2-GGUF", vec![HfFile { name: "SmolLM2-135M-Instruct.Q4_1.gguf".into(), data: gguf, listed_sha: true }]);
    let s = Server::start_env(&[], &[("ROCMFORGE_REGISTRY_URL", &hub.url), ("ROCMFORGE_HF_ENDPOINT", &hub.url)]);

    let (st, ct, body) = s.post("/api/pull", &json!({"model": "smol-pulled"}));
    assert_eq!((st, ct.as_str()), (200, "application/x-ndjson"), "{body}");
    let lines = ndjson_lines(&body);
    assert_eq!(lines[0]["status"], "pulling manifest");
    assert_eq!(lines.last().unwrap()["status"], "success", "{body}");
    let names: Vec<String> =
        s.get_json("/api/tags")["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
    assert!(names.contains(&"smol-pulled:latest".to_string()), "{names:?}");
    let (st, v) =
        s.json("/api/generate", &json!({"model": "smol-pulled", "prompt": "Say hello.", "stream": false, "options": {"num_predict": 4}}));
    assert_eq!(st, 200, "{v}");
    assert!(v["eval_count"].as_u64().is_some_and(|n| (1..=4).contains(&n)), "{v}");

    // The CLI: progress on stderr (plain lines, not a terminal), then the model runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
        .args(["pull", "hf.co/org/SmolLM2-GGUF:q4_1"])
        .env("OLLAMA_HOST", &s.url)
        .output()
        .expect("run rocmforge pull");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for want in ["pulling manifest", "100%", "verifying sha256 digest", "writing manifest", "success"] {
        assert!(err.contains(want), "{want:?} missing from {err}");
    }
    // A per-blob line: "pulling " and the blob's 12 hex digits (not only "pulling manifest").
    let blob_line =
        err.lines().any(|l| l.split("pulling ").nth(1).is_some_and(|r| r.len() >= 12 && r[..12].bytes().all(|b| b.is_ascii_hexdigit())));
    assert!(blob_line, "no per-blob progress line in {err}");
    let (st, v) = s.json("/api/chat", &json!({"model": "hf.co/org/SmolLM2-GGUF:q4_1", "messages": [{"role": "user", "content": "Hi"}], "stream": false, "options": {"num_predict": 4}}));
    assert_eq!(st, 200, "{v}");
    assert!(v["message"]["content"].is_string(), "{v}");

    // An unknown quantization: the CLI fails with the server's message.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
        .args(["pull", "hf.co/org/SmolLM2-GGUF:Q2_K"])
        .env("OLLAMA_HOST", &s.url)
        .output()
        .expect("run rocmforge pull");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("available: Q4_1"), "{err}");
}
