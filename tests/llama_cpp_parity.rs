//! Greedy decoding of real models against llama.cpp: the same GGUF, the same prompt token ids,
//! 128 greedy tokens per prompt must be exactly llama.cpp's, and the logits at every position must
//! agree closely (compared at llama.cpp's top-16 ids; the largest difference is printed).
//!
//! References: `tests/fixtures/*.greedy.json`, produced by `scripts/fixtures/llama_cpp_greedy.py`
//! (llama-cpp-python 0.3.36, CPU); the command is recorded inside each fixture.

mod common;

use common::{argmax, model, repo, Runner};

struct Case {
    prompt_tokens: Vec<u32>,
    generated: Vec<u32>,
    top_logits: Vec<Vec<(u32, f32)>>,
}

fn load_fixture(name: &str) -> Vec<Case> {
    let p = repo().join("tests/fixtures").join(name);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("fixture")).expect("json");
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    j["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt_tokens: ids(&c["prompt_tokens"]),
            generated: ids(&c["generated"]),
            top_logits: c["top_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row.as_array().unwrap().iter().map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32)).collect())
                .collect(),
        })
        .collect()
}

/// Runs every case; returns (largest logit difference, first token mismatch if any).
fn check(model_file: &str, fixture: &str, max_logit_diff: f32) {
    let cases = load_fixture(fixture);
    let mut r = Runner::load(&model(model_file), 512);
    let mut worst = 0f32;
    let mut bad = 0usize;
    let mut diffs = Vec::new();
    for (ci, c) in cases.iter().enumerate() {
        r.reset();
        let n_vocab = r.n_vocab;
        let mut rows: Vec<Vec<f32>> = r.feed(&c.prompt_tokens, true).chunks(n_vocab).map(<[f32]>::to_vec).collect();
        let mut ours = Vec::new();
        for i in 0..c.generated.len() {
            let t = argmax(rows.last().unwrap());
            ours.push(t);
            if t != c.generated[i] {
                let want = &c.top_logits[c.prompt_tokens.len() - 1 + i];
                panic!(
                    "{model_file} case {ci}: token {i} is {t}, llama.cpp chose {} (llama.cpp top-3 {:?}; ours at those ids {:?})",
                    c.generated[i],
                    &want[..3],
                    want[..3].iter().map(|(id, _)| rows.last().unwrap()[*id as usize]).collect::<Vec<_>>()
                );
            }
            if i + 1 < c.generated.len() {
                rows.push(r.feed(&[t], false));
            }
        }
        assert_eq!(rows.len(), c.top_logits.len());
        for (pos, (row, want)) in rows.iter().zip(&c.top_logits).enumerate() {
            for &(id, v) in want {
                let d = (row[id as usize] - v).abs();
                if d > worst {
                    worst = d;
                }
                if d > max_logit_diff {
                    eprintln!("{model_file} case {ci} position {pos} token {id}: ours {} vs llama.cpp {v}", row[id as usize]);
                    bad += 1;
                }
                diffs.push(d);
            }
        }
    }
    diffs.sort_by(f32::total_cmp);
    let q = |f: f64| diffs[((diffs.len() - 1) as f64 * f) as usize];
    eprintln!(
        "{model_file}: {} cases × 128 tokens identical to llama.cpp; logit |diff| at llama.cpp's top-16: median {:.4}, p99 {:.4}, max {worst:.4}",
        cases.len(),
        q(0.5),
        q(0.99)
    );
    assert_eq!(bad, 0, "{bad} logits differ by more than {max_logit_diff}");
}

#[test]
fn smollm2_q4_1_greedy_matches_llama_cpp() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-q4_1.greedy.json", 0.25);
}
