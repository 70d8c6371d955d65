//! Ternary TQ1_0 / TQ2_0 (BitNet-style weights in {-1, 0, 1} times an f16 scale) and MXFP4
//! (OCP microscaling FP4: E2M1 values sharing an E8M0 exponent).
//!
//! Invariants: bit-exact with llama.cpp's `quantize_row_{tq1_0,tq2_0,mxfp4}_ref` and the
//! matching dequantizers. TQ1_0 packs 5 trits per byte as a fixed-point fraction
//! `ceil(v * 256 / 243)` so that digit n is recovered as `((q * 3^n) mod 256) * 3 >> 8`.

use crate::blocks::{BlockMxfp4, BlockTq1_0, BlockTq2_0, KVALUES_MXFP4};
use crate::fp::{f16_to_f32, f32_to_f16};

const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// C's MAX-based abs max (a NaN propagates).
fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |a, v| if a > v.abs() { a } else { v.abs() })
}

#[inline]
fn trit(v: f32, id: f32) -> u8 {
    ((v * id).round() as i32 + 1) as u8
}

/// Fold trits (most significant first) into the fixed-point byte.
#[inline]
fn pack_trits(digits: impl Iterator<Item = u8>) -> u8 {
    let q = digits.fold(0u8, |q, t| q.wrapping_mul(3).wrapping_add(t));
    (q as u16 * 256).div_ceil(243) as u8
}

#[inline]
fn unpack_trit(q: u8, n: usize) -> f32 {
    let q = q.wrapping_mul(POW3[n]);
    (((q as u16 * 3) >> 8) as i16 - 1) as f32
}

pub fn quantize_tq1_0(x: &[f32]) -> BlockTq1_0 {
    let d = absmax(x);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockTq1_0 { qs: [0; 48], qh: [0; 4], d: f32_to_f16(d) };
    // qs[0..32]: elements 0..160 (byte m holds m, m+32, ..., m+128);
    // qs[32..48]: elements 160..240 (byte m holds 160+m, +16, ...);
    // qh[0..4]: elements 240..256 (byte j holds 240+j, +4, +8, +12, then a zero trit).
    for m in 0..32 {
        b.qs[m] = pack_trits((0..5).map(|n| trit(x[m + 32 * n], id)));
    }
    for m in 0..16 {
        b.qs[32 + m] = pack_trits((0..5).map(|n| trit(x[160 + m + 16 * n], id)));
    }
    for j in 0..4 {
        b.qh[j] = pack_trits((0..4).map(|n| trit(x[240 + j + 4 * n], id)).chain([0]));
    }
    b
}

pub fn dequantize_tq1_0(b: &BlockTq1_0, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for n in 0..5 {
        for m in 0..32 {
            y[32 * n + m] = unpack_trit(b.qs[m], n) * d;
        }
        for m in 0..16 {
            y[160 + 16 * n + m] = unpack_trit(b.qs[32 + m], n) * d;
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            y[240 + 4 * n + j] = unpack_trit(b.qh[j], n) * d;
        }
    }
}

pub fn quantize_tq2_0(x: &[f32]) -> BlockTq2_0 {
    let d = absmax(x);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockTq2_0 { qs: [0; 64], d: f32_to_f16(d) };
    for c in 0..2 {
        for m in 0..32 {
            let mut q = 0u8;
            for n in 0..4 {
                q = q.wrapping_add((trit(x[128 * c + 32 * n + m], id) & 3) << (2 * n));
            }
            b.qs[32 * c + m] = q;
        }
    }
    b
}

pub fn dequantize_tq2_0(b: &BlockTq2_0, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for c in 0..2 {
        for n in 0..4 {
            for m in 0..32 {
                let q = ((b.qs[32 * c + m] >> (2 * n)) & 3) as i32;
                y[128 * c + 32 * n + m] = (q - 1) as f32 * d;
            }
        }
    }
}

/// 2^(e - 128): half the E8M0 value, since `KVALUES_MXFP4` are doubled E2M1 values
/// (llama.cpp's `GGML_E8M0_TO_FP32_HALF`; e = 255, OCP's NaN, decodes as 2^127 as there).
/// Public because the CPU matmul's MXFP4 unpacker needs the same scale bits.
#[inline]
pub fn e8m0_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000 << e)
    } else {
        f32::from_bits(((e - 1) as u32) << 23)
    }
}

#[inline]
fn best_index_mxfp4(x: f32, e: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES_MXFP4[0] as f32 * e - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (k as f32 * e - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

pub fn quantize_mxfp4(x: &[f32]) -> BlockMxfp4 {
    let mut amax = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
        }
    }
    // Largest value lands in the top binade of E2M1 (max 6 = 1.5 * 2^2). Below amax = 2^-125
    // the exponent is negative: C's `(uint8_t)` of it wraps on x86 (cvttss2si, then the low
    // byte), e.g. -4 -> 252, and gguf-py's `astype(np.uint8)` does the same, so both write a huge
    // scale and all-zero nibbles (the block decodes to zeros). `as i32 as u8` reproduces that;
    // a saturating `as u8` would write e = 0 instead (tests/mxfp4_gguf_py.rs covers it).
    let e = if amax > 0.0 { (amax.log2().floor() - 2.0 + 127.0) as i32 as u8 } else { 0 };
    let d = e8m0_half(e);
    let mut b = BlockMxfp4 { e, qs: [0; 16] };
    for j in 0..16 {
        b.qs[j] = best_index_mxfp4(x[j], d) | (best_index_mxfp4(x[j + 16], d) << 4);
    }
    b
}

pub fn dequantize_mxfp4(b: &BlockMxfp4, y: &mut [f32]) {
    let d = e8m0_half(b.e);
    for (j, &q) in b.qs.iter().enumerate() {
        y[j] = KVALUES_MXFP4[(q & 0xF) as usize] as f32 * d;
        y[j + 16] = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
    }
}
