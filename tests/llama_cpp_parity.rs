//! Greedy decoding of real models against llama.cpp: the same GGUF, the same prompt token ids,
//! 128 greedy tokens per prompt must be exactly llama.cpp's, and the logits at every position must
//! agree closely (compared at llama.cpp's top-16 ids; the largest difference is printed).
//!
//! References: `tests/fixtures/*.greedy.json`, produced by `scripts/fixtures/llama_cpp_greedy.py`
//! (llama-cpp-python 0.3.36, CPU); the command is recorded inside each fixture.

mod common;

use common::{check, model, repo};

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
