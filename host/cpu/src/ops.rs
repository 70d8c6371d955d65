//! Element-wise and per-row ops: norms, RoPE, activations, gated units, softcap, softmax.
//!
//! Numerics follow ggml's CPU ops (ggml-cpu `ops.cpp` / `vec.h`): norms accumulate in f64 and
//! scale by `1 / sqrtf(mean + eps)`; GELU is the tanh approximation; RoPE builds its (cos, sin)
//! table per position exactly like `ggml_rope_cache_init` / `rope_yarn` (theta advanced by repeated
//! multiplication with `freq_base^(-2/n_rot)`, YaRN ramp and mscale, freq_factors divisors).
//!
//! Shapes are the caller's contract (the executor checks them when it builds the graph): a
//! length that disagrees with the others panics with a message naming the op.

use crate::simd::{self, Isa};

fn rows(op: &str, x: usize, out: usize, row_len: usize) -> usize {
    assert!(row_len > 0 && x.is_multiple_of(row_len) && out == x, "{op}: x has {x} values, out {out}, row_len {row_len}");
    x / row_len
}

/// RMS norm per row: `out = x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &[f32], w: Option<&[f32]>, eps: f32, row_len: usize, out: &mut [f32]) {
    let n = rows("rms_norm", x.len(), out.len(), row_len);
    if let Some(w) = w {
        assert_eq!(w.len(), row_len, "rms_norm: weight length");
    }
    for r in 0..n {
        let xr = &x[r * row_len..(r + 1) * row_len];
        let sum: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
        let mean = (sum / row_len as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        let o = &mut out[r * row_len..(r + 1) * row_len];
        match w {
            Some(w) => {
                for i in 0..row_len {
                    o[i] = xr[i] * scale * w[i];
                }
            }
            None => {
                for i in 0..row_len {
                    o[i] = xr[i] * scale;
                }
            }
        }
    }
}

/// Layer norm per row: `out = (x - mean) / sqrt(var + eps) * w + b`.
pub fn layer_norm(x: &[f32], w: Option<&[f32]>, b: Option<&[f32]>, eps: f32, row_len: usize, out: &mut [f32]) {
    let n = rows("layer_norm", x.len(), out.len(), row_len);
    for v in [w, b].into_iter().flatten() {
        assert_eq!(v.len(), row_len, "layer_norm: weight/bias length");
    }
    for r in 0..n {
        let xr = &x[r * row_len..(r + 1) * row_len];
        let mean = (xr.iter().map(|&v| v as f64).sum::<f64>() / row_len as f64) as f32;
        let o = &mut out[r * row_len..(r + 1) * row_len];
        let mut sum2 = 0f64;
        for i in 0..row_len {
            let d = xr[i] - mean;
            o[i] = d;
            sum2 += (d * d) as f64;
        }
        let var = (sum2 / row_len as f64) as f32;
        let scale = 1.0 / (var + eps).sqrt();
        for i in 0..row_len {
            let mut v = o[i] * scale;
            if let Some(w) = w {
                v *= w[i];
            }
            if let Some(b) = b {
                v += b[i];
            }
            o[i] = v;
        }
    }
}

/// Rotary embedding parameters, as `ggml_rope_ext` takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeParams {
    /// Rotated dimensions per head (partial rotary when < head_dim); even.
    pub n_rot: usize,
    /// NeoX style (pairs `i` and `i + n_rot/2`) instead of interleaved adjacent pairs.
    pub neox: bool,
    pub freq_base: f32,
    /// Linear scaling: 1 / factor.
    pub freq_scale: f32,
    /// YaRN extrapolation mix (0 disables YaRN).
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub n_ctx_orig: usize,
    /// Per-pair frequency divisors (`n_rot / 2` values): Llama-3 / LongRoPE `rope_freqs`.
    pub freq_factors: Option<Vec<f32>>,
    /// YaRN's correction range unrounded ([`rope_yarn_corr_dims_exact`], transformers'
    /// `truncate = False`) instead of ggml's whole dims.
    pub yarn_exact: bool,
}

impl Default for RopeParams {
    fn default() -> Self {
        RopeParams {
            n_rot: 0,
            neox: false,
            freq_base: 10000.0,
            freq_scale: 1.0,
            ext_factor: 0.0,
            attn_factor: 1.0,
            beta_fast: 32.0,
            beta_slow: 1.0,
            n_ctx_orig: 0,
            freq_factors: None,
            yarn_exact: false,
        }
    }
}

/// ggml's `ggml_rope_yarn_corr_dims`: the dims where YaRN's ramp starts and ends.
pub fn rope_yarn_corr_dims(n_dims: usize, n_ctx_orig: usize, freq_base: f32, beta_fast: f32, beta_slow: f32) -> [f32; 2] {
    let corr_dim = |n_rot: f32| n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln() / (2.0 * freq_base.ln());
    let start = corr_dim(beta_fast).floor();
    let end = corr_dim(beta_slow).ceil();
    [start.max(0.0), end.min(n_dims as f32 - 1.0)]
}

/// transformers' `find_correction_range` with `truncate = False` (gpt-oss): the same bounds as
/// [`rope_yarn_corr_dims`] without rounding them to whole dims, computed in f64 as Python does
/// and clamped to `[0, n_dims - 1]`.
pub fn rope_yarn_corr_dims_exact(n_dims: usize, n_ctx_orig: usize, freq_base: f32, beta_fast: f32, beta_slow: f32) -> [f32; 2] {
    let corr_dim = |n_rot: f32| {
        n_dims as f64 * (n_ctx_orig as f64 / (n_rot as f64 * 2.0 * std::f64::consts::PI)).ln() / (2.0 * (freq_base as f64).ln())
    };
    [corr_dim(beta_fast).max(0.0) as f32, corr_dim(beta_slow).min(n_dims as f64 - 1.0) as f32]
}

/// The (cos, sin) pairs for one position: `cache[i0]`, `cache[i0 + 1]` for i0 = 0, 2, .. n_rot.
pub fn rope_cache(pos: f32, p: &RopeParams, cache: &mut [f32]) {
    let n_dims = p.n_rot;
    let theta_scale = p.freq_base.powf(-2.0 / n_dims as f32);
    let corr = if p.yarn_exact {
        rope_yarn_corr_dims_exact(n_dims, p.n_ctx_orig, p.freq_base, p.beta_fast, p.beta_slow)
    } else {
        rope_yarn_corr_dims(n_dims, p.n_ctx_orig, p.freq_base, p.beta_fast, p.beta_slow)
    };
    let mut theta = pos;
    for i0 in (0..n_dims).step_by(2) {
        let ff = p.freq_factors.as_ref().map_or(1.0, |f| f[i0 / 2]);
        let theta_extrap = theta / ff;
        let theta_interp = p.freq_scale * theta_extrap;
        let mut th = theta_interp;
        let mut mscale = p.attn_factor;
        if p.ext_factor != 0.0 {
            // ggml's rope_yarn_ramp uses integer i0 / 2.
            let y = ((i0 / 2) as f32 - corr[0]) / (corr[1] - corr[0]).max(0.001);
            let ramp = 1.0 - y.clamp(0.0, 1.0);
            let ramp_mix = ramp * p.ext_factor;
            th = theta_interp * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
            mscale *= 1.0 + 0.1 * (1.0 / p.freq_scale).ln();
        }
        cache[i0] = th.cos() * mscale;
        cache[i0 + 1] = th.sin() * mscale;
        theta *= theta_scale;
    }
}

/// Rotate `x` (`n_tokens x n_head x head_dim`) in place; token t is at `positions[t]`.
pub fn rope(x: &mut [f32], n_tokens: usize, n_head: usize, head_dim: usize, positions: &[i32], p: &RopeParams) {
    let n_dims = p.n_rot;
    assert!(n_dims.is_multiple_of(2) && n_dims <= head_dim, "rope: n_rot {n_dims} must be even and <= head_dim {head_dim}");
    assert_eq!(x.len(), n_tokens * n_head * head_dim, "rope: x length");
    assert!(positions.len() >= n_tokens, "rope: {} positions for {n_tokens} tokens", positions.len());
    if let Some(f) = &p.freq_factors {
        assert!(f.len() >= n_dims / 2, "rope: {} freq_factors for n_rot {n_dims}", f.len());
    }
    let mut cache = vec![0f32; n_dims];
    for t in 0..n_tokens {
        rope_cache(positions[t] as f32, p, &mut cache);
        let xt = &mut x[t * n_head * head_dim..(t + 1) * n_head * head_dim];
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() >= Isa::Avx2 {
            // SAFETY: AVX2/FMA detected.
            unsafe { rotate_fma(xt, n_head, head_dim, &cache, p.neox) };
            continue;
        }
        rotate(xt, n_head, head_dim, &cache, p.neox);
    }
}

/// Rotate the pairs of every head of one token. The arithmetic is ggml's `rotate_pairs` as GCC
/// contracts it in llama.cpp's x86 build (checked against its output bit for bit):
/// `x0' = fma(x0, cos, -(x1 * sin))`, `x1' = fma(x0, sin, x1 * cos)`.
#[inline(always)]
fn rotate(x: &mut [f32], n_head: usize, head_dim: usize, cache: &[f32], neox: bool) {
    let n_dims = cache.len();
    let half = n_dims / 2;
    for v in x.chunks_exact_mut(head_dim).take(n_head) {
        for i0 in (0..n_dims).step_by(2) {
            let (c, s) = (cache[i0], cache[i0 + 1]);
            let (a, b) = if neox { (i0 / 2, i0 / 2 + half) } else { (i0, i0 + 1) };
            let (x0, x1) = (v[a], v[b]);
            v[a] = x0.mul_add(c, -(x1 * s));
            v[b] = x0.mul_add(s, x1 * c);
        }
    }
}

/// `rotate` with hardware FMA (`mul_add` is otherwise a libm call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rotate_fma(x: &mut [f32], n_head: usize, head_dim: usize, cache: &[f32], neox: bool) {
    rotate(x, n_head, head_dim, cache, neox)
}

/// SiLU: `out = x * sigmoid(x)`.
pub fn silu(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "silu: lengths");
    simd::silu_ggml(Isa::detect(), x, None, out);
}

/// GELU, tanh approximation (ggml's `ggml_gelu`).
pub fn gelu(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu: lengths");
    simd::gelu_mul(Isa::detect(), x, None, out);
}

/// GELU with the exact erf (ggml's `ggml_gelu_erf`, HF `gelu`).
pub fn gelu_erf(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "gelu_erf: lengths");
    for (o, &v) in out.iter_mut().zip(x) {
        *o = 0.5 * v * (1.0 + erf(v as f64 * std::f64::consts::FRAC_1_SQRT_2) as f32);
    }
}

/// SwiGLU: `out = silu(gate) * up`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && gate.len() == out.len(), "swiglu: lengths");
    simd::silu_ggml(Isa::detect(), gate, Some(up), out);
}

/// gpt-oss's clamped SwiGLU (llama.cpp's `ggml_swiglu_oai`, transformers' `GptOssExperts`):
/// `g = min(gate, limit)`, `u = clamp(up, -limit, limit)`, `out = g · sigmoid(alpha · g) · (u + 1)`.
/// NaN inputs stay NaN (`min`/`clamp` as torch's, which propagate them).
pub fn swiglu_oai(gate: &[f32], up: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    assert!(gate.len() == up.len() && gate.len() == out.len(), "swiglu_oai: lengths");
    simd::swiglu_oai(Isa::detect(), gate, up, alpha, limit, out);
}

/// GEGLU: `out = gelu(gate) * up` (tanh approximation).
pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && gate.len() == out.len(), "geglu: lengths");
    simd::gelu_mul(Isa::detect(), gate, Some(up), out);
}

/// Logit soft-capping in place: `x = cap * tanh(x / cap)`.
pub fn softcap(x: &mut [f32], cap: f32) {
    for v in x {
        *v = cap * (*v / cap).tanh();
    }
}

/// `out = a + b`; `b` is broadcast over rows when `a.len()` is a multiple of `b.len()`.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    binary("add", a, b, out, |x, y| x + y)
}

/// `out = a * b`; `b` is broadcast over rows when `a.len()` is a multiple of `b.len()`.
pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    binary("mul", a, b, out, |x, y| x * y)
}

fn binary(op: &str, a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    assert!(
        !b.is_empty() && a.len().is_multiple_of(b.len()) && out.len() == a.len(),
        "{op}: a {} values, b {}, out {}",
        a.len(),
        b.len(),
        out.len()
    );
    for (ar, or) in a.chunks_exact(b.len()).zip(out.chunks_exact_mut(b.len())) {
        for i in 0..b.len() {
            or[i] = f(ar[i], b[i]);
        }
    }
}

/// `x *= s` in place.
pub fn scale(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// Softmax of one row in place (max-subtracted, so large logits cannot overflow; `-inf` entries
/// become exactly 0; a row that is all `-inf` becomes all zeros rather than NaN).
pub fn softmax_inplace(row: &mut [f32]) {
    softmax_isa(Isa::detect(), row)
}

pub(crate) fn softmax_isa(isa: Isa, row: &mut [f32]) {
    if row.is_empty() {
        return;
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let sum = simd::exp_shift_sum(isa, row, max);
    let inv = 1.0 / sum;
    for v in row {
        *v *= inv;
    }
}

/// erf(x) for f64, accurate to ~1e-15: Taylor series near 0, continued fraction for erfc beyond.
pub(crate) fn erf(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = ax * ax;
        let mut term = ax;
        let mut sum = ax;
        let mut n = 0f64;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if ax < 27.0 {
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))) (Lentz-free, backwards)
        let mut f = ax;
        for k in (1..=60).rev() {
            f = ax + (k as f64 / 2.0) / f;
        }
        1.0 - (-ax * ax).exp() / (std::f64::consts::PI.sqrt() * f)
    } else {
        1.0
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}
