//! Activation quantization and quantized dot products against llama.cpp's own CPU library.
//!
//! Reference: `tests/fixtures/llama_cpp_act_quant.json`, produced by
//! `/work/venv/bin/python host/cpu/tests/fixtures/llama_cpp_act_quant.py host/cpu/tests/fixtures/llama_cpp_act_quant.json`
//! (ctypes calls into llama-cpp-python 0.3.36's x86 `libggml-cpu.so`: `quantize_row_q8_0/q8_1/q8_K`
//! and `ggml_vec_dot_*`, weights quantized by its `ggml_quantize_chunk`).
//!
//! - `quantize_activations` equals llama.cpp's `from_float` byte for byte (rows with exact .5
//!   products, zero blocks, negative extremes and +a/-a ties included).
//! - one matmul output equals llama.cpp's `vec_dot` bit for bit where our summation order is
//!   llama.cpp's (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q3_K, Q4_K, Q5_K, Q6_K), and within a few ulps of
//!   the sum of |terms| elsewhere (IQ4_NL: llama.cpp splits even and odd blocks over two
//!   accumulators; Q2_K, IQ4_XS: llama.cpp applies the sub-block scales in integer arithmetic).
//!   The other Q3_K..Q6_K kernels llama.cpp uses are checked in `llama_cpp_kquant.rs`.
//! - every ISA path, and the decode (1 token) and prefill (many tokens) paths, give the same bits.

use rocmforge_cpu::{matmul_ext, quantize_activations, GgmlType, Isa, ThreadPool};

fn fixture() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_cpp_act_quant.json");
    serde_json::from_slice(&std::fs::read(&p).expect("fixture")).expect("json")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

fn f32s(s: &str) -> Vec<f32> {
    unhex(s).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn ty(name: &str) -> GgmlType {
    match name {
        "Q4_0" => GgmlType::Q4_0,
        "Q4_1" => GgmlType::Q4_1,
        "Q5_0" => GgmlType::Q5_0,
        "Q5_1" => GgmlType::Q5_1,
        "Q8_0" => GgmlType::Q8_0,
        "IQ4_NL" => GgmlType::IQ4_NL,
        "Q2_K" => GgmlType::Q2_K,
        "Q3_K" => GgmlType::Q3_K,
        "Q4_K" => GgmlType::Q4_K,
        "Q5_K" => GgmlType::Q5_K,
        "Q6_K" => GgmlType::Q6_K,
        "IQ4_XS" => GgmlType::IQ4_XS,
        other => panic!("fixture names unknown type {other}"),
    }
}

#[test]
fn activation_quantization_is_llama_cpp_bytes() {
    let j = fixture();
    let xs: Vec<Vec<f32>> = j["x"].as_array().unwrap().iter().map(|v| f32s(v.as_str().unwrap())).collect();
    // A weight type of each activation format.
    let weight_of = [("Q8_0", GgmlType::Q8_0), ("Q8_1", GgmlType::Q4_1), ("Q8_K", GgmlType::Q6_K)];
    for (i, (x, acts)) in xs.iter().zip(j["acts"].as_array().unwrap()).enumerate() {
        for (fmt, wty) in weight_of {
            let (vt, bytes) = quantize_activations(wty, x).expect("quantize");
            assert_eq!(vt.name(), fmt);
            let want = unhex(acts[fmt].as_str().unwrap());
            assert_eq!(bytes.len(), want.len(), "row {i} {fmt}: length");
            if let Some(at) = bytes.iter().zip(&want).position(|(a, b)| a != b) {
                panic!("row {i} {fmt}: byte {at} is {} but llama.cpp wrote {}", bytes[at], want[at]);
            }
        }
    }
}

#[test]
fn quantized_dots_match_llama_cpp_vec_dot() {
    let j = fixture();
    let k = j["k"].as_u64().unwrap() as usize;
    let xs: Vec<Vec<f32>> = j["x"].as_array().unwrap().iter().map(|v| f32s(v.as_str().unwrap())).collect();
    let n_x = xs.len();
    let x_all: Vec<f32> = xs.concat();
    let pool = ThreadPool::new(2);
    let mut report = Vec::new();
    for d in j["dots"].as_array().unwrap() {
        let t = ty(d["type"].as_str().unwrap());
        let n_rows = d["n_rows"].as_u64().unwrap() as usize;
        let w = unhex(d["weights"].as_str().unwrap());
        let want: Vec<Vec<f32>> = d["y"].as_array().unwrap().iter().map(|v| f32s(v.as_str().unwrap())).collect();
        // |w| * |x| per output, the scale of float rounding (from the dequantized operands).
        let wd = rocmforge_quant::dequantize_to_vec(t, &w, n_rows * k).unwrap();
        // Q3_K..Q6_K: 6 rows (not repacked by llama.cpp) and fewer than 8 tokens take
        // `ggml_vec_dot_q{3,4,5,6}_K_q8_K`'s order (see `kquant`).
        let exact = matches!(
            t,
            GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q8_0
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
        );
        let mut worst = 0f64;
        let mut reference: Option<Vec<f32>> = None;
        for isa in Isa::all_supported() {
            // Prefill path: all rows of x as one batch.
            let mut y_batch = vec![f32::NAN; n_x * n_rows];
            matmul_ext(&pool, isa, t, &w, n_rows, k, &x_all, n_x, None, &mut y_batch).unwrap();
            for (xi, x) in xs.iter().enumerate() {
                // Decode path: one token.
                let mut y = vec![f32::NAN; n_rows];
                matmul_ext(&pool, isa, t, &w, n_rows, k, x, 1, None, &mut y).unwrap();
                for r in 0..n_rows {
                    assert_eq!(
                        y[r].to_bits(),
                        y_batch[xi * n_rows + r].to_bits(),
                        "{t} {isa:?} x {xi} row {r}: decode {} vs prefill {}",
                        y[r],
                        y_batch[xi * n_rows + r]
                    );
                    let l1: f64 = (0..k).map(|i| (wd[r * k + i] as f64 * x[i] as f64).abs()).sum();
                    let err = (y[r] as f64 - want[xi][r] as f64).abs() / l1.max(1e-30);
                    worst = worst.max(err);
                    if exact {
                        assert_eq!(
                            y[r].to_bits(),
                            want[xi][r].to_bits(),
                            "{t} {isa:?} x {xi} row {r}: {} vs llama.cpp {}",
                            y[r],
                            want[xi][r]
                        );
                    } else {
                        assert!(
                            err <= 2.5e-7,
                            "{t} {isa:?} x {xi} row {r}: {} vs llama.cpp {} (err {err:e} of sum |w x|)",
                            y[r],
                            want[xi][r]
                        );
                    }
                }
            }
            match &reference {
                None => reference = Some(y_batch),
                Some(r0) => {
                    for (i, (a, b)) in y_batch.iter().zip(r0).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "{t} {isa:?} output {i} differs from the scalar path: {a} vs {b}");
                    }
                }
            }
        }
        report.push(format!("{t}: max |ours - llama.cpp| / sum|w x| = {worst:.2e}"));
    }
    println!("{}", report.join("\n"));
}
