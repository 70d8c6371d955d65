//! `rocmforge synth` (the benchmark models' writer, host/cli/synth.rs) end to end through the real
//! binary: a SmolLM2-135M-shaped model cut to a few layers, with SmolLM2's own tokenizer (49,152
//! tokens) as the vocab, must (1) carry the tokenizer and llama hyper-parameters, (2) have exactly
//! the per-tensor types our llama-quantize rules choose for its names and shapes (not a hard-coded
//! list: the rules are checked against llama.cpp in tests of the model crate, and perf.md's byte
//! counts in synth.rs's unit tests), (3) be the same file whatever the thread count, and (4) load
//! and run on the CPU backend (`generate`, `bench --json`).

mod common;

use std::path::Path;
use std::process::Command;

use common::model;
use rocmforge_model::gguf::GgufFile;
use rocmforge_model::quantize::{n_dims, tensor_order, tensor_type_for, FileType, MixState, QuantHparams};
use rocmforge_quant::GgmlType;

fn rocmforge(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rocmforge")).args(args).output().expect("spawn rocmforge");
    assert!(out.status.success(), "rocmforge {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn synth(vocab: &Path, out: &Path, ty: &str, threads: &str) {
    let (v, o) = (vocab.display().to_string(), out.display().to_string());
    rocmforge(&["synth", "--shape", "smollm2-135m", "--type", ty, "--vocab", &v, "--n-layer", "4", "--seed", "7", "-t", threads, &o]);
}

/// The type of every tensor as our quantizer's mixing rules choose it for an F32 input.
fn expected_types(f: &GgufFile, ftype: FileType) -> Vec<(String, GgmlType)> {
    let mut names: Vec<(String, Vec<u64>)> = f.tensors().iter().map(|t| (t.name.clone(), t.dims.clone())).collect();
    names.sort_by(|a, b| tensor_order(&a.0, &b.0));
    let hp = QuantHparams::from_metadata("llama", f.metadata(), names.iter().map(|n| n.0.as_str()));
    let mut st = MixState::new("llama", hp, ftype, false, names.iter().map(|n| n.0.as_str()));
    names
        .into_iter()
        .map(|(name, dims)| {
            let dims = dims[..n_dims(&dims)].to_vec();
            let ty = tensor_type_for(&mut st, &name, &dims, GgmlType::F32).expect("type choice").ty;
            (name, ty)
        })
        .collect()
}

#[test]
fn synth_writes_llama_quantize_mix_that_runs_on_cpu() {
    let vocab = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smol-q4km.gguf");
    synth(&vocab, &out, "q4_k_m", "0");

    let v = GgufFile::open(&vocab).unwrap();
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 4);
    assert_eq!(f.get_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_u64("general.file_type").unwrap(), u64::from(FileType::Q4_K_M.id()));
    let n_vocab = v.get_array("tokenizer.ggml.tokens").unwrap().len();
    assert_eq!(f.get_array("tokenizer.ggml.tokens").unwrap().len(), n_vocab);
    assert_eq!(f.get_u64("llama.vocab_size").unwrap(), n_vocab as u64);
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), v.get_str("tokenizer.ggml.pre").unwrap());
    assert!(f.tensor("output.weight").is_none(), "SmolLM2 ties its output to token_embd");
    assert_eq!(f.tensor("token_embd.weight").unwrap().dims, vec![576, n_vocab as u64]);
    assert_eq!(f.tensors().len(), 2 + 4 * 9);

    let want = expected_types(&f, FileType::Q4_K_M);
    let got: Vec<(String, GgmlType)> = want.iter().map(|(n, _)| (n.clone(), f.tensor(n).unwrap().ty)).collect();
    assert_eq!(got, want);
    // A real mix, not one type: F32 norms, Q4_K and Q6_K (ffn_down rows of 1536 are whole
    // 256-blocks), and the fallbacks for rows of 576.
    let kinds: std::collections::HashSet<GgmlType> = got.iter().map(|t| t.1).collect();
    for ty in [GgmlType::F32, GgmlType::Q4_K, GgmlType::Q6_K] {
        assert!(kinds.contains(&ty), "{ty} missing from {kinds:?}");
    }

    // Same seed, one thread: the same bytes.
    let out1 = dir.path().join("smol-q4km-t1.gguf");
    synth(&vocab, &out1, "q4_k_m", "1");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&out1).unwrap(), "output depends on the thread count");

    // It runs: a greedy continuation and a short bench on the CPU backend.
    let o = out.display().to_string();
    rocmforge(&["generate", &o, "Hello", "-n", "4", "--temperature", "0", "--ignore-eos", "--device", "cpu"]);
    let j: serde_json::Value =
        serde_json::from_str(rocmforge(&["bench", &o, "-p", "16", "-n", "4", "-r", "1", "--json", "--device", "cpu"]).trim()).unwrap();
    let res = j["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    for r in res {
        let ts = r["t/s"].as_f64().unwrap();
        assert!(ts.is_finite() && ts > 0.0, "{r}");
    }
}

/// F16 (1B-F16 in the benchmark): every matrix F16, norms F32, as llama-quantize writes it.
#[test]
fn synth_f16_keeps_norms_f32() {
    let vocab = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smol-f16.gguf");
    synth(&vocab, &out, "f16", "0");
    let f = GgufFile::open(&out).unwrap();
    let want = expected_types(&f, FileType::F16);
    for (name, ty) in &want {
        assert_eq!(f.tensor(name).unwrap().ty, *ty, "{name}");
        assert_eq!(*ty, if name.ends_with("norm.weight") { GgmlType::F32 } else { GgmlType::F16 }, "{name}");
    }
}
