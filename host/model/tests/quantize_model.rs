//! `quantize_model` end to end on the real SmolLM2-135M, read back with our GGUF reader:
//! every planned tensor is present with the planned type and size, metadata is copied with
//! `general.file_type` / `general.quantization_version` set, values survive within the quant
//! type's error, copied tensors are byte-identical; plus the error cases (unknown type name,
//! requantizing without being asked, missing input, imatrix-only type, NaN input, same path).
//! That llama.cpp loads these outputs is checked by hand with
//! `scripts/check-quantized-in-llama-cpp.py` (CI has no llama-cpp-python); that the bytes equal
//! llama.cpp's is `quantize_data.rs`, that the type choices do is `quantize_types.rs`.
//!
//! Set `ROCMFORGE_QUANT_OUT=DIR` to keep the quantized SmolLM2 files for that script.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rocmforge_model::gguf::{GgufFile, GgufValue, GgufWriter};
use rocmforge_model::quantize::{plan_model, quantize_file, FileType, QuantizeOptions, QuantizeReport};
use rocmforge_model::ModelError;
use rocmforge_quant::GgmlType;

const SMOLLM2: &str = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn repo_path(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    assert!(p.exists(), "{} is missing: run scripts/fetch-test-data.sh", p.display());
    p
}

fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("ROCMFORGE_QUANT_OUT") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            (None, PathBuf::from(d))
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

/// Quantize SmolLM2 to `ftype` and check the output's structure against the input and plan.
fn quantize_and_check(ftype: FileType, max_rel_rms: f32) -> QuantizeReport {
    let in_path = repo_path(SMOLLM2);
    let (_keep, dir) = out_dir();
    let out_path = dir.join(format!("smollm2-{}.gguf", ftype.name().to_lowercase()));
    let input = GgufFile::open(&in_path).unwrap();
    let mut opts = QuantizeOptions::new(ftype);
    opts.allow_requantize = true;
    let plan = plan_model(&input, &opts).unwrap();
    let calls = AtomicUsize::new(0);
    let last = AtomicUsize::new(0);
    let report = quantize_file(&in_path, &out_path, &opts, &|done, total, name| {
        calls.fetch_add(1, Ordering::Relaxed);
        last.store(done, Ordering::Relaxed);
        assert_eq!(total, plan.len());
        assert!(!name.is_empty());
    })
    .unwrap();
    eprintln!(
        "SmolLM2 Q4_1 -> {ftype}: {:.2?}, {} tensors ({} converted, {} fallbacks), {:.1} -> {:.1} MiB, {:?}",
        report.elapsed,
        report.n_tensors,
        report.n_converted,
        report.n_fallback,
        report.in_bytes as f64 / 1048576.0,
        report.out_bytes as f64 / 1048576.0,
        report.per_type_counts
    );
    assert_eq!(calls.load(Ordering::Relaxed), plan.len(), "one progress call per tensor");
    assert_eq!(last.load(Ordering::Relaxed), plan.len());

    let out = GgufFile::open(&out_path).unwrap();
    assert_eq!(report.file_bytes, std::fs::metadata(&out_path).unwrap().len());
    assert_eq!(out.tensors().len(), input.tensors().len());
    assert_eq!(report.n_tensors, input.tensors().len());
    // Metadata: every input key copied unchanged except the two the quantizer owns, which
    // come last (llama.cpp removes and re-adds them).
    let md = out.metadata();
    let n = md.len();
    assert_eq!(md[n - 2], ("general.quantization_version".into(), GgufValue::U32(2)));
    assert_eq!(md[n - 1], ("general.file_type".into(), GgufValue::U32(ftype.id())));
    for (k, v) in input.metadata() {
        if k != "general.file_type" && k != "general.quantization_version" {
            assert_eq!(out.get(k), Some(v), "metadata {k}");
        }
    }
    assert_eq!(n, input.metadata().len() + usize::from(input.get("general.file_type").is_none()));

    let mut out_bytes = 0;
    for (p, t) in plan.iter().zip(out.tensors()) {
        assert_eq!(t.name, p.name);
        assert_eq!(t.ty, p.to, "{}", t.name);
        let src = input.tensor(&t.name).unwrap();
        assert_eq!(t.n_elements(), src.n_elements(), "{}", t.name);
        let rows = t.n_elements() / t.dims[0];
        assert_eq!(t.n_bytes, t.ty.row_bytes(t.dims[0]).unwrap() * rows, "{}", t.name);
        out_bytes += t.n_bytes;
        if t.ty == src.ty {
            assert_eq!(out.tensor_data(t), input.tensor_data(src), "{} copied", t.name);
        } else {
            // Values survive: relative RMS error of the requantized tensor vs the input.
            let n = t.n_elements() as usize;
            let a = rocmforge_quant::dequantize_to_vec(src.ty, input.tensor_data(src), n).unwrap();
            let b = rocmforge_quant::dequantize_to_vec(t.ty, out.tensor_data(t), n).unwrap();
            let (mut err, mut norm) = (0f64, 0f64);
            for (x, y) in a.iter().zip(&b) {
                err += f64::from(x - y).powi(2);
                norm += f64::from(*x).powi(2);
            }
            let rel = (err / norm.max(1e-30)).sqrt() as f32;
            assert!(rel < max_rel_rms, "{}: {} -> {}: relative RMS error {rel}", t.name, src.ty, t.ty);
        }
    }
    assert_eq!(out_bytes, report.out_bytes);
    report
}

#[test]
fn smollm2_to_q8_0() {
    let r = quantize_and_check(FileType::Q8_0, 0.01);
    assert_eq!(r.per_type_counts.get("Q8_0"), Some(&211));
    assert_eq!(r.per_type_counts.get("F32"), Some(&61));
}

#[test]
fn smollm2_to_q4_k_m() {
    let r = quantize_and_check(FileType::Q4_K_M, 0.2);
    // 576-wide rows do not tile Q4_K/Q6_K blocks: llama.cpp falls back to Q5_0/Q8_0 there.
    assert!(r.n_fallback > 0);
    assert!(r.per_type_counts.contains_key("Q4_K") && r.per_type_counts.contains_key("Q6_K"));
}

#[test]
fn same_type_needs_no_requantize_and_copies_bytes() {
    // Q4_1 -> Q4_1: every tensor keeps its type (the tied embedding's Q6_K choice falls back to
    // Q8_0, which it already is), so nothing is requantized and no permission is needed.
    let in_path = repo_path(SMOLLM2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("same.gguf");
    let r = quantize_file(&in_path, &out, &QuantizeOptions::new(FileType::Q4_1), &|_, _, _| {}).unwrap();
    assert_eq!(r.n_converted, 0);
    assert_eq!(r.in_bytes, r.out_bytes);
}

#[test]
fn unknown_type_name_lists_valid_names() {
    let e = FileType::from_name("q4_k_x").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ModelError::UnknownFileType { .. }));
    for want in ["q4_k_x", "Q4_K_M", "Q8_0", "Q6_K", "F16"] {
        assert!(msg.contains(want), "{msg}");
    }
    assert_eq!(FileType::from_name(" Q4_k_M ").unwrap(), FileType::Q4_K_M);
}

#[test]
fn requantize_is_refused_unless_asked() {
    let in_path = repo_path(SMOLLM2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let e = quantize_file(&in_path, &out, &QuantizeOptions::new(FileType::Q8_0), &|_, _, _| {}).unwrap_err();
    assert!(matches!(&e, ModelError::RequantizeDisabled { from: "Q4_1", to: "Q8_0", .. }), "{e}");
    assert!(e.to_string().contains("--allow-requantize"), "{e}");
    assert!(!out.exists(), "nothing written on error");
}

#[test]
fn missing_input_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.gguf");
    let e = quantize_file(&missing, &dir.path().join("o.gguf"), &QuantizeOptions::new(FileType::Q8_0), &|_, _, _| {}).unwrap_err();
    assert!(matches!(&e, ModelError::Io { path, .. } if path == &missing), "{e}");
}

/// A one-layer F32 llama with 256-wide rows; `poison` puts a NaN in `blk.0.attn_q.weight`.
fn tiny_f32(path: &Path, poison: bool) {
    let mut w = GgufWriter::new();
    w.set("general.architecture", GgufValue::Str("llama".into()));
    w.set("llama.block_count", GgufValue::U32(1));
    w.set("llama.attention.head_count", GgufValue::U32(4));
    let shapes: [(&str, Vec<u64>); 4] = [
        ("token_embd.weight", vec![256, 8]),
        ("blk.0.attn_norm.weight", vec![256]),
        ("blk.0.attn_q.weight", vec![256, 256]),
        ("blk.0.ffn_down.weight", vec![256, 256]),
    ];
    for (name, dims) in &shapes {
        w.add_tensor_info(*name, dims.clone(), GgmlType::F32).unwrap();
    }
    w.write_file(path, |i| {
        let n: u64 = shapes[i].1.iter().product();
        let mut v: Vec<f32> = (0..n).map(|j| ((j * 7919 % 1000) as f32 - 500.0) / 1000.0).collect();
        if poison && i == 2 {
            v[5] = f32::NAN;
        }
        Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    })
    .unwrap();
}

#[test]
fn q2_k_s_needs_an_imatrix() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    tiny_f32(&input, false);
    let e = quantize_file(&input, &dir.path().join("o.gguf"), &QuantizeOptions::new(FileType::Q2_K_S), &|_, _, _| {}).unwrap_err();
    assert!(matches!(e, ModelError::NeedsImatrix { ty: "Q2_K", .. }), "{e}");
}

#[test]
fn nan_input_and_same_path_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    tiny_f32(&input, true);
    let out = dir.path().join("o.gguf");
    let e = quantize_file(&input, &out, &QuantizeOptions::new(FileType::Q8_0), &|_, _, _| {}).unwrap_err();
    assert!(matches!(&e, ModelError::BadTensor { tensor, .. } if tensor == "blk.0.attn_q.weight"), "{e}");
    assert!(!out.exists());
    let e = quantize_file(&input, &input, &QuantizeOptions::new(FileType::Q8_0), &|_, _, _| {}).unwrap_err();
    assert!(e.to_string().contains("same file"), "{e}");
    // The input is untouched and still valid.
    assert_eq!(GgufFile::open(&input).unwrap().tensors().len(), 4);
}

#[test]
fn pure_skips_the_mix_and_f16_converts_every_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    tiny_f32(&input, false);
    let f = GgufFile::open(&input).unwrap();
    let types =
        |opts: &QuantizeOptions| -> Vec<(String, GgmlType)> { plan_model(&f, opts).unwrap().into_iter().map(|p| (p.name, p.to)).collect() };
    let mut opts = QuantizeOptions::new(FileType::Q4_K_M);
    opts.pure = true;
    for (name, ty) in types(&opts) {
        let want = if name.ends_with("norm.weight") { GgmlType::F32 } else { GgmlType::Q4_K };
        assert_eq!(ty, want, "{name}");
    }
    for (name, ty) in types(&QuantizeOptions::new(FileType::F16)) {
        let want = if name.ends_with("norm.weight") { GgmlType::F32 } else { GgmlType::F16 };
        assert_eq!(ty, want, "{name}");
    }
}
