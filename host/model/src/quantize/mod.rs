//! The model quantizer behind `rocmforge quantize IN OUT TYPE`: reads a model (`QuantInput`),
//! chooses every tensor's output type with llama.cpp's mixing rules (`rules.rs`) and writes a
//! GGUF whose tensors, metadata and layout are what `llama-quantize` writes for the same input.
//!
//! Flow (streaming: at most one tensor's f32 values and one quantized buffer are in memory):
//! ```text
//!   plan_model: tensors in llama.cpp order -> tensor_type_for each -> checks (requantize, imatrix)
//!   header:     input metadata, then general.quantization_version = 2, general.file_type = id
//!   per tensor: type unchanged -> stored bytes copied
//!               otherwise      -> tensor_f32 -> quantize rows in parallel (rayon) -> write
//! ```
//! The output goes to `OUT.partial` and is renamed when complete (see `GgufWriter::write_file`).
//!
//! Invariants: quantized bytes equal llama.cpp's `ggml_quantize_chunk` without an importance
//! matrix (the quant crate's contract); an already-quantized tensor is only converted with
//! `allow_requantize` (llama-quantize's `--allow-requantize`); inputs with NaN/inf in a tensor
//! being converted are refused (llama.cpp validates its input and output data the same way).
//!
//! Modelled on llama.cpp `src/llama-quant.cpp` (`llama_model_quantize_impl`) and
//! `tools/quantize/quantize.cpp`; ollama's `create --quantize` uses the same rules.

mod ftype;
mod input;
mod rules;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use rocmforge_quant::{GgmlType, QuantError};

use crate::gguf::{GgufFile, GgufValue, GgufWriter};
use crate::ModelError;

pub use ftype::FileType;
pub use input::QuantInput;
pub use rules::{
    allows_quantization, layer_of, n_dims, requires_imatrix, tensor_order, tensor_type_for, MixState, QuantHparams, TensorCategory,
    TypeChoice,
};

/// `general.quantization_version` written by current llama.cpp (`GGML_QNT_VERSION`).
pub const QUANTIZATION_VERSION: u32 = 2;

/// Keys of a split model's shards, dropped from the (single-file) output.
const SPLIT_KEYS: &[&str] = &["split.no", "split.count", "split.tensors.count"];

/// How to quantize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizeOptions {
    pub ftype: FileType,
    /// Worker threads; 0 = one per core.
    pub n_threads: usize,
    /// Convert tensors that are already quantized (lossy: quantization errors add up).
    pub allow_requantize: bool,
    /// Every quantizable tensor gets the file type's base type: no mixing, no Q6_K output.
    pub pure: bool,
}

impl QuantizeOptions {
    /// llama-quantize's defaults for `ftype`: all cores, mixing on, no requantizing.
    pub fn new(ftype: FileType) -> Self {
        QuantizeOptions { ftype, n_threads: 0, allow_requantize: false, pure: false }
    }
}

/// One tensor of the output, as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    /// GGUF order, trailing 1s dropped (as llama.cpp writes them).
    pub dims: Vec<u64>,
    pub from: GgmlType,
    pub to: GgmlType,
    /// The mixed type did not fit the row length and a fallback type was used.
    pub fallback: bool,
}

/// What `quantize_model` did.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    pub ftype: FileType,
    pub n_tensors: usize,
    /// Tensors converted to another type (the rest were copied).
    pub n_converted: usize,
    /// Tensors that needed a fallback type because of their row length.
    pub n_fallback: usize,
    /// Tensor data bytes of the input and of the output (without header and padding).
    pub in_bytes: u64,
    pub out_bytes: u64,
    /// Size of the written file.
    pub file_bytes: u64,
    /// Output tensor type name -> number of tensors.
    pub per_type_counts: BTreeMap<String, usize>,
    pub elapsed: Duration,
}

fn bad_tensor(path: &Path, tensor: &str, what: impl Into<String>) -> ModelError {
    ModelError::BadTensor { path: path.to_path_buf(), tensor: tensor.to_string(), what: what.into() }
}

/// Choose every tensor's output type, in the order the output will have (llama.cpp's), and
/// check the choice can be carried out with `opts`. Reads no tensor data.
pub fn plan_model(input: &dyn QuantInput, opts: &QuantizeOptions) -> Result<Vec<TensorPlan>, ModelError> {
    let path = input.source_path();
    let arch = input.arch()?;
    let mut tensors = input.tensors();
    tensors.sort_by(|a, b| tensor_order(&a.0, &b.0));
    let metadata = input.metadata();
    let hp = QuantHparams::from_metadata(&arch, &metadata, tensors.iter().map(|t| t.0.as_str()));
    let mut state = MixState::new(&arch, hp, opts.ftype, opts.pure, tensors.iter().map(|t| t.0.as_str()));
    let mut plan = Vec::with_capacity(tensors.len());
    for (name, from, dims) in tensors {
        let dims = dims[..n_dims(&dims).min(dims.len())].to_vec();
        let choice = tensor_type_for(&mut state, &name, &dims, from).map_err(|w| bad_tensor(&path, &name, w))?;
        let to = choice.ty;
        if to != from {
            if requires_imatrix(&name, to, opts.ftype) {
                return Err(ModelError::NeedsImatrix { path, tensor: name, ftype: opts.ftype.name(), ty: to.name() });
            }
            if from.is_quantized() && !opts.allow_requantize {
                return Err(ModelError::RequantizeDisabled { path, tensor: name, from: from.name(), to: to.name() });
            }
            let unsupported = if !rocmforge_quant::can_dequantize(from) {
                Some((from, "dequantize"))
            } else if !rocmforge_quant::can_quantize(to) {
                Some((to, "quantize"))
            } else {
                None
            };
            if let Some((ty, op)) = unsupported {
                return Err(ModelError::Quant { path, source: QuantError::Unsupported { ty: ty.name(), op } });
            }
        }
        plan.push(TensorPlan { name, dims, from, to, fallback: choice.fallback });
    }
    Ok(plan)
}

/// Bytes of a tensor of `ty` with `dims`, or an error naming the tensor.
fn tensor_bytes(path: &Path, name: &str, ty: GgmlType, dims: &[u64]) -> Result<u64, ModelError> {
    let ne0 = dims.first().copied().unwrap_or(1);
    let rows = dims.iter().skip(1).try_fold(1u64, |a, &d| a.checked_mul(d));
    ty.row_bytes(ne0)
        .zip(rows)
        .and_then(|(r, n)| r.checked_mul(n))
        .ok_or_else(|| bad_tensor(path, name, format!("{dims:?} is not a valid {ty} shape")))
}

/// Quantize `src` (rows of `n_per_row`) to `ty`, rows split over the current rayon pool.
fn quantize_par(path: &Path, name: &str, ty: GgmlType, src: &[f32], n_per_row: usize) -> Result<Vec<u8>, ModelError> {
    let row_bytes = ty
        .row_bytes(n_per_row as u64)
        .and_then(|b| usize::try_from(b).ok())
        .filter(|_| n_per_row > 0 && src.len().is_multiple_of(n_per_row))
        .ok_or_else(|| bad_tensor(path, name, format!("rows of {n_per_row} do not fit {ty}")))?;
    let mut out = vec![0u8; src.len() / n_per_row * row_bytes];
    let rows = input::rows_per_task(n_per_row);
    out.par_chunks_mut(rows * row_bytes)
        .zip(src.par_chunks(rows * n_per_row))
        .try_for_each(|(d, s)| rocmforge_quant::quantize(ty, s, d))
        .map_err(|source| ModelError::Quant { path: path.to_path_buf(), source })?;
    Ok(out)
}

/// The output metadata: the input's, minus split keys, then `general.quantization_version` and
/// `general.file_type` appended (llama.cpp removes and re-adds them, so they come last).
fn output_writer(input: &dyn QuantInput, ftype: FileType) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in input.metadata() {
        w.set(k, v);
    }
    for k in SPLIT_KEYS.iter().chain(&["general.quantization_version", "general.file_type"]) {
        w.remove(k);
    }
    w.set("general.quantization_version", GgufValue::U32(QUANTIZATION_VERSION));
    w.set("general.file_type", GgufValue::U32(ftype.id()));
    w
}

/// Quantize `input` into a new GGUF at `out_path`. `progress(done, total, tensor)` is called
/// after each tensor is written (from the calling thread).
pub fn quantize_model(
    input: &dyn QuantInput,
    out_path: &Path,
    opts: &QuantizeOptions,
    progress: &(dyn Fn(usize, usize, &str) + Sync),
) -> Result<QuantizeReport, ModelError> {
    let start = Instant::now();
    let src_path = input.source_path();
    if let (Ok(a), Ok(b)) = (src_path.canonicalize(), out_path.canonicalize()) {
        if a == b {
            return Err(ModelError::Other(format!("{}: output and input are the same file", out_path.display())));
        }
    }
    let plan = plan_model(input, opts)?;
    let mut writer = output_writer(input, opts.ftype);
    let mut report = QuantizeReport {
        ftype: opts.ftype,
        n_tensors: plan.len(),
        n_converted: 0,
        n_fallback: plan.iter().filter(|p| p.fallback).count(),
        in_bytes: 0,
        out_bytes: 0,
        file_bytes: 0,
        per_type_counts: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    for p in &plan {
        report.in_bytes += tensor_bytes(&src_path, &p.name, p.from, &p.dims)?;
        report.out_bytes += tensor_bytes(&src_path, &p.name, p.to, &p.dims)?;
        *report.per_type_counts.entry(p.to.name().to_string()).or_default() += 1;
        report.n_converted += usize::from(p.from != p.to);
        writer.add_tensor_info(p.name.clone(), p.dims.clone(), p.to)?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.n_threads)
        .build()
        .map_err(|e| ModelError::Other(format!("cannot start quantizer threads: {e}")))?;
    let total = plan.len();
    writer.write_file(out_path, |i| {
        let p = &plan[i];
        let bytes = pool.install(|| convert_tensor(input, &src_path, p))?;
        progress(i + 1, total, &p.name);
        Ok(bytes)
    })?;
    report.file_bytes = std::fs::metadata(out_path).map_err(|source| ModelError::Io { path: out_path.to_path_buf(), source })?.len();
    report.elapsed = start.elapsed();
    Ok(report)
}

/// One tensor's output bytes.
fn convert_tensor<'a>(input: &'a dyn QuantInput, path: &Path, p: &TensorPlan) -> Result<Cow<'a, [u8]>, ModelError> {
    if p.from == p.to {
        if let Some(raw) = input.tensor_raw(&p.name)? {
            return Ok(raw);
        }
    }
    let values = input.tensor_f32(&p.name)?;
    let n_per_row = p.dims.first().copied().unwrap_or(1) as usize;
    if values.par_iter().any(|x| !x.is_finite()) {
        return Err(bad_tensor(path, &p.name, "contains NaN or infinite values"));
    }
    Ok(Cow::Owned(quantize_par(path, &p.name, p.to, &values, n_per_row)?))
}

/// `quantize_model` on the GGUF file at `in_path`.
pub fn quantize_file(
    in_path: &Path,
    out_path: &Path,
    opts: &QuantizeOptions,
    progress: &(dyn Fn(usize, usize, &str) + Sync),
) -> Result<QuantizeReport, ModelError> {
    let input = GgufFile::open(in_path)?;
    quantize_model(&input, out_path, opts, progress)
}

/// `<stem>-<TYPE>.gguf` next to `in_path`: a default output name for the CLI.
pub fn default_output_path(in_path: &Path, ftype: FileType) -> PathBuf {
    let stem = in_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    in_path.with_file_name(format!("{stem}-{}.gguf", ftype.name()))
}
