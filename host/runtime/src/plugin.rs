//! Plugin discovery and loading.
//!
//! Precedence (documented in docs/plugins.md and shown by `rocmforge plugins`): plugins are
//! loaded in search order: `$ROCMFORGE_PLUGINS` (a `:`-separated list of directories or files,
//! in order), the directory of the running binary (and its `plugins/` subdirectory), then
//! `~/.rocmforge/plugins`; inside a directory, by file name. The registry keeps that order, and
//! for an architecture claimed by several plugins the first one wins ([`Registry::conflicts`]
//! lists the losers), except that a matching conditional claim ([`RfMetaClaim`]) beats plain
//! claims. So a plugin in `$ROCMFORGE_PLUGINS` overrides a built-in one claiming the same
//! architecture. A second plugin with the same *name* as an earlier one is not loaded at all
//! ([`Registry::shadowed`]). A plugin that fails to load (missing symbol, ABI mismatch, bad
//! table) is reported with its file name and skipped: the host keeps serving every other
//! architecture. Plugins are never unloaded, so the `Library` handles are leaked on purpose and
//! every pointer they export stays valid.

use std::path::{Path, PathBuf};

use rocmforge_abi::{RfMetaClaim, RfPluginV1, ABI_VERSION, PLUGIN_SYMBOL};

use crate::source::ModelSource;

use crate::RuntimeError;

/// One tensor-map row, copied out of the plugin.
#[derive(Clone, Debug)]
pub struct TensorMapEntry {
    pub gguf: String,
    pub hf: String,
    pub optional: bool,
    pub transform: u32,
}

/// A loaded plugin.
pub struct Plugin {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    /// (GGUF architecture, HF architecture) claims.
    pub archs: Vec<(String, String)>,
    pub tensors: Vec<TensorMapEntry>,
    /// (GGUF key pattern, config.json key).
    pub config: Vec<(String, String)>,
    /// Conditional GGUF claims (GGUF architecture, metadata key pattern): see [`RfMetaClaim`].
    pub meta_claims: Vec<(String, String)>,
    /// The table's `abi_version` and `struct_size` as the plugin reported them.
    pub abi_version: u32,
    pub table_size: u32,
    pub(crate) build: unsafe extern "C" fn(host: *const rocmforge_abi::RfHostV1, arch: rocmforge_abi::RfStr) -> i32,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("path", &self.path).field("archs", &self.archs).finish()
    }
}

impl Plugin {
    pub fn gguf_archs(&self) -> impl Iterator<Item = &str> {
        self.archs.iter().map(|(g, _)| g.as_str()).filter(|g| !g.is_empty())
    }
    pub fn hf_archs(&self) -> impl Iterator<Item = &str> {
        self.archs.iter().map(|(_, h)| h.as_str()).filter(|h| !h.is_empty())
    }
}

/// A failure to load one plugin file; kept for `rocmforge plugins` and logs.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub path: PathBuf,
    pub error: String,
}

/// A plugin file not loaded because an earlier plugin has the same name.
#[derive(Debug, Clone)]
pub struct Shadowed {
    pub name: String,
    pub path: PathBuf,
    /// The earlier plugin's file.
    pub by: PathBuf,
}

/// Several plugins claiming one architecture: the first in precedence order serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The architecture name (GGUF `general.architecture`, or an HF `architectures` entry).
    pub arch: String,
    /// Whether `arch` is an HF architecture name.
    pub hf: bool,
    /// Indices into [`Registry::plugins`], winner first.
    pub claimants: Vec<usize>,
}

/// Every plugin found, in precedence order.
#[derive(Debug, Default)]
pub struct Registry {
    pub plugins: Vec<Plugin>,
    pub failures: Vec<LoadFailure>,
    pub shadowed: Vec<Shadowed>,
}

/// Copy a string out of a plugin's table, checking what can be checked (null with a length, an
/// absurd length, UTF-8).
///
/// # Safety
/// `s` must be null/empty or point to `s.len` readable bytes (the ABI: static data of a library
/// that is never unloaded). The bytes are copied, so nothing borrowed outlives the call.
unsafe fn copy_str(s: rocmforge_abi::RfStr, path: &Path, what: &str) -> Result<String, RuntimeError> {
    let err = |w: String| RuntimeError::Plugin { path: path.to_path_buf(), what: format!("{what}: {w}") };
    if s.len > 0 && s.ptr.is_null() {
        return Err(err(format!("null pointer with length {}", s.len)));
    }
    if s.len > 1 << 16 {
        return Err(err(format!("string of {} bytes (a garbage length?)", s.len)));
    }
    // SAFETY: non-null (or empty) with a bounded length; readable per the caller's contract.
    unsafe { s.as_str() }.map(str::to_string).ok_or_else(|| err("not UTF-8".into()))
}

/// View a table of a plugin (`n` entries at `ptr`) after checking null, size and alignment.
///
/// # Safety
/// A non-null, aligned `ptr` with `n` in bounds must point to `n` initialised `T` that stay valid
/// and unmodified for the rest of the process: plugin tables are static data and the library is
/// never unloaded, which is what makes the returned `'static` lifetime sound.
unsafe fn slice<T>(ptr: *const T, n: usize, path: &Path, what: &str) -> Result<&'static [T], RuntimeError> {
    if n == 0 {
        return Ok(&[]);
    }
    let bad = |w: String| RuntimeError::Plugin { path: path.to_path_buf(), what: format!("{what}: bad table ({w})") };
    if ptr.is_null() {
        return Err(bad(format!("null pointer with {n} entries")));
    }
    if n > 1 << 20 {
        return Err(bad(format!("{n} entries")));
    }
    if (ptr as usize) % std::mem::align_of::<T>() != 0 {
        return Err(bad(format!("pointer {ptr:p} is not aligned to {} bytes", std::mem::align_of::<T>())));
    }
    // SAFETY: checked non-null, aligned and bounded; valid and 'static per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, n) })
}

impl Plugin {
    /// Load one plugin file.
    pub fn load(path: &Path) -> Result<Plugin, RuntimeError> {
        let err = |what: String| RuntimeError::Plugin { path: path.to_path_buf(), what };
        // SAFETY: loading a shared library runs its initialisers; plugins are trusted code by
        // design (like any .so the user installs), and we never unload it.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| err(format!("cannot load: {e}")))?;
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        // SAFETY: the symbol's type is fixed by the ABI (`extern "C" fn() -> *const RfPluginV1`).
        let entry = unsafe { lib.get::<unsafe extern "C" fn() -> *const RfPluginV1>(PLUGIN_SYMBOL) }
            .map_err(|_| err("missing symbol rocmforge_plugin_v1: not a ROCmForge plugin".into()))?;
        // SAFETY: calling the plugin's entry point, which takes no arguments and returns a table.
        let table = unsafe { entry() };
        if table.is_null() {
            return Err(err("rocmforge_plugin_v1 returned null".into()));
        }
        // Read the two leading u32 fields first: they are the same in every ABI version.
        // SAFETY: every version's table starts with abi_version and struct_size.
        let (ver, size) = unsafe { ((*table).abi_version, (*table).struct_size) };
        if ver != ABI_VERSION {
            return Err(err(format!("plugin ABI version {ver}, this host speaks version {ABI_VERSION}")));
        }
        // The first version of the table ends at `build`; fields after it were appended and are
        // read only when `struct_size` covers them.
        let base_size = std::mem::offset_of!(RfPluginV1, meta_claims);
        if (size as usize) < base_size {
            return Err(err(format!("plugin table is {size} bytes, version {ABI_VERSION} needs {base_size}")));
        }
        // `build` is a non-nullable fn pointer on the Rust side, but a C plugin can leave it NULL:
        // look at the raw bits before a reference to the table asserts it is valid.
        // SAFETY: the size check guarantees the field lies inside the table; it is read as a
        // plain pointer, which every bit pattern of a fn pointer is.
        let build_fn = unsafe { std::ptr::addr_of!((*table).build).cast::<*const std::ffi::c_void>().read_unaligned() };
        if build_fn.is_null() {
            return Err(err("plugin table's build function is null".into()));
        }
        // SAFETY: the size check guarantees the field lies inside the table; non-null was checked
        // above and every non-null bit pattern is a valid fn pointer of the ABI's type.
        let build = unsafe { std::ptr::addr_of!((*table).build).read() };
        let covers = |end: usize| size as usize >= end;
        let meta_claims_raw: &'static [RfMetaClaim] =
            if covers(std::mem::offset_of!(RfPluginV1, n_meta_claims) + std::mem::size_of::<usize>()) {
                // SAFETY: struct_size covers both appended fields (checked just above).
                let (ptr, n) =
                    unsafe { (std::ptr::addr_of!((*table).meta_claims).read(), std::ptr::addr_of!((*table).n_meta_claims).read()) };
                // SAFETY: the plugin's own table (ABI: static, never unloaded).
                unsafe { slice(ptr, n, path, "meta claims")? }
            } else {
                &[]
            };
        // Fields of the first version, read through raw pointers: an older plugin's table is
        // shorter than this host's RfPluginV1, so no reference to the whole struct is formed.
        // SAFETY: every field read below lies inside `base_size` bytes, checked above; the table
        // is 'static in the never-unloaded library.
        let (t_name, t_version, t_archs, t_n_archs, t_tensors, t_n_tensors, t_config, t_n_config) = unsafe {
            (
                std::ptr::addr_of!((*table).name).read(),
                std::ptr::addr_of!((*table).version).read(),
                std::ptr::addr_of!((*table).archs).read(),
                std::ptr::addr_of!((*table).n_archs).read(),
                std::ptr::addr_of!((*table).tensors).read(),
                std::ptr::addr_of!((*table).n_tensors).read(),
                std::ptr::addr_of!((*table).config).read(),
                std::ptr::addr_of!((*table).n_config).read(),
            )
        };
        // SAFETY (every `slice` and `copy_str` below): the pointers come from the plugin's own
        // table, which the ABI requires to be static data of a library that is never unloaded.
        let cs = |s, what: &str| unsafe { copy_str(s, path, what) };
        let archs = unsafe { slice(t_archs, t_n_archs, path, "architectures")? }
            .iter()
            .map(|a| Ok((cs(a.gguf_arch, "arch")?, cs(a.hf_arch, "arch")?)))
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let tensors = unsafe { slice(t_tensors, t_n_tensors, path, "tensor table")? }
            .iter()
            .map(|t| {
                Ok(TensorMapEntry {
                    gguf: cs(t.gguf, "tensor name")?,
                    hf: cs(t.hf, "tensor name")?,
                    optional: t.flags & rocmforge_abi::tensor_flags::OPTIONAL != 0,
                    transform: t.transform,
                })
            })
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let config = unsafe { slice(t_config, t_n_config, path, "config table")? }
            .iter()
            .map(|c| Ok((cs(c.gguf, "config key")?, cs(c.hf, "config key")?)))
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        let meta_claims = meta_claims_raw
            .iter()
            .map(|c| Ok((cs(c.gguf_arch, "meta claim arch")?, cs(c.key, "meta claim key")?)))
            .collect::<Result<Vec<_>, RuntimeError>>()?;
        if archs.is_empty() {
            return Err(err("plugin claims no architecture".into()));
        }
        Ok(Plugin {
            name: cs(t_name, "name")?,
            version: cs(t_version, "version")?,
            path: path.to_path_buf(),
            archs,
            tensors,
            config,
            meta_claims,
            abi_version: ver,
            table_size: size,
            build,
        })
    }
}

/// Whether a metadata value "is set" for a conditional claim: a non-zero number, `true`, a
/// non-empty string or array.
fn meta_is_set(v: &rocmforge_model::gguf::GgufValue) -> bool {
    if let Some(b) = v.as_bool() {
        return b;
    }
    if let Some(x) = v.as_f64() {
        return x != 0.0;
    }
    if let Some(s) = v.as_str() {
        return !s.is_empty();
    }
    v.as_array().is_some_and(|a| !a.is_empty())
}

fn is_plugin_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("librocmforge_plugin_") && (name.ends_with(".so") || name.ends_with(".dylib")) || name.ends_with(".rfplugin.so")
}

/// Directories searched for plugins, in order.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os("ROCMFORGE_PLUGINS") {
        dirs.extend(std::env::split_paths(&v));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            dirs.push(d.join("plugins"));
            // `cargo test` runs binaries from target/<profile>/deps; plugins sit one level up.
            if d.ends_with("deps") {
                if let Some(p) = d.parent() {
                    dirs.push(p.to_path_buf());
                }
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".rocmforge/plugins"));
    }
    dirs
}

impl Registry {
    /// Discover and load every plugin on the search path.
    pub fn discover() -> Registry {
        Registry::from_paths(&search_path())
    }

    /// Load plugins from these files or directories.
    pub fn from_paths(paths: &[PathBuf]) -> Registry {
        let mut reg = Registry::default();
        let mut seen = std::collections::HashSet::new();
        for p in paths {
            let files: Vec<PathBuf> = if p.is_file() {
                vec![p.clone()]
            } else if let Ok(rd) = std::fs::read_dir(p) {
                let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|f| is_plugin_file(f)).collect();
                v.sort();
                v
            } else {
                continue;
            };
            for f in files {
                let canon = f.canonicalize().unwrap_or_else(|_| f.clone());
                if !seen.insert(canon) {
                    continue;
                }
                match Plugin::load(&f) {
                    Ok(pl) => {
                        if let Some(dup) = reg.plugins.iter().find(|q| q.name == pl.name) {
                            tracing::debug!("plugin '{}' at {} shadowed by {}", pl.name, f.display(), dup.path.display());
                            reg.shadowed.push(Shadowed { name: pl.name.clone(), path: f.clone(), by: dup.path.clone() });
                            continue;
                        }
                        tracing::debug!("loaded plugin '{}' from {}", pl.name, f.display());
                        reg.plugins.push(pl);
                    }
                    Err(e) => {
                        tracing::warn!("{e}");
                        reg.failures.push(LoadFailure { path: f.clone(), error: e.to_string() });
                    }
                }
            }
        }
        reg
    }

    /// The plugin serving a model, decided by data in it:
    ///
    /// 1. an HF directory: the plugin whose claim opened it (its maps produced the metadata);
    /// 2. a plugin whose conditional claim ([`RfMetaClaim`]) on the model's GGUF architecture
    ///    matches the metadata (e.g. `llama.expert_count > 0`: Mixtral, served by mistral);
    /// 3. otherwise the first plugin claiming the GGUF architecture ([`Registry::for_gguf_arch`]).
    pub fn for_source(&self, src: &ModelSource) -> Result<&Plugin, RuntimeError> {
        if let Some(name) = src.opened_by() {
            if let Some(p) = self.plugins.iter().find(|p| p.name == name) {
                return Ok(p);
            }
        }
        let arch = src.arch();
        let matched = self
            .plugins
            .iter()
            .find(|p| p.meta_claims.iter().any(|(a, key)| a == arch && src.meta(&key.replace("{arch}", arch)).is_some_and(meta_is_set)));
        match matched {
            Some(p) => Ok(p),
            None => self.for_gguf_arch(arch),
        }
    }

    /// The first plugin claiming a GGUF architecture without condition: a plugin with a
    /// conditional claim on `arch` serves it only when the condition holds, which only
    /// [`Registry::for_source`] can tell (the mistral plugin's HF claims map to `llama`, yet it must
    /// not take ordinary llama files). Prefer `for_source`.
    pub fn for_gguf_arch(&self, arch: &str) -> Result<&Plugin, RuntimeError> {
        self.plugins
            .iter()
            .find(|p| p.gguf_archs().any(|a| a == arch) && !p.meta_claims.iter().any(|(a, _)| a == arch))
            .ok_or_else(|| RuntimeError::UnknownArch { arch: arch.to_string(), available: self.available() })
    }

    /// The plugin serving an HF architecture, with the GGUF architecture name it maps to.
    pub fn for_hf_arch(&self, hf: &str) -> Result<(&Plugin, String), RuntimeError> {
        for p in &self.plugins {
            if let Some((g, _)) = p.archs.iter().find(|(_, h)| h == hf) {
                return Ok((p, g.clone()));
            }
        }
        Err(RuntimeError::UnknownArch { arch: hf.to_string(), available: self.available() })
    }

    /// Architectures claimed by more than one plugin, sorted by name; in each, the claimants in
    /// precedence order (the first serves the architecture). Conditional GGUF claims are not
    /// conflicts: they serve only the files whose metadata matches, ahead of plain claims.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut map: std::collections::BTreeMap<(bool, String), Vec<usize>> = Default::default();
        for (i, p) in self.plugins.iter().enumerate() {
            let mut mine: Vec<(bool, &str)> = p
                .gguf_archs()
                .filter(|a| !p.meta_claims.iter().any(|(c, _)| c == a))
                .map(|a| (false, a))
                .chain(p.hf_archs().map(|a| (true, a)))
                .collect();
            mine.sort();
            mine.dedup();
            for (hf, a) in mine {
                map.entry((hf, a.to_string())).or_default().push(i);
            }
        }
        let mut v: Vec<Conflict> =
            map.into_iter().filter(|(_, c)| c.len() > 1).map(|((hf, arch), claimants)| Conflict { arch, hf, claimants }).collect();
        v.sort_by(|a, b| (&a.arch, a.hf).cmp(&(&b.arch, b.hf)));
        v
    }

    /// Every architecture name served, sorted.
    pub fn available(&self) -> Vec<String> {
        let mut v: Vec<String> = self.plugins.iter().flat_map(|p| p.gguf_archs().chain(p.hf_archs()).map(str::to_string)).collect();
        v.sort();
        v.dedup();
        v
    }
}
