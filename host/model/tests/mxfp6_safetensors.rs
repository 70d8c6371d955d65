//! MXFP6 safetensors weights (`crate::mxfp6`) read through `HfModelDir`, against float64.
//!
//! The model directories are written here: a Quark-style export (config.json
//! `quant_method: quark`, `U8 [out, in * 3 / 4]` packed weights with `U8 [out, in / 32]`
//! `weight_scale`, a `layer_quant_config` override to the other FP6 format, stacked experts, and a plain F32
//! tensor beside them) and a checkpoint in the native safetensors dtypes
//! (`F6_E3M2` with an `F8_E8M0` scale). The reference decodes each code from its fields with
//! the OCP formula in f64, independent of the crate's decoder and packing code.

use std::path::Path;

use rocmforge_model::hf::{HfDtype, HfModelDir};
use rocmforge_model::ModelError;

/// OCP FP6 in f64: (-1)^s 2^(e - bias) (1 + m / 2^mb), subnormal 2^(1 - bias) m / 2^mb.
fn fp6_f64(code: u8, e2m3: bool) -> f64 {
    let (eb, mb) = if e2m3 { (2, 3) } else { (3, 2) };
    let bias = (1 << (eb - 1)) - 1;
    let s = if code & 0x20 != 0 { -1.0 } else { 1.0 };
    let e = (code as i32 >> mb) & ((1 << eb) - 1);
    let m = (code as i32 & ((1 << mb) - 1)) as f64 / (1 << mb) as f64;
    if e == 0 {
        s * 2f64.powi(1 - bias) * m
    } else {
        s * 2f64.powi(e - bias) * (1.0 + m)
    }
}

/// Quark's packing, written bit by bit: code i of each 4-run at bits 6i..6i+6 of a
/// little-endian 24-bit word.
fn pack(codes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; codes.len() / 4 * 3];
    for (i, &c) in codes.iter().enumerate() {
        let base = (i / 4) * 24 + (i % 4) * 6;
        for b in 0..6 {
            if c >> b & 1 == 1 {
                let bit = base + b;
                out[bit / 8] |= 1 << (bit % 8);
            }
        }
    }
    out
}

/// A safetensors file of (name, dtype, shape, bytes).
fn safetensors(tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let begin = data.len();
        data.extend_from_slice(bytes);
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}));
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn write_dir(dir: &Path, config: serde_json::Value, tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) {
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    std::fs::write(dir.join("model.safetensors"), safetensors(tensors)).unwrap();
}

fn quark_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "quantization_config": {
            "quant_method": "quark",
            "global_quant_config": {"weight": {"dtype": "fp6_e3m2", "qscheme": "per_group", "group_size": 32, "scale_format": "e8m0"}},
            "layer_quant_config": {"*down_proj": {"weight": {"dtype": "fp6_e2m3", "qscheme": "per_group", "group_size": 32, "scale_format": "e8m0"}}},
            "exclude": ["lm_head"]
        }
    })
}

fn codes(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 37 + seed * 11 + i / 64) % 64) as u8).collect()
}

fn check(dir: &HfModelDir, name: &str, codes: &[u8], scales: &[u8], cols: usize, e2m3: bool) {
    let got = dir.tensor_f32(name).unwrap();
    assert_eq!(got.len(), codes.len());
    for (i, &v) in got.iter().enumerate() {
        let want = fp6_f64(codes[i], e2m3) * 2f64.powi(scales[i / 32] as i32 - 127);
        assert_eq!(v as f64, want, "{name}[{}, {}]", i / cols, i % cols);
    }
}

#[test]
fn quark_export_loads_with_logical_shapes() {
    let d = tempfile::tempdir().unwrap();
    let (out, inp) = (3usize, 64usize);
    let (up, down) = (codes(out * inp, 1), codes(out * inp, 2));
    let (s_up, s_down): (Vec<u8>, Vec<u8>) = ((0..6).map(|i| 124 + i).collect(), (0..6).map(|i| 131 - i).collect());
    // Stacked experts: [2, 3, 64] -> rows fold, scale [2, 3, 2].
    let ex = codes(2 * out * inp, 3);
    let s_ex: Vec<u8> = (0..12).map(|i| 120 + i).collect();
    let f32_bytes: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    write_dir(
        d.path(),
        quark_config(),
        &[
            ("model.layers.0.mlp.up_proj.weight", "U8", vec![out as u64, (inp * 3 / 4) as u64], pack(&up)),
            ("model.layers.0.mlp.up_proj.weight_scale", "U8", vec![out as u64, 2], s_up.clone()),
            ("model.layers.0.mlp.down_proj.weight", "U8", vec![out as u64, (inp * 3 / 4) as u64], pack(&down)),
            ("model.layers.0.mlp.down_proj.weight_scale", "U8", vec![out as u64, 2], s_down.clone()),
            ("model.layers.0.mlp.experts.weight", "U8", vec![2, out as u64, 48], pack(&ex)),
            ("model.layers.0.mlp.experts.weight_scale", "U8", vec![2, out as u64, 2], s_ex.clone()),
            ("model.norm.weight", "F32", vec![2], f32_bytes),
        ],
    );
    let dir = HfModelDir::open(d.path()).unwrap();
    let t = dir.tensor("model.layers.0.mlp.up_proj.weight").unwrap();
    assert_eq!((t.dtype.clone(), t.shape.clone()), (HfDtype::Other("F6_E3M2".into()), vec![3, 64]));
    let t = dir.tensor("model.layers.0.mlp.down_proj.weight").unwrap();
    assert_eq!((t.dtype.clone(), t.shape.clone()), (HfDtype::Other("F6_E2M3".into()), vec![3, 64]));
    assert_eq!(dir.tensor("model.layers.0.mlp.experts.weight").unwrap().shape, vec![2, 3, 64]);
    // The scale itself stays a U8 tensor.
    assert_eq!(dir.tensor("model.layers.0.mlp.up_proj.weight_scale").unwrap().dtype, HfDtype::U8);
    check(&dir, "model.layers.0.mlp.up_proj.weight", &up, &s_up, inp, false);
    check(&dir, "model.layers.0.mlp.down_proj.weight", &down, &s_down, inp, true);
    check(&dir, "model.layers.0.mlp.experts.weight", &ex, &s_ex, inp, false);
    assert_eq!(dir.tensor_f32("model.norm.weight").unwrap(), vec![1.5, -2.0]);

    // A tiny matmul on the loaded weight vs the f64 dequantize-then-matmul reference.
    let w = dir.tensor_f32("model.layers.0.mlp.down_proj.weight").unwrap();
    let x: Vec<f32> = (0..inp).map(|j| (j as f32 * 0.41).cos()).collect();
    for r in 0..out {
        let y: f32 = (0..inp).map(|c| w[r * inp + c] * x[c]).sum();
        let terms: Vec<f64> =
            (0..inp).map(|c| fp6_f64(down[r * inp + c], true) * 2f64.powi(s_down[(r * inp + c) / 32] as i32 - 127) * x[c] as f64).collect();
        let want: f64 = terms.iter().sum();
        let tol = inp as f64 * f32::EPSILON as f64 * terms.iter().map(|t| t.abs()).sum::<f64>();
        assert!((y as f64 - want).abs() <= tol, "row {r}: {y} vs {want}");
    }
}

#[test]
fn native_f6_dtypes_load() {
    let d = tempfile::tempdir().unwrap();
    let c = codes(2 * 32, 5);
    let s = vec![127u8, 100];
    write_dir(
        d.path(),
        serde_json::json!({"architectures": ["LlamaForCausalLM"]}),
        &[("w.weight", "F6_E3M2", vec![2, 32], pack(&c)), ("w.weight_scale", "F8_E8M0", vec![2, 1], s.clone())],
    );
    let dir = HfModelDir::open(d.path()).unwrap();
    check(&dir, "w.weight", &c, &s, 32, false);
}

fn open_err(config: serde_json::Value, tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> String {
    let d = tempfile::tempdir().unwrap();
    write_dir(d.path(), config, tensors);
    let r = HfModelDir::open(d.path()).and_then(|dir| dir.tensor_f32("w.weight"));
    match r {
        Err(e @ ModelError::BadTensor { .. }) => e.to_string(),
        other => panic!("expected BadTensor, got {other:?}"),
    }
}

#[test]
fn bad_shapes_and_scales_are_clear_errors() {
    let c = pack(&codes(64, 0));
    // Packed row not a whole number of 32-blocks (48 bytes is; 45 is not).
    let e = open_err(quark_config(), &[("w.weight", "U8", vec![1, 45], vec![0; 45]), ("w.weight_scale", "U8", vec![1, 2], vec![127; 2])]);
    assert!(e.contains("multiple of 24") && e.contains("w.weight"), "{e}");
    // Scale of the wrong shape.
    let e = open_err(quark_config(), &[("w.weight", "U8", vec![1, 48], c.clone()), ("w.weight_scale", "U8", vec![1, 3], vec![127; 3])]);
    assert!(e.contains("needs a scale of shape [1, 2]") && e.contains("[1, 3]"), "{e}");
    // Scale of a non-E8M0 dtype.
    let e = open_err(
        quark_config(),
        &[
            ("w.weight", "U8", vec![1, 48], c.clone()),
            ("w.weight_scale", "F32", vec![1, 2], [1f32, 1.0].iter().flat_map(|x| x.to_le_bytes()).collect()),
        ],
    );
    assert!(e.contains("E8M0"), "{e}");
    // Native F6 with no scale tensor.
    let e = open_err(serde_json::json!({}), &[("w.weight", "F6_E2M3", vec![1, 64], c.clone())]);
    assert!(e.contains("no E8M0 scale tensor 'w.weight_scale'"), "{e}");
    // Native F6 whose input dimension is not a multiple of 32.
    let e = open_err(serde_json::json!({}), &[("w.weight", "F6_E2M3", vec![4, 16], c), ("w.weight_scale", "U8", vec![4, 0], vec![])]);
    assert!(e.contains("multiple of 32"), "{e}");
}

#[test]
fn u8_without_quark_config_is_left_alone() {
    let d = tempfile::tempdir().unwrap();
    write_dir(
        d.path(),
        serde_json::json!({}),
        &[("w.weight", "U8", vec![1, 48], vec![0; 48]), ("w.weight_scale", "U8", vec![1, 2], vec![127; 2])],
    );
    let dir = HfModelDir::open(d.path()).unwrap();
    assert_eq!(dir.tensor("w.weight").unwrap().shape, vec![1, 48]);
    assert!(matches!(dir.tensor_f32("w.weight"), Err(ModelError::UnsupportedDtype { .. })));
}
