//! LoRA adapters merged at load, against PEFT's own logits of the adapted model.
//!
//! Fixtures (`tests/fixtures/lora-tiny/`, made by `scripts/fixtures/lora_tiny.py` with
//! transformers 5.17, torch 2.11, peft 0.22): random PEFT adapters on the tiny LLaMA of
//! `tests/fixtures/tiny-llama-hf` (head_dim 32 != n_embd / n_head, GQA: the Q and K row
//! permutation of lora_B is exercised with both head counts), with PEFT's logits; `plain/` also
//! has the GGUF form written by llama.cpp's `convert_lora_to_gguf.py`.
//!
//! Each adapter form is merged into each base form (HF directory, llama.cpp-style F32 GGUF, F16
//! HF directory) and must give PEFT's logits within the bounds of `tests/hf_tiny.rs`; the base
//! without the adapter must not (so the check can fail). Our own PEFT -> GGUF conversion (what
//! `/api/create` stores) must equal llama.cpp's converter tensor for tensor, and give the same
//! logits, also for rsLoRA / `alpha_pattern` scales llama.cpp's format cannot express directly.

mod common;

use std::path::{Path, PathBuf};

use common::{registry, repo};
use rocmforge_model::lora::LoraAdapter;
use rocmforge_runtime::exec::{Executor, KvConfig, Logits, SeqChunk};
use rocmforge_runtime::{build_graph, ModelSource};

/// f16 KV cache and f32 math (the bound of tests/hf_tiny.rs).
const MAX_REL_ERR: f64 = 5e-3;
/// F16 weights (the merged weight is rounded to f16).
const MAX_REL_ERR_F16: f64 = 1e-2;
const N_CTX: usize = 64;

fn fixture(variant: &str) -> PathBuf {
    repo().join("tests/fixtures/lora-tiny").join(variant)
}

fn base_dir() -> PathBuf {
    repo().join("tests/fixtures/tiny-llama-hf")
}

struct Reference {
    seqs: Vec<Vec<u32>>,
    logits: Vec<f32>,
}

fn reference(variant: &str) -> Reference {
    let dir = fixture(variant);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).expect("reference.json")).unwrap();
    let seqs = r["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
        .collect();
    let bytes = std::fs::read(dir.join("logits.f32")).expect("logits.f32");
    Reference { seqs, logits: bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect() }
}

fn load(model: &Path, adapters: &[PathBuf]) -> Result<Executor, String> {
    let reg = registry();
    let mut src = ModelSource::open(model, &reg).map_err(|e| format!("open: {e}"))?;
    src.apply_adapters(adapters, &reg).map_err(|e| e.to_string())?;
    let plugin = reg.for_source(&src).map_err(|e| format!("plugin: {e}"))?;
    let graph = build_graph(plugin, &src).map_err(|e| format!("graph: {e}"))?;
    Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks: N_CTX / 16 }).map_err(|e| format!("executor: {e}"))
}

/// ‖ours − PEFT‖₂ / ‖PEFT‖₂ over every logit of every sequence.
fn rel_err(model: &Path, adapters: &[PathBuf], r: &Reference) -> f64 {
    let mut exec = load(model, adapters).unwrap_or_else(|e| panic!("{} + {adapters:?}: {e}", model.display()));
    let table: Vec<u32> = (0..(N_CTX / 16) as u32).collect();
    let (mut num, mut den) = (0f64, 0f64);
    let mut off = 0;
    for s in &r.seqs {
        let c = SeqChunk { tokens: s, pos_start: 0, block_table: &table, group_tables: &[], logits: Logits::All };
        let got = exec.forward(std::slice::from_ref(&c)).expect("forward").to_vec();
        let want = &r.logits[off..off + got.len()];
        off += got.len();
        num += got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>();
        den += want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>();
    }
    assert_eq!(off, r.logits.len(), "the reference has more logits than the sequences produced");
    (num / den).sqrt()
}

/// Our GGUF conversion of a PEFT adapter against `base` (what `/api/create` stores).
fn convert(peft: &Path, base: &Path, out: &Path) {
    let reg = registry();
    let src = ModelSource::open(base, &reg).expect("open base");
    let a = LoraAdapter::open(peft).expect("open PEFT adapter");
    let r = rocmforge_runtime::lora::resolve(&src, &a, &reg).expect("resolve");
    r.write_gguf(src.arch(), out).expect("write GGUF adapter");
}

#[test]
fn peft_and_gguf_adapters_match_peft() {
    let r = reference("plain");
    let peft = fixture("plain");
    let llama_cpp_gguf = fixture("plain/adapter.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.gguf");
    convert(&peft, &base_dir(), &ours);
    let gguf_base = repo().join("tests/fixtures/tiny-llama.f32.gguf");
    let f16_base = repo().join("tests/fixtures/tiny-llama-hf-f16");

    let mut failed = Vec::new();
    for (base, base_name, bound) in
        [(base_dir(), "HF dir", MAX_REL_ERR), (gguf_base, "F32 GGUF", MAX_REL_ERR), (f16_base, "F16 HF dir", MAX_REL_ERR_F16)]
    {
        let none = rel_err(&base, &[], &r);
        assert!(
            none > 10.0 * bound,
            "{base_name} without the adapter is already close to PEFT's logits ({none:.2e}): the test could not fail"
        );
        for (adapter, what) in [(&peft, "PEFT dir"), (&llama_cpp_gguf, "llama.cpp GGUF"), (&ours, "our GGUF")] {
            let e = rel_err(&base, std::slice::from_ref(adapter), &r);
            eprintln!("{base_name:<10} + {what:<15} rel. error vs PEFT {e:.2e} (without adapter {none:.2e})");
            if e.is_nan() || e >= bound {
                failed.push(format!("{base_name} + {what}: {e:.2e} (bound {bound:.0e})"));
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Our conversion names, shapes and permutes exactly as llama.cpp's converter does.
#[test]
fn our_gguf_conversion_equals_llama_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("ours.gguf");
    convert(&fixture("plain"), &base_dir(), &ours);
    let a = LoraAdapter::open(&ours).unwrap();
    let b = LoraAdapter::open(&fixture("plain/adapter.gguf")).unwrap();
    assert_eq!(a.arch, b.arch);
    assert_eq!(a.alpha, b.alpha);
    let mut names_a: Vec<&str> = a.pairs.iter().map(|p| p.target.as_str()).collect();
    let mut names_b: Vec<&str> = b.pairs.iter().map(|p| p.target.as_str()).collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    assert!(names_b.contains(&"output.weight") && names_b.contains(&"blk.1.attn_k.weight"), "{names_b:?}");
    for p in &a.pairs {
        let q = b.pairs.iter().find(|q| q.target == p.target).unwrap();
        assert_eq!((p.rank, p.n_in, p.n_out, p.scale), (q.rank, q.n_in, q.n_out, q.scale), "{}", p.target);
        assert_eq!(p.a, q.a, "{} lora_a", p.target);
        assert_eq!(p.b, q.b, "{} lora_b (Q/K rows permuted as llama.cpp does?)", p.target);
    }
}

/// rsLoRA (alpha / sqrt(r)) and a per-module alpha: read from PEFT, and folded into lora_b when
/// written as a GGUF adapter.
#[test]
fn rslora_and_alpha_pattern() {
    let r = reference("rslora");
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("rslora.gguf");
    convert(&fixture("rslora"), &base_dir(), &ours);
    let gguf_base = repo().join("tests/fixtures/tiny-llama.f32.gguf");
    for (base, adapter) in [(base_dir(), fixture("rslora")), (base_dir(), ours.clone()), (gguf_base, ours)] {
        let e = rel_err(&base, std::slice::from_ref(&adapter), &r);
        eprintln!("{} + {}: rel. error vs PEFT {e:.2e}", base.display(), adapter.display());
        assert!(e < MAX_REL_ERR, "{} + {}: {e:.2e}", base.display(), adapter.display());
    }
}

/// An adapter for another model is refused at load, naming the tensor.
#[test]
fn wrong_base_models_are_refused() {
    // Same architecture, other shapes (head_dim 24, 4 layers).
    let other = repo().join("tests/fixtures/hf-tiny/llama");
    for adapter in [fixture("plain"), fixture("plain/adapter.gguf")] {
        let e = load(&other, std::slice::from_ref(&adapter)).err().expect("must be refused");
        assert!(e.contains("wrong base model") && e.contains("tensor '"), "{e}");
        assert!(e.contains(&adapter.display().to_string()), "the error must name the adapter: {e}");
    }
    // Another architecture.
    let qwen = repo().join("tests/fixtures/hf-tiny/qwen2");
    let e = load(&qwen, &[fixture("plain/adapter.gguf")]).err().expect("must be refused");
    assert!(e.contains("architecture 'llama'") && e.contains("'qwen2'"), "{e}");
    // Not an adapter at all.
    let e = load(&base_dir(), &[repo().join("tests/fixtures/tiny-llama.f32.gguf")]).err().expect("must be refused");
    assert!(e.contains("not a LoRA adapter"), "{e}");
}
