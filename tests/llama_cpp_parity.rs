//! Greedy decoding of real models against llama.cpp: the same GGUF, the same prompt token ids,
//! 128 greedy tokens per prompt must be exactly llama.cpp's, and the logits at every position must
//! agree closely (compared at llama.cpp's top-16 ids; the largest difference is printed).
//!
//! References: `tests/fixtures/*.greedy.json`, produced by `scripts/fixtures/llama_cpp_greedy.py`
//! (llama-cpp-python 0.3.36, CPU); the command is recorded inside each fixture.
//!
//! Bounds. The CPU backend reproduces llama.cpp's x86 arithmetic bit for bit for F32-activation
//! ops, attention, Q8_0/Q8_1/Q8_K activations, the Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 dot products and the
//! Q4_K/Q6_K matmuls (each of llama.cpp's kernels: repacked Q4_K gemv/gemm, `vec_dot` below 8
//! tokens, the tiled kernel from 8 on), so the Q4_1, Q8_0, Q4_K_M and Q6_K models give llama.cpp's
//! logits exactly (bound `EXACT`, a float-printing margin). 8-bit activations turn any 1-ulp
//! difference into visible noise (an activation that lands on the other side of a rounding step
//! moves by a whole quantization step: 0.1-1.1 logits), which is why "close" is not enough. F16
//! uses llama.cpp's f16 activations but another dense summation order (continuous, no
//! amplification).

mod common;

use common::{check, model, repo};

#[test]
fn smollm2_q4_1_greedy_matches_llama_cpp() {
    check(&model("SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2-q4_1.greedy.json", EXACT);
}

/// Logit bound for models whose arithmetic is llama.cpp's bit for bit (measured: 0).
const EXACT: f32 = 1e-4;
/// Dense F16 (measured max 0.035).
const DENSE: f32 = 0.05;

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The same prompts through SmolLM2 re-quantized by `rocmforge quantize`: the file must be
/// byte-identical to the one llama.cpp produced the reference with, then decode like llama.cpp.
fn requantized(ty: &str, max_logit_diff: f32) {
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
    check(&out, &fixture, max_logit_diff);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn smollm2_requantized_q8_0() {
    requantized("Q8_0", EXACT);
}

#[test]
fn smollm2_requantized_q4_k_m() {
    requantized("Q4_K_M", EXACT);
}

#[test]
fn smollm2_requantized_q6_k() {
    requantized("Q6_K", EXACT);
}

#[test]
fn smollm2_requantized_f16() {
    requantized("F16", DENSE);
}
