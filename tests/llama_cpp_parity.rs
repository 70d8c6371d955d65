//! Greedy decoding of real models against llama.cpp: the same GGUF, the same prompt token ids,
//! 128 greedy tokens per prompt must be exactly llama.cpp's, and the logits at every position must
//! agree closely (compared at llama.cpp's top-16 ids; the largest difference is printed).
//!
//! References: `tests/fixtures/*.greedy.json`, produced by `scripts/fixtures/llama_cpp_greedy.py`
//! (llama-cpp-python 0.3.36, CPU); the command is recorded inside each fixture. The re-quantized
//! SmolLM2 files must hash to what llama.cpp's `llama-quantize` made from the same input
//! (`tests/fixtures/smollm2-requantized.llama-quantize.json`, `scripts/fixtures/llama_quantize_hashes.py`).
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

/// SHA-256 of llama.cpp's own `llama-quantize` output for SmolLM2 Q4_1 re-quantized to `ty`
/// (`tests/fixtures/smollm2-requantized.llama-quantize.json`, made by
/// `python3 scripts/fixtures/llama_quantize_hashes.py`).
fn llama_quantize_sha256(ty: &str) -> String {
    let p = repo().join("tests/fixtures/smollm2-requantized.llama-quantize.json");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let input = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(sha256_hex(&input), j["input_sha256"].as_str().unwrap(), "{} is not the file llama-quantize was run on", input.display());
    j["outputs"][ty]["sha256"].as_str().unwrap_or_else(|| panic!("{ty} missing from {}", p.display())).to_string()
}

/// The same prompts through SmolLM2 re-quantized by `rocmforge quantize`: the file must be
/// byte-identical to `llama-quantize`'s (hash recorded by its generator), the greedy reference
/// must have been made on those same bytes, and the file must decode like llama.cpp.
fn requantized(ty: &str, max_logit_diff: f32) {
    let fixture = format!("smollm2-{}.greedy.json", ty.to_lowercase());
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(repo().join("tests/fixtures").join(&fixture)).unwrap()).unwrap();
    let want = llama_quantize_sha256(ty);
    assert_eq!(j["model_sha256"].as_str().unwrap(), want, "{fixture} was not made on llama-quantize's {ty} file");
    let dir = std::env::temp_dir().join(format!("rf-requant-{}-{ty}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("smollm2-{ty}.gguf"));
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
        .args(["quantize", model("SmolLM2-135M-Instruct.Q4_1.gguf").to_str().unwrap(), out.to_str().unwrap(), ty, "--allow-requantize"])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert_eq!(sha256_hex(&out), want, "{ty}: our quantized file differs from llama-quantize's");
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
