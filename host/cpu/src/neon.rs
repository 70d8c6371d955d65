//! AArch64 NEON versions of the float primitives of `simd` (dense dots, f16 -> f32, softmax
//! `exp`, llama.cpp's `ggml_v_expf` / SiLU) and the integer building block every quantized NEON
//! kernel uses: the exact i32 dot of each 4 consecutive i8 pairs of two 16-byte vectors (`Dot4`).
//!
//! Contracts are those of the scalar twins in `simd` (each function names its twin). Every
//! function here is a `#[target_feature] unsafe fn` or is only inlined into one; callers reach
//! them after `Isa::detect` / `Isa::clamp` said `Neon` (`NeonDot` for `Sdot`).
//!
//! Bits: the integer dots are exact, so the quantized kernels built on them give the scalar
//! path's bits. The float primitives mirror the AVX2 versions operation for operation (two
//! 128-bit halves per 256-bit vector, the same fma / add tree), so `dot_dense` and
//! `exp_shift_sum` equal the AVX2 results (and differ from the scalar twins only by summation
//! order / the exp polynomial, as AVX2 does), and `ggml_expf4` / `silu_ggml` equal the scalar
//! twins bit for bit. Note that llama.cpp's own NEON `ggml_v_expf` (ggml-cpu `vec.h`) is the
//! same Arm optimized-routines algorithm but finishes as `k + k * j` (j = e^b - 1) with a
//! two-factor scale only near overflow, while its AVX-512 version (which our scalar twin
//! replicates, so logits match x86 llama.cpp) rounds `j = e^b` and scales by `2^n` exactly; the
//! two can differ in the last bit, and we keep the AVX-512 rounding on every architecture.
//!
//! Speed: written as a fast NEON kernel is written (4-way / 8-way accumulators, `sdot` when
//! FEAT_DotProd is present, `smull` + pairwise adds otherwise), but only ever run under
//! qemu-user here, so nothing about real ARM speed has been measured. `vdotq_s32` and the f16
//! conversion intrinsics are still unstable in Rust 1.95, so `sdot` and `fcvtl` / `fcvt` are
//! emitted through `asm!` (register-only instructions).

use std::arch::aarch64::*;
use std::arch::asm;

use crate::simd::Dense;

/// How a kernel forms `acc[l] + sum_{i<4} a[4l + i] * b[4l + i]` for the 4 i32 lanes l of two
/// 16-byte vectors. Exact as long as |b| <= 127 (the 8-bit activations never hold -128, see
/// `act`), which keeps every pair sum of the `Mull` path inside i16.
pub(crate) trait Dot4 {
    /// # Safety
    /// NEON must be available, and for `Sdot` the dot-product extension.
    unsafe fn dot4(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// FEAT_DotProd `sdot`: one instruction per 16 byte pairs.
pub(crate) struct Sdot;

/// Baseline NEON: `smull` / `smull2` (8 i16 products each), a pairwise add to 8 i16 sums of
/// two, and a pairwise widening accumulate to the 4 i32 lanes.
pub(crate) struct Mull;

impl Dot4 for Sdot {
    #[inline(always)]
    unsafe fn dot4(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        sdot(acc, a, b)
    }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: a register-only instruction of FEAT_DotProd, enabled for this function (callers
    // reach it only at `Isa::NeonDot`, after detection); no memory, stack or flags touched.
    unsafe {
        asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

impl Dot4 for Mull {
    #[inline(always)]
    unsafe fn dot4(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        // SAFETY (caller): NEON available.
        unsafe {
            let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let hi = vmull_high_s8(a, b);
            // [e0+e1, e2+e3, .., e14+e15] (|sum| <= 2 * 128 * 127 < 2^15), then lane l gets
            // the pair sums 2l and 2l + 1: elements 4l..4l+4.
            vpadalq_s16(acc, vpaddq_s16(lo, hi))
        }
    }
}

/// The canonical `hsum8` (`((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))`) of eight lanes held as
/// `lo` = lanes 0..4 and `hi` = lanes 4..8; also AVX2's `hsum256`.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn hsum4x2(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let s = vaddq_f32(lo, hi);
    let t = vadd_f32(vget_low_f32(s), vget_high_f32(s));
    vget_lane_f32::<0>(t) + vget_lane_f32::<1>(t)
}

/// Four f16 values (bits) to f32 (`fcvtl`; exact, as `f16_bits_to_f32`, except that a
/// signalling NaN comes out quiet, as with x86 F16C).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn cvt_f16x4(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: a register-only base AArch64 instruction (half-precision conversion is part of
    // FP/AdvSIMD); no memory, stack or flags touched.
    unsafe { asm!("fcvtl {o:v}.4s, {i:v}.4h", i = in(vreg) h, o = out(vreg) out, options(pure, nomem, nostack, preserves_flags)) };
    out
}

/// One f16 value (bits) to f32 (`fcvt`), as `cvt_f16x4`.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn f16_to_f32(h: u16) -> f32 {
    let out: f32;
    // SAFETY: register-only base FP instructions (`fmov` to the low lane, `fcvt` from its low
    // 16 bits); no memory, stack or flags touched.
    unsafe {
        asm!("fmov {t:s}, {x:w}", "fcvt {o:s}, {t:h}", x = in(reg) h as u32, t = out(vreg) _, o = lateout(vreg) out,
            options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// Four elements of a dense row starting at element `i` (bytes, little endian, any alignment).
///
/// # Safety
/// NEON; `w` valid for element `i + 3` of `ty`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load4(ty: Dense, w: *const u8, i: usize) -> float32x4_t {
    match ty {
        Dense::F32 => vreinterpretq_f32_u8(vld1q_u8(w.add(4 * i))),
        Dense::F16 => cvt_f16x4(vreinterpret_u16_u8(vld1_u8(w.add(2 * i)))),
        Dense::Bf16 => vreinterpretq_f32_u32(vshll_n_u16::<16>(vreinterpret_u16_u8(vld1_u8(w.add(2 * i))))),
    }
}

/// Twin of `simd::dot_dense_scalar`, operation for operation AVX2's `dot_dense_avx2`: four
/// 8-lane accumulators (here 2 x 4 lanes each) over steps of 32, one over steps of 8, the
/// `hsum256` tree, then the tail in order.
///
/// # Safety
/// NEON; `w` valid for `n` elements of `ty`, `x` for `n` floats.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_dense(ty: Dense, w: *const u8, x: *const f32, n: usize) -> f32 {
    // a[2m + h]: half h of AVX2 accumulator m.
    let mut a = [vdupq_n_f32(0.0); 8];
    let mut i = 0;
    while i + 32 <= n {
        for m in 0..4 {
            for h in 0..2 {
                let o = i + 8 * m + 4 * h;
                a[2 * m + h] = vfmaq_f32(a[2 * m + h], load4(ty, w, o), vld1q_f32(x.add(o)));
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        for h in 0..2 {
            let o = i + 4 * h;
            a[h] = vfmaq_f32(a[h], load4(ty, w, o), vld1q_f32(x.add(o)));
        }
        i += 8;
    }
    let lo = vaddq_f32(vaddq_f32(a[0], a[2]), vaddq_f32(a[4], a[6]));
    let hi = vaddq_f32(vaddq_f32(a[1], a[3]), vaddq_f32(a[5], a[7]));
    let mut s = hsum4x2(lo, hi);
    while i < n {
        let v = match ty {
            Dense::F32 => (w.add(4 * i) as *const f32).read_unaligned(),
            Dense::F16 => crate::simd::f16_bits_to_f32((w.add(2 * i) as *const u16).read_unaligned()),
            Dense::Bf16 => f32::from_bits(((w.add(2 * i) as *const u16).read_unaligned() as u32) << 16),
        };
        s += v * *x.add(i);
        i += 1;
    }
    s
}

/// Twin of the scalar loop in `simd::f16_slice_to_f32`.
///
/// # Safety
/// NEON; `src` valid for `n` u16, `dst` for `n` floats.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn f16_to_f32_slice(src: *const u16, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i + 4 <= n {
        vst1q_f32(dst.add(i), cvt_f16x4(vld1_u16(src.add(i))));
        i += 4;
    }
    while i < n {
        *dst.add(i) = crate::simd::f16_bits_to_f32(*src.add(i));
        i += 1;
    }
}

/// exp(x) for 4 lanes: AVX2's `exp256` operation for operation (Cephes reduction, degree-7
/// polynomial); relative error < 3e-7 on [-87, 88]; below -87.33 the result is 0.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let lo = vdupq_n_f32(-87.336_55);
    let xc = vminq_f32(vmaxq_f32(x, lo), vdupq_n_f32(88.376_26));
    let n = vrndnq_f32(vmulq_f32(xc, vdupq_n_f32(std::f32::consts::LOG2_E)));
    let r = vfmsq_f32(xc, n, vdupq_n_f32(0.693_145_75));
    let r = vfmsq_f32(r, n, vdupq_n_f32(1.428_606_8e-6));
    let mut p = vdupq_n_f32(1.0 / 5040.0);
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let ni = vcvtnq_s32_f32(n);
    let pow2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(ni, vdupq_n_s32(127))));
    let res = vmulq_f32(p, pow2);
    let under = vcltq_f32(x, lo);
    vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(res), under))
}

/// Twin of `simd::exp_shift_sum` (AVX2's `exp_shift_sum_avx2` order: 8 lanes, `hsum256`, tail).
///
/// # Safety
/// NEON; `v` valid for `n` floats.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn exp_shift_sum(v: *mut f32, n: usize, shift: f32) -> f32 {
    let sh = vdupq_n_f32(shift);
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut i = 0;
    while i + 8 <= n {
        for h in 0..2 {
            let e = exp4(vsubq_f32(vld1q_f32(v.add(i + 4 * h)), sh));
            vst1q_f32(v.add(i + 4 * h), e);
            acc[h] = vaddq_f32(acc[h], e);
        }
        i += 8;
    }
    let mut s = hsum4x2(acc[0], acc[1]);
    while i < n {
        let e = (*v.add(i) - shift).exp();
        *v.add(i) = e;
        s += e;
        i += 1;
    }
    s
}

/// `simd::ggml_expf` on 4 lanes, bit for bit (the same fmas; the exact `2^n` as two power-of-two
/// factors; |n| > 192 gives 0 or inf).
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn ggml_expf4(x: float32x4_t) -> float32x4_t {
    let c = |b: u32| vdupq_n_f32(f32::from_bits(b));
    let r = c(0x4B40_0000);
    let z = vfmaq_f32(r, x, c(0x3FB8_AA3B));
    let n = vsubq_f32(z, r);
    let b = vfmsq_f32(vfmsq_f32(x, n, c(0x3F31_7200)), n, c(0x35BF_BE8E));
    let u = vmulq_f32(b, b);
    let a = vfmaq_f32(c(0x3D2B_9F17), c(0x3C07_2010), b);
    let p = vfmaq_f32(vfmaq_f32(c(0x3EFF_FEDB), c(0x3E2A_AF33), b), a, u);
    let j = vfmaq_f32(vfmaq_f32(vdupq_n_f32(1.0), c(0x3F7F_FFF6), b), p, u);
    // `n as i32` (truncating, saturating, NaN -> 0), halved as in the scalar twin.
    let e = vcvtq_s32_f32(n);
    let e1 = vshrq_n_s32::<1>(e);
    let e2 = vsubq_s32(e, e1);
    let pow2 = |k: int32x4_t| {
        let k = vminq_s32(vmaxq_s32(k, vdupq_n_s32(-126)), vdupq_n_s32(127));
        vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(k, vdupq_n_s32(127))))
    };
    let res = vmulq_f32(vmulq_f32(j, pow2(e1)), pow2(e2));
    let alt = vbslq_f32(vclezq_f32(n), vdupq_n_f32(0.0), vdupq_n_f32(f32::INFINITY));
    vbslq_f32(vcagtq_f32(n, vdupq_n_f32(192.0)), alt, res)
}

/// Twin of `simd::silu_ggml_body`, bit for bit: the first `n & !15` elements through
/// `ggml_expf4` (`x / (1 + e^-x)`, times `mul` last), the rest with libm's `expf`.
///
/// # Safety
/// NEON; `mul`, if given, holds at least `min(x.len(), out.len())` values.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn silu_ggml(x: &[f32], mul: Option<&[f32]>, out: &mut [f32]) {
    let n = x.len().min(out.len());
    let nv = n & !15;
    let one = vdupq_n_f32(1.0);
    let zero = vdupq_n_f32(0.0);
    let mut i = 0;
    while i < nv {
        let v = vld1q_f32(x.as_ptr().add(i));
        let s = vdivq_f32(v, vaddq_f32(one, ggml_expf4(vsubq_f32(zero, v))));
        let s = match mul {
            Some(m) => vmulq_f32(s, vld1q_f32(m.as_ptr().add(i))),
            None => s,
        };
        vst1q_f32(out.as_mut_ptr().add(i), s);
        i += 4;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `ggml_expf4` equals the scalar `simd::ggml_expf` on a stride through every f32 bit pattern
    /// (both signs, all exponents: zero, subnormal, overflow, |n| > 192, inf, NaN).
    #[test]
    fn ggml_expf4_is_the_scalar_bits() {
        let mut bits: Vec<u32> = (0..u32::MAX / 1999).map(|i| i.wrapping_mul(1999)).collect();
        bits.extend([0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0x0000_0000, 0x8000_0000, 0x42C8_0000, 0xC2C8_0000]);
        bits.truncate(bits.len() / 4 * 4);
        for c in bits.chunks_exact(4) {
            let x: [f32; 4] = std::array::from_fn(|i| f32::from_bits(c[i]));
            let mut got = [0f32; 4];
            // SAFETY: NEON is part of every AArch64 target this module compiles for.
            unsafe { vst1q_f32(got.as_mut_ptr(), ggml_expf4(vld1q_f32(x.as_ptr()))) };
            for i in 0..4 {
                let want = crate::simd::ggml_expf(x[i]);
                assert!(got[i].to_bits() == want.to_bits() || (got[i].is_nan() && want.is_nan()), "x={}: {} vs {}", x[i], got[i], want);
            }
        }
    }

    /// Both `Dot4` flavours give the exact per-4 dots, extremes included (-128 weights, +-127
    /// activations).
    #[test]
    fn dot4_is_exact() {
        let has_dot = std::arch::is_aarch64_feature_detected!("dotprod");
        let mut s = 1u64;
        for case in 0..2000 {
            let mut a = [0i8; 16];
            let mut b = [0i8; 16];
            for i in 0..16 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                a[i] = (s >> 56) as i8;
                b[i] = ((s >> 48) as u8 as i8).max(-127);
                if case == 0 {
                    (a[i], b[i]) = (-128, -127);
                }
                if case == 1 {
                    (a[i], b[i]) = (-128, 127);
                }
            }
            let want: [i32; 4] = std::array::from_fn(|l| 7 + (0..4).map(|i| a[4 * l + i] as i32 * b[4 * l + i] as i32).sum::<i32>());
            let mut got = [0i32; 4];
            // SAFETY: NEON always; `Sdot` only when detected.
            unsafe {
                let (av, bv, acc) = (vld1q_s8(a.as_ptr()), vld1q_s8(b.as_ptr()), vdupq_n_s32(7));
                vst1q_s32(got.as_mut_ptr(), Mull::dot4(acc, av, bv));
                assert_eq!(got, want, "smull");
                if has_dot {
                    vst1q_s32(got.as_mut_ptr(), sdot_for_test(acc, av, bv));
                    assert_eq!(got, want, "sdot");
                }
            }
        }
    }

    #[target_feature(enable = "neon,dotprod")]
    unsafe fn sdot_for_test(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        Sdot::dot4(acc, a, b)
    }
}
