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
//! Narrow types (u <= 63: Q4_0/1, Q5_0/1, Q2_K..Q6_K) fold their zero point into B; wide types
//! (8-bit values: Q8_0, Q8_K, IQ4_NL, IQ4_XS) store value + 128 and have B = 0, so the kernels can
//! recover the exact signed integer dot (VNNI: start from -128 * sum(x); AVX2: sign trick).
//! Padding (k..kp) must be u = 0 with S = 0 and B = 0, so it adds nothing.
//!
//! Bit layouts follow llama.cpp's `ggml-common.h` / `dequantize_row_*`; the tests check every
//! type against `rocmforge_quant::dequantize`, written independently.

use rocmforge_quant::{f16_to_f32, get_scale_min_k4, GgmlType, KVALUES_IQ4NL};

/// True if the quantized matmul handles `ty`.
pub(crate) fn supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ4_NL | IQ4_XS)
}

/// True for types whose `u` is value + 128 (see module header).
pub(crate) fn is_wide(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q8_0 | Q8_K | IQ4_NL | IQ4_XS)
}

/// True if B is identically zero for `ty` (the kernels skip the bias dot).
pub(crate) fn has_bias(ty: GgmlType) -> bool {
    !is_wide(ty)
}

#[inline(always)]
fn h(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[inline(always)]
fn fill(s: &mut [f32], v: f32) {
    for e in s {
        *e = v;
    }
}

/// Decode one row of `k` elements (`src` = exactly its bytes) into `u[..k]`, `s4[..k/4]`,
/// `b16[..k/16]`. Padding beyond `k` is the caller's (see `zero_padding`).
#[inline(always)]
pub(crate) fn unpack_row(ty: GgmlType, src: &[u8], k: usize, u: &mut [u8], s4: &mut [f32], b16: &mut [f32]) {
    use GgmlType::*;
    let bs = ty.block_size();
    let ts = ty.type_size();
    let nb = k / bs;
    for ib in 0..nb {
        let b = &src[ib * ts..(ib + 1) * ts];
        let u = &mut u[ib * bs..(ib + 1) * bs];
        let s4 = &mut s4[ib * bs / 4..(ib + 1) * bs / 4];
        let b16 = &mut b16[ib * bs / 16..(ib + 1) * bs / 16];
        match ty {
            Q4_0 | Q4_1 => {
                let d = h(b, 0);
                let (m, qs) = if ty == Q4_0 { (-8.0 * d, &b[2..18]) } else { (h(b, 2), &b[4..20]) };
                for j in 0..16 {
                    u[j] = qs[j] & 15;
                    u[j + 16] = qs[j] >> 4;
                }
                fill(s4, d);
                fill(b16, m);
            }
            Q5_0 | Q5_1 => {
                let d = h(b, 0);
                let (m, o) = if ty == Q5_0 { (-16.0 * d, 2) } else { (h(b, 2), 4) };
                let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
                let qs = &b[o + 4..o + 20];
                for j in 0..16 {
                    u[j] = (qs[j] & 15) | ((((qh >> j) & 1) as u8) << 4);
                    u[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                }
                fill(s4, d);
                fill(b16, m);
            }
            Q8_0 => {
                let d = h(b, 0);
                for j in 0..32 {
                    u[j] = b[2 + j] ^ 0x80;
                }
                fill(s4, d);
                fill(b16, 0.0);
            }
            IQ4_NL => {
                let d = h(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    u[j] = (KVALUES_IQ4NL[(q & 15) as usize] as u8) ^ 0x80;
                    u[j + 16] = (KVALUES_IQ4NL[(q >> 4) as usize] as u8) ^ 0x80;
                }
                fill(s4, d);
                fill(b16, 0.0);
            }
            Q8_K => {
                let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                for j in 0..256 {
                    u[j] = b[4 + j] ^ 0x80;
                }
                fill(s4, d);
                fill(b16, 0.0);
            }
            Q2_K => {
                // scales[16] | qs[64] | d | dmin
                let (d, dmin) = (h(b, 80), h(b, 82));
                let qs = &b[16..80];
                for n in 0..2 {
                    for j in 0..4 {
                        for hh in 0..2 {
                            for l in 0..16 {
                                u[128 * n + 32 * j + 16 * hh + l] = (qs[32 * n + 16 * hh + l] >> (2 * j)) & 3;
                            }
                        }
                    }
                }
                for sb in 0..16 {
                    let sc = b[sb];
                    fill(&mut s4[4 * sb..4 * sb + 4], d * (sc & 15) as f32);
                    b16[sb] = -dmin * (sc >> 4) as f32;
                }
            }
            Q3_K => {
                // hmask[32] | qs[64] | scales[12] | d
                let d = h(b, 108);
                let (hm, qs) = (&b[0..32], &b[32..96]);
                let mut sc12 = [0u8; 12];
                sc12.copy_from_slice(&b[96..108]);
                let sc = rocmforge_quant::blocks::q3k_scales(&sc12);
                for n in 0..2 {
                    for j in 0..4 {
                        let bit = 1u8 << (4 * n + j);
                        for hh in 0..2 {
                            for l in 0..16 {
                                let lo = (qs[32 * n + 16 * hh + l] >> (2 * j)) & 3;
                                let hi = if hm[16 * hh + l] & bit != 0 { 4 } else { 0 };
                                u[128 * n + 32 * j + 16 * hh + l] = lo | hi;
                            }
                        }
                    }
                }
                for sb in 0..16 {
                    let s = d * sc[sb] as f32;
                    fill(&mut s4[4 * sb..4 * sb + 4], s);
                    b16[sb] = -4.0 * s;
                }
            }
            Q4_K | Q5_K => {
                // d | dmin | scales[12] | (Q5_K: qh[32]) | qs[128]
                let (d, dmin) = (h(b, 0), h(b, 2));
                let mut sc12 = [0u8; 12];
                sc12.copy_from_slice(&b[4..16]);
                let (qh, qs) = if ty == Q5_K { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
                for c in 0..4 {
                    for l in 0..32 {
                        let q = qs[32 * c + l];
                        let (mut lo, mut hi) = (q & 15, q >> 4);
                        if ty == Q5_K {
                            lo |= ((qh[l] >> (2 * c)) & 1) << 4;
                            hi |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                        }
                        u[64 * c + l] = lo;
                        u[64 * c + 32 + l] = hi;
                    }
                }
                for g in 0..8 {
                    let (sc, m) = get_scale_min_k4(g, &sc12);
                    fill(&mut s4[8 * g..8 * g + 8], d * sc as f32);
                    let bias = -dmin * m as f32;
                    b16[2 * g] = bias;
                    b16[2 * g + 1] = bias;
                }
            }
            Q6_K => {
                // ql[128] | qh[64] | scales[16] (i8) | d
                let d = h(b, 208);
                let (ql, qh) = (&b[0..128], &b[128..192]);
                for n in 0..2 {
                    for l in 0..32 {
                        let hb = qh[32 * n + l];
                        let (a, c) = (ql[64 * n + l], ql[64 * n + 32 + l]);
                        u[128 * n + l] = (a & 15) | ((hb & 3) << 4);
                        u[128 * n + 32 + l] = (c & 15) | (((hb >> 2) & 3) << 4);
                        u[128 * n + 64 + l] = (a >> 4) | (((hb >> 4) & 3) << 4);
                        u[128 * n + 96 + l] = (c >> 4) | (((hb >> 6) & 3) << 4);
                    }
                }
                for sb in 0..16 {
                    let s = d * (b[192 + sb] as i8) as f32;
                    fill(&mut s4[4 * sb..4 * sb + 4], s);
                    b16[sb] = -32.0 * s;
                }
            }
            IQ4_XS => {
                // d | scales_h (u16) | scales_l[4] | qs[128]
                let d = h(b, 0);
                let sh = u16::from_le_bytes([b[2], b[3]]);
                for ib32 in 0..8 {
                    let ls = ((b[4 + ib32 / 2] >> (4 * (ib32 % 2))) & 15) | ((((sh >> (2 * ib32)) & 3) as u8) << 4);
                    fill(&mut s4[8 * ib32..8 * ib32 + 8], d * (ls as i32 - 32) as f32);
                    for j in 0..16 {
                        let q = b[8 + 16 * ib32 + j];
                        u[32 * ib32 + j] = (KVALUES_IQ4NL[(q & 15) as usize] as u8) ^ 0x80;
                        u[32 * ib32 + 16 + j] = (KVALUES_IQ4NL[(q >> 4) as usize] as u8) ^ 0x80;
                    }
                }
                fill(b16, 0.0);
            }
            _ => {}
        }
    }
}

/// Zero the padding of one unpacked row (elements k..kp, lanes k/4..kp/4, biases k/16..g16).
#[inline]
pub(crate) fn zero_padding(k: usize, u: &mut [u8], s4: &mut [f32], b16: &mut [f32]) {
    u[k..].fill(0);
    s4[k / 4..].fill(0.0);
    b16[k / 16..].fill(0.0);
}
