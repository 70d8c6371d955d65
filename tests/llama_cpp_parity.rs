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

/// Greedy decodes may only part from llama.cpp's where llama.cpp itself nearly tied: its top two
/// logits closer than this (our logits differ from llama.cpp's by float rounding of the order of
/// 0.1–0.5, see the printed statistics). Anywhere else a different token fails the test.
const TIE_MARGIN: f32 = 0.3;

/// Runs every case: tokens must equal llama.cpp's up to the end or up to a near-tie (then the rest
/// of that case is not compared); logits at llama.cpp's top-16 ids must agree within `max_logit_diff`.
fn check(model_path: &std::path::Path, fixture: &str, max_logit_diff: f32) {
    let name = model_path.file_name().unwrap().to_string_lossy().into_owned();
    let cases = load_fixture(fixture);
    let mut r = Runner::load(model_path, 512);
    let mut diffs = Vec::new();
    let (mut matched, mut total, mut full) = (0usize, 0usize, 0usize);
    for (ci, c) in cases.iter().enumerate() {
        r.reset();
        let n_vocab = r.n_vocab;
        let mut rows: Vec<Vec<f32>> = r.feed(&c.prompt_tokens, true).chunks(n_vocab).map(<[f32]>::to_vec).collect();
        total += c.generated.len();
        let mut forked = false;
        for i in 0..c.generated.len() {
            let t = argmax(rows.last().unwrap());
            let want = &c.top_logits[c.prompt_tokens.len() - 1 + i];
            if t != c.generated[i] {
                let margin = want[0].1 - want[1].1;
                assert!(
                    margin < TIE_MARGIN,
                    "{name} case {ci}: token {i} is {t}, llama.cpp chose {} with a margin of {margin:.3} (llama.cpp top-3 {:?}; ours at those ids {:?})",
                    c.generated[i],
                    &want[..3],
                    want[..3].iter().map(|(id, _)| rows.last().unwrap()[*id as usize]).collect::<Vec<_>>()
                );
                eprintln!("{name} case {ci}: parts from llama.cpp at token {i}, a near-tie (llama.cpp margin {margin:.3})");
                forked = true;
                break;
            }
            matched += 1;
            if i + 1 < c.generated.len() {
                rows.push(r.feed(&[c.generated[i]], false));
            }
        }
        full += usize::from(!forked);
        for (pos, (row, want)) in rows.iter().zip(&c.top_logits).enumerate() {
            for &(id, v) in want {
                let d = (row[id as usize] - v).abs();
                assert!(d <= max_logit_diff, "{name} case {ci} position {pos} token {id}: ours {} vs llama.cpp {v}", row[id as usize]);
                diffs.push(d);
            }
        }
    }
    diffs.sort_by(f32::total_cmp);
    let q = |f: f64| diffs[((diffs.len() - 1) as f64 * f) as usize];
    eprintln!(
        "{name}: {matched}/{total} greedy tokens equal to llama.cpp ({full}/{} cases in full); logit |diff| at llama.cpp's top-16: median {:.4}, p99 {:.4}, max {:.4}",
        cases.len(),
        q(0.5),
        q(0.99),
        diffs[diffs.len() - 1]
    );
}

#[test]
#[ignore = "our activation quantization (one f32 scale per 32) differs from llama.cpp's Q8_0/Q8_1 (f16 scales) and Q8_K (per 256), moving logits by up to ~1; see issue 3"]
fn smollm2_q4_1_greedy_matches_llama_cpp() {
    check(&model("SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2-q4_1.greedy.json", 1.0);
}

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The same prompts through SmolLM2 re-quantized by `rocmforge quantize`: the file must be
/// byte-identical to the one llama.cpp produced the reference with, then decode like llama.cpp.
fn requantized(ty: &str) {
    let fixture = format!("smollm2-{}.greedy.json", ty.to_lowercase());
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(repo().join("tests/fixtures").join(&fixture)).unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("rf-requant-{}-{ty}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("smollm2-{ty}.gguf"));
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
        .args(["quantize", model("SmolLM2-135M-Instruct.Q4_1.gguf").to_str().unwrap(), out.to_str().unwrap(), ty, "--allow-requantize"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(sha256_hex(&out), j["model_sha256"].as_str().unwrap(), "{ty}: our quantized file differs from the one llama.cpp ran");
    check(&out, &fixture, 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "our activation quantization (one f32 scale per 32) differs from llama.cpp's Q8_0/Q8_1 (f16 scales) and Q8_K (per 256), moving logits by up to ~1; see issue 3"]
fn smollm2_requantized_q8_0() {
    requantized("Q8_0");
}

#[test]
#[ignore = "our activation quantization (one f32 scale per 32) differs from llama.cpp's Q8_0/Q8_1 (f16 scales) and Q8_K (per 256), moving logits by up to ~1; see issue 3"]
fn smollm2_requantized_q4_k_m() {
    requantized("Q4_K_M");
}

#[test]
#[ignore = "our activation quantization (one f32 scale per 32) differs from llama.cpp's Q8_0/Q8_1 (f16 scales) and Q8_K (per 256), moving logits by up to ~1; see issue 3"]
fn smollm2_requantized_q6_k() {
    requantized("Q6_K");
}

#[test]
fn smollm2_requantized_f16() {
    requantized("F16");
}
