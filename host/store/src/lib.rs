//! The model store, in Ollama's on-disk layout, so an existing Ollama store is read as it is and
//! models we create are visible to Ollama too:
//!
//! ```text
//! <root>/manifests/<host>/<namespace>/<model>/<tag>   JSON manifest (config + layers)
//! <root>/blobs/sha256-<64 hex>                        content-addressed files
//! ```
//!
//! Invariants:
//! * Every path is built from a validated [`ModelName`] or digest ([`parse_digest`]): nothing a
//!   client sends can name a file outside `<root>`.
//! * A blob is only ever written under its own digest, after hashing what was written (a
//!   temporary file renamed into place), and manifests are written the same way: a reader never
//!   sees half a file. Digests are checked again before a blob is used as a model.
//! * `delete` removes the manifest and only the blobs no other manifest references (what Ollama
//!   does); there is no background pruning (Ollama's store may be shared with a running Ollama).
//!
//! `pull` (module [`pull`]) fills the store from an Ollama registry or Hugging Face through the
//! same blob and manifest writing (blobs verified before they are committed, manifest last).
//!
//! Modelled on Ollama's `server/images.go` and `manifest/` (layout, media types, config blob);
//! our own code.

pub mod discover;
pub mod name;
pub mod pull;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

pub use name::{parse_digest, ModelName};

pub const MEDIA_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_MODEL: &str = "application/vnd.ollama.image.model";
pub const MEDIA_TEMPLATE: &str = "application/vnd.ollama.image.template";
pub const MEDIA_PROMPT_LEGACY: &str = "application/vnd.ollama.image.prompt";
pub const MEDIA_SYSTEM: &str = "application/vnd.ollama.image.system";
pub const MEDIA_PARAMS: &str = "application/vnd.ollama.image.params";
pub const MEDIA_MESSAGES: &str = "application/vnd.ollama.image.messages";
pub const MEDIA_LICENSE: &str = "application/vnd.ollama.image.license";
pub const MEDIA_PROJECTOR: &str = "application/vnd.ollama.image.projector";
pub const MEDIA_ADAPTER: &str = "application/vnd.ollama.image.adapter";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid model name {0:?}")]
    InvalidName(String),
    #[error("invalid digest format {0:?}")]
    InvalidDigest(String),
    #[error("model '{0}' not found")]
    NotFound(String),
    #[error("blob {0:?} not found")]
    BlobNotFound(String),
    #[error("digest mismatch, expected {expected:?}, got {got:?}")]
    DigestMismatch { expected: String, got: String },
    #[error("manifest of {name}: {message}")]
    BadManifest { name: String, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("model file {path}: {message}")]
    BadModelFile { path: PathBuf, message: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// One entry of a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub config: Layer,
    #[serde(default)]
    pub layers: Vec<Layer>,
}

/// The config blob: display facts about the model (unknown fields are kept and ignored).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    #[serde(default)]
    pub model_format: String,
    #[serde(default)]
    pub model_family: String,
    #[serde(default)]
    pub model_families: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: String,
    #[serde(default)]
    pub file_type: String,
    #[serde(flatten)]
    pub extra: Map<String, Json>,
}

/// A model read from the store with its text layers resolved.
#[derive(Clone, Debug)]
pub struct StoredModel {
    /// The name as spelled by the manifest's path on disk.
    pub name: ModelName,
    pub manifest: Manifest,
    /// Hex SHA-256 of the manifest file's bytes (what `/api/tags` calls `digest`).
    pub digest: String,
    /// Sum of the layer sizes plus the config blob's.
    pub size: u64,
    pub modified: SystemTime,
    pub config: ModelConfig,
    /// The GGUF weights (`application/vnd.ollama.image.model`), when the manifest has one.
    pub model_path: Option<PathBuf>,
    pub model_digest: Option<String>,
    pub template: Option<String>,
    pub system: Option<String>,
    /// Default options (`PARAMETER` lines), e.g. `{"stop": [...], "temperature": 0.6}`.
    pub params: Map<String, Json>,
    pub messages: Vec<Json>,
    pub license: Vec<String>,
    /// `from` of the model layer: the model this one was made from.
    pub parent: String,
    /// LoRA adapter layers (`application/vnd.ollama.image.adapter`, GGUF adapters), in
    /// manifest order: their blob paths and digests.
    pub adapter_paths: Vec<PathBuf>,
    pub adapter_digests: Vec<String>,
}

/// What a new model is made of (`/api/create`). `None` fields inherit from the base model.
#[derive(Clone, Debug, Default)]
pub struct CreateSpec {
    pub template: Option<String>,
    pub system: Option<String>,
    pub params: Option<Map<String, Json>>,
    pub messages: Option<Vec<Json>>,
    pub license: Option<Vec<String>>,
    /// Digests of GGUF LoRA adapter blobs (already in the store) that replace the base's
    /// adapter layers; None keeps the base model's adapters.
    pub adapters: Option<Vec<String>>,
}

/// Where a new model's weights come from.
pub enum CreateBase<'a> {
    /// A blob already in the store (uploaded through `/api/blobs`), by digest.
    Blob(&'a str),
    /// A blob this process just wrote and hashed (a pull): not hashed a second time.
    VerifiedBlob(&'a str),
    /// A model already in the store: its layers are reused.
    Model(&'a StoredModel),
}

pub struct Store {
    root: PathBuf,
}

/// Hex SHA-256 of a reader's bytes, and how many there were.
pub fn sha256_reader(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Store {
    /// The store under `root` (created lazily: reading an absent store gives no models).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// `$OLLAMA_MODELS`, else `~/.ollama/models` (what Ollama uses, so its models are ours too).
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("OLLAMA_MODELS").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        home.join(".ollama").join("models")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    /// Path of a blob (which need not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let d = parse_digest(digest)?;
        Ok(self.root.join("blobs").join(d.replace(':', "-")))
    }

    pub fn has_blob(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self.blob_path(digest)?.is_file())
    }

    /// Every manifest in the store, as names spelled on disk (`manifests/*/*/*/*`).
    pub fn names(&self) -> Vec<ModelName> {
        let mut out = Vec::new();
        let dirs = |p: &Path| -> Vec<(String, PathBuf)> {
            fs::read_dir(p).into_iter().flatten().flatten().filter_map(|e| Some((e.file_name().into_string().ok()?, e.path()))).collect()
        };
        for (h, hp) in dirs(&self.manifests_dir()) {
            for (ns, nsp) in dirs(&hp) {
                for (m, mp) in dirs(&nsp) {
                    for (t, tp) in dirs(&mp) {
                        if !tp.is_file() {
                            continue;
                        }
                        let n = ModelName { host: h.clone(), namespace: ns.clone(), model: m.clone(), tag: t };
                        // Names on disk that break the grammar (stray files) are skipped.
                        if ModelName::parse(&n.to_string()).is_ok() {
                            out.push(n);
                        }
                    }
                }
            }
        }
        out
    }

    /// The manifest name matching `name` case-insensitively, spelled as on disk.
    pub fn find(&self, name: &ModelName) -> Option<ModelName> {
        let key = name.key();
        self.names().into_iter().find(|n| n.key() == key)
    }

    /// Read a model; `NotFound` when no manifest matches.
    pub fn get(&self, name: &ModelName) -> Result<StoredModel, StoreError> {
        let found = self.find(name).ok_or_else(|| StoreError::NotFound(name.display_shortest()))?;
        self.read(found)
    }

    /// All models, newest first (as `/api/tags` lists them). Unreadable manifests are skipped
    /// with a warning: one broken entry must not hide the others.
    pub fn list(&self) -> Vec<StoredModel> {
        let mut v: Vec<StoredModel> = self
            .names()
            .into_iter()
            .filter_map(|n| match self.read(n.clone()) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!("skipping {}: {e}", n);
                    None
                }
            })
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.modified));
        v
    }

    fn read(&self, name: ModelName) -> Result<StoredModel, StoreError> {
        let path = self.manifests_dir().join(name.manifest_rel_path());
        let bytes = fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
        let modified = fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        let shown = name.display_shortest();
        let bad = |message: String| StoreError::BadManifest { name: shown.clone(), message };
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let digest = hex(&Sha256::digest(&bytes));
        let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let read_text = |l: &Layer| -> Result<String, StoreError> {
            let p = self.blob_path(&l.digest)?;
            fs::read_to_string(&p).map_err(io(format!("reading {}", p.display())))
        };
        let config = match self.blob_path(&manifest.config.digest).ok().and_then(|p| fs::read(p).ok()) {
            Some(b) => serde_json::from_slice(&b).unwrap_or_default(),
            None => ModelConfig::default(),
        };
        let mut m = StoredModel {
            name,
            digest,
            size,
            modified,
            config,
            model_path: None,
            model_digest: None,
            template: None,
            system: None,
            params: Map::new(),
            messages: Vec::new(),
            license: Vec::new(),
            parent: String::new(),
            adapter_paths: Vec::new(),
            adapter_digests: Vec::new(),
            manifest: manifest.clone(),
        };
        for l in &manifest.layers {
            match l.media_type.as_str() {
                MEDIA_MODEL => {
                    m.model_path = Some(self.blob_path(&l.digest)?);
                    m.model_digest = Some(parse_digest(&l.digest)?);
                    m.parent = l.from.clone().unwrap_or_default();
                }
                MEDIA_ADAPTER => {
                    m.adapter_paths.push(self.blob_path(&l.digest)?);
                    m.adapter_digests.push(parse_digest(&l.digest)?);
                }
                MEDIA_TEMPLATE | MEDIA_PROMPT_LEGACY => m.template = Some(read_text(l)?),
                MEDIA_SYSTEM => m.system = Some(read_text(l)?),
                MEDIA_LICENSE => m.license.push(read_text(l)?),
                MEDIA_PARAMS => {
                    let t = read_text(l)?;
                    m.params = serde_json::from_str(&t).map_err(|e| bad(format!("params layer: {e}")))?;
                }
                MEDIA_MESSAGES => {
                    let t = read_text(l)?;
                    m.messages = serde_json::from_str(&t).map_err(|e| bad(format!("messages layer: {e}")))?;
                }
                _ => {}
            }
        }
        Ok(m)
    }

    /// Check that a model's weights blob still hashes to its digest (before loading it).
    pub fn verify_blob(&self, digest: &str) -> Result<(), StoreError> {
        let d = parse_digest(digest)?;
        let p = self.blob_path(&d)?;
        let f = fs::File::open(&p).map_err(|_| StoreError::BlobNotFound(d.clone()))?;
        let (got, _) = sha256_reader(std::io::BufReader::new(f)).map_err(io(format!("reading {}", p.display())))?;
        if format!("sha256:{got}") != d {
            return Err(StoreError::DigestMismatch { expected: d, got: format!("sha256:{got}") });
        }
        Ok(())
    }

    fn tmp_path(&self, dir: &Path) -> PathBuf {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        dir.join(format!(".tmp-{}-{n}", std::process::id()))
    }

    /// Store a blob from a reader. With `expected`, the content must hash to it (else nothing is
    /// kept and `DigestMismatch` is returned). Returns the digest and size.
    pub fn put_blob(&self, expected: Option<&str>, r: impl Read) -> Result<(String, u64), StoreError> {
        let expected = expected.map(parse_digest).transpose()?;
        let dir = self.root.join("blobs");
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let tmp = self.tmp_path(&dir);
        let res = (|| {
            let mut f = fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
            let mut tee = HashingWriter { inner: &mut f, h: Sha256::new(), n: 0 };
            let mut r = r;
            std::io::copy(&mut r, &mut tee).map_err(io("writing blob"))?;
            let (got, n) = (format!("sha256:{}", hex(&tee.h.finalize())), tee.n);
            f.sync_all().map_err(io("syncing blob"))?;
            if let Some(e) = &expected {
                if *e != got {
                    return Err(StoreError::DigestMismatch { expected: e.clone(), got });
                }
            }
            let dst = self.blob_path(&got)?;
            fs::rename(&tmp, &dst).map_err(io(format!("renaming to {}", dst.display())))?;
            Ok((got, n))
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// A fresh path for a temporary file in `<root>/blobs/tmp` (created if needed): on the
    /// blobs' filesystem, so a finished file becomes a blob by a rename ([`adopt_file`]).
    /// The caller removes it if it is not adopted.
    ///
    /// [`adopt_file`]: Self::adopt_file
    pub fn temp_path(&self, what: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("blobs").join("tmp");
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let p = self.tmp_path(&dir);
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(dir.join(format!("{what}{name}")))
    }

    /// Make a file written under [`temp_path`](Self::temp_path) a blob: hash it once and
    /// rename it into place (the file is gone afterwards, also on error). Returns its digest
    /// and size.
    pub fn adopt_file(&self, tmp: &Path) -> Result<(String, u64), StoreError> {
        let res = (|| {
            let f = fs::File::open(tmp).map_err(io(format!("opening {}", tmp.display())))?;
            let (hexd, n) = sha256_reader(std::io::BufReader::new(f)).map_err(io(format!("reading {}", tmp.display())))?;
            let digest = format!("sha256:{hexd}");
            let dst = self.blob_path(&digest)?;
            if !dst.is_file() {
                fs::rename(tmp, &dst).map_err(io(format!("renaming {} to {}", tmp.display(), dst.display())))?;
            }
            Ok((digest, n))
        })();
        let _ = fs::remove_file(tmp);
        res
    }

    /// A blob written piece by piece (an HTTP upload); see [`BlobWriter::finish`].
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let dir = self.root.join("blobs");
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let tmp = self.tmp_path(&dir);
        let file = fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        Ok(BlobWriter { store_root: self.root.clone(), tmp, file: Some(file), h: Sha256::new(), n: 0 })
    }

    /// Bring a file into the blob store (hard link when possible, else a copy) and return its
    /// digest and size.
    pub fn import_file(&self, path: &Path) -> Result<(String, u64), StoreError> {
        let f = fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        let (hexd, n) = sha256_reader(std::io::BufReader::new(f)).map_err(io(format!("reading {}", path.display())))?;
        let digest = format!("sha256:{hexd}");
        let dst = self.blob_path(&digest)?;
        if dst.is_file() {
            return Ok((digest, n));
        }
        let dir = self.root.join("blobs");
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        if fs::hard_link(path, &dst).is_ok() {
            return Ok((digest, n));
        }
        let f = fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        self.put_blob(Some(&digest), std::io::BufReader::new(f))
    }

    fn put_text_layer(&self, media_type: &str, text: &str) -> Result<Layer, StoreError> {
        let (digest, size) = self.put_blob(None, text.as_bytes())?;
        Ok(Layer { media_type: media_type.into(), digest, size, from: None, name: None })
    }

    fn write_manifest(&self, name: &ModelName, m: &Manifest) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(m).map_err(|e| StoreError::BadManifest { name: name.display_shortest(), message: e.to_string() })?;
        self.write_manifest_bytes(name, &bytes)
    }

    /// Write a manifest's bytes as they are (a pulled manifest keeps the registry's digest);
    /// atomically, through a temporary file.
    pub(crate) fn write_manifest_bytes(&self, name: &ModelName, bytes: &[u8]) -> Result<(), StoreError> {
        // A differently-cased existing manifest is replaced, not duplicated.
        let name = self.find(name).unwrap_or_else(|| name.clone());
        let path = self.manifests_dir().join(name.manifest_rel_path());
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let tmp = self.tmp_path(&dir);
        let mut f = fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))
    }

    /// Create (or replace) `name` from a base and overrides; `progress` gets Ollama's status
    /// lines (`using existing layer sha256:…`, `creating new layer sha256:…`, `writing manifest`).
    pub fn create(
        &self,
        name: &ModelName,
        base: CreateBase<'_>,
        spec: &CreateSpec,
        mut progress: impl FnMut(String),
    ) -> Result<StoredModel, StoreError> {
        let mut layers: Vec<Layer> = Vec::new();
        let inherited: Option<&StoredModel> = match &base {
            CreateBase::Model(m) => Some(m),
            CreateBase::Blob(_) | CreateBase::VerifiedBlob(_) => None,
        };
        let (model_layer, config) = match &base {
            CreateBase::Blob(d) | CreateBase::VerifiedBlob(d) => {
                let d = parse_digest(d)?;
                let p = self.blob_path(&d)?;
                if !p.is_file() {
                    return Err(StoreError::BlobNotFound(d));
                }
                if matches!(base, CreateBase::Blob(_)) {
                    self.verify_blob(&d)?;
                }
                let size = fs::metadata(&p).map_err(io(format!("reading {}", p.display())))?.len();
                let info = rocmforge_model::info::ModelInfo::open(&p)
                    .map_err(|e| StoreError::BadModelFile { path: p.clone(), message: e.to_string() })?;
                let config = ModelConfig {
                    model_format: "gguf".into(),
                    model_family: info.architecture.clone(),
                    model_families: Some(vec![info.architecture.clone()]),
                    model_type: rocmforge_model::info::human_params(info.n_params),
                    file_type: info.quantization.clone(),
                    extra: Map::new(),
                };
                (Layer { media_type: MEDIA_MODEL.into(), digest: d, size, from: None, name: None }, config)
            }
            CreateBase::Model(m) => {
                let l = m
                    .manifest
                    .layers
                    .iter()
                    .find(|l| l.media_type == MEDIA_MODEL)
                    .cloned()
                    .ok_or_else(|| StoreError::BadManifest { name: m.name.display_shortest(), message: "no model layer".into() })?;
                let from = if l.from.is_some() { l.from.clone() } else { Some(m.name.to_string()) };
                (Layer { from, ..l }, m.config.clone())
            }
        };
        progress(format!("using existing layer {}", model_layer.digest));
        layers.push(model_layer);
        // Layers other than the weights and the text layers we may override are kept as they
        // are; adapters too, unless the spec names its own.
        if let Some(m) = inherited {
            for l in &m.manifest.layers {
                let keep = match l.media_type.as_str() {
                    MEDIA_PROJECTOR => true,
                    MEDIA_ADAPTER => spec.adapters.is_none(),
                    _ => false,
                };
                if keep {
                    layers.push(l.clone());
                }
            }
        }
        for d in spec.adapters.iter().flatten() {
            let d = parse_digest(d)?;
            let p = self.blob_path(&d)?;
            let size = fs::metadata(&p).map_err(|_| StoreError::BlobNotFound(d.clone()))?.len();
            progress(format!("using existing layer {d}"));
            layers.push(Layer { media_type: MEDIA_ADAPTER.into(), digest: d, size, from: None, name: None });
        }
        let mut text = |media: &str, v: Option<String>| -> Result<(), StoreError> {
            if let Some(t) = v {
                let l = self.put_text_layer(media, &t)?;
                progress(format!("creating new layer {}", l.digest));
                layers.push(l);
            }
            Ok(())
        };
        text(MEDIA_TEMPLATE, spec.template.clone().or_else(|| inherited.and_then(|m| m.template.clone())))?;
        text(MEDIA_SYSTEM, spec.system.clone().or_else(|| inherited.and_then(|m| m.system.clone())))?;
        let params = spec.params.clone().or_else(|| inherited.map(|m| m.params.clone()).filter(|p| !p.is_empty()));
        text(MEDIA_PARAMS, params.map(|p| Json::Object(p).to_string()))?;
        let messages = spec.messages.clone().or_else(|| inherited.map(|m| m.messages.clone()).filter(|m| !m.is_empty()));
        text(MEDIA_MESSAGES, messages.map(|m| Json::Array(m).to_string()))?;
        for l in spec.license.clone().or_else(|| inherited.map(|m| m.license.clone())).unwrap_or_default() {
            text(MEDIA_LICENSE, Some(l))?;
        }
        let config_bytes = serde_json::to_vec(&config).unwrap_or_default();
        let (cd, cs) = self.put_blob(None, config_bytes.as_slice())?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: MEDIA_MANIFEST.into(),
            config: Layer { media_type: MEDIA_CONFIG.into(), digest: cd, size: cs, from: None, name: None },
            layers,
        };
        progress("writing manifest".into());
        self.write_manifest(name, &manifest)?;
        self.get(name)
    }

    /// `cp`: a second manifest with the same content.
    pub fn copy(&self, src: &ModelName, dst: &ModelName) -> Result<(), StoreError> {
        let m = self.get(src)?;
        self.write_manifest(dst, &m.manifest)
    }

    /// `rm`: remove the manifest, then the blobs no remaining manifest references.
    pub fn delete(&self, name: &ModelName) -> Result<(), StoreError> {
        let found = self.find(name).ok_or_else(|| StoreError::NotFound(name.display_shortest()))?;
        let m = self.read(found.clone())?;
        let path = self.manifests_dir().join(found.manifest_rel_path());
        fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
        // Empty parent directories go too (as `ollama rm` leaves no empty model folders).
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.manifests_dir() || fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        self.remove_unreferenced(std::iter::once(&m.manifest.config.digest).chain(m.manifest.layers.iter().map(|l| &l.digest)));
        Ok(())
    }

    /// Remove those of `digests` that no manifest references any more; returns how many went.
    pub fn remove_unreferenced<'a>(&self, digests: impl IntoIterator<Item = &'a String>) -> usize {
        let mut used: HashSet<String> = HashSet::new();
        for n in self.names() {
            if let Ok(o) = self.read(n) {
                used.insert(o.manifest.config.digest.clone());
                used.extend(o.manifest.layers.iter().map(|l| l.digest.clone()));
            }
        }
        let mut removed = 0;
        for d in digests {
            if !used.contains(d) {
                if let Ok(p) = self.blob_path(d) {
                    removed += usize::from(fs::remove_file(p).is_ok());
                }
            }
        }
        removed
    }
}

/// An upload in progress: a temporary file that becomes `blobs/sha256-…` only when its
/// content hashes to the expected digest (removed otherwise, also when dropped unfinished).
pub struct BlobWriter {
    store_root: PathBuf,
    tmp: PathBuf,
    file: Option<fs::File>,
    h: Sha256,
    n: u64,
}

impl BlobWriter {
    pub fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        if let Some(f) = self.file.as_mut() {
            f.write_all(buf).map_err(io("writing blob"))?;
        }
        self.h.update(buf);
        self.n += buf.len() as u64;
        Ok(())
    }

    /// Check the digest and move the blob into place; returns its size.
    pub fn finish(mut self, expected: &str) -> Result<u64, StoreError> {
        let expected = parse_digest(expected)?;
        let got = format!("sha256:{}", hex(&std::mem::take(&mut self.h).finalize()));
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(io("syncing blob"))?;
        }
        if got != expected {
            return Err(StoreError::DigestMismatch { expected, got });
        }
        let dst = Store::new(self.store_root.clone()).blob_path(&got)?;
        fs::rename(&self.tmp, &dst).map_err(io(format!("renaming to {}", dst.display())))?;
        Ok(self.n)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful rename the temporary path no longer exists.
        let _ = fs::remove_file(&self.tmp);
    }
}

struct HashingWriter<'a, W: Write> {
    inner: &'a mut W,
    h: Sha256,
    n: u64,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.h.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        let (d, n) = s.put_blob(None, &b"hello"[..]).unwrap();
        assert_eq!(n, 5);
        assert_eq!(d, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert!(s.has_blob(&d).unwrap());
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(s.put_blob(Some(&wrong), &b"x"[..]), Err(StoreError::DigestMismatch { .. })));
        assert!(!s.has_blob(&wrong).unwrap());
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path().join("blobs")).unwrap().count(), 1);
        assert!(s.blob_path("../../etc/passwd").is_err());
    }

    #[test]
    fn text_only_model_roundtrip_copy_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        // A hand-written manifest (as Ollama writes them) with a fake weights blob.
        let (wd, ws) = s.put_blob(None, &b"GGUF not really"[..]).unwrap();
        let (pd, ps) = s.put_blob(None, &br#"{"stop":["<|im_end|>"],"temperature":0.2}"#[..]).unwrap();
        let (td, ts) = s.put_blob(None, &b"{{ .Prompt }}"[..]).unwrap();
        let (cd, cs) = s.put_blob(None, &br#"{"model_format":"gguf","model_family":"llama","file_type":"Q4_1","rootfs":{}}"#[..]).unwrap();
        let m = Manifest {
            schema_version: 2,
            media_type: MEDIA_MANIFEST.into(),
            config: Layer { media_type: MEDIA_CONFIG.into(), digest: cd, size: cs, from: None, name: None },
            layers: vec![
                Layer { media_type: MEDIA_MODEL.into(), digest: wd.clone(), size: ws, from: None, name: None },
                Layer { media_type: MEDIA_PARAMS.into(), digest: pd, size: ps, from: None, name: None },
                Layer { media_type: MEDIA_TEMPLATE.into(), digest: td, size: ts, from: None, name: None },
            ],
        };
        let name = ModelName::parse("Tiny:Latest").unwrap();
        s.write_manifest(&name, &m).unwrap();
        let got = s.get(&ModelName::parse("tiny").unwrap()).unwrap();
        assert_eq!(got.name.model, "Tiny");
        assert_eq!(got.config.model_family, "llama");
        assert_eq!(got.params["temperature"], 0.2);
        assert_eq!(got.template.as_deref(), Some("{{ .Prompt }}"));
        assert_eq!(got.size, ws + ps + ts + cs);
        assert_eq!(got.model_digest.as_deref(), Some(wd.as_str()));
        s.verify_blob(&wd).unwrap();

        s.copy(&name, &ModelName::parse("other/copy:v1").unwrap()).unwrap();
        assert_eq!(s.list().len(), 2);
        s.delete(&name).unwrap();
        // The copy still references every blob.
        assert!(s.has_blob(&wd).unwrap());
        s.delete(&ModelName::parse("other/copy:v1").unwrap()).unwrap();
        assert!(!s.has_blob(&wd).unwrap());
        assert!(s.list().is_empty());
        assert!(matches!(s.delete(&name), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn missing_store_is_empty() {
        let s = Store::new("/nonexistent/rocmforge-store");
        assert!(s.list().is_empty());
    }
}
