//! Ollama's model management routes over the store: `/api/create`, `/api/copy`, `/api/delete`,
//! `/api/push` and the blob endpoints.
//!
//! `create` takes its weights from (our extension first) `from` = a path to a GGUF file on the
//! server's disk, `from` = a model name (store, `--model`, `--models-dir`), or `files` = uploaded
//! blobs (what the `ollama` CLI and Open WebUI send); progress is NDJSON like Ollama's.
//! `quantize` (e.g. `q4_K_M`) quantizes an unquantized source GGUF into the new model.
//! `from` may also name a Hugging Face model directory on the server's disk (`config.json` +
//! safetensors / PyTorch weights): it is converted to a GGUF blob (`quantize`'s type, else F16,
//! as Ollama imports safetensors) through the plugin registry (see `hf_import.rs`).
//! `files` and `adapters` (uploaded blobs: a GGUF, or a Hugging Face model's files; GGUF or
//! PEFT LoRA adapters) are checked and staged by `create_files.rs`. Temporary files live in
//! the store's `blobs/tmp` (same filesystem as the blobs: a finished file is renamed in).
//! `pull` lives in `pull.rs` (registry and Hugging Face downloads). `push` is not supported.
//!
//! Invariants: every name and digest is validated by the store before it touches a path;
//! uploads are hashed while written and only kept under their verified digest.

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use rocmforge_model::quantize::{quantize_file, quantize_model, FileType, QuantizeOptions, QuantizeReport};
use rocmforge_model::ModelError;
use rocmforge_store::{CreateBase, CreateSpec, ModelName, StoreError};
use serde::Deserialize;
use serde_json::{json, Map, Value as Json};

use crate::create_files;
use crate::error::{ApiError, Dialect};
use crate::wire::{empty_ok, json_response, ndjson, parse_body};
use crate::Shared;

const D: Dialect = Dialect::Ollama;

fn name_of(model: &str, name: &str) -> Result<ModelName, ApiError> {
    let n = if model.is_empty() { name } else { model };
    if n.trim().is_empty() {
        return Err(ApiError::bad_request("model is required"));
    }
    ModelName::parse(n).map_err(|_| ApiError::bad_request("invalid model name"))
}

#[derive(Deserialize)]
struct CreateReq {
    #[serde(default)]
    model: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    files: Option<Map<String, Json>>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Json>>,
    #[serde(default)]
    messages: Option<Vec<Json>>,
    #[serde(default)]
    license: Option<Json>,
    #[serde(default)]
    quantize: Option<String>,
    #[serde(default)]
    quantization: Option<String>,
    #[serde(default)]
    adapters: Option<Map<String, Json>>,
    #[serde(default)]
    stream: Option<bool>,
}

pub async fn create(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateReq = parse_body(&body, D)?;
    let name = name_of(&req.model, &req.name)?;
    // A TEMPLATE renders every prompt of the model (crate::gotemplate): refuse one that does
    // not parse, as Ollama does ("template error: ...", 400).
    if let Some(t) = req.template.as_deref().filter(|t| !t.is_empty()) {
        rocmforge_chat::gotmpl::OllamaTemplate::parse(t).map_err(|e| ApiError::bad_request(format!("template error: {e}")))?;
    }
    // `quantize` (Ollama's spelling; `quantization` is accepted too): the new model's weights are
    // the source GGUF quantized to this file type (llama-quantize's types and mixes, through
    // rocmforge_model::quantize, as `rocmforge quantize` does).
    let quantize = match req.quantize.as_deref().or(req.quantization.as_deref()).map(str::trim).filter(|q| !q.is_empty()) {
        None => None,
        Some(q) => Some(q.parse::<FileType>().map_err(|_| {
            let known: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
            ApiError::bad_request(format!("unsupported quantization type {q:?}; supported: {}", known.join(", ")))
        })?),
    };
    let license = match req.license {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(vec![s]),
        Some(Json::Array(a)) => Some(a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()),
        Some(_) => return Err(ApiError::bad_request("license must be a string or a list of strings")),
    };
    let mut spec =
        CreateSpec { template: req.template, system: req.system, params: req.parameters, messages: req.messages, license, adapters: None };
    let store = &st.mgr.store;
    // Uploaded files and adapters: names, digests and the files each format needs, checked
    // before anything else (create_files.rs).
    let model_files = match req.files.filter(|f| !f.is_empty()) {
        Some(f) => Some(create_files::classify_model(create_files::uploads("files", &f, store)?)?),
        None => None,
    };
    let adapter_files = match req.adapters.filter(|a| !a.is_empty()) {
        Some(a) => Some(create_files::classify_adapters(create_files::uploads("adapters", &a, store)?)?),
        None => None,
    };
    // Where the weights come from, decided before streaming so errors get a status.
    enum Src {
        File(std::path::PathBuf),
        Blob(String),
        Model(ModelName),
        /// A Hugging Face model directory to convert.
        Hf(std::path::PathBuf),
    }
    // Uploaded HF files, laid out as a directory while the create runs.
    let mut staged: Option<create_files::Staged> = None;
    let src = if let Some(files) = model_files {
        match files {
            create_files::ModelFiles::Gguf(digest) => {
                let path = store.blob_path(&digest).map_err(store_error)?;
                if rocmforge_model::lora::LoraAdapter::is_gguf_adapter(&path) {
                    return Err(ApiError::bad_request("files: the GGUF file is a LoRA adapter, not a model: pass it in 'adapters'"));
                }
                Src::Blob(digest)
            }
            create_files::ModelFiles::Hf(files) => {
                let mgr = st.mgr.clone();
                let s = tokio::task::spawn_blocking(move || create_files::stage(&mgr.store, &files, "create-"))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .map_err(|e| ApiError::bad_request(format!("files: {e}")))?;
                let dir = s.dir.clone();
                staged = Some(s);
                Src::Hf(dir)
            }
        }
    } else if let Some(from) = req.from.filter(|f| !f.trim().is_empty()) {
        let p = std::path::Path::new(&from);
        let looks_like_path = from.starts_with('/') || from.starts_with("./") || from.starts_with("../") || from.ends_with(".gguf");
        if (looks_like_path || crate::hf_import::has_config(p)) && p.is_dir() {
            Src::Hf(p.to_path_buf())
        } else if looks_like_path && p.is_file() {
            if !is_gguf(p) {
                return Err(ApiError::bad_request(format!(
                    "{from} is neither a GGUF file nor a Hugging Face model directory (config.json + *.safetensors)"
                )));
            }
            Src::File(p.to_path_buf())
        } else if looks_like_path && !p.exists() {
            return Err(ApiError::bad_request(format!("{from}: no such file on the server")));
        } else {
            let n = ModelName::parse(&from).map_err(|_| ApiError::bad_request(format!("invalid model name {from:?}")))?;
            if st.mgr.store.find(&n).is_some() {
                Src::Model(n)
            } else {
                // A model known by --model / --models-dir: import its file.
                let r = st.mgr.resolve(&from).map_err(ApiError::from)?;
                if r.path.is_dir() {
                    Src::Hf(r.path)
                } else {
                    Src::File(r.path)
                }
            }
        }
    } else {
        return Err(ApiError::bad_request("neither 'from' or 'files' was specified"));
    };
    // A Hugging Face directory is opened (config, architecture, weights, tokenizer) before the
    // response starts: what is wrong with it is a 400, and nothing is registered. Adapters are
    // checked against the base (and PEFT ones converted) here too.
    let hf = match &src {
        Src::Hf(dir) => {
            let (mgr, dir) = (st.mgr.clone(), dir.clone());
            let opened = tokio::task::spawn_blocking(move || crate::hf_import::open(&dir, mgr.registry()))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Some(opened.map_err(|e| match &staged {
                // The staging directory's path means nothing to the client.
                Some(s) => ApiError::bad_request(format!("files: {}", e.replace(&s.dir.display().to_string(), "uploaded model"))),
                None => ApiError::bad_request(e),
            })?)
        }
        _ => None,
    };
    let (hf, adapter_lines) = match adapter_files {
        None => (hf, Vec::new()),
        Some(adapters) => {
            let base_path =
                match &src {
                    Src::File(p) => Some(p.clone()),
                    Src::Blob(d) => Some(store.blob_path(d).map_err(store_error)?),
                    Src::Model(n) => Some(store.get(n).map_err(store_error)?.model_path.ok_or_else(|| {
                        ApiError::bad_request(format!("{} has no model layer to apply adapters to", n.display_shortest()))
                    })?),
                    Src::Hf(_) => None,
                };
            let converting = matches!(adapters, create_files::AdapterFiles::Peft(_));
            let mgr = st.mgr.clone();
            let (hf, digests) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
                let registry =
                    mgr.registry().ok_or_else(|| ApiError::bad_request("this server has no model plugins to check adapters with"))?;
                let digests = match (&hf, base_path) {
                    (Some(input), _) => create_files::adapter_blobs(&mgr.store, registry, &input.src, &adapters)?,
                    (None, Some(p)) => {
                        let base = create_files::open_base(&p, registry)?;
                        create_files::adapter_blobs(&mgr.store, registry, &base, &adapters)?
                    }
                    (None, None) => return Err(ApiError::internal("no base model to check the adapters against")),
                };
                Ok((hf, digests))
            })
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
            spec.adapters = Some(digests);
            (hf, if converting { vec!["converting adapter".to_string()] } else { Vec::new() })
        }
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Json>();
    let mgr = st.mgr.clone();
    let task = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
        // The staged upload lives until the model is written.
        let _staged = staged;
        let store = &mgr.store;
        let send = |s: String| {
            let _ = tx.send(json!({ "status": s }));
        };
        adapter_lines.into_iter().for_each(send);
        let created = if let Some(input) = hf {
            // Ollama's safetensors import: `converting model`, the conversion's progress, then
            // the layers and manifest as any create.
            send("converting model".into());
            let ftype = quantize.unwrap_or(FileType::F16);
            let path = input.src.path().to_path_buf();
            let from = input.source_type();
            let digest =
                quantize_into_store(store, &path, &from, ftype, &tx, |out, opts, progress| quantize_model(&input, out, opts, progress))?;
            // quantize_into_store imported (and hashed) the file: no second hash.
            store.create(&name, CreateBase::VerifiedBlob(&digest), &spec, send)?
        } else if let Some(ftype) = quantize {
            // The source GGUF on disk; a store model also hands down its template, system
            // prompt, parameters and messages (the quantized file becomes a new blob).
            let path = match &src {
                Src::File(p) => p.clone(),
                Src::Blob(d) => store.blob_path(d)?,
                Src::Model(n) => {
                    let base = store.get(n)?;
                    spec.template = spec.template.take().or(base.template.clone());
                    spec.system = spec.system.take().or(base.system.clone());
                    spec.params = spec.params.take().or_else(|| (!base.params.is_empty()).then(|| base.params.clone()));
                    spec.messages = spec.messages.take().or_else(|| (!base.messages.is_empty()).then(|| base.messages.clone()));
                    if spec.adapters.is_none() && !base.adapter_digests.is_empty() {
                        spec.adapters = Some(base.adapter_digests.clone());
                    }
                    base.model_path.clone().ok_or_else(|| StoreError::BadModelFile {
                        path: Default::default(),
                        message: format!("{} has no model layer to quantize", n.display_shortest()),
                    })?
                }
                Src::Hf(_) => unreachable!("converted above"),
            };
            let from = gguf_file_type(&path)?;
            let digest =
                quantize_into_store(store, &path, &from, ftype, &tx, |out, opts, progress| quantize_file(&path, out, opts, progress))?;
            send("parsing GGUF".into());
            store.create(&name, CreateBase::VerifiedBlob(&digest), &spec, send)?
        } else {
            match src {
                Src::File(p) => {
                    send("parsing GGUF".into());
                    let (d, _) = store.import_file(&p)?;
                    store.create(&name, CreateBase::Blob(&d), &spec, send)?
                }
                Src::Blob(d) => {
                    send("parsing GGUF".into());
                    store.create(&name, CreateBase::Blob(&d), &spec, send)?
                }
                Src::Model(n) => {
                    let base = store.get(&n)?;
                    store.create(&name, CreateBase::Model(&base), &spec, send)?
                }
                Src::Hf(_) => unreachable!("converted above"),
            }
        };
        // A model created again under a loaded name: answers cached for the old one must go.
        if let Some(cache) = &mgr.request_cache {
            if let Some(p) = &created.model_path {
                cache.invalidate(&crate::manager::store_model_key(p, &created.adapter_digests));
            }
        }
        let _ = tx.send(json!({ "status": "success" }));
        Ok(())
    });
    let stream_mode = req.stream.unwrap_or(true);
    if !stream_mode {
        return match task.await {
            Ok(Ok(())) => Ok(json_response(&json!({ "status": "success" }))),
            Ok(Err(e)) => Err(store_error(e)),
            Err(e) => Err(ApiError::internal(e.to_string())),
        };
    }
    // Stream the progress; an error becomes the last line.
    let progress = tokio_stream_from(rx);
    let tail = futures_util::stream::once(async move {
        match task.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(json!({ "error": e.to_string() })),
            Err(e) => Some(json!({ "error": e.to_string() })),
        }
    })
    .filter_map(|x| async move { x });
    Ok(ndjson(progress.chain(tail)))
}

/// Whether the file at `p` starts with the GGUF magic.
fn is_gguf(p: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == rocmforge_model::gguf::GGUF_MAGIC
}

/// The name of a GGUF's `general.file_type` (`F16`, ...; `source` when it has none).
fn gguf_file_type(path: &std::path::Path) -> Result<String, StoreError> {
    let f = rocmforge_model::gguf::GgufFile::open(path)
        .map_err(|e| StoreError::BadModelFile { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(f.get("general.file_type")
        .and_then(|v| v.as_u64())
        .and_then(|id| u32::try_from(id).ok().and_then(FileType::from_id))
        .map_or("source", |t| t.name())
        .to_string())
}

/// Quantize the model at `path` (a GGUF, or an HF directory; `from` names its type) to `ftype`
/// with `run` into a temporary file, import it as a blob (its digest returned) and remove the
/// temporary. Progress goes to `tx` as Ollama's
/// `{"status": "quantizing F16 model to Q4_K_M", "total": n, "completed": i}` lines. As in
/// Ollama, only unquantized sources (F32 / F16 / BF16 tensors) are accepted: quantizing an
/// already quantized model compounds its error (the quantizer refuses, naming the tensor).
fn quantize_into_store(
    store: &rocmforge_store::Store,
    path: &std::path::Path,
    from: &str,
    ftype: FileType,
    tx: &tokio::sync::mpsc::UnboundedSender<Json>,
    run: impl FnOnce(&std::path::Path, &QuantizeOptions, &(dyn Fn(usize, usize, &str) + Sync)) -> Result<QuantizeReport, ModelError>,
) -> Result<String, StoreError> {
    let bad = |message: String| StoreError::BadModelFile { path: path.to_path_buf(), message };
    let status = format!("quantizing {from} model to {}", ftype.name());
    let _ = tx.send(json!({ "status": status }));
    // In the store's blobs/tmp: the finished file becomes a blob by a rename (one hash, no copy).
    let tmp = store.temp_path("quantize-")?;
    let progress = |i: usize, n: usize, _name: &str| {
        let _ = tx.send(json!({ "status": status, "digest": "0", "total": n, "completed": i }));
    };
    let opts = QuantizeOptions::new(ftype);
    let result = run(&tmp, &opts, &progress).map_err(|e| bad(format!("quantizing to {}: {e}", ftype.name())));
    let adopted = result.and_then(|_| store.adopt_file(&tmp));
    let _ = std::fs::remove_file(&tmp);
    Ok(adopted?.0)
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::UnboundedReceiver<Json>) -> impl futures_util::Stream<Item = Json> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::from(crate::manager::ManagerError::Store(e))
}

#[derive(Deserialize)]
struct CopyReq {
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
}

pub async fn copy(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: CopyReq = parse_body(&body, D)?;
    let src = ModelName::parse(&req.source).map_err(|_| ApiError::bad_request(format!("source \"{}\" is invalid", req.source)))?;
    let dst =
        ModelName::parse(&req.destination).map_err(|_| ApiError::bad_request(format!("destination \"{}\" is invalid", req.destination)))?;
    let mgr = st.mgr.clone();
    let source = req.source.clone();
    tokio::task::spawn_blocking(move || match mgr.store.copy(&src, &dst) {
        Err(StoreError::NotFound(_)) => Err(ApiError::not_found(format!("model \"{source}\" not found"))),
        Err(e) => Err(store_error(e)),
        Ok(()) => Ok(()),
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(empty_ok())
}

#[derive(Deserialize)]
struct DeleteReq {
    #[serde(default)]
    model: String,
    #[serde(default)]
    name: String,
}

pub async fn delete(State(st): State<Shared>, body: Bytes) -> Result<Response, ApiError> {
    let req: DeleteReq = parse_body(&body, D)?;
    let shown = if req.model.is_empty() { req.name.clone() } else { req.model.clone() };
    let name = name_of(&req.model, &req.name)?;
    // A loaded instance goes first (its file is about to disappear).
    if let Ok(r) = st.mgr.resolve(&shown) {
        if r.stored.is_some() {
            st.mgr.unload(&r);
        }
    }
    let mgr = st.mgr.clone();
    tokio::task::spawn_blocking(move || match mgr.store.delete(&name) {
        Err(StoreError::NotFound(_)) => Err(ApiError::not_found(format!("model '{shown}' not found"))),
        Err(e) => Err(store_error(e)),
        Ok(()) => Ok(()),
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(empty_ok())
}

pub async fn push(body: Bytes) -> Result<Response, ApiError> {
    let _: Json = parse_body(&body, D)?;
    Err(ApiError::not_supported("push is not supported by this server"))
}

pub async fn blob_head(State(st): State<Shared>, UrlPath(digest): UrlPath<String>) -> Response {
    match st.mgr.store.has_blob(&digest) {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => ApiError::not_found(format!("blob \"{digest}\" not found")).into_response(),
        Err(_) => ApiError::bad_request("invalid digest format").into_response(),
    }
}

pub async fn blob_post(State(st): State<Shared>, UrlPath(digest): UrlPath<String>, body: Body) -> Result<Response, ApiError> {
    let d = rocmforge_store::parse_digest(&digest).map_err(|_| ApiError::bad_request("invalid digest format"))?;
    if st.mgr.store.has_blob(&d).unwrap_or(false) {
        return Ok(StatusCode::OK.into_response());
    }
    let mut w = st.mgr.store.blob_writer().map_err(store_error)?;
    let mut s = body.into_data_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading upload: {e}")))?;
        // Local disk writes of body-sized chunks: short enough not to need a blocking thread.
        tokio::task::block_in_place(|| w.write(&chunk)).map_err(store_error)?;
    }
    tokio::task::block_in_place(|| w.finish(&d)).map_err(|e| match e {
        StoreError::DigestMismatch { expected, got } => {
            ApiError::bad_request(format!("digest mismatch, expected \"{expected}\", got \"{got}\""))
        }
        e => store_error(e),
    })?;
    Ok(StatusCode::CREATED.into_response())
}
