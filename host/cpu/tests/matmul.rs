//! Quantized and dense matmul against f64 references, every weight type, every ISA path.
//!
//! For each type: random W quantized with `rocmforge_quant::quantize`, random x.
//! - tight: reference = dequantize(W) (rocmforge_quant, independent of our unpacker) times x as
//!   `quantize_activations` quantizes it (llama.cpp's Q8_0 / Q8_1 / Q8_K, checked byte for byte
//!   against llama.cpp in `llama_cpp_act.rs`), in f64; for Q4_1/Q5_1 the minimum term uses the
//!   Q8_1 block sum `s` as llama.cpp does. Only the summation order differs, so
//!   |y - ref| <= 2e-5 * sum_k |w_k x_k| per output.
//! - loose: reference = full-precision f32 W and x in f64; the relative L2 error is bounded per
//!   type by the weight format's precision (bounds in `loose_bound`, about 2x what
//!   `measured_loose_errors_are_reported` prints; a broken scale or bit layout gives ~1 or
//!   more; small cases (1 token x 37 rows) scatter by ~30% around the measured value).
//! - every SIMD path equals the scalar path bit for bit (one summation order everywhere).
//!
//! n_tokens 1, 3, 17, 64; n_out = 37 (not a multiple of the 4-row tile); k with and without padding.
//!
//! `random_blocks_every_isa_equals_scalar`: weights as random block bytes (every quant bit
//! pattern, e.g. Q8_0's -128, which `quantize` never writes) with sane random scales, ragged
//! shapes (1 to 13 rows, 1 to 67 tokens, one-block rows with padding): every ISA path (AVX2 /
//! AVX-512 on x86, NEON with and without `sdot` on AArch64) equals the scalar path bit for bit
//! and the f64 reference within the tight bound.

mod common;

use common::{rel_l2, Rng};
use rocmforge_cpu::{matmul_ext, quantize_activations, GgmlType, Isa, ThreadPool};
use rocmforge_quant::{dequantize_to_vec, f16_to_f32, quantize_to_vec};

const QUANT_TYPES: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
];

/// Relative L2 bound against full precision (W quantization noise dominates; x adds ~0.5%).
fn loose_bound(ty: GgmlType) -> f64 {
    use GgmlType::*;
    match ty {
        Q8_0 => 0.02,
        Q8_K => 0.04, // one scale per 256: the 8x outliers cost more than in Q8_0
        Q6_K => 0.06,
        Q5_1 | Q5_K => 0.1,
        Q5_0 => 0.12,
        Q4_K => 0.19,
        Q4_1 | IQ4_XS => 0.22,
        IQ4_NL => 0.24,
        MXFP4 => 0.3,
        Q4_0 => 0.28,
        Q3_K => 0.4,
        Q2_K => 0.65,
        _ => 0.001,
    }
}

struct Case {
    w: Vec<f32>,
    wq: Vec<u8>,
    x: Vec<f32>,
}

fn make_case(rng: &mut Rng, ty: GgmlType, n_out: usize, k: usize, n_tokens: usize) -> Case {
    let mut w = Vec::with_capacity(n_out * k);
    for _ in 0..n_out {
        // Rows of different magnitude, as real weight matrices have.
        let s = 0.02 * (1.0 + 4.0 * rng.uniform());
        w.extend(rng.vec(k, s));
    }
    let wq = quantize_to_vec(ty, &w).expect("quantize");
    let x = rng.vec(n_tokens * k, 1.0);
    Case { w, wq, x }
}

/// x as the kernels consume it: dequantized values and, per block of 32, the Q8_1 sum `s`
/// (zero for other formats), decoded from llama.cpp's block bytes.
fn act_ref(ty: GgmlType, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (vt, b) = quantize_activations(ty, x).expect("quantize activations");
    let h = |at: usize| f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]])) as f64;
    let mut xd = Vec::with_capacity(x.len());
    let mut s = vec![0f64; x.len() / 32];
    match vt {
        GgmlType::Q8_K => {
            for blk in b.chunks_exact(292) {
                let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]) as f64;
                xd.extend(blk[4..260].iter().map(|&q| d * q as i8 as f64));
            }
        }
        GgmlType::Q8_1 => {
            for (i, blk) in b.chunks_exact(36).enumerate() {
                let d = h(i * 36);
                s[i] = h(i * 36 + 2);
                xd.extend(blk[4..].iter().map(|&q| d * q as i8 as f64));
            }
        }
        _ => {
            for (i, blk) in b.chunks_exact(34).enumerate() {
                let d = h(i * 34);
                xd.extend(blk[2..].iter().map(|&q| d * q as i8 as f64));
            }
        }
    }
    (xd, s)
}

/// The per-block minimum `m` of Q4_1 / Q5_1 rows (f16 at byte 2 of each block), else None.
fn block_mins(ty: GgmlType, wq: &[u8], n: usize) -> Option<Vec<f64>> {
    let ts = match ty {
        GgmlType::Q4_1 => 20,
        GgmlType::Q5_1 => 24,
        _ => return None,
    };
    Some((0..n / 32).map(|b| f16_to_f32(u16::from_le_bytes([wq[b * ts + 2], wq[b * ts + 3]])) as f64).collect())
}

/// f64 reference with dequantized W and x as the kernel quantizes it; also returns sum |w x|
/// per output.
fn tight_ref(ty: GgmlType, c: &Case, n_out: usize, k: usize, n_tokens: usize) -> (Vec<f64>, Vec<f64>) {
    let wd = dequantize_to_vec(ty, &c.wq, n_out * k).expect("dequantize");
    let mins = block_mins(ty, &c.wq, n_out * k);
    let mut y = vec![0f64; n_tokens * n_out];
    let mut l1 = vec![0f64; n_tokens * n_out];
    for t in 0..n_tokens {
        let (xd, xs) = act_ref(ty, &c.x[t * k..(t + 1) * k]);
        for r in 0..n_out {
            let (mut s, mut a) = (0f64, 0f64);
            for i in 0..k {
                // llama.cpp: d_w d_x sum(q_w q_x) + m * s, with s the f16 block sum of Q8_1.
                let m = mins.as_ref().map_or(0.0, |m| m[(r * k + i) / 32]);
                let p = (wd[r * k + i] as f64 - m) * xd[i];
                s += p;
                a += p.abs();
            }
            if let Some(m) = &mins {
                for b in 0..k / 32 {
                    let p = m[r * k / 32 + b] * xs[b];
                    s += p;
                    a += p.abs();
                }
            }
            y[t * n_out + r] = s;
            l1[t * n_out + r] = a;
        }
    }
    (y, l1)
}

fn full_ref(c: &Case, n_out: usize, k: usize, n_tokens: usize) -> Vec<f64> {
    let mut y = vec![0f64; n_tokens * n_out];
    for t in 0..n_tokens {
        for r in 0..n_out {
            y[t * n_out + r] = (0..k).map(|i| c.w[r * k + i] as f64 * c.x[t * k + i] as f64).sum();
        }
    }
    y
}

fn check_type(ty: GgmlType, k: usize, pool: &ThreadPool, seed: u64) {
    let n_out = 37;
    let mut rng = Rng::new(seed);
    for &n_tokens in &[1usize, 3, 17, 64] {
        let c = make_case(&mut rng, ty, n_out, k, n_tokens);
        let (yt, l1) = tight_ref(ty, &c, n_out, k, n_tokens);
        let yf = full_ref(&c, n_out, k, n_tokens);
        let mut scalar = vec![0f32; n_tokens * n_out];
        for isa in Isa::all_supported() {
            let mut y = vec![f32::NAN; n_tokens * n_out];
            matmul_ext(pool, isa, ty, &c.wq, n_out, k, &c.x, n_tokens, None, &mut y).expect("matmul");
            for i in 0..y.len() {
                let err = (y[i] as f64 - yt[i]).abs();
                assert!(
                    err <= 2e-5 * l1[i] + 1e-30,
                    "{ty} {isa:?} k={k} n_tokens={n_tokens} out {i}: {} vs {} (err {err:e}, bound {:e})",
                    y[i],
                    yt[i],
                    2e-5 * l1[i]
                );
            }
            let rel = rel_l2(&y, &yf);
            assert!(rel <= loose_bound(ty), "{ty} {isa:?} n_tokens={n_tokens}: rel L2 vs full precision {rel} > {}", loose_bound(ty));
            if isa == Isa::Scalar {
                scalar = y;
            } else {
                for i in 0..y.len() {
                    assert_eq!(y[i].to_bits(), scalar[i].to_bits(), "{ty} {isa:?} differs from scalar at {i}: {} vs {}", y[i], scalar[i]);
                }
            }
        }
    }
}

#[test]
fn quantized_types_match_f64_references() {
    let pool = ThreadPool::new(3);
    for (i, &ty) in QUANT_TYPES.iter().enumerate() {
        let bs = ty.block_size();
        // One k that needs padding to 64 and one that does not.
        let ks: Vec<usize> = if bs == 32 { vec![352, 512] } else { vec![768, 512] };
        for k in ks {
            check_type(ty, k, &pool, 1000 + i as u64 * 17 + k as u64);
        }
    }
}

#[test]
fn measured_loose_errors_are_reported() {
    // Prints the measured relative L2 errors (n_tokens 17) so the bounds above can be re-derived.
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(7);
    let mut worst = Vec::new();
    for &ty in QUANT_TYPES {
        let k = if ty.block_size() == 32 { 352 } else { 768 };
        let c = make_case(&mut rng, ty, 37, k, 17);
        let mut y = vec![0f32; 17 * 37];
        matmul_ext(&pool, Isa::detect(), ty, &c.wq, 37, k, &c.x, 17, None, &mut y).expect("matmul");
        let rel = rel_l2(&y, &full_ref(&c, 37, k, 17));
        println!("{ty:>7}: rel L2 vs f64 {rel:.4} (bound {})", loose_bound(ty));
        worst.push((ty, rel));
    }
    for (ty, rel) in worst {
        assert!(rel <= loose_bound(ty), "{ty}: {rel}");
    }
}

#[test]
fn dense_types_match_f64() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(99);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
        for &k in &[64usize, 77] {
            for &n_tokens in &[1usize, 3, 17, 64] {
                let n_out = 37;
                let w = rng.vec(n_out * k, 0.1);
                let wq = quantize_to_vec(ty, &w).expect("quantize");
                let wd = dequantize_to_vec(ty, &wq, n_out * k).expect("dequantize");
                let x = rng.vec(n_tokens * k, 1.0);
                // F16 / BF16 weights see f16 / bf16 activations (ggml's vec_dot_type).
                let (_, xb) = quantize_activations(ty, &x).expect("round activations");
                let xr = dequantize_to_vec(ty, &xb, x.len()).expect("decode activations");
                let bias = rng.vec(n_out, 1.0);
                for isa in Isa::all_supported() {
                    let mut y = vec![f32::NAN; n_tokens * n_out];
                    matmul_ext(&pool, isa, ty, &wq, n_out, k, &x, n_tokens, Some(&bias), &mut y).expect("matmul");
                    for t in 0..n_tokens {
                        for r in 0..n_out {
                            let (mut s, mut a) = (bias[r] as f64, bias[r].abs() as f64);
                            for i in 0..k {
                                let p = wd[r * k + i] as f64 * xr[t * k + i] as f64;
                                s += p;
                                a += p.abs();
                            }
                            let got = y[t * n_out + r] as f64;
                            assert!((got - s).abs() <= 1e-5 * a, "{ty} {isa:?} k={k} n_tokens={n_tokens} ({t},{r}): {got} vs {s}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bias_is_added_to_quantized_outputs() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(5);
    let c = make_case(&mut rng, GgmlType::Q4_1, 8, 64, 3);
    let bias = rng.vec(8, 1.0);
    let mut y0 = vec![0f32; 24];
    let mut y1 = vec![0f32; 24];
    matmul_ext(&pool, Isa::detect(), GgmlType::Q4_1, &c.wq, 8, 64, &c.x, 3, None, &mut y0).unwrap();
    matmul_ext(&pool, Isa::detect(), GgmlType::Q4_1, &c.wq, 8, 64, &c.x, 3, Some(&bias), &mut y1).unwrap();
    for i in 0..24 {
        assert!((y1[i] - y0[i] - bias[i % 8]).abs() < 1e-5);
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let pool = ThreadPool::new(1);
    let w = vec![0u8; 20 * 4];
    let x = vec![0f32; 32];
    let mut y = vec![0f32; 4];
    assert!(rocmforge_cpu::matmul(&pool, GgmlType::Q4_1, &w, 4, 32, &x, 1, &mut y).is_ok());
    assert!(rocmforge_cpu::matmul(&pool, GgmlType::Q4_1, &w[1..], 4, 32, &x, 1, &mut y).is_err());
    assert!(rocmforge_cpu::matmul(&pool, GgmlType::Q4_1, &w, 4, 33, &x, 1, &mut y).is_err());
    assert!(rocmforge_cpu::matmul(&pool, GgmlType::Q4_1, &w, 4, 32, &x, 2, &mut y).is_err());
    assert!(rocmforge_cpu::matmul(&pool, GgmlType::TQ1_0, &w, 4, 32, &x, 1, &mut y).is_err());
}

#[test]
fn get_rows_equals_dequantize() {
    let mut rng = Rng::new(11);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let row_len = 256;
        let n_rows = 10;
        let table_f = rng.vec(n_rows * row_len, 1.0);
        let table = quantize_to_vec(ty, &table_f).unwrap();
        let all = dequantize_to_vec(ty, &table, n_rows * row_len).unwrap();
        let ids = [3u32, 0, 9, 3];
        let mut out = vec![0f32; ids.len() * row_len];
        rocmforge_cpu::get_rows(ty, &table, row_len, &ids, &mut out).unwrap();
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(&out[i * row_len..(i + 1) * row_len], &all[id as usize * row_len..(id as usize + 1) * row_len], "{ty}");
        }
        let e = rocmforge_cpu::get_rows(ty, &table, row_len, &[10], &mut out[..row_len]);
        assert!(e.is_err(), "{ty}: id out of range must fail");
    }
}

#[test]
fn matmul_many_equals_separate_matmuls() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(77);
    let k = 576;
    for types in [
        vec![GgmlType::Q4_1, GgmlType::Q4_1, GgmlType::Q4_1],
        vec![GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::IQ4_NL],
        vec![GgmlType::Q8_0, GgmlType::Q4_1],
        vec![GgmlType::Q6_K, GgmlType::F16],
    ] {
        for &n_tokens in &[1usize, 3, 17] {
            let shapes: Vec<usize> = (0..types.len()).map(|i| [37usize, 192, 5][i % 3]).collect();
            let kk = if types.iter().any(|t| t.block_size() == 256) { 768 } else { k };
            let ws: Vec<Vec<u8>> =
                types.iter().zip(&shapes).map(|(&t, &n)| quantize_to_vec(t, &rng.vec(n * kk, 0.05)).expect("quantize")).collect();
            let biases: Vec<Vec<f32>> = shapes.iter().map(|&n| rng.vec(n, 1.0)).collect();
            let x = rng.vec(n_tokens * kk, 1.0);
            let mut want: Vec<Vec<f32>> = Vec::new();
            for i in 0..types.len() {
                let mut y = vec![f32::NAN; n_tokens * shapes[i]];
                let b = (i % 2 == 0).then_some(&biases[i][..]);
                rocmforge_cpu::matmul_bias(&pool, types[i], &ws[i], shapes[i], kk, &x, n_tokens, b, &mut y).expect("matmul");
                want.push(y);
            }
            let mut got: Vec<Vec<f32>> = shapes.iter().map(|&n| vec![f32::NAN; n_tokens * n]).collect();
            let mut outs: Vec<rocmforge_cpu::MatmulOut> = got
                .iter_mut()
                .enumerate()
                .map(|(i, y)| rocmforge_cpu::MatmulOut {
                    ty: types[i],
                    w: &ws[i],
                    n_out: shapes[i],
                    bias: (i % 2 == 0).then_some(&biases[i][..]),
                    y,
                })
                .collect();
            rocmforge_cpu::matmul_many(&pool, kk, &x, n_tokens, &mut outs).expect("matmul_many");
            for i in 0..types.len() {
                assert!(
                    got[i].iter().zip(&want[i]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{types:?} n_tokens {n_tokens}: output {i} differs"
                );
            }
        }
    }
}

/// Where each block of `ty` keeps its f16 scales (`d`, and `m` / `dmin`), so random bytes can be
/// given sane ones; Q8_K keeps an f32 `d` at 0.
fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[0],
    }
}

/// `n_blocks` blocks of random bytes whose scales are random f16 (f32 for Q8_K) in +-[0.002, 0.02]
/// (MXFP4: an E8M0 exponent giving 2^-10 .. 2^-5; extreme exponents have their own test).
fn random_blocks(rng: &mut Rng, ty: GgmlType, n_blocks: usize) -> Vec<u8> {
    let ts = ty.type_size();
    let mut b: Vec<u8> = (0..n_blocks * ts).map(|_| rng.next_u64() as u8).collect();
    if ty == GgmlType::MXFP4 {
        for blk in b.chunks_exact_mut(ts) {
            blk[0] = 118 + (rng.next_u64() % 6) as u8;
        }
        return b;
    }
    for blk in b.chunks_exact_mut(ts) {
        for &o in scale_offsets(ty) {
            let v = (0.002 + 0.018 * rng.uniform()) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
            if ty == GgmlType::Q8_K {
                blk[o..o + 4].copy_from_slice(&(v as f32).to_le_bytes());
            } else {
                blk[o..o + 2].copy_from_slice(&rocmforge_quant::f32_to_f16(v as f32).to_le_bytes());
            }
        }
    }
    b
}

#[test]
fn random_blocks_every_isa_equals_scalar() {
    let pool = ThreadPool::new(2);
    let isas = Isa::all_supported();
    assert_eq!(isas[0], Isa::Scalar);
    let mut rng = Rng::new(4242);
    let mut compared = 0usize;
    for &ty in QUANT_TYPES {
        let bs = ty.block_size();
        // One block (padded to 64), a few blocks with padding, and a longer row.
        let ks: &[usize] = if bs == 32 { &[32, 160, 512] } else { &[256, 768] };
        for &k in ks {
            // 8 rows: K-quants take llama.cpp's repacked-Q4_K order; the others the rest.
            for &n_out in &[1usize, 7, 8, 13] {
                let wq = random_blocks(&mut rng, ty, n_out * k / bs);
                for &n_tokens in &[1usize, 2, 3, 4, 5, 8, 9, 67] {
                    let c = Case { w: Vec::new(), wq: wq.clone(), x: rng.vec(n_tokens * k, 1.0) };
                    let (yt, l1) = tight_ref(ty, &c, n_out, k, n_tokens);
                    let mut scalar = Vec::new();
                    for &isa in &isas {
                        let mut y = vec![f32::NAN; n_tokens * n_out];
                        matmul_ext(&pool, isa, ty, &c.wq, n_out, k, &c.x, n_tokens, None, &mut y).expect("matmul");
                        for i in 0..y.len() {
                            let err = (y[i] as f64 - yt[i]).abs();
                            assert!(
                                err <= 2e-5 * l1[i] + 1e-30,
                                "{ty} {isa:?} k={k} n_out={n_out} n_tokens={n_tokens} out {i}: {} vs f64 {} (err {err:e})",
                                y[i],
                                yt[i]
                            );
                        }
                        if isa == Isa::Scalar {
                            scalar = y;
                        } else {
                            let bad = (0..y.len()).filter(|&i| y[i].to_bits() != scalar[i].to_bits()).count();
                            assert_eq!(bad, 0, "{ty} {isa:?} k={k} n_out={n_out} n_tokens={n_tokens}: {bad} outputs differ from scalar");
                            compared += y.len();
                        }
                    }
                }
            }
        }
    }
    // A machine with only the scalar path compares nothing; every CI machine has SIMD.
    assert!(isas.len() == 1 || compared > 0);
    println!("ISAs {isas:?}: {compared} SIMD outputs bit-identical to scalar");
}

/// MXFP4's E8M0 scale spans 2^-128 .. 2^127, far outside f16's range: rows with one exponent
/// each, from the subnormal 2^-128 (e = 0) and 2^-127 (e = 1) up to 2^72 (e = 200; beyond about
/// e = 230 the outputs overflow f32), every nibble pattern, against the f64 dequantize-then-matmul
/// reference (tight bound) on every ISA, with the SIMD paths equal to the scalar one.
#[test]
fn mxfp4_extreme_exponents_match_f64() {
    let ty = GgmlType::MXFP4;
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(31337);
    let exps: [u8; 9] = [0, 1, 2, 3, 100, 127, 128, 150, 200];
    let (n_out, k) = (exps.len(), 160);
    let mut wq = random_blocks(&mut rng, ty, n_out * k / 32);
    for (r, &e) in exps.iter().enumerate() {
        for b in 0..k / 32 {
            wq[(r * k / 32 + b) * 17] = e;
        }
    }
    for &n_tokens in &[1usize, 5] {
        let c = Case { w: Vec::new(), wq: wq.clone(), x: rng.vec(n_tokens * k, 1.0) };
        let (yt, l1) = tight_ref(ty, &c, n_out, k, n_tokens);
        let mut scalar = Vec::new();
        for isa in Isa::all_supported() {
            let mut y = vec![f32::NAN; n_tokens * n_out];
            matmul_ext(&pool, isa, ty, &c.wq, n_out, k, &c.x, n_tokens, None, &mut y).expect("matmul");
            for i in 0..y.len() {
                let err = (y[i] as f64 - yt[i]).abs();
                assert!(
                    y[i].is_finite() && err <= 2e-5 * l1[i],
                    "e={} {isa:?} out {i}: {} vs f64 {} (err {err:e})",
                    exps[i % n_out],
                    y[i],
                    yt[i]
                );
            }
            if isa == Isa::Scalar {
                scalar = y;
            } else {
                assert!(y.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} differs from scalar");
            }
        }
    }
}
