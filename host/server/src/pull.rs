//! `POST /api/pull`: pull a model from an Ollama registry or a GGUF from Hugging Face into the
//! store (`rocmforge_store::pull`), streaming Ollama's progress lines.
//!
//! ```text
//! {"status":"pulling manifest"}
//! {"status":"pulling 6a0746a1ec1a","digest":"sha256:6a07…","total":2019377376,"completed":241970}
//! {"status":"verifying sha256 digest"}
//! {"status":"writing manifest"}
//! {"status":"success"}                                 or, at any point, {"error":"…"} and the end
//! ```
//!
//! `stream: false` answers only the last object, or the error with a status (404 unknown model,
//! 400 bad name / no such quantization, 502 registry unreachable or misbehaving, 500 digest
//! mismatch). The download runs on a blocking thread; when the client goes away the channel
//! closes, the pull stops at its next progress line and keeps its partial file for a resume.
//!
//! Request fields as Ollama's `PullRequest`: `model` (`name` deprecated), `insecure` (plain
//! http to the registry), `stream`. Endpoints come from [`crate::AppState::pull`].

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use futures_util::StreamExt;
use rocmforge_store::pull::{pull as store_pull, PullError, PullOptions};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::error::{ApiError, Dialect, Kind};
use crate::wire::{json_response, ndjson, parse_body};
use crate::Shared;

#[derive(Deserialize)]
struct PullReq {
    #[serde(default)]
    model: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    insecure: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
}

fn api_error(e: &PullError) -> ApiError {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        400 => Kind::InvalidRequest,
        404 => Kind::NotFound,
        _ => Kind::Server,
    };
    ApiError::new(status, kind, e.to_string())
}

pub async fn pull(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: PullReq = parse_body(&body, Dialect::Ollama)?;
    let name = if req.model.is_empty() { req.name } else { req.model };
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    // Checked here so a bad name is a 400 even when streaming.
    rocmforge_store::ModelName::parse(&name).map_err(|_| ApiError::bad_request(format!("invalid model name {name:?}")))?;
    let opts = PullOptions { insecure: req.insecure.unwrap_or(false), endpoints: st.pull.clone(), ..Default::default() };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Json>();
    let mgr = st.mgr.clone();
    let task = tokio::task::spawn_blocking(move || {
        // A failed send means the receiver (the response, or this handler) is gone: stop.
        let mut send = |p| tx.send(serde_json::to_value(p).unwrap_or_default()).is_ok();
        store_pull(&mgr.store, &name, &opts, &mut send)
    });
    if !req.stream.unwrap_or(true) {
        // Keep the receiver alive while waiting (dropping it would cancel the pull).
        let _rx = rx;
        return match task.await {
            Ok(Ok(_)) => Ok(json_response(&json!({ "status": "success" }))),
            Ok(Err(e)) => Err(api_error(&e)),
            Err(e) => Err(ApiError::internal(e.to_string())),
        };
    }
    let progress = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) });
    let tail = futures_util::stream::once(async move {
        match task.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!("pull: {e}");
                Some(json!({ "error": e.to_string() }))
            }
            Err(e) => Some(json!({ "error": e.to_string() })),
        }
    })
    .filter_map(|x| async move { x });
    Ok(ndjson(progress.chain(tail)))
}
