//! Kernel speed probes (ignored by default; they assert nothing about time).
//!
//! `cargo test --release -p rocmforge-cpu --test bench -- --ignored --nocapture`
//! (`ROCMFORGE_THREADS=n` sets the pool size, default 2; `BENCH_ISA=Avx512|Avx2|Scalar` one path,
//! `BENCH_TYPE=Q4_1`, `BENCH_TOKENS=1` one shape group)
//! Prints GFLOP/s (2 flops per multiply-add) and weight GB/s for the SmolLM2-135M shapes:
//! 576x1536 and 1536x576 Q4_1 matvecs, the 49152x576 Q8_0 output matvec, 512-token Q4_1
//! matmuls, and an estimate of matmul-only tokens/s for a whole SmolLM2-135M Q4_1 step.

mod common;

use std::time::Instant;

use common::Rng;
use rocmforge_cpu::{attention, matmul_ext, AttnParams, GgmlType, Isa, KvCache, ThreadPool};

fn weights(rng: &mut Rng, ty: GgmlType, n_out: usize, k: usize) -> Vec<u8> {
    rocmforge_quant::quantize_to_vec(ty, &rng.vec(n_out * k, 0.05)).expect("quantize")
}

/// Seconds per call (best of 5 batches).
#[allow(clippy::too_many_arguments)]
fn time(pool: &ThreadPool, isa: Isa, ty: GgmlType, w: &[u8], n_out: usize, k: usize, x: &[f32], n_tokens: usize) -> f64 {
    let mut y = vec![0f32; n_out * n_tokens];
    let work = (n_out * k * n_tokens) as f64;
    let iters = ((2e8 / work) as usize).clamp(1, 20000);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..iters {
            matmul_ext(pool, isa, ty, w, n_out, k, x, n_tokens, None, &mut y).expect("matmul");
        }
        best = best.min(t0.elapsed().as_secs_f64() / iters as f64);
    }
    best
}

#[test]
#[ignore]
fn bench_matmul_kernels() {
    let mut rng = Rng::new(1);
    let nth = std::env::var("ROCMFORGE_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let pool = ThreadPool::new(nth);
    println!("threads {nth}, best ISA {:?}", Isa::best_supported());
    let shapes: &[(GgmlType, usize, usize, usize)] = &[
        (GgmlType::Q4_1, 576, 1536, 1),
        (GgmlType::Q4_1, 1536, 576, 1),
        (GgmlType::Q8_0, 49152, 576, 1),
        (GgmlType::Q4_K, 576, 1536, 1),
        (GgmlType::Q6_K, 576, 1536, 1),
        (GgmlType::F16, 1536, 576, 1),
        (GgmlType::Q4_1, 576, 1536, 512),
        (GgmlType::Q4_1, 1536, 576, 512),
        (GgmlType::Q8_0, 1536, 576, 512),
        (GgmlType::Q4_K, 576, 1536, 512),
        (GgmlType::F16, 1536, 576, 512),
    ];
    for &(ty, n_out, k, n_tokens) in shapes {
        if std::env::var("BENCH_TYPE").is_ok_and(|v| v != ty.name())
            || std::env::var("BENCH_TOKENS").is_ok_and(|v| v != n_tokens.to_string())
        {
            continue;
        }
        let w = weights(&mut rng, ty, n_out, k);
        let x = rng.vec(n_tokens * k, 1.0);
        for isa in Isa::all_supported() {
            if std::env::var("BENCH_ISA").is_ok_and(|v| v != format!("{isa:?}")) {
                continue;
            }
            if isa == Isa::Scalar && n_tokens > 1 && n_out * k > 600_000 {
                continue;
            }
            let s = time(&pool, isa, ty, &w, n_out, k, &x, n_tokens);
            let gflops = 2.0 * (n_out * k * n_tokens) as f64 / s / 1e9;
            let gbs = w.len() as f64 / s / 1e9;
            println!(
                "{ty:>5} {n_out:>5}x{k:<5} tokens {n_tokens:>3} {isa:>8?}: {:>9.1} us  {gflops:>7.1} GFLOP/s  {gbs:>6.1} GB/s weights",
                s * 1e6
            );
        }
    }

    // Whole-model matmul estimate, SmolLM2-135M Q4_1 (30 layers; output Q8_0 49152 x 576).
    let layer: &[(usize, usize)] = &[(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    let isa = Isa::detect();
    for &n_tokens in &[1usize, 512] {
        let mut total = 0.0;
        for &(n_out, k) in layer {
            let w = weights(&mut rng, GgmlType::Q4_1, n_out, k);
            let x = rng.vec(n_tokens * k, 1.0);
            total += 30.0 * time(&pool, isa, GgmlType::Q4_1, &w, n_out, k, &x, n_tokens);
        }
        let w = weights(&mut rng, GgmlType::Q8_0, 49152, 576);
        let x = rng.vec(576, 1.0);
        // Prefill only needs the logits of the last token.
        total += time(&pool, isa, GgmlType::Q8_0, &w, 49152, 576, &x, 1);
        println!("SmolLM2-135M Q4_1 matmuls only, {n_tokens} tokens: {:.2} ms -> {:.0} tok/s", total * 1e3, n_tokens as f64 / total);
    }

    // Cold version of the decode estimate: all 30 layers' distinct weights (~96 MB with the
    // output matrix, more than the L3), streamed once per token as a real forward pass does.
    let mut model: Vec<(GgmlType, usize, usize, Vec<u8>)> = Vec::new();
    for _ in 0..30 {
        for &(n_out, k) in layer {
            model.push((GgmlType::Q4_1, n_out, k, weights(&mut rng, GgmlType::Q4_1, n_out, k)));
        }
    }
    model.push((GgmlType::Q8_0, 49152, 576, weights(&mut rng, GgmlType::Q8_0, 49152, 576)));
    let xs = rng.vec(1536, 1.0);
    let mut y = vec![0f32; 49152];
    let mut best = f64::MAX;
    for _ in 0..20 {
        let t0 = Instant::now();
        for (ty, n_out, k, w) in &model {
            matmul_ext(&pool, isa, *ty, w, *n_out, *k, &xs[..*k], 1, None, &mut y[..*n_out]).expect("matmul");
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let bytes: usize = model.iter().map(|m| m.3.len()).sum();
    println!(
        "SmolLM2-135M Q4_1 decode matmuls, cold weights ({} MB): {:.2} ms -> {:.0} tok/s ({:.1} GB/s)",
        bytes / 1_000_000,
        best * 1e3,
        1.0 / best,
        bytes as f64 / best / 1e9
    );
}

#[test]
#[ignore]
fn bench_attention() {
    // SmolLM2-135M shapes: 9 query heads, 3 KV heads, head_dim 64, blocks of 16.
    let (n_head, n_kv, hd, bs) = (9, 3, 64, 16);
    let nth = std::env::var("ROCMFORGE_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let pool = ThreadPool::new(nth);
    let mut rng = Rng::new(3);
    let n_ctx = 1024;
    let mut cache = KvCache::new(1, n_kv, hd, hd, bs, n_ctx / bs);
    let table: Vec<u32> = (0..(n_ctx / bs) as u32).rev().collect();
    let k = rng.vec(n_ctx * n_kv * hd, 1.0);
    cache.write(0, &table, 0, &k, &k, n_ctx).expect("write");
    for &(n_tokens, pos_start) in &[(512usize, 0usize), (1, 511), (1, 1023)] {
        let q = rng.vec(n_tokens * n_head * hd, 1.0);
        let mut out = vec![0f32; n_tokens * n_head * hd];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = Instant::now();
            attention(&pool, &cache, 0, &table, &q, n_tokens, pos_start, n_head, &AttnParams::default(), &mut out).expect("attention");
            best = best.min(t0.elapsed().as_secs_f64());
        }
        println!("attention {n_tokens} queries at pos {pos_start}, threads {nth}: {:.1} us per layer", best * 1e6);
    }
}
