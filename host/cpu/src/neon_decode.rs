//! AArch64 NEON decode-path (few tokens) row dots for Q4_0, Q4_1, Q8_0 and IQ4_NL, reading the
//! GGML blocks directly: the NEON twin of `qdecode`'s AVX-512 kernel, called by the same
//! `qmatmul::decode_fused` (rows split over threads, 4 rows per call, missing rows repeated).
//!
//! For a token generation step every weight byte is used once, so unpacking to `u` / `s4` first
//! (the tile path) only adds stores and reloads. Per block of 32 and row: the quants expanded in
//! registers to their signed values (Q4_0: nibble - 8; Q4_1: nibble; IQ4_NL: `tbl` through the
//! codebook; Q8_0: the bytes), two `Dot4`s with the token's 32 activation bytes (the 8 canonical
//! lanes), one fma each with the broadcast `d_w * d_x`. That is the canonical order of `qmatmul`
//! (S * dx is the same product per lane), so the results equal the tile path's bits; Q4_1 adds
//! its minimum term as `bias_seq` (one sequential fma per block).
//!
//! ```text
//!   y = hsum8( sum_b fma(f32(I_b[lane]), d_w[b] d_x[b], .) ) (+ sum_b m_w[b] s_x[b] in order)
//! ```

use std::arch::aarch64::*;

use rocmforge_quant::{GgmlType, KVALUES_IQ4NL};

use crate::neon::{f16_to_f32, hsum4x2, Dot4, Mull, Sdot};
use crate::qdecode::XTok;

/// TY: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = IQ4_NL (as `qdecode`).
///
/// # Safety
/// As `rows_dot`; NEON (and for `Sdot` FEAT_DotProd) available.
#[inline(always)]
unsafe fn body<D: Dot4, const TY: u8>(rows: [*const u8; 4], nb: usize, x: XTok) -> [f32; 4] {
    let (ts, qoff) = match TY {
        0 => (18usize, 2usize),
        1 => (20, 4),
        2 => (34, 2),
        _ => (18, 2),
    };
    let low4 = vdupq_n_u8(0x0F);
    let eight = vdupq_n_s8(8);
    let lut = vld1q_s8(KVALUES_IQ4NL.as_ptr());
    let zero = vdupq_n_s32(0);
    let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
    // Q4_1 minimum term, llama.cpp's order: one sequential fma per block and row.
    let mut summ = [0f32; 4];
    for b in 0..nb {
        let x0 = vld1q_s8(x.xq.add(32 * b));
        let x1 = vld1q_s8(x.xq.add(32 * b + 16));
        let dx = *x.d32.add(b);
        for r in 0..4 {
            let blk = rows[r].add(b * ts);
            let d = f16_to_f32((blk as *const u16).read_unaligned());
            let (w0, w1) = if TY == 2 {
                (vld1q_s8(blk.add(qoff) as *const i8), vld1q_s8(blk.add(qoff + 16) as *const i8))
            } else {
                let q = vld1q_u8(blk.add(qoff));
                let (lo, hi) = (vandq_u8(q, low4), vshrq_n_u8::<4>(q));
                match TY {
                    0 => (vsubq_s8(vreinterpretq_s8_u8(lo), eight), vsubq_s8(vreinterpretq_s8_u8(hi), eight)),
                    1 => (vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)),
                    _ => (vqtbl1q_s8(lut, lo), vqtbl1q_s8(lut, hi)),
                }
            };
            let s = vdupq_n_f32(d * dx);
            acc[r][0] = vfmaq_f32(acc[r][0], vcvtq_f32_s32(D::dot4(zero, w0, x0)), s);
            acc[r][1] = vfmaq_f32(acc[r][1], vcvtq_f32_s32(D::dot4(zero, w1, x1)), s);
            if TY == 1 {
                let m = f16_to_f32((blk.add(2) as *const u16).read_unaligned());
                summ[r] = m.mul_add(*x.xs16.add(2 * b), summ[r]);
            }
        }
    }
    let mut out = [0f32; 4];
    for r in 0..4 {
        out[r] = hsum4x2(acc[r][0], acc[r][1]);
        if TY == 1 {
            out[r] += summ[r];
        }
    }
    out
}

#[target_feature(enable = "neon")]
unsafe fn rows_neon<const TY: u8>(rows: [*const u8; 4], nb: usize, x: XTok) -> [f32; 4] {
    body::<Mull, TY>(rows, nb, x)
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn rows_sdot<const TY: u8>(rows: [*const u8; 4], nb: usize, x: XTok) -> [f32; 4] {
    body::<Sdot, TY>(rows, nb, x)
}

/// Dots of four weight rows (`nb` blocks of `ty` each; a row may repeat) with one quantized
/// token, equal to the tile path's bits.
///
/// # Safety
/// NEON available, and FEAT_DotProd if `dot`; every row valid for `nb` blocks; the token's
/// arrays as `QActs` lays them out for `nb * 32` elements. `ty` must satisfy
/// `qdecode::has_fused`.
pub(crate) unsafe fn rows_dot(dot: bool, ty: GgmlType, rows: [*const u8; 4], nb: usize, x: XTok) -> [f32; 4] {
    match (dot, ty) {
        (true, GgmlType::Q4_0) => rows_sdot::<0>(rows, nb, x),
        (true, GgmlType::Q4_1) => rows_sdot::<1>(rows, nb, x),
        (true, GgmlType::Q8_0) => rows_sdot::<2>(rows, nb, x),
        (true, _) => rows_sdot::<3>(rows, nb, x),
        (false, GgmlType::Q4_0) => rows_neon::<0>(rows, nb, x),
        (false, GgmlType::Q4_1) => rows_neon::<1>(rows, nb, x),
        (false, GgmlType::Q8_0) => rows_neon::<2>(rows, nb, x),
        (false, _) => rows_neon::<3>(rows, nb, x),
    }
}
