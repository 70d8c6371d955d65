//! Activation quantization for the quantized matmul: f32 rows -> 8-bit blocks of 32 with an f32
//! scale, plus the per-lane / per-16 side arrays the kernels read.
//!
//! Layout of one token (k elements, kp = k rounded up to 64, g16 = kp/16 rounded up to 16):
//!
//! ```text
//!   xq[i]     i8   round(x[i] / d_b), |xq| <= 127, d_b = amax(block b of 32) / 127
//!   dx4[i/4]  f32  d_b of the block holding i            (one per SIMD i32 lane)
//!   xs16[j]   f32  d_b * sum(xq[16j..16j+16])             (for the weights' per-16 bias B)
//!   xc4[i/4]  i32  -128 * sum(xq[4l..4l+4])               (VNNI start value for wide weights)
//!   d32[b]    f32  d_b                 (one per block of 32, row stride n32 = kp/32 rounded up to 16)
//!   xs32[b]   f32  d_b * sum(xq in block b)
//! ```
//!
//! Padding is all zero. llama.cpp pairs legacy types with Q8_0/Q8_1 and K-quants with Q8_K (one
//! scale per 256); we use one f32 scale per 32 for every type, which is at least as accurate and
//! lets one kernel serve all weight types. Scales are kept in f32 (Q8_0 stores f16).

/// Quantize `x` (a multiple of 32 long) to `q` with one scale per 32 in `d` (`x.len() / 32`).
/// This is exactly the activation quantization the matmul uses (exposed for tests).
pub fn quantize_row_q8(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x
        .chunks_exact(32)
        .zip(q.chunks_exact_mut(32))
        .zip(d.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let dd = amax / 127.0;
        let id = if dd > 0.0 { 1.0 / dd } else { 0.0 };
        for (o, &v) in qb.iter_mut().zip(xb) {
            // `as i8` saturates and maps NaN to 0: no UB whatever the input.
            *o = (v * id).round() as i8;
        }
        *db = dd;
    }
}

/// Quantized activations of `n_tokens` rows; see the module header for the layout.
#[derive(Default)]
pub(crate) struct QActs {
    pub kp: usize,
    pub g16: usize,
    pub xq: Vec<i8>,
    pub dx4: Vec<f32>,
    pub xs16: Vec<f32>,
    pub xc4: Vec<i32>,
    pub n32: usize,
    pub d32: Vec<f32>,
    pub xs32: Vec<f32>,
}

pub(crate) fn padded_k(k: usize) -> usize {
    k.div_ceil(64) * 64
}

pub(crate) fn padded_g16(kp: usize) -> usize {
    (kp / 16).div_ceil(16) * 16
}

impl QActs {
    /// Size the buffers for `n_tokens` rows of `k` elements (contents are overwritten later).
    pub fn reset(&mut self, k: usize, n_tokens: usize) {
        self.kp = padded_k(k);
        self.g16 = padded_g16(self.kp);
        self.xq.resize(n_tokens * self.kp, 0);
        self.dx4.resize(n_tokens * self.kp / 4, 0.0);
        self.xs16.resize(n_tokens * self.g16, 0.0);
        self.xc4.resize(n_tokens * self.kp / 4, 0);
        self.n32 = (self.kp / 32).div_ceil(16) * 16;
        self.d32.resize(n_tokens * self.n32, 0.0);
        self.xs32.resize(n_tokens * self.n32, 0.0);
    }
}

/// Raw views of one token's slots, so threads can fill disjoint tokens in parallel.
pub(crate) struct TokenSlots<'a> {
    pub xq: &'a mut [i8],
    pub dx4: &'a mut [f32],
    pub xs16: &'a mut [f32],
    pub xc4: &'a mut [i32],
    pub d32: &'a mut [f32],
    pub xs32: &'a mut [f32],
}

/// Quantize one token row `x` (k = x.len(), a multiple of 32) into its slots, padding included.
#[inline(always)]
pub(crate) fn quantize_token(x: &[f32], s: TokenSlots<'_>) {
    let k = x.len();
    let mut d = [0f32; 1];
    for (b, xb) in x.chunks_exact(32).enumerate() {
        quantize_row_q8(xb, &mut s.xq[32 * b..32 * b + 32], &mut d);
        s.dx4[8 * b..8 * b + 8].fill(d[0]);
        s.d32[b] = d[0];
        for half in 0..2 {
            let q = &s.xq[32 * b + 16 * half..32 * b + 16 * half + 16];
            let sum: i32 = q.iter().map(|&v| v as i32).sum();
            s.xs16[2 * b + half] = d[0] * sum as f32;
        }
        let sum: i32 = s.xq[32 * b..32 * b + 32].iter().map(|&v| v as i32).sum();
        s.xs32[b] = d[0] * sum as f32;
        for l in 0..8 {
            let q = &s.xq[32 * b + 4 * l..32 * b + 4 * l + 4];
            s.xc4[8 * b + l] = -128 * q.iter().map(|&v| v as i32).sum::<i32>();
        }
    }
    s.xq[k..].fill(0);
    s.dx4[k / 4..].fill(0.0);
    s.xs16[k / 16..].fill(0.0);
    s.xc4[k / 4..].fill(0);
    s.d32[k / 32..].fill(0.0);
    s.xs32[k / 32..].fill(0.0);
}
