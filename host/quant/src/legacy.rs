//! The 32-element "legacy" quants: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 (one block at a time).
//!
//! Invariants: quantizers reproduce llama.cpp's `quantize_row_*_ref` bit for bit, which is
//! what `llama-quantize` runs for these types when no importance matrix is given; this needs
//! the same f32 operation order (no fused multiply-add, which Rust never emits implicitly),
//! C's truncating float->int casts where llama.cpp uses them and `roundf` (half away from
//! zero) where it uses that. Nibble order: byte j holds element j (low) and j+16 (high).

use crate::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use crate::fp::{f16_to_f32, f32_to_f16};

/// The value of largest magnitude, with its sign (first one wins on ties).
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline]
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

pub fn quantize_q4_0(x: &[f32]) -> BlockQ4_0 {
    // Scale so that the extreme value maps to -8 exactly (the asymmetric end of [-8, 7]).
    let d = signed_absmax(x) / -8.0;
    let id = inverse_or_zero(d);
    let mut qs = [0u8; 16];
    for (j, q) in qs.iter_mut().enumerate() {
        let lo = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let hi = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        *q = lo | (hi << 4);
    }
    BlockQ4_0 { d: f32_to_f16(d), qs }
}

pub fn dequantize_q4_0(b: &BlockQ4_0, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for (j, &q) in b.qs.iter().enumerate() {
        y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

pub fn quantize_q4_1(x: &[f32]) -> BlockQ4_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse_or_zero(d);
    let mut qs = [0u8; 16];
    for (j, q) in qs.iter_mut().enumerate() {
        let lo = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let hi = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        *q = lo | (hi << 4);
    }
    BlockQ4_1 { d: f32_to_f16(d), m: f32_to_f16(min), qs }
}

pub fn dequantize_q4_1(b: &BlockQ4_1, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    for (j, &q) in b.qs.iter().enumerate() {
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Split 32 five-bit values into nibbles and the packed fifth bits.
#[inline]
fn pack5(l: &[u8; 32]) -> ([u8; 4], [u8; 16]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        qs[j] = (l[j] & 0xF) | ((l[j + 16] & 0xF) << 4);
        qh |= (((l[j] >> 4) & 1) as u32) << j;
        qh |= (((l[j + 16] >> 4) & 1) as u32) << (j + 16);
    }
    (qh.to_le_bytes(), qs)
}

#[inline]
fn unpack5(qh: [u8; 4], qs: &[u8; 16], j: usize) -> (u8, u8) {
    let qh = u32::from_le_bytes(qh);
    let lo = (qs[j] & 0xF) | ((((qh >> j) & 1) as u8) << 4);
    let hi = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    (lo, hi)
}

pub fn quantize_q5_0(x: &[f32]) -> BlockQ5_0 {
    let d = signed_absmax(x) / -16.0;
    let id = inverse_or_zero(d);
    let mut l = [0u8; 32];
    for (lj, &v) in l.iter_mut().zip(x) {
        *lj = ((v * id + 16.5) as i8).min(31) as u8;
    }
    let (qh, qs) = pack5(&l);
    BlockQ5_0 { d: f32_to_f16(d), qh, qs }
}

pub fn dequantize_q5_0(b: &BlockQ5_0, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for j in 0..16 {
        let (lo, hi) = unpack5(b.qh, &b.qs, j);
        y[j] = (lo as i32 - 16) as f32 * d;
        y[j + 16] = (hi as i32 - 16) as f32 * d;
    }
}

pub fn quantize_q5_1(x: &[f32]) -> BlockQ5_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse_or_zero(d);
    let mut l = [0u8; 32];
    for (lj, &v) in l.iter_mut().zip(x) {
        // llama.cpp does not clamp here: (max-min)*id rounds to at most 31.
        *lj = ((v - min) * id + 0.5) as u8;
    }
    let (qh, qs) = pack5(&l);
    BlockQ5_1 { d: f32_to_f16(d), m: f32_to_f16(min), qh, qs }
}

pub fn dequantize_q5_1(b: &BlockQ5_1, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let m = f16_to_f32(b.m);
    for j in 0..16 {
        let (lo, hi) = unpack5(b.qh, &b.qs, j);
        y[j] = lo as f32 * d + m;
        y[j + 16] = hi as f32 * d + m;
    }
}

#[inline]
fn q8_scale(x: &[f32]) -> (f32, f32) {
    // C's MAX(a, b) macro, including its NaN behaviour (a NaN input propagates).
    let amax = x.iter().fold(0.0f32, |a, v| if a > v.abs() { a } else { v.abs() });
    let d = amax / 127.0;
    (d, inverse_or_zero(d))
}

pub fn quantize_q8_0(x: &[f32]) -> BlockQ8_0 {
    let (d, id) = q8_scale(x);
    let mut qs = [0i8; 32];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    BlockQ8_0 { d: f32_to_f16(d), qs }
}

pub fn dequantize_q8_0(b: &BlockQ8_0, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}

pub fn quantize_q8_1(x: &[f32]) -> BlockQ8_1 {
    let (d, id) = q8_scale(x);
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    BlockQ8_1 { d: f32_to_f16(d), s: f32_to_f16(sum as f32 * d), qs }
}

/// llama.cpp has no Q8_1 dequantizer (it is an activation format); `s` is redundant.
pub fn dequantize_q8_1(b: &BlockQ8_1, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = q as f32 * d;
    }
}
