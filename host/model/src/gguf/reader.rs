//! The GGUF header parser: bytes in, validated metadata and tensor table out.
//!
//! The file is untrusted. Invariants the parser establishes before anything else sees the data:
//! - every read is bounds-checked and a short file is `Truncated { offset, what }`;
//! - nothing is allocated from a header count before checking that `count * min_encoded_size`
//!   fits in the bytes that remain (so a 40-byte file cannot ask for 2^60 strings);
//! - strings are UTF-8, keys are unique, arrays nest at most `MAX_ARRAY_DEPTH` deep;
//! - `general.alignment` is a nonzero power of two; the data section starts at the first multiple
//!   of it after the tensor infos;
//! - every tensor has a known type, at most `MAX_DIMS` dims, a row length that is a whole number
//!   of blocks, a byte size without overflow, an aligned offset, a data range inside the file,
//!   a unique name, and no overlap with another tensor.
//!
//! Layout (little endian), as in ggml's `docs/gguf.md` and `ggml/src/gguf.cpp`:
//! ```text
//! "GGUF" | u32 version | u64 n_tensors | u64 n_kv | kv* | tensor_info* | pad | data section
//! kv          = string key | u32 type | value
//! value array = u32 elem type | u64 count | value*          (elements may be arrays again)
//! tensor_info = string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset
//! string      = u64 len | bytes
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rocmforge_quant::GgmlType;

use super::value::{min_encoded_size, type_id, type_id_name, GgufArray, GgufValue};
use super::TensorInfo;
use crate::ModelError;

/// Deepest array nesting accepted (an array of arrays is depth 2).
pub const MAX_ARRAY_DEPTH: u32 = 8;
/// Most dimensions a tensor may have (ggml uses 4; we accept up to 8).
pub const MAX_DIMS: u32 = 8;
/// Alignment of the data section and of every tensor offset when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// `"GGUF"` as it appears at the start of the file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// A parsed and validated header.
pub(crate) struct Parsed {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<TensorInfo>,
}

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn truncated(&self, what: impl Into<String>) -> ModelError {
        ModelError::Truncated { path: self.path.to_path_buf(), offset: self.pos as u64, what: what.into() }
    }

    fn malformed(&self, what: impl Into<String>) -> ModelError {
        ModelError::Malformed { path: self.path.to_path_buf(), what: what.into() }
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], ModelError> {
        if n > self.remaining() {
            return Err(self.truncated(what()));
        }
        let start = self.pos;
        self.pos += n as usize; // n <= remaining, so it fits in usize
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], ModelError> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, ModelError> {
        let start = self.pos;
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() {
            return Err(self.truncated(format!("{} ({len} bytes)", what())));
        }
        let raw = self.take(len, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.malformed(format!(
                "{} at byte {start} is not valid UTF-8 (invalid byte at position {} of the string)",
                what(),
                e.valid_up_to()
            ))),
        }
    }

    /// Reject `count` elements of `elem_type` that cannot fit in what is left of the file.
    fn check_count(&self, count: u64, elem_type: u32, what: &dyn Fn() -> String) -> Result<(), ModelError> {
        let min = min_encoded_size(elem_type).unwrap_or(1);
        match count.checked_mul(min) {
            Some(need) if need <= self.remaining() => Ok(()),
            _ => Err(self.malformed(format!(
                "{}: {count} elements of type {} cannot fit: they need at least {} bytes, only {} remain at byte {}",
                what(),
                type_id_name(elem_type).unwrap_or("?"),
                count.saturating_mul(min),
                self.remaining(),
                self.pos
            ))),
        }
    }

    /// `count` fixed-size little-endian elements, converted with `conv`.
    fn fixed<T, const N: usize>(&mut self, count: u64, what: &dyn Fn() -> String, conv: fn([u8; N]) -> T) -> Result<Vec<T>, ModelError> {
        // check_count ran before, so count * N <= remaining <= usize::MAX.
        let raw = self.take(count * N as u64, what)?;
        Ok(raw
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                conv(a)
            })
            .collect())
    }

    fn bools(&mut self, count: u64, what: &dyn Fn() -> String) -> Result<Vec<bool>, ModelError> {
        let start = self.pos;
        let raw = self.take(count, what)?;
        raw.iter()
            .enumerate()
            .map(|(i, &b)| match b {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(self.malformed(format!("{} at byte {}: bool must be 0 or 1, got {b}", what(), start + i))),
            })
            .collect()
    }

    fn value(&mut self, ty: u32, what: &dyn Fn() -> String) -> Result<GgufValue, ModelError> {
        Ok(match ty {
            type_id::U8 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            type_id::I8 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            type_id::U16 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            type_id::I16 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            type_id::U32 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            type_id::I32 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            type_id::F32 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            type_id::BOOL => {
                let b = self.bools(1, what)?;
                GgufValue::Bool(b.first().copied().unwrap_or(false))
            }
            type_id::STRING => GgufValue::Str(self.string(what)?),
            type_id::ARRAY => GgufValue::Array(self.array_value(1, what)?),
            type_id::U64 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            type_id::I64 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            type_id::F64 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.malformed(format!("{}: unknown value type {other} at byte {}", what(), self.pos.saturating_sub(4)))),
        })
    }

    /// An array body (element type, count, elements); `depth` is 1 for a top-level array.
    fn array_value(&mut self, depth: u32, what: &dyn Fn() -> String) -> Result<GgufArray, ModelError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.malformed(format!("{}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels at byte {}", what(), self.pos)));
        }
        let ty_pos = self.pos;
        let ty = self.u32(&|| format!("array element type of {}", what()))?;
        let count = self.u64(&|| format!("array length of {}", what()))?;
        if type_id_name(ty).is_none() {
            return Err(self.malformed(format!("{}: unknown array element type {ty} at byte {ty_pos}", what())));
        }
        self.check_count(count, ty, what)?;
        Ok(match ty {
            type_id::U8 => GgufArray::U8(self.fixed(count, what, u8::from_le_bytes)?),
            type_id::I8 => GgufArray::I8(self.fixed(count, what, i8::from_le_bytes)?),
            type_id::U16 => GgufArray::U16(self.fixed(count, what, u16::from_le_bytes)?),
            type_id::I16 => GgufArray::I16(self.fixed(count, what, i16::from_le_bytes)?),
            type_id::U32 => GgufArray::U32(self.fixed(count, what, u32::from_le_bytes)?),
            type_id::I32 => GgufArray::I32(self.fixed(count, what, i32::from_le_bytes)?),
            type_id::F32 => GgufArray::F32(self.fixed(count, what, f32::from_le_bytes)?),
            type_id::U64 => GgufArray::U64(self.fixed(count, what, u64::from_le_bytes)?),
            type_id::I64 => GgufArray::I64(self.fixed(count, what, i64::from_le_bytes)?),
            type_id::F64 => GgufArray::F64(self.fixed(count, what, f64::from_le_bytes)?),
            type_id::BOOL => GgufArray::Bool(self.bools(count, what)?),
            type_id::STRING => {
                // count * 8 <= remaining was checked, so this capacity is bounded by the file size.
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    v.push(self.string(what)?);
                }
                GgufArray::Str(v)
            }
            _ => {
                // type_id::ARRAY: count * 12 <= remaining was checked.
                let mut v = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    v.push(self.array_value(depth + 1, what)?);
                }
                GgufArray::Array(v)
            }
        })
    }
}

/// Round `x` up to a multiple of the power of two `align`, or `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// Byte size of a tensor: a whole number of blocks per row (`dims[0]`) times the other dims.
/// Returns a message on failure (so the reader and the writer word errors alike).
pub(crate) fn tensor_n_bytes(dims: &[u64], ty: GgmlType) -> Result<u64, String> {
    if dims.len() > MAX_DIMS as usize {
        return Err(format!("{} dims, at most {MAX_DIMS} are supported", dims.len()));
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| format!("element count of dims {dims:?} overflows"))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    let bs = ty.block_size() as u64;
    if ne0 % bs != 0 {
        return Err(format!("row length {ne0} (dims {dims:?}) is not a multiple of the {} block size {bs}", ty.name()));
    }
    // n_elements did not overflow, so rows * row_bytes is at most n_elements * type_size.
    let rows = n_elements.checked_div(ne0).unwrap_or(0);
    ty.row_bytes(ne0).and_then(|rb| rb.checked_mul(rows)).ok_or_else(|| format!("byte size of dims {dims:?} as {} overflows", ty.name()))
}

/// Parse and validate a whole GGUF file held in `bytes`.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed, ModelError> {
    let mut c = Cursor { path, bytes, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(ModelError::BadMagic { path: path.to_path_buf(), magic });
    }
    let version = c.u32(&|| "version".into())?;
    if version != 2 && version != 3 {
        return Err(ModelError::UnsupportedVersion { path: path.to_path_buf(), version });
    }
    let n_tensors = c.u64(&|| "tensor count".into())?;
    let n_kv = c.u64(&|| "metadata key/value count".into())?;
    // Smallest encodings: a kv is key length + type + a 1-byte value; a tensor info is name
    // length + n_dims + type + offset.
    if n_kv.checked_mul(8 + 4 + 1).is_none_or(|n| n > c.remaining()) {
        return Err(c.malformed(format!("{n_kv} metadata entries cannot fit in the {} bytes of the file", bytes.len())));
    }
    if n_tensors.checked_mul(8 + 4 + 4 + 8).is_none_or(|n| n > c.remaining()) {
        return Err(c.malformed(format!("{n_tensors} tensor infos cannot fit in the {} bytes of the file", bytes.len())));
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key_pos = c.pos;
        let key = c.string(&|| format!("key of metadata entry #{i}"))?;
        let ty = c.u32(&|| format!("value type of '{key}'"))?;
        let value = c.value(ty, &|| format!("value of '{key}'"))?;
        if !keys.insert(key.clone()) {
            return Err(c.malformed(format!("duplicate metadata key '{key}' at byte {key_pos}")));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => return Err(c.malformed(format!("general.alignment must be a nonzero power of two, got {v:?}"))),
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor info #{i}"))?;
        let bad = |what: String| ModelError::BadTensor { path: path.to_path_buf(), tensor: name.clone(), what };
        let n_dims = c.u32(&|| format!("n_dims of tensor '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(bad(format!("{n_dims} dims, at most {MAX_DIMS} are supported")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dim {d} of tensor '{name}'"))?);
        }
        let ty_id = c.u32(&|| format!("type of tensor '{name}'"))?;
        let ty = GgmlType::from_id(ty_id).map_err(|_| bad(format!("unknown tensor type id {ty_id}")))?;
        let offset = c.u64(&|| format!("data offset of tensor '{name}'"))?;
        let n_bytes = tensor_n_bytes(&dims, ty).map_err(&bad)?;
        tensors.push(TensorInfo { name, dims, ty, offset, n_bytes });
    }

    let data_offset = align_up(c.pos as u64, alignment).ok_or_else(|| c.malformed("data section offset overflows"))?;
    validate_tensors(path, bytes.len() as u64, alignment, data_offset, &tensors)?;
    Ok(Parsed { version, alignment, data_offset, metadata, tensors })
}

/// Offsets aligned, ranges inside the file, names unique, no overlaps.
fn validate_tensors(path: &Path, file_len: u64, alignment: u64, data_offset: u64, tensors: &[TensorInfo]) -> Result<(), ModelError> {
    let bad = |t: &TensorInfo, what: String| ModelError::BadTensor { path: path.to_path_buf(), tensor: t.name.clone(), what };
    let mut names: HashMap<&str, ()> = HashMap::with_capacity(tensors.len());
    for t in tensors {
        if names.insert(&t.name, ()).is_some() {
            return Err(bad(t, "duplicate tensor name".into()));
        }
        if t.offset % alignment != 0 {
            return Err(bad(t, format!("offset {} is not a multiple of the alignment {alignment}", t.offset)));
        }
        let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(bad(
                    t,
                    format!("data at bytes {}+{}..+{} lies past the end of the file ({file_len} bytes)", data_offset, t.offset, t.n_bytes),
                ))
            }
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for w in order.windows(2) {
        // Ranges were checked not to overflow above.
        if w[0].offset + w[0].n_bytes > w[1].offset {
            return Err(bad(
                w[1],
                format!(
                    "data at offset {} overlaps tensor '{}' ({} bytes at offset {})",
                    w[1].offset, w[0].name, w[0].n_bytes, w[0].offset
                ),
            ));
        }
    }
    Ok(())
}
