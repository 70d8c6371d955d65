//! `y = W x` for every weight type the model files use, and the embedding lookup `get_rows`.
//!
//! Shapes (GGML layout): `W` is `n_out` rows of `k_dim` elements of type `ty`, row r at byte
//! `r * row_bytes`; `x` is `n_tokens` rows of `k_dim` f32; `y[t * n_out + r] = sum_k W[r,k] x[t,k]`.
//!
//! Quantized types go to `qmatmul` (integer dots on 8-bit activations). Dense F32/F16/BF16:
//! activations are first rounded to the weight type (F16 weights see f16 activations, BF16
//! weights bf16 ones, as ggml's `vec_dot_type` makes llama.cpp do); for up to 3 tokens a SIMD dot per (row, token), which streams the weights once; from 4 tokens
//! on, rows are converted to f32 a chunk at a time and multiplied with the `gemm` crate
//! (single-threaded per chunk; our pool splits the chunks).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use rocmforge_quant::GgmlType;

use crate::error::CpuError;
use crate::pool::ThreadPool;
use crate::qmatmul::{qmatmul, SyncPtr};
use crate::simd::{dense_to_f32, dot_dense, Dense, Isa};

/// True if [`matmul`] accepts weights of type `ty`.
pub fn supports_matmul(ty: GgmlType) -> bool {
    dense_kind(ty).is_some() || crate::unpack::supported(ty)
}

fn dense_kind(ty: GgmlType) -> Option<Dense> {
    match ty {
        GgmlType::F32 => Some(Dense::F32),
        GgmlType::F16 => Some(Dense::F16),
        GgmlType::BF16 => Some(Dense::Bf16),
        _ => None,
    }
}

/// `y[t * n_out + r] = sum_k W[r, k] * x[t * k_dim + k]`; see the module header.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k_dim: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) -> Result<(), CpuError> {
    matmul_ext(pool, Isa::detect(), ty, w, n_out, k_dim, x, n_tokens, None, y)
}

/// [`matmul`] plus an optional bias (`n_out` values added to every token's output row).
#[allow(clippy::too_many_arguments)]
pub fn matmul_bias(
    pool: &ThreadPool,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k_dim: usize,
    x: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), CpuError> {
    matmul_ext(pool, Isa::detect(), ty, w, n_out, k_dim, x, n_tokens, bias, y)
}

/// [`matmul_bias`] at an explicit instruction-set level (clamped to what the CPU has); used by
/// tests comparing the SIMD paths with the scalar one, and by benchmarks.
#[allow(clippy::too_many_arguments)]
pub fn matmul_ext(
    pool: &ThreadPool,
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k_dim: usize,
    x: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), CpuError> {
    validate("matmul", ty, w, n_out, k_dim, x, n_tokens, bias, y)?;
    if n_out == 0 || n_tokens == 0 {
        return Ok(());
    }
    let isa = isa.clamp();
    match dense_kind(ty) {
        Some(d) if d == Dense::F32 => dense_matmul(pool, isa, d, w, n_out, k_dim, x, n_tokens, y),
        Some(d) => XROUND.with(|cell| {
            let mut fresh = Vec::new();
            let mut guard = cell.try_borrow_mut();
            let buf: &mut Vec<f32> = match guard.as_mut() {
                Ok(g) => g,
                Err(_) => &mut fresh,
            };
            buf.resize(x.len(), 0.0);
            crate::act::round_dense_acts(ty, x, buf);
            dense_matmul(pool, isa, d, w, n_out, k_dim, buf, n_tokens, y)
        }),
        None => qmatmul(pool, isa, ty, w, n_out, k_dim, x, n_tokens, y),
    }
    add_bias(bias, n_out, y);
    Ok(())
}

fn add_bias(bias: Option<&[f32]>, n_out: usize, y: &mut [f32]) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(n_out) {
            for (o, &bv) in row.iter_mut().zip(b) {
                *o += bv;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn validate(
    op: &'static str,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k_dim: usize,
    x: &[f32],
    n_tokens: usize,
    bias: Option<&[f32]>,
    y: &[f32],
) -> Result<(), CpuError> {
    if !supports_matmul(ty) {
        return Err(CpuError::UnsupportedType { op, ty: ty.name() });
    }
    let block = ty.block_size();
    if !k_dim.is_multiple_of(block) {
        return Err(CpuError::NotBlockAligned { op, ty: ty.name(), k: k_dim, block });
    }
    let row_bytes = k_dim / block * ty.type_size();
    check_len(op, "weights (bytes)", w.len(), n_out.checked_mul(row_bytes))?;
    check_len(op, "x", x.len(), n_tokens.checked_mul(k_dim))?;
    check_len(op, "y", y.len(), n_tokens.checked_mul(n_out))?;
    if let Some(b) = bias {
        check_len(op, "bias", b.len(), Some(n_out))?;
    }
    Ok(())
}

/// One matrix of [`matmul_many`]: `y = W x (+ bias)` with `W` `n_out` rows of type `ty`.
pub struct MatmulOut<'a> {
    pub ty: GgmlType,
    pub w: &'a [u8],
    pub n_out: usize,
    pub bias: Option<&'a [f32]>,
    pub y: &'a mut [f32],
}

/// Several matrices times the same `x` (`n_tokens x k_dim`), e.g. a layer's Q/K/V projections:
/// each output is exactly what [`matmul_bias`] gives, but the activations are quantized once
/// and, for decode-sized batches, all rows run in one thread-pool job (fewer synchronisations).
pub fn matmul_many(pool: &ThreadPool, k_dim: usize, x: &[f32], n_tokens: usize, outs: &mut [MatmulOut<'_>]) -> Result<(), CpuError> {
    for o in outs.iter() {
        validate("matmul_many", o.ty, o.w, o.n_out, k_dim, x, n_tokens, o.bias, o.y)?;
    }
    if n_tokens == 0 || outs.iter().any(|o| o.n_out == 0) {
        for o in outs.iter_mut() {
            matmul_bias(pool, o.ty, o.w, o.n_out, k_dim, x, n_tokens, o.bias, o.y)?;
        }
        return Ok(());
    }
    let jobs: Vec<(GgmlType, &[u8], usize)> = outs.iter().map(|o| (o.ty, o.w, o.n_out)).collect();
    let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut *o.y).collect();
    let fused = crate::qmatmul::qmatmul_many(pool, Isa::detect(), &jobs, &mut ys, k_dim, x, n_tokens);
    drop(ys);
    for o in outs.iter_mut() {
        if fused {
            add_bias(o.bias, o.n_out, o.y);
        } else {
            matmul_bias(pool, o.ty, o.w, o.n_out, k_dim, x, n_tokens, o.bias, o.y)?;
        }
    }
    Ok(())
}

pub(crate) fn check_len(op: &'static str, what: &'static str, got: usize, want: Option<usize>) -> Result<(), CpuError> {
    match want {
        Some(w) if w == got => Ok(()),
        _ => Err(CpuError::BadLength { op, what, got, want: want.unwrap_or(usize::MAX) }),
    }
}

thread_local! {
    static CONV: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static XROUND: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
fn dense_matmul(pool: &ThreadPool, isa: Isa, ty: Dense, w: &[u8], n_out: usize, k: usize, x: &[f32], n_tokens: usize, y: &mut [f32]) {
    let rb = k * ty.size();
    let nth = pool.n_threads();
    let yp = SyncPtr(y.as_mut_ptr());
    let next = AtomicUsize::new(0);
    if n_tokens < 4 {
        let chunk = n_out.div_ceil(nth * 4).max(16);
        let n_chunks = n_out.div_ceil(chunk);
        pool.run_dynamic(|_, _| {
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= n_chunks {
                    break;
                }
                for r in c * chunk..((c + 1) * chunk).min(n_out) {
                    let row = &w[r * rb..(r + 1) * rb];
                    for t in 0..n_tokens {
                        let v = dot_dense(isa, ty, row, &x[t * k..(t + 1) * k], k);
                        // SAFETY: (t, r) inside y; row r belongs to this chunk only.
                        unsafe { *yp.get().add(t * n_out + r) = v };
                    }
                }
            }
        });
        return;
    }
    // Prefill: rows converted to f32 in chunks of at most ~256 KiB, then one gemm per chunk.
    let chunk = (65536 / k.max(1)).clamp(16, 512).min(n_out.div_ceil(nth)).max(1);
    let n_chunks = n_out.div_ceil(chunk);
    pool.run_dynamic(|_, _| {
        CONV.with(|cell| {
            let mut fresh = Vec::new();
            let mut guard = cell.try_borrow_mut();
            let buf: &mut Vec<f32> = match guard.as_mut() {
                Ok(g) => g,
                Err(_) => &mut fresh,
            };
            buf.resize(chunk * k, 0.0);
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= n_chunks {
                    break;
                }
                let r0 = c * chunk;
                let nr = chunk.min(n_out - r0);
                dense_to_f32(ty, &w[r0 * rb..(r0 + nr) * rb], &mut buf[..nr * k]);
                // SAFETY: dst is the n_tokens x nr block of y starting at column r0 (row stride
                // n_out), owned by this chunk; lhs is x (n_tokens x k, row-major); rhs is the
                // converted rows read transposed (k x nr: element (kk, j) at j*k + kk).
                unsafe {
                    gemm::gemm(
                        n_tokens,
                        nr,
                        k,
                        yp.get().add(r0),
                        1,
                        n_out as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        buf.as_ptr(),
                        k as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
    });
}

/// Embedding lookup: `out[i * row_len ..][..row_len]` = row `ids[i]` of `table` (rows of
/// `row_len` elements of type `ty`), dequantized to f32 exactly as llama.cpp does.
pub fn get_rows(ty: GgmlType, table: &[u8], row_len: usize, ids: &[u32], out: &mut [f32]) -> Result<(), CpuError> {
    const OP: &str = "get_rows";
    let block = ty.block_size();
    if !row_len.is_multiple_of(block) {
        return Err(CpuError::NotBlockAligned { op: OP, ty: ty.name(), k: row_len, block });
    }
    let rb = row_len / block * ty.type_size();
    check_len(OP, "out", out.len(), ids.len().checked_mul(row_len))?;
    let n_rows = table.len().checked_div(rb).unwrap_or(0);
    for (i, &id) in ids.iter().enumerate() {
        let id_us = id as usize;
        if id_us >= n_rows {
            return Err(CpuError::RowOutOfRange { op: OP, id, n_rows });
        }
        rocmforge_quant::dequantize(ty, &table[id_us * rb..(id_us + 1) * rb], &mut out[i * row_len..(i + 1) * row_len])?;
    }
    Ok(())
}
