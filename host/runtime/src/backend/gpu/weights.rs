//! Weights of a graph on the device, uploaded once at load, in the form each op reads them:
//!
//! - MATMUL weights as [`GpuMatrix`] (repacked for the matrix-vector kernels: Q4_0, Q4_1, Q5_0,
//!   Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K, IQ4_XS, F16, BF16, F32; `repack::supports_mmv`).
//!   Types those kernels lack (Q2_K, Q3_K, the IQ2/IQ3 and ternary types, MXFP4, ...) are
//!   dequantized and uploaded as F16, which rounds each weight to 11 significant bits (relative
//!   2^-12) and costs 16 bits a weight: close to what the CPU computes, not bit-equal; the load
//!   log says which tensors took this path.
//! - GET_ROWS tables in their GGUF bytes (the gather kernels read GGUF blocks directly); types
//!   `get_rows` lacks go up as F32 rows.
//! - Element-wise weights (`Plan::needs_vec`: norm weights, biases, RoPE factors) as f32.
//!
//! One tensor can serve several roles (tied embeddings: the token table is also the output
//! matrix), in which case it is uploaded once per role.

use rocmforge_gpu::{Device, DeviceBuffer, GpuMatrix};
use rocmforge_quant::GgmlType;

use crate::graph::{Graph, Op};
use crate::plan::Plan;
use crate::source::{ModelSource, Weight};
use crate::RuntimeError;

/// Types the GET_ROWS kernels read in their GGUF layout.
fn table_type_supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL | Q4_K | Q5_K | Q6_K | IQ4_XS)
}

/// One weight node's device copies, per role.
pub(super) struct GpuWeight {
    pub mat: Option<GpuMatrix>,
    /// (type of the uploaded rows, GGUF-layout bytes).
    pub table: Option<(GgmlType, DeviceBuffer<u8>)>,
    pub vec: Option<DeviceBuffer<f32>>,
}

/// Which roles each weight node plays in the graph.
#[derive(Clone, Copy, Default)]
struct Roles {
    mat: bool,
    table: bool,
}

fn weight_err(w: &Weight, what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Weight { name: w.name.clone(), what: what.to_string() }
}

/// Bytes the uploads of `g`'s weights will take (repacked sizes; the F16 fallback is counted at 2
/// bytes per weight).
pub(super) fn device_bytes(g: &Graph, p: &Plan, src: &ModelSource) -> usize {
    let roles = roles(g);
    let mut total = 0usize;
    for (i, node) in g.nodes.iter().enumerate() {
        let Op::Weight { tensor } = &node.op else { continue };
        let Some((ty, dims)) = src.tensor_info(tensor) else { continue };
        let n: usize = dims.iter().product();
        let bytes = (n / ty.block_size().max(1)) * ty.type_size();
        if roles[i].mat {
            total += if rocmforge_gpu::repack::supports_mmv(ty) {
                let k = dims.first().copied().unwrap_or(1).max(1);
                rocmforge_gpu::repack::packed_bytes(ty, n / k, k)
            } else {
                2 * n
            };
        }
        if roles[i].table {
            total += if table_type_supported(ty) { bytes } else { 4 * n };
        }
        if p.needs_vec[i] {
            total += 4 * n;
        }
    }
    total
}

fn roles(g: &Graph) -> Vec<Roles> {
    let mut r = vec![Roles::default(); g.nodes.len()];
    for node in &g.nodes {
        match node.op {
            Op::MatMul { w, .. } => r[w].mat = true,
            Op::GetRows { table, .. } => r[table].table = true,
            _ => {}
        }
    }
    r
}

/// Upload every weight node of `g` in the roles it plays. MoE ops are refused before this (see
/// `GpuBackend::new`).
pub(super) fn upload(dev: &Device, g: &Graph, p: &Plan, src: &ModelSource) -> Result<Vec<Option<GpuWeight>>, RuntimeError> {
    let roles = roles(g);
    let mut converted: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let Op::Weight { tensor } = &node.op else {
            out.push(None);
            continue;
        };
        let w = src.weight(tensor)?;
        let mut gw = GpuWeight { mat: None, table: None, vec: None };
        if roles[i].mat {
            // GGUF dims: [k, n_out] (a 1-D weight [k] is one output row).
            let k = w.dims[0];
            let n_rows = w.dims.get(1).copied().unwrap_or(1);
            gw.mat = Some(if rocmforge_gpu::repack::supports_mmv(w.ty) {
                GpuMatrix::upload(dev, w.ty, w.bytes.as_slice(), n_rows, k).map_err(|e| weight_err(&w, e))?
            } else {
                converted.push(format!("{} ({})", w.name, w.ty));
                let f = w.to_f32()?;
                let h: Vec<u8> = f.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect();
                GpuMatrix::upload(dev, GgmlType::F16, &h, n_rows, k).map_err(|e| weight_err(&w, format!("as F16: {e}")))?
            });
        }
        if roles[i].table {
            gw.table = Some(if table_type_supported(w.ty) {
                (w.ty, dev.upload(w.bytes.as_slice())?)
            } else {
                let f = w.to_f32()?;
                let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
                (GgmlType::F32, dev.upload(&bytes)?)
            });
        }
        if p.needs_vec[i] {
            gw.vec = Some(dev.upload(&w.to_f32()?)?);
        }
        out.push(Some(gw));
    }
    if !converted.is_empty() {
        tracing::info!("GPU: {} matrices of types without a GPU kernel run as F16 (rounded): {}", converted.len(), converted.join(", "));
    }
    Ok(out)
}
