//! K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K): 256-element super-blocks whose group
//! scales are themselves quantized against one f16 (or f32 for Q8_K) super-scale.
//!
//! Invariants: quantizers follow llama.cpp's `quantize_row_q*_K_ref` (what `llama-quantize`
//! runs without an importance matrix) decision for decision: per-group scale search
//! (`ksearch`), quantization of the group scales, then re-quantization of every value against
//! the *decoded* f16 scales. Dequantizers evaluate `d * sc * q - dmin * m` in llama.cpp's
//! order so results are bitwise equal. Bit packings are drawn next to each function.

// Group loops index several parallel arrays (scales, mins, packed bytes) by group number,
// mirroring the block layout; iterator zips would hide that correspondence.
#![allow(clippy::needless_range_loop)]

use crate::blocks::{get_scale_min_k4, q3k_scales, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};
use crate::fp::{f16_to_f32, f32_to_f16};
use crate::ksearch::{make_q3_quants, make_qkx2_quants, make_qx_quants_rmse1, nearest_int, Qkx2, GROUP_MAX_EPS};

/// Group `g` of `N` elements of a block, as an array (the caller passes whole blocks).
#[inline]
fn group<const N: usize, T>(x: &[T], g: usize) -> &[T; N] {
    x[N * g..N * (g + 1)].try_into().expect("block holds whole groups")
}

#[inline]
fn group_mut<const N: usize, T>(x: &mut [T], g: usize) -> &mut [T; N] {
    (&mut x[N * g..N * (g + 1)]).try_into().expect("block holds whole groups")
}

/// Pack 256 two-bit values: byte `l` of half `h` (0..2) holds elements
/// `128h + l`, `+32`, `+64`, `+96` in bit pairs 0, 2, 4, 6.
#[inline]
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; 64]) {
    for h in 0..2 {
        for j in 0..32 {
            let b = 128 * h + j;
            qs[32 * h + j] = l[b] | (l[b + 32] << 2) | (l[b + 64] << 4) | (l[b + 96] << 6);
        }
    }
}

// ------------------------------------------------------------------------------ Q2_K

pub fn quantize_q2_k(x: &[f32]) -> BlockQ2K {
    let p = Qkx2 { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15 };
    let mut l = [0u8; QK_K];
    let mut weights = [0.0f32; 16];
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for g in 0..16 {
        let xg: &[f32; 16] = group(x, g);
        for (w, &v) in weights.iter_mut().zip(xg) {
            *w = v.abs();
        }
        let (s, m) = make_qkx2_quants::<16, true>(&p, xg, &weights, group_mut(&mut l, g));
        scales[g] = s;
        mins[g] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let mut b = BlockQ2K { scales: [0; 16], qs: [0; 64], d: 0, dmin: 0 };
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for g in 0..16 {
            b.scales[g] = nearest_int(iscale * scales[g]) as u8;
        }
        b.d = f32_to_f16(max_scale / 15.0);
    }
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for g in 0..16 {
            b.scales[g] |= (nearest_int(iscale * mins[g]) << 4) as u8;
        }
        b.dmin = f32_to_f16(max_min / 15.0);
    }
    let (d_all, m_all) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
    for g in 0..16 {
        let d = d_all * (b.scales[g] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * (b.scales[g] >> 4) as f32;
        for i in 16 * g..16 * g + 16 {
            l[i] = nearest_int((x[i] + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&l, &mut b.qs);
    b
}

pub fn dequantize_q2_k(b: &BlockQ2K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let min = f16_to_f32(b.dmin);
    for (i, out) in y.iter_mut().enumerate().take(QK_K) {
        // Element i: half h, bit pair k, byte j within the half; group = i / 16.
        let (h, k, j) = (i / 128, (i % 128) / 32, i % 32);
        let sc = b.scales[i / 16];
        let q = (b.qs[32 * h + j] >> (2 * k)) & 3;
        let dl = d * (sc & 0xF) as f32;
        let ml = min * (sc >> 4) as f32;
        *out = dl * q as f32 - ml;
    }
}

// ------------------------------------------------------------------------------ Q3_K

pub fn quantize_q3_k(x: &[f32]) -> BlockQ3K {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for g in 0..16 {
        scales[g] = make_q3_quants(4, &x[16 * g..16 * g + 16], &mut l[16 * g..16 * g + 16]);
        if scales[g].abs() > amax {
            amax = scales[g].abs();
            max_scale = scales[g];
        }
    }
    let mut b = BlockQ3K { hmask: [0; 32], qs: [0; 64], scales: [0; 12], d: 0 };
    if max_scale != 0.0 {
        // 6-bit scales with offset 32: low nibbles in bytes 0..8 (groups g and g+8 share a
        // byte), high bit pairs in bytes 8..12 (byte 8 + g%4, pair g/4).
        let iscale = -32.0 / max_scale;
        for g in 0..16 {
            let v = ((nearest_int(iscale * scales[g]) as i8).clamp(-32, 31) + 32) as u8;
            if g < 8 {
                b.scales[g] = v & 0xF;
            } else {
                b.scales[g - 8] |= (v & 0xF) << 4;
            }
            b.scales[8 + g % 4] |= (v >> 4) << (2 * (g / 4));
        }
        b.d = f32_to_f16(1.0 / iscale);
    }
    let d_all = f16_to_f32(b.d);
    let sc = q3k_scales(&b.scales);
    for g in 0..16 {
        let d = d_all * sc[g] as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * g..16 * g + 16 {
            l[i] = (nearest_int(x[i] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    // High bit of element i goes to hmask[i % 32], bit i / 32; the low 2 bits as in Q2_K.
    let mut low = [0u8; QK_K];
    for i in 0..QK_K {
        let v = l[i] as u8;
        if v > 3 {
            b.hmask[i % 32] |= 1 << (i / 32);
        }
        low[i] = v & 3;
    }
    pack_2bit(&low, &mut b.qs);
    b
}

pub fn dequantize_q3_k(b: &BlockQ3K, y: &mut [f32]) {
    let d_all = f16_to_f32(b.d);
    let sc = q3k_scales(&b.scales);
    for (i, out) in y.iter_mut().enumerate().take(QK_K) {
        let (h, k, j) = (i / 128, (i % 128) / 32, i % 32);
        let q = ((b.qs[32 * h + j] >> (2 * k)) & 3) as i32;
        let high_set = b.hmask[j] & (1 << (i / 32)) != 0;
        let dl = d_all * sc[i / 16] as f32;
        *out = dl * (q - if high_set { 0 } else { 4 }) as f32;
    }
}

// ------------------------------------------------------------------------ Q4_K / Q5_K

/// Shared first half of Q4_K and Q5_K: per-group (scale, min) search with weights
/// `rms + |x|`, then 6-bit packing of scales/mins and re-quantization against the decoded
/// f16 super-scales. Returns (d, dmin, packed scales, levels).
fn quantize_k4_k5(x: &[f32], p: &Qkx2) -> (u16, u16, [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut weights = [0.0f32; 32];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for g in 0..8 {
        let xg: &[f32; 32] = group(x, g);
        let mut sum_x2 = 0.0f32;
        for &v in xg {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xg) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants::<32, false>(p, xg, &weights, group_mut(&mut l, g));
        scales[g] = s;
        mins[g] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for g in 0..8 {
        // llama.cpp stores the rounded value into a u8 before clamping (a wrap for negatives).
        let ls = (nearest_int(inv_scale * scales[g]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[g]) as u8).min(63);
        if g < 4 {
            packed[g] = ls;
            packed[g + 4] = lm;
        } else {
            packed[g + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[g - 4] |= (ls >> 4) << 6;
            packed[g] |= (lm >> 4) << 6;
        }
    }
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);
    let (d_all, m_all) = (f16_to_f32(d), f16_to_f32(dmin));
    for g in 0..8 {
        let (sc, m) = get_scale_min_k4(g, &packed);
        let dg = d_all * sc as f32;
        if dg == 0.0 {
            continue;
        }
        let dm = m_all * m as f32;
        for i in 32 * g..32 * g + 32 {
            l[i] = nearest_int((x[i] + dm) / dg).min(p.nmax).max(0) as u8;
        }
    }
    (d, dmin, packed, l)
}

pub fn quantize_q4_k(x: &[f32]) -> BlockQ4K {
    let p = Qkx2 { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20 };
    let (d, dmin, scales, l) = quantize_k4_k5(x, &p);
    // Each 64-element chunk c: byte 32c + j = element 64c + j (low), 64c + 32 + j (high).
    let mut qs = [0u8; 128];
    for c in 0..4 {
        for j in 0..32 {
            qs[32 * c + j] = l[64 * c + j] | (l[64 * c + 32 + j] << 4);
        }
    }
    BlockQ4K { d, dmin, scales, qs }
}

pub fn dequantize_q4_k(b: &BlockQ4K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let min = f16_to_f32(b.dmin);
    for c in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for j in 0..32 {
            let q = b.qs[32 * c + j];
            y[64 * c + j] = d1 * (q & 0xF) as f32 - m1;
            y[64 * c + 32 + j] = d2 * (q >> 4) as f32 - m2;
        }
    }
}

pub fn quantize_q5_k(x: &[f32]) -> BlockQ5K {
    let p = Qkx2 { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15 };
    let (d, dmin, scales, l) = quantize_k4_k5(x, &p);
    // Low nibbles as Q4_K; the fifth bit of element 64c + j goes to qh[j] bit 2c, of
    // element 64c + 32 + j to qh[j] bit 2c + 1.
    let mut qs = [0u8; 128];
    let mut qh = [0u8; 32];
    for c in 0..4 {
        for j in 0..32 {
            let (a, b) = (l[64 * c + j], l[64 * c + 32 + j]);
            qh[j] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
            qs[32 * c + j] = (a & 0xF) | ((b & 0xF) << 4);
        }
    }
    BlockQ5K { d, dmin, scales, qh, qs }
}

pub fn dequantize_q5_k(b: &BlockQ5K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let min = f16_to_f32(b.dmin);
    for c in 0..4 {
        let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
        let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for j in 0..32 {
            let q = b.qs[32 * c + j];
            let h1 = if b.qh[j] & (1 << (2 * c)) != 0 { 16 } else { 0 };
            let h2 = if b.qh[j] & (2 << (2 * c)) != 0 { 16 } else { 0 };
            y[64 * c + j] = d1 * ((q & 0xF) + h1) as f32 - m1;
            y[64 * c + 32 + j] = d2 * ((q >> 4) + h2) as f32 - m2;
        }
    }
}

// ------------------------------------------------------------------------------ Q6_K

pub fn quantize_q6_k(x: &[f32]) -> BlockQ6K {
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for g in 0..16 {
        let s = make_qx_quants_rmse1(32, &x[16 * g..16 * g + 16], &mut l[16 * g..16 * g + 16]);
        scales[g] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    let mut b = BlockQ6K { ql: [0; 128], qh: [0; 64], scales: [0; 16], d: 0 };
    if max_abs_scale < GROUP_MAX_EPS {
        return b;
    }
    let iscale = -128.0 / max_scale;
    b.d = f32_to_f16(1.0 / iscale);
    for g in 0..16 {
        b.scales[g] = nearest_int(iscale * scales[g]).min(127) as i8;
    }
    let d_all = f16_to_f32(b.d);
    for g in 0..16 {
        let d = d_all * b.scales[g] as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * g..16 * g + 16 {
            l[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    // Per 128-element half h and byte j < 32: elements a = 128h + j, +32, +64, +96.
    // ql[64h + j] = low4(a) | low4(a+64) << 4; ql[64h + 32 + j] = low4(a+32) | low4(a+96) << 4;
    // qh[32h + j] = the four high bit pairs in order a, a+32, a+64, a+96.
    for h in 0..2 {
        for j in 0..32 {
            let a = 128 * h + j;
            let q = [l[a] as u8, l[a + 32] as u8, l[a + 64] as u8, l[a + 96] as u8];
            b.ql[64 * h + j] = (q[0] & 0xF) | ((q[2] & 0xF) << 4);
            b.ql[64 * h + 32 + j] = (q[1] & 0xF) | ((q[3] & 0xF) << 4);
            b.qh[32 * h + j] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
    b
}

pub fn dequantize_q6_k(b: &BlockQ6K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for h in 0..2 {
        for j in 0..32 {
            let (lo, hi, qh) = (b.ql[64 * h + j], b.ql[64 * h + 32 + j], b.qh[32 * h + j]);
            let q = [
                (lo & 0xF) | ((qh & 3) << 4),
                (hi & 0xF) | (((qh >> 2) & 3) << 4),
                (lo >> 4) | (((qh >> 4) & 3) << 4),
                (hi >> 4) | (((qh >> 6) & 3) << 4),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let i = 128 * h + 32 * k + j;
                y[i] = d * b.scales[i / 16] as f32 * (qk as i32 - 32) as f32;
            }
        }
    }
}

// ------------------------------------------------------------------------------ Q8_K

pub fn quantize_q8_k(x: &[f32]) -> BlockQ8K {
    let mut b = BlockQ8K { d: 0.0, qs: [0; 256], bsums: [0; 16] };
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        // llama.cpp leaves `bsums` untouched here; we define them as zero (the true sums).
        return b;
    }
    // -127 rather than -128 keeps every quant in [-127, 127].
    let iscale = -127.0 / max;
    for (q, &v) in b.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for g in 0..16 {
        b.bsums[g] = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
    }
    b.d = 1.0 / iscale;
    b
}

pub fn dequantize_q8_k(b: &BlockQ8K, y: &mut [f32]) {
    for (o, &q) in y.iter_mut().zip(&b.qs) {
        *o = b.d * q as f32;
    }
}
