//! GGUF files from Hugging Face: `hf.co/ORG/REPO:QUANT` (or `huggingface.co/…`) pulls the
//! repo's GGUF whose file name carries that quantization (case-insensitive), as Ollama does.
//!
//! ```text
//! GET {endpoint}/api/models/{org}/{repo}?blobs=true   siblings: [{rfilename, size, lfs: {sha256, size}}]
//! HEAD {endpoint}/{org}/{repo}/resolve/main/{file}   only when the listing has no sha256: x-linked-etag
//! GET {endpoint}/{org}/{repo}/resolve/main/{file}    the file (redirect to a CDN followed), resumable
//! ```
//!
//! `latest` picks Q4_K_M when there is one (Ollama's default), else the only GGUF, else the first
//! of a preference list; otherwise the error lists the quantizations the repo has. Split GGUFs
//! (`-00001-of-00003.gguf`) and vision projectors (`mmproj`) are not candidates. The manifest is
//! built like `/api/create` from a GGUF blob (config from the file's metadata).

use super::download::{commit, error_text, fetch, pct, small_body, BlobJob, Ctx};
use super::{Progress, ProgressFn, PullError};
use crate::{parse_digest, CreateBase, CreateSpec, ModelName, Store, StoredModel};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// What `latest` means when there is no Q4_K_M, in order.
const PREFERRED: &[&str] = &["q4_k_m", "q4_k_s", "q4_0", "q5_k_m", "q6_k", "q8_0", "f16", "bf16"];

fn is_quant(p: &str) -> bool {
    let p = p.to_ascii_lowercase();
    let digit_after = |prefix: &str| p.strip_prefix(prefix).is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()));
    matches!(p.as_str(), "f32" | "f16" | "bf16" | "fp16" | "fp32" | "mxfp4") || digit_after("q") || digit_after("iq") || digit_after("tq")
}

fn is_split(stem: &str) -> bool {
    // `<name>-00001-of-00003`
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    parts.len() == 4 && parts[1] == "of" && [parts[0], parts[2]].iter().all(|p| p.len() == 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The quantization named in a GGUF file name, as spelled there (`Qwen2.5-0.5B-Q4_K_M.gguf` →
/// `Q4_K_M`, `model.q8_0.gguf` → `q8_0`, `x-UD-Q4_K_XL.gguf` → `Q4_K_XL`); `None` when the file
/// is not a single-file GGUF or names none.
pub fn quant_of(file: &str) -> Option<String> {
    let base = file.rsplit('/').next().unwrap_or(file);
    if base.len() < 5 || !base[base.len() - 5..].eq_ignore_ascii_case(".gguf") {
        return None;
    }
    let stem = &base[..base.len() - 5];
    if is_split(stem) || stem.to_ascii_lowercase().contains("mmproj") {
        return None;
    }
    stem.rsplit(['.', '-']).find(|p| is_quant(p)).map(str::to_string)
}

/// The file of `files` that `tag` names; the error carries the quantizations available.
pub fn pick_gguf<'a>(files: &'a [String], tag: &str) -> Result<&'a str, Vec<String>> {
    let mut cands: Vec<(&str, String)> = files.iter().filter_map(|f| Some((f.as_str(), quant_of(f)?))).collect();
    cands.sort();
    let find = |q: &str| cands.iter().find(|(_, fq)| fq.eq_ignore_ascii_case(q)).map(|(f, _)| *f);
    let found = if tag.eq_ignore_ascii_case("latest") {
        find("q4_k_m").or_else(|| (cands.len() == 1).then(|| cands[0].0)).or_else(|| PREFERRED.iter().find_map(|q| find(q)))
    } else {
        find(tag)
    };
    found.ok_or_else(|| {
        let mut avail: Vec<String> = Vec::new();
        for (_, q) in &cands {
            if !avail.iter().any(|a| a.eq_ignore_ascii_case(q)) {
                avail.push(q.to_uppercase());
            }
        }
        avail.sort();
        avail
    })
}

struct Sibling {
    name: String,
    size: Option<u64>,
    sha256: Option<String>,
}

fn siblings(v: &serde_json::Value) -> Vec<Sibling> {
    let list = v.get("siblings").and_then(|s| s.as_array()).or_else(|| v.as_array());
    let mut out = Vec::new();
    for s in list.into_iter().flatten() {
        // `/api/models/...` spells it `rfilename`; the tree listing `path`.
        let Some(name) = s.get("rfilename").or_else(|| s.get("path")).and_then(|x| x.as_str()) else { continue };
        let lfs = s.get("lfs");
        let sha = lfs.and_then(|l| l.get("sha256").or_else(|| l.get("oid"))).and_then(|x| x.as_str());
        let size = lfs.and_then(|l| l.get("size")).or_else(|| s.get("size")).and_then(|x| x.as_u64());
        out.push(Sibling { name: name.to_string(), size, sha256: sha.map(|h| format!("sha256:{h}")) });
    }
    out
}

pub(super) fn pull(ctx: &Ctx, store: &Store, n: &ModelName, progress: &mut ProgressFn<'_>) -> Result<StoredModel, PullError> {
    let shown = n.display_shortest();
    let base = ctx.opts.endpoints.hf.clone().unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let repo = format!("{}/{}", n.namespace, n.model);
    let url = format!("{base}/api/models/{repo}?blobs=true");
    let mut r = ctx.get(&url, &[])?;
    let status = r.status().as_u16();
    // The Hub answers 401 (not 404) for repos that do not exist or are private.
    if status == 404 || status == 401 {
        return Err(PullError::NotFound { name: shown, registry: base });
    }
    if !r.status().is_success() {
        return Err(PullError::Http { url, status, body: error_text(&mut r) });
    }
    let body = small_body(&mut r, &url, 32 << 20)?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| PullError::BadResponse { url: url.clone(), message: format!("not JSON: {e}") })?;
    let sibs = siblings(&v);
    let names: Vec<String> = sibs.iter().map(|s| s.name.clone()).collect();
    let hf_name = format!("{}/{repo}", n.host);
    if !names.iter().any(|f| quant_of(f).is_some()) {
        let others = names.iter().take(8).cloned().collect();
        return Err(PullError::NoGguf { repo: hf_name, others });
    }
    let file = pick_gguf(&names, &n.tag).map_err(|available| PullError::NoQuant { repo: hf_name, quant: n.tag.clone(), available })?;
    let sib =
        sibs.iter().find(|s| s.name == file).ok_or_else(|| PullError::BadResponse { url: url.clone(), message: "lost file".into() })?;
    let file_url = format!("{base}/{repo}/resolve/main/{}", pct(file, true));
    let digest = match &sib.sha256 {
        Some(d) => Some(
            parse_digest(d).map_err(|_| PullError::BadResponse { url: url.clone(), message: format!("bad sha256 {d:?} for {file}") })?,
        ),
        None => linked_etag(ctx, &file_url),
    };
    let job = BlobJob { url: file_url, digest, size: sib.size, label: file.to_string() };
    let fetched = fetch(ctx, store, &job, progress)?;
    if !progress(Progress::status("verifying sha256 digest")) {
        return Err(PullError::Cancelled(shown));
    }
    let digest = commit(store, fetched)?;
    let old = store.find(n).and_then(|o| store.get(&o).ok());
    // The store's own create: config from the GGUF's metadata, manifest written last. Its
    // layer lines are `/api/create`'s; a pull shows only `writing manifest`.
    let mut cancelled = false;
    store.create(n, CreateBase::VerifiedBlob(&digest), &CreateSpec::default(), |s| {
        if s == "writing manifest" {
            cancelled |= !progress(Progress::status(s));
        }
    })?;
    if cancelled {
        // Too late to undo: the model is complete and registered; report it as pulled.
        tracing::info!("pull {shown}: client left while the manifest was written");
    }
    super::prune_replaced(store, old, progress);
    Ok(store.get(n)?)
}

/// The sha256 a Hub `resolve` answer carries for an LFS file (`x-linked-etag`, before the
/// redirect), when the listing had none. `None` when absent: the blob is then named by what it
/// hashes to.
fn linked_etag(ctx: &Ctx, url: &str) -> Option<String> {
    let r = ctx.head_no_redirect(url).ok()?;
    let h = r.headers().get("x-linked-etag").or_else(|| r.headers().get("etag"))?.to_str().ok()?;
    let h = h.trim().trim_start_matches("W/").trim_matches('"');
    parse_digest(&format!("sha256:{h}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quants_from_file_names() {
        assert_eq!(quant_of("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf").as_deref(), Some("Q4_K_M"));
        assert_eq!(quant_of("SmolLM2-135M-Instruct.Q4_1.gguf").as_deref(), Some("Q4_1"));
        assert_eq!(quant_of("sub/dir/gemma-3-270m-q4_k_m.gguf").as_deref(), Some("q4_k_m"));
        assert_eq!(quant_of("x-UD-Q4_K_XL.gguf").as_deref(), Some("Q4_K_XL"));
        assert_eq!(quant_of("all-MiniLM-L6-v2-f16.GGUF").as_deref(), Some("f16"));
        assert_eq!(quant_of("m-IQ4_XS.gguf").as_deref(), Some("IQ4_XS"));
        assert_eq!(quant_of("big-Q4_K_M-00001-of-00002.gguf"), None);
        assert_eq!(quant_of("mmproj-model-f16.gguf"), None);
        assert_eq!(quant_of("README.md"), None);
        assert_eq!(quant_of("model.gguf"), None);
    }

    #[test]
    fn picking() {
        let f = files(&["README.md", "m-Q8_0.gguf", "m-Q4_K_M.gguf", "m-q2_k.gguf"]);
        assert_eq!(pick_gguf(&f, "q4_k_m"), Ok("m-Q4_K_M.gguf"));
        assert_eq!(pick_gguf(&f, "Q2_K"), Ok("m-q2_k.gguf"));
        assert_eq!(pick_gguf(&f, "latest"), Ok("m-Q4_K_M.gguf"));
        assert_eq!(pick_gguf(&f, "Q5_K_M"), Err(vec!["Q2_K".to_string(), "Q4_K_M".into(), "Q8_0".into()]));
        // No Q4_K_M: the only GGUF, else the preference list.
        assert_eq!(pick_gguf(&files(&["a-Q6_K.gguf"]), "latest"), Ok("a-Q6_K.gguf"));
        assert_eq!(pick_gguf(&files(&["a-Q6_K.gguf", "a-Q8_0.gguf", "a-IQ1_S.gguf"]), "latest"), Ok("a-Q6_K.gguf"));
        assert!(pick_gguf(&files(&["a-IQ1_S.gguf", "a-IQ2_M.gguf"]), "latest").is_err());
    }
}
