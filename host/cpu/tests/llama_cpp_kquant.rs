//! K-quant matmuls against llama.cpp's own CPU backend, bit for bit.
//!
//! Reference: `tests/fixtures/llama_cpp_kquant_mm.json`, produced by
//! `/work/venv/bin/python host/cpu/tests/fixtures/llama_cpp_kquant_mm.py host/cpu/tests/fixtures/llama_cpp_kquant_mm.json`
//! (a one-op `mul_mat` graph run by llama-cpp-python 0.3.36's x86 `libggml-cpu.so`, so llama.cpp
//! picks its kernel as it does for a model (Q3_K, Q4_K, Q5_K, Q6_K): Q4_K with n_out % 8 == 0 repacked, otherwise
//! `ggml_vec_dot_*_q8_K` below 8 tokens and the tiled kernel from 8 tokens on).
//!
//! Every output, on every ISA path, must carry llama.cpp's exact bits.

use rocmforge_cpu::{matmul_ext, GgmlType, Isa, ThreadPool};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

fn f32s(s: &str) -> Vec<f32> {
    unhex(s).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn kquant_matmuls_are_llama_cpp_bits() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_cpp_kquant_mm.json");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("fixture")).expect("json");
    let pool = ThreadPool::new(2);
    let cases = j["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for c in cases {
        let t = match c["type"].as_str().unwrap() {
            "Q3_K" => GgmlType::Q3_K,
            "Q4_K" => GgmlType::Q4_K,
            "Q5_K" => GgmlType::Q5_K,
            "Q6_K" => GgmlType::Q6_K,
            other => panic!("fixture names unknown type {other}"),
        };
        let (n_out, k, n_tok) =
            (c["n_out"].as_u64().unwrap() as usize, c["k"].as_u64().unwrap() as usize, c["n_tokens"].as_u64().unwrap() as usize);
        let w = unhex(c["weights"].as_str().unwrap());
        let x = f32s(c["x"].as_str().unwrap());
        let want = f32s(c["y"].as_str().unwrap());
        for isa in Isa::all_supported() {
            let mut y = vec![f32::NAN; n_tok * n_out];
            matmul_ext(&pool, isa, t, &w, n_out, k, &x, n_tok, None, &mut y).unwrap();
            let bad = y.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(
                bad,
                0,
                "{t} n_out {n_out} tokens {n_tok} repack {} {isa:?}: {bad}/{} outputs differ from llama.cpp",
                c["repack"],
                y.len()
            );
        }
        println!("{t} n_out {n_out} tokens {n_tok} repack {}: {} outputs bit-identical", c["repack"], n_tok * n_out);
    }
}
