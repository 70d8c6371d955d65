//! Quantized KV cache element types and attention over them: `q8_0` (llama.cpp's
//! `--cache-type-k/-v q8_0`) and `fp8` E4M3 with a per-tensor scale (vLLM's
//! `kv_cache_dtype=fp8`). The f16 cache and its bit-exact attention stay in `attention.rs`;
//! [`KvCache`](crate::KvCache) holds the bytes of every type and sends quantized caches here.
//!
//! Storage, per (layer, block, slot, KV head) row of `head_dim` elements:
//!
//! ```text
//!   f16       head_dim x u16                                    2    bytes / element
//!   q8_0      head_dim / 32 x { d: f16 (LE), qs: [i8; 32] }     1.0625 bytes / element (ggml's block_q8_0)
//!   fp8_e4m3  head_dim x u8 (OCP E4M3FN: bias 7, max 448,      1    byte  / element
//!             0x7F / 0xFF = NaN, no infinities); value = e4m3 * scale (per tensor: one for K, one for V)
//! ```
//!
//! Writing: q8_0 rows are quantized as ggml's x86 `quantize_row_q8_0` (what `ggml_set_rows`
//! calls for a Q8_0 cache: amax per 32, `d = f16(amax / 127)`, `q = round_half_even(x * 127 /
//! amax)`; shared with the activation quantizer in `act.rs`). fp8 rows are `x / scale` rounded to
//! nearest even and saturated to ±448 (CUDA's `__nv_cvt_float_to_fp8(.., __NV_SATFINITE,
//! __NV_E4M3)`, which vLLM's `reshape_and_cache` uses); NaN stays NaN. Scales ([`KvHeadScales`])
//! are one per tensor or one per KV head, for K and for V: the cache's own (1.0 unless set with
//! [`KvCache::set_fp8_scales`], as vLLM without calibrated `k_scale` / `v_scale`), or a layer's
//! given with each call ([`KvCache::write_scaled`], [`attention_with_scales`](crate::attention_with_scales)),
//! since one cache plane holds different layers in a grouped KV layout. A KV head's scale
//! multiplies its score scale (`q.k * (scale * k_scale[g])`) and its decoded V rows, so
//! per-tensor scales written as one value per head give the same bits.
//!
//! Attention follows llama.cpp's CPU flash-attention kernel (`ggml_compute_forward_flash_attn_ext_f16`
//! with a quantized V, the path llama.cpp takes for a quantized cache), for q8_0 operation for
//! operation:
//! - q is quantized to q8_0 (K's `vec_dot_type`), each score is `ggml_vec_dot_q8_0_q8_0`:
//!   per block the exact i32 sum of 32 products, `sumf += (float)sumi * (d_k * d_q)`, blocks in
//!   order (the generic C kernel's order; its AVX2 twin keeps 8 fma lanes, so llama.cpp on AVX2
//!   differs from us in the last bits of the score — the one stated deviation);
//! - `s = s * scale'` (`scale' = scale / softcap` with a softcap, then `s = softcap * tanh(s)`);
//! - online softmax: running max M and sum S; a new maximum rescales the accumulator by
//!   `expf(M_old - M)`, else the key weighs `expf(s - M)` (libm `expf`, as the C code calls);
//! - V rows dequantized to f32 (`d * q`) and accumulated `acc += v * w` with fma (ggml's
//!   `ggml_vec_mad_f32`, all-fma for head dims that are multiples of its SIMD step), `S = S * ms + w`;
//! - out = acc * (1 / S).
//!
//! fp8 uses the same online softmax; its scores are the dot of q (f32; vLLM's kernels read q in
//! the model's dtype, f16/bf16, our activations are f32) with the decoded K row times `k_scale`,
//! summed in 16 lanes (lane = element % 16) folded as `_mm512_reduce_add_ps`; V rows are decoded
//! times `v_scale`. vLLM computes in its own kernel orders; only the storage format is vLLM's.
//!
//! Every operation above is a correctly rounded IEEE op or an exact integer sum, done in one
//! fixed order, so the AVX2, AVX-512, NEON and scalar builds of the row (one portable body
//! compiled per ISA, as `attention.rs` does) give the same bits; the tests compare them.

use rocmforge_quant::f16_to_f32;

use crate::attention::{reduce16, QueryRows};
use crate::error::CpuError;
use crate::pool::ThreadPool;
use crate::simd::Isa;
use crate::AttnParams;

/// Element type of a KV cache (chosen per model at load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvCacheType {
    /// IEEE half, llama.cpp's and Ollama's default; attention bit-identical to llama.cpp's.
    #[default]
    F16,
    /// ggml's Q8_0 blocks of 32 along head_dim (f16 scale + 32 x i8).
    Q8_0,
    /// OCP FP8 E4M3 (E4M3FN) per element, one f32 scale per tensor (K, V).
    Fp8E4M3,
}

/// The names accepted by [`KvCacheType::from_str`](std::str::FromStr), for error messages.
pub const KV_CACHE_TYPES: &str = "f16|q8_0|fp8";

/// Bytes of a q8_0 block of 32 elements.
const Q8_0_BLOCK_BYTES: usize = 34;

impl KvCacheType {
    /// The canonical name (`f16`, `q8_0`, `fp8_e4m3`).
    pub fn name(self) -> &'static str {
        match self {
            KvCacheType::F16 => "f16",
            KvCacheType::Q8_0 => "q8_0",
            KvCacheType::Fp8E4M3 => "fp8_e4m3",
        }
    }

    /// Elements per quantization block along head_dim (head dims must be multiples of it).
    pub fn block_len(self) -> usize {
        match self {
            KvCacheType::Q8_0 => 32,
            KvCacheType::F16 | KvCacheType::Fp8E4M3 => 1,
        }
    }

    /// Bytes one row of `dim` elements takes (`dim` a multiple of [`block_len`](Self::block_len)).
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            KvCacheType::F16 => 2 * dim,
            KvCacheType::Q8_0 => dim / 32 * Q8_0_BLOCK_BYTES,
            KvCacheType::Fp8E4M3 => dim,
        }
    }
}

impl std::fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvCacheType {
    type Err = CpuError;
    /// `f16`, `q8_0`, `fp8` / `fp8_e4m3` (any case). Ollama's `q4_0` and anything else are
    /// refused with an error naming the valid values.
    fn from_str(s: &str) -> Result<KvCacheType, CpuError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f16" => Ok(KvCacheType::F16),
            "q8_0" => Ok(KvCacheType::Q8_0),
            "fp8" | "fp8_e4m3" => Ok(KvCacheType::Fp8E4M3),
            _ => Err(CpuError::UnsupportedKvCacheType { got: s.to_string() }),
        }
    }
}

/// fp8 E4M3 scales of one attention layer: stored element = `x / scale`, read back as
/// `e4m3 * scale`; for K and for V, one value for every KV head (per tensor) or one per KV head
/// (what HF FP8 checkpoints carry as `k_scale` / `v_scale`, or a calibration computes).
#[derive(Clone, Debug, PartialEq)]
pub struct KvHeadScales {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvHeadScales {
    /// One scale for every head (vLLM's per-tensor `k_scale` / `v_scale`).
    pub fn per_tensor(k: f32, v: f32) -> KvHeadScales {
        KvHeadScales { k: vec![k], v: vec![v] }
    }

    /// K's scale of KV head `g`.
    #[inline]
    pub fn k_of(&self, g: usize) -> f32 {
        if self.k.len() == 1 {
            self.k[0]
        } else {
            self.k[g]
        }
    }

    /// V's scale of KV head `g`.
    #[inline]
    pub fn v_of(&self, g: usize) -> f32 {
        if self.v.len() == 1 {
            self.v[0]
        } else {
            self.v[g]
        }
    }

    /// Each list holds one value or `n_head_kv`, every one finite and positive.
    pub fn check(&self, op: &'static str, n_head_kv: usize) -> Result<(), CpuError> {
        for (which, s) in [("K", &self.k), ("V", &self.v)] {
            if s.len() != 1 && s.len() != n_head_kv {
                return Err(CpuError::KvScaleCount { op, which, n: s.len(), n_head_kv });
            }
            if let Some(bad) = s.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(CpuError::BadKvScale { op, scale: bad.to_string() });
            }
        }
        Ok(())
    }
}

impl Default for KvHeadScales {
    /// 1.0 for K and V: vLLM's uncalibrated default.
    fn default() -> Self {
        KvHeadScales::per_tensor(1.0, 1.0)
    }
}

/// f32 -> E4M3FN bits: round to nearest even, saturate finite values to ±448, NaN -> 0x7F.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= 448.0 {
        return sign | 0x7E;
    }
    if a < 0.015625 {
        // Subnormal range (and zero): multiples of 2^-9; 8 * 2^-9 rounds up into the smallest
        // normal, whose bits (exponent 1, mantissa 0) are exactly 8.
        return sign | (a * 512.0).round_ties_even() as u8;
    }
    let bits = a.to_bits();
    let mut e = ((bits >> 23) & 0xFF) as i32 - 127 + 7;
    let mant = bits & 0x7F_FFFF;
    let mut m = mant >> 20;
    let rem = mant & 0xF_FFFF;
    if rem > 0x8_0000 || (rem == 0x8_0000 && m & 1 == 1) {
        m += 1;
    }
    if m == 8 {
        m = 0;
        e += 1;
    }
    // a < 448 rounds to at most 448 (e 15, m 6): never the NaN pattern.
    sign | ((e as u8) << 3) | m as u8
}

/// E4M3FN bits -> f32 (exact; one table shared with the FP8 weight loader).
pub use rocmforge_quant::fp::e4m3_to_f32;

/// Quantize one row `x` (len a multiple of the type's block) into `dst` (`ty.row_bytes`).
pub(crate) fn quantize_row(ty: KvCacheType, x: &[f32], inv_scale: f32, dst: &mut [u8]) {
    match ty {
        KvCacheType::Q8_0 => {
            let (blocks, _) = x.as_chunks::<32>();
            for (xb, d) in blocks.iter().zip(dst.chunks_exact_mut(Q8_0_BLOCK_BYTES)) {
                let mut q = [0i8; 32];
                let (_, dh, _) = crate::act::q8_block(xb, &mut q);
                d[..2].copy_from_slice(&dh.to_le_bytes());
                for (o, &v) in d[2..].iter_mut().zip(&q) {
                    *o = v as u8;
                }
            }
        }
        KvCacheType::Fp8E4M3 => {
            for (o, &v) in dst.iter_mut().zip(x) {
                *o = f32_to_e4m3(v * inv_scale);
            }
        }
        KvCacheType::F16 => unreachable!("f16 rows are written by KvCache::write"),
    }
}

/// Decode one stored row to f32 (`scale` multiplies fp8 values).
#[inline(always)]
pub(crate) fn dequantize_row(ty: KvCacheType, src: &[u8], scale: f32, out: &mut [f32]) {
    match ty {
        KvCacheType::Q8_0 => {
            for (b, o) in src.chunks_exact(Q8_0_BLOCK_BYTES).zip(out.chunks_exact_mut(32)) {
                let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                for (o, &q) in o.iter_mut().zip(&b[2..]) {
                    // ggml's dequantize_row_q8_0: qs[j] * d.
                    *o = (q as i8) as f32 * d;
                }
            }
        }
        KvCacheType::Fp8E4M3 => {
            for (o, &b) in out.iter_mut().zip(src) {
                *o = e4m3_to_f32(b) * scale;
            }
        }
        KvCacheType::F16 => {
            for (o, h) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([h[0], h[1]]));
            }
        }
    }
}

/// What one row needs of a quantized cache layer.
pub(crate) struct QCtx<'a> {
    pub ty: KvCacheType,
    pub k: &'a [u8],
    /// V rows of `row_bytes(dv)` bytes at every `v_stride` bytes (K's rows when V is read from K).
    pub v: &'a [u8],
    pub v_stride: usize,
    pub dk: usize,
    pub dv: usize,
    pub n_kv: usize,
    pub bs: usize,
    pub layer_base: usize,
    pub block_table: &'a [u32],
    /// Score multiplier per KV head: the attention scale (divided by the softcap when there is
    /// one) and, for fp8, the head's K scale.
    pub kmul: Vec<f32>,
    pub softcap: Option<f32>,
    /// Multiplier of decoded V rows per KV head (fp8: the head's V scale; q8_0 ignores it).
    pub vmul: Vec<f32>,
}

impl QCtx<'_> {
    #[inline(always)]
    fn slot(&self, p: usize) -> usize {
        self.layer_base + self.block_table[p / self.bs] as usize * self.bs + p % self.bs
    }
    #[inline(always)]
    fn k_row(&self, p: usize, g: usize) -> &[u8] {
        let rb = self.ty.row_bytes(self.dk);
        let o = (self.slot(p) * self.n_kv + g) * rb;
        &self.k[o..o + rb]
    }
    #[inline(always)]
    fn v_row(&self, p: usize, g: usize) -> &[u8] {
        let rb = self.ty.row_bytes(self.dv);
        let o = (self.slot(p) * self.n_kv + g) * self.v_stride;
        &self.v[o..o + rb]
    }
}

/// Scratch of one row.
#[derive(Default)]
struct QBufs {
    /// q8_0 quants of q, or q as f32 (fp8).
    qq: Vec<i8>,
    qd: Vec<f32>,
    qf: Vec<f32>,
    kf: Vec<f32>,
    vb: Vec<f32>,
    acc: Vec<f32>,
}

/// Attention rows over a quantized cache; shapes, layer and every block the queries touch were
/// validated by `attention_isa`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_rows(
    pool: &ThreadPool,
    isa: Isa,
    c: &QCtx<'_>,
    q: &[f32],
    n_tokens: usize,
    pos_start: usize,
    n_head: usize,
    params: &AttnParams,
    out: &mut [f32],
) {
    let rows = QueryRows { q, n_tokens, n_head, group: n_head / c.n_kv, dk: c.dk, dv: c.dv, pos_start, params };
    rows.run(pool, out, |bufs: &mut QBufs, g, sink, qh, lo, hi, dst| qrow(isa, c, g, sink, qh, lo, hi, bufs, dst));
}

#[allow(clippy::too_many_arguments)]
fn qrow(isa: Isa, c: &QCtx<'_>, g: usize, sink: Option<f32>, q: &[f32], lo: usize, hi: usize, b: &mut QBufs, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= Isa::Avx512 {
            // SAFETY: AVX-512 F/BW/VL detected (the caller clamped isa to this machine).
            unsafe { qrow_avx512(c, g, sink, q, lo, hi, b, out) };
            return;
        }
        if isa >= Isa::Avx2 {
            // SAFETY: AVX2/FMA/F16C detected (isa clamped).
            unsafe { qrow_avx2(c, g, sink, q, lo, hi, b, out) };
            return;
        }
    }
    // Scalar, and AArch64 where NEON is the baseline the body is compiled for.
    let _ = isa;
    qrow_body(c, g, sink, q, lo, hi, b, out)
}

/// `qrow_body` compiled for AVX-512 (same bits).
///
/// # Safety
/// AVX-512 F/BW/VL, AVX2 and FMA must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn qrow_avx512(c: &QCtx<'_>, g: usize, sink: Option<f32>, q: &[f32], lo: usize, hi: usize, b: &mut QBufs, out: &mut [f32]) {
    qrow_body(c, g, sink, q, lo, hi, b, out)
}

/// `qrow_body` compiled for AVX2 + FMA (same bits).
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn qrow_avx2(c: &QCtx<'_>, g: usize, sink: Option<f32>, q: &[f32], lo: usize, hi: usize, b: &mut QBufs, out: &mut [f32]) {
    qrow_body(c, g, sink, q, lo, hi, b, out)
}

/// `ggml_vec_dot_q8_0_q8_0` in the generic kernel's order.
#[inline(always)]
fn dot_q8_0(k: &[u8], qq: &[i8], qd: &[f32]) -> f32 {
    let mut sumf = 0f32;
    for ((kb, qb), &dq) in k.chunks_exact(Q8_0_BLOCK_BYTES).zip(qq.chunks_exact(32)).zip(qd) {
        let dk = f16_to_f32(u16::from_le_bytes([kb[0], kb[1]]));
        let mut sumi = 0i32;
        for (&a, &b) in kb[2..].iter().zip(qb) {
            sumi += (a as i8) as i32 * b as i32;
        }
        sumf += sumi as f32 * (dk * dq);
    }
    sumf
}

/// Dot of decoded values in 16 lanes (lane = element % 16), folded by `reduce16`.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] = x.mul_add(*y, acc[i]);
    }
    reduce16(&acc)
}

/// One query row over keys lo..hi of KV head g (see the module header).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn qrow_body(c: &QCtx<'_>, g: usize, sink: Option<f32>, q: &[f32], lo: usize, hi: usize, b: &mut QBufs, out: &mut [f32]) {
    let (dk, dv) = (c.dk, c.dv);
    out.fill(0.0);
    if hi <= lo {
        return;
    }
    match c.ty {
        KvCacheType::Q8_0 => {
            b.qq.resize(dk, 0);
            b.qd.resize(dk / 32, 0.0);
            let (blocks, _) = q.as_chunks::<32>();
            for (i, xb) in blocks.iter().enumerate() {
                let qb: &mut [i8; 32] = (&mut b.qq[32 * i..32 * i + 32]).try_into().unwrap_or_else(|_| unreachable!("32-element block"));
                let (_, dh, _) = crate::act::q8_block(xb, qb);
                // The kernel reads the f16 scale back.
                b.qd[i] = f16_to_f32(dh);
            }
        }
        _ => {
            b.qf.clear();
            b.qf.extend_from_slice(q);
            b.kf.resize(dk, 0.0);
        }
    }
    b.vb.resize(dv, 0.0);
    b.acc.clear();
    b.acc.resize(dv, 0.0);
    let (mut m, mut sum) = (f32::NEG_INFINITY, 0f32);
    for p in lo..hi {
        let kr = c.k_row(p, g);
        let s = match c.ty {
            KvCacheType::Q8_0 => dot_q8_0(kr, &b.qq, &b.qd),
            _ => {
                dequantize_row(c.ty, kr, 1.0, &mut b.kf);
                dot_lanes(&b.kf, &b.qf)
            }
        };
        let mut s = s * c.kmul[g];
        if let Some(cap) = c.softcap {
            s = cap * s.tanh();
        }
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > m {
            let m_old = m;
            m = s;
            ms = (m_old - m).exp();
            for a in b.acc.iter_mut() {
                *a *= ms;
            }
        } else {
            vs = (s - m).exp();
        }
        dequantize_row(c.ty, c.v_row(p, g), c.vmul[g], &mut b.vb);
        for (a, &v) in b.acc.iter_mut().zip(&b.vb) {
            *a = v.mul_add(vs, *a);
        }
        sum = sum * ms + vs;
    }
    // Attention sink: one more term of the online softmax with no value row (llama.cpp's
    // flash-attention kernel applies it the same way, after the keys).
    if let Some(s) = sink {
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > m {
            ms = (m - s).exp();
            for a in b.acc.iter_mut() {
                *a *= ms;
            }
        } else {
            vs = (s - m).exp();
        }
        sum = sum * ms + vs;
    }
    let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
    for (o, &a) in out.iter_mut().zip(&b.acc) {
        *o = a * inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_round_trips_every_code_and_rounds_to_nearest_even() {
        for b in 0..=255u8 {
            let v = e4m3_to_f32(b);
            if v.is_nan() {
                assert!(b & 0x7F == 0x7F, "{b:#x}");
                continue;
            }
            let back = f32_to_e4m3(v);
            // -0 and +0 keep their sign bit.
            assert_eq!(back, b, "{b:#x} = {v}");
        }
        assert_eq!(e4m3_to_f32(0x7E), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 1.0 / 512.0);
        assert_eq!(e4m3_to_f32(0x08), 1.0 / 64.0);
        // Saturation (SATFINITE), NaN.
        assert_eq!(f32_to_e4m3(1e9), 0x7E);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xFE);
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7F);
        // Ties to even: 1 + 1/16 lies between 1 (m 0) and 1.125 (m 1) -> 1; 1 + 3/16 -> 1.25.
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1.0625)), 1.0);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1.1875)), 1.25);
        // Subnormal ties: 1.5 * 2^-9 -> 2 * 2^-9.
        assert_eq!(f32_to_e4m3(1.5 / 512.0), 2);
        // Every f32 between two codes rounds to the nearer (checked on a dense sweep).
        let codes: Vec<f32> = (0..0x7Fu8).map(e4m3_to_f32).collect();
        let mut x = 0f32;
        while x < 448.0 {
            let got = e4m3_to_f32(f32_to_e4m3(x));
            let best = codes.iter().map(|&c| (c - x).abs()).fold(f32::INFINITY, f32::min);
            assert!((got - x).abs() == best, "{x}: got {got}, nearest distance {best}");
            x = x * 1.01 + 1e-4;
        }
    }

    #[test]
    fn parses_names_and_refuses_others_naming_the_valid_ones() {
        assert_eq!("f16".parse::<KvCacheType>(), Ok(KvCacheType::F16));
        assert_eq!(" Q8_0 ".parse::<KvCacheType>(), Ok(KvCacheType::Q8_0));
        assert_eq!("fp8".parse::<KvCacheType>(), Ok(KvCacheType::Fp8E4M3));
        assert_eq!("fp8_e4m3".parse::<KvCacheType>(), Ok(KvCacheType::Fp8E4M3));
        for bad in ["q4_0", "f32", "", "fp8_e5m2"] {
            let e = bad.parse::<KvCacheType>().unwrap_err().to_string();
            assert!(e.contains(KV_CACHE_TYPES) && e.contains(&format!("'{bad}'")), "{e}");
        }
        assert_eq!(KvCacheType::Q8_0.row_bytes(64), 68);
        assert_eq!(KvCacheType::Fp8E4M3.row_bytes(64), 64);
        assert_eq!(KvCacheType::F16.row_bytes(64), 128);
    }
}
