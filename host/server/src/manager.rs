//! The model manager: turns a name from a request into a loaded model, keeps models resident
//! for their `keep_alive`, and unloads them (idle ones first) when more are asked for than fit.
//!
//! Names resolve, in order, over: a path to a `.gguf` file or a Hugging Face directory; names
//! mapped with `--model NAME=PATH`; the Ollama store (case-insensitive, `latest` default); the
//! folders given with `--models-dir` (names derived from file names; a name without a tag also
//! matches a file whose tag is its quantization when only one such file exists).
//!
//! Residency (one [`Resident`] per loaded model):
//!
//! ```text
//!   acquire() ──► active += 1, no expiry while active
//!   Lease dropped ──► active -= 1; expires_at = now + keep_alive (0: unload now; <0: never)
//!   reaper (every 250 ms) ──► drop residents with active == 0 and expires_at <= now
//! ```
//!
//! Invariants: a model is loaded at most once at a time (loads of one path are serialised by a
//! per-key async mutex); a model with active requests is never unloaded by keep_alive or
//! eviction; a model whose device was lost (`Backend::device_lost`: its engine has failed every
//! request in flight and refuses more) is dropped by the next `acquire` of it or the reaper,
//! whichever comes first, and loaded again on its next request (the GPU layer then refuses the
//! lost device: `--device auto` falls back to the CPU, saying why; a named GPU fails the load); dropping the last `Arc` of a backend shuts its engine down after in-flight work;
//! every unloaded instance is handed to [`Manager::retire`], which books its engine's final
//! counters into the [`EngineLedger`] (so `/metrics` counters never go back) before the engine
//! is dropped.
//!
//! Modelled on Ollama's `server/sched.go` (keep_alive, expiry, `/api/ps`), our own code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rocmforge_store::discover::Discovered;
use rocmforge_store::{ModelName, Store, StoreError, StoredModel};
use serde_json::{Map, Value as Json};

use crate::backend::{Backend, BackendError, Loader};
use crate::metrics::EngineLedger;
use crate::options::KeepAlive;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("model '{0}' not found")]
    NotFound(String),
    #[error("invalid model name: {0}")]
    InvalidName(String),
    #[error("failed to load {name}: {error}")]
    Load { name: String, error: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a name led: the file to load plus what the store adds to it.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Display name (`model:tag`, or the path as given).
    pub name: String,
    /// Identity of the loaded instance (the canonical file path).
    pub key: String,
    pub path: PathBuf,
    /// Manifest digest (store models) or empty.
    pub digest: String,
    pub modified: SystemTime,
    pub size: u64,
    /// Default options (Modelfile PARAMETERs; `general.sampling.*` of the GGUF).
    pub params: Map<String, Json>,
    pub system: Option<String>,
    /// The store's Go template (Modelfile TEMPLATE): it renders the model's prompts instead of
    /// the GGUF's Jinja template (`crate::gotemplate`), and `/api/show` returns it.
    pub go_template: Option<String>,
    pub messages: Vec<Json>,
    pub license: Vec<String>,
    pub stored: Option<StoredModel>,
    /// LoRA adapters applied at load (GGUF adapter blobs of a store model), in manifest order.
    /// They are part of [`key`](Self::key): the same weights with other adapters are another
    /// loaded instance.
    pub adapters: Vec<PathBuf>,
}

#[cfg(test)]
impl Resolved {
    /// A model known only by its key (unit tests).
    pub(crate) fn for_tests(key: &str) -> Resolved {
        Resolved {
            name: key.into(),
            key: key.into(),
            path: PathBuf::from(key),
            digest: String::new(),
            modified: SystemTime::UNIX_EPOCH,
            size: 0,
            params: Map::new(),
            system: None,
            go_template: None,
            messages: Vec::new(),
            license: Vec::new(),
            stored: None,
            adapters: Vec::new(),
        }
    }
}

/// A loaded model.
pub struct Resident {
    /// This load's identity (a reload of the same file is a new instance with a new engine).
    pub id: u64,
    pub resolved: Resolved,
    pub backend: Arc<dyn Backend>,
    pub loaded_at: Instant,
    pub active: AtomicUsize,
    /// None while active or when kept forever.
    expires_at: Mutex<Option<Instant>>,
    keep_forever: Mutex<bool>,
    last_used: Mutex<Instant>,
}

impl Resident {
    /// When it will be unloaded (None: never, or busy).
    pub fn expires_at(&self) -> Option<Instant> {
        *self.expires_at.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn forever(&self) -> bool {
        *self.keep_forever.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A resident instance around a backend (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests(id: u64, resolved: Resolved, backend: Arc<dyn Backend>) -> Resident {
        Resident {
            id,
            resolved,
            backend,
            loaded_at: Instant::now(),
            active: AtomicUsize::new(0),
            expires_at: Mutex::new(None),
            keep_forever: Mutex::new(false),
            last_used: Mutex::new(Instant::now()),
        }
    }
}

/// Holds a model resident while a request uses it; sets its expiry when dropped.
pub struct Lease {
    pub model: Arc<Resident>,
    pub load_duration: Duration,
    keep_alive: KeepAlive,
    mgr: Arc<Manager>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = Instant::now();
        *self.model.last_used.lock().unwrap_or_else(|e| e.into_inner()) = now;
        let left = self.model.active.fetch_sub(1, Ordering::SeqCst) - 1;
        let mut exp = self.model.expires_at.lock().unwrap_or_else(|e| e.into_inner());
        let mut forever = self.model.keep_forever.lock().unwrap_or_else(|e| e.into_inner());
        match self.keep_alive {
            KeepAlive::Forever => {
                *forever = true;
                *exp = None;
            }
            KeepAlive::For(d) => {
                *forever = false;
                *exp = Some(now + d);
            }
            KeepAlive::Unload => {
                *forever = false;
                *exp = Some(now);
            }
        }
        drop((exp, forever));
        if left == 0 && self.keep_alive == KeepAlive::Unload {
            self.mgr.reap();
        }
    }
}

pub struct Manager {
    pub store: Store,
    pub discovered: Vec<Discovered>,
    pub aliases: Vec<(String, PathBuf)>,
    pub default_keep_alive: KeepAlive,
    /// Context used when a request does not ask (OLLAMA_CONTEXT_LENGTH).
    pub default_ctx: Option<usize>,
    pub max_loaded: usize,
    /// Engine counters of loaded and unloaded instances (`/metrics`).
    pub ledger: Arc<EngineLedger>,
    /// The cache of identical deterministic requests, when on: a retired instance's entries go.
    pub request_cache: Option<Arc<crate::request_cache::RequestCache>>,
    loader: Arc<dyn Loader>,
    resident: Mutex<HashMap<String, Arc<Resident>>>,
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `general.sampling.*` keys of a GGUF file, as Ollama option names.
fn gguf_sampling_defaults(path: &Path) -> Map<String, Json> {
    let mut m = Map::new();
    if path.is_dir() {
        // HF: generation_config.json.
        if let Some(g) = std::fs::read(path.join("generation_config.json")).ok().and_then(|b| serde_json::from_slice::<Json>(&b).ok()) {
            for (from, to) in [
                ("temperature", "temperature"),
                ("top_k", "top_k"),
                ("top_p", "top_p"),
                ("min_p", "min_p"),
                ("repetition_penalty", "repeat_penalty"),
            ] {
                if let Some(v) = g.get(from).filter(|v| v.is_number()) {
                    m.insert(to.into(), v.clone());
                }
            }
        }
        return m;
    }
    if let Ok(f) = rocmforge_model::gguf::GgufFile::open(path) {
        for (from, to) in [
            ("general.sampling.temp", "temperature"),
            ("general.sampling.top_k", "top_k"),
            ("general.sampling.top_p", "top_p"),
            ("general.sampling.min_p", "min_p"),
        ] {
            if let Some(v) = f.get(from).and_then(|v| v.as_f64()) {
                m.insert(to.into(), serde_json::json!(v));
            }
        }
    }
    m
}

/// The instance key of a store model: its weights file, plus its adapters (the same weights
/// with other adapters are another loaded instance).
pub fn store_model_key(path: &Path, adapter_digests: &[String]) -> String {
    let mut key = path.display().to_string();
    for d in adapter_digests {
        key.push_str("+lora:");
        key.push_str(d);
    }
    key
}

fn file_facts(path: &Path) -> (SystemTime, u64) {
    let md = std::fs::metadata(path).ok();
    let modified = md.as_ref().and_then(|m| m.modified().ok()).unwrap_or(SystemTime::UNIX_EPOCH);
    let size = if path.is_dir() {
        std::fs::read_dir(path).into_iter().flatten().flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
    } else {
        md.map(|m| m.len()).unwrap_or(0)
    };
    (modified, size)
}

impl Manager {
    /// The loader's plugin registry (for converting Hugging Face directories), if it has one.
    pub fn registry(&self) -> Option<&rocmforge_runtime::Registry> {
        self.loader.registry()
    }

    pub fn new(store: Store, discovered: Vec<Discovered>, aliases: Vec<(String, PathBuf)>, loader: Arc<dyn Loader>) -> Self {
        Manager {
            store,
            discovered,
            aliases,
            default_keep_alive: KeepAlive::For(Duration::from_secs(300)),
            default_ctx: None,
            max_loaded: 3,
            ledger: Arc::new(EngineLedger::default()),
            request_cache: None,
            loader,
            resident: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
        }
    }

    fn from_path(name: &str, path: &Path) -> Resolved {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let (modified, size) = file_facts(&canon);
        Resolved {
            name: name.to_string(),
            key: canon.display().to_string(),
            params: gguf_sampling_defaults(&canon),
            path: canon,
            digest: String::new(),
            modified,
            size,
            system: None,
            go_template: None,
            messages: Vec::new(),
            license: Vec::new(),
            stored: None,
            adapters: Vec::new(),
        }
    }

    /// Resolve a request's model name.
    pub fn resolve(&self, name: &str) -> Result<Resolved, ManagerError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ManagerError::InvalidName("model is required".into()));
        }
        // 1. A path (only when it exists: a name like `llama3` must not hit a file in the cwd).
        let p = Path::new(name);
        if (name.contains('/') || name.ends_with(".gguf")) && (p.is_file() || (p.is_dir() && p.join("config.json").is_file())) {
            return Ok(Self::from_path(name, p));
        }
        // 2. --model NAME=PATH.
        let parsed = ModelName::parse(name).ok();
        for (alias, path) in &self.aliases {
            let hit = alias.eq_ignore_ascii_case(name)
                || parsed.as_ref().zip(ModelName::parse(alias).ok()).is_some_and(|(a, b)| a.key() == b.key());
            if hit {
                let n = ModelName::parse(alias).map(|n| n.display_shortest()).unwrap_or_else(|_| alias.clone());
                return Ok(Self::from_path(&n, path));
            }
        }
        let parsed = parsed.ok_or_else(|| ManagerError::NotFound(name.to_string()))?;
        // 3. The Ollama store.
        match self.store.get(&parsed) {
            Ok(m) => {
                let path = m.model_path.clone().ok_or_else(|| ManagerError::Load {
                    name: name.to_string(),
                    error: "its manifest has no model layer (safetensors-only or remote models are not supported)".into(),
                })?;
                let mut params = gguf_sampling_defaults(&path);
                params.extend(m.params.clone());
                // Adapters make another instance of the same weights.
                let key = store_model_key(&path, &m.adapter_digests);
                return Ok(Resolved {
                    name: m.name.display_shortest(),
                    key,
                    adapters: m.adapter_paths.clone(),
                    path,
                    digest: m.digest.clone(),
                    modified: m.modified,
                    size: m.size,
                    params,
                    system: m.system.clone(),
                    go_template: m.template.clone(),
                    messages: m.messages.clone(),
                    license: m.license.clone(),
                    stored: Some(m),
                });
            }
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        // 4. --models-dir.
        let key = parsed.key();
        if let Some(d) = self.discovered.iter().find(|d| d.name.key() == key) {
            return Ok(Self::from_path(&d.name.display_shortest(), &d.path));
        }
        let tagless = !name.contains(':');
        if tagless {
            let same: Vec<&Discovered> = self
                .discovered
                .iter()
                .filter(|d| d.name.model.eq_ignore_ascii_case(&parsed.model) && d.name.namespace.eq_ignore_ascii_case(&parsed.namespace))
                .collect();
            if let [d] = same.as_slice() {
                return Ok(Self::from_path(&d.name.display_shortest(), &d.path));
            }
        }
        Err(ManagerError::NotFound(name.to_string()))
    }

    /// Every model a client may name (`/api/tags`, `/v1/models`): store models, then
    /// `--model` and `--models-dir` entries (by name), newest first within each.
    pub fn list(&self) -> Vec<Resolved> {
        let mut out: Vec<Resolved> = Vec::new();
        for m in self.store.list() {
            if let Ok(r) = self.resolve(&m.name.to_string()) {
                out.push(r);
            }
        }
        for (alias, path) in &self.aliases {
            let n = ModelName::parse(alias).map(|n| n.display_shortest()).unwrap_or_else(|_| alias.clone());
            if !out.iter().any(|r| r.name.eq_ignore_ascii_case(&n)) {
                out.push(Self::from_path(&n, path));
            }
        }
        for d in &self.discovered {
            let n = d.name.display_shortest();
            if !out.iter().any(|r| r.name.eq_ignore_ascii_case(&n)) {
                out.push(Self::from_path(&n, &d.path));
            }
        }
        out
    }

    /// The loaded models.
    pub fn residents(&self) -> Vec<Arc<Resident>> {
        lock(&self.resident).values().cloned().collect()
    }

    /// The resident instance of a resolved model, if any.
    pub fn resident(&self, r: &Resolved) -> Option<Arc<Resident>> {
        lock(&self.resident).get(&r.key).cloned()
    }

    /// Load (if needed) and lease a model for one request.
    pub async fn acquire(
        self: &Arc<Self>,
        r: &Resolved,
        num_ctx: Option<usize>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, ManagerError> {
        self.acquire_kv(r, num_ctx, None, keep_alive).await
    }

    /// [`acquire`](Self::acquire) asking for a KV cache element type: a resident model of
    /// another type is reloaded (as for a larger `num_ctx`); None takes whatever is loaded.
    pub async fn acquire_kv(
        self: &Arc<Self>,
        r: &Resolved,
        num_ctx: Option<usize>,
        kv_cache_type: Option<rocmforge_engine::KvCacheType>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, ManagerError> {
        let keep_alive = keep_alive.unwrap_or(self.default_keep_alive);
        let t0 = Instant::now();
        let gate = lock(&self.loading).entry(r.key.clone()).or_default().clone();
        let _g = gate.lock().await;
        let want_ctx = num_ctx.or(self.default_ctx);
        let existing = lock(&self.resident).get(&r.key).cloned();
        let existing = existing.filter(|m| match m.backend.device_lost() {
            Some(why) => {
                self.drop_lost(m, &why);
                false
            }
            None => true,
        });
        let model = match existing {
            // A larger context than loaded needs a reload; smaller requests run on what is there.
            Some(m)
                if want_ctx.is_none_or(|c| c <= m.backend.facts().n_ctx || m.backend.facts().n_ctx >= m.backend.facts().n_ctx_train)
                    && kv_cache_type.is_none_or(|t| m.backend.kv_cache_type().is_none_or(|have| have == t)) =>
            {
                m
            }
            Some(m) if m.active.load(Ordering::SeqCst) > 0 => m,
            _ => {
                let old = lock(&self.resident).remove(&r.key);
                if let Some(old) = old {
                    self.retire(old);
                }
                self.make_room();
                let loader = self.loader.clone();
                let path = r.path.clone();
                tracing::info!("loading {} from {}", r.name, path.display());
                let adapters = r.adapters.clone();
                let backend = tokio::task::spawn_blocking(move || loader.load_adapters(&path, &adapters, want_ctx, kv_cache_type))
                    .await
                    .map_err(|e| ManagerError::Load { name: r.name.clone(), error: e.to_string() })?
                    .map_err(|e: BackendError| ManagerError::Load { name: r.name.clone(), error: e.to_string() })?;
                let kv = backend.kv_cache_type().map_or(String::new(), |t| format!(", kv cache {t}"));
                tracing::info!("loaded {} (n_ctx {}{kv}) in {:.2?}", r.name, backend.facts().n_ctx, t0.elapsed());
                static NEXT_ID: AtomicU64 = AtomicU64::new(1);
                let m = Arc::new(Resident {
                    id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                    resolved: r.clone(),
                    backend,
                    loaded_at: Instant::now(),
                    active: AtomicUsize::new(0),
                    expires_at: Mutex::new(None),
                    keep_forever: Mutex::new(false),
                    last_used: Mutex::new(Instant::now()),
                });
                lock(&self.resident).insert(r.key.clone(), m.clone());
                m
            }
        };
        model.active.fetch_add(1, Ordering::SeqCst);
        *lock(&model.expires_at) = None;
        Ok(Lease { model, load_duration: t0.elapsed(), keep_alive, mgr: self.clone() })
    }

    /// Book an unloaded instance's final engine counters, then let it go (its engine stops
    /// when the last `Arc` drops). Inside the runtime the snapshot is awaited on a task, so no
    /// caller blocks on the engine; outside it (shutdown) the counters seen last are kept.
    fn retire(&self, m: Arc<Resident>) {
        if let Some(c) = &self.request_cache {
            c.invalidate(&m.resolved.key);
        }
        let ledger = self.ledger.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    let last = tokio::time::timeout(crate::metrics::STATS_TIMEOUT, m.backend.stats()).await.ok().flatten();
                    ledger.retire(m.id, last.as_ref());
                });
            }
            Err(_) => ledger.retire(m.id, None),
        }
    }

    /// Drop `m` (if it is still the resident instance of its key) because its device is lost,
    /// even while requests hold it: they have all failed already (see the module header).
    fn drop_lost(&self, m: &Arc<Resident>, why: &str) {
        let removed = {
            let mut res = lock(&self.resident);
            match res.get(&m.resolved.key) {
                Some(cur) if Arc::ptr_eq(cur, m) => res.remove(&m.resolved.key),
                _ => None,
            }
        };
        if let Some(old) = removed {
            tracing::error!(
                "unloading {}: {why}. Its next request loads it again: on the CPU under --device auto; a GPU named with --device is refused until the server restarts",
                m.resolved.name
            );
            self.retire(old);
        }
    }

    /// Unload idle models, least recently used first, until one more fits `max_loaded`.
    fn make_room(&self) {
        let mut gone = Vec::new();
        let mut res = lock(&self.resident);
        while res.len() >= self.max_loaded.max(1) {
            let victim = res
                .iter()
                .filter(|(_, m)| m.active.load(Ordering::SeqCst) == 0)
                .min_by_key(|(_, m)| *lock(&m.last_used))
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    tracing::info!("unloading {k} to make room");
                    gone.extend(res.remove(&k));
                }
                None => break,
            }
        }
        drop(res);
        gone.into_iter().for_each(|m| self.retire(m));
    }

    /// Unload a model now if idle (`keep_alive: 0` with an empty prompt); true if it was loaded.
    pub fn unload(&self, r: &Resolved) -> bool {
        let mut res = lock(&self.resident);
        match res.get(&r.key) {
            Some(m) if m.active.load(Ordering::SeqCst) == 0 => {
                let m = res.remove(&r.key);
                drop(res);
                m.into_iter().for_each(|m| self.retire(m));
                true
            }
            Some(m) => {
                // Busy: unload when its requests end.
                *lock(&m.expires_at) = Some(Instant::now());
                *lock(&m.keep_forever) = false;
                true
            }
            None => false,
        }
    }

    /// Drop expired idle models, and models whose device was lost (busy or not).
    pub fn reap(&self) {
        for m in self.residents() {
            if let Some(why) = m.backend.device_lost() {
                self.drop_lost(&m, &why);
            }
        }
        let now = Instant::now();
        let mut res = lock(&self.resident);
        let expired: Vec<String> = res
            .iter()
            .filter(|(_, m)| m.active.load(Ordering::SeqCst) == 0 && !m.forever() && m.expires_at().is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let gone: Vec<Arc<Resident>> = expired
            .iter()
            .filter_map(|k| {
                tracing::info!("unloading {k} (keep_alive expired)");
                res.remove(k)
            })
            .collect();
        drop(res);
        gone.into_iter().for_each(|m| self.retire(m));
    }

    /// Unload everything (shutdown): the engines stop here, after their in-flight work; the
    /// counters no longer matter, so no final snapshot is awaited.
    pub fn clear(&self) {
        let gone: Vec<Arc<Resident>> = lock(&self.resident).drain().map(|(_, m)| m).collect();
        for m in gone {
            if let Some(c) = &self.request_cache {
                c.invalidate(&m.resolved.key);
            }
            self.ledger.retire(m.id, None);
        }
    }

    /// Runs the keep-alive reaper until the manager is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                match weak.upgrade() {
                    Some(m) => m.reap(),
                    None => return,
                }
            }
        });
    }
}

#[cfg(test)]
#[path = "manager_device_tests.rs"]
mod device_tests;
