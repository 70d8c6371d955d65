//! PyTorch `.bin` checkpoints (`pytorch_model.bin`, `pytorch_model-0000k-of-0000n.bin`) read
//! without running any of their code.
//!
//! Since torch 1.6, `torch.save` writes a zip archive whose entries all sit under one folder
//! named after the file (`<name>/`):
//!
//! ```text
//! <name>/data.pkl        the pickled object: a state dict {name: tensor}, tensors as
//!                        `_rebuild_tensor_v2(storage, offset, size, stride, ...)` over storages
//!                        named by persistent ids ('storage', FloatStorage, key, location, numel)
//! <name>/data/<key>      one storage's raw bytes, stored (never compressed), 64-byte aligned
//! <name>/byteorder       "little" or "big" (absent in files from torch < 1.10: little)
//! <name>/version, .format_version, .storage_alignment, .data/serialization_id   (not needed)
//! ```
//!
//! `data.pkl` goes through the restricted unpickler of [`pickle`] (an allow-list of globals;
//! anything else is refused by name). Each tensor is then checked against its storage record:
//! the record holds exactly `numel` elements of the storage's type, and every element the view
//! reaches (`offset + Σ (size_k - 1) * stride_k`) lies inside it, all in checked arithmetic. A
//! contiguous little-endian tensor is a byte range of the file (zero-copy over the caller's
//! map); a strided one (a transposed weight, a column slice, an expanded row) or one of a
//! big-endian file is copied out row-major at parse time. Copies are bounded by
//! [`copy_budget`] (twice the file, plus 16 MiB), so a small file cannot ask for gigabytes
//! through stride-0 dimensions.
//!
//! The legacy format of torch < 1.6 (a bare pickle stream, or a tar archive before that) is
//! refused with a message saying how to convert it.
//!
//! Modelled on torch's `torch/serialization.py` (`_save`, `_load`) and `caffe2/serialize/
//! inline_container.cc` (`PyTorchStreamReader`: the archive folder is the first entry's).

pub mod pickle;

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use crate::hf::HfTensor;
use crate::ModelError;
pub use pickle::{load_state_dict, StorageKind, StorageRef, TensorSpec, TorchDtype};

/// Largest `data.pkl` accepted. A state dict costs ~150-250 bytes per tensor, so this is
/// ~300k tensors; the unpickler's own value budget (`pickle::MAX_VALUES`) binds first.
pub const MAX_PICKLE_LEN: u64 = 64 << 20;

/// Where a tensor's bytes are: a range of the checkpoint file (contiguous little-endian
/// tensors), or a row-major little-endian copy made at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorchData {
    Mapped(Range<u64>),
    Owned(Vec<u8>),
}

/// One tensor of a checkpoint: name, safetensors dtype, shape (outermost first) and its
/// row-major little-endian bytes (`n_elements * dtype bits / 8` of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor {
    pub tensor: HfTensor,
    pub data: TorchData,
}

impl TorchTensor {
    /// The tensor's bytes, given the bytes of the file it was parsed from.
    pub fn bytes<'a>(&'a self, file: &'a [u8]) -> Option<&'a [u8]> {
        match &self.data {
            TorchData::Mapped(r) => file.get(usize::try_from(r.start).ok()?..usize::try_from(r.end).ok()?),
            TorchData::Owned(v) => Some(v),
        }
    }
}

/// Bytes that strided or byte-swapped tensors of a file of `file_len` bytes may copy in all.
pub fn copy_budget(file_len: u64) -> u64 {
    file_len.saturating_mul(2).saturating_add(16 << 20)
}

/// Parse a whole `torch.save` checkpoint held in `bytes`: its state dict's tensors, in the
/// dict's order.
pub fn parse_torch_bin(path: &Path, bytes: &[u8]) -> Result<Vec<TorchTensor>, ModelError> {
    let malformed = |what: String| ModelError::Malformed { path: path.to_path_buf(), what };
    if !bytes.starts_with(b"PK\x03\x04") {
        return Err(malformed(not_zip_reason(bytes)));
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| malformed(format!("not a readable zip archive: {e}")))?;

    // Every record sits under the first entry's folder (PyTorchStreamReader does the same).
    let first = zip.name_for_index(0).unwrap_or_default();
    let Some(slash) = first.find('/') else {
        return Err(malformed(format!("zip entry '{first}' is not inside a folder, as torch.save writes them")));
    };
    let prefix = first[..=slash].to_string();
    let mut records: HashMap<String, usize> = HashMap::new();
    for i in 0..zip.len() {
        if let Some(rest) = zip.name_for_index(i).and_then(|n| n.strip_prefix(prefix.as_str())) {
            records.entry(rest.to_string()).or_insert(i);
        }
    }
    let mut record = |name: &str| -> Result<Option<Range<usize>>, ModelError> {
        let Some(&i) = records.get(name) else { return Ok(None) };
        let f = zip.by_index_raw(i).map_err(|e| malformed(format!("zip record '{prefix}{name}': {e}")))?;
        if f.compression() != zip::CompressionMethod::Stored || f.encrypted() {
            return Err(malformed(format!(
                "zip record '{prefix}{name}' is compressed or encrypted (torch.save stores records as they are)"
            )));
        }
        let (start, len) = (f.data_start().unwrap_or(u64::MAX), f.compressed_size());
        if f.size() != len {
            return Err(malformed(format!("zip record '{prefix}{name}' has stored size {len} but size {}", f.size())));
        }
        match start.checked_add(len).filter(|&end| end <= bytes.len() as u64) {
            // Both fit in the slice's length, so in usize.
            Some(end) => Ok(Some(start as usize..end as usize)),
            None => Err(ModelError::Truncated {
                path: path.to_path_buf(),
                offset: start.min(bytes.len() as u64),
                what: format!("zip record '{prefix}{name}' of {len} bytes"),
            }),
        }
    };

    let big_endian = match record("byteorder")? {
        None => false,
        Some(r) => match &bytes[r] {
            b"little" => false,
            b"big" => true,
            other => return Err(malformed(format!("byteorder record is {:?}, not \"little\" or \"big\"", String::from_utf8_lossy(other)))),
        },
    };
    let pkl = record("data.pkl")?.ok_or_else(|| malformed(format!("no '{prefix}data.pkl' in the archive: not a torch.save checkpoint")))?;
    if pkl.len() as u64 > MAX_PICKLE_LEN {
        return Err(malformed(format!("data.pkl is {} bytes, more than the {MAX_PICKLE_LEN} accepted", pkl.len())));
    }
    let specs = load_state_dict(path, &bytes[pkl])?;

    // Each storage once: its record, checked against the persistent id that named it first.
    let mut storages: HashMap<String, (StorageRef, Range<usize>)> = HashMap::new();
    let mut budget = copy_budget(bytes.len() as u64);
    let mut out = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let bad = |what: String| ModelError::BadTensor { path: path.to_path_buf(), tensor: name.clone(), what };
        let range = match storages.get(&spec.storage.key) {
            Some((first, range)) => {
                if first.kind != spec.storage.kind || first.numel != spec.storage.numel {
                    return Err(bad(format!(
                        "storage '{}' is named as {:?} x {} and as {:?} x {}",
                        first.key, first.kind, first.numel, spec.storage.kind, spec.storage.numel
                    )));
                }
                range.clone()
            }
            None => {
                let key = &spec.storage.key;
                let range = record(&format!("data/{key}"))?.ok_or_else(|| bad(format!("storage record 'data/{key}' is missing")))?;
                let want = spec.storage.numel.checked_mul(spec.storage.kind.element_size());
                if want != Some(range.len() as u64) {
                    return Err(bad(format!(
                        "storage 'data/{key}' has {} bytes, its persistent id says {} x {:?}",
                        range.len(),
                        spec.storage.numel,
                        spec.storage.kind
                    )));
                }
                storages.insert(key.clone(), (spec.storage.clone(), range.clone()));
                range
            }
        };
        let data = view(&spec, &bytes[range.clone()], range.start as u64, big_endian, &mut budget).map_err(bad)?;
        let tensor = HfTensor { name: name.clone(), dtype: spec.dtype.hf(), shape: spec.shape.clone() };
        out.push(TorchTensor { tensor, data });
    }
    Ok(out)
}

/// Why `bytes` is not a torch.save zip, in words a user can act on.
fn not_zip_reason(bytes: &[u8]) -> String {
    const CONVERT: &str =
        "re-save it with torch >= 1.6 (torch.save(torch.load(f), f) in a trusted environment) or convert it to safetensors";
    if bytes.first() == Some(&0x80) {
        format!("a legacy PyTorch checkpoint (the pickle-stream format of torch < 1.6), which is not supported: {CONVERT}")
    } else if bytes.get(257..262) == Some(b"ustar") {
        format!("a legacy PyTorch checkpoint (the tar format of torch < 0.4), which is not supported: {CONVERT}")
    } else {
        "not a PyTorch checkpoint: torch.save's format is a zip archive (starting with \"PK\\x03\\x04\")".to_string()
    }
}

/// The tensor's bytes inside its storage record `storage` (which starts at `file_offset`):
/// checked, and either a range of the file or a row-major copy.
fn view(spec: &TensorSpec, storage: &[u8], file_offset: u64, big_endian: bool, budget: &mut u64) -> Result<TorchData, String> {
    let es = spec.dtype.size();
    let overflow = || format!("shape {:?} strides {:?} offset {} overflow", spec.shape, spec.strides, spec.offset);
    let n = spec.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(overflow)?;
    let n_bytes = n.checked_mul(es).ok_or_else(overflow)?;
    if n == 0 {
        return Ok(TorchData::Owned(Vec::new()));
    }
    // Last element reached, in elements of dtype; it must end inside the storage.
    let last = spec
        .shape
        .iter()
        .zip(&spec.strides)
        .try_fold(spec.offset, |a, (&d, &s)| (d - 1).checked_mul(s).and_then(|x| a.checked_add(x)))
        .ok_or_else(overflow)?;
    let end = last.checked_add(1).and_then(|x| x.checked_mul(es)).ok_or_else(overflow)?;
    if end > storage.len() as u64 {
        return Err(format!(
            "view (offset {}, shape {:?}, strides {:?}) of {:?} reaches byte {end} of a {}-byte storage",
            spec.offset,
            spec.shape,
            spec.strides,
            spec.dtype,
            storage.len()
        ));
    }
    let start = spec.offset * es; // <= end, so no overflow
    if is_contiguous(&spec.shape, &spec.strides) && !big_endian {
        return Ok(TorchData::Mapped(file_offset + start..file_offset + start + n_bytes));
    }
    if n_bytes > *budget {
        return Err(format!(
            "a strided or byte-swapped copy of {n_bytes} bytes exceeds what is left of the file's copy budget ({} bytes)",
            *budget
        ));
    }
    *budget -= n_bytes;
    let mut out = Vec::with_capacity(n_bytes as usize);
    // Bounds were checked above for the last element, and every other element lies below it.
    strided_copy(storage, es as usize, spec.offset as usize, &spec.shape, &spec.strides, &mut out);
    if big_endian {
        let unit = spec.dtype.swap_unit() as usize;
        if unit > 1 {
            out.chunks_exact_mut(unit).for_each(|c| c.reverse());
        }
    }
    Ok(TorchData::Owned(out))
}

/// Row-major strides for `shape`: dims of size 1 may have any stride (torch does not normalise
/// them), so they are skipped.
fn is_contiguous(shape: &[u64], strides: &[u64]) -> bool {
    let mut want = 1u64;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d != 1 {
            if s != want {
                return false;
            }
            want = want.saturating_mul(d);
        }
    }
    true
}

/// Append the elements of a strided view in row-major order; a unit-stride innermost dim is
/// copied as one run. The caller has checked that every element is inside `storage`.
fn strided_copy(storage: &[u8], es: usize, offset: usize, shape: &[u64], strides: &[u64], out: &mut Vec<u8>) {
    let rank = shape.len();
    if rank == 0 {
        out.extend_from_slice(&storage[offset * es..(offset + 1) * es]);
        return;
    }
    let (inner, inner_stride) = (shape[rank - 1] as usize, strides[rank - 1] as usize);
    let outer = &shape[..rank - 1];
    let mut idx = vec![0u64; outer.len()];
    loop {
        let base = offset + idx.iter().zip(strides).map(|(&i, &s)| (i * s) as usize).sum::<usize>();
        if inner_stride == 1 {
            out.extend_from_slice(&storage[base * es..(base + inner) * es]);
        } else {
            for j in 0..inner {
                let e = base + j * inner_stride;
                out.extend_from_slice(&storage[e * es..(e + 1) * es]);
            }
        }
        // Odometer over the outer dims, last fastest.
        let mut k = outer.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < outer[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}
