//! Every architecture a plugin claims, as a tiny random-weight Hugging Face model, against the
//! logits of Hugging Face transformers itself (f32, eager attention), loaded three ways: from the
//! HF directory, and from its GGUF conversions made by `rocmforge quantize DIR OUT.gguf F32` / `F16`.
//!
//! Fixtures: `tests/fixtures/hf-tiny/<variant>/` made by `scripts/fixtures/hf_tiny_models.py` on the
//! project's GPU machine (transformers 5.17.0, torch 2.11.0; command in each reference.json).
//! A plugin claiming an HF architecture without a fixture fails `every_claimed_architecture_has_a_fixture`.

mod common;

use std::path::{Path, PathBuf};

use common::{registry, repo, Runner};

fn fixtures() -> Vec<(String, PathBuf, serde_json::Value)> {
    let root = repo().join("tests/fixtures/hf-tiny");
    let mut v: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/fixtures/hf-tiny")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .map(|p| {
            let j: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join("reference.json")).unwrap()).unwrap();
            (j["architectures"][0].as_str().unwrap().to_string(), p, j)
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

fn reference_logits(dir: &Path) -> Vec<f32> {
    std::fs::read(dir.join("logits.f32")).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// ‖ours − ref‖₂ / ‖ref‖₂ over every position of every sequence.
fn run_and_compare(model: &Path, j: &serde_json::Value, want: &[f32]) -> f64 {
    let mut r = Runner::load(model, 64);
    let (mut num, mut den) = (0f64, 0f64);
    let mut off = 0;
    for seq in j["sequences"].as_array().unwrap() {
        let toks: Vec<u32> = seq.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        r.reset();
        let got = r.feed(&toks, true);
        for (a, b) in got.iter().zip(&want[off..off + got.len()]) {
            num += (*a as f64 - *b as f64).powi(2);
            den += (*b as f64).powi(2);
        }
        off += got.len();
    }
    assert_eq!(off, want.len(), "{}: output size differs from the reference", model.display());
    (num / den).sqrt()
}

/// f16 KV cache (as llama.cpp) and f32 math elsewhere: errors are of the order of 1e-3.
const MAX_REL_ERR: f64 = 5e-3;
/// F16 GGUF conversion: weights rounded to f16 (11-bit mantissa) add about 1e-3.
const MAX_REL_ERR_F16: f64 = 1e-2;

#[test]
fn claimed_architectures_match_transformers() {
    let reg = registry();
    let mut checked = Vec::new();
    let mut failed = Vec::new();
    for (arch, dir, j) in fixtures() {
        if reg.for_hf_arch(&arch).is_err() || j["shape"].get("logits").is_none() {
            continue;
        }
        let want = reference_logits(&dir);
        let e_hf = run_and_compare(&dir, &j, &want);
        let mut errs = vec![("HF dir", e_hf, MAX_REL_ERR)];
        for (ty, bound) in [("F32", MAX_REL_ERR), ("F16", MAX_REL_ERR_F16)] {
            let gguf = std::env::temp_dir().join(format!(
                "rf-hftiny-{}-{}-{ty}.gguf",
                std::process::id(),
                dir.file_name().unwrap().to_string_lossy()
            ));
            let st =
                std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge")).arg("quantize").arg(&dir).arg(&gguf).arg(ty).output().unwrap();
            assert!(st.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&st.stderr));
            errs.push((ty, run_and_compare(&gguf, &j, &want), bound));
            let _ = std::fs::remove_file(&gguf);
        }
        let row: Vec<String> = errs.iter().map(|(what, e, _)| format!("{what} {e:.2e}")).collect();
        eprintln!("{:<16} {arch:<24} rel. error vs transformers: {}", dir.file_name().unwrap().to_string_lossy(), row.join(", "));
        for (what, e, bound) in errs {
            if !(e < bound) {
                failed.push(format!("{} ({arch}) {what}: {e:.2e} (bound {bound:.0e})", dir.display()));
            }
        }
        checked.push(arch);
    }
    assert!(failed.is_empty(), "relative error above {MAX_REL_ERR}: {failed:#?}");
    assert!(checked.iter().any(|a| a == "LlamaForCausalLM"), "the llama fixture was not checked");
}

#[test]
fn every_claimed_architecture_has_a_fixture() {
    let reg = registry();
    let have: Vec<String> = fixtures().into_iter().map(|f| f.0).collect();
    for p in &reg.plugins {
        for hf in p.hf_archs() {
            assert!(have.iter().any(|h| h == hf), "plugin '{}' claims {hf} but tests/fixtures/hf-tiny has no fixture for it", p.name);
        }
    }
}
