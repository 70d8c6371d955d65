//! Errors of the server, and their one mapping per dialect onto HTTP.
//!
//! Every handler returns [`ApiError`]: a status, a message and an error class. The route's
//! [`Dialect`] decides the body (mapped here once, nowhere else):
//!
//! ```text
//! Ollama        {"error": "<message>"}
//! OpenAI        {"error": {"message", "type", "param": null, "code": null}}
//! llama-server  {"error": {"code": <status>, "message", "type"}}
//! ```
//!
//! Invariants: an error never reveals more than its message (no debug dumps); a 5xx is logged.
//! Modelled on Ollama's `server/routes.go` statuses and llama-server's `format_error_response`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::backend::BackendError;
use crate::manager::ManagerError;

/// Which API family a route belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Ollama,
    OpenAi,
    Llama,
}

/// An error class; each dialect spells it its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    InvalidRequest,
    NotFound,
    Unavailable,
    NotSupported,
    ExceedContext,
    Auth,
    Server,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: Kind,
    pub message: String,
    pub dialect: Dialect,
    /// Extra fields of llama-server's context-overflow error.
    pub n_prompt_tokens: Option<usize>,
    pub n_ctx: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: Kind, message: impl Into<String>) -> Self {
        ApiError { status, kind, message: message.into(), dialect: Dialect::Ollama, n_prompt_tokens: None, n_ctx: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Kind::InvalidRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, Kind::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Kind::Server, message)
    }
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, Kind::NotSupported, message)
    }
    pub fn busy() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, Kind::Unavailable, "server busy, please try again.  maximum pending requests exceeded")
    }
    pub fn context_overflow(n_prompt_tokens: usize, n_ctx: usize) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            Kind::ExceedContext,
            format!("request ({n_prompt_tokens} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"),
        );
        e.n_prompt_tokens = Some(n_prompt_tokens);
        e.n_ctx = Some(n_ctx);
        e
    }
    /// The same error, rendered in `d`'s shape.
    pub fn in_dialect(mut self, d: Dialect) -> Self {
        self.dialect = d;
        self
    }

    /// The JSON body for this error in its dialect.
    pub fn body(&self) -> serde_json::Value {
        match self.dialect {
            Dialect::Ollama => json!({ "error": self.message }),
            Dialect::OpenAi => {
                let ty = match self.kind {
                    Kind::InvalidRequest | Kind::ExceedContext => "invalid_request_error",
                    Kind::NotFound => "not_found_error",
                    Kind::Auth => "authentication_error",
                    _ => "api_error",
                };
                json!({ "error": { "message": self.message, "type": ty, "param": null, "code": null } })
            }
            Dialect::Llama => {
                let ty = match self.kind {
                    Kind::InvalidRequest => "invalid_request_error",
                    Kind::NotFound => "not_found_error",
                    Kind::Unavailable => "unavailable_error",
                    Kind::NotSupported => "not_supported_error",
                    Kind::ExceedContext => "exceed_context_size_error",
                    Kind::Auth => "authentication_error",
                    Kind::Server => "server_error",
                };
                let mut e = json!({ "code": self.status.as_u16(), "message": self.message, "type": ty });
                if let (Some(n), Some(c)) = (self.n_prompt_tokens, self.n_ctx) {
                    e["n_prompt_tokens"] = json!(n);
                    e["n_ctx"] = json!(c);
                }
                json!({ "error": e })
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), "{}", self.message);
        } else {
            tracing::debug!(status = self.status.as_u16(), "{}", self.message);
        }
        (self.status, axum::Json(self.body())).into_response()
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Busy => ApiError::busy(),
            BackendError::ContextOverflow { n_tokens, n_ctx } => ApiError::context_overflow(n_tokens, n_ctx),
            BackendError::Invalid(m) => ApiError::bad_request(m),
            BackendError::Template(m) => ApiError::bad_request(m),
            BackendError::Failed(m) => ApiError::internal(m),
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        match &e {
            ManagerError::NotFound(_) => ApiError::not_found(e.to_string()),
            ManagerError::InvalidName(_) => ApiError::bad_request(e.to_string()),
            ManagerError::Load { .. } => ApiError::internal(e.to_string()),
            ManagerError::Store(s) => match s {
                rocmforge_store::StoreError::NotFound(_) | rocmforge_store::StoreError::BlobNotFound(_) => {
                    ApiError::not_found(e.to_string())
                }
                rocmforge_store::StoreError::InvalidName(_)
                | rocmforge_store::StoreError::InvalidDigest(_)
                | rocmforge_store::StoreError::DigestMismatch { .. } => ApiError::bad_request(s.to_string()),
                _ => ApiError::internal(e.to_string()),
            },
        }
    }
}

/// Plain-text 404/405 bodies as Go's router writes them (Ollama clients only look at status).
pub fn plain(status: StatusCode, text: &'static str) -> Response {
    (status, [(axum::http::header::CONTENT_TYPE, "text/plain")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = ApiError::not_found("model 'x' not found");
        assert_eq!(e.body(), json!({"error": "model 'x' not found"}));
        let e = ApiError::not_found("nope").in_dialect(Dialect::OpenAi);
        assert_eq!(e.body()["error"]["type"], "not_found_error");
        assert!(e.body()["error"]["param"].is_null());
        let e = ApiError::context_overflow(4170, 4096).in_dialect(Dialect::Llama);
        assert_eq!(e.body()["error"]["type"], "exceed_context_size_error");
        assert_eq!(e.body()["error"]["n_ctx"], 4096);
        assert_eq!(e.body()["error"]["code"], 400);
    }
}
