//! MXFP4 against gguf-py's NumPy implementation (`gguf.quants.MXFP4`), a third implementation of
//! ggml's block layout besides llama.cpp's C (checked in `llama_refs.rs`) and ours.
//!
//! Fixture: `tests/fixtures/mxfp4_gguf_py/`, written by
//! `/work/venv-kv/bin/python scripts/fixtures/mxfp4_gguf_py.py` (see its docstring).
//! - dequantize: 512 random blocks with every E8M0 exponent 0..=255 (subnormal scales at 0 and 1,
//!   and 255, which ggml reads as 2^127 so the largest nibbles overflow to inf): bit-identical.
//! - quantize: blocks at scales 1e-39 (exponent below E8M0's range: ggml wraps it) to 1e30, ties
//!   halfway between E2M1 levels, zero and negative-zero blocks: byte-identical.

use rocmforge_quant::{dequantize_to_vec, quantize_to_vec, GgmlType};

fn read(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mxfp4_gguf_py").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn dequantize_is_bitwise_gguf_py_for_every_exponent() {
    let q = read("blocks.bin");
    let want = f32s(&read("blocks.f32"));
    assert_eq!(q.len() / 17 * 32, want.len());
    let exps: std::collections::HashSet<u8> = q.chunks_exact(17).map(|b| b[0]).collect();
    assert_eq!(exps.len(), 256, "fixture covers every exponent");
    let got = dequantize_to_vec(GgmlType::MXFP4, &q, want.len()).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "block {} (e = {}) element {}: {g} vs gguf-py {w}", i / 32, q[i / 32 * 17], i % 32);
    }
}

#[test]
fn quantize_is_byte_identical_to_gguf_py() {
    let x = f32s(&read("input.f32"));
    let want = read("quant.bin");
    let got = quantize_to_vec(GgmlType::MXFP4, &x).unwrap();
    assert_eq!(got.len(), want.len());
    for (b, (g, w)) in got.chunks_exact(17).zip(want.chunks_exact(17)).enumerate() {
        assert_eq!(g, w, "block {b} (amax {:e})", x[b * 32..b * 32 + 32].iter().fold(0f32, |a, v| a.max(v.abs())));
    }
}
