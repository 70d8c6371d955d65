//! Fuzz target: the request parsers of the HTTP server (all three dialects), driven through the
//! real axum router in process with the scripted fake model of the wire-layer tests
//! (`rocmforge_server::backend::fake`, feature `fake-backend`), so option mapping, message and
//! tool conversion, sampling and stop parameters, keep_alive, formats and streaming framing all
//! see the bytes. Input: byte 0 picks a route; the rest is the request body (whose "model"
//! names the chat model `fake` or the embedding model `emb`). Every response body is read to the end (streams included).
//! Oracle: no panic, no hang; malformed input gives a 4xx, never a 5xx (the fake model itself
//! cannot fail).
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use rocmforge_server::backend::fake::{byte_tokenizer, Fake};
use rocmforge_server::backend::{Backend, BackendError, Loader, ModelFacts};
use rocmforge_server::options::KeepAlive;
use rocmforge_server::ServerConfig;
use tower::ServiceExt;

const ROUTES: &[&str] = &[
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/completion",
    "/completions",
    "/tokenize",
    "/detokenize",
    "/apply-template",
    "/embedding",
    "/infill",
    "/slots/0?action=erase",
];

struct FakeLoader;

impl Loader for FakeLoader {
    fn load(&self, path: &std::path::Path, n_ctx: Option<usize>) -> Result<Arc<dyn Backend>, BackendError> {
        let facts = ModelFacts {
            path: path.to_path_buf(),
            arch: "llama".into(),
            n_ctx: n_ctx.unwrap_or(64).min(4096),
            n_ctx_train: 2048,
            n_vocab: 256,
            is_embedding: path.to_string_lossy().contains("embed"),
            ..Default::default()
        };
        Ok(Arc::new(Fake { facts, tok: byte_tokenizer(), pieces: vec!["Hel", "lo", " {\"a\"", "!"], stats: None }))
    }
}

struct App {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
}

fn app() -> &'static App {
    static A: OnceLock<App> = OnceLock::new();
    A.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rf-fuzz-server-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch");
        let (m, e) = (dir.join("fake.gguf"), dir.join("embed.gguf"));
        std::fs::write(&m, b"x").expect("write");
        std::fs::write(&e, b"x").expect("write");
        let cfg = ServerConfig {
            addr: "127.0.0.1:0".parse().expect("addr"),
            store_root: dir.join("store"),
            models_dirs: vec![],
            aliases: vec![("fake".into(), m), ("emb".into(), e)],
            keep_alive: KeepAlive::For(std::time::Duration::from_secs(300)),
            default_ctx: None,
            max_loaded: 2,
            api_key: None,
            origins: vec![],
            body_limit: 1 << 20,
            max_predict: Some(64),
            preload: vec![],
            max_num_seqs: 4,
            request_cache: 0,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let router = rt.block_on(async { rocmforge_server::router(rocmforge_server::state(cfg, Arc::new(FakeLoader))) });
        App { rt, router }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let a = app();
    let route = ROUTES[pick as usize % ROUTES.len()];
    let req = Request::builder()
        .method("POST")
        .uri(route)
        .header("host", "127.0.0.1:11434")
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("request");
    let (status, text) = a.rt.block_on(async {
        let resp = a.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let b = tokio::time::timeout(std::time::Duration::from_secs(5), to_bytes(resp.into_body(), 1 << 24))
            .await
            .expect("response body did not end within 5 s");
        (status, b.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default())
    });
    assert!(!status.is_server_error() || status == StatusCode::NOT_IMPLEMENTED, "{route}: {status} {text}");
});
