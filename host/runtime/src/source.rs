//! A model as the runtime sees it: metadata in GGUF's vocabulary and tensors under GGUF names,
//! whether it came from a GGUF file or a Hugging Face directory.
//!
//! GGUF: metadata and tensors are the file's own; weight bytes are views into the memory map.
//! HF: the plugin's config map turns `config.json` keys into GGUF keys, its tensor map turns HF
//! tensor names into GGUF names, and its declared transforms (Q/K row permutation, `1 + w`, the
//! halves of an interleaved fused gate/up, input-major experts transposed) are applied once, at
//! load; such weights are owned copies. Nothing here knows an architecture.
//!
//! Experts: a tensor-map row whose HF pattern has `{xid}` names one tensor per expert
//! (`model.layers.{il}.block_sparse_moe.experts.{xid}.w1.weight`); experts 0, 1, ... are taken
//! while they exist and stacked, in order, into the GGUF layout with one more, outermost dim
//! (`[n_embd, n_ff]` per expert -> `[n_embd, n_ff, n_expert]`, expert `e` at byte
//! `e * bytes_per_expert`), as llama.cpp's converter does. All experts share shape and dtype.
//!
//! A tensor-map entry whose HF name is `config:<dotted.path>` takes its values from a numeric
//! array in `config.json` instead of a safetensors tensor: a 1-D f32 tensor (e.g. Phi-3's LongRoPE
//! `rope_parameters.long_factor` -> `rope_factors_long.weight`, as llama.cpp's converter writes it).
//! For such entries the first one found wins, like the config map.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocmforge_model::gguf::{GgufFile, GgufValue};
use rocmforge_model::hf::{HfDtype, HfModelDir};
use rocmforge_quant::GgmlType;

use crate::plugin::{Plugin, Registry};
use crate::RuntimeError;

/// Experts stacked into one GGUF tensor (tensor-map HF patterns with `{xid}`): the HF tensors of
/// experts 0, 1, ..., all of one shape and dtype. See the module header.
#[derive(Clone, Debug)]
struct Stacked {
    experts: Vec<String>,
    transform: u32,
}

/// Where a GGUF-named tensor of an HF model comes from.
#[derive(Clone, Debug)]
struct HfRef {
    hf: String,
    transform: u32,
    /// Values read at open, served as a 1-D f32 tensor: a `config:` entry's array, or an fp8
    /// KV scale (`kv_scales.rs`); None for safetensors tensors loaded on demand.
    config_values: Option<Vec<f32>>,
}

/// GGUF name of the per-frequency RoPE divisors (Llama-3 scaling), derived from `config.json`.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// HF-name prefix of tensor-map entries read from a `config.json` numeric array.
const CONFIG_TENSOR_PREFIX: &str = "config:";

/// Follow a dotted path (`rope_parameters.long_factor`) into `config.json`.
fn config_path<'a>(cfg: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(cfg, |v, part| v.get(part))
}

/// A non-empty array of numbers as f32, or None.
fn config_f32_array(v: &serde_json::Value) -> Option<Vec<f32>> {
    let a = v.as_array().filter(|a| !a.is_empty())?;
    a.iter().map(|x| x.as_f64().map(|f| f as f32)).collect()
}

enum Container {
    Gguf(Arc<GgufFile>),
    Hf { dir: Arc<HfModelDir>, meta: Vec<(String, GgufValue)>, map: HashMap<String, HfRef> },
}

/// A loaded model file or directory.
pub struct ModelSource {
    path: PathBuf,
    arch: String,
    c: Container,
    /// HF only: GGUF name -> stacked experts.
    stacked: HashMap<String, Stacked>,
    /// The plugin whose maps turned an HF directory into this source (None for GGUF files).
    opened_by: Option<String>,
    /// LoRA pairs merged into weights at load, by GGUF tensor name (see `crate::lora`).
    lora: HashMap<String, Vec<rocmforge_model::lora::LoraPair>>,
    /// Tensors derived at load from another tensor (`gguf:` rows of the serving plugin's table,
    /// see `source_derived.rs`), by GGUF name.
    derived: HashMap<String, crate::source_derived::Derived>,
}

/// Weight bytes: a view into a mapped GGUF file, or an owned (converted) buffer.
pub enum WeightBytes {
    Mapped { file: Arc<GgufFile>, start: usize, len: usize },
    Owned(Vec<u8>),
}

impl WeightBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            WeightBytes::Mapped { file, start, len } => &file.as_bytes()[*start..*start + *len],
            WeightBytes::Owned(v) => v,
        }
    }
}

/// One weight tensor ready for a backend.
pub struct Weight {
    pub name: String,
    pub ty: GgmlType,
    /// GGUF dims, ne0 first.
    pub dims: Vec<usize>,
    pub bytes: WeightBytes,
}

impl Weight {
    /// Dequantize the whole tensor (used for small vectors: norms, biases, rope factors).
    pub fn to_f32(&self) -> Result<Vec<f32>, RuntimeError> {
        let n: usize = self.dims.iter().product();
        rocmforge_quant::dequantize_to_vec(self.ty, self.bytes.as_slice(), n)
            .map_err(|e| RuntimeError::Weight { name: self.name.clone(), what: e.to_string() })
    }
}

impl ModelSource {
    /// Open a GGUF file or an HF directory; for HF, the registry picks the plugin whose maps apply.
    pub fn open(path: &Path, registry: &Registry) -> Result<ModelSource, RuntimeError> {
        if path.is_dir() {
            let dir = HfModelDir::open(path)?;
            let archs = dir.architectures();
            let hf_arch = archs.first().cloned().ok_or_else(|| {
                RuntimeError::Model(rocmforge_model::ModelError::Malformed {
                    path: path.join("config.json"),
                    what: "no \"architectures\" entry".into(),
                })
            })?;
            let (plugin, arch) = registry.for_hf_arch(&hf_arch)?;
            Self::from_hf(dir, plugin, &arch)
        } else {
            let f = GgufFile::open(path)?;
            let arch = f.architecture()?.to_string();
            let mut src = ModelSource {
                path: path.to_path_buf(),
                arch,
                c: Container::Gguf(Arc::new(f)),
                stacked: HashMap::new(),
                opened_by: None,
                lora: HashMap::new(),
                derived: HashMap::new(),
            };
            // The serving plugin's derived rows (an unserved architecture fails later, by name).
            if let Ok(plugin) = registry.for_source(&src) {
                src.derive(plugin);
            }
            Ok(src)
        }
    }

    fn from_hf(dir: HfModelDir, plugin: &Plugin, arch: &str) -> Result<ModelSource, RuntimeError> {
        let path = dir.path().to_path_buf();
        let cfg = dir.config().clone();
        let mut meta: Vec<(String, GgufValue)> = vec![("general.architecture".into(), GgufValue::Str(arch.to_string()))];
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            meta.push(("general.name".into(), GgufValue::Str(name.to_string())));
        }
        // The plugin's own entries first (the first key found wins), then the keys every
        // transformers decoder/encoder config spells the same way.
        let defaults = HF_CONFIG_DEFAULTS.iter().map(|(g, h)| (g.to_string(), h.to_string()));
        for (gguf_key, hf_key) in plugin.config.iter().cloned().chain(defaults) {
            let (gguf_key, hf_key) = (&gguf_key, &hf_key);
            let key = gguf_key.replace("{arch}", arch);
            if meta.iter().any(|(k, _)| *k == key) {
                continue; // the first config key found wins
            }
            if let Some(value) = config_value(&cfg, hf_key) {
                meta.push((key, value));
            }
        }
        // RoPE: transformers' conventions, translated like llama.cpp's converter (after the plugin's rows).
        let malformed = |what: String| RuntimeError::Model(rocmforge_model::ModelError::Malformed { path: path.join("config.json"), what });
        let rope = crate::hf_rope::translate(&cfg).map_err(malformed)?;
        for (gguf_key, value) in rope.meta {
            let key = gguf_key.replace("{arch}", arch);
            if !meta.iter().any(|(k, _)| *k == key) {
                meta.push((key, value));
            }
        }
        // The MoE router's score function, as the converter writes it for every architecture.
        let gating_key = format!("{arch}.expert_gating_func");
        if let Some(v) = crate::hf_keys::expert_gating(&cfg).map_err(malformed)? {
            if !meta.iter().any(|(k, _)| *k == gating_key) {
                meta.push((gating_key, v));
            }
        }
        let n_layer = meta.iter().find(|(k, _)| *k == format!("{arch}.block_count")).and_then(|(_, v)| v.as_u64()).unwrap_or(0);
        // Every layer has at least one tensor: a larger count is a hostile or broken config (it
        // would make the per-layer name expansion below allocate and loop without bound).
        let n_tensors = dir.tensors().len();
        if n_layer > n_tensors as u64 {
            return Err(malformed(format!("num_hidden_layers = {n_layer}, but the checkpoint has only {n_tensors} tensors")));
        }
        let n_layer = n_layer as usize;
        let mut map = HashMap::new();
        let mut stacked = HashMap::new();
        for t in &plugin.tensors {
            // Derived rows (`gguf:`) are resolved once the map is complete (`derive`).
            if t.hf.is_empty() || t.hf.starts_with(crate::source_derived::DERIVED_PREFIX) {
                continue;
            }
            if let Some(cfg_key) = t.hf.strip_prefix(CONFIG_TENSOR_PREFIX) {
                // Numeric config arrays: only global (non-{il}) names make sense.
                if let Some(values) = config_path(&cfg, cfg_key).and_then(config_f32_array) {
                    map.entry(t.gguf.clone()).or_insert(HfRef { hf: t.hf.clone(), transform: t.transform, config_values: Some(values) });
                }
                continue;
            }
            let layers: Vec<Option<usize>> = if t.gguf.contains("{il}") { (0..n_layer).map(Some).collect() } else { vec![None] };
            for il in layers {
                let sub = |s: &str| match il {
                    Some(i) => s.replace("{il}", &i.to_string()),
                    None => s.to_string(),
                };
                let hf = sub(&t.hf);
                if hf.contains("{xid}") {
                    if let Some(experts) = expert_names(&dir, &hf, &sub(&t.gguf))? {
                        stacked.insert(sub(&t.gguf), Stacked { experts, transform: t.transform });
                    }
                    continue;
                }
                if dir.tensor(&hf).is_some() {
                    map.insert(sub(&t.gguf), HfRef { hf, transform: t.transform, config_values: None });
                }
            }
        }
        // fp8 KV cache scales: found by the runtime under every checkpoint naming (not the
        // plugin's tables) and kept under GGUF names, so a conversion carries them (`kv_scales.rs`).
        for (gguf, hf, values) in crate::kv_scales::hf_scale_tensors(&dir, n_layer)? {
            map.entry(gguf).or_insert(HfRef { hf, transform: rocmforge_abi::transform::NONE, config_values: Some(values) });
        }
        if let Some(values) = rope.freq_factors {
            // Llama-3 scaling lives in a tensor; only a graph that reads it may be given it.
            if !plugin.tensors.iter().any(|t| t.gguf == ROPE_FREQS) {
                return Err(malformed(format!(
                    "rope type 'llama3' needs the frequency-factor tensor '{ROPE_FREQS}', which plugin '{}' does not read",
                    plugin.name
                )));
            }
            let hf = "config:rope_parameters (llama3)".to_string();
            map.entry(ROPE_FREQS.to_string()).or_insert(HfRef {
                hf,
                transform: rocmforge_abi::transform::NONE,
                config_values: Some(values),
            });
        }
        let mut src = ModelSource {
            path,
            arch: arch.to_string(),
            c: Container::Hf { dir: Arc::new(dir), meta, map },
            stacked,
            opened_by: Some(plugin.name.clone()),
            lora: HashMap::new(),
            derived: HashMap::new(),
        };
        src.derive(plugin);
        Ok(src)
    }

    /// Record the tensors `plugin`'s derived rows (`gguf:` HF names) give this model.
    fn derive(&mut self, plugin: &Plugin) {
        // Every layer has a tensor: a larger block count is a broken file (bounded loop).
        let n_tensors = match &self.c {
            Container::Gguf(f) => f.tensors().len(),
            Container::Hf { map, .. } => map.len() + self.stacked.len(),
        };
        let n_layer = self.meta(&format!("{}.block_count", self.arch)).and_then(|v| v.as_u64()).unwrap_or(0).min(n_tensors as u64) as usize;
        let rows = plugin.tensors.iter().map(|t| (t.gguf.as_str(), t.hf.as_str(), t.transform));
        self.derived = crate::source_derived::plan(rows, n_layer, |n| self.tensor_info(n).is_some());
    }

    /// Merge LoRA adapters (GGUF adapter files or PEFT adapter directories, in order) into this
    /// model's weights: each is checked against the model now ([`crate::lora::resolve`]:
    /// architecture, tensor names, shapes), and merged into a weight when it is loaded.
    pub fn apply_adapters(&mut self, adapters: &[PathBuf], registry: &Registry) -> Result<(), RuntimeError> {
        for path in adapters {
            let a = rocmforge_model::lora::LoraAdapter::open(path)?;
            let r = crate::lora::resolve(self, &a, registry)?;
            tracing::info!("LoRA adapter {}: {} tensors, alpha {}", path.display(), r.pairs.len(), r.alpha);
            for p in r.pairs {
                self.lora.entry(p.target.clone()).or_default().push(p);
            }
        }
        Ok(())
    }

    /// Whether any LoRA adapter is merged into this model.
    pub fn has_adapters(&self) -> bool {
        !self.lora.is_empty()
    }

    /// Name of the plugin whose maps opened this HF directory (None for GGUF files): that plugin
    /// serves it (see `Registry::for_source`).
    pub fn opened_by(&self) -> Option<&str> {
        self.opened_by.as_deref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF architecture name (`general.architecture`, or the plugin's mapping of the HF name).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The GGUF file, when the model is one.
    pub fn gguf(&self) -> Option<&Arc<GgufFile>> {
        match &self.c {
            Container::Gguf(f) => Some(f),
            _ => None,
        }
    }

    /// The HF directory, when the model is one.
    pub fn hf(&self) -> Option<&Arc<HfModelDir>> {
        match &self.c {
            Container::Hf { dir, .. } => Some(dir),
            _ => None,
        }
    }

    /// A metadata value by GGUF key.
    pub fn meta(&self, key: &str) -> Option<&GgufValue> {
        match &self.c {
            Container::Gguf(f) => f.get(key),
            Container::Hf { meta, .. } => meta.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        }
    }

    /// Every metadata pair (for writing a GGUF conversion).
    pub fn metadata(&self) -> Vec<(String, GgufValue)> {
        match &self.c {
            Container::Gguf(f) => f.metadata().to_vec(),
            Container::Hf { meta, .. } => meta.clone(),
        }
    }

    /// Every tensor name, GGUF vocabulary, in a stable order.
    /// HF directories list their derived tensors instead of the sources those consume (what
    /// llama.cpp's converter writes: `attn_k_b` / `attn_v_b`, no `attn_kv_b`); GGUF files list
    /// the file's own.
    pub fn tensor_names(&self) -> Vec<String> {
        match &self.c {
            Container::Gguf(f) => f.tensors().iter().map(|t| t.name.clone()).collect(),
            Container::Hf { map, .. } => {
                let consumed = |n: &String| self.derived.values().any(|d| d.source == *n);
                let mut v: Vec<String> =
                    map.keys().chain(self.stacked.keys()).filter(|n| !consumed(n)).chain(self.derived.keys()).cloned().collect();
                v.sort_by_key(|n| tensor_sort_key(n));
                v
            }
        }
    }

    /// Type and GGUF dims of a tensor, if the model has it (an adapted weight: the type it is
    /// merged into).
    pub fn tensor_info(&self, name: &str) -> Option<(GgmlType, Vec<usize>)> {
        if let Some(d) = self.derived.get(name) {
            let (ty, dims) = self.tensor_info(&d.source)?;
            return crate::source_derived::info(self, name, d, ty, &dims);
        }
        let (ty, dims) = self.base_tensor_info(name)?;
        Some((if self.lora.contains_key(name) { crate::lora::merged_type(ty) } else { ty }, dims))
    }

    fn base_tensor_info(&self, name: &str) -> Option<(GgmlType, Vec<usize>)> {
        if let (Some(st), Container::Hf { dir, .. }) = (self.stacked.get(name), &self.c) {
            let t = dir.tensor(st.experts.first()?)?;
            let ty = match t.dtype {
                HfDtype::F16 => GgmlType::F16,
                HfDtype::BF16 => GgmlType::BF16,
                _ => GgmlType::F32,
            };
            let mut dims: Vec<usize> = t.shape.iter().rev().map(|&d| d as usize).collect();
            dims.push(st.experts.len());
            return Some((ty, dims));
        }
        match &self.c {
            Container::Gguf(f) => f.tensor(name).map(|t| (t.ty, t.dims.iter().map(|&d| d as usize).collect())),
            Container::Hf { dir, map, .. } => {
                let r = map.get(name)?;
                if let Some(v) = &r.config_values {
                    return Some((GgmlType::F32, vec![v.len()]));
                }
                let t = dir.tensor(&r.hf)?;
                let ty = match t.dtype {
                    HfDtype::F32 => GgmlType::F32,
                    HfDtype::F16 => GgmlType::F16,
                    HfDtype::BF16 => GgmlType::BF16,
                    // Reported by name when the weight is loaded; the shape is still useful.
                    _ => GgmlType::F32,
                };
                let dims: Vec<usize> = t.shape.iter().rev().map(|&d| d as usize).collect();
                // A transform that reshapes reports the shape it produces (an impossible one is
                // reported as stored; loading it then fails with the reason).
                Some((ty, reshaped_dims(r.transform, &dims).unwrap_or(dims)))
            }
        }
    }

    /// Load a weight (zero-copy for GGUF; converted and transformed for HF; LoRA adapters
    /// merged in).
    pub fn weight(&self, name: &str) -> Result<Weight, RuntimeError> {
        if let Some(d) = self.derived.get(name) {
            return crate::source_derived::derive(self, name, d, self.weight(&d.source)?);
        }
        match self.lora.get(name) {
            Some(pairs) => crate::lora::merged_weight(self.base_weight(name)?, pairs),
            None => self.base_weight(name),
        }
    }

    fn base_weight(&self, name: &str) -> Result<Weight, RuntimeError> {
        if let (Some(st), Container::Hf { dir, .. }) = (self.stacked.get(name), &self.c) {
            return self.stacked_weight(dir, name, st);
        }
        match &self.c {
            Container::Gguf(f) => {
                let t = f.tensor(name).ok_or_else(|| RuntimeError::MissingTensor { name: name.to_string() })?;
                let start = (f.data_offset() + t.offset) as usize;
                Ok(Weight {
                    name: name.to_string(),
                    ty: t.ty,
                    dims: t.dims.iter().map(|&d| d as usize).collect(),
                    bytes: WeightBytes::Mapped { file: f.clone(), start, len: t.n_bytes as usize },
                })
            }
            Container::Hf { dir, map, .. } => {
                let r = map.get(name).ok_or_else(|| RuntimeError::MissingTensor { name: name.to_string() })?;
                if let Some(v) = &r.config_values {
                    let dims = vec![v.len()];
                    let mut bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    self.apply_transform(name, r.transform, GgmlType::F32, &dims, &mut bytes)?;
                    return Ok(Weight { name: name.to_string(), ty: GgmlType::F32, dims, bytes: WeightBytes::Owned(bytes) });
                }
                let t = dir.tensor(&r.hf).ok_or_else(|| RuntimeError::MissingTensor { name: name.to_string() })?;
                let mut dims: Vec<usize> = t.shape.iter().rev().map(|&d| d as usize).collect();
                let (ty, mut bytes) = match t.dtype {
                    HfDtype::F16 | HfDtype::BF16 if r.transform == rocmforge_abi::transform::NONE && dims.len() == 2 => {
                        let ty = if t.dtype == HfDtype::F16 { GgmlType::F16 } else { GgmlType::BF16 };
                        (ty, dir.tensor_bytes(&r.hf)?.to_vec())
                    }
                    _ => {
                        let v = dir.tensor_f32(&r.hf)?;
                        (GgmlType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
                    }
                };
                if reshapes(r.transform) {
                    let d = reshaped_dims(r.transform, &dims).ok_or_else(|| RuntimeError::Weight {
                        name: name.into(),
                        what: format!("load transform {} cannot take HF tensor '{}' of shape {:?}", r.transform, r.hf, t.shape),
                    })?;
                    bytes = reshape_interleaved(name, r.transform, ty, &dims, &bytes)?;
                    dims = d;
                } else {
                    self.apply_transform(name, r.transform, ty, &dims, &mut bytes)?;
                }
                Ok(Weight { name: name.to_string(), ty, dims, bytes: WeightBytes::Owned(bytes) })
            }
        }
    }

    /// Load experts one by one (each converted and transformed as a 2-D matrix) and concatenate
    /// them: expert `e` is the `e`-th slice of the outermost GGUF dim.
    fn stacked_weight(&self, dir: &HfModelDir, name: &str, st: &Stacked) -> Result<Weight, RuntimeError> {
        let mut out: Option<(GgmlType, Vec<usize>, Vec<u8>)> = None;
        for hf in &st.experts {
            let t = dir.tensor(hf).ok_or_else(|| RuntimeError::MissingTensor { name: hf.clone() })?;
            let dims: Vec<usize> = t.shape.iter().rev().map(|&d| d as usize).collect();
            let (ty, mut bytes) = match t.dtype {
                HfDtype::F16 | HfDtype::BF16 if st.transform == rocmforge_abi::transform::NONE => {
                    let ty = if t.dtype == HfDtype::F16 { GgmlType::F16 } else { GgmlType::BF16 };
                    (ty, dir.tensor_bytes(hf)?.to_vec())
                }
                _ => (GgmlType::F32, dir.tensor_f32(hf)?.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
            };
            self.apply_transform(name, st.transform, ty, &dims, &mut bytes)?;
            match &mut out {
                None => {
                    let mut all = Vec::with_capacity(bytes.len() * st.experts.len());
                    all.extend_from_slice(&bytes);
                    out = Some((ty, dims, all));
                }
                Some((ty0, dims0, all)) if *ty0 == ty && *dims0 == dims => all.extend_from_slice(&bytes),
                Some(_) => {
                    return Err(RuntimeError::Weight { name: name.into(), what: format!("expert tensor '{hf}' differs in shape or dtype") })
                }
            }
        }
        let (ty, mut dims, bytes) = out.ok_or_else(|| RuntimeError::MissingTensor { name: name.to_string() })?;
        dims.push(st.experts.len());
        Ok(Weight { name: name.to_string(), ty, dims, bytes: WeightBytes::Owned(bytes) })
    }

    fn meta_usize(&self, key: &str) -> Result<usize, RuntimeError> {
        self.meta(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| RuntimeError::Weight { name: key.to_string(), what: "metadata needed by a load transform is missing".into() })
    }

    pub(crate) fn apply_transform(
        &self,
        name: &str,
        transform: u32,
        ty: GgmlType,
        dims: &[usize],
        bytes: &mut [u8],
    ) -> Result<(), RuntimeError> {
        use rocmforge_abi::transform as tr;
        match transform {
            tr::NONE => Ok(()),
            tr::PERMUTE_Q | tr::PERMUTE_K => {
                let key = if transform == tr::PERMUTE_Q { "attention.head_count" } else { "attention.head_count_kv" };
                let mut n_head = self.meta_usize(&format!("{}.{key}", self.arch));
                if transform == tr::PERMUTE_K && n_head.is_err() {
                    n_head = self.meta_usize(&format!("{}.attention.head_count", self.arch));
                }
                permute_rows_for_rope(name, ty, dims, bytes, n_head?)
            }
            tr::ADD_ONE => {
                if ty != GgmlType::F32 {
                    return Err(RuntimeError::Weight { name: name.into(), what: "ADD_ONE needs an f32 tensor".into() });
                }
                for c in bytes.chunks_exact_mut(4) {
                    let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) + 1.0;
                    c.copy_from_slice(&v.to_le_bytes());
                }
                Ok(())
            }
            other => Err(RuntimeError::Weight { name: name.into(), what: format!("unknown load transform {other}") }),
        }
    }
}

/// `config.json` keys that mean the same in every transformers model (GGUF key, config key); a
/// plugin's config map adds its own and may override these (its entries are read first).
const HF_CONFIG_DEFAULTS: [(&str, &str); 8] = [
    ("{arch}.block_count", "num_hidden_layers"),
    ("{arch}.embedding_length", "hidden_size"),
    ("{arch}.feed_forward_length", "intermediate_size"),
    ("{arch}.attention.head_count", "num_attention_heads"),
    ("{arch}.attention.head_count_kv", "num_key_value_heads"),
    ("{arch}.attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("{arch}.context_length", "max_position_embeddings"),
    ("{arch}.vocab_size", "vocab_size"),
];

/// The GGUF value of a config-map entry: `a.b.c` is a dotted path into `config.json` (or `=json`,
/// a constant; or `a+b` / `a*0.1`, arithmetic on numbers, see `hf_keys.rs`); scalars map
/// to scalars, arrays of numbers / bools / strings to GGUF arrays, and `path==text` maps an array
/// of strings to a bool array (`true` where the element equals `text`, e.g. transformers'
/// `layer_types==sliding_attention` for per-layer sliding-window flags).
fn config_value(cfg: &serde_json::Value, hf_key: &str) -> Option<GgufValue> {
    use rocmforge_model::gguf::GgufArray;
    use serde_json::Value as J;
    // `=json` is a constant the plugin states for every HF model it serves (a fact of the
    // architecture that config.json does not spell out, e.g. BERT's non-causal attention), so
    // a GGUF converted from the directory carries it as llama.cpp's converter writes it.
    if let Some(lit) = hf_key.strip_prefix('=') {
        let v: J = serde_json::from_str(lit).ok()?;
        return config_value(&serde_json::json!({ "v": v }), "v");
    }
    // `a+b`, `a*0.1`: values llama.cpp's converter computes (`hf_keys.rs`).
    if crate::hf_keys::is_arith(hf_key) {
        return crate::hf_keys::arith(cfg, hf_key);
    }
    let (path, equals) = match hf_key.split_once("==") {
        Some((p, v)) => (p, Some(v)),
        None => (hf_key, None),
    };
    let v = config_path(cfg, path)?;
    if let Some(text) = equals {
        let arr = v.as_array()?;
        return Some(GgufValue::Array(GgufArray::Bool(arr.iter().map(|e| e.as_str() == Some(text)).collect())));
    }
    Some(match v {
        J::Bool(b) => GgufValue::Bool(*b),
        // llama.cpp reads hyperparameters as u32 / i32 / f32: write them so (wider only when needed),
        // so a GGUF converted from this metadata loads there.
        J::Number(n) if n.is_u64() => match u32::try_from(n.as_u64()?) {
            Ok(v) => GgufValue::U32(v),
            Err(_) => GgufValue::U64(n.as_u64()?),
        },
        J::Number(n) if n.is_i64() => match i32::try_from(n.as_i64()?) {
            Ok(v) => GgufValue::I32(v),
            Err(_) => GgufValue::I64(n.as_i64()?),
        },
        J::Number(n) => GgufValue::F32(n.as_f64()? as f32),
        J::String(s) => GgufValue::Str(s.clone()),
        J::Array(a) if !a.is_empty() && a.iter().all(J::is_number) => {
            GgufValue::Array(GgufArray::F32(a.iter().filter_map(J::as_f64).map(|x| x as f32).collect()))
        }
        J::Array(a) if !a.is_empty() && a.iter().all(J::is_boolean) => {
            GgufValue::Array(GgufArray::Bool(a.iter().filter_map(J::as_bool).collect()))
        }
        J::Array(a) if !a.is_empty() && a.iter().all(J::is_string) => {
            GgufValue::Array(GgufArray::Str(a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()))
        }
        _ => return None,
    })
}

/// HF rotate-half row order -> GGUF interleaved row order, per head (llama.cpp's converter
/// `permute`): new row `h*hd + 2*j + i` takes old row `h*hd + i*hd/2 + j`.
fn permute_rows_for_rope(name: &str, ty: GgmlType, dims: &[usize], bytes: &mut [u8], n_head: usize) -> Result<(), RuntimeError> {
    let rows = dims.get(1).copied().unwrap_or(1);
    let row_bytes = bytes.len() / rows.max(1);
    if n_head == 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0 || ty.is_quantized() {
        return Err(RuntimeError::Weight { name: name.into(), what: format!("cannot permute {rows} rows into {n_head} heads") });
    }
    let hd = rows / n_head;
    let src = bytes.to_vec();
    for h in 0..n_head {
        for j in 0..hd / 2 {
            for i in 0..2 {
                let dst_row = h * hd + 2 * j + i;
                let src_row = h * hd + i * (hd / 2) + j;
                bytes[dst_row * row_bytes..(dst_row + 1) * row_bytes].copy_from_slice(&src[src_row * row_bytes..(src_row + 1) * row_bytes]);
            }
        }
    }
    Ok(())
}

/// Whether a load transform changes the tensor's shape (see [`reshaped_dims`]).
fn reshapes(transform: u32) -> bool {
    use rocmforge_abi::transform as tr;
    matches!(transform, tr::INTERLEAVED_GATE | tr::INTERLEAVED_UP | tr::TRANSPOSE)
}

/// GGUF dims after a reshaping load transform (`INTERLEAVED_GATE` / `_UP`, `TRANSPOSE`; see
/// `rocmforge_abi::transform`), or None for the transforms that keep the shape and for a shape
/// the transform cannot take (`reshape_interleaved` then names the problem). GGUF dims are HF's
/// reversed: HF `[n_expert, in, 2·n_ff]` is GGUF `[2·n_ff, in, n_expert]`.
fn reshaped_dims(transform: u32, dims: &[usize]) -> Option<Vec<usize>> {
    use rocmforge_abi::transform as tr;
    match transform {
        tr::INTERLEAVED_GATE | tr::INTERLEAVED_UP => {
            let (&last, rest) = dims.split_first()?;
            if last % 2 != 0 || last == 0 {
                return None;
            }
            match *rest {
                // [2n, in, E] -> [in, n, E]: halved and made output-major.
                [k, e] => Some(vec![k, last / 2, e]),
                _ if dims.len() <= 2 => Some(std::iter::once(last / 2).chain(rest.iter().copied()).collect()),
                _ => None,
            }
        }
        tr::TRANSPOSE if dims.len() >= 2 => {
            let mut d = dims.to_vec();
            d.swap(0, 1);
            Some(d)
        }
        _ => None,
    }
}

/// Apply a reshaping transform (see [`reshaped_dims`]) to f32 bytes in HF (row-major) order.
///
/// ```text
///   INTERLEAVED_GATE/UP  HF [E, in, 2n] -> [E, n, in]: out[e][j][i] = src[e][i][2j + par]
///                        HF [R, 2n]     -> [R, n]:     out[r][j]    = src[r][2j + par]
///   TRANSPOSE            HF [E, a, b]   -> [E, b, a]:  out[e][j][i] = src[e][i][j]
/// ```
fn reshape_interleaved(name: &str, transform: u32, ty: GgmlType, dims: &[usize], bytes: &[u8]) -> Result<Vec<u8>, RuntimeError> {
    use rocmforge_abi::transform as tr;
    let bad = |what: String| RuntimeError::Weight { name: name.into(), what };
    if ty != GgmlType::F32 {
        return Err(bad(format!("load transform {transform} needs an f32 tensor, got {ty}")));
    }
    let src: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    // HF (row-major) shape: [batch, rows, cols] with the innermost dim last.
    let (cols, rows) = (dims[0], dims.get(1).copied().unwrap_or(1));
    let batch: usize = dims.iter().skip(2).product();
    if src.len() != batch * rows * cols {
        return Err(bad(format!("{} values for dims {dims:?}", src.len())));
    }
    let mut out = Vec::with_capacity(src.len());
    match transform {
        tr::INTERLEAVED_GATE | tr::INTERLEAVED_UP => {
            let par = (transform == tr::INTERLEAVED_UP) as usize;
            let half = cols / 2;
            if dims.len() == 3 {
                for b in 0..batch {
                    let m = &src[b * rows * cols..(b + 1) * rows * cols];
                    for j in 0..half {
                        out.extend((0..rows).map(|i| m[i * cols + 2 * j + par]));
                    }
                }
            } else {
                for row in src.chunks_exact(cols) {
                    out.extend((0..half).map(|j| row[2 * j + par]));
                }
            }
        }
        tr::TRANSPOSE => {
            for b in 0..batch {
                let m = &src[b * rows * cols..(b + 1) * rows * cols];
                for j in 0..cols {
                    out.extend((0..rows).map(|i| m[i * cols + j]));
                }
            }
        }
        other => return Err(bad(format!("load transform {other} does not reshape"))),
    }
    Ok(out.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// The HF tensors of experts 0, 1, ... for a pattern with `{xid}` (as many as exist; None when
/// there is not even expert 0). Every expert must match expert 0's shape and dtype.
fn expert_names(dir: &HfModelDir, pattern: &str, gguf: &str) -> Result<Option<Vec<String>>, RuntimeError> {
    let experts: Vec<String> =
        (0usize..).map(|e| pattern.replace("{xid}", &e.to_string())).take_while(|n| dir.tensor(n).is_some()).collect();
    let Some(first) = experts.first().and_then(|n| dir.tensor(n)) else { return Ok(None) };
    let (shape, dtype) = (first.shape.clone(), first.dtype.clone());
    if let Some(bad) = experts.iter().find(|n| dir.tensor(n).is_some_and(|t| t.shape != shape || t.dtype != dtype)) {
        return Err(RuntimeError::Weight {
            name: gguf.into(),
            what: format!("expert tensor '{bad}' differs in shape or dtype from '{}'", experts[0]),
        });
    }
    Ok(Some(experts))
}

/// Order tensors like converters do: globals first, then blocks by index.
fn tensor_sort_key(name: &str) -> (usize, String) {
    match name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok()) {
        Some(i) => (i + 1, name.to_string()),
        None => (0, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocmforge_abi::transform as tr;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    fn floats(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    /// transformers' gpt-oss layout, HF `[E, in, 2n]` with value `100e + 10i + c`, split and
    /// transposed as llama.cpp's converter does (`transpose(-1, -2)[:, ::2 / 1::2, :]`).
    #[test]
    fn interleaved_gate_up_and_transpose_follow_the_converter() {
        let (e_n, k, n2) = (2usize, 3usize, 4usize);
        let hf: Vec<f32> = (0..e_n).flat_map(|e| (0..k).flat_map(move |i| (0..n2).map(move |c| (100 * e + 10 * i + c) as f32))).collect();
        let dims = [n2, k, e_n]; // GGUF order of HF [E, in, 2n]
        for (t, par) in [(tr::INTERLEAVED_GATE, 0), (tr::INTERLEAVED_UP, 1)] {
            assert_eq!(reshaped_dims(t, &dims), Some(vec![k, n2 / 2, e_n]));
            let got = floats(&reshape_interleaved("w", t, GgmlType::F32, &dims, &f32_bytes(&hf)).unwrap());
            // HF [E, n, in]: element (e, j, i) = src(e, i, 2j + par).
            let want: Vec<f32> = (0..e_n)
                .flat_map(|e| (0..n2 / 2).flat_map(move |j| (0..k).map(move |i| (100 * e + 10 * i + 2 * j + par) as f32)))
                .collect();
            assert_eq!(got, want, "transform {t}");
        }
        // A bias [E, 2n] (GGUF [2n, E]) keeps its layout.
        let bias: Vec<f32> = (0..e_n * n2).map(|v| v as f32).collect();
        assert_eq!(reshaped_dims(tr::INTERLEAVED_UP, &[n2, e_n]), Some(vec![n2 / 2, e_n]));
        let got = floats(&reshape_interleaved("b", tr::INTERLEAVED_UP, GgmlType::F32, &[n2, e_n], &f32_bytes(&bias)).unwrap());
        assert_eq!(got, vec![1.0, 3.0, 5.0, 7.0]);
        // TRANSPOSE: HF [E, in, out] -> [E, out, in].
        assert_eq!(reshaped_dims(tr::TRANSPOSE, &dims), Some(vec![k, n2, e_n]));
        let got = floats(&reshape_interleaved("d", tr::TRANSPOSE, GgmlType::F32, &dims, &f32_bytes(&hf)).unwrap());
        let want: Vec<f32> = (0..e_n).flat_map(|e| (0..n2).flat_map(move |c| (0..k).map(move |i| (100 * e + 10 * i + c) as f32))).collect();
        assert_eq!(got, want);
        // Shapes the transforms cannot take.
        assert_eq!(reshaped_dims(tr::INTERLEAVED_GATE, &[5, 3, 2]), None, "odd fused width");
        assert_eq!(reshaped_dims(tr::INTERLEAVED_GATE, &[4, 3, 2, 2]), None, "rank 4");
        assert_eq!(reshaped_dims(tr::TRANSPOSE, &[4]), None, "rank 1");
        assert!(reshape_interleaved("w", tr::TRANSPOSE, GgmlType::F16, &dims, &[]).is_err());
    }
}
