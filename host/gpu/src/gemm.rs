//! Dense matrix products for prefill chunks: weights dequantized to f16 in row chunks
//! (`kernels/dequant.cu`), activations converted to f16 once per input, then the vendor GEMM
//! (`blas.rs`) with f32 accumulation and f32 output, as llama.cpp's cuBLAS path does.
//!
//! Why not the matrix-vector kernels: they take at most 8 tokens per pass over the weights, so a
//! 512-token chunk would read every weight 64 times; the GEMM reads the f16 copy once per
//! ~100 tokens of tile and runs on the tensor cores. The f16 copy is made per chunk of rows
//! (`GemmScratch::chunk_values` values, 64 MiB by default) so the scratch stays small whatever
//! the matrix (a 128k-vocabulary output matrix included) and is allocated once at load.
//! Every weight type goes through f16 here, BF16 and F32 included (exact for BF16 values in
//! f16's range; F32 weights are rounded to 11 significant bits, as the activations are).

use crate::blas::Blas;
use crate::device::{DeviceBuffer, Stream};
use crate::error::{GpuError, Result};
use crate::kernels::{grid_1d, GpuMatrix, Kernels};
use rocmforge_quant::GgmlType;

/// Default size of the f16 weight chunk, in values (64 MiB).
pub const GEMM_CHUNK_VALUES: usize = 32 << 20;

/// Scratch and BLAS handle of the GEMM path (one per stream / backend).
pub struct GemmScratch {
    blas: Blas,
    xh: DeviceBuffer<u16>,
    wh: DeviceBuffer<u16>,
    /// (n_tokens, k) of the activations now in `xh`.
    x_shape: Option<(usize, usize)>,
}

impl GemmScratch {
    /// For inputs of up to `max_tokens x max_k` values and weight chunks of `chunk_values`
    /// values, on `stream`.
    pub fn new(stream: &Stream, max_tokens: usize, max_k: usize, chunk_values: usize) -> Result<GemmScratch> {
        let blas = Blas::new(stream)?;
        let dev = stream.device();
        Ok(GemmScratch { blas, xh: dev.alloc(max_tokens.max(1) * max_k.max(1))?, wh: dev.alloc(chunk_values.max(max_k))?, x_shape: None })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        (self.xh.len() + self.wh.len()) * 2
    }

    /// The BLAS library in use (for logs).
    pub fn library(&self) -> &str {
        self.blas.library()
    }
}

/// The `kernels/dequant.cu` kernel turning weights of `ty` into f16 rows, and the values one of
/// its threads writes (a 32-value group; 16 bytes of BF16 or F32 rows).
pub(crate) fn dequant_kernel(ty: GgmlType) -> Option<(&'static str, usize)> {
    Some(match ty {
        GgmlType::Q4_0 => ("dequant_q4_0_f16", 32),
        GgmlType::Q4_1 => ("dequant_q4_1_f16", 32),
        GgmlType::Q5_0 => ("dequant_q5_0_f16", 32),
        GgmlType::Q5_1 => ("dequant_q5_1_f16", 32),
        GgmlType::Q8_0 => ("dequant_q8_0_f16", 32),
        GgmlType::IQ4_NL => ("dequant_iq4_nl_f16", 32),
        GgmlType::Q4_K => ("dequant_q4_k_f16", 32),
        GgmlType::Q5_K => ("dequant_q5_k_f16", 32),
        GgmlType::Q6_K => ("dequant_q6_k_f16", 32),
        GgmlType::IQ4_XS => ("dequant_iq4_xs_f16", 32),
        GgmlType::BF16 => ("dequant_bf16_f16", 8),
        GgmlType::F32 => ("dequant_f32_f16", 4),
        _ => return None,
    })
}

impl Kernels {
    /// Convert `x` (`n_tokens x k`, f32) to f16 into `sc`, the input of the following
    /// [`Kernels::gemm`] calls (one conversion for Q, K and V, or gate and up).
    pub fn gemm_input(&self, s: &Stream, x: &DeviceBuffer<f32>, n_tokens: usize, k: usize, sc: &mut GemmScratch) -> Result<()> {
        const OP: &str = "gemm_input";
        let n = n_tokens * k;
        if x.len() < n || sc.xh.len() < n {
            return Err(GpuError::shape(OP, format!("{n_tokens} x {k}: x holds {}, scratch {}", x.len(), sc.xh.len())));
        }
        let mut a = crate::module::KernelArgs::new();
        a.buf(x).buf(&sc.xh).u64(n as u64);
        // SAFETY: both buffers hold at least n values (checked).
        unsafe { self.f("f32_to_f16")?.launch(s, (grid_1d(n, 256), 1, 1), (256, 1, 1), 0, &mut a)? };
        sc.x_shape = Some((n_tokens, k));
        Ok(())
    }

    /// `y[t * n_rows + r] = sum_k W[r, k] x[t, k]` for the activations of the last
    /// [`Kernels::gemm_input`] (which must have the matrix's `k`).
    pub fn gemm(&self, s: &Stream, w: &GpuMatrix, sc: &mut GemmScratch, y: &mut DeviceBuffer<f32>) -> Result<()> {
        const OP: &str = "gemm";
        let Some((n_tok, k)) = sc.x_shape else { return Err(GpuError::shape(OP, "no input converted (gemm_input)")) };
        if k != w.k {
            return Err(GpuError::shape(OP, format!("input has k = {k}, the matrix {}", w.k)));
        }
        if y.len() < n_tok * w.n_rows {
            return Err(GpuError::shape(OP, format!("y holds {} values, need {}", y.len(), n_tok * w.n_rows)));
        }
        crate::repack::check_packed(OP, w.ty, w.data.len(), w.n_rows, w.k)?;
        if w.ty == GgmlType::F16 {
            return sc.blas.gemm_f16(w.data.device_ptr(), &sc.xh, y.device_ptr(), w.n_rows, n_tok, k, w.n_rows);
        }
        let chunk_rows = (sc.wh.len() / k).clamp(1, w.n_rows);
        let mut row0 = 0;
        while row0 < w.n_rows {
            let rows = chunk_rows.min(w.n_rows - row0);
            self.dequant_f16(s, w, row0, rows, &mut sc.wh)?;
            sc.blas.gemm_f16(sc.wh.device_ptr(), &sc.xh, y.device_ptr() + (row0 * 4) as u64, rows, n_tok, k, w.n_rows)?;
            row0 += rows;
        }
        Ok(())
    }

    /// Rows `row0..row0 + rows` of `w` (any type but F16, which the GEMM reads as it is) as
    /// row-major f16 values into the start of `out` (`rows * k` values): the prefill path's
    /// weight conversion, also what the tests check against the CPU's dequantizer.
    pub fn dequant_f16(&self, s: &Stream, w: &GpuMatrix, row0: usize, rows: usize, out: &mut DeviceBuffer<u16>) -> Result<()> {
        const OP: &str = "dequant_f16";
        crate::repack::check_packed(OP, w.ty, w.data.len(), w.n_rows, w.k)?;
        let (kernel, per_thread) = dequant_kernel(w.ty).ok_or(GpuError::Unsupported { op: OP, ty: w.ty.name() })?;
        if row0.checked_add(rows).is_none_or(|end| end > w.n_rows) || out.len() < rows * w.k {
            return Err(GpuError::shape(OP, format!("rows {row0}..+{rows} of {}; out holds {} values", w.n_rows, out.len())));
        }
        let groups = rows * (w.k / per_thread);
        // One thread per group and no grid-stride loop: the grid must cover every group.
        if groups.div_ceil(128) > grid_1d(groups, 128) as usize {
            return Err(GpuError::shape(OP, format!("{rows} rows of {} values in one launch: convert fewer rows at a time", w.k)));
        }
        let mut a = crate::module::KernelArgs::new();
        a.buf(&w.data).buf(out).i32(w.n_rows as i32).i32(w.k as i32).i32(row0 as i32).i32(rows as i32);
        // SAFETY: the matrix was checked for n_rows x k of its type; rows row0..row0+rows exist
        // and `out` holds rows * k values (both checked above).
        unsafe { self.f(kernel)?.launch(s, (grid_1d(groups, 128), 1, 1), (128, 1, 1), 0, &mut a) }
    }
}
