//! A local stand-in for the model hubs `pull` talks to, on 127.0.0.1 (real HTTP through axum
//! and hyper): an Ollama registry (`/v2/<ns>/<model>/manifests/<tag>`, `/v2/<ns>/<model>/blobs/<digest>`
//! answered by a redirect to `/cdn/<digest>`) and a Hugging Face-like hub
//! (`/api/models/<org>/<repo>`, `/<org>/<repo>/resolve/main/<file>` with `x-linked-etag`).
//!
//! Faults for the tests: close the connection after N bytes of a blob (once or always), ignore
//! `Range`, serve a layer whose bytes do not match its digest. Every request is logged with its
//! `Range` header and the status answered.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value as Json};

pub const MEDIA_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Default)]
pub struct Faults {
    /// Close the connection after this many bytes of a blob body...
    pub drop_after: Option<usize>,
    /// ...this many times (then serve normally); `usize::MAX` = always.
    pub drop_times: usize,
    pub ignore_range: bool,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

pub struct HfFile {
    pub name: String,
    pub data: Vec<u8>,
    /// Listed as `lfs.sha256` (else only the `x-linked-etag` of `resolve` tells it).
    pub listed_sha: bool,
}

#[derive(Default)]
pub struct HubState {
    pub blobs: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    pub manifests: Mutex<HashMap<String, Vec<u8>>>,
    pub hf: Mutex<HashMap<String, Vec<HfFile>>>,
    pub faults: Mutex<Faults>,
    pub log: Mutex<Vec<Logged>>,
}

pub struct Hub {
    pub url: String,
    pub host: String,
    pub st: Arc<HubState>,
}

pub fn sha256(b: &[u8]) -> String {
    let (h, _) = rocmforge_store::sha256_reader(b).expect("hash");
    format!("sha256:{h}")
}

impl Hub {
    /// Serve on a free port of 127.0.0.1 (on the current tokio runtime).
    pub async fn start() -> Hub {
        let st = Arc::new(HubState::default());
        let app = axum::Router::new().fallback(handle).with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hub { url: format!("http://{addr}"), host: addr.to_string(), st }
    }

    /// Start on a runtime of its own thread (for tests without tokio: the real binary).
    pub fn start_in_thread() -> Hub {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let hub = Hub::start().await;
                tx.send(hub).expect("send hub");
                std::future::pending::<()>().await
            })
        });
        rx.recv().expect("hub started")
    }

    pub fn add_blob(&self, data: Vec<u8>) -> (String, u64) {
        let d = sha256(&data);
        let n = data.len() as u64;
        self.st.blobs.lock().unwrap().insert(d.clone(), Arc::new(data));
        (d, n)
    }

    /// Publish `ns/model:tag` with the given layers `(media type, bytes)` and a config blob;
    /// returns the manifest's bytes.
    pub fn publish(&self, ns: &str, model: &str, tag: &str, layers: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let (cd, cs) = self.add_blob(br#"{"model_format":"gguf","model_family":"llama","file_type":"F32"}"#.to_vec());
        let ls: Vec<Json> = layers
            .iter()
            .map(|(mt, b)| {
                let (d, n) = self.add_blob(b.clone());
                json!({"mediaType": mt, "digest": d, "size": n})
            })
            .collect();
        let m = json!({
            "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": cs},
            "layers": ls,
        });
        let bytes = serde_json::to_vec_pretty(&m).unwrap();
        self.st.manifests.lock().unwrap().insert(format!("{ns}/{model}/{tag}"), bytes.clone());
        bytes
    }

    /// Replace the bytes served for `digest` (a corrupt mirror).
    pub fn corrupt(&self, digest: &str) {
        let mut b = self.st.blobs.lock().unwrap();
        let mut v = (**b.get(digest).expect("blob")).clone();
        let i = v.len() / 2;
        v[i] ^= 0xff;
        b.insert(digest.to_string(), Arc::new(v));
    }

    pub fn add_hf_repo(&self, repo: &str, files: Vec<HfFile>) {
        self.st.hf.lock().unwrap().insert(repo.to_string(), files);
    }

    pub fn set_faults(&self, f: Faults) {
        *self.st.faults.lock().unwrap() = f;
    }

    pub fn log(&self) -> Vec<Logged> {
        self.st.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.st.log.lock().unwrap().clear();
    }
}

async fn handle(State(st): State<Arc<HubState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_string();
    let range = headers.get("range").and_then(|h| h.to_str().ok()).map(str::to_string);
    let r = route(&st, &method, &path, range.as_deref());
    st.log.lock().unwrap().push(Logged { method: method.to_string(), path, range, status: r.status().as_u16() });
    r
}

fn route(st: &HubState, method: &Method, path: &str, range: Option<&str>) -> Response {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v2", ns, model, "manifests", tag] => match st.manifests.lock().unwrap().get(&format!("{ns}/{model}/{tag}")) {
            Some(m) => ([("content-type", MEDIA_MANIFEST)], m.clone()).into_response(),
            None => (StatusCode::NOT_FOUND, axum::Json(json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})))
                .into_response(),
        },
        // Blobs live on a "CDN": the registry redirects, as registry.ollama.ai does.
        ["v2", _ns, _model, "blobs", digest] => (StatusCode::TEMPORARY_REDIRECT, [("location", format!("/cdn/{digest}"))]).into_response(),
        ["cdn", digest] => match st.blobs.lock().unwrap().get(*digest) {
            Some(b) => serve_bytes(st, b.clone(), range, None, method == Method::HEAD),
            None => (StatusCode::NOT_FOUND, "blob unknown").into_response(),
        },
        ["api", "models", org, repo] => match st.hf.lock().unwrap().get(&format!("{org}/{repo}")) {
            Some(files) => {
                let sib: Vec<Json> = files
                    .iter()
                    .map(|f| {
                        let mut s = json!({"rfilename": f.name, "size": f.data.len()});
                        if f.listed_sha {
                            let h = sha256(&f.data);
                            s["lfs"] = json!({"sha256": h.trim_start_matches("sha256:"), "size": f.data.len(), "pointerSize": 134});
                        }
                        s
                    })
                    .collect();
                axum::Json(json!({"id": format!("{org}/{repo}"), "siblings": sib})).into_response()
            }
            // The Hub's answer for a repo that does not exist (or is private).
            None => (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "Repository not found"}))).into_response(),
        },
        [org, repo, "resolve", "main", file @ ..] => {
            let name = file.join("/");
            let hf = st.hf.lock().unwrap();
            match hf.get(&format!("{org}/{repo}")).and_then(|fs| fs.iter().find(|f| f.name == name)) {
                Some(f) => {
                    let etag = sha256(&f.data).trim_start_matches("sha256:").to_string();
                    serve_bytes(st, Arc::new(f.data.clone()), range, Some(etag), method == Method::HEAD)
                }
                None => (StatusCode::NOT_FOUND, "Entry not found").into_response(),
            }
        }
        _ => (StatusCode::NOT_FOUND, "404 page not found").into_response(),
    }
}

/// The bytes (or the asked range of them), with the configured faults.
fn serve_bytes(st: &HubState, data: Arc<Vec<u8>>, range: Option<&str>, etag: Option<String>, head: bool) -> Response {
    let mut faults = st.faults.lock().unwrap();
    let len = data.len();
    let start = match range.filter(|_| !faults.ignore_range) {
        Some(r) => {
            let s: Option<usize> = r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse().ok());
            match s {
                Some(s) if s < len => Some(s),
                _ => return (StatusCode::RANGE_NOT_SATISFIABLE, [("content-range", format!("bytes */{len}"))]).into_response(),
            }
        }
        None => None,
    };
    let from = start.unwrap_or(0);
    let mut resp = Response::builder()
        .status(if start.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK })
        .header("content-length", (len - from).to_string())
        .header("accept-ranges", "bytes");
    if let Some(s) = start {
        resp = resp.header("content-range", format!("bytes {s}-{}/{len}", len - 1));
    }
    if let Some(e) = etag {
        resp = resp.header("x-linked-etag", format!("\"{e}\"")).header("x-linked-size", len.to_string());
    }
    if head {
        return resp.body(Body::empty()).unwrap();
    }
    // Send at most `cut` bytes, then fail the body: hyper closes the connection mid-response.
    // Only a response actually cut counts as one of the `drop_times` (small blobs pass whole).
    let cut = match faults.drop_after {
        Some(n) if faults.drop_times > 0 && from + n < len => {
            if faults.drop_times != usize::MAX {
                faults.drop_times -= 1;
            }
            Some(n)
        }
        _ => None,
    };
    drop(faults);
    let end = cut.map_or(len, |n| from + n);
    let chunks: Vec<Result<Bytes, std::io::Error>> = data[from..end].chunks(64 << 10).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    use futures_util::StreamExt;
    // The failure comes a moment after the bytes, so hyper has flushed them (an immediate body
    // error discards what is still buffered, headers included).
    let fail = futures_util::stream::iter(cut).then(|_| async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Err::<Bytes, _>(std::io::Error::other("fault: connection dropped"))
    });
    resp.body(Body::from_stream(futures_util::stream::iter(chunks).chain(fail))).unwrap()
}

/// A small valid GGUF (a llama-architecture header and one F32 tensor of `n` floats filled
/// from `seed`): enough for the store's metadata reader and `/api/show`.
pub fn tiny_gguf(n: usize, seed: u32) -> Vec<u8> {
    use rocmforge_model::gguf::{GgufValue, GgufWriter};
    let mut w = GgufWriter::new();
    w.set("general.architecture", GgufValue::Str("llama".into()));
    w.set("general.name", GgufValue::Str(format!("tiny-{seed}")));
    w.set("llama.context_length", GgufValue::U32(128));
    w.set("llama.embedding_length", GgufValue::U32(n as u32));
    w.set("llama.block_count", GgufValue::U32(1));
    w.add_tensor_info("token_embd.weight", vec![n as u64], rocmforge_quant::GgmlType::F32).expect("tensor");
    let data: Vec<u8> = (0..n).flat_map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed).to_le_bytes()).collect();
    w.to_bytes(|_| Ok(data.as_slice())).expect("gguf")
}
