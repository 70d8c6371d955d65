//! The Ollama registry protocol (OCI distribution, as `registry.ollama.ai` speaks it):
//!
//! ```text
//! GET {base}/v2/{namespace}/{model}/manifests/{tag}   Accept: application/vnd.docker.distribution.manifest.v2+json
//! GET {base}/v2/{namespace}/{model}/blobs/{digest}    for the config and every layer (redirects to a CDN followed)
//! ```
//!
//! `base` is `https://{host}` (`http://` with `insecure`, as Ollama's flag does), or
//! [`Endpoints::registry`](super::Endpoints) for names on the default host. The manifest is
//! stored byte for byte as received, so its digest (what `/api/tags` shows) is the registry's.

use super::download::{commit, error_text, fetch, small_body, BlobJob, Ctx};
use super::{checked_digest, Progress, ProgressFn, PullError};
use crate::name::DEFAULT_HOST;
use crate::{Manifest, ModelName, Store, StoredModel, MEDIA_MANIFEST};

/// Registry base URL for a name.
pub(super) fn base_url(ctx: &Ctx, n: &ModelName) -> String {
    if let Some(b) = &ctx.opts.endpoints.registry {
        if n.host.eq_ignore_ascii_case(DEFAULT_HOST) {
            return b.clone();
        }
    }
    let scheme = if ctx.opts.insecure { "http" } else { "https" };
    format!("{scheme}://{}", n.host)
}

pub(super) fn pull(ctx: &Ctx, store: &Store, n: &ModelName, progress: &mut ProgressFn<'_>) -> Result<StoredModel, PullError> {
    let shown = n.display_shortest();
    let base = base_url(ctx, n);
    let url = format!("{base}/v2/{}/{}/manifests/{}", n.namespace, n.model, n.tag);
    let accept = format!("{MEDIA_MANIFEST}, application/vnd.oci.image.manifest.v1+json");
    let mut r = ctx.get(&url, &[("Accept", accept)])?;
    let status = r.status().as_u16();
    if status == 404 {
        return Err(PullError::NotFound { name: shown, registry: base });
    }
    if !r.status().is_success() {
        return Err(PullError::Http { url, status, body: error_text(&mut r) });
    }
    let bytes = small_body(&mut r, &url, 4 << 20)?;
    let bad = |message: String| PullError::BadResponse { url: url.clone(), message };
    let raw: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest is not JSON: {e}")))?;
    if raw.get("manifests").is_some() {
        return Err(bad("got a manifest list (a multi-platform image index), not a model manifest".into()));
    }
    let manifest: Manifest = serde_json::from_value(raw).map_err(|e| bad(format!("manifest: {e}")))?;
    // Config first, then the layers (as Ollama lists them), each digest once.
    let mut jobs: Vec<BlobJob> = Vec::new();
    for l in std::iter::once(&manifest.config).chain(&manifest.layers) {
        let d = checked_digest(&l.digest, &url)?;
        if jobs.iter().any(|j| j.digest.as_deref() == Some(d.as_str())) {
            continue;
        }
        let blob_url = format!("{base}/v2/{}/{}/blobs/{d}", n.namespace, n.model);
        jobs.push(BlobJob { url: blob_url, digest: Some(d.clone()), size: Some(l.size), label: d });
    }
    let mut fetched = Vec::with_capacity(jobs.len());
    for j in &jobs {
        fetched.push(fetch(ctx, store, j, progress)?);
    }
    if !progress(Progress::status("verifying sha256 digest")) {
        return Err(PullError::Cancelled(shown));
    }
    for f in fetched {
        commit(store, f)?;
    }
    let old = store.find(n).and_then(|o| store.get(&o).ok());
    if !progress(Progress::status("writing manifest")) {
        return Err(PullError::Cancelled(shown));
    }
    store.write_manifest_bytes(n, &bytes)?;
    super::prune_replaced(store, old, progress);
    Ok(store.get(n)?)
}
