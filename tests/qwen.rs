//! The Qwen plugin (`plugins/qwen`: GGUF `qwen2`/`qwen3`, HF `Qwen2ForCausalLM`/`Qwen3ForCausalLM`).
//!
//! - A real model against llama.cpp: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (`scripts/get-models.sh
//!   .cache/models qwen05b`, also fetched by `scripts/fetch-test-data.sh`), greedy tokens and
//!   top-16 logits per position from `tests/fixtures/qwen2.5-coder-0.5b-q4_k_m.greedy.json`, made by
//!   `/work/venv/bin/python scripts/fixtures/llama_cpp_greedy.py
//!   .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf tests/fixtures/qwen2.5-coder-0.5b-q4_k_m.greedy.json 32`
//!   (llama-cpp-python 0.3.36, CPU).
//! - `rocmforge run` answers through the model's chat template exactly as llama.cpp continues the
//!   same rendered prompt greedily: `tests/fixtures/qwen2.5-coder-0.5b-chat.json`, made by
//!   `/work/venv/bin/python scripts/fixtures/llama_cpp_chat.py
//!   .cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf tests/fixtures/qwen2.5-coder-0.5b-chat.json`.
//! - Tiny random Qwen2 and Qwen3 files written here with GgufWriter (smoke tests without reference
//!   logits; the numbers against transformers are checked by `tests/hf_tiny.rs` on its
//!   `tests/fixtures/hf-tiny/qwen{2,3}` models). They pin what can be checked
//!   without one: the graph builds and runs; a batched prefill and token-by-token decode agree
//!   (KV cache, RoPE positions); the variant tensors (Qwen2's Q/K/V biases, Qwen3's q/k norms) are
//!   actually used; a Qwen3 file without `attn_q_norm` is an error naming the tensor.

mod common;

use std::path::{Path, PathBuf};

use common::{check, model, registry, Runner};
use rocmforge_model::gguf::{GgufValue, GgufWriter};
use rocmforge_quant::GgmlType;
use rocmforge_runtime::{build_graph, ModelSource};

// ---------------------------------------------------------------------------------------------
// Real model vs llama.cpp.
// ---------------------------------------------------------------------------------------------

/// Logit bound: the CPU backend reproduces llama.cpp's arithmetic for this Q4_K_M model bit for
/// bit (measured: max |diff| 0 over 160 greedy positions x top-16, all 160 tokens equal), so the
/// bound is `tests/llama_cpp_parity.rs`'s `EXACT`, a float-printing margin.
const EXACT: f32 = 1e-4;

#[test]
fn qwen25_coder_05b_q4_k_m_greedy_matches_llama_cpp() {
    check(&model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), "qwen2.5-coder-0.5b-q4_k_m.greedy.json", EXACT);
}

/// `rocmforge run MODEL QUESTION` prints llama.cpp's greedy answer ("The capital of France is Paris.").
#[test]
fn qwen25_coder_05b_run_answers_like_llama_cpp() {
    let fixture = common::repo().join("tests/fixtures/qwen2.5-coder-0.5b-chat.json");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&fixture).expect("chat fixture")).expect("json");
    let n = j["n_predict"].as_u64().expect("n_predict").to_string();
    let m = model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    for case in j["cases"].as_array().expect("cases") {
        let q = case["question"].as_str().expect("question");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
            .args(["run", m.to_str().expect("utf-8 path"), q, "--temperature", "0", "--repeat-penalty", "1", "-n", &n])
            .output()
            .expect("spawn rocmforge");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let want = format!("{}\n", case["text"].as_str().expect("text"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "question {q:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tiny random models.
// ---------------------------------------------------------------------------------------------

const N_VOCAB: usize = 64;
const N_EMBD: usize = 32;
const N_HEAD: usize = 4;
const N_HEAD_KV: usize = 2;
/// Qwen3 sets head_dim explicitly; 16 != N_EMBD / N_HEAD so a derived head_dim would be wrong.
const HEAD_DIM_QWEN3: usize = 16;
const N_FF: usize = 48;
const N_LAYER: usize = 2;

/// Deterministic pseudo-random numbers in [-scale, scale) (xorshift; no rand dependency).
struct Rng(u64);
impl Rng {
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// Tensors of a tiny model: (name, GGUF dims ne0 first, values). `skip` drops tensors by name;
/// `tweak` names a tensor whose values are replaced by a different random draw.
fn tiny_tensors(arch: &str, skip: &[&str], tweak: Option<&str>) -> Vec<(String, Vec<u64>, Vec<f32>)> {
    let hd = if arch == "qwen3" { HEAD_DIM_QWEN3 } else { N_EMBD / N_HEAD };
    let (nq, nkv) = ((N_HEAD * hd) as u64, (N_HEAD_KV * hd) as u64);
    let (e, ff, v) = (N_EMBD as u64, N_FF as u64, N_VOCAB as u64);
    let mut spec: Vec<(String, Vec<u64>, f32)> =
        vec![("token_embd.weight".into(), vec![e, v], 1.0), ("output_norm.weight".into(), vec![e], 0.0)];
    for il in 0..N_LAYER {
        let t = |s: &str| format!("blk.{il}.{s}");
        spec.push((t("attn_norm.weight"), vec![e], 0.0));
        spec.push((t("attn_q.weight"), vec![e, nq], 0.3));
        spec.push((t("attn_k.weight"), vec![e, nkv], 0.3));
        spec.push((t("attn_v.weight"), vec![e, nkv], 0.3));
        if arch == "qwen2" {
            spec.push((t("attn_q.bias"), vec![nq], 0.5));
            spec.push((t("attn_k.bias"), vec![nkv], 0.5));
            spec.push((t("attn_v.bias"), vec![nkv], 0.5));
        } else {
            spec.push((t("attn_q_norm.weight"), vec![hd as u64], 0.0));
            spec.push((t("attn_k_norm.weight"), vec![hd as u64], 0.0));
        }
        spec.push((t("attn_output.weight"), vec![nq, e], 0.3));
        spec.push((t("ffn_norm.weight"), vec![e], 0.0));
        spec.push((t("ffn_gate.weight"), vec![e, ff], 0.3));
        spec.push((t("ffn_up.weight"), vec![e, ff], 0.3));
        spec.push((t("ffn_down.weight"), vec![ff, e], 0.3));
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut alt = Rng(0x1234_5678_9abc_def1);
    spec.into_iter()
        .filter(|(name, _, _)| !skip.contains(&name.as_str()))
        .map(|(name, dims, scale)| {
            let n = dims.iter().product::<u64>() as usize;
            let r = if tweak == Some(name.as_str()) { &mut alt } else { &mut rng };
            // scale 0 marks a norm weight: 1 ± 0.5, away from 1 so a dropped norm weight shows.
            let vals = if scale == 0.0 { r.vec(n, 0.5).into_iter().map(|x| 1.0 + x).collect() } else { r.vec(n, scale) };
            (name, dims, vals)
        })
        .collect()
}

/// Writes a tiny `arch` model (tied embeddings: no output.weight) and returns its path.
fn write_tiny(arch: &str, tag: &str, skip: &[&str], tweak: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rf-qwen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut w = GgufWriter::new();
    w.set("general.architecture", GgufValue::Str(arch.into()));
    let k = |s: &str| format!("{arch}.{s}");
    w.set(k("block_count"), GgufValue::U32(N_LAYER as u32));
    w.set(k("context_length"), GgufValue::U32(256));
    w.set(k("embedding_length"), GgufValue::U32(N_EMBD as u32));
    w.set(k("feed_forward_length"), GgufValue::U32(N_FF as u32));
    w.set(k("attention.head_count"), GgufValue::U32(N_HEAD as u32));
    w.set(k("attention.head_count_kv"), GgufValue::U32(N_HEAD_KV as u32));
    w.set(k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-6));
    w.set(k("rope.freq_base"), GgufValue::F32(1e6));
    if arch == "qwen3" {
        w.set(k("attention.key_length"), GgufValue::U32(HEAD_DIM_QWEN3 as u32));
        w.set(k("attention.value_length"), GgufValue::U32(HEAD_DIM_QWEN3 as u32));
    }
    let tensors = tiny_tensors(arch, skip, tweak);
    for (name, dims, _) in &tensors {
        w.add_tensor_info(name.clone(), dims.clone(), GgmlType::F32).expect("tensor info");
    }
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let p = dir.join(format!("tiny-{arch}-{tag}.gguf"));
    w.write_file(&p, |i| Ok(bytes[i].as_slice())).expect("write gguf");
    p
}

const TOKENS: [u32; 7] = [1, 17, 42, 5, 63, 8, 30];

/// Logits of every position, from one batched prefill.
fn prefill(p: &Path) -> Vec<f32> {
    let mut r = Runner::load(p, 64);
    assert_eq!(r.n_vocab, N_VOCAB);
    r.feed(&TOKENS, true)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Builds and runs; prefill equals token-by-token decode; `variant` tensor changes the output.
fn smoke(arch: &str, variant: &str) {
    let p = write_tiny(arch, "base", &[], None);
    let all = prefill(&p);
    assert_eq!(all.len(), TOKENS.len() * N_VOCAB);
    assert!(all.iter().all(|x| x.is_finite()), "{arch}: non-finite logits");
    let mut r = Runner::load(&p, 64);
    let mut stepwise = Vec::new();
    for &t in &TOKENS {
        stepwise.extend(r.feed(&[t], false));
    }
    let d = max_diff(&all, &stepwise);
    assert!(d < 1e-3, "{arch}: prefill and step-by-step decode differ by {d}");
    let q = write_tiny(arch, "tweak", &[], Some(variant));
    let d = max_diff(&all, &prefill(&q));
    assert!(d > 1e-2, "{arch}: changing {variant} moved the logits by only {d}: the graph does not use it");
}

#[test]
fn tiny_qwen2_builds_runs_and_uses_qkv_biases() {
    smoke("qwen2", "blk.1.attn_k.bias");
    smoke("qwen2", "blk.0.attn_q.bias");
}

#[test]
fn tiny_qwen3_builds_runs_and_uses_qk_norms() {
    smoke("qwen3", "blk.0.attn_q_norm.weight");
    smoke("qwen3", "blk.1.attn_k_norm.weight");
}

#[test]
fn qwen3_without_attn_q_norm_names_the_missing_tensor() {
    let p = write_tiny("qwen3", "no-qnorm", &["blk.1.attn_q_norm.weight"], None);
    let reg = registry();
    let src = ModelSource::open(&p, &reg).expect("open model");
    let plugin = reg.for_gguf_arch(src.arch()).expect("a plugin serves qwen3 (build plugins/qwen)");
    let err = build_graph(plugin, &src).err().expect("a qwen3 file without attn_q_norm must not build").to_string();
    assert!(err.contains("missing tensor 'blk.1.attn_q_norm.weight' required by architecture 'qwen3'"), "{err}");
    // Qwen2 files have no q/k norms and need none.
    let p2 = write_tiny("qwen2", "plain", &[], None);
    let src2 = ModelSource::open(&p2, &reg).expect("open model");
    build_graph(reg.for_gguf_arch("qwen2").expect("qwen2 plugin"), &src2).expect("qwen2 builds without q/k norms");
}

#[test]
fn qwen_plugin_claims_dense_and_moe_qwen() {
    let reg = registry();
    // The MoE variants run on the graph's routed-experts ops (checked against transformers by
    // tests/hf_tiny.rs with the qwen2moe / qwen3moe fixtures).
    for a in ["qwen2", "qwen3", "qwen2moe", "qwen3moe"] {
        assert_eq!(reg.for_gguf_arch(a).map(|p| p.name.as_str()).ok(), Some("qwen"), "no plugin serves {a}");
    }
}
