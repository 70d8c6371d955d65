//! A Hugging Face directory of PyTorch `.bin` shards runs like its safetensors form: the tiny
//! llama of `tests/fixtures/hf-tiny/llama`, re-saved by `scripts/fixtures/torch_bin.py` with
//! `torch.save` as two shards plus `pytorch_model.bin.index.json` (transformers 4's layout) in
//! `tests/fixtures/torch-bin/llama`, with `lm_head.weight` stored transposed (a strided view) and
//! layer 0's q/k projections as views into one fused storage.
//!
//! Checked: the same tensors (names, dtypes, shapes, bytes) as the safetensors file; logits
//! bit-identical to the safetensors directory's (same weights, same graph); and within
//! `tests/hf_tiny.rs`'s bound of transformers' logits in the fixture's `logits.f32`.

mod common;

use common::{repo, Runner};
use rocmforge_model::hf::HfModelDir;

/// As tests/hf_tiny.rs: f16 KV cache, f32 math elsewhere.
const MAX_REL_ERR: f64 = 5e-3;

#[test]
fn llama_from_bin_shards_matches_safetensors_and_transformers() {
    let st_dir = repo().join("tests/fixtures/hf-tiny/llama");
    let bin_dir = repo().join("tests/fixtures/torch-bin/llama");

    let st = HfModelDir::open(&st_dir).expect("safetensors dir");
    let bin = HfModelDir::open(&bin_dir).expect(".bin dir");
    assert_eq!(bin.shard_paths().len(), 2);
    assert!(bin.shard_paths().iter().all(|p| p.extension().is_some_and(|x| x == "bin")));
    let names = |d: &HfModelDir| d.tensors().iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&bin), names(&st));
    for t in st.tensors() {
        assert_eq!(bin.tensor(&t.name), Some(t), "{}", t.name);
        assert!(bin.tensor_bytes(&t.name).unwrap() == st.tensor_bytes(&t.name).unwrap(), "{}: bytes differ", t.name);
    }

    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(st_dir.join("reference.json")).unwrap()).unwrap();
    let want: Vec<f32> =
        std::fs::read(st_dir.join("logits.f32")).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let seqs: Vec<Vec<u32>> = reference["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect();
    let mut from_st = Runner::load(&st_dir, 64);
    let mut from_bin = Runner::load(&bin_dir, 64);
    let (mut num, mut den, mut off) = (0f64, 0f64, 0);
    for seq in &seqs {
        from_st.reset();
        from_bin.reset();
        let a = from_st.feed(seq, true);
        let b = from_bin.feed(seq, true);
        assert!(a == b, "logits from the .bin shards differ from the safetensors directory's");
        let w = &want[off..off + b.len()];
        off += b.len();
        num += b.iter().zip(w).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>();
        den += w.iter().map(|y| (*y as f64).powi(2)).sum::<f64>();
    }
    assert_eq!(off, want.len(), "logits.f32 size");
    let rel = (num / den).sqrt();
    eprintln!("llama from .bin shards: rel. error vs transformers {rel:.2e} (bound {MAX_REL_ERR:.0e})");
    assert!(rel < MAX_REL_ERR, "rel. error {rel:.2e}");
}
