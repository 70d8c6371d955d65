//! FP8 safetensors weights with every scale layout (`crate::fp8`), against PyTorch and float64.
//!
//! Fixture: `tests/fixtures/fp8-tiny/`, written by
//! `/work/venv-kv/bin/python scripts/fixtures/fp8_safetensors.py` (torch 2.11 `float8_e4m3fn`):
//! per-tensor (`[]`, `[1]`), per-channel (BF16 `[out, 1]`, llm-compressor), groups of 16,
//! 128 x 128 blocks with ragged edges (`weight_scale_inv`, transformers / DeepSeek-V3), stacked
//! experts, unscaled E4M3 and E5M2, and all 256 E4M3 codes.
//!
//! - `tensor_f32` equals torch's dequantization (`fp8.double() * scale.double()`, rounded to f32)
//!   bit for bit, and equals a float64 reference computed here from the raw bytes with an
//!   independent decoder (sign, exponent and mantissa fields, `2^(e - 7) * (1 + m / 8)`) and the
//!   layout written out per tensor: FP8 dequantization is exact up to the one f32 rounding.
//! - the error of FP8 itself against the f32 weights before quantization is printed and bounded
//!   (relative L2 <= 0.04 for E4M3; measured 0.023 to 0.034).
//! - a scale that fits no layout is a `BadTensor` error naming both shapes.

use std::path::PathBuf;

use rocmforge_model::hf::{parse_safetensors_header, HfModelDir};
use rocmforge_model::ModelError;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fp8-tiny")
}

/// Tensors of `expected.safetensors` (all F32) by name.
fn expected() -> Vec<(String, Vec<f32>)> {
    let p = fixture().join("expected.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let h = parse_safetensors_header(&p, &bytes).unwrap();
    h.tensors
        .into_iter()
        .map(|(t, r)| {
            let v = bytes[r.start as usize..r.end as usize].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (t.name, v)
        })
        .collect()
}

/// E4M3FN from its bit fields, in f64.
fn e4m3_f64(b: u8) -> f64 {
    let s = if b >> 7 == 1 { -1.0 } else { 1.0 };
    let (e, m) = (((b >> 3) & 15) as i32, (b & 7) as f64);
    if e == 15 && m == 7.0 {
        return f64::NAN;
    }
    if e == 0 {
        s * m / 8.0 * 2f64.powi(-6)
    } else {
        s * (1.0 + m / 8.0) * 2f64.powi(e - 7)
    }
}

/// Scale of element (r, c) per tensor, written out from the generator's layouts.
fn ref_scale(name: &str, s: &[f32], r: usize, c: usize) -> f64 {
    (match name {
        "tensor.weight" | "tensor1.weight" => s[0],
        "channel.weight" => s[r],
        "group.weight" => s[r * 4 + c / 16],
        "block.weight" => s[(r / 128) * 2 + c / 128],
        "experts.weight" => s[r / 128],
        _ => 1.0,
    }) as f64
}

#[test]
fn fp8_weights_equal_torch_and_float64_reference() {
    let m = HfModelDir::open(fixture()).unwrap();
    let mut checked = 0;
    for (name, want) in expected() {
        if name.ends_with(".original") {
            continue;
        }
        let got = m.tensor_f32(&name).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{name}[{i}]: {g} vs torch {w}");
        }
        if name != "e5m2.weight" {
            let t = m.tensor(&name).unwrap();
            let cols = *t.shape.last().unwrap() as usize;
            let raw = m.tensor_bytes(&name).unwrap();
            let scale_name = ["_scale", "_scale_inv"].iter().map(|s| format!("{name}{s}")).find(|n| m.tensor(n).is_some());
            let s = scale_name.map(|n| m.tensor_f32(&n).unwrap()).unwrap_or_default();
            for (i, (&b, g)) in raw.iter().zip(&got).enumerate() {
                let r = (e4m3_f64(b) * ref_scale(&name, &s, i / cols, i % cols)) as f32;
                assert!(g.to_bits() == r.to_bits() || (g.is_nan() && r.is_nan()), "{name}[{i}]: {g} vs f64 reference {r}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 9);
}

#[test]
fn fp8_error_against_the_unquantized_weights() {
    let m = HfModelDir::open(fixture()).unwrap();
    let exp = expected();
    for (name, orig) in exp.iter().filter(|(n, _)| n.ends_with(".original")) {
        let w = name.replace(".original", ".weight");
        let got = m.tensor_f32(&w).unwrap();
        let num: f64 = got.iter().zip(orig).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
        let den: f64 = orig.iter().map(|&b| (b as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        // E4M3 keeps 3 mantissa bits (relative step 2^-3, RMS error ~2.6%); E5M2 keeps 2.
        let bound = if w == "e5m2.weight" { 0.08 } else { 0.04 };
        println!("{w:>16}: relative L2 error {rel:.4} (bound {bound})");
        assert!(rel <= bound, "{w}: {rel}");
    }
}

#[test]
fn fp8_scale_that_fits_no_layout_is_an_error() {
    let m = HfModelDir::open(fixture()).unwrap();
    match m.tensor_f32("bad.weight") {
        Err(ModelError::BadTensor { tensor, what, .. }) => {
            assert_eq!(tensor, "bad.weight");
            assert!(what.contains("[5, 1]") && what.contains("[6, 40]"), "{what}");
        }
        other => panic!("expected BadTensor, got {other:?}"),
    }
}
