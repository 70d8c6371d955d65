//! A model as the runtime sees it: metadata in GGUF's vocabulary and tensors under GGUF names,
//! whether it came from a GGUF file or a Hugging Face directory.
//!
//! GGUF: metadata and tensors are the file's own; weight bytes are views into the memory map.
//! HF: the plugin's config map turns `config.json` keys into GGUF keys, its tensor map turns HF
//! tensor names into GGUF names, and its declared transforms (Q/K row permutation, `1 + w`) are
//! applied once, at load; such weights are owned copies. Nothing here knows an architecture.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocmforge_model::gguf::{GgufFile, GgufValue};
use rocmforge_model::hf::{HfDtype, HfModelDir};
use rocmforge_quant::GgmlType;

use crate::plugin::{Plugin, Registry};
use crate::RuntimeError;

/// Where a GGUF-named tensor of an HF model comes from.
#[derive(Clone, Debug)]
struct HfRef {
    hf: String,
    transform: u32,
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
            let hf_arch = archs.first().cloned().ok_or_else(|| RuntimeError::Model(rocmforge_model::ModelError::Malformed {
                path: path.join("config.json"),
                what: "no \"architectures\" entry".into(),
            }))?;
            let (plugin, arch) = registry.for_hf_arch(&hf_arch)?;
            Self::from_hf(dir, plugin, &arch)
        } else {
            let f = GgufFile::open(path)?;
            let arch = f.architecture()?.to_string();
            Ok(ModelSource { path: path.to_path_buf(), arch, c: Container::Gguf(Arc::new(f)) })
        }
    }

    fn from_hf(dir: HfModelDir, plugin: &Plugin, arch: &str) -> Result<ModelSource, RuntimeError> {
        let path = dir.path().to_path_buf();
        let cfg = dir.config().clone();
        let mut meta: Vec<(String, GgufValue)> = vec![("general.architecture".into(), GgufValue::Str(arch.to_string()))];
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            meta.push(("general.name".into(), GgufValue::Str(name.to_string())));
        }
        for (gguf_key, hf_key) in &plugin.config {
            let key = gguf_key.replace("{arch}", arch);
            let mut v = Some(&cfg);
            for part in hf_key.split('.') {
                v = v.and_then(|x| x.get(part));
            }
            let value = match v {
                Some(serde_json::Value::Bool(b)) => GgufValue::Bool(*b),
                Some(serde_json::Value::Number(n)) if n.is_u64() => GgufValue::U64(n.as_u64().unwrap_or(0)),
                Some(serde_json::Value::Number(n)) if n.is_i64() => GgufValue::I64(n.as_i64().unwrap_or(0)),
                Some(serde_json::Value::Number(n)) => GgufValue::F64(n.as_f64().unwrap_or(0.0)),
                Some(serde_json::Value::String(s)) => GgufValue::Str(s.clone()),
                _ => continue,
            };
            if !meta.iter().any(|(k, _)| *k == key) {
                meta.push((key, value));
            }
        }
        let n_layer = meta
            .iter()
            .find(|(k, _)| *k == format!("{arch}.block_count"))
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(0) as usize;
        let mut map = HashMap::new();
        for t in &plugin.tensors {
            if t.hf.is_empty() {
                continue;
            }
            let layers: Vec<Option<usize>> =
                if t.gguf.contains("{il}") { (0..n_layer).map(Some).collect() } else { vec![None] };
            for il in layers {
                let sub = |s: &str| match il {
                    Some(i) => s.replace("{il}", &i.to_string()),
                    None => s.to_string(),
                };
                let hf = sub(&t.hf);
                if dir.tensor(&hf).is_some() {
                    map.insert(sub(&t.gguf), HfRef { hf, transform: t.transform });
                }
            }
        }
        Ok(ModelSource { path, arch: arch.to_string(), c: Container::Hf { dir: Arc::new(dir), meta, map } })
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
    pub fn tensor_names(&self) -> Vec<String> {
        match &self.c {
            Container::Gguf(f) => f.tensors().iter().map(|t| t.name.clone()).collect(),
            Container::Hf { map, .. } => {
                let mut v: Vec<String> = map.keys().cloned().collect();
                v.sort_by_key(|n| tensor_sort_key(n));
                v
            }
        }
    }

    /// Type and GGUF dims of a tensor, if the model has it.
    pub fn tensor_info(&self, name: &str) -> Option<(GgmlType, Vec<usize>)> {
        match &self.c {
            Container::Gguf(f) => f.tensor(name).map(|t| (t.ty, t.dims.iter().map(|&d| d as usize).collect())),
            Container::Hf { dir, map, .. } => {
                let r = map.get(name)?;
                let t = dir.tensor(&r.hf)?;
                let ty = match t.dtype {
                    HfDtype::F32 => GgmlType::F32,
                    HfDtype::F16 => GgmlType::F16,
                    HfDtype::BF16 => GgmlType::BF16,
                    // Reported by name when the weight is loaded; the shape is still useful.
                    _ => GgmlType::F32,
                };
                Some((ty, t.shape.iter().rev().map(|&d| d as usize).collect()))
            }
        }
    }

    /// Load a weight (zero-copy for GGUF; converted and transformed for HF).
    pub fn weight(&self, name: &str) -> Result<Weight, RuntimeError> {
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
                let t = dir.tensor(&r.hf).ok_or_else(|| RuntimeError::MissingTensor { name: name.to_string() })?;
                let dims: Vec<usize> = t.shape.iter().rev().map(|&d| d as usize).collect();
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
                self.apply_transform(name, r.transform, ty, &dims, &mut bytes)?;
                Ok(Weight { name: name.to_string(), ty, dims, bytes: WeightBytes::Owned(bytes) })
            }
        }
    }

    fn meta_usize(&self, key: &str) -> Result<usize, RuntimeError> {
        self.meta(key).and_then(|v| v.as_u64()).map(|v| v as usize).ok_or_else(|| RuntimeError::Weight {
            name: key.to_string(),
            what: "metadata needed by a load transform is missing".into(),
        })
    }

    fn apply_transform(&self, name: &str, transform: u32, ty: GgmlType, dims: &[usize], bytes: &mut [u8]) -> Result<(), RuntimeError> {
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

/// Order tensors like converters do: globals first, then blocks by index.
fn tensor_sort_key(name: &str) -> (usize, String) {
    match name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok()) {
        Some(i) => (i + 1, name.to_string()),
        None => (0, name.to_string()),
    }
}
