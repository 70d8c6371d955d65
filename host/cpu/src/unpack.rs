//! Weight unpacking for the quantized matmul: GGML blocks -> one uniform "u8 + scales" layout.
//!
//! Every supported type is decoded, a few rows at a time, into
//!
//! ```text
//!   u[i]    : u8   quant value of element i        (row stride kp = k rounded up to 64)
//!   s4[i/4] : f32  scale S of the group holding i  (one per 4 elements = one i32 SIMD lane)
//!   b16[i/16]: f32 bias B of the 16 elements i/16  (row stride g16 = kp/16 rounded up to 16)
//!   weight[i] = S * (u[i] - off) + B,  off = 128 for "wide" types, else 0
//! ```
//!
//! "Wide" types store the signed quant value + 128 and have B = 0, so the kernels get the exact
//! signed integer dot of llama.cpp (VNNI: start from -128 * sum(x); AVX2: sign trick): the 8-bit
//! ones (Q8_0, Q8_K, IQ4_NL, IQ4_XS, MXFP4) and those with a fixed offset (Q4_0: q - 8, Q5_0: q - 16,
//! Q3_K: q - 4, Q6_K: q - 32). Types with a per-block minimum (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K)
//! keep u = q (<= 63) and put the minimum into B: Q4_1/Q5_1 at the even index of each block
//! (0 at the odd one, matching `act`'s xs16 = [s, 0]), K-quants per 16.
//! MXFP4 is IQ4_NL with another codebook (doubled E2M1 values, -12..12) and an E8M0 scale
//! (S = 2^(e - 128), exact in f32), as llama.cpp's `ggml_vec_dot_mxfp4_q8_0` reads it.
//! Padding (k..kp) must be u = 0 with S = 0 and B = 0, so it adds nothing.
//!
//! Bit layouts follow llama.cpp's `ggml-common.h` / `dequantize_row_*`; the tests check every
//! type against `rocmforge_quant::dequantize`, written independently.

use rocmforge_quant::{e8m0_half, get_scale_min_k4, GgmlType, KVALUES_IQ4NL, KVALUES_MXFP4};

/// True if the quantized matmul handles `ty`.
pub(crate) fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ4_NL | IQ4_XS | MXFP4)
}

/// True for types whose `u` is value + 128 (see module header).
pub(crate) fn is_wide(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q5_0 | Q8_0 | Q8_K | IQ4_NL | IQ4_XS | MXFP4 | Q3_K | Q6_K)
}

/// True if B is identically zero for `ty` (the kernels skip the bias dot).
pub(crate) fn has_bias(ty: GgmlType) -> bool {
    !is_wide(ty)
}

#[inline(always)]
fn fill(s: &mut [f32], v: f32) {
    for e in s {
        *e = v;
    }
}

/// Walk the blocks of a row as fixed-size arrays (`TS` bytes in, `BS` values, `BS/4` scales,
/// `BS/16` biases out), so the per-type decoders compile without bounds checks and vectorise.
#[inline(always)]
fn blocks<const TS: usize, const BS: usize, const S4: usize, const B16: usize>(
    src: &[u8],
    u: &mut [u8],
    s4: &mut [f32],
    b16: &mut [f32],
    f: impl Fn(&[u8; TS], &mut [u8; BS], &mut [f32; S4], &mut [f32; B16]),
) {
    let (src, _) = src.as_chunks::<TS>();
    let (u, _) = u.as_chunks_mut::<BS>();
    let (s4, _) = s4.as_chunks_mut::<S4>();
    let (b16, _) = b16.as_chunks_mut::<B16>();
    for (((b, u), s4), b16) in src.iter().zip(u).zip(s4).zip(b16) {
        f(b, u, s4, b16);
    }
}

/// Nibbles to bytes, plus `add` (value + 128 - offset for wide types).
#[inline(always)]
fn nibbles(qs: &[u8; 16], u: &mut [u8; 32], add: u8) {
    for j in 0..16 {
        u[j] = (qs[j] & 15) + add;
        u[j + 16] = (qs[j] >> 4) + add;
    }
}

/// Per-block minimum of Q4_1 / Q5_1 at the block's even bias slot.
#[inline(always)]
fn min32(b16: &mut [f32; 2], m: f32) {
    b16[0] = m;
    b16[1] = 0.0;
}

#[inline(always)]
fn arr<const N: usize>(b: &[u8], at: usize) -> &[u8; N] {
    // Callers pass constant offsets inside a fixed-size block: this never fails.
    match b[at..at + N].try_into() {
        Ok(a) => a,
        Err(_) => unreachable!("constant block offsets"),
    }
}

/// Decode one row of `k` elements (`src` = exactly its bytes) into `u[..k]`, `s4[..k/4]`,
/// `b16[..k/16]`. Padding beyond `k` is the caller's (see `zero_padding`).
/// `cvt` converts f16 bits to f32: `rocmforge_quant::f16_to_f32` in portable code, one
/// `vcvtph2ps` in the AVX2 path (the portable conversion is most of the Q4_0/Q4_1 unpack cost).
#[inline(always)]
pub(crate) fn unpack_row(
    ty: GgmlType,
    src: &[u8],
    k: usize,
    u: &mut [u8],
    s4: &mut [f32],
    b16: &mut [f32],
    cvt: impl Fn(u16) -> f32 + Copy,
) {
    use GgmlType::*;
    let h = |b: &[u8], at: usize| cvt(u16::from_le_bytes([b[at], b[at + 1]]));
    let (u, s4, b16) = (&mut u[..k], &mut s4[..k / 4], &mut b16[..k / 16]);
    match ty {
        Q4_0 => blocks::<18, 32, 8, 2>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                nibbles(arr(b, 2), u, 120);
                fill(s4, h(b, 0));
                fill(b16, 0.0);
            },
        ),
        Q4_1 => blocks::<20, 32, 8, 2>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                nibbles(arr(b, 4), u, 0);
                fill(s4, h(b, 0));
                min32(b16, h(b, 2));
            },
        ),
        Q5_0 => blocks::<22, 32, 8, 2>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                q5(u32::from_le_bytes(*arr(b, 2)), arr(b, 6), u, 112);
                fill(s4, h(b, 0));
                fill(b16, 0.0);
            },
        ),
        Q5_1 => blocks::<24, 32, 8, 2>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                q5(u32::from_le_bytes(*arr(b, 4)), arr(b, 8), u, 0);
                fill(s4, h(b, 0));
                min32(b16, h(b, 2));
            },
        ),
        Q8_0 => blocks::<34, 32, 8, 2>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                let qs: &[u8; 32] = arr(b, 2);
                for j in 0..32 {
                    u[j] = qs[j] ^ 0x80;
                }
                fill(s4, h(b, 0));
                fill(b16, 0.0);
            },
        ),
        IQ4_NL => blocks::<18, 32, 8, 2>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                iq4(arr(b, 2), u);
                fill(s4, h(b, 0));
                fill(b16, 0.0);
            },
        ),
        MXFP4 => blocks::<17, 32, 8, 2>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                // e | qs[16]
                let qs: &[u8; 16] = arr(b, 1);
                for j in 0..16 {
                    u[j] = (KVALUES_MXFP4[(qs[j] & 15) as usize] as u8) ^ 0x80;
                    u[j + 16] = (KVALUES_MXFP4[(qs[j] >> 4) as usize] as u8) ^ 0x80;
                }
                fill(s4, e8m0_half(b[0]));
                fill(b16, 0.0);
            },
        ),
        Q8_K => blocks::<292, 256, 64, 16>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                let qs: &[u8; 256] = arr(b, 4);
                for j in 0..256 {
                    u[j] = qs[j] ^ 0x80;
                }
                fill(s4, f32::from_le_bytes(*arr(b, 0)));
                fill(b16, 0.0);
            },
        ),
        Q2_K => blocks::<84, 256, 64, 16>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                // scales[16] | qs[64] | d | dmin
                let (d, dmin) = (h(b, 80), h(b, 82));
                let qs: &[u8; 64] = arr(b, 16);
                for n in 0..2 {
                    for j in 0..4 {
                        for i in 0..32 {
                            u[128 * n + 32 * j + i] = (qs[32 * n + i] >> (2 * j)) & 3;
                        }
                    }
                }
                for sb in 0..16 {
                    let sc = b[sb];
                    fill(&mut s4[4 * sb..4 * sb + 4], d * (sc & 15) as f32);
                    b16[sb] = -dmin * (sc >> 4) as f32;
                }
            },
        ),
        Q3_K => blocks::<110, 256, 64, 16>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                // hmask[32] | qs[64] | scales[12] | d
                let d = h(b, 108);
                let hm: &[u8; 32] = arr(b, 0);
                let qs: &[u8; 64] = arr(b, 32);
                let sc = rocmforge_quant::blocks::q3k_scales(arr(b, 96));
                for n in 0..2 {
                    for j in 0..4 {
                        let shift = 4 * n + j;
                        for i in 0..32 {
                            let lo = (qs[32 * n + i] >> (2 * j)) & 3;
                            let hi = ((hm[i] >> shift) & 1) << 2;
                            u[128 * n + 32 * j + i] = (lo | hi) + 124;
                        }
                    }
                }
                for sb in 0..16 {
                    fill(&mut s4[4 * sb..4 * sb + 4], d * sc[sb] as f32);
                }
                fill(b16, 0.0);
            },
        ),
        Q4_K => blocks::<144, 256, 64, 16>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                let qs: &[u8; 128] = arr(b, 16);
                for c in 0..4 {
                    for l in 0..32 {
                        let q = qs[32 * c + l];
                        u[64 * c + l] = q & 15;
                        u[64 * c + 32 + l] = q >> 4;
                    }
                }
                k4_scales(h(b, 0), h(b, 2), b, s4, b16);
            },
        ),
        Q5_K => blocks::<176, 256, 64, 16>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                let qh: &[u8; 32] = arr(b, 16);
                let qs: &[u8; 128] = arr(b, 48);
                for c in 0..4 {
                    for l in 0..32 {
                        let q = qs[32 * c + l];
                        u[64 * c + l] = (q & 15) | (((qh[l] >> (2 * c)) & 1) << 4);
                        u[64 * c + 32 + l] = (q >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
                    }
                }
                k4_scales(h(b, 0), h(b, 2), b, s4, b16);
            },
        ),
        Q6_K => blocks::<210, 256, 64, 16>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                // ql[128] | qh[64] | scales[16] (i8) | d
                let d = h(b, 208);
                let ql: &[u8; 128] = arr(b, 0);
                let qh: &[u8; 64] = arr(b, 128);
                for n in 0..2 {
                    for l in 0..32 {
                        let hb = qh[32 * n + l];
                        let (a, c) = (ql[64 * n + l], ql[64 * n + 32 + l]);
                        u[128 * n + l] = ((a & 15) | ((hb & 3) << 4)) + 96;
                        u[128 * n + 32 + l] = ((c & 15) | (((hb >> 2) & 3) << 4)) + 96;
                        u[128 * n + 64 + l] = ((a >> 4) | (((hb >> 4) & 3) << 4)) + 96;
                        u[128 * n + 96 + l] = ((c >> 4) | (((hb >> 6) & 3) << 4)) + 96;
                    }
                }
                for sb in 0..16 {
                    fill(&mut s4[4 * sb..4 * sb + 4], d * (b[192 + sb] as i8) as f32);
                }
                fill(b16, 0.0);
            },
        ),
        IQ4_XS => blocks::<136, 256, 64, 16>(
            src,
            u,
            s4,
            b16,
            #[inline(always)]
            |b, u, s4, b16| {
                // d | scales_h (u16) | scales_l[4] | qs[128]
                let d = h(b, 0);
                let sh = u16::from_le_bytes([b[2], b[3]]);
                for ib32 in 0..8 {
                    let ls = ((b[4 + ib32 / 2] >> (4 * (ib32 % 2))) & 15) | ((((sh >> (2 * ib32)) & 3) as u8) << 4);
                    fill(&mut s4[8 * ib32..8 * ib32 + 8], d * (ls as i32 - 32) as f32);
                    let (uc, _) = u.as_chunks_mut::<32>();
                    iq4(arr(b, 8 + 16 * ib32), &mut uc[ib32]);
                }
                fill(b16, 0.0);
            },
        ),
        _ => {}
    }
}

#[inline(always)]
fn q5(qh: u32, qs: &[u8; 16], u: &mut [u8; 32], add: u8) {
    for j in 0..16 {
        u[j] = ((qs[j] & 15) | ((((qh >> j) & 1) as u8) << 4)) + add;
        u[j + 16] = ((qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4)) + add;
    }
}

#[inline(always)]
fn iq4(qs: &[u8; 16], u: &mut [u8; 32]) {
    for j in 0..16 {
        u[j] = (KVALUES_IQ4NL[(qs[j] & 15) as usize] as u8) ^ 0x80;
        u[j + 16] = (KVALUES_IQ4NL[(qs[j] >> 4) as usize] as u8) ^ 0x80;
    }
}

/// Q4_K / Q5_K: 8 groups of 32 with 6-bit scale and min; d, dmin at bytes 0 and 2.
#[inline(always)]
fn k4_scales(d: f32, dmin: f32, b: &[u8], s4: &mut [f32; 64], b16: &mut [f32; 16]) {
    let sc12: &[u8; 12] = arr(b, 4);
    for g in 0..8 {
        let (sc, m) = get_scale_min_k4(g, sc12);
        fill(&mut s4[8 * g..8 * g + 8], d * sc as f32);
        let bias = -dmin * m as f32;
        b16[2 * g] = bias;
        b16[2 * g + 1] = bias;
    }
}

/// Zero the padding of one unpacked row (elements k..kp, lanes k/4..kp/4, biases k/16..g16).
#[inline]
pub(crate) fn zero_padding(k: usize, u: &mut [u8], s4: &mut [f32], b16: &mut [f32]) {
    u[k..].fill(0);
    s4[k / 4..].fill(0.0);
    b16[k / 16..].fill(0.0);
}
