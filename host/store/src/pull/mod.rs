//! `pull`: bring a model into the store from an Ollama registry (`registry.ollama.ai/library/NAME:TAG`,
//! `HOST/NAMESPACE/NAME:TAG`) or a GGUF file from Hugging Face (`hf.co/ORG/REPO:QUANT`,
//! `huggingface.co/...`), reporting progress as Ollama's `/api/pull` lines.
//!
//! ```text
//! pulling manifest                 registry: GET /v2/<ns>/<model>/manifests/<tag>
//!                                  Hugging Face: GET /api/models/<org>/<repo>?blobs=true, pick the GGUF
//! pulling <12 hex> (per blob)      resumable download into blobs/sha256-<hex>-partial
//! verifying sha256 digest          hash each partial; only a matching file becomes blobs/sha256-<hex>
//! writing manifest                 the registry's manifest bytes (Hugging Face: one we build)
//! success
//! ```
//!
//! Invariants:
//! * Nothing is registered until every blob is present and verified: the manifest is written
//!   last, so a failed pull leaves no model behind (verified blobs stay, as in Ollama: they are
//!   content-addressed and a retry reuses them; a partial file stays too, so a retry resumes it).
//! * A blob is committed (renamed to its digest) only after its bytes hashed to that digest.
//! * One download per partial file at a time in this process (a second pull of the same blob
//!   waits for the first, then finds the blob present).
//! * Every digest a server sends goes through [`parse_digest`] before it names a file.
//!
//! Modelled on Ollama's `server/images.go` (`PullModel`) and `server/download.go` (partial files,
//! Range resume, verification before commit); Hugging Face resolution as `huggingface_hub` does it
//! (`HF_ENDPOINT`, `/api/models`, `/resolve/main/`). Our own code.

mod download;
mod hf;
mod registry;

use std::time::Duration;

use serde::Serialize;

use crate::{parse_digest, ModelName, Store, StoreError, StoredModel};

pub use hf::{pick_gguf, quant_of};

/// Where names are fetched from. `None` fields use the public services.
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    /// Base URL for names on `registry.ollama.ai` (`ROCMFORGE_REGISTRY_URL`), e.g. a mirror or a
    /// test registry `http://127.0.0.1:5000`.
    pub registry: Option<String>,
    /// Hugging Face endpoint (`ROCMFORGE_HF_ENDPOINT`, else `HF_ENDPOINT` as `huggingface_hub`
    /// reads it), default `https://huggingface.co`.
    pub hf: Option<String>,
}

impl Endpoints {
    pub fn from_env() -> Endpoints {
        let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().trim_end_matches('/').to_string()).filter(|v| !v.is_empty());
        Endpoints { registry: var("ROCMFORGE_REGISTRY_URL"), hf: var("ROCMFORGE_HF_ENDPOINT").or_else(|| var("HF_ENDPOINT")) }
    }
}

#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Plain `http://` for the registry host (Ollama's `insecure`), e.g. a local registry.
    pub insecure: bool,
    pub endpoints: Endpoints,
    /// Attempts per blob after a dropped connection or a 5xx (each resumes where the last stopped).
    pub attempts: u32,
    /// Pause before the second attempt; doubled per attempt.
    pub backoff: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { insecure: false, endpoints: Endpoints::default(), attempts: 6, backoff: Duration::from_millis(250) }
    }
}

/// One progress line, serialized exactly as Ollama's `api.ProgressResponse` (zero fields omitted).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Progress {
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub completed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Progress {
    pub fn status(s: impl Into<String>) -> Progress {
        Progress { status: s.into(), ..Default::default() }
    }

    /// `pulling <digest[7:19]>` with the full digest and the byte counts.
    pub fn blob(digest: &str, total: u64, completed: u64) -> Progress {
        let short = digest.strip_prefix("sha256:").unwrap_or(digest);
        Progress { status: format!("pulling {}", &short[..short.len().min(12)]), digest: digest.to_string(), total, completed }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid model name {0:?}")]
    InvalidName(String),
    #[error("model '{name}' not found in registry {registry}")]
    NotFound { name: String, registry: String },
    #[error("cannot reach {host}: {message}")]
    Network { host: String, message: String },
    #[error("{url}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Http { url: String, status: u16, body: String },
    #[error("{url}: {message}")]
    BadResponse { url: String, message: String },
    #[error("digest mismatch for {what}: expected {expected}, got {got}")]
    DigestMismatch { what: String, expected: String, got: String },
    #[error("{repo} has no GGUF file for quantization '{quant}'; available: {}", available.join(", "))]
    NoQuant { repo: String, quant: String, available: Vec<String> },
    #[error("{repo} has no GGUF files{}", if others.is_empty() { String::new() } else { format!(" (it has {})", others.join(", ")) })]
    NoGguf { repo: String, others: Vec<String> },
    #[error("pull of {0} cancelled")]
    Cancelled(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PullError {
    /// The HTTP status a server should answer with when it can (before streaming).
    pub fn http_status(&self) -> u16 {
        match self {
            PullError::InvalidName(_) | PullError::NoQuant { .. } | PullError::NoGguf { .. } => 400,
            PullError::NotFound { .. } => 404,
            PullError::Network { .. } | PullError::Http { .. } | PullError::BadResponse { .. } => 502,
            PullError::Cancelled(_) => 499,
            PullError::DigestMismatch { .. } | PullError::Store(_) => 500,
        }
    }
}

/// Gets each progress line; returns `false` to abandon the pull (the client went away: partial
/// files are kept for a later resume).
pub type ProgressFn<'a> = dyn FnMut(Progress) -> bool + 'a;

/// Hugging Face host names (`hf.co/ORG/REPO:QUANT` pulls a GGUF file from the repo).
pub fn is_hf_host(host: &str) -> bool {
    matches!(host.to_ascii_lowercase().as_str(), "hf.co" | "huggingface.co" | "www.huggingface.co")
}

/// Pull `name` into `store`. Returns the model as the store now lists it.
pub fn pull(store: &Store, name: &str, opts: &PullOptions, progress: &mut ProgressFn<'_>) -> Result<StoredModel, PullError> {
    let n = ModelName::parse(name).map_err(|_| PullError::InvalidName(name.to_string()))?;
    let ctx = download::Ctx::new(opts);
    if !progress(Progress::status("pulling manifest")) {
        return Err(PullError::Cancelled(n.display_shortest()));
    }
    let m = if is_hf_host(&n.host) { hf::pull(&ctx, store, &n, progress)? } else { registry::pull(&ctx, store, &n, progress)? };
    progress(Progress::status("success"));
    Ok(m)
}

/// After a pull replaced an existing model: remove the blobs only the old manifest used
/// (Ollama's `removing unused layers`).
fn prune_replaced(store: &Store, old: Option<StoredModel>, progress: &mut ProgressFn<'_>) {
    let Some(old) = old else { return };
    let Ok(new) = store.get(&old.name) else { return };
    let new_digests: Vec<&String> =
        std::iter::once(&new.manifest.config.digest).chain(new.manifest.layers.iter().map(|l| &l.digest)).collect();
    let gone: Vec<String> = std::iter::once(&old.manifest.config.digest)
        .chain(old.manifest.layers.iter().map(|l| &l.digest))
        .filter(|d| !new_digests.contains(d))
        .cloned()
        .collect();
    if !gone.is_empty() {
        progress(Progress::status("removing unused layers"));
        store.remove_unreferenced(&gone);
    }
}

/// `parse_digest` with the error naming where the digest came from.
fn checked_digest(d: &str, url: &str) -> Result<String, PullError> {
    parse_digest(d).map_err(|_| PullError::BadResponse { url: url.to_string(), message: format!("invalid digest {d:?}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_ollamas() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(serde_json::to_string(&Progress::status("pulling manifest")).unwrap(), r#"{"status":"pulling manifest"}"#);
        assert_eq!(
            serde_json::to_string(&Progress::blob(&d, 10, 0)).unwrap(),
            format!(r#"{{"status":"pulling abababababab","digest":"{d}","total":10}}"#)
        );
        assert_eq!(serde_json::to_value(Progress::blob(&d, 10, 4)).unwrap()["completed"], 4);
    }

    #[test]
    fn error_messages_name_what_failed() {
        let e = PullError::NotFound { name: "x:latest".into(), registry: "http://127.0.0.1:1".into() };
        assert_eq!(e.to_string(), "model 'x:latest' not found in registry http://127.0.0.1:1");
        let e = PullError::NoQuant { repo: "hf.co/a/b".into(), quant: "Q2_K".into(), available: vec!["Q4_K_M".into(), "Q8_0".into()] };
        assert_eq!(e.to_string(), "hf.co/a/b has no GGUF file for quantization 'Q2_K'; available: Q4_K_M, Q8_0");
        assert!(is_hf_host("HF.co") && is_hf_host("huggingface.co") && !is_hf_host("registry.ollama.ai"));
    }
}
