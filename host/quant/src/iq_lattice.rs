//! Dequantization of the lattice ("i-quant") types IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S,
//! IQ1_S and IQ1_M: each group of 8 (or 4) elements is an index into a fixed codebook of
//! magnitudes (`iq_grids`), with separate sign bits and small per-32 scales.
//!
//! Invariants: bitwise equal to llama.cpp's `dequantize_row_iq*` (same f32 operation order:
//! `(d * (0.5 + s)) * 0.25`, then `* grid * sign`). Quantizing to these types needs an
//! importance matrix and large search tables and is not provided here.

use crate::blocks::{BlockIq1M, BlockIq1S, BlockIq2S, BlockIq2Xs, BlockIq2Xxs, BlockIq3S, BlockIq3Xxs};
use crate::fp::f16_to_f32;
use crate::iq_grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};

/// Shift applied to every IQ1 value before scaling (sign chosen per group).
const IQ1S_DELTA: f32 = 0.125;

/// A 7-bit sign pattern plus an 8th bit that makes the number of negative signs even
/// (the encoder only stores 7 bits; llama.cpp's `ksigns_iq2xs` table).
#[inline]
fn even_signs(bits7: u32) -> u8 {
    let b = (bits7 & 127) as u8;
    b | (((b.count_ones() & 1) as u8) << 7)
}

#[inline]
fn sign(signs: u8, j: usize) -> f32 {
    if signs & (1 << j) != 0 {
        -1.0
    } else {
        1.0
    }
}

/// Byte `j` of a packed grid entry.
#[inline]
fn byte(entry: u64, j: usize) -> u8 {
    (entry >> (8 * j)) as u8
}

pub fn dequantize_iq2_xxs(b: &BlockIq2Xxs, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for ib in 0..8 {
        let q = &b.qs[4 * ib..4 * ib + 4];
        let idx = (q[0] as u32) | ((q[1] as u32) << 16);
        let aux = (q[2] as u32) | ((q[3] as u32) << 16);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
        for l in 0..4 {
            let grid = IQ2XXS_GRID[((idx >> (8 * l)) & 255) as usize];
            let signs = even_signs(aux >> (7 * l));
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = db * byte(grid, j) as f32 * sign(signs, j);
            }
        }
    }
}

pub fn dequantize_iq2_xs(b: &BlockIq2Xs, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for ib in 0..8 {
        let sc = b.scales[ib];
        let db = [d * (0.5 + (sc & 0xF) as f32) * 0.25, d * (0.5 + (sc >> 4) as f32) * 0.25];
        for l in 0..4 {
            let q = b.qs[4 * ib + l];
            let grid = IQ2XS_GRID[(q & 511) as usize];
            let signs = even_signs((q >> 9) as u32);
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = db[l / 2] * byte(grid, j) as f32 * sign(signs, j);
            }
        }
    }
}

pub fn dequantize_iq2_s(b: &BlockIq2S, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for ib in 0..8 {
        let sc = b.scales[ib];
        let db = [d * (0.5 + (sc & 0xF) as f32) * 0.25, d * (0.5 + (sc >> 4) as f32) * 0.25];
        let qh = b.qh[ib] as usize;
        for l in 0..4 {
            let idx = b.qs[4 * ib + l] as usize | ((qh << (8 - 2 * l)) & 0x300);
            let grid = IQ2S_GRID[idx];
            let signs = b.qs[32 + 4 * ib + l];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = db[l / 2] * byte(grid, j) as f32 * sign(signs, j);
            }
        }
    }
}

pub fn dequantize_iq3_xxs(b: &BlockIq3Xxs, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for ib in 0..8 {
        let s = &b.qs[64 + 4 * ib..64 + 4 * ib + 4];
        let aux = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = even_signs(aux >> (7 * l));
            let g1 = IQ3XXS_GRID[b.qs[8 * ib + 2 * l] as usize] as u64;
            let g2 = IQ3XXS_GRID[b.qs[8 * ib + 2 * l + 1] as usize] as u64;
            let out = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
            for j in 0..4 {
                out[j] = db * byte(g1, j) as f32 * sign(signs, j);
                out[j + 4] = db * byte(g2, j) as f32 * sign(signs, j + 4);
            }
        }
    }
}

pub fn dequantize_iq3_s(b: &BlockIq3S, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for ib in 0..8 {
        let sc = b.scales[ib / 2];
        let s = if ib % 2 == 0 { sc & 0xF } else { sc >> 4 };
        let db = d * (1 + 2 * s as i32) as f32;
        let qh = b.qh[ib] as usize;
        for l in 0..4 {
            let i1 = b.qs[8 * ib + 2 * l] as usize | ((qh << (8 - 2 * l)) & 256);
            let i2 = b.qs[8 * ib + 2 * l + 1] as usize | ((qh << (7 - 2 * l)) & 256);
            let (g1, g2) = (IQ3S_GRID[i1] as u64, IQ3S_GRID[i2] as u64);
            let signs = b.signs[4 * ib + l];
            let out = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
            for j in 0..4 {
                out[j] = db * byte(g1, j) as f32 * sign(signs, j);
                out[j + 4] = db * byte(g2, j) as f32 * sign(signs, j + 4);
            }
        }
    }
}

pub fn dequantize_iq1_s(b: &BlockIq1S, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for ib in 0..8 {
        let qh = b.qh[ib] as usize;
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
        for l in 0..4 {
            let grid = IQ1S_GRID[b.qs[4 * ib + l] as usize | (((qh >> (3 * l)) & 7) << 8)];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = dl * (byte(grid, j) as i8 as f32 + delta);
            }
        }
    }
}

pub fn dequantize_iq1_m(b: &BlockIq1M, y: &mut [f32]) {
    let sc: [u16; 4] = std::array::from_fn(|i| u16::from_le_bytes([b.scales[2 * i], b.scales[2 * i + 1]]));
    let d_bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    let d = f16_to_f32(d_bits);
    for ib in 0..8 {
        let s = sc[ib / 2] as usize >> (6 * (ib % 2));
        let dl = [d * (2 * (s & 7) + 1) as f32, d * (2 * ((s >> 3) & 7) + 1) as f32];
        let (h0, h1) = (b.qh[2 * ib] as usize, b.qh[2 * ib + 1] as usize);
        let q = &b.qs[4 * ib..4 * ib + 4];
        let idx = [
            q[0] as usize | ((h0 << 8) & 0x700),
            q[1] as usize | ((h0 << 4) & 0x700),
            q[2] as usize | ((h1 << 8) & 0x700),
            q[3] as usize | ((h1 << 4) & 0x700),
        ];
        let shift = |bit: bool| if bit { -IQ1S_DELTA } else { IQ1S_DELTA };
        let delta = [shift(h0 & 0x08 != 0), shift(h0 & 0x80 != 0), shift(h1 & 0x08 != 0), shift(h1 & 0x80 != 0)];
        for l in 0..4 {
            let grid = IQ1S_GRID[idx[l]];
            for j in 0..8 {
                y[32 * ib + 8 * l + j] = dl[l / 2] * (byte(grid, j) as i8 as f32 + delta[l]);
            }
        }
    }
}
