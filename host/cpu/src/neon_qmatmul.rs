//! AArch64 NEON kernels of the quantized matmul: the tile kernel of `qmatmul` (unpacked weights
//! times 8-bit activations), the weight unpacker with hardware f16 conversion, and the per-4
//! integer dots (`raw4`) of the K-quant exact path (`kquant`).
//!
//! Same canonical summation order as every other path (see `qmatmul`'s header), so results are
//! the scalar path's bits (and therefore llama.cpp's x86 bits where the scalar path has them):
//!
//! ```text
//!   per step of 32 bytes, row r, token t (lanes l = c/4 .. c/4 + 8, two int32x4 halves):
//!     I = Dot4(u' , xq)             u' = u ^ 0x80 for wide types (= the signed value, so no
//!                                   -128 * sum(x) start value is needed), u as i8 otherwise
//!     acc[h] = fma(f32(I), S * dx, acc[h])        h = lanes 0..4 / 4..8
//!   y = hsum8(acc) + bias (16 accumulators folded as `bias_scalar`, or `bias_seq`)
//! ```
//!
//! u' as i8 is exact: wide types hold value + 128 with value in [-128, 127]; the others hold
//! q <= 63. llama.cpp's own ARM kernels (`ggml-cpu/arch/arm/quants.c`, and the Q4_0 repack to
//! 4x4/4x8 interleaved blocks of `arch/arm/repack.cpp`) sum in other orders, so an ARM build of
//! llama.cpp is not bit-identical to its x86 build; we keep the x86 order on ARM, which costs
//! nothing here (the order only decides where the float adds go).
//!
//! Tiles are 2 rows x up to 4 tokens (16 f32 accumulators of the 32 NEON registers), as the AVX2
//! kernel; `Isa::NeonDot` uses `sdot`, `Isa::Neon` `smull` + pairwise adds (`neon::Dot4`).
//! Not measured on ARM hardware (qemu-user only; see `neon`). The release disassembly (Rust 1.95)
//! shows the 2 x 4 tile spilling about 10 of its 32 vector registers per 32-byte step; if ARM
//! measurements show it matters, a 2 x 3 tile (12 accumulators) is the first thing to try.

use std::arch::aarch64::*;

use rocmforge_quant::GgmlType;

use crate::neon::{hsum4x2, Dot4, Mull, Sdot};
use crate::qmatmul::{bias_seq, Kc, WPtr, XPtr, YPtr};
use crate::unpack::unpack_row;

/// The canonical bias sum (`qmatmul::bias_scalar`): 16 accumulators as 4 vectors, folded
/// `hsum8(acc[i] + acc[i + 8])`.
///
/// # Safety
/// NEON; `b` and `xs` valid for `n` (a multiple of 16) floats.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn bias16(b: *const f32, xs: *const f32, n: usize) -> f32 {
    let mut a = [vdupq_n_f32(0.0); 4];
    let mut j = 0;
    while j < n {
        for q in 0..4 {
            a[q] = vfmaq_f32(a[q], vld1q_f32(b.add(j + 4 * q)), vld1q_f32(xs.add(j + 4 * q)));
        }
        j += 16;
    }
    hsum4x2(vaddq_f32(a[0], a[2]), vaddq_f32(a[1], a[3]))
}

/// R rows x T tokens, one canonical step of 32 bytes per iteration.
///
/// # Safety
/// As `qmatmul::run_tile` with R rows and T tokens; NEON (and for `Sdot` FEAT_DotProd).
#[inline(always)]
unsafe fn tile_body<D: Dot4, const R: usize, const T: usize, const WIDE: bool>(kc: &Kc, w: WPtr, x: XPtr, y: YPtr) {
    let kp = kc.kp;
    let kp4 = kp / 4;
    let flip = vdupq_n_u8(0x80);
    let zero = vdupq_n_s32(0);
    let mut acc = [[[vdupq_n_f32(0.0); 2]; T]; R];
    let mut c = 0;
    while c < kp {
        let l = c / 4;
        let mut wv = [[vdupq_n_s8(0); 2]; R];
        let mut sv = [[vdupq_n_f32(0.0); 2]; R];
        for r in 0..R {
            for h in 0..2 {
                let raw = vld1q_u8(w.u.add(r * kp + c + 16 * h));
                wv[r][h] = vreinterpretq_s8_u8(if WIDE { veorq_u8(raw, flip) } else { raw });
                sv[r][h] = vld1q_f32(w.s4.add(r * kp4 + l + 4 * h));
            }
        }
        for t in 0..T {
            for h in 0..2 {
                let xv = vld1q_s8(x.xq.add(t * kp + c + 16 * h));
                let dv = vld1q_f32(x.dx4.add(t * kp4 + l + 4 * h));
                for r in 0..R {
                    let i = D::dot4(zero, wv[r][h], xv);
                    acc[r][t][h] = vfmaq_f32(acc[r][t][h], vcvtq_f32_s32(i), vmulq_f32(sv[r][h], dv));
                }
            }
        }
        c += 32;
    }
    for r in 0..R {
        for t in 0..T {
            let mut v = hsum4x2(acc[r][t][0], acc[r][t][1]);
            if kc.seq_bias {
                v += bias_seq(w.b16.add(r * kc.g16), x.xs16.add(t * kc.g16), kp / 32);
            } else if kc.bias {
                v += bias16(w.b16.add(r * kc.g16), x.xs16.add(t * kc.g16), kc.g16);
            }
            *y.y.add(t * y.ld + r) = v;
        }
    }
}

/// # Safety
/// As `tile_body`; NEON available.
#[target_feature(enable = "neon")]
unsafe fn tile_neon<const R: usize, const T: usize, const WIDE: bool>(kc: &Kc, w: WPtr, x: XPtr, y: YPtr) {
    tile_body::<Mull, R, T, WIDE>(kc, w, x, y)
}

/// # Safety
/// As `tile_body`; NEON and FEAT_DotProd available.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_dot<const R: usize, const T: usize, const WIDE: bool>(kc: &Kc, w: WPtr, x: XPtr, y: YPtr) {
    tile_body::<Sdot, R, T, WIDE>(kc, w, x, y)
}

/// One tile of `nr` (<= 4) rows by `nt` (<= 4) tokens, two rows at a time.
///
/// # Safety
/// As `qmatmul::run_tile`; NEON available, and FEAT_DotProd if `dot`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_tile(dot: bool, wide: bool, kc: &Kc, w: WPtr, nr: usize, x: XPtr, nt: usize, y: YPtr) {
    macro_rules! by_t {
        ($f:ident, $r:literal, $wide:literal, $w:expr, $y:expr) => {
            match nt {
                1 => $f::<$r, 1, $wide>(kc, $w, x, $y),
                2 => $f::<$r, 2, $wide>(kc, $w, x, $y),
                3 => $f::<$r, 3, $wide>(kc, $w, x, $y),
                _ => $f::<$r, 4, $wide>(kc, $w, x, $y),
            }
        };
    }
    macro_rules! pick {
        ($f:ident, $two:expr, $w:expr, $y:expr) => {
            match ($two, wide) {
                (true, true) => by_t!($f, 2, true, $w, $y),
                (true, false) => by_t!($f, 2, false, $w, $y),
                (false, true) => by_t!($f, 1, true, $w, $y),
                (false, false) => by_t!($f, 1, false, $w, $y),
            }
        };
    }
    let mut r = 0;
    while r < nr {
        let wr = w.row(kc, r);
        let yr = YPtr { y: y.y.add(r), ld: y.ld };
        let two = nr - r >= 2;
        if dot {
            pick!(tile_dot, two, wr, yr)
        } else {
            pick!(tile_neon, two, wr, yr)
        }
        r += if two { 2 } else { 1 };
    }
}

/// The portable unpacker compiled for NEON, with `fcvt` doing the f16 scale conversions (the
/// byte loops are auto-vectorised with NEON anyway, which AArch64 always has).
///
/// # Safety
/// NEON available.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn unpack(ty: GgmlType, src: &[u8], k: usize, u: &mut [u8], s4: &mut [f32], b16: &mut [f32]) {
    #[inline(always)]
    fn cvt(h: u16) -> f32 {
        // SAFETY: only reached from `unpack`, which runs after NEON was detected.
        unsafe { crate::neon::f16_to_f32(h) }
    }
    unpack_row(ty, src, k, u, s4, b16, cvt);
}

/// `kquant`'s per-4 dots on NEON: `D` = `Mull` or `Sdot`.
pub(crate) struct Raw4Neon<D>(std::marker::PhantomData<D>);

impl<D: Dot4> crate::kquant::Raw4 for Raw4Neon<D> {
    /// Twin of `kquant::raw4`: r[l] = sum q x, s[l] = sum x over elements 4l..4l+4 (exact).
    ///
    /// # Safety
    /// NEON available (FEAT_DotProd for `Sdot`); `q` values <= 127.
    #[inline(always)]
    unsafe fn raw4(q: &[u8; 256], x: &[i8]) -> ([i32; 64], [i32; 64]) {
        let mut r = [0i32; 64];
        let mut s = [0i32; 64];
        let Some(x) = x.first_chunk::<256>() else {
            return (r, s);
        };
        let zero = vdupq_n_s32(0);
        for v in 0..16 {
            let qv = vreinterpretq_s8_u8(vld1q_u8(q.as_ptr().add(16 * v)));
            let xv = vld1q_s8(x.as_ptr().add(16 * v));
            vst1q_s32(r.as_mut_ptr().add(4 * v), D::dot4(zero, qv, xv));
            vst1q_s32(s.as_mut_ptr().add(4 * v), vpaddlq_s16(vpaddlq_s8(xv)));
        }
        (r, s)
    }
}
