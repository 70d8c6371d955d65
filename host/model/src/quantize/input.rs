//! What the quantizer reads: `QuantInput`, anything that yields GGUF metadata and tensors under
//! GGUF names as f32 (a GGUF file here; a Hugging Face directory mapped to GGUF names by the
//! runtime), and its implementation for `GgufFile`.
//!
//! Invariant: `tensor_f32(name)` returns exactly `product(dims)` values of a tensor listed by
//! `tensors()`, in GGUF order (`ne0` contiguous). Tensors are fetched one at a time, so an input
//! may decode lazily and the quantizer never holds more than one tensor's floats.
//!
//! Modelled on the way llama.cpp's `llama_model_quantize_impl` reads its input through
//! `llama_model_loader` (mmap, dequantize one tensor at a time with `nthread` workers).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rocmforge_quant::GgmlType;

use crate::gguf::{GgufFile, GgufValue};
use crate::ModelError;

/// A model the quantizer can read. `Sync` because tensors are decoded by a thread pool.
pub trait QuantInput: Sync {
    /// Every metadata entry, in the order it should be written (GGUF keys).
    fn metadata(&self) -> Vec<(String, GgufValue)>;

    /// Every tensor: GGUF name, stored type, dims in GGUF order (`ne0` first).
    fn tensors(&self) -> Vec<(String, GgmlType, Vec<u64>)>;

    /// One tensor's values as f32 (dequantized or converted as needed).
    fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, ModelError>;

    /// `general.architecture`.
    fn arch(&self) -> Result<String, ModelError>;

    /// The tensor's stored bytes, when the input has them in the type `tensors()` reports; used
    /// to copy tensors whose type does not change without a round trip through f32. The
    /// default (`None`) re-encodes `tensor_f32` in the stored type.
    fn tensor_raw(&self, _name: &str) -> Result<Option<Cow<'_, [u8]>>, ModelError> {
        Ok(None)
    }

    /// Where the input came from, for error messages.
    fn source_path(&self) -> PathBuf {
        PathBuf::from("<quantizer input>")
    }
}

/// Rows handed to one rayon task when decoding: about 16K values, as llama.cpp's quantizer.
pub(crate) fn rows_per_task(n_per_row: usize) -> usize {
    const MIN_CHUNK: usize = 32 * 512;
    MIN_CHUNK.div_ceil(n_per_row.max(1)).max(1)
}

/// Decode `n` values of `ty` from `src` into f32, in parallel over whole rows of `n_per_row`.
pub(crate) fn dequantize_par(
    path: &Path,
    name: &str,
    ty: GgmlType,
    src: &[u8],
    n: usize,
    n_per_row: usize,
) -> Result<Vec<f32>, ModelError> {
    let bad = |what: String| ModelError::BadTensor { path: path.to_path_buf(), tensor: name.to_string(), what };
    let row_bytes = ty
        .row_bytes(n_per_row as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| bad(format!("row of {n_per_row} is not a whole number of {ty} blocks")))?;
    if n_per_row == 0 || !n.is_multiple_of(n_per_row) || src.len() != n / n_per_row * row_bytes {
        return Err(bad(format!("{} bytes do not hold {n} values of {ty} in rows of {n_per_row}", src.len())));
    }
    let mut out = vec![0.0f32; n];
    let rows = rows_per_task(n_per_row);
    out.par_chunks_mut(rows * n_per_row)
        .zip(src.par_chunks(rows * row_bytes))
        .try_for_each(|(dst, s)| rocmforge_quant::dequantize(ty, s, dst))
        .map_err(|source| ModelError::Quant { path: path.to_path_buf(), source })?;
    Ok(out)
}

impl QuantInput for GgufFile {
    fn metadata(&self) -> Vec<(String, GgufValue)> {
        GgufFile::metadata(self).to_vec()
    }

    fn tensors(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        GgufFile::tensors(self).iter().map(|t| (t.name.clone(), t.ty, t.dims.clone())).collect()
    }

    fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let t = self.tensor(name).ok_or_else(|| ModelError::BadTensor {
            path: self.path().to_path_buf(),
            tensor: name.to_string(),
            what: "no such tensor".into(),
        })?;
        let n = usize::try_from(t.n_elements()).map_err(|_| ModelError::BadTensor {
            path: self.path().to_path_buf(),
            tensor: name.to_string(),
            what: "too many elements for this machine".into(),
        })?;
        let n_per_row = t.dims.first().copied().unwrap_or(1) as usize;
        dequantize_par(self.path(), name, t.ty, self.tensor_data(t), n, n_per_row)
    }

    fn arch(&self) -> Result<String, ModelError> {
        self.architecture().map(str::to_string)
    }

    fn tensor_raw(&self, name: &str) -> Result<Option<Cow<'_, [u8]>>, ModelError> {
        Ok(self.tensor_data_by_name(name).map(Cow::Borrowed))
    }

    fn source_path(&self) -> PathBuf {
        self.path().to_path_buf()
    }
}
