//! Decode-path (few tokens) AVX-512 VNNI row dots for the 32-element legacy types Q4_0, Q4_1,
//! Q8_0 and IQ4_NL, reading GGML blocks directly (no unpack buffer).
//!
//! For a token generation step every weight byte is used once, so the unpack-then-tile scheme of
//! `qmatmul` spends more time writing and re-reading its buffers than multiplying. Here, per pair
//! of blocks: one 512-bit `vpdpbusd` of the nibbles (expanded in registers) with 64 activation
//! bytes, then two 256-bit FMAs (block 2p, then 2p + 1) with the blocks' scales `d_w * d_x`,
//! which come from a vector of 16 block scales built once per 16 blocks (one gather of the f16
//! `d`/`m` words, `vcvtph2ps`). The result is bit-identical to `qmatmul`'s tile kernels (same
//! canonical summation order, see there).
//!
//! ```text
//!   y = sum_b d_w[b] d_x[b] I_b + sum_b m_w[b] s_x[b]     I_b exact integer dot of block b
//!   Q4_0: u = q, I_b starts from -8 * sum(xq)     Q4_1: u = q, m from the block, s_x from Q8_1
//!   Q8_0 / IQ4_NL: u = value + 128, I_b starts from -128 * sum(xq) (xc4)
//! ```

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rocmforge_quant::{GgmlType, KVALUES_IQ4NL};

/// Types with a fused decode kernel.
pub(crate) fn has_fused(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::IQ4_NL
    )
}

/// Activations of one token, as `act::QActs` lays them out.
#[derive(Clone, Copy)]
pub(crate) struct XTok {
    pub xq: *const i8,
    pub xc4: *const i32,
    pub d32: *const f32,
    pub xs16: *const f32,
}

/// Dot of one weight row (`nb` blocks of `ty`) with one quantized token.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI; `row` must be valid for `nb` blocks; the token's
/// arrays must be padded as `QActs` pads them (xq to a multiple of 64 bytes, d32 to a multiple
/// of 16 blocks, xs16 to a multiple of 32 entries, zero-filled). `ty` must satisfy `has_fused`.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn row_dot(ty: GgmlType, row: *const u8, nb: usize, x: XTok) -> f32 {
    match ty {
        GgmlType::Q4_0 => row_dot512::<0>(row, nb, x),
        GgmlType::Q4_1 => row_dot512::<1>(row, nb, x),
        GgmlType::Q8_0 => row_dot512::<2>(row, nb, x),
        _ => row_dot512::<3>(row, nb, x),
    }
}

/// Permutation indices putting block scale `2p` in lanes 0..8 and `2p + 1` in lanes 8..16.
#[cfg(target_arch = "x86_64")]
static PAIR_IDX: [[i32; 16]; 8] = {
    let mut t = [[0i32; 16]; 8];
    let mut p = 0;
    while p < 8 {
        let mut l = 0;
        while l < 16 {
            t[p][l] = (2 * p + l / 8) as i32;
            l += 1;
        }
        p += 1;
    }
    t
};

/// IQ4_NL codebook + 128 as u8, repeated in each 128-bit lane (for `vpshufb`).
#[cfg(target_arch = "x86_64")]
static IQ4_LUT: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = (KVALUES_IQ4NL[i % 16] as u8) ^ 0x80;
        i += 1;
    }
    t
};

/// TY: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = IQ4_NL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn row_dot512<const TY: u8>(row: *const u8, nb: usize, x: XTok) -> f32 {
    let (ts, qoff) = match TY {
        0 => (18usize, 2usize),
        1 => (20, 4),
        2 => (34, 2),
        _ => (18, 2),
    };
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let offs = _mm512_mullo_epi32(iota, _mm512_set1_epi32(ts as i32));
    let shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
    let low4 = _mm512_set1_epi8(0x0F);
    let flip = _mm256_set1_epi8(-128);
    let lut = _mm512_loadu_si512(IQ4_LUT.as_ptr() as *const _);
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm512_setzero_ps();
    let mut b0 = 0;
    while b0 < nb {
        let ng = 16.min(nb - b0);
        let mask: __mmask16 = if ng == 16 { 0xFFFF } else { (1u16 << ng) - 1 };
        let base = row.add(b0 * ts);
        // Lane i: the 4 bytes at the start of block b0 + i (d, then m or the first quants).
        let dm = _mm512_mask_i32gather_epi32::<1>(
            _mm512_setzero_si512(),
            mask,
            offs,
            base as *const i32,
        );
        let dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
        let scale = _mm512_mul_ps(dw, _mm512_loadu_ps(x.d32.add(b0)));
        if TY == 1 {
            // Bias entry j = 2b holds m_b (odd entries are 0 on both sides): spread 8 blocks'
            // minima over the even lanes of one 16-entry step, as the tile kernels see them.
            let mw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
            let lo = _mm512_maskz_expand_ps(0x5555, mw);
            accm = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x.xs16.add(2 * b0)), accm);
            if ng > 8 {
                let up = _mm512_shuffle_f32x4::<0b11_10_11_10>(mw, mw);
                let hi = _mm512_maskz_expand_ps(0x5555, up);
                accm = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x.xs16.add(2 * b0 + 16)), accm);
            }
        }
        let mut p = 0;
        while 2 * p < ng {
            let b = b0 + 2 * p;
            let two = 2 * p + 1 < ng;
            let q0 = row.add(b * ts + qoff);
            let u = if TY == 2 {
                let lo = _mm256_xor_si256(_mm256_loadu_si256(q0 as *const __m256i), flip);
                let hi = if two {
                    _mm256_xor_si256(_mm256_loadu_si256(q0.add(ts) as *const __m256i), flip)
                } else {
                    _mm256_setzero_si256()
                };
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            } else {
                let lo = _mm_loadu_si128(q0 as *const __m128i);
                let hi = if two {
                    _mm_loadu_si128(q0.add(ts) as *const __m128i)
                } else {
                    _mm_setzero_si128()
                };
                let q = _mm512_castsi256_si512(_mm256_set_m128i(hi, lo));
                // [q0, q0, q1, q1] per 128-bit lane, high nibbles in lanes 1 and 3.
                let z = _mm512_shuffle_i64x2::<0b01_01_00_00>(q, q);
                let n = _mm512_and_si512(_mm512_srlv_epi64(z, shifts), low4);
                if TY == 3 {
                    _mm512_shuffle_epi8(lut, n)
                } else {
                    n
                }
            };
            let init = match TY {
                // Q4_0 value = q - 8: start from -8 * sum(xq) = xc4 / 16 (exact).
                0 => _mm512_srai_epi32::<4>(_mm512_loadu_si512(x.xc4.add(b * 8) as *const _)),
                1 => _mm512_setzero_si512(),
                _ => _mm512_loadu_si512(x.xc4.add(b * 8) as *const _),
            };
            let xv = _mm512_loadu_si512(x.xq.add(b * 32) as *const _);
            let f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, u, xv));
            let sv =
                _mm512_permutexvar_ps(_mm512_loadu_si512(PAIR_IDX[p].as_ptr() as *const _), scale);
            acc = _mm256_fmadd_ps(_mm512_castps512_ps256(f), _mm512_castps512_ps256(sv), acc);
            // A missing second block has I = 0 and scale 0: adding fma(0, 0, acc) is exact.
            acc = _mm256_fmadd_ps(crate::qmatmul::hi256(f), crate::qmatmul::hi256(sv), acc);
            p += 1;
        }
        b0 += 16;
    }
    let v = crate::simd::x86::hsum256(acc);
    if TY == 1 {
        v + crate::simd::x86::hsum256(_mm256_add_ps(
            _mm512_castps512_ps256(accm),
            crate::qmatmul::hi256(accm),
        ))
    } else {
        v
    }
}
