//! Activation quantization for the quantized matmul, bit for bit as llama.cpp's x86 CPU backend
//! quantizes `src1` to each weight type's `vec_dot_type`, plus the side arrays the kernels read.
//!
//! Formats (`ActFormat`, chosen by the weight type like ggml's `type_traits_cpu[..].vec_dot_type`):
//!
//! ```text
//!   Q8_0 (Q4_0, Q5_0, Q8_0, IQ4_NL, MXFP4) per 32: amax = max|x|, d = f16(amax / 127),
//!                                      q = round_half_even(x * (127 / amax))
//!   Q8_1 (Q4_1, Q5_1)                 as Q8_0, plus s = f16((amax / 127) * sum(q))
//!   Q8_K (K-quants, IQ4_XS, Q8_K)     per 256: max = the first value of largest |x|,
//!                                      iscale = -127 / max, q = min(127, round_half_even(iscale x)),
//!                                      d = 1 / iscale (f32), bsums = sums of 16
//! ```
//!
//! The Q8_0/Q8_1 rules are those of the AVX2 `quantize_row_q8_0` / `quantize_row_q8_1` in
//! ggml-cpu's `arch/x86/quants.c` (the `_ref` versions round half away from zero and use `1 / d`;
//! x86 llama.cpp never runs them), Q8_K is `quantize_row_q8_K_ref` (x86 uses it as is). Scales
//! enter the kernels exactly as llama.cpp's dot products read them: the f16 `d` converted back.
//!
//! Layout of one token in `QActs` (k elements, kp = k rounded up to 64, g16 = kp/16 rounded up to
//! 16, n32 = kp/32 rounded up to 16):
//!
//! ```text
//!   xq[i]     i8   q of element i
//!   dx4[i/4]  f32  d of the block holding i              (one per SIMD i32 lane)
//!   xs16[j]   f32  partner of the weights' per-16 bias B: Q8_1: s of block j/2 at even j, 0 at
//!                  odd j; Q8_K: d * bsum_j; Q8_0: 0
//!   xc4[i/4]  i32  -128 * sum(xq[4l..4l+4])              (start value for "wide" weights)
//!   d32[b]    f32  d of block b of 32 (Q8_0 / Q8_1; the fused decode kernels read it)
//! ```
//!
//! Padding is all zero. The tests compare every format byte for byte with llama.cpp's library
//! (`tests/fixtures/llama_cpp_act_quant.json`).

use rocmforge_quant::{f16_to_f32, f32_to_bf16, f32_to_f16, GgmlType};

use crate::error::CpuError;

/// llama.cpp's activation format for a weight type (its `vec_dot_type`), quantized types only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActFormat {
    Q8_0,
    Q8_1,
    Q8K,
}

/// The activation format llama.cpp pairs with quantized weights of type `ty`.
pub(crate) fn act_format(ty: GgmlType) -> ActFormat {
    use GgmlType::*;
    match ty {
        Q4_1 | Q5_1 => ActFormat::Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ4_XS => ActFormat::Q8K,
        _ => ActFormat::Q8_0,
    }
}

/// One block of 32 as the AVX2 `quantize_row_q8_0/1` does it: returns (d as f32, d as stored
/// in f16 bits, sum of q).
#[inline(always)]
pub(crate) fn q8_block(x: &[f32; 32], q: &mut [i8; 32]) -> (f32, u16, i32) {
    // `_mm256_max_ps` of |x|; NaN inputs give some result, never UB.
    let mut amax = 0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        // `_mm256_round_ps(.., _MM_ROUND_NEAREST)` = round half to even; `as i8` saturates like
        // the packs that follow it and maps NaN to 0.
        *o = (v * id).round_ties_even() as i8;
        sum += *o as i32;
    }
    (d, f32_to_f16(d), sum)
}

/// One block of 256 as `quantize_row_q8_K_ref`: returns d.
#[inline(always)]
fn q8k_block(x: &[f32; 256], q: &mut [i8; 256]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (o, &v) in q.iter_mut().zip(x) {
        // ggml's `nearest_int` (the 1.5 * 2^23 trick) rounds half to even.
        *o = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    1.0 / iscale
}

/// Quantize one row of activations exactly as llama.cpp's x86 CPU backend does before a matmul
/// with weights of type `ty`. Returns the `vec_dot_type` and the row in its GGML block layout
/// (`block_q8_0`, `block_q8_1`, `block_q8_K`; F16 / BF16 rows for F16 / BF16 weights, and the
/// f32 bytes for F32). `x.len()` must be a multiple of that type's block size.
pub fn quantize_activations(ty: GgmlType, x: &[f32]) -> Result<(GgmlType, Vec<u8>), CpuError> {
    const OP: &str = "quantize_activations";
    let vt = match ty {
        GgmlType::F32 => GgmlType::F32,
        GgmlType::F16 => GgmlType::F16,
        GgmlType::BF16 => GgmlType::BF16,
        _ if crate::unpack::supported(ty) => match act_format(ty) {
            ActFormat::Q8_0 => GgmlType::Q8_0,
            ActFormat::Q8_1 => GgmlType::Q8_1,
            ActFormat::Q8K => GgmlType::Q8_K,
        },
        _ => return Err(CpuError::UnsupportedType { op: OP, ty: ty.name() }),
    };
    let block = vt.block_size();
    if !x.len().is_multiple_of(block) {
        return Err(CpuError::NotBlockAligned { op: OP, ty: vt.name(), k: x.len(), block });
    }
    let mut out = Vec::with_capacity(x.len() / block * vt.type_size());
    match vt {
        GgmlType::F32 => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => x.iter().for_each(|&v| out.extend(f32_to_f16(v).to_le_bytes())),
        GgmlType::BF16 => x.iter().for_each(|&v| out.extend(f32_to_bf16(v).to_le_bytes())),
        GgmlType::Q8_K => {
            let (blocks, _) = x.as_chunks::<256>();
            for xb in blocks {
                let mut q = [0i8; 256];
                let d = q8k_block(xb, &mut q);
                out.extend(d.to_le_bytes());
                out.extend(q.iter().map(|&v| v as u8));
                for g in q.chunks_exact(16) {
                    let s: i16 = g.iter().map(|&v| v as i16).sum();
                    out.extend(s.to_le_bytes());
                }
            }
        }
        _ => {
            let (blocks, _) = x.as_chunks::<32>();
            for xb in blocks {
                let mut q = [0i8; 32];
                let (d, dh, sum) = q8_block(xb, &mut q);
                out.extend(dh.to_le_bytes());
                if vt == GgmlType::Q8_1 {
                    out.extend(f32_to_f16(d * sum as f32).to_le_bytes());
                }
                out.extend(q.iter().map(|&v| v as u8));
            }
        }
    }
    Ok((vt, out))
}

/// Round `x` to what llama.cpp's dense dot products see for weights of type `ty`: F16 weights
/// take f16 activations, BF16 weights bf16 ones (ggml's `vec_dot_type`), F32 stays.
pub(crate) fn round_dense_acts(ty: GgmlType, x: &[f32], out: &mut [f32]) {
    match ty {
        GgmlType::F16 => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = f16_to_f32(f32_to_f16(v));
            }
        }
        GgmlType::BF16 => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = rocmforge_quant::bf16_to_f32(f32_to_bf16(v));
            }
        }
        _ => out.copy_from_slice(x),
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
    /// The input and format these buffers were filled from (`holds`).
    src: Vec<f32>,
    src_key: Option<(ActFormat, usize)>,
}

pub(crate) fn padded_k(k: usize) -> usize {
    k.div_ceil(64) * 64
}

pub(crate) fn padded_g16(kp: usize) -> usize {
    (kp / 16).div_ceil(16) * 16
}

impl QActs {
    /// True if the buffers already hold `x` (all tokens, row length `k`) in format `fmt`.
    pub fn holds(&self, fmt: ActFormat, k: usize, x: &[f32]) -> bool {
        self.src_key == Some((fmt, k)) && self.src.len() == x.len() && self.src.iter().zip(x).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// Record the input the buffers were just filled from.
    pub fn remember(&mut self, fmt: ActFormat, k: usize, x: &[f32]) {
        self.src.clear();
        self.src.extend_from_slice(x);
        self.src_key = Some((fmt, k));
    }

    /// Size the buffers for `n_tokens` rows of `k` elements (contents are overwritten later).
    pub fn reset(&mut self, k: usize, n_tokens: usize) {
        self.src_key = None;
        self.kp = padded_k(k);
        self.g16 = padded_g16(self.kp);
        self.xq.resize(n_tokens * self.kp, 0);
        self.dx4.resize(n_tokens * self.kp / 4, 0.0);
        self.xs16.resize(n_tokens * self.g16, 0.0);
        self.xc4.resize(n_tokens * self.kp / 4, 0);
        self.n32 = (self.kp / 32).div_ceil(16) * 16;
        self.d32.resize(n_tokens * self.n32, 0.0);
    }
}

/// Raw views of one token's slots, so threads can fill disjoint tokens in parallel.
pub(crate) struct TokenSlots<'a> {
    pub xq: &'a mut [i8],
    pub dx4: &'a mut [f32],
    pub xs16: &'a mut [f32],
    pub xc4: &'a mut [i32],
    pub d32: &'a mut [f32],
}

/// Quantize one token row `x` (k = x.len(), a multiple of the format's block) into its slots,
/// padding included. With AVX2 the same code is compiled for AVX2, where `round_ties_even` is
/// one `vroundps` instead of a libm call (identical results: every step is exact IEEE).
pub(crate) fn quantize_token(fmt: ActFormat, x: &[f32], s: TokenSlots<'_>) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() >= crate::simd::Isa::Avx2 {
        // SAFETY: AVX2/FMA were detected.
        unsafe { quantize_token_avx2(fmt, x, s) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if crate::simd::Isa::detect() >= crate::simd::Isa::Neon {
        // SAFETY: NEON was detected; same slots contract (the NEON twin gives the same bytes).
        unsafe { crate::neon_act::quantize_token(fmt, x, s) };
        return;
    }
    quantize_token_portable(fmt, x, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_token_avx2(fmt: ActFormat, x: &[f32], s: TokenSlots<'_>) {
    quantize_token_portable(fmt, x, s)
}

/// The per-block primitives of `quantize_token_with`: portable here, NEON in `neon_act`. Every
/// implementation gives the same bytes.
pub(crate) trait BlockQuant {
    /// # Safety
    /// The implementation's instruction set must be available.
    unsafe fn q8_block(x: &[f32; 32], q: &mut [i8; 32]) -> (f32, u16, i32);
    /// # Safety
    /// As `q8_block`.
    unsafe fn q8k_block(x: &[f32; 256], q: &mut [i8; 256]) -> f32;
    /// Sum of 16 quantized values.
    ///
    /// # Safety
    /// As `q8_block`.
    #[inline(always)]
    unsafe fn sum16(q: &[i8]) -> i32 {
        q[..16].iter().map(|&v| v as i32).sum()
    }
    /// `xc4[l] = -128 * (q[4l] + .. + q[4l + 3])` for `l < k / 4`.
    ///
    /// # Safety
    /// As `q8_block`.
    #[inline(always)]
    unsafe fn fill_xc4(xq: &[i8], xc4: &mut [i32], k: usize) {
        for (l, c) in xc4[..k / 4].iter_mut().enumerate() {
            *c = -128 * xq[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>();
        }
    }
}

/// The portable primitives (auto-vectorised for whatever the caller enables).
struct Portable;

impl BlockQuant for Portable {
    #[inline(always)]
    unsafe fn q8_block(x: &[f32; 32], q: &mut [i8; 32]) -> (f32, u16, i32) {
        q8_block(x, q)
    }
    #[inline(always)]
    unsafe fn q8k_block(x: &[f32; 256], q: &mut [i8; 256]) -> f32 {
        q8k_block(x, q)
    }
}

#[inline(always)]
fn quantize_token_portable(fmt: ActFormat, x: &[f32], s: TokenSlots<'_>) {
    // SAFETY: the portable primitives need no particular instruction set.
    unsafe { quantize_token_with::<Portable>(fmt, x, s) }
}

/// One token into its slots (see `quantize_token`) with `Q`'s block primitives.
///
/// # Safety
/// `Q`'s instruction set must be available.
#[inline(always)]
pub(crate) unsafe fn quantize_token_with<Q: BlockQuant>(fmt: ActFormat, x: &[f32], s: TokenSlots<'_>) {
    let k = x.len();
    match fmt {
        ActFormat::Q8K => {
            let (blocks, _) = x.as_chunks::<256>();
            let (qb, _) = s.xq.as_chunks_mut::<256>();
            for (b, (xb, q)) in blocks.iter().zip(qb).enumerate() {
                let d = Q::q8k_block(xb, q);
                s.dx4[64 * b..64 * b + 64].fill(d);
                for j in 0..16 {
                    s.xs16[16 * b + j] = d * Q::sum16(&q[16 * j..]) as f32;
                }
            }
            s.d32.fill(0.0);
        }
        ActFormat::Q8_0 | ActFormat::Q8_1 => {
            let (blocks, _) = x.as_chunks::<32>();
            let (qb, _) = s.xq.as_chunks_mut::<32>();
            for (b, (xb, q)) in blocks.iter().zip(qb).enumerate() {
                let (d, dh, sum) = Q::q8_block(xb, q);
                let dr = f16_to_f32(dh);
                s.dx4[8 * b..8 * b + 8].fill(dr);
                s.d32[b] = dr;
                s.xs16[2 * b] = if fmt == ActFormat::Q8_1 { f16_to_f32(f32_to_f16(d * sum as f32)) } else { 0.0 };
                s.xs16[2 * b + 1] = 0.0;
            }
        }
    }
    Q::fill_xc4(s.xq, s.xc4, k);
    s.xq[k..].fill(0);
    s.dx4[k / 4..].fill(0.0);
    s.xs16[k / 16..].fill(0.0);
    s.xc4[k / 4..].fill(0);
    s.d32[k / 32..].fill(0.0);
}
