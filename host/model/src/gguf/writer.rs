//! The GGUF writer: metadata and tensor infos first, then tensor data streamed one tensor at a
//! time, so a quantizer never needs more than one tensor in memory.
//!
//! Layout convention (the same as llama.cpp's `gguf.cpp` and gguf-py's `GGUFWriter`, checked by
//! the round-trip test on a real llama.cpp file): no padding between metadata entries or tensor
//! infos; zero padding after the tensor infos up to the alignment; each tensor's data is followed
//! by zero padding up to the alignment, the last one included. Tensor offsets are assigned in
//! insertion order at write time, using the alignment in force then (`general.alignment` or 32).
//!
//! Usage:
//! ```ignore
//! let mut w = GgufWriter::new();
//! w.set("general.architecture", GgufValue::Str("llama".into()));
//! let i = w.add_tensor_info("token_embd.weight", vec![64, 100], GgmlType::F32)?;
//! w.write_header(&mut out)?;
//! w.write_tensor_data(&mut out, i, &bytes)?;   // every tensor, in order
//! ```

use std::cell::Cell;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use rocmforge_quant::GgmlType;

use super::reader::{align_up, tensor_n_bytes, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH};
use super::value::{GgufArray, GgufValue};
use super::{GgufFile, TensorInfo};
use crate::ModelError;

/// The path named in errors of writes that have no file of their own (`write_header` to any `Write`).
const NO_PATH: &str = "<gguf output>";

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    n_bytes: u64,
}

/// Builds a GGUF file. See the module docs for the layout and the calling order.
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
    names: HashSet<String>,
    /// Index of the next tensor `write_tensor_data` expects (reset by `write_header`).
    next_tensor: Cell<usize>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty GGUF v3 file.
    pub fn new() -> Self {
        GgufWriter { version: 3, metadata: Vec::new(), tensors: Vec::new(), names: HashSet::new(), next_tensor: Cell::new(0) }
    }

    /// A writer holding `f`'s version, metadata (in file order) and tensor infos (in file order);
    /// writing it with `f`'s tensor data reproduces `f` when `f` was laid out in info order.
    pub fn from_file(f: &GgufFile) -> Result<Self, ModelError> {
        let mut w = Self::new();
        w.set_version(f.version())?;
        w.copy_metadata_from(f);
        for t in f.tensors() {
            w.add_tensor_info(t.name.clone(), t.dims.clone(), t.ty)?;
        }
        Ok(w)
    }

    /// Write GGUF version 2 or 3 (identical for everything we write).
    pub fn set_version(&mut self, version: u32) -> Result<(), ModelError> {
        if version != 2 && version != 3 {
            return Err(ModelError::UnsupportedVersion { path: PathBuf::from(NO_PATH), version });
        }
        self.version = version;
        Ok(())
    }

    /// Set a metadata entry. A new key goes to the end; an existing key keeps its position.
    pub fn set(&mut self, key: impl Into<String>, v: GgufValue) {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = v,
            None => self.metadata.push((key, v)),
        }
    }

    /// Remove a metadata entry, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<GgufValue> {
        let i = self.metadata.iter().position(|(k, _)| k == key)?;
        Some(self.metadata.remove(i).1)
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// Copy every metadata entry of `f`, in file order (existing keys are replaced in place).
    pub fn copy_metadata_from(&mut self, f: &GgufFile) {
        for (k, v) in f.metadata() {
            self.set(k.clone(), v.clone());
        }
    }

    /// The alignment the file will be written with: `general.alignment` if set, else 32.
    pub fn alignment(&self) -> Result<u64, ModelError> {
        match self.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => Ok(a),
                _ => Err(ModelError::Malformed {
                    path: PathBuf::from(NO_PATH),
                    what: format!("general.alignment must be a nonzero power of two, got {v:?}"),
                }),
            },
        }
    }

    /// Declare a tensor (dims in GGUF order, `ne0` first). Returns its index for
    /// `write_tensor_data`. Checks the name is new and the shape is valid for `ty`.
    pub fn add_tensor_info(&mut self, name: impl Into<String>, dims: Vec<u64>, ty: GgmlType) -> Result<usize, ModelError> {
        let name = name.into();
        let bad = |what: String| ModelError::BadTensor { path: PathBuf::from(NO_PATH), tensor: name.clone(), what };
        if self.names.contains(&name) {
            return Err(bad("duplicate tensor name".into()));
        }
        let n_bytes = tensor_n_bytes(&dims, ty).map_err(bad)?;
        self.names.insert(name.clone());
        self.tensors.push(PendingTensor { name, dims, ty, n_bytes });
        Ok(self.tensors.len() - 1)
    }

    /// Number of tensors declared so far.
    pub fn n_tensors(&self) -> usize {
        self.tensors.len()
    }

    /// The tensor table as it will be written (offsets relative to the data section).
    pub fn tensor_infos(&self) -> Result<Vec<TensorInfo>, ModelError> {
        let align = self.alignment()?;
        let mut offset = 0u64;
        let mut out = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            out.push(TensorInfo { name: t.name.clone(), dims: t.dims.clone(), ty: t.ty, offset, n_bytes: t.n_bytes });
            offset = align_up(t.n_bytes, align).and_then(|n| offset.checked_add(n)).ok_or_else(|| ModelError::BadTensor {
                path: PathBuf::from(NO_PATH),
                tensor: t.name.clone(),
                what: "data section size overflows".into(),
            })?;
        }
        Ok(out)
    }

    /// Write magic, version, counts, metadata, tensor infos and the padding up to the data
    /// section. Afterwards call `write_tensor_data` for every tensor in index order.
    pub fn write_header<W: Write>(&self, w: &mut W) -> Result<(), ModelError> {
        self.write_header_named(w, Path::new(NO_PATH))
    }

    /// Write tensor `idx`'s data (exactly its `n_bytes`) and the padding after it.
    pub fn write_tensor_data<W: Write>(&self, w: &mut W, idx: usize, bytes: &[u8]) -> Result<(), ModelError> {
        self.write_tensor_data_named(w, idx, bytes, Path::new(NO_PATH))
    }

    /// Write the whole file to `w`, asking `data(i)` for tensor `i`'s bytes one at a time.
    pub fn write_to<W, F, B>(&self, w: &mut W, data: F) -> Result<(), ModelError>
    where
        W: Write,
        F: FnMut(usize) -> Result<B, ModelError>,
        B: AsRef<[u8]>,
    {
        self.write_all_named(w, data, Path::new(NO_PATH))
    }

    /// The whole file in memory (tests, fuzz seeds, tiny models).
    pub fn to_bytes<F, B>(&self, data: F) -> Result<Vec<u8>, ModelError>
    where
        F: FnMut(usize) -> Result<B, ModelError>,
        B: AsRef<[u8]>,
    {
        let mut out = Vec::new();
        self.write_to(&mut out, data)?;
        Ok(out)
    }

    /// Write the whole file to `path`. The bytes go to `<path>.partial` first, which is renamed
    /// to `path` only when everything was written, so an interrupted run leaves no valid-looking
    /// truncated model behind.
    pub fn write_file<F, B>(&self, path: impl AsRef<Path>, data: F) -> Result<(), ModelError>
    where
        F: FnMut(usize) -> Result<B, ModelError>,
        B: AsRef<[u8]>,
    {
        let path = path.as_ref();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::create(&tmp).map_err(|source| ModelError::Io { path: tmp.clone(), source })?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let result = self.write_all_named(&mut w, data, path).and_then(|()| {
            let file = w.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)
        });
        match result {
            Ok(()) => std::fs::rename(&tmp, path).map_err(io),
            Err(e) => {
                // Best effort: the error that matters is the one already in hand.
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn write_all_named<W, F, B>(&self, w: &mut W, mut data: F, path: &Path) -> Result<(), ModelError>
    where
        W: Write,
        F: FnMut(usize) -> Result<B, ModelError>,
        B: AsRef<[u8]>,
    {
        self.write_header_named(w, path)?;
        for i in 0..self.tensors.len() {
            let bytes = data(i)?;
            self.write_tensor_data_named(w, i, bytes.as_ref(), path)?;
        }
        w.flush().map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
    }

    fn write_header_named<W: Write>(&self, w: &mut W, path: &Path) -> Result<(), ModelError> {
        let align = self.alignment()?;
        let infos = self.tensor_infos()?;
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(&GGUF_MAGIC);
        buf.extend_from_slice(&self.version.to_le_bytes());
        buf.extend_from_slice(&(infos.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut buf, k);
            buf.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut buf, v)
                .map_err(|what| ModelError::Malformed { path: path.to_path_buf(), what: format!("metadata '{k}': {what}") })?;
        }
        for t in &infos {
            put_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                buf.extend_from_slice(&d.to_le_bytes());
            }
            buf.extend_from_slice(&t.ty.id().to_le_bytes());
            buf.extend_from_slice(&t.offset.to_le_bytes());
        }
        let pad = align_up(buf.len() as u64, align).unwrap_or(buf.len() as u64) - buf.len() as u64;
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        w.write_all(&buf).map_err(io)?;
        write_zeros(w, pad).map_err(io)?;
        self.next_tensor.set(0);
        Ok(())
    }

    fn write_tensor_data_named<W: Write>(&self, w: &mut W, idx: usize, bytes: &[u8], path: &Path) -> Result<(), ModelError> {
        let bad = |tensor: String, what: String| ModelError::BadTensor { path: path.to_path_buf(), tensor, what };
        let Some(t) = self.tensors.get(idx) else {
            return Err(bad(format!("#{idx}"), format!("no such tensor (only {} declared)", self.tensors.len())));
        };
        if idx != self.next_tensor.get() {
            return Err(bad(
                t.name.clone(),
                format!("tensor data written out of order: expected tensor #{}, got #{idx}", self.next_tensor.get()),
            ));
        }
        if bytes.len() as u64 != t.n_bytes {
            return Err(bad(t.name.clone(), format!("{} bytes of data given, {:?} as {} needs {}", bytes.len(), t.dims, t.ty, t.n_bytes)));
        }
        let align = self.alignment()?;
        let pad = align_up(t.n_bytes, align).unwrap_or(t.n_bytes) - t.n_bytes;
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        w.write_all(bytes).map_err(io)?;
        write_zeros(w, pad).map_err(io)?;
        self.next_tensor.set(idx + 1);
        Ok(())
    }
}

/// `n` zero bytes, in chunks (an absurd but legal alignment must not allocate gigabytes).
fn write_zeros<W: Write>(w: &mut W, mut n: u64) -> std::io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &GgufValue) -> Result<(), String> {
    match v {
        GgufValue::U8(x) => buf.push(*x),
        GgufValue::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => buf.push(u8::from(*x)),
        GgufValue::Str(s) => put_str(buf, s),
        GgufValue::Array(a) => put_array(buf, a, 1)?,
        GgufValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
    }
    Ok(())
}

fn put_array(buf: &mut Vec<u8>, a: &GgufArray, depth: u32) -> Result<(), String> {
    // The reader rejects deeper nesting, so the writer must never produce it.
    if depth > MAX_ARRAY_DEPTH {
        return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels"));
    }
    buf.extend_from_slice(&a.elem_type_id().to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        GgufArray::U8(v) => buf.extend_from_slice(v),
        GgufArray::I8(v) => le!(v),
        GgufArray::U16(v) => le!(v),
        GgufArray::I16(v) => le!(v),
        GgufArray::U32(v) => le!(v),
        GgufArray::I32(v) => le!(v),
        GgufArray::F32(v) => le!(v),
        GgufArray::U64(v) => le!(v),
        GgufArray::I64(v) => le!(v),
        GgufArray::F64(v) => le!(v),
        GgufArray::Bool(v) => buf.extend(v.iter().map(|&b| u8::from(b))),
        GgufArray::Str(v) => {
            for s in v {
                put_str(buf, s);
            }
        }
        GgufArray::Array(v) => {
            for inner in v {
                put_array(buf, inner, depth + 1)?;
            }
        }
    }
    Ok(())
}
