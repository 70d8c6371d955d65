//! Decode-path (few tokens) AVX-512 VNNI row dots for the 32-element legacy types Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0 and IQ4_NL, reading GGML blocks directly (no unpack buffer). `has_fused` and `XTok` are
//! shared with the AArch64 twin, `neon_decode`.
//!
//! For a token generation step every weight byte is used once, so the unpack-then-tile scheme of
//! `qmatmul` spends more time writing and re-reading its buffers than multiplying. Here, per pair
//! of rows and each block: one 512-bit `vpdpbusd` of the two rows' nibbles (expanded in
//! registers) with the block's 32 activation bytes in both halves, then one FMA with the scales
//! `d_w * d_x`, which come from vectors of 16 block scales built once per 16 blocks and row (one
//! gather of the f16 `d`/`m` words, `vcvtph2ps`). The result is bit-identical to `qmatmul`'s tile kernels (same
//! canonical summation order, see there).
//!
//! ```text
//!   y = sum_b d_w[b] d_x[b] I_b + sum_b m_w[b] s_x[b]     I_b exact integer dot of block b
//!   Q4_0: u = q, I_b starts from -8 * sum(xq)     Q4_1: u = q, m from the block, s_x from Q8_1
//!   Q5_0: u = q | qh bit << 4, I_b starts from -16 * sum(xq)     Q5_1: as Q4_1 with u as Q5_0
//!   Q8_0 / IQ4_NL: u = value + 128, I_b starts from -128 * sum(xq) (xc4)
//! ```

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rocmforge_quant::GgmlType;
#[cfg(target_arch = "x86_64")]
use rocmforge_quant::KVALUES_IQ4NL;

/// Types with a fused decode kernel (Q5_0 and Q5_1 on x86-64 only so far).
pub(crate) fn has_fused(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 | GgmlType::IQ4_NL)
        || (cfg!(target_arch = "x86_64") && matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1))
}

/// Activations of one token, as `act::QActs` lays them out.
#[derive(Clone, Copy)]
pub(crate) struct XTok {
    pub xq: *const i8,
    /// The AVX-512 kernel's start values; NEON forms the signed weights in registers instead.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xc4: *const i32,
    pub d32: *const f32,
    pub xs16: *const f32,
}

/// Dots of four weight rows (`nb` blocks of `ty` each; a row may repeat when fewer are left)
/// with one quantized token.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI; every row must be valid for `nb` blocks; the
/// token's arrays must be padded as `QActs` pads them (xq to a multiple of 64 bytes, d32 to a
/// multiple of 16 blocks, xs16 to a multiple of 32 entries, zero-filled). `ty` must satisfy
/// `has_fused`.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn rows_dot(ty: GgmlType, rows: [*const u8; 4], nb: usize, x: XTok) -> [f32; 4] {
    match ty {
        GgmlType::Q4_0 => rows_dot512::<0>(rows, nb, x),
        GgmlType::Q4_1 => rows_dot512::<1>(rows, nb, x),
        GgmlType::Q8_0 => rows_dot512::<2>(rows, nb, x),
        GgmlType::Q5_0 => rows_dot512::<4>(rows, nb, x),
        GgmlType::Q5_1 => rows_dot512::<5>(rows, nb, x),
        _ => rows_dot512::<3>(rows, nb, x),
    }
}

/// `vpermt2ps` indices: block scale i of the first source in lanes 0..8, of the second in 8..16.
#[cfg(target_arch = "x86_64")]
static PAIR_IDX: [[i32; 16]; 16] = {
    let mut t = [[0i32; 16]; 16];
    let mut i = 0;
    while i < 16 {
        let mut l = 0;
        while l < 16 {
            t[i][l] = if l < 8 { i as i32 } else { 16 + i as i32 };
            l += 1;
        }
        i += 1;
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

/// TY: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0, 3 = IQ4_NL, 4 = Q5_0, 5 = Q5_1. Rows (2p, 2p + 1) share one 512-bit vector
/// per block: low half row 2p, high half row 2p + 1, each a canonical 8-lane accumulator.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_dot512<const TY: u8>(rows: [*const u8; 4], nb: usize, x: XTok) -> [f32; 4] {
    let (ts, qoff) = match TY {
        0 => (18usize, 2usize),
        1 => (20, 4),
        2 => (34, 2),
        4 => (22, 6),
        5 => (24, 8),
        _ => (18, 2),
    };
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let offs = _mm512_mullo_epi32(iota, _mm512_set1_epi32(ts as i32));
    let shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
    let low4 = _mm512_set1_epi8(0x0F);
    let flip = _mm256_set1_epi8(-128);
    let lut = _mm512_loadu_si512(IQ4_LUT.as_ptr() as *const _);
    let mut acc = [_mm512_setzero_ps(); 2];
    // Q4_1 minimum term, llama.cpp's order: one sequential fma per block and row; the four
    // rows' chains run side by side in the lanes of one 128-bit vector.
    let mut summ4 = _mm_setzero_ps();
    let mut b0 = 0;
    while b0 < nb {
        let ng = 16.min(nb - b0);
        let mask: __mmask16 = if ng == 16 { 0xFFFF } else { (1u16 << ng) - 1 };
        let xd = _mm512_loadu_ps(x.d32.add(b0));
        let mut scale = [_mm512_setzero_ps(); 4];
        let mut mw = [_mm512_setzero_ps(); 4];
        for r in 0..4 {
            // Lane i: the 4 bytes at the start of block b0 + i (d, then m or the first quants).
            let dm = _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, offs, rows[r].add(b0 * ts) as *const i32);
            scale[r] = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)), xd);
            if TY == 1 || TY == 5 {
                mw[r] = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16)));
            }
        }
        if TY == 1 || TY == 5 {
            // Transpose 4 rows x 16 blocks: block 4k + j ends in 128-bit lane k of u[j] as
            // (row 0, 1, 2, 3); then per block one 4-lane fma, in block order.
            let (t0, t1) = (_mm512_unpacklo_ps(mw[0], mw[1]), _mm512_unpackhi_ps(mw[0], mw[1]));
            let (t2, t3) = (_mm512_unpacklo_ps(mw[2], mw[3]), _mm512_unpackhi_ps(mw[2], mw[3]));
            let u = [
                _mm512_shuffle_ps::<0x44>(t0, t2),
                _mm512_shuffle_ps::<0xEE>(t0, t2),
                _mm512_shuffle_ps::<0x44>(t1, t3),
                _mm512_shuffle_ps::<0xEE>(t1, t3),
            ];
            let mut mt = [0f32; 64];
            for (j, v) in u.iter().enumerate() {
                _mm512_storeu_ps(mt.as_mut_ptr().add(16 * j), *v);
            }
            for i in 0..ng {
                let mv = _mm_loadu_ps(mt.as_ptr().add(16 * (i % 4) + 4 * (i / 4)));
                summ4 = _mm_fmadd_ps(mv, _mm_set1_ps(*x.xs16.add(2 * (b0 + i))), summ4);
            }
        }
        for i in 0..ng {
            let b = b0 + i;
            let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(x.xq.add(b * 32) as *const __m256i));
            let init = match TY {
                1 | 5 => _mm512_setzero_si512(),
                _ => {
                    let c = _mm512_broadcast_i64x4(_mm256_loadu_si256(x.xc4.add(b * 8) as *const __m256i));
                    if TY == 0 {
                        // Q4_0 value = q - 8: start from -8 * sum(xq) = xc4 / 16 (exact).
                        _mm512_srai_epi32::<4>(c)
                    } else if TY == 4 {
                        // Q5_0 value = q - 16: start from -16 * sum(xq) = xc4 / 8 (exact).
                        _mm512_srai_epi32::<3>(c)
                    } else {
                        c
                    }
                }
            };
            let idx = _mm512_loadu_si512(PAIR_IDX[i].as_ptr() as *const _);
            for p in 0..2 {
                let q0 = rows[2 * p].add(b * ts + qoff);
                let q1 = rows[2 * p + 1].add(b * ts + qoff);
                let u = if TY == 2 {
                    let lo = _mm256_xor_si256(_mm256_loadu_si256(q0 as *const __m256i), flip);
                    let hi = _mm256_xor_si256(_mm256_loadu_si256(q1 as *const __m256i), flip);
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
                } else {
                    let q = _mm512_castsi256_si512(_mm256_set_m128i(
                        _mm_loadu_si128(q1 as *const __m128i),
                        _mm_loadu_si128(q0 as *const __m128i),
                    ));
                    // [q0, q0, q1, q1] per 128-bit lane, high nibbles in lanes 1 and 3.
                    let z = _mm512_shuffle_i64x2::<0b01_01_00_00>(q, q);
                    let n = _mm512_and_si512(_mm512_srlv_epi64(z, shifts), low4);
                    if TY == 3 {
                        _mm512_shuffle_epi8(lut, n)
                    } else if TY == 4 || TY == 5 {
                        // Q5_0 / Q5_1: bit 4 of element j is bit j of the block's qh (the 4
                        // bytes before qs);
                        // row 2p's 32 elements are bytes 0..32 of `n`, row 2p + 1's 32..64.
                        let h0 = (q0.sub(4) as *const u32).read_unaligned() as u64;
                        let h1 = (q1.sub(4) as *const u32).read_unaligned() as u64;
                        _mm512_mask_mov_epi8(n, h0 | (h1 << 32), _mm512_or_si512(n, _mm512_set1_epi8(0x10)))
                    } else {
                        n
                    }
                };
                let f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, u, xv));
                let sv = _mm512_permutex2var_ps(scale[2 * p], idx, scale[2 * p + 1]);
                acc[p] = _mm512_fmadd_ps(f, sv, acc[p]);
            }
        }
        b0 += 16;
    }
    let mut summ = [0f32; 4];
    _mm_storeu_ps(summ.as_mut_ptr(), summ4);
    let mut out = [0f32; 4];
    for r in 0..4 {
        let a = acc[r / 2];
        let half = if r % 2 == 0 { _mm512_castps512_ps256(a) } else { crate::qmatmul::hi256(a) };
        out[r] = crate::simd::x86::hsum256(half);
        if TY == 1 || TY == 5 {
            out[r] += summ[r];
        }
    }
    out
}
