//! IQ4_NL and IQ4_XS: 4-bit indices into the non-linear codebook `KVALUES_IQ4NL`.
//!
//! Invariants: the quantizer follows llama.cpp's `quantize_row_iq4_nl_impl` exactly as
//! `ggml_quantize_chunk` (and so `llama-quantize`) calls it without an importance matrix:
//! weights `x^2` and 7 scale trials on each side (`ntry = 7`; note that llama.cpp's
//! `quantize_row_iq4_nl_ref` passes `ntry = -1` instead, a different, rarely used variant).
//! Levels are always re-derived from the final scale, so blocks are independent.

use crate::blocks::{BlockIq4Nl, BlockIq4Xs, KVALUES_IQ4NL, QK_K};
use crate::fp::{f16_to_f32, f32_to_f16};
use crate::ksearch::{best_index_f32, nearest_int, signed_absmax, GROUP_MAX_EPS};

const NTRY: i32 = 7;

/// The codebook as f32 (exact), so the hot loops do no int->float conversions.
const KV: [f32; 16] = {
    let mut out = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    out
};

/// Best scale for one group of 32 (llama.cpp's per-block search), or 0 for an all-zero group.
fn search_scale(x: &[f32]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let sums = |id: f32| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for &xj in x {
            let q = KV[best_index_f32(&KV, id * xj)];
            let w = xj * xj;
            sumqx += w * q * xj;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let d0 = -max / KV[0];
    let (sumqx, sumq2) = sums(1.0 / d0);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry + KVALUES_IQ4NL[0] as i32) as f32 / max;
        let (sumqx, sumq2) = sums(id);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Nibble-pack 32 codebook indices: byte j = index j (low) | index j + 16 (high).
#[inline]
fn pack_indices(x: &[f32], inv: f32, qs: &mut [u8]) {
    for j in 0..16 {
        let lo = best_index_f32(&KV, inv * x[j]) as u8;
        let hi = best_index_f32(&KV, inv * x[j + 16]) as u8;
        qs[j] = lo | (hi << 4);
    }
}

pub fn quantize_iq4_nl(x: &[f32]) -> BlockIq4Nl {
    let d = search_scale(x);
    let mut b = BlockIq4Nl { d: f32_to_f16(d), qs: [0; 16] };
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    pack_indices(x, id, &mut b.qs);
    b
}

pub fn dequantize_iq4_nl(b: &BlockIq4Nl, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for (j, &q) in b.qs.iter().enumerate() {
        y[j] = d * KVALUES_IQ4NL[(q & 0xF) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

pub fn quantize_iq4_xs(x: &[f32]) -> BlockIq4Xs {
    let mut scales = [0.0f32; 8];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for (g, s) in scales.iter_mut().enumerate() {
        *s = search_scale(&x[32 * g..32 * g + 32]);
        if s.abs() > amax_scale {
            amax_scale = s.abs();
            max_scale = *s;
        }
    }
    // Group scales become 6-bit signed multiples (offset 32) of d; the levels are then
    // re-derived against the f32 (not f16-rounded) group scale, as llama.cpp does.
    let d = -max_scale / 32.0;
    let mut b = BlockIq4Xs { d: f32_to_f16(d), scales_h: 0, scales_l: [0; 4], qs: [0; 128] };
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (g, &s) in scales.iter().enumerate() {
        let l = nearest_int(id * s).clamp(-32, 31);
        let dl = d * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        pack_indices(&x[32 * g..32 * g + 32], idl, &mut b.qs[16 * g..16 * g + 16]);
        let u = (l + 32) as u8;
        b.scales_l[g / 2] |= (u & 0xF) << (4 * (g % 2));
        b.scales_h |= ((u >> 4) as u16) << (2 * g);
    }
    b
}

pub fn dequantize_iq4_xs(b: &BlockIq4Xs, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for g in 0..QK_K / 32 {
        let ls = ((b.scales_l[g / 2] >> (4 * (g % 2))) & 0xF) as i32 | ((((b.scales_h >> (2 * g)) & 3) as i32) << 4);
        let dl = d * (ls - 32) as f32;
        for j in 0..16 {
            let q = b.qs[16 * g + j];
            y[32 * g + j] = dl * KVALUES_IQ4NL[(q & 0xF) as usize] as f32;
            y[32 * g + 16 + j] = dl * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
        }
    }
}
