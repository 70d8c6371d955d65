//! `/api/pull` end to end over real HTTP: the server's router pulling from a local registry and
//! a local Hugging Face-like hub (`fake_hub`, axum on 127.0.0.1) into a fresh store; real
//! files, real sha256. Test ids are `../shared/specs/api.md`'s [T-PULL-..].
//!
//! Covered: Ollama progress lines and their order, the model listed and shown afterwards,
//! already-present blobs skipped, `insecure`, resume after a dropped connection (within a pull
//! and across pulls), a server that ignores `Range`, digest mismatch refused with nothing
//! registered, unknown names, unreachable hosts, Hugging Face quant selection and its error.

mod fake_hub;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fake_hub::{sha256, tiny_gguf, Faults, HfFile, Hub};
use rocmforge_server::backend::{Backend, BackendError, Loader};
use rocmforge_server::options::KeepAlive;
use rocmforge_server::ServerConfig;
use rocmforge_store::pull::{pull, Endpoints, PullError, PullOptions};
use rocmforge_store::Store;
use serde_json::{json, Value as Json};
use tower::ServiceExt;

const MODEL: &str = "application/vnd.ollama.image.model";
const TEMPLATE: &str = "application/vnd.ollama.image.template";
const PARAMS: &str = "application/vnd.ollama.image.params";

/// These tests never load a model (the real binary's test does, tests/server_pull.rs).
struct NoLoader;
impl Loader for NoLoader {
    fn load(&self, p: &std::path::Path, _: Option<usize>) -> Result<Arc<dyn Backend>, BackendError> {
        Err(BackendError::Failed(format!("not loading {} in this test", p.display())))
    }
}

struct App {
    router: axum::Router,
    store: Store,
    _dir: tempfile::TempDir,
}

fn app(hub: &Hub) -> App {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        store_root: dir.path().join("store"),
        models_dirs: vec![],
        aliases: vec![],
        keep_alive: KeepAlive::For(std::time::Duration::from_secs(300)),
        default_ctx: None,
        max_loaded: 1,
        api_key: None,
        origins: vec![],
        body_limit: 1 << 20,
        max_predict: None,
        preload: vec![],
        max_num_seqs: 1,
        request_cache: 0,
    };
    let mut st = rocmforge_server::state(cfg, Arc::new(NoLoader));
    // Fresh Arc: the only reference, so the endpoints can be pointed at the local hub.
    Arc::get_mut(&mut st).unwrap().pull = Endpoints { registry: Some(hub.url.clone()), hf: Some(hub.url.clone()) };
    App { router: rocmforge_server::router(st), store: Store::new(dir.path().join("store")), _dir: dir }
}

impl App {
    async fn call(&self, method: &str, path: &str, body: Json) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1:11434")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let b = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8_lossy(&b).into_owned())
    }

    /// A streamed pull: its NDJSON lines.
    async fn pull(&self, body: Json) -> Vec<Json> {
        let (st, b) = self.call("POST", "/api/pull", body).await;
        assert_eq!(st, 200, "{b}");
        b.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}"))).collect()
    }

    async fn tags(&self) -> Vec<String> {
        let (_, b) = self.call("GET", "/api/tags", json!(null)).await;
        let v: Json = serde_json::from_str(&b).unwrap();
        v["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
    }
}

fn statuses(lines: &[Json]) -> Vec<String> {
    lines.iter().map(|l| l["status"].as_str().map_or_else(|| format!("ERROR {}", l["error"]), str::to_string)).collect()
}

/// Publishes `library/tiny:latest`: a 400 KB GGUF, a template and params. Returns the model digest.
fn publish_tiny(hub: &Hub) -> (String, Vec<u8>) {
    let gguf = tiny_gguf(100_000, 1);
    hub.publish(
        "library",
        "tiny",
        "latest",
        &[(MODEL, gguf.clone()), (TEMPLATE, b"{{ .Prompt }}".to_vec()), (PARAMS, br#"{"temperature":0.3}"#.to_vec())],
    );
    (sha256(&gguf), gguf)
}

fn blob_gets(hub: &Hub) -> Vec<fake_hub::Logged> {
    hub.log().into_iter().filter(|l| l.path.starts_with("/cdn/")).collect()
}

/// [T-PULL-01/02] Progress lines as Ollama's, then the model is listed, shown and its files are
/// the registry's; a second pull skips the blobs it has; `stream:false` gives one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_pull_end_to_end() {
    let hub = Hub::start().await;
    let (model_digest, gguf) = publish_tiny(&hub);
    let a = app(&hub);
    let lines = a.pull(json!({"model": "tiny"})).await;
    let st = statuses(&lines);
    assert_eq!(st.first().map(String::as_str), Some("pulling manifest"), "{st:?}");
    assert_eq!(&st[st.len() - 3..], ["verifying sha256 digest", "writing manifest", "success"], "{st:?}");
    // Every blob line names the digest; the last line of the model blob reports it complete.
    let short = &model_digest[7..19];
    let model_lines: Vec<&Json> = lines.iter().filter(|l| l["digest"] == model_digest.as_str()).collect();
    assert!(!model_lines.is_empty(), "{lines:?}");
    for l in &model_lines {
        assert_eq!(l["status"], format!("pulling {short}"));
        assert_eq!(l["total"], gguf.len() as u64);
    }
    assert_eq!(model_lines.last().unwrap()["completed"], gguf.len() as u64);
    assert!(lines.iter().all(|l| l.get("completed") != Some(&json!(0))), "completed 0 must be omitted");
    // 4 blobs (config + 3 layers), each fetched once through the registry's redirect.
    assert_eq!(blob_gets(&hub).len(), 4);
    assert!(hub.log().iter().any(|l| l.path.contains("/blobs/") && l.status == 307));

    assert_eq!(a.tags().await, ["tiny:latest"]);
    let m = a.store.get(&rocmforge_store::ModelName::parse("tiny").unwrap()).unwrap();
    assert_eq!(std::fs::read(m.model_path.as_ref().unwrap()).unwrap(), gguf);
    assert_eq!(m.template.as_deref(), Some("{{ .Prompt }}"));
    assert_eq!(m.params["temperature"], 0.3);
    a.store.verify_blob(&model_digest).unwrap();
    // The manifest is stored as served, so its digest is the registry's.
    let served = hub.st.manifests.lock().unwrap()["library/tiny/latest"].clone();
    assert_eq!(format!("sha256:{}", m.digest), sha256(&served));
    let (st, b) = a.call("POST", "/api/show", json!({"model": "tiny"})).await;
    assert_eq!(st, 200, "{b}");
    let show: Json = serde_json::from_str(&b).unwrap();
    assert_eq!(show["model_info"]["general.architecture"], "llama", "{show}");

    // Again: nothing downloaded, still success.
    hub.clear_log();
    let st = statuses(&a.pull(json!({"model": "tiny:latest"})).await);
    assert_eq!(st.last().map(String::as_str), Some("success"));
    assert!(blob_gets(&hub).is_empty(), "{:?}", hub.log());
    let (st, b) = a.call("POST", "/api/pull", json!({"model": "tiny", "stream": false})).await;
    assert_eq!((st, b.as_str()), (StatusCode::OK, r#"{"status":"success"}"#));

    // A new version of the tag: the template layer changed; the old one is removed.
    let old_template = sha256(b"{{ .Prompt }}");
    hub.publish("library", "tiny", "latest", &[(MODEL, gguf.clone()), (TEMPLATE, b"v2 {{ .Prompt }}".to_vec())]);
    let st = statuses(&a.pull(json!({"model": "tiny"})).await);
    assert_eq!(&st[st.len() - 3..], ["writing manifest", "removing unused layers", "success"], "{st:?}");
    assert!(!a.store.has_blob(&old_template).unwrap());
    assert!(a.store.has_blob(&model_digest).unwrap());
    let m = a.store.get(&rocmforge_store::ModelName::parse("tiny").unwrap()).unwrap();
    assert_eq!(m.template.as_deref(), Some("v2 {{ .Prompt }}"));
    assert!(m.params.is_empty());
    // No partial or temporary files left in blobs/.
    let leftovers: Vec<_> = std::fs::read_dir(a.store.root().join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("sha256-") || n.ends_with("-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `HOST/NAMESPACE/NAME:TAG` from another registry: https by default (our plain-http registry
/// then fails, naming the host), plain http with `insecure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_registry_and_insecure() {
    let hub = Hub::start().await;
    publish_tiny(&hub);
    hub.publish("team", "tiny", "v1", &[(MODEL, tiny_gguf(1000, 2))]);
    let a = app(&hub);
    let name = format!("{}/team/tiny:v1", hub.host);
    let lines = a.pull(json!({"model": name})).await;
    let err = lines.last().unwrap()["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains(&hub.host), "{lines:?}");
    let st = statuses(&a.pull(json!({"model": name, "insecure": true})).await);
    assert_eq!(st.last().map(String::as_str), Some("success"), "{st:?}");
    assert_eq!(a.tags().await, [name]);
}

/// [T-PULL-03] The connection drops in the middle of the model blob: the pull resumes it with a
/// Range request and the result verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_after_dropped_connection() {
    let hub = Hub::start().await;
    let (d, gguf) = publish_tiny(&hub);
    hub.set_faults(Faults { drop_after: Some(150_000), drop_times: 1, ignore_range: false });
    let a = app(&hub);
    let st = statuses(&a.pull(json!({"model": "tiny"})).await);
    assert_eq!(st.last().map(String::as_str), Some("success"), "{st:?}");
    let gets: Vec<_> = blob_gets(&hub).into_iter().filter(|l| l.path.ends_with(&d)).collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!((gets[0].range.as_deref(), gets[0].status), (None, 200));
    assert_eq!((gets[1].range.as_deref(), gets[1].status), (Some("bytes=150000-"), 206));
    assert_eq!(std::fs::read(a.store.blob_path(&d).unwrap()).unwrap(), gguf);
}

/// A pull that gives up (one attempt) keeps its partial file and registers nothing; the next
/// pull continues from where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_across_pulls() {
    let hub = Hub::start().await;
    let (d, _) = publish_tiny(&hub);
    hub.set_faults(Faults { drop_after: Some(150_000), drop_times: 1, ignore_range: false });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let opts = PullOptions { attempts: 1, endpoints: Endpoints { registry: Some(hub.url.clone()), hf: None }, ..Default::default() };
    let s2 = Store::new(dir.path());
    let o2 = opts.clone();
    let res = tokio::task::spawn_blocking(move || pull(&s2, "tiny", &o2, &mut |_| true)).await.unwrap();
    match res {
        Err(PullError::Network { host, message }) => {
            assert_eq!(host, hub.host);
            assert!(message.contains("150000"), "{message}");
        }
        other => panic!("expected a network error, got {other:?}"),
    }
    assert!(store.list().is_empty());
    let partial = dir.path().join("blobs").join(format!("{}-partial", d.replace(':', "-")));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 150_000);
    hub.clear_log();
    let s3 = Store::new(dir.path());
    let m = tokio::task::spawn_blocking(move || pull(&s3, "tiny", &opts, &mut |_| true)).await.unwrap().unwrap();
    assert_eq!(m.model_digest.as_deref(), Some(d.as_str()));
    let gets: Vec<_> = blob_gets(&hub).into_iter().filter(|l| l.path.ends_with(&d)).collect();
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].range.as_deref(), Some("bytes=150000-"));
    assert!(!partial.exists());
}

/// A server that ignores Range answers 200 with the whole blob: the partial restarts from zero
/// (not appended to), and the digest verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_ignoring_range() {
    let hub = Hub::start().await;
    let (d, gguf) = publish_tiny(&hub);
    hub.set_faults(Faults { drop_after: Some(150_000), drop_times: 1, ignore_range: true });
    let a = app(&hub);
    let st = statuses(&a.pull(json!({"model": "tiny"})).await);
    assert_eq!(st.last().map(String::as_str), Some("success"), "{st:?}");
    let gets: Vec<_> = blob_gets(&hub).into_iter().filter(|l| l.path.ends_with(&d)).collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!((gets[1].range.as_deref(), gets[1].status), (Some("bytes=150000-"), 200));
    assert_eq!(std::fs::read(a.store.blob_path(&d).unwrap()).unwrap(), gguf);
}

/// [T-PULL-04] A blob whose bytes do not hash to its digest: refused, both digests named,
/// nothing registered, no partial file kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digest_mismatch_refused() {
    let hub = Hub::start().await;
    let (d, gguf) = publish_tiny(&hub);
    hub.corrupt(&d);
    let mut bad = gguf.clone();
    bad[gguf.len() / 2] ^= 0xff;
    let got = sha256(&bad);
    let a = app(&hub);
    let lines = a.pull(json!({"model": "tiny"})).await;
    let err = lines.last().unwrap()["error"].as_str().unwrap().to_string();
    assert!(err.contains("digest mismatch") && err.contains(&d) && err.contains(&got), "{err}");
    assert!(!statuses(&lines).iter().any(|s| s == "writing manifest" || s == "success"));
    assert!(a.tags().await.is_empty());
    assert!(!a.store.has_blob(&d).unwrap());
    assert!(!a.store.root().join("blobs").join(format!("{}-partial", d.replace(':', "-"))).exists());
    let (st, b) = a.call("POST", "/api/pull", json!({"model": "tiny", "stream": false})).await;
    assert_eq!(st, 500, "{b}");
    assert!(b.contains("digest mismatch"), "{b}");
}

/// Unknown names are 404s naming the model and the registry; bad names 400; an unreachable
/// registry names its host; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_found_bad_name_unreachable() {
    let hub = Hub::start().await;
    let a = app(&hub);
    let lines = a.pull(json!({"model": "nope"})).await;
    assert_eq!(lines[0]["status"], "pulling manifest");
    let want = format!("model 'nope:latest' not found in registry {}", hub.url);
    assert_eq!(lines.last().unwrap()["error"], want.as_str());
    let (st, b) = a.call("POST", "/api/pull", json!({"model": "nope", "stream": false})).await;
    assert_eq!(st, 404);
    assert_eq!(serde_json::from_str::<Json>(&b).unwrap()["error"], want.as_str());
    let (st, b) = a.call("POST", "/api/pull", json!({"model": "../etc/passwd"})).await;
    assert_eq!(st, 400, "{b}");
    let (st, _) = a.call("POST", "/api/pull", json!({})).await;
    assert_eq!(st, 400);
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (st, b) = a.call("POST", "/api/pull", json!({"model": format!("127.0.0.1:{port}/x/y"), "insecure": true, "stream": false})).await;
    assert_eq!(st, 502, "{b}");
    assert!(b.contains(&format!("cannot reach 127.0.0.1:{port}")), "{b}");
    assert_eq!(a.call("GET", "/api/tags", json!(null)).await.0, 200);
}

/// Hugging Face: the quant tag picks the file (case-insensitive), `latest` is Q4_K_M, a missing
/// quant lists those available, a missing repo is a 404; digests from the listing's LFS sha256
/// or from `x-linked-etag`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hugging_face_quant_selection() {
    let hub = Hub::start().await;
    let q4 = tiny_gguf(20_000, 4);
    let q8 = tiny_gguf(30_000, 8);
    hub.add_hf_repo(
        "org/Tiny-GGUF",
        vec![
            HfFile { name: "README.md".into(), data: b"# tiny".to_vec(), listed_sha: false },
            HfFile { name: "Tiny-Q4_K_M.gguf".into(), data: q4.clone(), listed_sha: true },
            HfFile { name: "Tiny-Q8_0.gguf".into(), data: q8.clone(), listed_sha: false },
        ],
    );
    hub.add_hf_repo("org/NoGguf", vec![HfFile { name: "model.safetensors".into(), data: vec![0; 10], listed_sha: true }]);
    let a = app(&hub);

    let lines = a.pull(json!({"model": "hf.co/org/Tiny-GGUF:q8_0"})).await;
    let st = statuses(&lines);
    assert_eq!(&st[st.len() - 3..], ["verifying sha256 digest", "writing manifest", "success"], "{st:?}");
    let d8 = sha256(&q8);
    // The digest came from x-linked-etag (the listing had none for this file).
    assert!(lines.iter().any(|l| l["digest"] == d8.as_str() && l["completed"] == q8.len() as u64), "{lines:?}");
    let m = a.store.get(&rocmforge_store::ModelName::parse("hf.co/org/Tiny-GGUF:q8_0").unwrap()).unwrap();
    assert_eq!(m.model_digest.as_deref(), Some(d8.as_str()));
    assert_eq!(m.config.model_family, "llama");

    let st = statuses(&a.pull(json!({"model": "huggingface.co/org/Tiny-GGUF"})).await);
    assert_eq!(st.last().map(String::as_str), Some("success"), "{st:?}");
    let m = a.store.get(&rocmforge_store::ModelName::parse("huggingface.co/org/Tiny-GGUF").unwrap()).unwrap();
    assert_eq!(m.model_digest, Some(sha256(&q4)));
    let mut tags = a.tags().await;
    tags.sort();
    assert_eq!(tags, ["hf.co/org/Tiny-GGUF:q8_0", "huggingface.co/org/Tiny-GGUF:latest"]);

    let (st, b) = a.call("POST", "/api/pull", json!({"model": "hf.co/org/Tiny-GGUF:Q2_K", "stream": false})).await;
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("no GGUF file for quantization 'Q2_K'; available: Q4_K_M, Q8_0"), "{b}");
    let (st, b) = a.call("POST", "/api/pull", json!({"model": "hf.co/org/Missing", "stream": false})).await;
    assert_eq!(st, 404, "{b}");
    assert!(b.contains("model 'hf.co/org/Missing:latest' not found"), "{b}");
    let (st, b) = a.call("POST", "/api/pull", json!({"model": "hf.co/org/NoGguf", "stream": false})).await;
    assert_eq!(st, 400, "{b}");
    assert!(b.contains("no GGUF files (it has model.safetensors)"), "{b}");
    assert_eq!(a.tags().await.len(), 2);
}

/// A client that goes away (the progress sink refuses a line) stops the pull: nothing is
/// registered and the partial file stays for a later resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_pull_keeps_partial() {
    let hub = Hub::start().await;
    let (d, _) = publish_tiny(&hub);
    hub.set_faults(Faults { drop_after: Some(150_000), drop_times: 1, ignore_range: false });
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let opts = PullOptions { endpoints: Endpoints { registry: Some(hub.url.clone()), hf: None }, ..Default::default() };
    let d2 = d.clone();
    let res = tokio::task::spawn_blocking(move || {
        // Leave when the resumed attempt reports where it continues from.
        pull(&Store::new(root), "tiny", &opts, &mut |p| !(p.digest == d2 && p.completed == 150_000))
    })
    .await
    .unwrap();
    assert!(matches!(res, Err(PullError::Cancelled(_))), "{res:?}");
    let store = Store::new(dir.path());
    assert!(store.list().is_empty());
    assert!(!store.has_blob(&d).unwrap());
    let partial = dir.path().join("blobs").join(format!("{}-partial", d.replace(':', "-")));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 150_000);
}
