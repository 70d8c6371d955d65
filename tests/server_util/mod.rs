//! Shared helpers of the HTTP end-to-end tests (`tests/server_*.rs`): start the real
//! `rocmforge serve` binary on a free port with the real small models and a fresh model store,
//! and talk to it over real HTTP (ureq).
//!
//! Needs `cargo build --workspace` first (plugins next to the binary) and the models of
//! `scripts/fetch-test-data.sh`. Each `Server` is killed when dropped (its own child process).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn model(name: &str) -> PathBuf {
    let p = repo().join(".cache/models").join(name);
    assert!(p.exists(), "{} is missing: run scripts/fetch-test-data.sh first", p.display());
    p
}

pub const SMOL: &str = "smollm2";
pub const MINILM: &str = "minilm";
/// How `/api/tags`, `/api/ps` and `/v1/models` list them (Ollama's `model:tag`).
pub const SMOL_TAG: &str = "smollm2:latest";
pub const MINILM_TAG: &str = "minilm:latest";

pub struct Server {
    child: Child,
    pub url: String,
    pub store: tempfile::TempDir,
}

impl Server {
    /// A server with `smollm2` (SmolLM2-135M-Instruct Q4_1) and `minilm` (all-MiniLM-L6-v2)
    /// named, an empty store, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_env(extra, &[])
    }

    /// `start` with extra environment variables. Pulls go to a closed local port unless `env`
    /// names other endpoints: a test never downloads from the real registry or Hugging Face.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let store = tempfile::tempdir().expect("tempdir");
        let smol = format!("{SMOL}={}", model("SmolLM2-135M-Instruct.Q4_1.gguf").display());
        let mini = format!("{MINILM}={}", model("all-MiniLM-L6-v2-q8_0.gguf").display());
        let mut args = vec!["serve", "--host", "127.0.0.1:0", "--model", &smol, "--model", &mini, "--ctx-size", "1024"];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_rocmforge"))
            .args(&args)
            .env("OLLAMA_MODELS", store.path())
            .env_remove("OLLAMA_HOST")
            .env("RUST_LOG", "error")
            .env("ROCMFORGE_REGISTRY_URL", "http://127.0.0.1:9")
            .env("ROCMFORGE_HF_ENDPOINT", "http://127.0.0.1:9")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rocmforge serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read the listening line");
        let url =
            line.trim().strip_prefix("rocmforge listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Server { child, url, store }
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
    }

    /// POST a JSON body; returns (status, content type, body text).
    pub fn post(&self, path: &str, body: &Json) -> (u16, String, String) {
        let r = self.agent().post(format!("{}{path}", self.url)).send_json(body).expect("POST");
        Self::parts(r)
    }

    /// POST raw bytes (no JSON content type).
    pub fn post_raw(&self, path: &str, body: &[u8]) -> (u16, String, String) {
        let r = self.agent().post(format!("{}{path}", self.url)).send(body).expect("POST");
        Self::parts(r)
    }

    pub fn get(&self, path: &str) -> (u16, String, String) {
        let r = self.agent().get(format!("{}{path}", self.url)).call().expect("GET");
        Self::parts(r)
    }

    pub fn head(&self, path: &str) -> u16 {
        self.agent().head(format!("{}{path}", self.url)).call().expect("HEAD").status().as_u16()
    }

    pub fn delete(&self, path: &str, body: &Json) -> (u16, String, String) {
        let r = self.agent().delete(format!("{}{path}", self.url)).force_send_body().send_json(body).expect("DELETE");
        Self::parts(r)
    }

    pub fn json(&self, path: &str, body: &Json) -> (u16, Json) {
        let (s, _, b) = self.post(path, body);
        (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {b}")))
    }

    pub fn get_json(&self, path: &str) -> Json {
        let (s, _, b) = self.get(path);
        assert_eq!(s, 200, "{path}: {b}");
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {b}"))
    }

    fn parts(mut r: ureq::http::Response<ureq::Body>) -> (u16, String, String) {
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
        let body = r.body_mut().with_config().limit(64 << 20).read_to_string().unwrap_or_default();
        (status, ct, body)
    }

    /// Wait until `f` holds (polling), at most `secs`.
    pub fn wait_for(&self, secs: u64, mut f: impl FnMut() -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NDJSON lines as JSON objects (panics on a blank or non-JSON line: the framing rule).
pub fn ndjson_lines(body: &str) -> Vec<Json> {
    assert!(body.ends_with('\n'), "NDJSON must end with a newline: {body:?}");
    body.split_terminator('\n').map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}"))).collect()
}

/// SSE `data:` payloads in order (`[DONE]` kept as the string).
pub fn sse_events(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "SSE must end with a blank line: {body:?}");
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("not an SSE data event: {e:?}")).to_string())
        .collect()
}
