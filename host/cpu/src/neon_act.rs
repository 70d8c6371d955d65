//! AArch64 NEON twin of `act::quantize_token`: one token's activations quantized to Q8_0 / Q8_1
//! / Q8_K plus the side arrays, byte for byte what the portable code (and llama.cpp's x86
//! `quantize_row_q8_0/q8_1` and `quantize_row_q8_K_ref`) produces for NaN-free input (with NaN:
//! some result, as the portable contract says); see `act` for the rules and the
//! `QActs` layout.
//!
//! Equal bits because every step is exact IEEE or integer arithmetic in the same order:
//! `|x|` maxima (order-free), one multiply per element, `fcvtns` = round half to even with
//! saturation to i32, then saturating narrows (= Rust's saturating `as i8`; NaN gives 0 in
//! both), integer sums. Where the scalar code picks "the first value of largest |x|" (Q8_K) the
//! maximum is found with `fmaxnmv` (NaN ignored, as the scalar `>` scan ignores it) and the first
//! element equal to it is then searched for. llama.cpp's ARM `quantize_row_q8_0` differs (it
//! multiplies by `1 / d`, not `127 / amax`); we keep the x86 rule on every architecture.

use std::arch::aarch64::*;

use rocmforge_quant::f32_to_f16;

use crate::act::{quantize_token_with, ActFormat, BlockQuant, TokenSlots};

/// 32 values of a Q8_0 / Q8_1 block: returns (d, d as f16 bits, sum of q), as `act::q8_block`.
///
/// # Safety
/// NEON available.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q8_block(x: &[f32; 32], q: &mut [i8; 32]) -> (f32, u16, i32) {
    let p = x.as_ptr();
    let mut m = vabsq_f32(vld1q_f32(p));
    for v in 1..8 {
        m = vmaxq_f32(m, vabsq_f32(vld1q_f32(p.add(4 * v))));
    }
    let amax = vmaxvq_f32(m);
    let d = amax / 127.0;
    let id = vdupq_n_f32(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    let mut sum = 0i32;
    for h in 0..2 {
        let q16 = quantize16(p.add(16 * h), id, None);
        vst1q_s8(q.as_mut_ptr().add(16 * h), q16);
        sum += vaddlvq_s8(q16) as i32;
    }
    (d, f32_to_f16(d), sum)
}

/// 16 values times `scale`, rounded half to even, optionally clamped to `hi`, saturated to i8.
///
/// # Safety
/// NEON; `p` valid for 16 floats.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn quantize16(p: *const f32, scale: float32x4_t, hi: Option<int32x4_t>) -> int8x16_t {
    let mut r = [vdupq_n_s32(0); 4];
    for (v, rv) in r.iter_mut().enumerate() {
        let i = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(p.add(4 * v)), scale));
        *rv = match hi {
            Some(h) => vminq_s32(i, h),
            None => i,
        };
    }
    let lo = vcombine_s16(vqmovn_s32(r[0]), vqmovn_s32(r[1]));
    let hi16 = vcombine_s16(vqmovn_s32(r[2]), vqmovn_s32(r[3]));
    vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi16))
}

/// 256 values of a Q8_K block: returns d, as `act::q8k_block`.
///
/// # Safety
/// NEON available.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q8k_block(x: &[f32; 256], q: &mut [i8; 256]) -> f32 {
    let p = x.as_ptr();
    let mut m = vabsq_f32(vld1q_f32(p));
    for v in 1..64 {
        m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(p.add(4 * v))));
    }
    let amax = vmaxnmvq_f32(m);
    // All zero (or all NaN, which the scalar scan skips as well): an all-zero block.
    if amax.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        q.fill(0);
        return 0.0;
    }
    let Some(&max) = x.iter().find(|v| v.abs() == amax) else {
        q.fill(0);
        return 0.0;
    };
    let iscale = -127.0 / max;
    let sc = vdupq_n_f32(iscale);
    let hi = vdupq_n_s32(127);
    for v in 0..16 {
        vst1q_s8(q.as_mut_ptr().add(16 * v), quantize16(p.add(16 * v), sc, Some(hi)));
    }
    1.0 / iscale
}

/// `act::quantize_token_with` on the NEON primitives (same slots, same padding, same bytes).
///
/// # Safety
/// NEON available; `x.len()` a multiple of the format's block and the slots sized by
/// `QActs::reset` for that length (as for the portable version).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_token(fmt: ActFormat, x: &[f32], s: TokenSlots<'_>) {
    quantize_token_with::<Neon>(fmt, x, s)
}

/// The NEON block primitives.
struct Neon;

impl BlockQuant for Neon {
    #[inline(always)]
    unsafe fn q8_block(x: &[f32; 32], q: &mut [i8; 32]) -> (f32, u16, i32) {
        q8_block(x, q)
    }
    #[inline(always)]
    unsafe fn q8k_block(x: &[f32; 256], q: &mut [i8; 256]) -> f32 {
        q8k_block(x, q)
    }
    #[inline(always)]
    unsafe fn sum16(q: &[i8]) -> i32 {
        vaddlvq_s8(vld1q_s8(q[..16].as_ptr())) as i32
    }
    #[inline(always)]
    unsafe fn fill_xc4(xq: &[i8], xc4: &mut [i32], k: usize) {
        // Whole vectors of 16 values (4 lanes) while they fit, the rest one lane at a time.
        let mut l = 0;
        while 4 * l + 16 <= k && l + 4 <= xc4.len() {
            let sums = vpaddlq_s16(vpaddlq_s8(vld1q_s8(xq.as_ptr().add(4 * l))));
            vst1q_s32(xc4.as_mut_ptr().add(l), vmulq_n_s32(sums, -128));
            l += 4;
        }
        for (l, c) in xc4[..k / 4].iter_mut().enumerate().skip(l) {
            *c = -128 * xq[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The NEON quantizer (what `act::quantize_token` runs on AArch64) against the slots
    //! rebuilt from `quantize_activations`' block bytes (the portable rules, checked byte for
    //! byte against llama.cpp in `tests/llama_cpp_act.rs`).
    use crate::act::{act_format, QActs, TokenSlots};
    use crate::GgmlType;
    use rocmforge_quant::f16_to_f32;

    fn rows(k: usize) -> Vec<Vec<f32>> {
        let mut s = 17u64;
        let mut next = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) as f32
        };
        let mut out = Vec::new();
        out.push((0..k).map(|_| (next() - 0.5) * 4.0).collect::<Vec<_>>());
        // Exact ties: max |x| = 127 (Q8_0 scale 1; Q8_K: the negative extreme first, scale 1).
        let mut t: Vec<f32> = (0..k).map(|_| ((next() * 252.0) as i32 - 126) as f32 + 0.5).collect();
        for b in 0..k / 32 {
            t[32 * b] = if b % 2 == 0 { -127.0 } else { 127.0 };
        }
        out.push(t);
        // +a and -a as the largest |x| (which one Q8_K keeps decides the sign), a zero block,
        // subnormals, huge values.
        let mut e: Vec<f32> = (0..k).map(|_| next() - 0.5).collect();
        e[3] = 5.0;
        e[10] = -5.0;
        e[32..64].fill(0.0);
        e[64] = 1e-40;
        e[k - 1] = -3e30;
        out.push(e);
        out.push(vec![0.0; k]);
        out
    }

    #[test]
    fn neon_quantizer_equals_the_portable_bytes() {
        for wty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::Q6_K] {
            let fmt = act_format(wty);
            for k in [256usize, 768, 160] {
                if wty == GgmlType::Q6_K && k % 256 != 0 {
                    continue;
                }
                for x in rows(k) {
                    let (vt, b) = crate::quantize_activations(wty, &x).expect("quantize");
                    let mut a = QActs::default();
                    a.reset(k, 1);
                    let (kp, g16, n32) = (a.kp, a.g16, a.n32);
                    // Garbage first, so unwritten padding shows.
                    a.xq.fill(99);
                    a.dx4.fill(9.0);
                    a.xs16.fill(9.0);
                    a.xc4.fill(9);
                    a.d32.fill(9.0);
                    let slots = TokenSlots { xq: &mut a.xq, dx4: &mut a.dx4, xs16: &mut a.xs16, xc4: &mut a.xc4, d32: &mut a.d32 };
                    // SAFETY: NEON is part of every AArch64 target; slots sized by `reset`.
                    unsafe { super::quantize_token(fmt, &x, slots) };
                    let (mut xq, mut dx4, mut xs16, mut d32) = (vec![0i8; kp], vec![0f32; kp / 4], vec![0f32; g16], vec![0f32; n32]);
                    if vt == GgmlType::Q8_K {
                        for (bi, blk) in b.chunks_exact(292).enumerate() {
                            let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
                            dx4[64 * bi..64 * bi + 64].fill(d);
                            for i in 0..256 {
                                xq[256 * bi + i] = blk[4 + i] as i8;
                            }
                            for j in 0..16 {
                                let bs = i16::from_le_bytes([blk[260 + 2 * j], blk[261 + 2 * j]]);
                                xs16[16 * bi + j] = d * bs as f32;
                            }
                        }
                    } else {
                        let ts = vt.type_size();
                        let q0 = ts - 32;
                        for (bi, blk) in b.chunks_exact(ts).enumerate() {
                            let d = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
                            dx4[8 * bi..8 * bi + 8].fill(d);
                            d32[bi] = d;
                            if vt == GgmlType::Q8_1 {
                                xs16[2 * bi] = f16_to_f32(u16::from_le_bytes([blk[2], blk[3]]));
                            }
                            for i in 0..32 {
                                xq[32 * bi + i] = blk[q0 + i] as i8;
                            }
                        }
                    }
                    let xc4: Vec<i32> = (0..kp / 4).map(|l| -128 * xq[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>()).collect();
                    let f = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(a.xq, xq, "{vt} k={k}: q");
                    assert_eq!(f(&a.dx4), f(&dx4), "{vt} k={k}: d");
                    assert_eq!(f(&a.xs16), f(&xs16), "{vt} k={k}: xs16");
                    assert_eq!(a.xc4, xc4, "{vt} k={k}: xc4");
                    assert_eq!(f(&a.d32), f(&d32), "{vt} k={k}: d32");
                }
            }
        }
    }
}
