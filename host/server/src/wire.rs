//! Wire helpers shared by the dialects: JSON bodies accepted whatever the Content-Type, NDJSON
//! and SSE response bodies, timestamps and ids.
//!
//! Invariants: NDJSON lines are compact JSON objects followed by exactly one `\n` (no blank
//! lines); SSE events are `data: <json>\n\n`; a body stream is polled lazily, so a client that
//! goes away drops it, and with it the request's event receiver (which cancels the request).

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::error::{ApiError, Dialect};

/// Parse a JSON request body (Ollama: Content-Type is not required; an empty body is
/// `missing request body`).
pub fn parse_body<T: DeserializeOwned>(body: &Bytes, d: Dialect) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("missing request body").in_dialect(d));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()).in_dialect(d))
}

/// A JSON response with Ollama's exact content type.
pub fn json_response(v: &Json) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(v).unwrap_or_default()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

pub fn empty_ok() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::OK;
    r
}

/// A streamed NDJSON body: each item one line.
pub fn ndjson<S: Stream<Item = Json> + Send + 'static>(s: S) -> Response {
    let body = s.map(|v| {
        let mut b = serde_json::to_vec(&v).unwrap_or_default();
        b.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(b))
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    r
}

/// One SSE item: a JSON event, or the `[DONE]` terminator.
pub enum Sse {
    Data(Json),
    Done,
}

/// A streamed SSE body.
pub fn sse<S: Stream<Item = Sse> + Send + 'static>(s: S) -> Response {
    let body = s.map(|ev| {
        let b = match ev {
            Sse::Data(v) => {
                let mut b = b"data: ".to_vec();
                b.extend(serde_json::to_vec(&v).unwrap_or_default());
                b.extend(b"\n\n");
                b
            }
            Sse::Done => b"data: [DONE]\n\n".to_vec(),
        };
        Ok::<_, Infallible>(Bytes::from(b))
    });
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `2025-10-26T17:15:24.097767Z` (Ollama's `created_at`: UTC, RFC 3339, microseconds).
pub fn utc_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Local time with offset (`modified_at`, `expires_at`), as Go's `time.Time` marshals it.
pub fn local_time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A random lowercase alphanumeric string (ids: `chatcmpl-…`, `call_…`). Not for secrets.
pub fn random_id(len: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        let mut x = h.finish();
        for _ in 0..8 {
            if out.len() == len {
                break;
            }
            out.push(ALPHA[(x % ALPHA.len() as u64) as usize] as char);
            x /= ALPHA.len() as u64;
        }
    }
    out
}

/// Nanoseconds of a duration, as Ollama reports them.
pub fn ns(d: std::time::Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let e = parse_body::<Json>(&Bytes::from_static(b"  "), Dialect::Ollama).unwrap_err();
        assert_eq!(e.message, "missing request body");
        assert!(parse_body::<Json>(&Bytes::from_static(b"{"), Dialect::Ollama).is_err());
        let v: Json = parse_body(&Bytes::from_static(b"{\"a\":1}"), Dialect::Ollama).unwrap();
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn ids_and_times() {
        let a = random_id(24);
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(a, random_id(24));
        let t = utc_now();
        assert!(t.ends_with('Z') && t.contains('T'), "{t}");
        assert!(chrono::DateTime::parse_from_rfc3339(&local_time(SystemTime::now())).is_ok());
    }
}
