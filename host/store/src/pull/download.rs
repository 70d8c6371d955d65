//! HTTP for `pull`: one agent (redirects followed, per-read timeouts so a stalled connection
//! fails instead of hanging), the registry's anonymous Bearer-token handshake, and the
//! resumable, verified blob download.
//!
//! A blob download has two phases so that nothing is committed before everything arrived:
//!
//! ```text
//! fetch   blobs/sha256-<hex>-partial  grows; after a drop, `Range: bytes=<len>-` continues it
//!         (206 from <len>: append; 200: the server ignored Range, start over; 416: start over)
//! commit  hash the partial; equal to the digest -> rename to blobs/sha256-<hex>;
//!         different -> delete the partial, DigestMismatch naming both digests
//! ```
//!
//! Modelled on Ollama's `server/download.go` (partial files, Range, retries) and ureq's docs.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use ureq::http::Response;
use ureq::Body;

use super::{Progress, ProgressFn, PullError, PullOptions};
use crate::{sha256_reader, Store, StoreError};

pub(super) struct Ctx {
    agent: ureq::Agent,
    /// For the HEAD that reads Hugging Face's `x-linked-etag` before its redirect to a CDN.
    no_redirect: ureq::Agent,
    pub opts: PullOptions,
    /// The registry's Bearer token once a 401 challenge was answered (reused for the blobs).
    token: Mutex<Option<String>>,
}

fn agent(max_redirects: u32) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(max_redirects)
        .user_agent(concat!("rocmforge/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A connection that delivers nothing for a minute is dead: fail and resume elsewhere.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// `scheme://host[:port]` of a URL (what a network error names).
pub(super) fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}

fn net_err(url: &str, e: ureq::Error) -> PullError {
    PullError::Network { host: host_of(url), message: e.to_string() }
}

/// Percent-encode a query value or a path segment (RFC 3986 unreserved characters kept).
pub(super) fn pct(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Bearer realm="…",service="…",scope="…"` → the token URL (docker distribution's auth spec).
fn challenge_url(h: &str) -> Option<String> {
    let rest = h.trim().strip_prefix("Bearer ").or_else(|| h.trim().strip_prefix("bearer "))?;
    let mut realm = None;
    let mut query = Vec::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.trim().trim_matches('"');
        match k.trim() {
            "realm" => realm = Some(v.to_string()),
            k => query.push(format!("{k}={}", pct(v, false))),
        }
    }
    let realm = realm?;
    Some(if query.is_empty() { realm } else { format!("{realm}{}{}", if realm.contains('?') { "&" } else { "?" }, query.join("&")) })
}

/// Read at most `limit` bytes of a small body (JSON, error text).
pub(super) fn small_body(r: &mut Response<Body>, url: &str, limit: u64) -> Result<Vec<u8>, PullError> {
    r.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| net_err(url, e))
}

/// The first 200 characters of an error body (for messages).
pub(super) fn error_text(r: &mut Response<Body>) -> String {
    let b = r.body_mut().with_config().limit(64 << 10).read_to_string().unwrap_or_default();
    let b = b.trim();
    let cut: String = b.chars().take(200).collect();
    if cut.len() < b.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

impl Ctx {
    pub fn new(opts: &PullOptions) -> Ctx {
        Ctx { agent: agent(10), no_redirect: agent(0), opts: opts.clone(), token: Mutex::new(None) }
    }

    /// GET `url`; a 401 carrying a Bearer challenge is answered once with an anonymous token
    /// (what public docker-style registries expect), which is then kept for later requests.
    pub fn get(&self, url: &str, headers: &[(&str, String)]) -> Result<Response<Body>, PullError> {
        let send = |token: Option<&str>| {
            let mut rq = self.agent.get(url);
            for (k, v) in headers {
                rq = rq.header(*k, v);
            }
            if let Some(t) = token {
                rq = rq.header("Authorization", format!("Bearer {t}"));
            }
            rq.call().map_err(|e| net_err(url, e))
        };
        let token = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let r = send(token.as_deref())?;
        if r.status() != 401 {
            return Ok(r);
        }
        let Some(tu) = r.headers().get("www-authenticate").and_then(|h| h.to_str().ok()).and_then(challenge_url) else { return Ok(r) };
        let mut tr = self.agent.get(&tu).call().map_err(|e| net_err(&tu, e))?;
        if !tr.status().is_success() {
            let status = tr.status().as_u16();
            return Err(PullError::Http { url: tu, status, body: error_text(&mut tr) });
        }
        let v: serde_json::Value = serde_json::from_slice(&small_body(&mut tr, &tu, 1 << 20)?)
            .map_err(|e| PullError::BadResponse { url: tu.clone(), message: format!("token answer: {e}") })?;
        let t = v.get("token").or_else(|| v.get("access_token")).and_then(|t| t.as_str()).map(str::to_string);
        let Some(t) = t else { return Err(PullError::BadResponse { url: tu, message: "token answer has no token".into() }) };
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(t.clone());
        send(Some(&t))
    }

    /// HEAD without following redirects.
    pub fn head_no_redirect(&self, url: &str) -> Result<Response<Body>, PullError> {
        self.no_redirect.head(url).call().map_err(|e| net_err(url, e))
    }
}

/// What to download.
pub(super) struct BlobJob {
    pub url: String,
    /// The digest the content must have (`None`: whatever it hashes to; Hugging Face files
    /// whose server gives no sha256).
    pub digest: Option<String>,
    /// Expected size when the manifest or API says it.
    pub size: Option<u64>,
    /// Shown in progress when there is no digest (a file name).
    pub label: String,
}

impl BlobJob {
    fn progress(&self, total: u64, completed: u64) -> Progress {
        match &self.digest {
            Some(d) => Progress::blob(d, total, completed),
            None => Progress { status: format!("pulling {}", self.label), total, completed, ..Default::default() },
        }
    }
}

/// A downloaded, not yet verified blob; holds the in-process lock on its partial file.
pub(super) enum Fetched {
    /// Already in the store (verified when it was written).
    Present(String),
    Partial {
        path: PathBuf,
        expected: Option<String>,
        what: String,
        _lock: InFlight,
    },
}

static INFLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INFLIGHT_CV: Condvar = Condvar::new();

/// Exclusive use of one partial file within this process (released on drop).
pub(super) struct InFlight(PathBuf);

impl InFlight {
    fn acquire(p: &Path) -> InFlight {
        let mut g = INFLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        while g.iter().any(|x| x == p) {
            g = INFLIGHT_CV.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.push(p.to_path_buf());
        InFlight(p.to_path_buf())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut g = INFLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        g.retain(|x| x != &self.0);
        INFLIGHT_CV.notify_all();
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> PullError {
    move |source| PullError::Store(StoreError::Io { what, source })
}

/// `Content-Range: bytes <start>-<end>/<total|*>` → (start, total).
fn content_range(r: &Response<Body>) -> Option<(u64, Option<u64>)> {
    let v = r.headers().get("content-range")?.to_str().ok()?;
    let spec = v.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// Phase 1: download `job` into its partial file (resuming what an earlier attempt or pull left).
pub(super) fn fetch(ctx: &Ctx, store: &Store, job: &BlobJob, progress: &mut ProgressFn<'_>) -> Result<Fetched, PullError> {
    let blobs = store.root().join("blobs");
    fs::create_dir_all(&blobs).map_err(io_err(format!("creating {}", blobs.display())))?;
    let partial = match &job.digest {
        Some(d) => blobs.join(format!("{}-partial", d.replace(':', "-"))),
        // No digest to name it by: the URL's hash keeps a retry of the same file resumable.
        None => blobs.join(format!("partial-{}", &hex(&Sha256::digest(job.url.as_bytes()))[..32])),
    };
    let lock = InFlight::acquire(&partial);
    if let Some(d) = &job.digest {
        if store.has_blob(d)? {
            let n = job.size.unwrap_or(0);
            if !progress(job.progress(n, n)) {
                return Err(PullError::Cancelled(job.label.clone()));
            }
            return Ok(Fetched::Present(d.clone()));
        }
    }
    let attempts = ctx.opts.attempts.max(1);
    let mut failures = 0u32;
    // The largest the partial has been: an attempt that gets past it made progress, and resets
    // the failure count (a server that drops every connection still ends in an error).
    let mut high_water = 0u64;
    let mut total = job.size.unwrap_or(0);
    loop {
        let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        high_water = high_water.max(have);
        if job.size.is_some_and(|s| have == s) {
            break;
        }
        let mut headers = Vec::new();
        if have > 0 && job.size.is_none_or(|s| have < s) {
            headers.push(("Range", format!("bytes={have}-")));
        }
        let failed = |failures: &mut u32, why: String| -> Result<(), PullError> {
            *failures += 1;
            if *failures >= attempts {
                return Err(PullError::Network { host: host_of(&job.url), message: why });
            }
            tracing::warn!("pull {}: {why}; retrying ({}/{attempts})", job.label, *failures);
            std::thread::sleep(ctx.opts.backoff * (1 << (*failures - 1).min(6)));
            Ok(())
        };
        let mut r = match ctx.get(&job.url, &headers) {
            Ok(r) => r,
            Err(PullError::Network { message, .. }) => {
                failed(&mut failures, message)?;
                continue;
            }
            Err(e) => return Err(e),
        };
        let status = r.status().as_u16();
        let mut offset = match status {
            206 => match content_range(&r) {
                Some((start, t)) if start == have => {
                    total = job.size.or(t).unwrap_or(total);
                    have
                }
                // A range we did not ask for: drop what we have and start over.
                cr => {
                    tracing::warn!("pull {}: asked for bytes {have}-, got {cr:?}; restarting", job.label);
                    fs::remove_file(&partial).ok();
                    failed(&mut failures, format!("unexpected Content-Range {cr:?} for bytes={have}-"))?;
                    continue;
                }
            },
            200 => {
                if have > 0 {
                    tracing::info!("pull {}: the server ignored Range; downloading from the start", job.label);
                }
                total = job.size.or(r.body().content_length()).unwrap_or(total);
                0
            }
            416 => {
                // Our partial is longer than the remote file (or otherwise unusable).
                fs::remove_file(&partial).ok();
                failed(&mut failures, "range not satisfiable".into())?;
                continue;
            }
            s if s >= 500 || s == 429 => {
                let body = error_text(&mut r);
                failed(&mut failures, format!("{}: HTTP {s}: {body}", job.url))?;
                continue;
            }
            s => return Err(PullError::Http { url: job.url.clone(), status: s, body: error_text(&mut r) }),
        };
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(offset == 0)
            .open(&partial)
            .map_err(io_err(format!("opening {}", partial.display())))?;
        f.seek(SeekFrom::Start(offset)).map_err(io_err(format!("seeking {}", partial.display())))?;
        let mut reader = r.into_body().into_reader();
        let mut buf = vec![0u8; 256 << 10];
        let mut last = Instant::now();
        if !progress(job.progress(total, offset)) {
            return Err(PullError::Cancelled(job.label.clone()));
        }
        let dropped = loop {
            match reader.read(&mut buf) {
                Ok(0) => break None,
                Ok(k) => {
                    f.write_all(&buf[..k]).map_err(io_err(format!("writing {}", partial.display())))?;
                    offset += k as u64;
                    if last.elapsed() >= Duration::from_millis(100) {
                        last = Instant::now();
                        if !progress(job.progress(total, offset)) {
                            return Err(PullError::Cancelled(job.label.clone()));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e.to_string()),
            }
        };
        f.flush().map_err(io_err(format!("writing {}", partial.display())))?;
        drop(f);
        let short = total > 0 && offset < total;
        if dropped.is_some() || short {
            if offset > high_water {
                failures = 0;
            }
            let why = dropped.unwrap_or_else(|| "connection closed early".into());
            failed(&mut failures, format!("download from {} stopped at {offset} of {total} bytes: {why}", host_of(&job.url)))?;
            continue;
        }
        if total == 0 {
            total = offset;
        }
        break;
    }
    let n = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    if !progress(job.progress(total.max(n), n)) {
        return Err(PullError::Cancelled(job.label.clone()));
    }
    Ok(Fetched::Partial { path: partial, expected: job.digest.clone(), what: job.url.clone(), _lock: lock })
}

/// Phase 2: hash a fetched partial and move it into place under its digest.
pub(super) fn commit(store: &Store, f: Fetched) -> Result<String, PullError> {
    let (path, expected, what) = match f {
        Fetched::Present(d) => return Ok(d),
        Fetched::Partial { path, expected, what, _lock } => (path, expected, what),
    };
    let file = fs::File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
    let (h, _) = sha256_reader(std::io::BufReader::new(file)).map_err(io_err(format!("reading {}", path.display())))?;
    let got = format!("sha256:{h}");
    if let Some(e) = expected {
        if e != got {
            // The bytes are wrong: a resume must not continue them.
            let _ = fs::remove_file(&path);
            return Err(PullError::DigestMismatch { what, expected: e, got });
        }
    }
    let dst = store.blob_path(&got)?;
    fs::rename(&path, &dst).map_err(io_err(format!("renaming to {}", dst.display())))?;
    Ok(got)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let h = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/x:pull""#;
        assert_eq!(challenge_url(h).unwrap(), "https://auth.example/token?service=registry.example&scope=repository%3Alibrary%2Fx%3Apull");
        assert!(challenge_url("Basic realm=\"x\"").is_none());
    }

    #[test]
    fn hosts_and_encoding() {
        assert_eq!(host_of("http://127.0.0.1:5000/v2/x"), "127.0.0.1:5000");
        assert_eq!(host_of("https://huggingface.co?x"), "huggingface.co");
        assert_eq!(pct("a b/c.gguf", true), "a%20b/c.gguf");
    }
}
