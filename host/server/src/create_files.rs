//! `/api/create` from uploaded files: Ollama's `files` (`{"<file name>": "sha256:<hex>"}` of
//! blobs uploaded with `POST /api/blobs/:digest`) and `adapters` (the same, for LoRA adapters),
//! as the `ollama` CLI and Open WebUI send them.
//!
//! ```text
//!   files     one *.gguf                      -> that blob is the model layer
//!             config.json + *.safetensors     -> a Hugging Face model: staged as a directory and
//!             + tokenizer.json (+ others)        converted like `from: <HF dir>` (hf_import.rs)
//!   adapters  *.gguf (one or more)            -> llama.cpp GGUF LoRA adapters, stored as they are
//!             adapter_config.json             -> a PEFT adapter, converted to a GGUF adapter (as
//!             + adapter_model.safetensors        Ollama stores adapters) against the base model
//! ```
//!
//! Everything is checked before the response starts, so a problem is a 400 that names it:
//! file names (relative paths of plain components: no `..`, no absolute paths, no backslashes),
//! digests (well-formed, uploaded, and the blob still hashing to its digest), the files a
//! format needs (`no config.json`, ...), and adapters against the base model (architecture,
//! tensor names and shapes, `rocmforge_runtime::lora`).
//!
//! Staging: uploaded files are hard-linked (copied only where links fail) under their client
//! names into a directory in the store's `blobs/tmp`, removed when the create ends.

use std::path::{Path, PathBuf};

use rocmforge_model::lora::LoraAdapter;
use rocmforge_runtime::{ModelSource, Registry};
use rocmforge_store::{parse_digest, Store, StoreError};
use serde_json::{Map, Value as Json};

use crate::error::ApiError;

/// One uploaded file: the name the client gave it and its blob.
#[derive(Clone, Debug, PartialEq)]
pub struct Uploaded {
    pub name: String,
    pub digest: String,
}

/// A relative path of plain components: what a file of a model directory may be called.
pub fn safe_name(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("file name {name:?} is not allowed: {why}"));
    if name.is_empty() || name.len() > 512 {
        return bad("empty or too long");
    }
    if name.contains('\\') || name.contains('\0') || name.starts_with('/') {
        return bad("it must be a relative path with '/' separators");
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("empty, '.' or '..' path components");
    }
    Ok(())
}

/// The files of a `files` / `adapters` map, each name and digest checked, each blob present.
pub fn uploads(field: &str, map: &Map<String, Json>, store: &Store) -> Result<Vec<Uploaded>, ApiError> {
    let mut out = Vec::with_capacity(map.len());
    for (name, v) in map {
        safe_name(name).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?;
        let d = v.as_str().ok_or_else(|| ApiError::bad_request(format!("{field}: {name:?} must map to a digest string")))?;
        let digest = parse_digest(d).map_err(|_| ApiError::bad_request(format!("{field}: {name:?}: invalid digest {d:?}")))?;
        if !store.has_blob(&digest).unwrap_or(false) {
            return Err(ApiError::bad_request(format!(
                "{field}: {name:?}: blob {digest} not found: upload it with POST /api/blobs/{digest} first"
            )));
        }
        out.push(Uploaded { name: name.clone(), digest });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn base_name(u: &Uploaded) -> &str {
    u.name.rsplit('/').next().unwrap_or(&u.name)
}

fn has(files: &[Uploaded], f: impl Fn(&str) -> bool) -> bool {
    files.iter().any(|u| f(base_name(u)))
}

/// What `files` holds.
#[derive(Debug, PartialEq)]
pub enum ModelFiles {
    /// The digest of the one GGUF file.
    Gguf(String),
    /// A Hugging Face model's files.
    Hf(Vec<Uploaded>),
}

pub fn classify_model(files: Vec<Uploaded>) -> Result<ModelFiles, ApiError> {
    let ggufs: Vec<&Uploaded> = files.iter().filter(|u| u.name.to_ascii_lowercase().ends_with(".gguf")).collect();
    match ggufs.as_slice() {
        [one] => return Ok(ModelFiles::Gguf(one.digest.clone())),
        [] => {}
        many => {
            let names: Vec<&str> = many.iter().map(|u| u.name.as_str()).collect();
            return Err(ApiError::bad_request(format!("files: more than one GGUF file ({}): upload one model file", names.join(", "))));
        }
    }
    let hint = "a Hugging Face model needs config.json, *.safetensors weights and tokenizer.json";
    if !has(&files, |n| n == "config.json") {
        return Err(ApiError::bad_request(format!("files: no config.json and no *.gguf file ({hint})")));
    }
    if !has(&files, |n| n.ends_with(".safetensors") || (n.starts_with("pytorch_model") && n.ends_with(".bin"))) {
        return Err(ApiError::bad_request(format!("files: no *.safetensors weights ({hint})")));
    }
    if !has(&files, |n| n == "tokenizer.json") {
        return Err(ApiError::bad_request(format!("files: no tokenizer.json ({hint})")));
    }
    Ok(ModelFiles::Hf(files))
}

/// What `adapters` holds.
#[derive(Debug, PartialEq)]
pub enum AdapterFiles {
    /// GGUF LoRA adapters, each one file.
    Gguf(Vec<Uploaded>),
    /// One PEFT adapter's files.
    Peft(Vec<Uploaded>),
}

pub fn classify_adapters(files: Vec<Uploaded>) -> Result<AdapterFiles, ApiError> {
    let is_gguf = |u: &Uploaded| u.name.to_ascii_lowercase().ends_with(".gguf");
    if files.iter().all(is_gguf) {
        return Ok(AdapterFiles::Gguf(files));
    }
    if files.iter().any(is_gguf) {
        return Err(ApiError::bad_request("adapters: GGUF adapters and PEFT adapter files cannot be mixed in one create"));
    }
    let hint = "a PEFT adapter needs adapter_config.json and adapter_model.safetensors";
    if !has(&files, |n| n == "adapter_config.json") {
        return Err(ApiError::bad_request(format!("adapters: no adapter_config.json ({hint})")));
    }
    if !has(&files, |n| n == "adapter_model.safetensors") {
        let bin =
            if has(&files, |n| n == "adapter_model.bin") { "; adapter_model.bin is not supported, save with safetensors" } else { "" };
        return Err(ApiError::bad_request(format!("adapters: no adapter_model.safetensors ({hint}{bin})")));
    }
    Ok(AdapterFiles::Peft(files))
}

/// Uploaded files laid out under their names in the store's `blobs/tmp` (see the module
/// header); the directory goes when this is dropped.
pub struct Staged {
    pub dir: PathBuf,
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stage `files`, each blob checked against its digest first.
pub fn stage(store: &Store, files: &[Uploaded], what: &str) -> Result<Staged, StoreError> {
    let io = |what: String| move |source| StoreError::Io { what, source };
    let staged = Staged { dir: store.temp_path(what)? };
    std::fs::create_dir_all(&staged.dir).map_err(io(format!("creating {}", staged.dir.display())))?;
    for u in files {
        store.verify_blob(&u.digest)?;
        let blob = store.blob_path(&u.digest)?;
        let dst = staged.dir.join(&u.name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        if std::fs::hard_link(&blob, &dst).is_err() {
            std::fs::copy(&blob, &dst).map_err(io(format!("copying {} to {}", blob.display(), dst.display())))?;
        }
    }
    Ok(staged)
}

/// Check `adapters` against the base model and bring them into the store as GGUF adapter
/// blobs (PEFT adapters converted); returns their digests in order. `base` is the opened base
/// model (a GGUF file, or the Hugging Face directory about to be converted: its tensor names
/// and shapes are the same). Every error is a 400 naming the adapter and what is wrong.
pub fn adapter_blobs(store: &Store, registry: &Registry, base: &ModelSource, adapters: &AdapterFiles) -> Result<Vec<String>, ApiError> {
    let bad = |e: String| ApiError::bad_request(format!("adapters: {e}"));
    match adapters {
        AdapterFiles::Gguf(files) => {
            let mut out = Vec::with_capacity(files.len());
            for u in files {
                store.verify_blob(&u.digest).map_err(|e| bad(format!("{}: {e}", u.name)))?;
                let path = store.blob_path(&u.digest).map_err(|e| bad(e.to_string()))?;
                let named = |e: String| bad(e.replace(&path.display().to_string(), &u.name));
                let a = LoraAdapter::open_gguf(&path).map_err(|e| named(e.to_string()))?;
                rocmforge_runtime::lora::resolve(base, &a, registry).map_err(|e| named(e.to_string()))?;
                out.push(u.digest.clone());
            }
            Ok(out)
        }
        AdapterFiles::Peft(files) => {
            let staged = stage(store, files, "adapter-").map_err(|e| bad(e.to_string()))?;
            let shown = staged.dir.display().to_string();
            let named = |e: String| bad(e.replace(&shown, "PEFT adapter"));
            let a = LoraAdapter::open_peft(&staged.dir).map_err(|e| named(e.to_string()))?;
            let gguf = rocmforge_runtime::lora::resolve(base, &a, registry).map_err(|e| named(e.to_string()))?;
            let tmp = store.temp_path("adapter-gguf-").map_err(|e| bad(e.to_string()))?;
            if let Err(e) = gguf.write_gguf(base.arch(), &tmp) {
                let _ = std::fs::remove_file(&tmp);
                return Err(bad(format!("writing the GGUF adapter: {e}")));
            }
            let (digest, _) = store.adopt_file(&tmp).map_err(|e| bad(e.to_string()))?;
            Ok(vec![digest])
        }
    }
}

/// The base model to check adapters against: a GGUF file (or HF directory) opened through the
/// registry.
pub fn open_base(path: &Path, registry: &Registry) -> Result<ModelSource, ApiError> {
    ModelSource::open(path, registry).map_err(|e| ApiError::bad_request(format!("opening the base model to check the adapters: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(names: &[&str]) -> Vec<Uploaded> {
        names.iter().map(|n| Uploaded { name: n.to_string(), digest: format!("sha256:{}", "0".repeat(64)) }).collect()
    }

    #[test]
    fn names() {
        for ok in ["model.gguf", "config.json", "sub/tokenizer.json", "a-b_c.d"] {
            assert!(safe_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/../../x", "/etc/passwd", "a\\b", "a//b", "./a", "a/.", "x\0y"] {
            assert!(safe_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn model_files() {
        assert!(matches!(classify_model(up(&["m.gguf", "README.md"])), Ok(ModelFiles::Gguf(_))));
        let e = classify_model(up(&["a.gguf", "b.GGUF"])).unwrap_err();
        assert!(e.to_string().contains("more than one GGUF"), "{e}");
        let e = classify_model(up(&["model.safetensors", "tokenizer.json"])).unwrap_err();
        assert!(e.to_string().contains("no config.json"), "{e}");
        let e = classify_model(up(&["config.json", "tokenizer.json"])).unwrap_err();
        assert!(e.to_string().contains("no *.safetensors"), "{e}");
        let e = classify_model(up(&["config.json", "model.safetensors"])).unwrap_err();
        assert!(e.to_string().contains("no tokenizer.json"), "{e}");
        assert!(matches!(classify_model(up(&["config.json", "model.safetensors", "tokenizer.json"])), Ok(ModelFiles::Hf(_))));
    }

    #[test]
    fn adapter_files() {
        assert!(matches!(classify_adapters(up(&["a.gguf", "b.gguf"])), Ok(AdapterFiles::Gguf(_))));
        assert!(matches!(classify_adapters(up(&["adapter_config.json", "adapter_model.safetensors"])), Ok(AdapterFiles::Peft(_))));
        let e = classify_adapters(up(&["adapter_model.safetensors"])).unwrap_err();
        assert!(e.to_string().contains("no adapter_config.json"), "{e}");
        let e = classify_adapters(up(&["adapter_config.json", "adapter_model.bin"])).unwrap_err();
        assert!(e.to_string().contains("adapter_model.bin is not supported"), "{e}");
        let e = classify_adapters(up(&["a.gguf", "adapter_config.json"])).unwrap_err();
        assert!(e.to_string().contains("mixed"), "{e}");
    }
}
