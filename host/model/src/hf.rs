//! Hugging Face model directories: `config.json`, safetensors weights (one file or shards listed by
//! `model.safetensors.index.json`), tokenizer files and the chat template.
//!
//! A directory without safetensors may hold PyTorch checkpoints instead (`pytorch_model.bin`, or
//! the shards of `pytorch_model.bin.index.json`, same index layout); safetensors win where both
//! exist, as in transformers. `.bin` shards are read by `crate::torch_bin` (a restricted
//! unpickler that executes nothing) and then look exactly like safetensors tensors: name, dtype,
//! shape, row-major little-endian bytes. Contiguous ones are ranges of the shard's map; strided
//! or big-endian ones are copied once, at open.
//!
//! Every shard is memory-mapped and its header validated by our own parser
//! (`parse_safetensors_header`, fuzzed) before any tensor is exposed:
//! - `u64` header length, then that many bytes of a JSON object (at most `MAX_HEADER_LEN`);
//! - each entry `{"dtype", "shape", "data_offsets": [begin, end]}` with offsets relative to the
//!   byte after the header, `begin <= end <= data length`;
//! - for dtypes of known width, `end - begin == product(shape) * bits / 8`, computed without
//!   overflow; unknown dtypes are kept as `HfDtype::Other` (only their range is checked);
//! - no two tensors overlap.
//!
//! Gaps between tensors are allowed (the safetensors crate forbids them; nothing breaks if they
//! exist). Shard names from the index must be relative paths inside the directory.
//!
//! Modelled on the safetensors format description (huggingface/safetensors README) and
//! transformers' loading of sharded checkpoints and chat templates.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::torch_bin::{parse_torch_bin, TorchData};
use crate::ModelError;

/// Largest accepted JSON header, as in the safetensors crate.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// A safetensors element type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HfDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    F8E4M3,
    F8E5M2,
    /// Any other dtype string (`U16`, `F8_E8M0`, `F4`, ...), kept verbatim.
    Other(String),
}

impl HfDtype {
    /// The dtype for a safetensors dtype string.
    pub fn from_name(s: &str) -> HfDtype {
        match s {
            "F32" => HfDtype::F32,
            "F16" => HfDtype::F16,
            "BF16" => HfDtype::BF16,
            "F64" => HfDtype::F64,
            "I64" => HfDtype::I64,
            "I32" => HfDtype::I32,
            "I16" => HfDtype::I16,
            "I8" => HfDtype::I8,
            "U8" => HfDtype::U8,
            "BOOL" => HfDtype::Bool,
            "F8_E4M3" => HfDtype::F8E4M3,
            "F8_E5M2" => HfDtype::F8E5M2,
            other => HfDtype::Other(other.to_string()),
        }
    }

    /// The safetensors dtype string.
    pub fn name(&self) -> &str {
        match self {
            HfDtype::F32 => "F32",
            HfDtype::F16 => "F16",
            HfDtype::BF16 => "BF16",
            HfDtype::F64 => "F64",
            HfDtype::I64 => "I64",
            HfDtype::I32 => "I32",
            HfDtype::I16 => "I16",
            HfDtype::I8 => "I8",
            HfDtype::U8 => "U8",
            HfDtype::Bool => "BOOL",
            HfDtype::F8E4M3 => "F8_E4M3",
            HfDtype::F8E5M2 => "F8_E5M2",
            HfDtype::Other(s) => s,
        }
    }

    /// Bits per element, if known (the safetensors crate's table, sub-byte types included).
    pub fn bits(&self) -> Option<u64> {
        Some(match self {
            HfDtype::F64 | HfDtype::I64 => 64,
            HfDtype::F32 | HfDtype::I32 => 32,
            HfDtype::F16 | HfDtype::BF16 | HfDtype::I16 => 16,
            HfDtype::I8 | HfDtype::U8 | HfDtype::Bool | HfDtype::F8E4M3 | HfDtype::F8E5M2 => 8,
            HfDtype::Other(s) => match s.as_str() {
                "U64" | "C64" => 64,
                "U32" => 32,
                "U16" => 16,
                "F8_E8M0" | "F8_E4M3FNUZ" | "F8_E5M2FNUZ" => 8,
                "F6_E2M3" | "F6_E3M2" => 6,
                "F4" => 4,
                _ => return None,
            },
        })
    }
}

impl std::fmt::Display for HfDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfTensor {
    pub name: String,
    pub dtype: HfDtype,
    /// Hugging Face order, row-major: outermost dimension first.
    pub shape: Vec<u64>,
}

impl HfTensor {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }
}

/// A validated safetensors header.
#[derive(Debug, Clone)]
pub struct SafetensorsHeader {
    /// Byte offset of the data section (8 + JSON length).
    pub data_start: u64,
    /// Tensors sorted by name, each with its absolute byte range in the file.
    pub tensors: Vec<(HfTensor, Range<u64>)>,
    /// The optional `__metadata__` string map.
    pub metadata: Vec<(String, String)>,
}

/// Parse and validate a whole safetensors file held in `bytes` (header and data ranges).
pub fn parse_safetensors_header(path: &Path, bytes: &[u8]) -> Result<SafetensorsHeader, ModelError> {
    let malformed = |what: String| ModelError::Malformed { path: path.to_path_buf(), what };
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(ModelError::Truncated { path: path.to_path_buf(), offset: 0, what: "safetensors header length (8 bytes)".into() });
    };
    let mut n = [0u8; 8];
    n.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_LEN {
        return Err(malformed(format!("header length {n} exceeds the limit of {MAX_HEADER_LEN} bytes")));
    }
    let file_len = bytes.len() as u64;
    if 8 + n > file_len {
        return Err(ModelError::Truncated {
            path: path.to_path_buf(),
            offset: 8,
            what: format!("safetensors JSON header of {n} bytes (file has {file_len})"),
        });
    }
    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let json: Value =
        serde_json::from_slice(&bytes[8..data_start as usize]).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
    let Value::Object(map) = json else {
        return Err(malformed("safetensors header is not a JSON object".into()));
    };

    let mut tensors = Vec::with_capacity(map.len());
    let mut metadata = Vec::new();
    for (name, entry) in map {
        if name == "__metadata__" {
            // The safetensors crate reads this as an optional map, so `null` means none.
            if entry.is_null() {
                continue;
            }
            let Value::Object(m) = entry else {
                return Err(malformed("__metadata__ is not an object".into()));
            };
            for (k, v) in m {
                let Value::String(v) = v else {
                    return Err(malformed(format!("__metadata__ value of '{k}' is not a string")));
                };
                metadata.push((k, v));
            }
            continue;
        }
        let bad = |what: String| ModelError::BadTensor { path: path.to_path_buf(), tensor: name.clone(), what };
        let Some(dtype) = entry.get("dtype").and_then(Value::as_str) else {
            return Err(bad("missing or non-string \"dtype\"".into()));
        };
        let dtype = HfDtype::from_name(dtype);
        let shape = match entry.get("shape").and_then(Value::as_array) {
            Some(a) => a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>(),
            None => None,
        };
        let Some(shape) = shape else {
            return Err(bad("\"shape\" is not an array of non-negative integers".into()));
        };
        let offsets = entry.get("data_offsets").and_then(Value::as_array);
        let (begin, end) = match offsets.map(|a| a.as_slice()) {
            Some([b, e]) => match (b.as_u64(), e.as_u64()) {
                (Some(b), Some(e)) => (b, e),
                _ => return Err(bad("\"data_offsets\" are not non-negative integers".into())),
            },
            _ => return Err(bad("\"data_offsets\" is not a [begin, end] pair".into())),
        };
        if begin > end || end > data_len {
            return Err(bad(format!("data_offsets [{begin}, {end}] do not fit the {data_len}-byte data section")));
        }
        if let Some(bits) = dtype.bits() {
            let want = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|n| n.checked_mul(bits))
                .ok_or_else(|| bad(format!("size of shape {shape:?} as {dtype} overflows")))?;
            if want % 8 != 0 || want / 8 != end - begin {
                return Err(bad(format!("shape {shape:?} as {dtype} needs {} bits, data_offsets give {} bytes", want, end - begin)));
            }
        }
        let range = data_start + begin..data_start + end;
        tensors.push((HfTensor { name, dtype, shape }, range));
    }

    let mut by_offset: Vec<&(HfTensor, Range<u64>)> = tensors.iter().filter(|(_, r)| !r.is_empty()).collect();
    by_offset.sort_by_key(|(_, r)| r.start);
    for w in by_offset.windows(2) {
        if w[0].1.end > w[1].1.start {
            return Err(ModelError::BadTensor {
                path: path.to_path_buf(),
                tensor: w[1].0.name.clone(),
                what: format!("data overlaps tensor '{}'", w[0].0.name),
            });
        }
    }
    tensors.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(SafetensorsHeader { data_start, tensors, metadata })
}

struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
}

/// Where a tensor's bytes live.
enum Data {
    /// A range of its shard's map.
    Mapped(Range<usize>),
    /// A copy made at open (a strided or byte-swapped tensor of a `.bin` checkpoint).
    Owned(Vec<u8>),
}

struct Entry {
    tensor: HfTensor,
    shard: usize,
    data: Data,
}

/// The weight files' format, chosen once per directory.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    TorchBin,
}

/// A Hugging Face model directory with every weight shard (safetensors or `.bin`) mapped and
/// validated.
pub struct HfModelDir {
    dir: PathBuf,
    config: Value,
    tokenizer_json: Option<PathBuf>,
    tokenizer_config: Option<Value>,
    generation_config: Option<Value>,
    chat_template: Option<String>,
    shards: Vec<Shard>,
    /// Sorted by tensor name.
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for HfModelDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfModelDir")
            .field("dir", &self.dir)
            .field("n_shards", &self.shards.len())
            .field("n_tensors", &self.entries.len())
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })
}

fn read_json_opt(path: &Path) -> Result<Option<Value>, ModelError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn map_file(path: &Path) -> Result<memmap2::Mmap, ModelError> {
    let io = |source| ModelError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: read-only private map owned by `HfModelDir`; as with every mmap model loader we
    // rely on weight files not being truncated while open. All ranges handed out were validated
    // against the map's length by `parse_safetensors_header`.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

impl HfModelDir {
    /// Open a model directory: `config.json` (required), `model.safetensors` or the shards of
    /// `model.safetensors.index.json` (else `pytorch_model.bin` or the shards of
    /// `pytorch_model.bin.index.json`), and the optional tokenizer/generation files.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ModelError> {
        let dir = dir.as_ref().to_path_buf();
        let config = read_json(&dir.join("config.json"))?;
        let tokenizer_json = Some(dir.join("tokenizer.json")).filter(|p| p.is_file());
        let tokenizer_config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let generation_config = read_json_opt(&dir.join("generation_config.json"))?;
        let chat_template = load_chat_template(&dir, tokenizer_config.as_ref())?;

        // transformers' order of preference: safetensors (index, single file), then .bin.
        let candidates = [
            ("model.safetensors.index.json", true, Format::Safetensors),
            ("model.safetensors", false, Format::Safetensors),
            ("pytorch_model.bin.index.json", true, Format::TorchBin),
            ("pytorch_model.bin", false, Format::TorchBin),
        ];
        let Some(&(found, is_index, format)) = candidates.iter().find(|(name, _, _)| dir.join(name).is_file()) else {
            return Err(ModelError::Malformed {
                path: dir.clone(),
                what: "no model.safetensors or model.safetensors.index.json (nor pytorch_model.bin or pytorch_model.bin.index.json) in the directory".into(),
            });
        };
        let index_path = dir.join(found);
        let (shard_names, weight_map) = if is_index {
            let index = read_json(&index_path)?;
            let malformed = |what: String| ModelError::Malformed { path: index_path.clone(), what };
            let Some(wm) = index.get("weight_map").and_then(Value::as_object) else {
                return Err(malformed("no \"weight_map\" object".into()));
            };
            let mut names: Vec<String> = Vec::new();
            let mut weight_map = Vec::with_capacity(wm.len());
            for (tensor, file) in wm {
                let Some(file) = file.as_str() else {
                    return Err(malformed(format!("weight_map entry of '{tensor}' is not a string")));
                };
                let p = Path::new(file);
                if file.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
                    return Err(malformed(format!("shard '{file}' of '{tensor}' is not a relative path inside the model directory")));
                }
                if !names.iter().any(|n| n == file) {
                    names.push(file.to_string());
                }
                weight_map.push((tensor.clone(), file.to_string()));
            }
            (names, Some((index_path.clone(), weight_map)))
        } else {
            (vec![found.to_string()], None)
        };

        let mut shards = Vec::with_capacity(shard_names.len());
        let mut entries: Vec<Entry> = Vec::new();
        let mut where_: HashMap<String, usize> = HashMap::new();
        for (si, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            let map = map_file(&path)?;
            let tensors: Vec<(HfTensor, Data)> = match format {
                Format::Safetensors => {
                    // Ranges were validated against the map's length, which fits in usize.
                    let header = parse_safetensors_header(&path, &map)?;
                    header.tensors.into_iter().map(|(t, r)| (t, Data::Mapped(r.start as usize..r.end as usize))).collect()
                }
                Format::TorchBin => parse_torch_bin(&path, &map)?
                    .into_iter()
                    .map(|t| {
                        let data = match t.data {
                            // Checked against the map's length by the parser.
                            TorchData::Mapped(r) => Data::Mapped(r.start as usize..r.end as usize),
                            TorchData::Owned(v) => Data::Owned(v),
                        };
                        (t.tensor, data)
                    })
                    .collect(),
            };
            for (tensor, data) in tensors {
                if let Some(&prev) = where_.get(&tensor.name) {
                    return Err(ModelError::BadTensor {
                        path: path.clone(),
                        tensor: tensor.name.clone(),
                        what: format!("also present in shard {}", shards_path(&shards, prev).display()),
                    });
                }
                where_.insert(tensor.name.clone(), si);
                entries.push(Entry { tensor, shard: si, data });
            }
            shards.push(Shard { path, map });
        }
        if let Some((index_path, weight_map)) = weight_map {
            for (tensor, file) in weight_map {
                let found = where_.get(&tensor).map(|&si| shard_names[si].as_str());
                if found != Some(file.as_str()) {
                    return Err(ModelError::Malformed {
                        path: index_path.clone(),
                        what: format!("weight_map says '{tensor}' is in '{file}', but that shard does not hold it"),
                    });
                }
            }
        }
        // Quark's packed MXFP6 `U8` weights take their FP6 dtype and logical shape (see `crate::mxfp6`).
        let names: std::collections::HashSet<String> = entries.iter().map(|e| e.tensor.name.clone()).collect();
        for e in &mut entries {
            let has_scale = names.contains(&format!("{}_scale", e.tensor.name));
            match crate::mxfp6::quark_packed(&config, &e.tensor, has_scale) {
                None => {}
                Some(Ok((dtype, shape))) => (e.tensor.dtype, e.tensor.shape) = (dtype, shape),
                Some(Err(what)) => {
                    let path = shards_path(&shards, e.shard).to_path_buf();
                    return Err(ModelError::BadTensor { path, tensor: e.tensor.name.clone(), what });
                }
            }
        }
        entries.sort_by(|a, b| a.tensor.name.cmp(&b.tensor.name));
        let index = entries.iter().enumerate().map(|(i, e)| (e.tensor.name.clone(), i)).collect();
        Ok(HfModelDir { dir, config, tokenizer_json, tokenizer_config, generation_config, chat_template, shards, entries, index })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &Value {
        &self.config
    }

    /// `config.json` `"architectures"` (e.g. `["LlamaForCausalLM"]`); empty if absent.
    pub fn architectures(&self) -> Vec<String> {
        self.config
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    pub fn tokenizer_json_path(&self) -> Option<&Path> {
        self.tokenizer_json.as_deref()
    }

    pub fn tokenizer_config(&self) -> Option<&Value> {
        self.tokenizer_config.as_ref()
    }

    pub fn generation_config(&self) -> Option<&Value> {
        self.generation_config.as_ref()
    }

    /// The chat template: `chat_template.jinja` if present (newer transformers save it there and
    /// let it take precedence), else `tokenizer_config.json` `"chat_template"` (a string, or a
    /// list of `{name, template}` of which the one named `"default"` is used).
    pub fn chat_template(&self) -> Option<String> {
        self.chat_template.clone()
    }

    /// The weight files (safetensors or `.bin`), in index order.
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Every tensor, sorted by name.
    pub fn tensors(&self) -> Vec<&HfTensor> {
        self.entries.iter().map(|e| &e.tensor).collect()
    }

    pub fn tensor(&self, name: &str) -> Option<&HfTensor> {
        self.index.get(name).map(|&i| &self.entries[i].tensor)
    }

    fn entry(&self, name: &str) -> Result<&Entry, ModelError> {
        self.index.get(name).map(|&i| &self.entries[i]).ok_or_else(|| ModelError::BadTensor {
            path: self.dir.clone(),
            tensor: name.to_string(),
            what: "no such tensor in the model".into(),
        })
    }

    /// The tensor's raw row-major little-endian bytes: a view of the mapped file (for `.bin`
    /// shards, strided or big-endian tensors were copied once, at open).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], ModelError> {
        let e = self.entry(name)?;
        let shard = &self.shards[e.shard];
        let bytes = match &e.data {
            Data::Mapped(r) => shard.map.get(r.clone()),
            Data::Owned(v) => Some(v.as_slice()),
        };
        bytes.ok_or_else(|| ModelError::BadTensor {
            path: shard.path.clone(),
            tensor: name.to_string(),
            what: "data range outside the file".into(),
        })
    }

    /// The tensor converted to `f32` (from F32, F16, BF16, FP8 E4M3 / E5M2 times its scales,
    /// see `crate::fp8`, or MXFP6 E2M3 / E3M2 times its E8M0 block scales, see `crate::mxfp6`);
    /// any other dtype is `UnsupportedDtype` naming the tensor and its dtype.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let e = self.entry(name)?;
        let bytes = self.tensor_bytes(name)?;
        Ok(match e.tensor.dtype {
            HfDtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            HfDtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            HfDtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            // FP8 with its `_scale` / `_scale_inv` companion, if any (see `crate::fp8`).
            HfDtype::F8E4M3 | HfDtype::F8E5M2 => crate::fp8::dequantize(self, &e.tensor, bytes)?,
            // MXFP6 (E2M3 / E3M2 in 32-blocks) with its E8M0 `_scale` companion (see `crate::mxfp6`).
            HfDtype::Other(ref s) if s == "F6_E2M3" || s == "F6_E3M2" => crate::mxfp6::dequantize(self, &e.tensor, bytes)?,
            ref other => {
                return Err(ModelError::UnsupportedDtype {
                    path: self.shards[e.shard].path.clone(),
                    tensor: name.to_string(),
                    dtype: other.name().to_string(),
                })
            }
        })
    }
}

fn shards_path(shards: &[Shard], i: usize) -> &Path {
    shards.get(i).map(|s| s.path.as_path()).unwrap_or(Path::new("?"))
}

fn load_chat_template(dir: &Path, tokenizer_config: Option<&Value>) -> Result<Option<String>, ModelError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let t = std::fs::read_to_string(&jinja).map_err(|source| ModelError::Io { path: jinja.clone(), source })?;
        return Ok(Some(t));
    }
    Ok(match tokenizer_config.and_then(|c| c.get("chat_template")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    })
}
