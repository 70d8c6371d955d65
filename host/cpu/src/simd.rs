//! Instruction-set dispatch and the small float SIMD primitives every op shares: dot products of
//! f32 / f16 / bf16 rows with f32 vectors, a vectorised `exp` (softmax, GELU), and llama.cpp's
//! own `ggml_v_expf` / SiLU reproduced bit for bit (`ggml_expf`, `silu_ggml`).
//!
//! Dispatch is decided once at run time (`Isa::detect`, cached): never `-C target-cpu=native`,
//! never compile-time `target_feature` cfgs. Each fast path is a `#[target_feature] unsafe fn`
//! reached only after `is_x86_feature_detected!` / `is_aarch64_feature_detected!` said yes.
//! `ROCMFORGE_CPU_ISA=scalar|avx2|avx512|neon|neondot` can lower (never raise) the choice, for
//! tests and benchmarks; a level of the other architecture family is ignored. x86 levels live in
//! the `x86` module below, AArch64 ones in `neon` (same contracts, see there).
//!
//! Invariants: every SIMD function has a scalar twin with the same contract; results differ only by
//! summation order (and for `exp`, by the polynomial's < 3e-7 relative error), except the ggml
//! replicas, which give the same bits at every level.
//! The exp polynomial follows the classic Cephes range reduction (x = n ln2 + r, |r| <= ln2/2).

use std::sync::OnceLock;

/// An instruction-set level the kernels can run at. Levels are ordered within their family
/// (x86: `Avx2 < Avx512`; AArch64: `Neon < NeonDot`); `Scalar` is below every level. Comparisons
/// across families are meaningless, so kernels only ever compare a level clamped to this CPU
/// (`clamp`), whose family is the CPU's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust (the compiler may still auto-vectorise for the baseline target).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL + VNNI (on top of AVX2).
    Avx512,
    /// AArch64 Advanced SIMD (NEON): integer dots by `smull` + pairwise adds.
    Neon,
    /// NEON plus the dot-product extension (FEAT_DotProd: `sdot`).
    NeonDot,
}

/// Which architecture a level belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Portable,
    X86,
    Arm,
}

impl Isa {
    /// The best level this machine supports, lowered by `ROCMFORGE_CPU_ISA` if set. Cached.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::best_supported();
            let want = match std::env::var("ROCMFORGE_CPU_ISA").ok().as_deref().map(str::trim) {
                Some("scalar") => Isa::Scalar,
                Some("avx2") => Isa::Avx2,
                Some("neon") => Isa::Neon,
                _ => return best,
            };
            // A level of the other family (e.g. `avx2` on ARM) cannot lower anything: ignored.
            if want == Isa::Scalar || want.family() == best.family() {
                best.min(want)
            } else {
                best
            }
        })
    }

    /// The best level the CPU supports, ignoring the environment. Cached (kernels clamp often).
    pub fn best_supported() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(Isa::probe)
    }

    fn family(self) -> Family {
        match self {
            Isa::Scalar => Family::Portable,
            Isa::Avx2 | Isa::Avx512 => Family::X86,
            Isa::Neon | Isa::NeonDot => Family::Arm,
        }
    }

    fn probe() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            let avx512 = avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
            if avx512 {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            // NEON is part of every AArch64 Linux target, but asking keeps the rule "every fast
            // path is reached after detection" free of exceptions.
            if std::arch::is_aarch64_feature_detected!("neon") {
                if std::arch::is_aarch64_feature_detected!("dotprod") {
                    return Isa::NeonDot;
                }
                return Isa::Neon;
            }
        }
        Isa::Scalar
    }

    /// Every level this machine can run (for tests comparing paths), lowest first.
    pub fn all_supported() -> Vec<Isa> {
        let best = Isa::best_supported();
        [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::NeonDot]
            .into_iter()
            .filter(|&i| i == Isa::Scalar || (i.family() == best.family() && i <= best))
            .collect()
    }

    /// `self` if the CPU supports it, else the best supported level below it in the same family;
    /// a level of another family lowers to `Scalar`.
    pub(crate) fn clamp(self) -> Isa {
        let best = Isa::best_supported();
        if self.family() == best.family() {
            self.min(best)
        } else {
            Isa::Scalar
        }
    }
}

#[inline]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    rocmforge_quant::f16_to_f32(h)
}

/// Element type of a dense weight row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dense {
    F32,
    F16,
    Bf16,
}

impl Dense {
    pub(crate) fn size(self) -> usize {
        match self {
            Dense::F32 => 4,
            Dense::F16 | Dense::Bf16 => 2,
        }
    }
}

/// Dot product of a dense row stored as little-endian bytes (`n` elements of `ty`) with `x[..n]`.
/// Panics only if the slices are shorter than `n` (internal callers check lengths).
pub(crate) fn dot_dense(isa: Isa, ty: Dense, w: &[u8], x: &[f32], n: usize) -> f32 {
    assert!(w.len() >= n * ty.size() && x.len() >= n);
    #[cfg(target_arch = "x86_64")]
    if isa.clamp() >= Isa::Avx2 {
        // SAFETY: AVX2/FMA/F16C were detected (clamp); lengths checked above.
        return unsafe { x86::dot_dense_avx2(ty, w.as_ptr(), x.as_ptr(), n) };
    }
    #[cfg(target_arch = "aarch64")]
    if isa.clamp() >= Isa::Neon {
        // SAFETY: NEON detected (clamp); lengths checked above.
        return unsafe { crate::neon::dot_dense(ty, w.as_ptr(), x.as_ptr(), n) };
    }
    let _ = isa;
    dot_dense_scalar(ty, w, x, n)
}

pub(crate) fn dot_dense_scalar(ty: Dense, w: &[u8], x: &[f32], n: usize) -> f32 {
    let mut acc = [0f32; 8];
    for i in 0..n {
        let v = match ty {
            Dense::F32 => f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]),
            Dense::F16 => f16_bits_to_f32(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])),
            Dense::Bf16 => f32::from_bits((u16::from_le_bytes([w[2 * i], w[2 * i + 1]]) as u32) << 16),
        };
        acc[i % 8] += v * x[i];
    }
    acc.iter().sum()
}

/// Convert a dense row to f32.
pub(crate) fn dense_to_f32(ty: Dense, w: &[u8], out: &mut [f32]) {
    match ty {
        Dense::F32 => {
            for (o, c) in out.iter_mut().zip(w.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dense::F16 => {
            for (o, c) in out.iter_mut().zip(w.chunks_exact(2)) {
                *o = f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dense::Bf16 => {
            for (o, c) in out.iter_mut().zip(w.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
    }
}

/// f16 bits -> f32 for a whole slice (`dst.len()` values).
pub(crate) fn f16_slice_to_f32(isa: Isa, src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    #[cfg(target_arch = "x86_64")]
    if isa.clamp() >= Isa::Avx2 {
        // SAFETY: AVX2/F16C detected; both pointers valid for `n` values.
        unsafe { x86::f16_to_f32_avx2(src.as_ptr(), dst.as_mut_ptr(), n) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa.clamp() >= Isa::Neon {
        // SAFETY: NEON detected; both pointers valid for `n` values.
        unsafe { crate::neon::f16_to_f32_slice(src.as_ptr(), dst.as_mut_ptr(), n) };
        return;
    }
    let _ = isa;
    for i in 0..n {
        dst[i] = f16_bits_to_f32(src[i]);
    }
}

/// In place `v[i] = exp(v[i] - shift)`, returning the sum of the results.
pub(crate) fn exp_shift_sum(isa: Isa, v: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.clamp() >= Isa::Avx2 {
        // SAFETY: features detected; pointer valid for v.len() floats.
        return unsafe { x86::exp_shift_sum_avx2(v.as_mut_ptr(), v.len(), shift) };
    }
    #[cfg(target_arch = "aarch64")]
    if isa.clamp() >= Isa::Neon {
        // SAFETY: NEON detected; pointer valid for v.len() floats.
        return unsafe { crate::neon::exp_shift_sum(v.as_mut_ptr(), v.len(), shift) };
    }
    let _ = isa;
    let mut s = 0f32;
    for e in v.iter_mut() {
        *e = (*e - shift).exp();
        s += *e;
    }
    s
}

/// ggml's tanh-approximation GELU, optionally times `mul[i]` (GEGLU).
pub(crate) fn gelu_mul(isa: Isa, x: &[f32], mul: Option<&[f32]>, out: &mut [f32]) {
    let n = x.len().min(out.len());
    #[cfg(target_arch = "x86_64")]
    if isa.clamp() >= Isa::Avx512 && mul.is_none_or(|m| m.len() >= n) {
        // SAFETY: AVX-512 F/BW/VL + F16C detected (isa clamped to the CPU); lengths checked.
        unsafe { gelu_mul_512(gelu_table_f32(), &x[..n], mul.map(|m| &m[..n]), &mut out[..n]) };
        return;
    }
    let _ = isa;
    let table = gelu_table();
    match mul {
        Some(m) => {
            for i in 0..n {
                out[i] = gelu_ggml(table, x[i], m[i]);
            }
        }
        None => {
            for i in 0..n {
                out[i] = gelu_ggml(table, x[i], 1.0);
            }
        }
    }
}

/// ggml's `ggml_vec_gelu_f32` / `ggml_vec_geglu_f32` as built by default (`GGML_GELU_FP16`):
/// below -10 zero, from 10 on the identity, in between the input rounded to f16 indexes a table of
/// f16 GELU values. Multiplied by `m` (1 for plain GELU; `x * 1.0` is exact).
#[inline(always)]
fn gelu_ggml(table: &[u16], x: f32, m: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x * m
    } else {
        rocmforge_quant::f16_to_f32(table[rocmforge_quant::f32_to_f16(x) as usize]) * m
    }
}

/// `gelu_table` widened to f32 (the values the scalar path computes from it), for gathers.
#[cfg(target_arch = "x86_64")]
fn gelu_table_f32() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| gelu_table().iter().map(|&h| rocmforge_quant::f16_to_f32(h)).collect())
}

/// `gelu_ggml` on 16 lanes: `vcvtps2ph` (round to nearest even, as `f32_to_f16`) gives the table
/// index, a gather the value; the -10 / 10 bounds by masks. Same bits as the scalar loop.
///
/// # Safety
/// AVX-512 F/BW/VL and F16C available; `table` has 65536 entries; `mul` (if any) and `out` as
/// long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn gelu_mul_512(table: &[f32], x: &[f32], mul: Option<&[f32]>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let n = x.len();
    let (lo, hi) = (_mm512_set1_ps(-10.0), _mm512_set1_ps(10.0));
    let mut i = 0;
    while i < n {
        let k = (n - i).min(16);
        let lanes: __mmask16 = if k == 16 { 0xFFFF } else { (1u16 << k) - 1 };
        let xv = _mm512_maskz_loadu_ps(lanes, x.as_ptr().add(i));
        let mv = match mul {
            Some(m) => _mm512_maskz_loadu_ps(lanes, m.as_ptr().add(i)),
            None => _mm512_set1_ps(1.0),
        };
        let idx = _mm512_cvtepu16_epi32(_mm512_cvtps_ph::<RNE>(xv));
        let g = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), lanes, idx, table.as_ptr());
        let y = _mm512_mul_ps(g, mv);
        // x >= 10: x * m; x <= -10: 0 (ordered compares: NaN stays on the table path, as scalar).
        let y = _mm512_mask_mul_ps(y, _mm512_cmp_ps_mask::<_CMP_GE_OQ>(xv, hi), xv, mv);
        let y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LE_OQ>(xv, lo), _mm512_setzero_ps());
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), lanes, y);
        i += 16;
    }
}

/// `ggml_table_gelu_f16`: for every f16 bit pattern, f16(gelu(value)) with gelu evaluated as
/// ggml's `ggml_gelu_f32` compiles (GCC contracts `1 + a x x` into one fma; `tanh` is libm's).
fn gelu_table() -> &'static [u16] {
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|h| {
                let f = rocmforge_quant::f16_to_f32(h);
                rocmforge_quant::f32_to_f16(gelu_scalar(f))
            })
            .collect()
    })
}

/// `ggml_v_expf` (ggml-cpu `vec.h`, AVX-512 version) for one lane, bit for bit: the same fmas,
/// and `_mm512_scalef_ps(j, n)` as two exact power-of-two factors (|n| <= 192 splits into halves
/// of at most 96; only the last multiply rounds, as scalef does). Branch-free so loops over it
/// vectorise.
#[inline(always)]
pub(crate) fn ggml_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4B40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3FB8_AA3B), r); // 0x1.715476p+0
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35BF_BE8E),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3F31_7200), x), // 0x1.62e4p-1
    );
    let u = b * b;
    let j = f32::from_bits(0x3C07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3D2B_9F17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            // 0x1.555e66p-3, 0x1.fffdb6p-2
            f32::from_bits(0x3E2A_AF33).mul_add(b, f32::from_bits(0x3EFF_FEDB)),
        )
        .mul_add(u, f32::from_bits(0x3F7F_FFF6).mul_add(b, 1.0)); // 0x1.ffffecp-1
    let e = n as i32; // saturating; only used where |n| <= 192
    let e1 = e >> 1;
    let e2 = e - e1;
    let pow2 = |k: i32| f32::from_bits(((k.clamp(-126, 127) + 127) as u32) << 23);
    let res = (j * pow2(e1)) * pow2(e2);
    if n.abs() > 192.0 {
        if n <= 0.0 {
            0.0
        } else {
            f32::INFINITY
        }
    } else {
        res
    }
}

/// ggml's x86 `ggml_vec_silu_f32` / `ggml_vec_swiglu_f32` (AVX-512 build), bit for bit: blocks
/// of 16 use `ggml_v_silu` = x / (1 + ggml_v_expf(0 - x)), the remainder `x / (1 + expf(-x))`
/// with libm's expf; SwiGLU multiplies by `mul` last.
#[inline(always)]
fn silu_ggml_body(x: &[f32], mul: Option<&[f32]>, out: &mut [f32]) {
    let n = x.len().min(out.len());
    let nv = n & !15;
    for i in 0..nv {
        let v = x[i];
        let s = v / (1.0 + ggml_expf(0.0 - v));
        out[i] = match mul {
            Some(m) => s * m[i],
            None => s,
        };
    }
    for i in nv..n {
        let v = x[i];
        let s = v / (1.0 + (-v).exp());
        out[i] = match mul {
            Some(m) => s * m[i],
            None => s,
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn silu_ggml_avx512(x: &[f32], mul: Option<&[f32]>, out: &mut [f32]) {
    silu_ggml_body(x, mul, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_ggml_avx2(x: &[f32], mul: Option<&[f32]>, out: &mut [f32]) {
    silu_ggml_body(x, mul, out)
}

/// SiLU (optionally times `mul`: SwiGLU) exactly as llama.cpp's x86 CPU backend computes it;
/// every ISA level gives the same bits.
pub(crate) fn silu_ggml(isa: Isa, x: &[f32], mul: Option<&[f32]>, out: &mut [f32]) {
    if let Some(m) = mul {
        assert!(m.len() >= x.len().min(out.len()));
    }
    #[cfg(target_arch = "x86_64")]
    {
        let isa = isa.clamp();
        if isa >= Isa::Avx512 {
            // SAFETY: AVX-512 F/BW/VL detected.
            unsafe { silu_ggml_avx512(x, mul, out) };
            return;
        }
        if isa >= Isa::Avx2 {
            // SAFETY: AVX2/FMA detected.
            unsafe { silu_ggml_avx2(x, mul, out) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if isa.clamp() >= Isa::Neon {
        // SAFETY: NEON detected; `mul` length checked above.
        unsafe { crate::neon::silu_ggml(x, mul, out) };
        return;
    }
    let _ = isa;
    silu_ggml_body(x, mul, out)
}

/// The clamped SwiGLU of gpt-oss, one portable branch-free body (so it vectorises) compiled per
/// ISA: `g / (1 + ggml_expf(-alpha g)) * (u + 1)` with `g = min(gate, limit)`, `u = clamp(up,
/// -limit, limit)`. NaN propagates through the clamps as in torch. Every ISA gives the same
/// bits (the body is the same IEEE operations; `ggml_expf` is exact-order fma code).
#[inline(always)]
fn swiglu_oai_body(gate: &[f32], up: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    let n = gate.len().min(up.len()).min(out.len());
    for i in 0..n {
        let (x, y) = (gate[i], up[i]);
        // `if` forms (not f32::min/max, which drop NaN) keep NaN as torch's clamp does.
        let g = if x > limit { limit } else { x };
        let u = if y > limit {
            limit
        } else if y < -limit {
            -limit
        } else {
            y
        };
        out[i] = g / (1.0 + ggml_expf(-(alpha * g))) * (u + 1.0);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn swiglu_oai_avx512(gate: &[f32], up: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    swiglu_oai_body(gate, up, alpha, limit, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_oai_avx2(gate: &[f32], up: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    swiglu_oai_body(gate, up, alpha, limit, out)
}

/// [`swiglu_oai_body`] at the best ISA level `isa` allows.
pub(crate) fn swiglu_oai(isa: Isa, gate: &[f32], up: &[f32], alpha: f32, limit: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let isa = isa.clamp();
        if isa >= Isa::Avx512 {
            // SAFETY: AVX-512 F/BW/VL detected.
            unsafe { swiglu_oai_avx512(gate, up, alpha, limit, out) };
            return;
        }
        if isa >= Isa::Avx2 {
            // SAFETY: AVX2/FMA detected.
            unsafe { swiglu_oai_avx2(gate, up, alpha, limit, out) };
            return;
        }
    }
    let _ = isa;
    swiglu_oai_body(gate, up, alpha, limit, out)
}

pub(crate) const SQRT_2_OVER_PI: f32 = 0.797_884_6;
pub(crate) const GELU_COEF_A: f32 = 0.044715;

#[inline]
pub(crate) fn gelu_scalar(v: f32) -> f32 {
    0.5 * v * (1.0 + (SQRT_2_OVER_PI * v * (GELU_COEF_A * v).mul_add(v, 1.0)).tanh())
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::Dense;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(ty: Dense, w: *const u8, i: usize) -> __m256 {
        // SAFETY (caller): `w` valid for element i+7 of `ty`.
        match ty {
            Dense::F32 => _mm256_loadu_ps(w.add(4 * i) as *const f32),
            Dense::F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i) as *const __m128i)),
            Dense::Bf16 => {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.add(2 * i) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(h, 16))
            }
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; `w` valid for `n` elements of `ty`, `x` for `n` floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot_dense_avx2(ty: Dense, w: *const u8, x: *const f32, n: usize) -> f32 {
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut a2 = _mm256_setzero_ps();
        let mut a3 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            a0 = _mm256_fmadd_ps(load8(ty, w, i), _mm256_loadu_ps(x.add(i)), a0);
            a1 = _mm256_fmadd_ps(load8(ty, w, i + 8), _mm256_loadu_ps(x.add(i + 8)), a1);
            a2 = _mm256_fmadd_ps(load8(ty, w, i + 16), _mm256_loadu_ps(x.add(i + 16)), a2);
            a3 = _mm256_fmadd_ps(load8(ty, w, i + 24), _mm256_loadu_ps(x.add(i + 24)), a3);
            i += 32;
        }
        while i + 8 <= n {
            a0 = _mm256_fmadd_ps(load8(ty, w, i), _mm256_loadu_ps(x.add(i)), a0);
            i += 8;
        }
        let mut s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        while i < n {
            let v = match ty {
                Dense::F32 => (w.add(4 * i) as *const f32).read_unaligned(),
                Dense::F16 => super::f16_bits_to_f32((w.add(2 * i) as *const u16).read_unaligned()),
                Dense::Bf16 => f32::from_bits(((w.add(2 * i) as *const u16).read_unaligned() as u32) << 16),
            };
            s += v * *x.add(i);
            i += 1;
        }
        s
    }

    /// # Safety
    /// AVX2 and F16C must be available; `src` valid for `n` u16, `dst` for `n` floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn f16_to_f32_avx2(src: *const u16, dst: *mut f32, n: usize) {
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(_mm_loadu_si128(src.add(i) as *const __m128i)));
            i += 8;
        }
        while i < n {
            *dst.add(i) = super::f16_bits_to_f32(*src.add(i));
            i += 1;
        }
    }

    /// exp(x) for 8 lanes; relative error < 3e-7 on [-87, 88]; below -87.33 the result is 0.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp256(x: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-87.336_55);
        let xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.376_26));
        let n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        // r = x - n ln2, in two steps for accuracy (Cody-Waite).
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), xc);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 5040.0);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 720.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
        // 2^n, n in [-126, 127] after the clamp; 2^(n) = (n + 127) << 23 as bits.
        let ni = _mm256_cvtps_epi32(n);
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
        let res = _mm256_mul_ps(p, pow2);
        // Flush results for x below the clamp to exactly 0 (masked attention logits, -inf).
        let under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
        _mm256_andnot_ps(under, res)
    }

    /// # Safety
    /// AVX2 and FMA must be available; `v` valid for `n` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp_shift_sum_avx2(v: *mut f32, n: usize, shift: f32) -> f32 {
        let sh = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(v.add(i)), sh));
            _mm256_storeu_ps(v.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut s = hsum256(acc);
        while i < n {
            let e = (*v.add(i) - shift).exp();
            *v.add(i) = e;
            s += e;
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    //! Every ISA level this machine has (x86: AVX2 / AVX-512; AArch64: NEON) against the scalar
    //! twins (bit for bit where the contract says so) and against f64.
    use super::*;

    /// SplitMix64, as the integration tests' generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
            lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
        }
    }

    fn same_bits(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// Inputs reaching every branch of `ggml_expf(-x)`: |n| > 192 either side, the two-factor
    /// scale near under- and overflow, subnormal results, signed zeros, infinities, NaN.
    fn silu_inputs(rng: &mut Rng) -> Vec<f32> {
        let mut x: Vec<f32> = vec![0.0, -0.0, 1e-40, -1e-40, 87.5, -87.5, 88.8, -88.8, 103.9, -104.0, 133.0, -133.1, 150.0, -150.0];
        x.extend([200.0, -200.0, 1e30, -1e30, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, f32::MIN_POSITIVE]);
        for _ in 0..2000 {
            x.push(rng.uniform(-12.0, 12.0));
        }
        for _ in 0..500 {
            x.push(rng.uniform(-160.0, 160.0));
        }
        x
    }

    #[test]
    fn silu_every_isa_gives_the_scalar_bits() {
        let mut rng = Rng(3);
        let x = silu_inputs(&mut rng);
        let m: Vec<f32> = (0..x.len()).map(|_| rng.uniform(-3.0, 3.0)).collect();
        for n in [0usize, 1, 15, 16, 17, 31, 33, 70, x.len()] {
            for mul in [None, Some(&m[..n])] {
                let mut want = vec![0f32; n];
                silu_ggml_body(&x[..n], mul, &mut want);
                for isa in Isa::all_supported() {
                    let mut got = vec![0f32; n];
                    silu_ggml(isa, &x[..n], mul, &mut got);
                    for i in 0..n {
                        assert!(same_bits(got[i], want[i]), "{isa:?} n={n} x={}: {} vs scalar {}", x[i], got[i], want[i]);
                    }
                }
            }
        }
    }

    /// gpt-oss's clamped SwiGLU: every ISA gives the portable body's bits, and the body is
    /// within a few ulps of the definition evaluated in f64 (values on both sides of the limits,
    /// at them, far outside, signed zeros, NaN).
    #[test]
    fn swiglu_oai_every_isa_gives_the_scalar_bits_and_matches_f64() {
        let mut rng = Rng(11);
        let (alpha, limit) = (1.702f32, 7.0f32);
        let mut g = silu_inputs(&mut rng);
        g.extend([7.0, -7.0, 7.000001, 6.999999, -300.0]);
        let mut u: Vec<f32> = (0..g.len()).map(|_| rng.uniform(-10.0, 10.0)).collect();
        u[..6].copy_from_slice(&[7.0, -7.0, 1e30, -1e30, f32::NAN, -0.0]);
        let n = g.len();
        let mut want = vec![0f32; n];
        swiglu_oai_body(&g, &u, alpha, limit, &mut want);
        for isa in Isa::all_supported() {
            for len in [0usize, 1, 7, 8, 9, 17, n] {
                let mut got = vec![0f32; len];
                swiglu_oai(isa, &g[..len], &u[..len], alpha, limit, &mut got);
                for i in 0..len {
                    assert!(same_bits(got[i], want[i]), "{isa:?} gate={} up={}: {} vs scalar {}", g[i], u[i], got[i], want[i]);
                }
            }
        }
        for i in 0..n {
            let (x, y) = (g[i] as f64, u[i] as f64);
            if x.is_nan() || y.is_nan() {
                assert!(want[i].is_nan(), "NaN in must give NaN out: gate={x} up={y} -> {}", want[i]);
                continue;
            }
            let gc = x.min(limit as f64);
            let uc = y.clamp(-limit as f64, limit as f64);
            let r = gc / (1.0 + (-(alpha as f64) * gc).exp()) * (uc + 1.0);
            if r.is_nan() {
                // -inf / inf (gate = -inf) in both.
                assert!(want[i].is_nan(), "gate={x} up={y}: {} vs f64 NaN", want[i]);
                continue;
            }
            assert!((want[i] as f64 - r).abs() <= 2e-6 * r.abs() + 1e-30, "gate={x} up={y}: {} vs f64 {r}", want[i]);
        }
    }

    #[test]
    fn gelu_every_isa_gives_the_scalar_bits() {
        let mut rng = Rng(5);
        // Every f16 value in range and around the +-10 bounds, plus random f32s.
        let mut x: Vec<f32> = (0..=u16::MAX).map(rocmforge_quant::f16_to_f32).filter(|v| v.is_finite()).collect();
        x.extend([-10.0f32, 10.0, f32::from_bits((-10f32).to_bits() + 1), f32::from_bits(10f32.to_bits() - 1), 1e30, -1e30]);
        x.extend((0..4000).map(|_| rng.uniform(-12.0, 12.0)));
        let m: Vec<f32> = (0..x.len()).map(|_| rng.uniform(-3.0, 3.0)).collect();
        let table = gelu_table();
        for n in [0usize, 1, 15, 16, 17, 33, x.len()] {
            for mul in [None, Some(&m[..n])] {
                let want: Vec<f32> = (0..n).map(|i| gelu_ggml(table, x[i], mul.map_or(1.0, |m| m[i]))).collect();
                for isa in Isa::all_supported() {
                    let mut got = vec![0f32; n];
                    gelu_mul(isa, &x[..n], mul, &mut got);
                    for i in 0..n {
                        assert!(same_bits(got[i], want[i]), "{isa:?} n={n} x={}: {} vs scalar {}", x[i], got[i], want[i]);
                    }
                }
            }
        }
    }

    #[test]
    fn f16_conversion_every_isa_is_exact() {
        let src: Vec<u16> = (0..=u16::MAX).collect();
        for isa in Isa::all_supported() {
            for n in [0usize, 3, 4, 7, 9, src.len()] {
                let mut dst = vec![0f32; n];
                f16_slice_to_f32(isa, &src[..n], &mut dst);
                for i in 0..n {
                    let want = f16_bits_to_f32(src[i]);
                    assert!(same_bits(dst[i], want), "{isa:?} {:#06x}: {} vs {}", src[i], dst[i], want);
                }
            }
        }
    }

    #[test]
    fn exp_shift_sum_every_isa_matches_f64() {
        let mut rng = Rng(5);
        for isa in Isa::all_supported() {
            for n in 0..=41usize {
                let mut v: Vec<f32> = (0..n).map(|_| rng.uniform(-95.0, 8.0)).collect();
                if n > 5 {
                    v[5] = f32::NEG_INFINITY; // a masked score
                }
                let shift = rng.uniform(-1.0, 1.0);
                let orig = v.clone();
                let s = exp_shift_sum(isa, &mut v, shift);
                let mut sum = 0f64;
                for i in 0..n {
                    let want = ((orig[i] - shift) as f64).exp();
                    sum += v[i] as f64;
                    assert!(
                        (v[i] as f64 - want).abs() <= 3e-7 * want + 1e-37,
                        "{isa:?} n={n}: exp({}) = {} vs {want}",
                        orig[i] - shift,
                        v[i]
                    );
                }
                assert!((s as f64 - sum).abs() <= 1e-6 * sum + 1e-37, "{isa:?} n={n}: sum {s} vs {sum}");
            }
        }
    }

    #[test]
    fn dense_dots_every_isa_match_f64() {
        let mut rng = Rng(9);
        for ty in [Dense::F32, Dense::F16, Dense::Bf16] {
            for n in (0..=70usize).chain([127, 128, 129, 300]) {
                let wf: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let x: Vec<f32> = (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect();
                let w: Vec<u8> = match ty {
                    Dense::F32 => wf.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    Dense::F16 => wf.iter().flat_map(|&v| rocmforge_quant::f32_to_f16(v).to_le_bytes()).collect(),
                    Dense::Bf16 => wf.iter().flat_map(|&v| rocmforge_quant::f32_to_bf16(v).to_le_bytes()).collect(),
                };
                let mut wd = vec![0f32; n];
                dense_to_f32(ty, &w, &mut wd);
                let want: f64 = (0..n).map(|i| wd[i] as f64 * x[i] as f64).sum();
                let l1: f64 = (0..n).map(|i| (wd[i] as f64 * x[i] as f64).abs()).sum();
                // Unaligned rows too: the kernels read bytes.
                let mut shifted = vec![0u8; 1];
                shifted.extend_from_slice(&w);
                for isa in Isa::all_supported() {
                    for row in [&w[..], &shifted[1..]] {
                        let got = dot_dense(isa, ty, row, &x, n) as f64;
                        assert!((got - want).abs() <= 1e-6 * l1 + 1e-30, "{ty:?} {isa:?} n={n}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
