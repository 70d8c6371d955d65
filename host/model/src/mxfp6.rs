//! MXFP6 weights of Hugging Face checkpoints (OCP Microscaling Formats v1.0: FP6 E2M3 or E3M2
//! elements in blocks of 32 along the input dimension, one E8M0 scale per block), dequantized to
//! f32 at load like `crate::fp8` (MXFP6 has no GGML type, so the CPU matmul sees f32).
//!
//! Elements (OCP MX v1.0 section 5.3.2; no infinities, no NaN, subnormals at exponent 0):
//!
//! ```text
//!   E2M3  s.ee.mmm  bias 1  normal (-1)^s 2^(e-1) (1 + m/8)   subnormal (-1)^s m/8    max 7.5
//!   E3M2  s.eee.mm  bias 3  normal (-1)^s 2^(e-3) (1 + m/4)   subnormal (-1)^s m/16   max 28
//!   E8M0  scale 2^(x - 127), x = 0..254; x = 255 is NaN (section 5.4.1)
//! ```
//!
//! Packing (AMD Quark's `Pack_fp6` / `Pack_mxfp6` in `quark/torch/utils/pack.py`, amd-quark
//! 0.10, which vLLM's `QuarkOCP_MX` scheme loads through `dequant_mxfp6`; the layout the MI355
//! `mfma_scale_f32_*_f8f6f4` instructions read, and rocRoller's `getFp6`): each run of 4 codes
//! v0..v3 along a row is the 24-bit word `v0 | v1 << 6 | v2 << 12 | v3 << 18` stored
//! little-endian in 3 bytes, so a row of `n` elements takes `3n/4` bytes and a 32-block 24.
//! (amd-quark 0.9 and older wrote a different, plane-split layout; those files are not read.)
//!
//! How a checkpoint says so (Quark's Hugging Face export, as vLLM's `QuarkOCP_MX` reads it):
//!
//! ```text
//!   config.json quantization_config: quant_method "quark",
//!     global_quant_config.weight.dtype "fp6_e2m3" | "fp6_e3m2" (group_size 32, scale_format e8m0),
//!     layer_quant_config {"<glob on the module name>": {weight: {dtype ...}}} overriding it
//!   X.weight        U8 [out, in * 3 / 4]   packed codes
//!   X.weight_scale  U8 [out, in / 32]      E8M0 exponents
//! ```
//!
//! At open (`HfModelDir::open`) such a `U8` weight is re-described as dtype `F6_E2M3` /
//! `F6_E3M2` with its logical shape `[out, in]` (the same bytes: 6 bits per element), so every
//! user of the tensor table sees the real shape; the safetensors dtypes `F6_E2M3` / `F6_E3M2`
//! (safetensors >= 0.6) are taken in the same packing with the same `_scale` companion (U8 or
//! `F8_E8M0`). Rank > 2 folds the outer dimensions into rows, as in `crate::fp8`.
//!
//! Numerics: an FP6 value has at most 4 significant bits and the scale is a power of two, so
//! `value * scale` in f32 is exact (the smallest product, 2^-4 * 2^-127, is an f32 subnormal
//! multiple of 2^-149) except where it overflows f32 (28 * 2^127), which is infinity as the
//! f64 product cast to f32 is. A NaN scale (0xFF) makes its 32 values NaN, as the spec says.

use serde_json::Value;

use crate::fp8::rows_cols;
use crate::hf::{HfDtype, HfModelDir, HfTensor};
use crate::ModelError;

/// Elements per shared scale (OCP MX v1.0: k = 32).
pub const MX_BLOCK: usize = 32;

/// The FP6 element encoding of an MXFP6 tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp6Format {
    E2M3,
    E3M2,
}

impl Fp6Format {
    /// The safetensors dtype string (`F6_E2M3` / `F6_E3M2`).
    pub fn dtype_name(self) -> &'static str {
        match self {
            Fp6Format::E2M3 => "F6_E2M3",
            Fp6Format::E3M2 => "F6_E3M2",
        }
    }

    /// The format of a safetensors dtype, if it is FP6.
    pub fn from_dtype(d: &HfDtype) -> Option<Fp6Format> {
        match d.name() {
            "F6_E2M3" => Some(Fp6Format::E2M3),
            "F6_E3M2" => Some(Fp6Format::E3M2),
            _ => None,
        }
    }

    /// The format of a Quark `weight.dtype` string (`fp6_e2m3`, `fp6_e3m2`).
    pub fn from_quark(s: &str) -> Option<Fp6Format> {
        match s {
            "fp6_e2m3" => Some(Fp6Format::E2M3),
            "fp6_e3m2" => Some(Fp6Format::E3M2),
            _ => None,
        }
    }

    /// The value of a 6-bit code (the upper two bits of `code` are ignored).
    pub fn decode(self, code: u8) -> f32 {
        match self {
            Fp6Format::E2M3 => e2m3_to_f32(code),
            Fp6Format::E3M2 => e3m2_to_f32(code),
        }
    }
}

/// OCP FP6 E2M3: sign, 2 exponent bits (bias 1), 3 mantissa bits; max 7.5, no inf / NaN.
pub fn e2m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x20 != 0 { -1.0f32 } else { 1.0 };
    let e = ((code >> 3) & 3) as i32;
    let m = (code & 7) as f32;
    // Small integers times powers of two: exact in f32.
    let mag = if e == 0 { m * 0.125 } else { (8.0 + m) * (2.0f32).powi(e - 4) };
    sign * mag
}

/// OCP FP6 E3M2: sign, 3 exponent bits (bias 3), 2 mantissa bits; max 28, no inf / NaN.
pub fn e3m2_to_f32(code: u8) -> f32 {
    let sign = if code & 0x20 != 0 { -1.0f32 } else { 1.0 };
    let e = ((code >> 2) & 7) as i32;
    let m = (code & 3) as f32;
    let mag = if e == 0 { m * 0.0625 } else { (4.0 + m) * (2.0f32).powi(e - 5) };
    sign * mag
}

/// OCP E8M0 scale: 2^(x - 127), exact in f32 (2^-127 is a subnormal); 0xFF is NaN.
pub fn e8m0_to_f32(x: u8) -> f32 {
    match x {
        0xFF => f32::NAN,
        0 => f32::from_bits(0x0040_0000),
        _ => f32::from_bits((x as u32) << 23),
    }
}

/// Four 6-bit codes from 3 packed bytes (see the module header).
#[inline]
pub fn unpack4(b: [u8; 3]) -> [u8; 4] {
    let w = u32::from_le_bytes([b[0], b[1], b[2], 0]);
    [(w & 63) as u8, ((w >> 6) & 63) as u8, ((w >> 12) & 63) as u8, ((w >> 18) & 63) as u8]
}

/// Four 6-bit codes (upper bits ignored) packed into 3 bytes, the inverse of `unpack4`.
#[inline]
pub fn pack4(v: [u8; 4]) -> [u8; 3] {
    let w = (v[0] as u32 & 63) | (v[1] as u32 & 63) << 6 | (v[2] as u32 & 63) << 12 | (v[3] as u32 & 63) << 18;
    let b = w.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// Dequantize `rows` x `cols` MXFP6 values: `packed` holds `rows * cols * 3 / 4` bytes (row
/// after row), `scales` the `rows * cols / 32` E8M0 exponents. `cols` must be a multiple of 32.
/// The error says what does not fit.
pub fn dequantize_rows(fmt: Fp6Format, packed: &[u8], scales: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>, String> {
    if !cols.is_multiple_of(MX_BLOCK) {
        return Err(format!("MXFP6 needs the input dimension to be a multiple of {MX_BLOCK}, it is {cols}"));
    }
    let n = rows.checked_mul(cols).ok_or("element count overflows")?;
    if packed.len() != n / 4 * 3 {
        return Err(format!("{} packed bytes for {rows} x {cols} FP6 values, need {}", packed.len(), n / 4 * 3));
    }
    if scales.len() != n / MX_BLOCK {
        return Err(format!("{} E8M0 scales for {rows} x {cols} values in blocks of {MX_BLOCK}, need {}", scales.len(), n / MX_BLOCK));
    }
    let mut lut = [0f32; 64];
    for (c, v) in lut.iter_mut().enumerate() {
        *v = fmt.decode(c as u8);
    }
    let mut out = Vec::with_capacity(n);
    // One block: 24 bytes -> 32 values, times its scale.
    for (blk, &s) in packed.chunks_exact(MX_BLOCK / 4 * 3).zip(scales) {
        let s = e8m0_to_f32(s);
        for b in blk.chunks_exact(3) {
            let q = unpack4([b[0], b[1], b[2]]);
            out.extend(q.iter().map(|&c| lut[c as usize] * s));
        }
    }
    Ok(out)
}

/// Shell-style glob with `*` only (Quark's `layer_quant_config` keys are fnmatch patterns).
fn glob(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((head, rest)) => {
            let Some(mut s) = s.strip_prefix(head) else { return false };
            loop {
                if glob(rest, s) {
                    return true;
                }
                let mut ch = s.chars();
                if ch.next().is_none() {
                    return false;
                }
                s = ch.as_str();
            }
        }
    }
}

/// The FP6 element format Quark's `quantization_config` gives the weight `name`
/// (`<module>.weight`), if any: a matching `layer_quant_config` pattern, else the global one.
pub fn quark_weight_format(config: &Value, name: &str) -> Option<Fp6Format> {
    let q = config.get("quantization_config")?;
    if q.get("quant_method").and_then(Value::as_str) != Some("quark") {
        return None;
    }
    let module = name.strip_suffix(".weight").unwrap_or(name);
    let dtype_of = |c: &Value| c.get("weight")?.get("dtype")?.as_str().map(str::to_string);
    let layer = q
        .get("layer_quant_config")
        .and_then(Value::as_object)
        .and_then(|m| m.iter().find(|(pat, _)| glob(pat, module) || glob(pat, name)).map(|(_, c)| c));
    let dtype = match layer {
        Some(c) => dtype_of(c)?,
        None => dtype_of(q.get("global_quant_config")?)?,
    };
    Fp6Format::from_quark(&dtype)
}

/// For a tensor of a Quark checkpoint stored as packed `U8` with a `<name>_scale` companion
/// and an FP6 weight dtype in config.json: its FP6 dtype and logical shape (last dimension
/// * 4 / 3), or the error naming why the packed shape does not fit. `None`: not MXFP6.
pub(crate) fn quark_packed(config: &Value, t: &HfTensor, has_scale: bool) -> Option<Result<(HfDtype, Vec<u64>), String>> {
    if t.dtype != HfDtype::U8 || !has_scale {
        return None;
    }
    let fmt = quark_weight_format(config, &t.name)?;
    let Some((&last, _)) = t.shape.split_last() else {
        return Some(Err(format!("packed MXFP6 ({}) weight is a scalar", fmt.dtype_name())));
    };
    if !last.is_multiple_of(24) {
        return Some(Err(format!(
            "packed MXFP6 ({}) weight has {last} bytes per row (shape {:?}); 4 FP6 values take 3 bytes and a block of 32 takes 24, so it must be a multiple of 24",
            fmt.dtype_name(),
            t.shape
        )));
    }
    let mut shape = t.shape.clone();
    *shape.last_mut().unwrap() = last / 3 * 4;
    Some(Ok((HfDtype::Other(fmt.dtype_name().to_string()), shape)))
}

/// Dequantize the FP6 tensor `t` (raw packed bytes `bytes`) of `dir` with its `<name>_scale`.
pub(crate) fn dequantize(dir: &HfModelDir, t: &HfTensor, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    let bad = |what: String| ModelError::BadTensor { path: dir.path().to_path_buf(), tensor: t.name.clone(), what };
    let Some(fmt) = Fp6Format::from_dtype(&t.dtype) else {
        return Err(bad(format!("dtype {} is not FP6", t.dtype)));
    };
    let scale_name = format!("{}_scale", t.name);
    let Some(st) = dir.tensor(&scale_name) else {
        return Err(bad(format!("MXFP6 ({}) weight has no E8M0 scale tensor '{scale_name}'", fmt.dtype_name())));
    };
    if !matches!(st.dtype.name(), "U8" | "F8_E8M0") {
        return Err(bad(format!("scale '{scale_name}' has dtype {}; MXFP6 scales are E8M0 bytes (U8 or F8_E8M0)", st.dtype)));
    }
    let (r, c) = rows_cols(&t.shape);
    let want_scale: Vec<u64> = match t.shape.split_last() {
        Some((&last, outer)) => outer.iter().copied().chain([last / MX_BLOCK as u64]).collect(),
        None => vec![],
    };
    if !c.is_multiple_of(MX_BLOCK as u64) || st.shape != want_scale {
        return Err(bad(format!(
            "MXFP6 ({}) weight of shape {:?} needs a scale of shape {want_scale:?} (one E8M0 per {MX_BLOCK} inputs, input dimension a multiple of {MX_BLOCK}), '{scale_name}' has {:?}",
            fmt.dtype_name(),
            t.shape,
            st.shape
        )));
    }
    let scales = dir.tensor_bytes(&scale_name)?;
    dequantize_rows(fmt, bytes, scales, r as usize, c as usize).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's definition, in f64, from the bit fields: (-1)^S 2^(E - bias) (1 + M / 2^m),
    /// or (-1)^S 2^(1 - bias) (M / 2^m) at E = 0.
    fn fp6_ref(code: u8, ebits: u32, mbits: u32) -> f64 {
        let bias = (1i32 << (ebits - 1)) - 1;
        let s = if (code >> 5) & 1 == 1 { -1.0 } else { 1.0 };
        let e = ((code >> mbits) & ((1 << ebits) - 1) as u8) as i32;
        let m = (code & ((1 << mbits) - 1) as u8) as f64 / (1u32 << mbits) as f64;
        if e == 0 {
            s * 2f64.powi(1 - bias) * m
        } else {
            s * 2f64.powi(e - bias) * (1.0 + m)
        }
    }

    fn ref_of(fmt: Fp6Format, code: u8) -> f64 {
        match fmt {
            Fp6Format::E2M3 => fp6_ref(code, 2, 3),
            Fp6Format::E3M2 => fp6_ref(code, 3, 2),
        }
    }

    #[test]
    fn every_code_matches_the_spec() {
        for code in 0..64u8 {
            let (a, b) = (e2m3_to_f32(code), fp6_ref(code, 2, 3));
            assert_eq!(a as f64, b, "E2M3 code {code:#04x}");
            assert_eq!(a.is_sign_negative(), code & 0x20 != 0);
            let (a, b) = (e3m2_to_f32(code), fp6_ref(code, 3, 2));
            assert_eq!(a as f64, b, "E3M2 code {code:#04x}");
            assert_eq!(a.is_sign_negative(), code & 0x20 != 0);
        }
        // Landmarks of the spec's tables.
        assert_eq!(e2m3_to_f32(0x1F), 7.5);
        assert_eq!(e2m3_to_f32(0x3F), -7.5);
        assert_eq!(e2m3_to_f32(0x08), 1.0); // min normal 2^0
        assert_eq!(e2m3_to_f32(0x01), 0.125); // min subnormal 2^-3
        assert_eq!(e2m3_to_f32(0x07), 0.875); // max subnormal
        assert_eq!(e3m2_to_f32(0x1F), 28.0);
        assert_eq!(e3m2_to_f32(0x3F), -28.0);
        assert_eq!(e3m2_to_f32(0x04), 0.25); // min normal 2^-2
        assert_eq!(e3m2_to_f32(0x01), 0.0625); // min subnormal 2^-4
        assert_eq!(e3m2_to_f32(0x03), 0.1875); // max subnormal
        assert_eq!(e2m3_to_f32(0x20).to_bits(), (-0.0f32).to_bits());
        assert!((0..64).all(|c| e2m3_to_f32(c).is_finite() && e3m2_to_f32(c).is_finite()));
    }

    #[test]
    fn every_e8m0_matches_the_spec() {
        for x in 0..=255u8 {
            let v = e8m0_to_f32(x);
            if x == 255 {
                assert!(v.is_nan());
            } else {
                assert_eq!(v as f64, 2f64.powi(x as i32 - 127), "E8M0 {x}");
            }
        }
    }

    #[test]
    fn pack_unpack_round_trip_and_bit_order() {
        // Little-endian bit order: v0 in the low 6 bits of byte 0 (Quark / rocRoller).
        assert_eq!(pack4([0x3F, 0, 0, 0]), [0x3F, 0, 0]);
        assert_eq!(pack4([0, 0x3F, 0, 0]), [0xC0, 0x0F, 0]);
        assert_eq!(pack4([0, 0, 0x3F, 0]), [0, 0xF0, 0x03]);
        assert_eq!(pack4([0, 0, 0, 0x3F]), [0, 0, 0xFC]);
        for pos in 0..4 {
            for c in 0..64u8 {
                let mut v = [(pos as u8 * 13) & 63, 21, 42, 7];
                v[pos] = c;
                assert_eq!(unpack4(pack4(v)), v);
            }
        }
        for b in 0..=255u8 {
            let x = [b, b.wrapping_mul(7), b ^ 0x5A];
            assert_eq!(pack4(unpack4(x)), x);
        }
    }

    /// Pack `codes` (rows x cols) the way Quark does.
    fn pack(codes: &[u8]) -> Vec<u8> {
        codes.chunks_exact(4).flat_map(|q| pack4([q[0], q[1], q[2], q[3]])).collect()
    }

    #[test]
    fn packed_blocks_dequantize_exactly() {
        for fmt in [Fp6Format::E2M3, Fp6Format::E3M2] {
            // 2 rows x 64: every code twice in each row, scales from tiny to huge, and NaN.
            let (rows, cols) = (2usize, 64usize);
            let codes: Vec<u8> = (0..rows * cols).map(|i| ((i * 37 + i / 64) % 64) as u8).collect();
            let scales = [0u8, 127, 130, 255];
            let out = dequantize_rows(fmt, &pack(&codes), &scales, rows, cols).unwrap();
            assert_eq!(out.len(), rows * cols);
            for (i, &v) in out.iter().enumerate() {
                let x = scales[i / 32];
                if x == 255 {
                    assert!(v.is_nan());
                    continue;
                }
                let want = ref_of(fmt, codes[i]) * 2f64.powi(x as i32 - 127);
                assert_eq!(v, want as f32, "{fmt:?} element {i}");
                assert_eq!(v as f64, want, "{fmt:?} element {i} is exact");
            }
            // Overflow of the f32 product is infinity, as the f64 product cast to f32.
            let big = dequantize_rows(fmt, &pack(&[0x1F; 32]), &[254], 1, 32).unwrap();
            let want = ref_of(fmt, 0x1F) * 2f64.powi(127);
            assert!(big.iter().all(|&v| v == want as f32));
        }
    }

    #[test]
    fn tiny_matmul_matches_f64() {
        // y = W x with W 5 x 96 MXFP6 (both formats), x fixed; f32 accumulation vs f64.
        let (rows, cols) = (5usize, 96usize);
        let codes: Vec<u8> = (0..rows * cols).map(|i| ((i * 29 + 11) % 64) as u8).collect();
        let scales: Vec<u8> = (0..rows * cols / 32).map(|i| 120 + (i % 9) as u8).collect();
        let x: Vec<f32> = (0..cols).map(|j| ((j as f32) * 0.37).sin()).collect();
        for fmt in [Fp6Format::E2M3, Fp6Format::E3M2] {
            let w = dequantize_rows(fmt, &pack(&codes), &scales, rows, cols).unwrap();
            for r in 0..rows {
                let y: f32 = (0..cols).map(|c| w[r * cols + c] * x[c]).sum();
                let (mut want, mut abs) = (0f64, 0f64);
                for c in 0..cols {
                    let wv = ref_of(fmt, codes[r * cols + c]) * 2f64.powi(scales[(r * cols + c) / 32] as i32 - 127);
                    want += wv * x[c] as f64;
                    abs += (wv * x[c] as f64).abs();
                }
                // f32 summation of 96 exact products: error <= n * eps * sum |terms|.
                let tol = cols as f64 * f32::EPSILON as f64 * abs;
                assert!((y as f64 - want).abs() <= tol, "{fmt:?} row {r}: {y} vs {want} (tol {tol})");
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let e = dequantize_rows(Fp6Format::E2M3, &[0; 12], &[127], 1, 16).unwrap_err();
        assert!(e.contains("multiple of 32"), "{e}");
        let e = dequantize_rows(Fp6Format::E2M3, &[0; 23], &[127], 1, 32).unwrap_err();
        assert!(e.contains("packed bytes"), "{e}");
        let e = dequantize_rows(Fp6Format::E2M3, &[0; 24], &[127, 127], 1, 32).unwrap_err();
        assert!(e.contains("E8M0 scales"), "{e}");
    }

    #[test]
    fn quark_config_is_read() {
        let cfg: Value = serde_json::json!({"quantization_config": {
            "quant_method": "quark",
            "global_quant_config": {"weight": {"dtype": "fp6_e3m2", "group_size": 32}},
            "layer_quant_config": {"*down_proj": {"weight": {"dtype": "fp6_e2m3"}}, "*lm_head": {"weight": {"dtype": "fp4"}}},
        }});
        assert_eq!(quark_weight_format(&cfg, "model.layers.0.mlp.up_proj.weight"), Some(Fp6Format::E3M2));
        assert_eq!(quark_weight_format(&cfg, "model.layers.0.mlp.down_proj.weight"), Some(Fp6Format::E2M3));
        assert_eq!(quark_weight_format(&cfg, "lm_head.weight"), None);
        assert_eq!(quark_weight_format(&serde_json::json!({}), "a.weight"), None);
        assert!(glob("model.*.mlp.*", "model.layers.3.mlp.gate_proj"));
        assert!(!glob("*down_proj", "model.down_proj.x"));
    }
}
