//! GGUF files: `GgufFile` (a validated, memory-mapped file with zero-copy tensor views) and
//! `GgufWriter` (streaming writer for tests and the quantizer).
//!
//! Invariant: a `GgufFile` only exists after the whole header was validated (see `reader.rs`),
//! so `tensor_data` of any of its own `TensorInfo`s is an in-bounds slice of the map.
//! Metadata keeps file order and exact value types, so `GgufWriter::from_file` + the original
//! tensor data reproduces the file byte for byte (tested on a real llama.cpp file).
//!
//! Modelled on ggml's `docs/gguf.md`, `ggml/src/gguf.cpp` and gguf-py's `GGUFReader`/`GGUFWriter`.

mod reader;
mod value;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rocmforge_quant::GgmlType;

use crate::ModelError;

pub use reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
pub use value::{GgufArray, GgufValue};
pub use writer::GgufWriter;

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `ne0` (the contiguous dimension) first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Relative to the start of the data section; a multiple of the alignment.
    pub offset: u64,
    /// Bytes of data (`row_bytes(ne0) * ne1 * ne2 * ...`).
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Product of the dims (validated not to overflow for tensors of a `GgufFile`).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }
}

/// The bytes behind a `GgufFile`: a read-only map of the file, or a buffer (tests, fuzzing).
enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Map `path` read-only, parse and validate it.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, ModelError> {
        let path = path.as_ref();
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to this struct. Like every mmap-based model
        // loader (llama.cpp, safetensors) we rely on model files not being truncated or rewritten
        // while open; all lengths used later were validated against the map's length here.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_storage(path, Storage::Mmap(map))
    }

    /// Parse and validate a file held in memory; `path_for_errors` names it in errors.
    pub fn from_bytes(path_for_errors: &Path, bytes: Vec<u8>) -> Result<GgufFile, ModelError> {
        Self::from_storage(path_for_errors, Storage::Owned(bytes))
    }

    fn from_storage(path: &Path, storage: Storage) -> Result<GgufFile, ModelError> {
        let p = reader::parse(path, storage.bytes())?;
        let key_index = p.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = p.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            storage,
            version: p.version,
            alignment: p.alignment,
            data_offset: p.data_offset,
            metadata: p.metadata,
            key_index,
            tensors: p.tensors,
            tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingKey { path: self.path.clone(), key: key.to_string() }
    }

    fn wrong(&self, key: &str, v: &GgufValue, want: &'static str) -> ModelError {
        ModelError::WrongType { path: self.path.clone(), key: key.to_string(), got: v.type_name(), want }
    }

    /// A non-negative integer of any integer type.
    pub fn get_u64(&self, key: &str) -> Result<u64, ModelError> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    /// Any number.
    pub fn get_f64(&self, key: &str) -> Result<f64, ModelError> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, ModelError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, ModelError> {
        self.opt_bool(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn get_array(&self, key: &str) -> Result<&GgufArray, ModelError> {
        match self.get(key) {
            None => Err(self.missing(key)),
            Some(v) => v.as_array().ok_or_else(|| self.wrong(key, v, "array")),
        }
    }

    /// `Ok(None)` if absent; `WrongType` if present but not a non-negative integer.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.wrong(key, v, "non-negative integer")),
        }
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(key, v, "number")),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong(key, v, "string")),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong(key, v, "bool")),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, ModelError> {
        self.get_str("general.architecture")
    }

    /// The tensor table in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes, without copying. Ranges of this file's own tensors were validated at
    /// open; a `TensorInfo` that does not fit this file yields an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| Some(s..s.checked_add(t.n_bytes)?))
            .and_then(|r| Some(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?));
        range.and_then(|r| self.storage.bytes().get(r)).unwrap_or(&[])
    }

    /// `tensor_data` by name.
    pub fn tensor_data_by_name(&self, name: &str) -> Option<&[u8]> {
        self.tensor(name).map(|t| self.tensor_data(t))
    }

    /// Type of a tensor, if present (a shorthand for loaders).
    pub fn tensor_type(&self, name: &str) -> Option<GgmlType> {
        self.tensor(name).map(|t| t.ty)
    }
}
