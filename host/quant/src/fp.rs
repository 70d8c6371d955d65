//! Scalar float conversions exactly as ggml performs them (f16 <-> f32, bf16 <-> f32).
//!
//! Invariants: every function here is bit-exact with ggml's portable C conversions
//! (`ggml_compute_fp32_to_fp16`, `ggml_compute_fp16_to_fp32`, `ggml_compute_fp32_to_bf16`),
//! including NaN handling, so quantized bytes match llama.cpp's byte for byte. The f16 encoder
//! uses the "scale to infinity and back" trick of the FP16 library by Maratyszcza that ggml
//! also uses: round-to-nearest-even, overflow to infinity, and every NaN becomes the quiet NaN
//! 0x7E00 with the input's sign (the `half` crate keeps payload bits instead, so we do not use
//! it for encoding).

/// f16 bits -> f32 (exact; every f16 is representable in f32).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    // Normal numbers: move exponent/mantissa into f32 position, rebias by 2^-112.
    let normalized = f32::from_bits((two_w >> 4) + (0xE0 << 23)) * f32::from_bits(0x0780_0000);
    // Subnormals: build 0.5 + m * 2^-24 and subtract 0.5.
    let denormalized = f32::from_bits((two_w >> 17) | (126 << 23)) - 0.5;
    let bits = if two_w < (1 << 27) { denormalized.to_bits() } else { normalized.to_bits() };
    f32::from_bits(sign | bits)
}

/// f32 -> f16 bits, round to nearest even.
#[inline]
pub fn f32_to_f16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);
    // Adding a power of two just above the value makes the FPU do the mantissa rounding.
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x7C00;
    let mantissa_bits = bits & 0x0FFF;
    let nonsign = exp_bits + mantissa_bits;
    let out = if shl1_w > 0xFF00_0000 { 0x7E00 } else { nonsign };
    ((sign >> 16) | out) as u16
}

/// bf16 bits -> f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 -> bf16 bits, round to nearest even; NaNs are truncated and forced quiet.
#[inline]
pub fn f32_to_bf16(f: f32) -> u16 {
    let i = f.to_bits();
    if (i & 0x7fff_ffff) > 0x7f80_0000 {
        return ((i >> 16) | 64) as u16;
    }
    (i.wrapping_add(0x7fff + ((i >> 16) & 1)) >> 16) as u16
}

/// OCP E4M3FN bits (PyTorch `float8_e4m3fn`: bias 7, subnormals, no infinities, S.1111.111 is
/// NaN, max 448) -> f32, exact, through a 256-entry table built at compile time.
pub fn e4m3_to_f32(b: u8) -> f32 {
    E4M3_LUT[b as usize]
}

const fn e4m3_decode(b: u8) -> f32 {
    let e = ((b >> 3) & 0xF) as i32;
    let m = (b & 7) as f32;
    let v = if e == 0 && m == 0.0 {
        0.0
    } else if e == 15 && b & 7 == 7 {
        f32::NAN
    } else if e == 0 {
        m / 512.0
    } else {
        // (1 + m/8) * 2^(e-7), built from the f32 exponent field (e - 7 + 127 in 121..=135).
        (1.0 + m / 8.0) * f32::from_bits(((e + 120) as u32) << 23)
    };
    if b & 0x80 != 0 {
        -v
    } else {
        v
    }
}

static E4M3_LUT: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = e4m3_decode(i as u8);
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f16 bit pattern round-trips through f32 (NaNs stay NaN), and the decoder agrees
    /// with the `half` crate (an independent implementation) on every non-NaN value.
    #[test]
    fn f16_all_patterns_round_trip_and_match_half() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            let r = half::f16::from_bits(h).to_f32();
            if r.is_nan() {
                assert!(f.is_nan(), "{h:#06x}");
                assert!(f32_to_f16(f) & 0x7fff == 0x7e00, "NaN is quieted to 0x7e00");
            } else {
                assert_eq!(f.to_bits(), r.to_bits(), "{h:#06x}");
                assert_eq!(f32_to_f16(f), h, "{h:#06x}");
            }
        }
    }

    /// Encoding agrees with `half` (round-to-nearest-even) on a sweep of non-NaN f32 values,
    /// including ties, subnormals and overflow.
    #[test]
    fn f16_encode_matches_half_on_sweep() {
        let mut x: u32 = 1;
        for _ in 0..2_000_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let f = f32::from_bits(x);
            if f.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16(f), half::f16::from_f32(f).to_bits(), "{f:e}");
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0); // signalling NaN quieted
        for h in [0u16, 0x3f80, 0xc2f7, 0x7f80, 0x0001] {
            assert_eq!(f32_to_bf16(bf16_to_f32(h)), h);
        }
    }
}
