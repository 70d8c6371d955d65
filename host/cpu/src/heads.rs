//! Per-head kernels: a matrix product per attention head, and column views and concatenations
//! that act on every head of a row (Multi-head Latent Attention's absorbed projections and its
//! split of each query head into a no-rope and a rope part).
//!
//! Rows are tokens; a row of `n_head·d` values holds head `h` at columns `[h·d, (h+1)·d)`:
//!
//! ```text
//!   x row      [ x_0 (k) | x_1 (k) | ... ]        W [k, m, n_head]: head h = m rows of k values
//!   head_matmul  y row [ x_0·W_0ᵀ (m) | x_1·W_1ᵀ (m) | ... ]
//!   head_view    (offset o, cols c of heads of width w): [ x_0[o..o+c] | x_1[o..o+c] | ... ]
//!   head_concat  [ a_0 | b_0 | a_1 | b_1 | ... ]
//! ```
//!
//! `head_matmul` runs each head through [`crate::matmul_bias`] (so every weight type and every
//! SIMD path of the dense product serves it), gathering the head's columns of all rows into a
//! contiguous block first: a product's numbers equal those of the same head as a plain matmul.

use crate::error::CpuError;
use crate::matmul::check_len;
use crate::pool::ThreadPool;
use rocmforge_quant::GgmlType;

/// `y[:, h·m..(h+1)·m] = x[:, h·k..(h+1)·k] · W_hᵀ` for every head `h`, with `w` the bytes of a
/// GGUF tensor `[k, m, n_head]` of type `ty` (head `h` = its `h`-th `m × row_bytes(k)` block).
#[allow(clippy::too_many_arguments)]
pub fn head_matmul(
    pool: &ThreadPool,
    ty: GgmlType,
    w: &[u8],
    n_head: usize,
    k: usize,
    m: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) -> Result<(), CpuError> {
    const OP: &str = "head_matmul";
    let row_bytes = ty.row_bytes(k as u64).ok_or(CpuError::NotBlockAligned { op: OP, ty: ty.name(), k, block: ty.block_size() })? as usize;
    let per_head = row_bytes.checked_mul(m);
    check_len(OP, "w", w.len(), per_head.and_then(|p| p.checked_mul(n_head)))?;
    check_len(OP, "x", x.len(), rows.checked_mul(n_head).and_then(|c| c.checked_mul(k)))?;
    check_len(OP, "y", y.len(), rows.checked_mul(n_head).and_then(|c| c.checked_mul(m)))?;
    let per_head = per_head.unwrap_or(0);
    let (mut xh, mut yh) = (vec![0f32; rows * k], vec![0f32; rows * m]);
    for h in 0..n_head {
        for (r, dst) in xh.chunks_exact_mut(k).enumerate() {
            dst.copy_from_slice(&x[(r * n_head + h) * k..][..k]);
        }
        crate::matmul_bias(pool, ty, &w[h * per_head..(h + 1) * per_head], m, k, &xh, rows, None, &mut yh)?;
        for (r, src) in yh.chunks_exact(m).enumerate() {
            y[(r * n_head + h) * m..][..m].copy_from_slice(src);
        }
    }
    Ok(())
}

/// Columns `[offset, offset + cols)` of every `head`-wide head of each row of `x` (`src_cols`
/// values per row) into `out` (`src_cols / head · cols` values per row).
pub fn head_view(x: &[f32], src_cols: usize, head: usize, offset: usize, cols: usize, out: &mut [f32]) -> Result<(), CpuError> {
    const OP: &str = "head_view";
    if head == 0 || !src_cols.is_multiple_of(head) || offset.checked_add(cols).is_none_or(|e| e > head) {
        return Err(CpuError::BadLength { op: OP, what: "head view", got: offset.saturating_add(cols), want: head });
    }
    let n_head = src_cols / head;
    let rows = x.len() / src_cols.max(1);
    check_len(OP, "out", out.len(), rows.checked_mul(n_head * cols))?;
    for (orow, xrow) in out.chunks_exact_mut(n_head * cols).zip(x.chunks_exact(src_cols)) {
        for (o, src) in orow.chunks_exact_mut(cols).zip(xrow.chunks_exact(head)) {
            o.copy_from_slice(&src[offset..offset + cols]);
        }
    }
    Ok(())
}

/// Head by head `[a_h | b_h]`: rows of `a` (`n_head·ka` values) and `b` (`n_head·kb`) into rows of
/// `n_head·(ka + kb)`.
pub fn head_concat(a: &[f32], ka: usize, b: &[f32], kb: usize, n_head: usize, out: &mut [f32]) -> Result<(), CpuError> {
    const OP: &str = "head_concat";
    let (ra, rb) = (n_head * ka, n_head * kb);
    let rows = a.len().checked_div(ra).unwrap_or_else(|| b.len() / rb.max(1));
    check_len(OP, "a", a.len(), rows.checked_mul(ra))?;
    check_len(OP, "b", b.len(), rows.checked_mul(rb))?;
    check_len(OP, "out", out.len(), rows.checked_mul(ra + rb))?;
    for r in 0..rows {
        let orow = &mut out[r * (ra + rb)..(r + 1) * (ra + rb)];
        for (h, o) in orow.chunks_exact_mut(ka + kb).enumerate() {
            o[..ka].copy_from_slice(&a[r * ra + h * ka..][..ka]);
            o[ka..].copy_from_slice(&b[r * rb + h * kb..][..kb]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|&x| rocmforge_quant::f32_to_f16(x).to_le_bytes()).collect()
    }

    /// Every head against an f64 product of the same (f16-rounded) weights, for one token and a
    /// batch, F32 and F16 weights.
    #[test]
    fn head_matmul_matches_f64_per_head() {
        let pool = ThreadPool::global();
        let (n_head, k, m) = (3usize, 32usize, 12usize);
        let w: Vec<f32> = (0..n_head * m * k).map(|i| ((i * 31 % 19) as f32 - 9.0) / 7.0).collect();
        for rows in [1usize, 4, 8, 24] {
            let x: Vec<f32> = (0..rows * n_head * k).map(|i| ((i * 17 % 13) as f32 - 6.0) / 5.0).collect();
            for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0] {
                let (bytes, wr): (Vec<u8>, Vec<f32>) = match ty {
                    GgmlType::F32 => (w.iter().flat_map(|v| v.to_le_bytes()).collect(), w.clone()),
                    GgmlType::F16 => {
                        (f16_bytes(&w), w.iter().map(|&v| crate::simd::f16_bits_to_f32(rocmforge_quant::f32_to_f16(v))).collect())
                    }
                    _ => {
                        let q = rocmforge_quant::quantize_to_vec(ty, &w).unwrap();
                        let back = rocmforge_quant::dequantize_to_vec(ty, &q, w.len()).unwrap();
                        (q, back)
                    }
                };
                let mut y = vec![0f32; rows * n_head * m];
                head_matmul(pool, ty, &bytes, n_head, k, m, &x, rows, &mut y).unwrap();
                for r in 0..rows {
                    for h in 0..n_head {
                        for j in 0..m {
                            let want: f64 = (0..k).map(|i| x[(r * n_head + h) * k + i] as f64 * wr[(h * m + j) * k + i] as f64).sum();
                            let got = y[(r * n_head + h) * m + j] as f64;
                            // F16 / Q8_0 products round the activations to f16 / 8 bits as llama.cpp does.
                            let tol = match ty {
                                GgmlType::F32 => 1e-5,
                                GgmlType::F16 => 5e-3,
                                _ => 3e-2,
                            };
                            assert!((got - want).abs() <= tol * (1.0 + want.abs()), "{ty:?} rows {rows} head {h} out {j}: {got} vs {want}");
                        }
                    }
                }
            }
        }
        let mut y = vec![0f32; n_head * m];
        let short = vec![0u8; 10];
        assert!(head_matmul(pool, GgmlType::F32, &short, n_head, k, m, &[0.0; 96], 1, &mut y).is_err(), "a short weight is an error");
    }

    #[test]
    fn views_and_concats_move_the_named_columns() {
        // Two rows of two heads of width 5: values = 100·row + 10·head + col.
        let x: Vec<f32> = (0..2).flat_map(|r| (0..2).flat_map(move |h| (0..5).map(move |c| (100 * r + 10 * h + c) as f32))).collect();
        let mut v = vec![0f32; 2 * 2 * 2];
        head_view(&x, 10, 5, 3, 2, &mut v).unwrap();
        assert_eq!(v, [3.0, 4.0, 13.0, 14.0, 103.0, 104.0, 113.0, 114.0]);
        let mut nope = vec![0f32; 2 * 2 * 3];
        head_view(&x, 10, 5, 0, 3, &mut nope).unwrap();
        let mut back = vec![0f32; 20];
        head_concat(&nope, 3, &v, 2, 2, &mut back).unwrap();
        assert_eq!(back, x, "view then concat restores the rows");
        assert!(head_view(&x, 10, 5, 4, 2, &mut v).is_err(), "a view past the head is an error");
        assert!(head_concat(&nope, 3, &v, 2, 2, &mut [0f32; 19]).is_err());
    }
}
