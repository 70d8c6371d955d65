//! The Gemma plugin end to end on the real Gemma-3-270M (Q4_K_M, gemma3 architecture: sliding-window
//! and global layers, per-head q/k norms, two RoPE bases, GeGLU, scaled embeddings) against
//! llama.cpp.
//!
//! Reference: `tests/fixtures/gemma3-270m-q4_k_m.greedy.json`, produced by
//! `/work/venv/bin/python scripts/fixtures/llama_cpp_greedy.py .cache/models/gemma-3-270m-q4_k_m.gguf tests/fixtures/gemma3-270m-q4_k_m.greedy.json 64`
//! (llama-cpp-python 0.3.36, CPU; the command is recorded inside the fixture): 5 prompts, 64 greedy
//! tokens each, llama.cpp's top-16 logits at every position.
//!
//! Two tests: a strict one (greedy tokens equal to llama.cpp's, logits within 1.0); and a
//! statistical one that catches graph errors: with llama.cpp's tokens fed in one batch, our argmax
//! must agree at ≥ 97% of positions and the per-position largest logit difference must stay small
//! (measured: median 0.34, p90 0.68; using the global RoPE base in local layers gives median 2.08,
//! p90 4.39 and fails). Not yet bit-exact: the Q4_K/Q6_K/Q5_0/Q8_0 matmuls and GELU are llama.cpp's
//! bits, some other op of the Gemma graph is not.

mod common;

use common::{argmax, model, registry, repo, Runner};

const FIXTURE: &str = "gemma3-270m-q4_k_m.greedy.json";
const MODEL: &str = "gemma-3-270m-q4_k_m.gguf";

struct Case {
    prompt_tokens: Vec<u32>,
    generated: Vec<u32>,
    /// Per position: llama.cpp's top-16 (id, logit).
    top: Vec<Vec<(u32, f32)>>,
}

fn load_fixture() -> Vec<Case> {
    let p = repo().join("tests/fixtures").join(FIXTURE);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("fixture")).expect("json");
    let ids = |v: &serde_json::Value| v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect::<Vec<_>>();
    let cases = j["cases"].as_array().expect("cases");
    cases
        .iter()
        .map(|c| Case {
            prompt_tokens: ids(&c["prompt_tokens"]),
            generated: ids(&c["generated"]),
            top: c["top_logits"]
                .as_array()
                .expect("top_logits")
                .iter()
                .map(|row| {
                    row.as_array()
                        .expect("row")
                        .iter()
                        .map(|e| (e[0].as_u64().expect("id") as u32, e[1].as_f64().expect("v") as f32))
                        .collect()
                })
                .collect(),
        })
        .collect()
}

fn max_diff(row: &[f32], want: &[(u32, f32)]) -> f32 {
    want.iter().map(|&(id, v)| (row[id as usize] - v).abs()).fold(0.0, f32::max)
}

/// llama.cpp's tokens (prompt + generated) fed as one batch; our logits at every position compared
/// with llama.cpp's top-16.
#[test]
fn gemma3_270m_logits_track_llama_cpp() {
    let cases = load_fixture();
    let mut r = Runner::load(&model(MODEL), 512);
    let (mut agree, mut n) = (0usize, 0usize);
    let mut diffs = Vec::new();
    for c in &cases {
        r.reset();
        let mut toks = c.prompt_tokens.clone();
        toks.extend_from_slice(&c.generated[..c.generated.len() - 1]);
        assert_eq!(toks.len(), c.top.len(), "fixture positions");
        let out = r.feed(&toks, true);
        for (row, want) in out.chunks_exact(r.n_vocab).zip(&c.top) {
            agree += usize::from(argmax(row) == want[0].0);
            n += 1;
            diffs.push(max_diff(row, want));
        }
    }
    diffs.sort_by(f32::total_cmp);
    let q = |f: f64| diffs[((diffs.len() - 1) as f64 * f) as usize];
    let (median, p90, max) = (q(0.5), q(0.9), diffs[diffs.len() - 1]);
    eprintln!("{MODEL}: argmax equal to llama.cpp's at {agree}/{n} positions; per-position max |logit diff| (top-16): median {median:.4}, p90 {p90:.4}, max {max:.4}");
    assert!(agree * 100 >= n * 97, "argmax agrees with llama.cpp at only {agree}/{n} positions");
    assert!(median <= 0.8 && p90 <= 1.5, "logits drift from llama.cpp's: median {median}, p90 {p90}");
}

/// Greedy decoding token by token: tokens must be llama.cpp's up to the end of each case or up to
/// a near-tie of llama.cpp's own top two (margin < 0.3); logits within 1.0 everywhere compared.
#[test]
fn gemma3_270m_greedy_matches_llama_cpp() {
    let cases = load_fixture();
    let mut r = Runner::load(&model(MODEL), 512);
    for (ci, c) in cases.iter().enumerate() {
        r.reset();
        let mut rows: Vec<Vec<f32>> = r.feed(&c.prompt_tokens, true).chunks(r.n_vocab).map(<[f32]>::to_vec).collect();
        for i in 0..c.generated.len() {
            let last = rows.last().expect("row");
            let want = &c.top[c.prompt_tokens.len() - 1 + i];
            let t = argmax(last);
            if t != c.generated[i] {
                let margin = want[0].1 - want[1].1;
                assert!(margin < 0.3, "case {ci}: token {i} is {t}, llama.cpp chose {} with a margin of {margin:.3}", c.generated[i]);
                break;
            }
            if i + 1 < c.generated.len() {
                rows.push(r.feed(&[c.generated[i]], false));
            }
        }
        for (pos, (row, want)) in rows.iter().zip(&c.top).enumerate() {
            let d = max_diff(row, want);
            assert!(d <= 1.0, "case {ci} position {pos}: logits differ from llama.cpp's by {d}");
        }
    }
}

/// The plugin registers and claims the Gemma architectures, GGUF and Hugging Face names.
#[test]
fn gemma_plugin_claims_its_architectures() {
    let reg = registry();
    for a in ["gemma", "gemma2", "gemma3"] {
        let p = reg.for_gguf_arch(a).unwrap_or_else(|e| panic!("GGUF architecture {a}: {e}"));
        assert_eq!(p.name, "gemma");
    }
    for (hf, gguf) in [("GemmaForCausalLM", "gemma"), ("Gemma2ForCausalLM", "gemma2"), ("Gemma3ForCausalLM", "gemma3")] {
        let (_, arch) = reg.for_hf_arch(hf).unwrap_or_else(|e| panic!("{hf}: {e}"));
        assert_eq!(arch, gguf);
    }
}
