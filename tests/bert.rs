//! The BERT plugin (sentence embeddings) against references:
//! - the tiny random BERT of `tests/fixtures/hf-tiny/bert` (transformers' mean-pooled, L2-normalised
//!   output, `scripts/fixtures/hf_tiny_models.py`) from the HF dir and from its F32 GGUF conversion,
//!   one sequence per pass and both sequences in one batch;
//! - all-MiniLM-L6-v2 (HF dir, F16 and Q8_0 GGUF) against sentence-transformers' computation in
//!   float64 numpy (`tests/fixtures/minilm_embeddings.json`, made by `scripts/fixtures/minilm_refs.py`,
//!   which first checks its numpy BERT against transformers on the tiny model, then records
//!   transformers' own float64 embeddings of the real model next to its own: max difference 5e-9);
//! - `rocmforge embed`, which also tokenizes ([CLS] ... [SEP]) with our tokenizer.
//! Metric: cosine distance 1 − cos(ours, reference) per sentence.

mod common;

use std::path::{Path, PathBuf};

use common::{model, registry, repo, Runner};
use rocmforge_runtime::exec::{KvConfig, Logits, SeqChunk};
use rocmforge_runtime::{build_graph, Executor, ModelSource};

fn cos_dist(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "embedding sizes differ");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    1.0 - dot / (n(a) * n(b))
}

fn tiny_dir() -> PathBuf {
    repo().join("tests/fixtures/hf-tiny/bert")
}

/// (token sequences, pooled reference rows) of the tiny fixture.
fn tiny_reference() -> (Vec<Vec<u32>>, Vec<Vec<f32>>) {
    let dir = tiny_dir();
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let seqs: Vec<Vec<u32>> = j["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect();
    let dims = |k: &str| -> Vec<usize> { j["shape"][k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect() };
    let n_hidden: usize = dims("hidden").iter().product();
    let pooled_dims = dims("pooled");
    let all: Vec<f32> =
        std::fs::read(dir.join("logits.f32")).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(all.len(), n_hidden + pooled_dims.iter().product::<usize>(), "logits.f32 size");
    let pooled = all[n_hidden..].chunks(pooled_dims[1]).map(<[f32]>::to_vec).collect();
    (seqs, pooled)
}

fn convert_f32(dir: &Path, tag: &str) -> PathBuf {
    let gguf = std::env::temp_dir().join(format!("rf-bert-{}-{tag}.gguf", std::process::id()));
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge")).arg("quantize").arg(dir).arg(&gguf).arg("F32").output().unwrap();
    assert!(st.status.success(), "quantize {}: {}", dir.display(), String::from_utf8_lossy(&st.stderr));
    gguf
}

/// Tiny model: f16 KV cache rounding only (measured 3e-9). The bounds are far below the 1e-3 the
/// embeddings must meet, so that a wrong detail (GELU tanh for erf, a missing token-type row,
/// eps) fails here instead of hiding under a loose tolerance.
const TINY_MAX_COS_DIST: f64 = 1e-7;
/// F32 weights of the HF dir (measured 3e-8).
const HF_MAX_COS_DIST: f64 = 1e-6;
/// F16 weights (measured 2.7e-7); also what `rocmforge embed` must reach. Required: 1e-3.
const MAX_COS_DIST: f64 = 1e-5;

#[test]
fn tiny_bert_matches_transformers_pooled_output() {
    let (seqs, want) = tiny_reference();
    let gguf = convert_f32(&tiny_dir(), "tiny");
    for path in [tiny_dir(), gguf.clone()] {
        let mut r = Runner::load(&path, 64);
        for (i, (s, w)) in seqs.iter().zip(&want).enumerate() {
            r.reset();
            let got = r.feed(s, false);
            let d = cos_dist(&got, w);
            let norm: f64 = got.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            eprintln!("tiny bert {} seq {i}: cosine distance {d:.2e}, |v| = {norm:.6}", path.display());
            assert!(d < TINY_MAX_COS_DIST, "{} seq {i}: cosine distance {d:.2e}", path.display());
            assert!((norm - 1.0).abs() < 1e-5, "not L2-normalised: {norm}");
        }
    }
    let _ = std::fs::remove_file(&gguf);
}

/// The fixture's `layer_norm_eps` (1e-2) is not the plugin's fallback (1e-12): without the key the
/// pooled output must leave the bound by far (a lost config mapping cannot pass).
#[test]
fn tiny_bert_dropped_layer_norm_eps_is_caught() {
    let (seqs, want) = tiny_reference();
    let tmp = std::env::temp_dir().join(format!("rf-bert-no-eps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for e in std::fs::read_dir(tiny_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.join(e.file_name())).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.join("config.json")).unwrap()).unwrap();
    assert!(cfg.as_object_mut().unwrap().remove("layer_norm_eps").is_some(), "fixture has no layer_norm_eps");
    std::fs::write(tmp.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let mut r = Runner::load(&tmp, 64);
    let mut worst = 0f64;
    for (s, w) in seqs.iter().zip(&want) {
        r.reset();
        worst = worst.max(cos_dist(&r.feed(s, false), w));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("tiny bert without layer_norm_eps: cosine distance {worst:.2e}");
    assert!(worst > 100.0 * TINY_MAX_COS_DIST, "dropping layer_norm_eps moved the output only by {worst:.2e}");
}

/// Both sequences in one forward pass (two chunks, each its own KV blocks) pool separately.
#[test]
fn tiny_bert_batch_pools_each_sequence() {
    let (seqs, want) = tiny_reference();
    let reg = registry();
    let src = ModelSource::open(&tiny_dir(), &reg).expect("open");
    let graph = build_graph(reg.for_gguf_arch(src.arch()).expect("plugin"), &src).expect("graph");
    let mut exec = Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks: 8 }).expect("executor");
    assert!(exec.is_embedding(), "the bert graph must output embeddings");
    let (t0, t1): (Vec<u32>, Vec<u32>) = ((0..4).collect(), (4..8).collect());
    let short = &seqs[1][..7]; // sequences of different lengths in one batch
    let batch = [
        SeqChunk { tokens: &seqs[0], pos_start: 0, block_table: &t0, group_tables: &[], logits: Logits::Last },
        SeqChunk { tokens: short, pos_start: 0, block_table: &t1, group_tables: &[], logits: Logits::Last },
    ];
    let out = exec.forward(&batch).expect("forward").to_vec();
    let n = exec.n_out_cols();
    assert_eq!(out.len(), 2 * n, "one row per sequence");
    let d0 = cos_dist(&out[..n], &want[0]);
    let alone = exec
        .forward(&[SeqChunk { tokens: short, pos_start: 0, block_table: &t0, group_tables: &[], logits: Logits::Last }])
        .expect("forward");
    let d1 = cos_dist(&out[n..], &alone);
    eprintln!("batched: seq 0 vs transformers {d0:.2e}; short seq batched vs alone {d1:.2e}");
    assert!(d0 < TINY_MAX_COS_DIST && d1 < 1e-7, "{d0} {d1}");
    // A chunk that does not start its sequence cannot be pooled.
    let bad = [SeqChunk { tokens: &seqs[0][..4], pos_start: 4, block_table: &t0, group_tables: &[], logits: Logits::Last }];
    assert!(exec.forward(&bad).is_err(), "pooling a partial sequence must be refused");
}

struct MiniCase {
    text: String,
    tokens: Vec<u32>,
    embedding: Vec<f32>,
    /// transformers' own embedding of the same ids (float64 AutoModel on the real checkpoint,
    /// recorded by the generator, which also requires it within 1e-6 of `embedding`).
    transformers: Vec<f32>,
}

fn minilm_cases() -> Vec<MiniCase> {
    let p = repo().join("tests/fixtures/minilm_embeddings.json");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    j["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| MiniCase {
            text: c["text"].as_str().unwrap().to_string(),
            tokens: c["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect(),
            embedding: c["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            transformers: c["transformers_embedding"]
                .as_array()
                .expect("fixture made without the transformers check: rerun scripts/fixtures/minilm_refs.py")
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect()
}

fn check_minilm(path: &Path, max: f64) {
    let cases = minilm_cases();
    let mut r = Runner::load(path, 512);
    let mut worst = 0f64;
    for c in &cases {
        r.reset();
        let got = r.feed(&c.tokens, false);
        let d = cos_dist(&got, &c.embedding);
        worst = worst.max(d);
        assert!(d < max, "{}: {:?}: cosine distance {d:.2e}", path.display(), c.text);
        let dt = cos_dist(&got, &c.transformers);
        worst = worst.max(dt);
        assert!(dt < max, "{}: {:?}: cosine distance to transformers' embedding {dt:.2e}", path.display(), c.text);
    }
    eprintln!(
        "{}: worst cosine distance vs the float64 references (numpy and transformers) {worst:.2e} over {} sentences",
        path.display(),
        cases.len()
    );
}

#[test]
fn minilm_hf_dir_matches_sentence_transformers() {
    check_minilm(&model("all-MiniLM-L6-v2"), HF_MAX_COS_DIST);
}

#[test]
fn minilm_f16_gguf_matches_sentence_transformers() {
    check_minilm(&model("all-MiniLM-L6-v2-f16.gguf"), MAX_COS_DIST);
}

/// Q8_0 weights (and Q8 activations in the matmuls) lose more: measured 8.8e-4.
#[test]
fn minilm_q8_0_gguf_close_to_sentence_transformers() {
    check_minilm(&model("all-MiniLM-L6-v2-q8_0.gguf"), 2e-3);
}

#[test]
fn cli_embed_tokenizes_and_matches_sentence_transformers() {
    let cases = minilm_cases();
    for m in ["all-MiniLM-L6-v2", "all-MiniLM-L6-v2-f16.gguf"] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"));
        cmd.arg("embed").arg(model(m));
        for c in &cases {
            cmd.arg(&c.text);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "embed {m}: {}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("embed prints JSON");
        let vs = j["embeddings"].as_array().expect("embeddings");
        assert_eq!(vs.len(), cases.len());
        for (v, c) in vs.iter().zip(&cases) {
            let got: Vec<f32> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let d = cos_dist(&got, &c.embedding);
            assert!(d < MAX_COS_DIST, "embed {m} {:?}: cosine distance {d:.2e}", c.text);
        }
    }
}
