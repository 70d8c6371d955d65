//! `rocmforge serve`: one HTTP server, three dialects on one port — Ollama's native API (a
//! drop-in for its clients and Open WebUI), the OpenAI API and llama-server's API — over the
//! model manager (load on first use, keep_alive, `/api/ps`) and the Ollama model store.
//!
//! Layout: `ollama.rs` / `ollama_admin.rs` (native API; `create_files.rs`: `/api/create` from
//! uploaded files and adapters), `openai.rs`, `llama.rs` (llama-server),
//! `gen.rs` (the request path shared by all: resolve, lease, prompt, submit, events),
//! `manager.rs`, `request_cache.rs` (opt-in answers to repeated deterministic requests),
//! `options.rs`, `wire.rs` (framing), `error.rs` (error shapes), `metrics.rs`,
//! `backend.rs` (the seam to a loaded model) and `engine_backend.rs` (that seam over the engine).
//!
//! Invariants: nothing a client sends can panic a handler (bodies are parsed into typed structs
//! or `serde_json::Value` and checked); errors are shaped once per dialect; a client that goes
//! away drops its response body and so cancels its request; on SIGINT/SIGTERM the listener
//! closes and in-flight responses finish before the process exits.
//!
//! Modelled on Ollama's `server/routes.go` (routes, CORS, host guard) and llama-server's
//! route table; our own code.

pub mod backend;
pub mod create_files;
pub mod describe;
pub mod engine_backend;
pub mod error;
pub mod gen;
pub mod gotemplate;
pub mod hf_import;
pub mod llama;
pub mod manager;
pub mod metrics;
pub mod ollama;
pub mod ollama_admin;
pub mod openai;
pub mod options;
pub mod pull;
pub mod request_cache;
pub mod toolcall;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, head, post};
use axum::Router;

use crate::error::{ApiError, Dialect, Kind};
use crate::manager::Manager;
use crate::metrics::Metrics;
use crate::options::KeepAlive;

/// The version `/api/version` reports: Ollama-like dotted integers (clients gate features on it
/// and Open WebUI parses it as such), at the Ollama release whose API we follow.
pub const OLLAMA_COMPAT_VERSION: &str = "0.12.3";

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub store_root: PathBuf,
    pub models_dirs: Vec<PathBuf>,
    /// `--model NAME=PATH` (also the default model of the llama-server routes: the first).
    pub aliases: Vec<(String, PathBuf)>,
    pub keep_alive: KeepAlive,
    pub default_ctx: Option<usize>,
    pub max_loaded: usize,
    pub api_key: Option<String>,
    /// Extra CORS origins (`OLLAMA_ORIGINS`).
    pub origins: Vec<String>,
    /// Largest request body (JSON routes); blob uploads are streamed to disk and not bounded.
    pub body_limit: usize,
    /// Operator caps.
    pub max_predict: Option<usize>,
    /// Models to load at start.
    pub preload: Vec<String>,
    /// Sequences one engine decodes together (`--max-num-seqs`): llama-server's `total_slots`.
    pub max_num_seqs: usize,
    /// Entries of the cache of identical deterministic requests (`--request-cache`); 0 = off.
    pub request_cache: usize,
}

/// `OLLAMA_HOST`: `host`, `host:port`, `:port`, or `scheme://host:port/path`.
pub fn parse_host(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let (scheme, rest) = match s.split_once("://") {
        Some((sc, r)) => (sc, r),
        None => ("http", s),
    };
    let rest = rest.split('/').next().unwrap_or("");
    let default_port = match scheme {
        "https" => 443,
        "http" if s.contains("://") && !rest.contains(':') => 80,
        _ => 11434,
    };
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        // [v6]:port
        let (h, p) = r.split_once(']').ok_or_else(|| format!("bad host {s:?}"))?;
        (h.to_string(), p.strip_prefix(':').map(str::to_string))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (rest.to_string(), None),
        }
    };
    let host = if host.is_empty() { "127.0.0.1".to_string() } else { host };
    let host = if host == "localhost" { "127.0.0.1".to_string() } else { host };
    let port: u16 = match port.filter(|p| !p.is_empty()) {
        Some(p) => p.parse().map_err(|_| format!("bad port in {s:?}"))?,
        None => default_port,
    };
    let ip: std::net::IpAddr = host.parse().map_err(|_| format!("bad host {host:?} in {s:?} (give an IP address)"))?;
    Ok(SocketAddr::new(ip, port))
}

pub struct AppState {
    pub cfg: ServerConfig,
    pub mgr: Arc<Manager>,
    pub metrics: Metrics,
    /// Where `/api/pull` fetches from (`ROCMFORGE_REGISTRY_URL`, `ROCMFORGE_HF_ENDPOINT` /
    /// `HF_ENDPOINT`; tests point it at a local server).
    pub pull: rocmforge_store::pull::Endpoints,
    /// The cache of identical deterministic requests (None: off, the default).
    pub request_cache: Option<Arc<request_cache::RequestCache>>,
}

pub type Shared = Arc<AppState>;

/// Authorization (`--api-key`, Bearer as llama-server) and the DNS-rebinding guard.
async fn guard(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let dialect = if path.starts_with("/v1/") {
        Dialect::OpenAi
    } else if path.starts_with("/api/") || path == "/" {
        Dialect::Ollama
    } else {
        Dialect::Llama
    };
    if st.cfg.addr.ip().is_loopback() {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !host_allowed(host) {
            return ApiError::new(StatusCode::FORBIDDEN, Kind::Auth, "host not allowed").in_dialect(dialect).into_response();
        }
    }
    if let Some(key) = &st.cfg.api_key {
        let public = matches!(path.as_str(), "/" | "/health" | "/v1/health" | "/api/version") || req.method() == Method::OPTIONS;
        let given = req.headers().get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
        if !public && given != Some(key.as_str()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, Kind::Auth, "Invalid API Key").in_dialect(dialect).into_response();
        }
    }
    let method = req.method().clone();
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    tracing::info!(target: "rocmforge::http", "{method} {path} {} {:.2?}", status.as_u16(), t0.elapsed());
    // Go's router answers these in plain text.
    if status == StatusCode::METHOD_NOT_ALLOWED {
        return error::plain(status, "405 method not allowed");
    }
    resp
}

/// Ollama's `allowedHostsMiddleware` rule for a loopback-bound server.
fn host_allowed(host: &str) -> bool {
    if host.is_empty() {
        return true;
    }
    let h = if let Some(r) = host.strip_prefix('[') {
        r.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    let h = h.to_ascii_lowercase();
    if let Ok(ip) = h.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_unspecified() || v4.is_link_local(),
            std::net::IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        };
    }
    let hostname = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_ascii_lowercase()).unwrap_or_default();
    h == "localhost" || h == hostname || h.ends_with(".localhost") || h.ends_with(".local") || h.ends_with(".internal")
}

fn cors(extra: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let extra: Vec<String> = extra.to_vec();
    let allow = AllowOrigin::predicate(move |origin: &HeaderValue, _| {
        let Ok(o) = origin.to_str() else { return false };
        if extra.iter().any(|e| e == "*" || e == o || (e.ends_with('*') && o.starts_with(&e[..e.len() - 1]))) {
            return true;
        }
        for scheme in ["http://", "https://"] {
            if let Some(rest) = o.strip_prefix(scheme) {
                let host = rest.split(':').next().unwrap_or("");
                if matches!(host, "localhost" | "127.0.0.1" | "0.0.0.0") {
                    return true;
                }
            }
        }
        ["app://", "file://", "tauri://", "vscode-webview://", "vscode-file://"].iter().any(|p| o.starts_with(p))
    });
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::HEAD, Method::OPTIONS])
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
}

async fn not_found() -> Response {
    error::plain(StatusCode::NOT_FOUND, "404 page not found")
}

/// Every route.
pub fn router(st: Shared) -> Router {
    let limit = axum::extract::DefaultBodyLimit::max(st.cfg.body_limit);
    Router::new()
        .route("/", get(ollama::root).head(ollama::root))
        .route("/api/version", get(ollama::version).head(ollama::version))
        .route("/api/tags", get(ollama::tags).head(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/create", post(ollama_admin::create))
        .route("/api/copy", post(ollama_admin::copy))
        .route("/api/delete", delete(ollama_admin::delete))
        .route("/api/pull", post(pull::pull))
        .route("/api/push", post(ollama_admin::push))
        .route("/api/blobs/{digest}", head(ollama_admin::blob_head).post(ollama_admin::blob_post))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/completions", post(llama::completion))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/models", get(openai::models))
        .route("/v1/models/{*id}", get(openai::model))
        .route("/health", get(llama::health))
        .route("/v1/health", get(llama::health))
        .route("/completion", post(llama::completion))
        .route("/tokenize", post(llama::tokenize))
        .route("/detokenize", post(llama::detokenize))
        .route("/apply-template", post(llama::apply_template))
        .route("/embedding", post(llama::embedding))
        .route("/embeddings", post(llama::embedding))
        .route("/infill", post(llama::infill))
        .route("/props", get(llama::props))
        .route("/slots", get(llama::slots))
        .route("/slots/{id}", post(llama::slot_action))
        .route("/metrics", get(llama::metrics))
        .fallback(not_found)
        .layer(limit)
        .layer(middleware::from_fn_with_state(st.clone(), guard))
        .layer(cors(&st.cfg.origins))
        .with_state(st)
}

/// Build the state (store, discovered models, manager) from a config and a model loader.
pub fn state(cfg: ServerConfig, loader: Arc<dyn backend::Loader>) -> Shared {
    let mut discovered = Vec::new();
    for d in &cfg.models_dirs {
        discovered.extend(rocmforge_store::discover::discover(d));
    }
    let mut mgr = Manager::new(rocmforge_store::Store::new(cfg.store_root.clone()), discovered, cfg.aliases.clone(), loader);
    mgr.default_keep_alive = cfg.keep_alive;
    mgr.default_ctx = cfg.default_ctx;
    mgr.max_loaded = cfg.max_loaded;
    let request_cache = (cfg.request_cache > 0).then(|| Arc::new(request_cache::RequestCache::new(cfg.request_cache)));
    mgr.request_cache = request_cache.clone();
    Arc::new(AppState {
        cfg,
        mgr: Arc::new(mgr),
        metrics: Metrics::default(),
        pull: rocmforge_store::pull::Endpoints::from_env(),
        request_cache,
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Run the server until SIGINT/SIGTERM (blocking: owns its tokio runtime).
pub fn serve(cfg: ServerConfig, loader: Arc<dyn backend::Loader>) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(ServeError::Runtime)?;
    rt.block_on(async move {
        let addr = cfg.addr;
        let preload = cfg.preload.clone();
        let st = state(cfg, loader);
        st.mgr.spawn_reaper();
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| ServeError::Bind { addr, source: e })?;
        let bound = listener.local_addr().unwrap_or(addr);
        // One line on stdout that scripts (and our tests) wait for.
        println!("rocmforge listening on http://{bound}");
        tracing::info!("listening on http://{bound}; store {}", st.cfg.store_root.display());
        for name in preload {
            match st.mgr.resolve(&name) {
                Ok(r) => match st.mgr.acquire(&r, None, None).await {
                    Ok(lease) => drop(lease),
                    Err(e) => tracing::warn!("preload {name}: {e}"),
                },
                Err(e) => tracing::warn!("preload {name}: {e}"),
            }
        }
        let app = router(st.clone());
        let res = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.map_err(ServeError::Io);
        st.mgr.clear();
        res
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("server: {0}")]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(parse_host("").unwrap().to_string(), "127.0.0.1:11434");
        assert_eq!(parse_host("0.0.0.0").unwrap().to_string(), "0.0.0.0:11434");
        assert_eq!(parse_host("127.0.0.1:8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(parse_host(":9000").unwrap().to_string(), "127.0.0.1:9000");
        assert_eq!(parse_host("http://localhost:11435/").unwrap().to_string(), "127.0.0.1:11435");
        assert_eq!(parse_host("http://127.0.0.1").unwrap().to_string(), "127.0.0.1:80");
        assert_eq!(parse_host("[::1]:5000").unwrap().to_string(), "[::1]:5000");
        assert!(parse_host("127.0.0.1:x").is_err());
    }

    #[test]
    fn rebinding_guard() {
        for ok in ["", "localhost:11434", "127.0.0.1:11434", "10.0.0.2", "[::1]:11434", "foo.localhost", "box.local"] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in ["evil.com", "evil.com:11434", "8.8.8.8:11434"] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod wire_tests;
