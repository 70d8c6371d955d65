//! FP8 weights of Hugging Face checkpoints (safetensors dtypes `F8_E4M3` and `F8_E5M2`),
//! dequantized to f32 at load with the scales the checkpoint stores next to them.
//!
//! Scale conventions (looked up by name next to the FP8 tensor `X`; both multiply):
//!
//! ```text
//!   X_scale      compressed-tensors / llm-compressor (`X.weight_scale`):
//!                  []  or [1]          per tensor
//!                  [out] or [out, 1]   per output channel
//!                  [out, in / g]       per group of g input columns
//!                  [ceil(out/bo), ceil(in/bi)]  per block (strategy "block")
//!   X_scale_inv  transformers' fine-grained FP8 and DeepSeek-V3 (`X.weight_scale_inv`):
//!                  [ceil(out/bo), ceil(in/bi)]  per block, bo x bi from config.json
//!                  `quantization_config.weight_block_size` (in practice 128 x 128)
//!   neither      a plain cast: scale 1
//! ```
//!
//! "inv" is the inverse of the quantizer's scale (`fp8 = w * 448 / amax`), so it is the
//! dequantization multiplier, as in transformers' and DeepSeek's `weight_dequant`. A weight of
//! rank > 2 is read as rows x columns with all outer dimensions folded into the rows (stacked
//! experts), the scale likewise (for blocks, each expert's rows must then be a whole number of
//! blocks, as 128-multiples in every checkpoint seen). The layout is read off the shapes, first match wins: one
//! scale is per tensor; scale rows == weight rows is per channel / group (columns per scale =
//! in / scale columns, exact); then the block size config.json names (`weight_block_size`, or
//! compressed-tensors' `config_groups.*.weights.block_structure`), then 128 x 128 (ragged edges
//! allowed), then blocks that divide both dimensions evenly. Anything else is a `BadTensor` error naming both shapes.
//!
//! Numerics: an E4M3 value has 4 significant bits and the scale (f32, or BF16/F16 widened) 24,
//! so `value * scale` in f32 is the f64 product rounded once: dequantization is exact up to
//! that single rounding (tests/fp8_safetensors.rs checks it bit for bit against a float64
//! reference and against PyTorch's `float8_e4m3fn`). E4M3 is the OCP "FN" variant: no
//! infinities, S.1111.111 is NaN, max 448; E5M2 is IEEE-like (the top byte of an f16).

use serde_json::Value;

use crate::hf::{HfDtype, HfModelDir, HfTensor};
use crate::ModelError;

/// OCP E4M3FN (PyTorch `float8_e4m3fn`): bias 7, subnormals, NaN at exponent 15 mantissa 7
/// (the table decoder of `rocmforge_quant::fp`, also used by the FP8 KV cache).
pub use rocmforge_quant::fp::e4m3_to_f32 as e4m3fn_to_f32;

/// OCP E5M2 (PyTorch `float8_e5m2`): the high byte of an IEEE f16.
pub fn e5m2_to_f32(b: u8) -> f32 {
    half::f16::from_bits((b as u16) << 8).to_f32()
}

/// Rows x columns of a tensor shape with the outer dimensions folded into the rows
/// (a 1-D tensor is one row; a scalar is 1 x 1). Shared by the other block-scaled HF formats.
pub(crate) fn rows_cols(shape: &[u64]) -> (u64, u64) {
    match shape {
        [] => (1, 1),
        [c] => (1, *c),
        [outer @ .., c] => (outer.iter().product(), *c),
    }
}

/// The block size a config.json declares for FP8 weights, if any.
fn config_block(config: &Value) -> Option<(u64, u64)> {
    let q = config.get("quantization_config")?;
    let pair = |v: &Value| -> Option<(u64, u64)> {
        let a = v.as_array()?;
        match a.as_slice() {
            [r, c] => Some((r.as_u64()?, c.as_u64()?)),
            _ => None,
        }
    };
    if let Some(b) = q.get("weight_block_size").and_then(pair) {
        return Some(b);
    }
    q.get("config_groups")?.as_object()?.values().find_map(|g| g.get("weights")?.get("block_structure").and_then(pair))
}

/// Map every weight element (r, c) to its scale: rows per scale row, columns per scale column.
/// `None` if the shapes fit no convention of the module header.
fn scale_blocks(w: (u64, u64), s_shape: &[u64], block: Option<(u64, u64)>) -> Option<(u64, u64)> {
    let (r, c) = w;
    let n_s: u64 = s_shape.iter().product();
    if n_s == 1 {
        return Some((r.max(1), c.max(1)));
    }
    // A 1-D scale of `rows` entries is per channel ([out] as some writers squeeze it).
    let (sr, sc) = if s_shape.len() == 1 { (s_shape[0], 1) } else { rows_cols(s_shape) };
    if sr == 0 || sc == 0 {
        return None;
    }
    let fits = |bo: u64, bi: u64| bo > 0 && bi > 0 && r.div_ceil(bo) == sr && c.div_ceil(bi) == sc;
    if sr == r && c % sc == 0 {
        return Some((1, c / sc));
    }
    if let Some((bo, bi)) = block.filter(|&(bo, bi)| fits(bo, bi)) {
        return Some((bo, bi));
    }
    // 128 x 128 (every FP8 block checkpoint in practice) before an even split, which would
    // misread a ragged 128-block grid (130 x 136 in 2 x 2 blocks is not 65 x 68).
    if fits(128, 128) {
        return Some((128, 128));
    }
    (r % sr == 0 && c % sc == 0).then_some((r / sr, c / sc))
}

/// Dequantize the FP8 tensor `t` (raw bytes `bytes`) of `dir` with its scale tensor, if any.
pub(crate) fn dequantize(dir: &HfModelDir, t: &HfTensor, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    let bad = |what: String| ModelError::BadTensor { path: dir.path().to_path_buf(), tensor: t.name.clone(), what };
    let decode: fn(u8) -> f32 = match t.dtype {
        HfDtype::F8E4M3 => e4m3fn_to_f32,
        HfDtype::F8E5M2 => e5m2_to_f32,
        _ => return Err(bad(format!("dtype {} is not FP8", t.dtype))),
    };
    let direct = format!("{}_scale", t.name);
    let inv = format!("{}_scale_inv", t.name);
    let scale_name = match (dir.tensor(&direct), dir.tensor(&inv)) {
        (Some(_), Some(_)) => return Err(bad(format!("has both '{direct}' and '{inv}'; which one scales it is ambiguous"))),
        (Some(_), None) => Some(direct),
        (None, Some(_)) => Some(inv),
        (None, None) => None,
    };
    let Some(scale_name) = scale_name else {
        return Ok(bytes.iter().map(|&b| decode(b)).collect());
    };
    let s_shape = dir.tensor(&scale_name).map(|s| s.shape.clone()).unwrap_or_default();
    let scales = dir.tensor_f32(&scale_name)?;
    let (r, c) = rows_cols(&t.shape);
    let Some((bo, bi)) = scale_blocks((r, c), &s_shape, config_block(dir.config())) else {
        return Err(bad(format!(
            "scale '{scale_name}' has shape {s_shape:?}, which fits no per-tensor, per-channel, group or block layout of the weight's {:?}{}",
            t.shape,
            config_block(dir.config()).map(|b| format!(" (config.json block size {b:?})")).unwrap_or_default()
        )));
    };
    if r == 0 || c == 0 {
        return Ok(Vec::new());
    }
    let s_cols = c.div_ceil(bi) as usize;
    if scales.len() as u64 != r.div_ceil(bo) * c.div_ceil(bi) {
        return Err(bad(format!("scale '{scale_name}' has {} values for a {r} x {c} weight in {bo} x {bi} blocks", scales.len())));
    }
    let (bo, bi) = (bo as usize, bi as usize);
    let mut out = Vec::with_capacity(bytes.len());
    // `bytes.len() == r * c` was checked by the safetensors header parser (8 bits per element).
    for (i, row) in bytes.chunks_exact(c.max(1) as usize).enumerate() {
        let srow = &scales[(i / bo) * s_cols..(i / bo + 1) * s_cols];
        out.extend(row.iter().enumerate().map(|(j, &b)| decode(b) * srow[j / bi]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3fn_landmarks() {
        assert_eq!(e4m3fn_to_f32(0x00), 0.0);
        assert_eq!(e4m3fn_to_f32(0x80).to_bits(), (-0.0f32).to_bits());
        assert_eq!(e4m3fn_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(e4m3fn_to_f32(0x08), 2f32.powi(-6)); // smallest normal
        assert_eq!(e4m3fn_to_f32(0x38), 1.0);
        assert_eq!(e4m3fn_to_f32(0x7E), 448.0);
        assert_eq!(e4m3fn_to_f32(0xFE), -448.0);
        assert!(e4m3fn_to_f32(0x7F).is_nan() && e4m3fn_to_f32(0xFF).is_nan());
        assert_eq!(e5m2_to_f32(0x3C), 1.0);
        assert_eq!(e5m2_to_f32(0x7B), 57344.0);
        assert!(e5m2_to_f32(0x7C).is_infinite());
    }

    #[test]
    fn scale_layouts_are_recognised() {
        assert_eq!(scale_blocks((6, 40), &[], None), Some((6, 40)));
        assert_eq!(scale_blocks((6, 40), &[1], None), Some((6, 40)));
        assert_eq!(scale_blocks((6, 40), &[6, 1], None), Some((1, 40)));
        assert_eq!(scale_blocks((6, 40), &[6], None), Some((1, 40)));
        assert_eq!(scale_blocks((6, 64), &[6, 4], None), Some((1, 16)));
        assert_eq!(scale_blocks((256, 256), &[2, 2], None), Some((128, 128)));
        assert_eq!(scale_blocks((130, 136), &[2, 2], None), Some((128, 128)));
        assert_eq!(scale_blocks((130, 136), &[2, 2], Some((128, 128))), Some((128, 128)));
        assert_eq!(scale_blocks((130, 136), &[3, 2], Some((128, 128))), None);
        assert_eq!(scale_blocks((6, 40), &[6, 1], Some((128, 128))), Some((1, 40)));
        assert_eq!(scale_blocks((256, 256), &[4, 4], Some((64, 64))), Some((64, 64)));
        assert_eq!(scale_blocks((6, 64), &[3, 4], None), Some((2, 16)));
        assert_eq!(scale_blocks((6, 40), &[5, 1], None), None);
        assert_eq!(scale_blocks((6, 40), &[0, 1], None), None);
    }
}
