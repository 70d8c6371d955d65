//! The quantizer's output bytes against llama.cpp's: a small synthetic F32 llama model (2 layers,
//! 256-wide embeddings, 512-wide FFN, GQA 2, written here with our `GgufWriter` from a seeded
//! generator) quantized to each file type in the fixture must give the same tensors, byte for
//! byte, and the same whole file (header, metadata order, tensor order, padding) as llama.cpp's
//! `llama_model_quantize` on the same input file.
//!
//! Fixture: `tests/fixtures/quantize_data.json` (FNV-1a-64 hashes), produced by
//! ```text
//! cargo test -p rocmforge-model --test quantize_data -- --ignored write_synthetic_input
//! /work/venv/bin/python scripts/fixtures/quantize_reference.py data target/quantize_synthetic_f32.gguf
//! ```
//! The input file's own hash is in the fixture too, so a changed generator fails loudly.

use std::path::{Path, PathBuf};

use rocmforge_model::gguf::{GgufFile, GgufValue, GgufWriter};
use rocmforge_model::quantize::{quantize_file, FileType, QuantizeOptions};
use rocmforge_quant::GgmlType;
use serde_json::Value;

const N_EMBD: u64 = 256;
const N_FF: u64 = 512;
const N_LAYER: u64 = 2;
const N_HEAD: u64 = 4;
const N_HEAD_KV: u64 = 2;
const N_VOCAB: u64 = 64;

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    format!("{h:016x}")
}

/// splitmix64: a tiny seeded generator with the same output on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1), exactly representable (24 random bits).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32) / (1u64 << 23) as f32 - 1.0
    }
}

/// Weights with per-row scales and sparse outliers, so the k-quant scale search has work to do.
fn weights(seed: u64, ne0: u64, ne1: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    let mut v = Vec::with_capacity((ne0 * ne1) as usize);
    for row in 0..ne1 {
        let scale = 0.02 * (1 + row % 7) as f32;
        for _ in 0..ne0 {
            let mut x = rng.uniform() * scale;
            if rng.next().is_multiple_of(97) {
                x *= 8.0;
            }
            v.push(x);
        }
    }
    v
}

fn norm(seed: u64, n: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    (0..n).map(|_| 1.0 + 0.1 * rng.uniform()).collect()
}

/// The synthetic model: names and shapes of a llama GGUF, tensors in the order a converter writes.
fn synthetic_tensors() -> Vec<(String, Vec<u64>, Vec<f32>)> {
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![N_EMBD, N_VOCAB], weights(1, N_EMBD, N_VOCAB)),
        ("output_norm.weight".to_string(), vec![N_EMBD], norm(2, N_EMBD)),
        ("output.weight".to_string(), vec![N_EMBD, N_VOCAB], weights(3, N_EMBD, N_VOCAB)),
    ];
    let n_embd_kv = N_EMBD / N_HEAD * N_HEAD_KV;
    for il in 0..N_LAYER {
        let s = 100 * (il + 1);
        let mut add = |name: &str, dims: Vec<u64>, data: Vec<f32>| {
            t.push((format!("blk.{il}.{name}"), dims, data));
        };
        add("attn_norm.weight", vec![N_EMBD], norm(s, N_EMBD));
        add("attn_q.weight", vec![N_EMBD, N_EMBD], weights(s + 1, N_EMBD, N_EMBD));
        add("attn_k.weight", vec![N_EMBD, n_embd_kv], weights(s + 2, N_EMBD, n_embd_kv));
        add("attn_v.weight", vec![N_EMBD, n_embd_kv], weights(s + 3, N_EMBD, n_embd_kv));
        add("attn_output.weight", vec![N_EMBD, N_EMBD], weights(s + 4, N_EMBD, N_EMBD));
        add("ffn_norm.weight", vec![N_EMBD], norm(s + 5, N_EMBD));
        add("ffn_gate.weight", vec![N_EMBD, N_FF], weights(s + 6, N_EMBD, N_FF));
        add("ffn_up.weight", vec![N_EMBD, N_FF], weights(s + 7, N_EMBD, N_FF));
        add("ffn_down.weight", vec![N_FF, N_EMBD], weights(s + 8, N_FF, N_EMBD));
    }
    t
}

fn write_input(path: &Path) {
    let mut w = GgufWriter::new();
    let s = |x: &str| GgufValue::Str(x.into());
    w.set("general.architecture", s("llama"));
    w.set("general.name", s("rocmforge synthetic quantizer test"));
    w.set("general.file_type", GgufValue::U32(0));
    w.set("llama.block_count", GgufValue::U32(N_LAYER as u32));
    w.set("llama.context_length", GgufValue::U32(256));
    w.set("llama.embedding_length", GgufValue::U32(N_EMBD as u32));
    w.set("llama.feed_forward_length", GgufValue::U32(N_FF as u32));
    w.set("llama.attention.head_count", GgufValue::U32(N_HEAD as u32));
    w.set("llama.attention.head_count_kv", GgufValue::U32(N_HEAD_KV as u32));
    w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5));
    w.set("llama.rope.freq_base", GgufValue::F32(10000.0));
    w.set("llama.vocab_size", GgufValue::U32(N_VOCAB as u32));
    let tensors = synthetic_tensors();
    for (name, dims, _) in &tensors {
        w.add_tensor_info(name.clone(), dims.clone(), GgmlType::F32).unwrap();
    }
    w.write_file(path, |i| Ok(tensors[i].2.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())).unwrap();
}

fn fixture() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quantize_data.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// Writes the input the fixture script hands to llama.cpp (see the module docs).
#[test]
#[ignore]
fn write_synthetic_input() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/quantize_synthetic_f32.gguf");
    write_input(&p);
    eprintln!("wrote {}", p.display());
}

#[test]
fn quantized_bytes_match_llama_cpp() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.gguf");
    write_input(&input);
    let in_bytes = std::fs::read(&input).unwrap();
    assert_eq!(in_bytes.len() as u64, fx["input_bytes"].as_u64().unwrap(), "input size");
    assert_eq!(fnv1a64(&in_bytes), fx["input_fnv1a64"].as_str().unwrap(), "input file changed");
    let ftypes = fx["ftypes"].as_object().unwrap();
    assert!(ftypes.len() >= 2);
    let mut failures = Vec::new();
    for (ft_name, want) in ftypes {
        let ftype = FileType::from_name(ft_name).unwrap();
        let out = dir.path().join(format!("out-{ft_name}.gguf"));
        let mut opts = QuantizeOptions::new(ftype);
        opts.n_threads = 2;
        let report = quantize_file(&input, &out, &opts, &|_, _, _| {}).unwrap();
        let out_bytes = std::fs::read(&out).unwrap();
        let file = GgufFile::open(&out).unwrap();
        let want_tensors = want["tensors"].as_array().unwrap();
        assert_eq!(file.tensors().len(), want_tensors.len(), "{ft_name}: tensor count");
        assert_eq!(report.n_tensors, want_tensors.len());
        let mut matching = 0;
        for (t, w) in file.tensors().iter().zip(want_tensors) {
            let ok = t.name == w["name"].as_str().unwrap()
                && t.ty.name() == w["type"].as_str().unwrap()
                && t.n_bytes == w["n_bytes"].as_u64().unwrap()
                && fnv1a64(file.tensor_data(t)) == w["fnv1a64"].as_str().unwrap();
            if ok {
                matching += 1;
            } else {
                failures.push(format!("{ft_name}: ours {} {} ({} bytes), llama.cpp {}", t.name, t.ty, t.n_bytes, w));
            }
        }
        let same_file =
            out_bytes.len() as u64 == want["file_bytes"].as_u64().unwrap() && fnv1a64(&out_bytes) == want["file_fnv1a64"].as_str().unwrap();
        if !same_file {
            failures.push(format!("{ft_name}: whole file differs from llama.cpp's"));
        }
        eprintln!("{ft_name}: {matching}/{} tensors byte-identical to llama.cpp, whole file identical: {same_file}", want_tensors.len());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
