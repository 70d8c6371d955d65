//! Paged attention against a dense f64 attention reference.
//!
//! Blocks of 16 tokens scattered non-contiguously over the pool (tables like [13, 2, 9, 0, ...]),
//! two sequences sharing the pool, sequence lengths crossing block boundaries, GQA (6 query heads
//! on 2 KV heads), head_dim_v != head_dim_k, sliding window, logit softcap, non-causal, decode and
//! chunked prefill, attention sinks (gpt-oss). The reference uses K/V rounded to f16 (the cache's storage type) and, like
//! llama.cpp's attention (which ours reproduces bit for bit, see `attention.rs`), q and the
//! softmax probabilities rounded to f16, the probabilities from an f64 softmax; a probability
//! may therefore round to the neighbouring f16, so |out - ref| <= 2e-5 * max|v| + sum_j
//! 2^-11 p_j |v_j|. Every ISA path must give the same bits.

mod common;

use common::Rng;
use rocmforge_cpu::{attention_isa, AttnParams, Isa, KvCache, ThreadPool};
use rocmforge_quant::{f16_to_f32, f32_to_f16};

const BS: usize = 16;

struct Seq {
    table: Vec<u32>,
    k: Vec<f32>, // all tokens written so far, [pos][n_kv][dk], f16-rounded
    v: Vec<f32>,
}

fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16_to_f32(f32_to_f16(x))).collect()
}

#[allow(clippy::too_many_arguments)]
fn reference(
    seq: &Seq,
    q: &[f32],
    n_tokens: usize,
    pos_start: usize,
    n_head: usize,
    n_kv: usize,
    dk: usize,
    dv: usize,
    p: &AttnParams,
) -> (Vec<f64>, Vec<f64>) {
    let group = n_head / n_kv;
    let scale = p.scale.map_or(1.0 / (dk as f64).sqrt(), |s| s as f64);
    let seq_len = pos_start + n_tokens;
    let mut out = vec![0f64; n_tokens * n_head * dv];
    let mut slack = vec![0f64; n_tokens * n_head * dv];
    let r16 = |x: f64| f16_to_f32(f32_to_f16(x as f32)) as f64;
    for t in 0..n_tokens {
        let qp = pos_start + t;
        for h in 0..n_head {
            let g = h / group;
            let keys: Vec<usize> = (0..seq_len)
                .filter(|&kp| {
                    let causal_ok = !p.causal || kp <= qp;
                    let win_ok = p.sliding_window.is_none_or(|w| kp + w > qp && (p.causal || qp + w > kp));
                    causal_ok && win_ok
                })
                .collect();
            let mut logits: Vec<f64> = keys
                .iter()
                .map(|&kp| {
                    let mut s = 0f64;
                    for d in 0..dk {
                        s += r16(q[(t * n_head + h) * dk + d] as f64) * seq.k[(kp * n_kv + g) * dk + d] as f64;
                    }
                    s *= scale;
                    if let Some(c) = p.softcap {
                        s = c as f64 * (s / c as f64).tanh();
                    }
                    s
                })
                .collect();
            // An attention sink joins the max and the denominator, with no value row.
            let sink = p.sinks.as_ref().map(|s| s[h] as f64);
            let m = logits.iter().cloned().chain(sink).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|l| (l - m).exp()).sum::<f64>() + sink.map_or(0.0, |s| (s - m).exp());
            for l in logits.iter_mut() {
                *l = (*l - m).exp() / sum;
            }
            for (j, &kp) in keys.iter().enumerate() {
                for d in 0..dv {
                    let v = seq.v[(kp * n_kv + g) * dv + d] as f64;
                    out[(t * n_head + h) * dv + d] += r16(logits[j]) * v;
                    slack[(t * n_head + h) * dv + d] += logits[j] * v.abs() / 2048.0;
                }
            }
        }
    }
    (out, slack)
}

#[test]
fn paged_attention_matches_dense_f64() {
    let (n_layer, n_kv, n_head, dk, dv, n_blocks) = (2, 2, 6, 64, 32, 24);
    let pool = ThreadPool::new(3);
    let mut rng = Rng::new(42);
    let mut cache = KvCache::new(n_layer, n_kv, dk, dv, BS, n_blocks);
    // Two sequences interleaved in the pool, neither contiguous nor ordered.
    let mut seqs = [Seq { table: vec![13, 2, 9, 0, 21], k: vec![], v: vec![] }, Seq { table: vec![5, 17, 1, 11, 3], k: vec![], v: vec![] }];
    let layer = 1;
    let params = [
        AttnParams::default(),
        AttnParams { sliding_window: Some(5), ..Default::default() },
        AttnParams { softcap: Some(5.0), scale: Some(0.5), ..Default::default() },
        AttnParams { causal: false, ..Default::default() },
        AttnParams { causal: false, sliding_window: Some(7), ..Default::default() },
        // gpt-oss: attention sinks, alone and with a window (one sink above every score).
        AttnParams { sinks: Some(vec![-1.0, 0.0, 0.5, 1.5, 3.0, 40.0]), ..Default::default() },
        AttnParams { sliding_window: Some(5), sinks: Some(vec![2.0, -3.0, 0.0, 1.0, -0.5, 0.25]), ..Default::default() },
    ];
    // Steps: prefill 17 (crosses a block), decode 1, chunk of 20 (crosses two), decode 1 ...
    for &n_tokens in &[17usize, 1, 20, 1, 15, 3] {
        for (si, seq) in seqs.iter_mut().enumerate() {
            let pos_start = seq.k.len() / (n_kv * dk);
            let k = rng.vec(n_tokens * n_kv * dk, 1.0);
            let v = rng.vec(n_tokens * n_kv * dv, 1.0);
            cache.write(layer, &seq.table, pos_start, &k, &v, n_tokens).expect("write");
            seq.k.extend(f16_round(&k));
            seq.v.extend(f16_round(&v));
            let q = rng.vec(n_tokens * n_head * dk, 1.0);
            for p in &params {
                let (want, slack) = reference(seq, &q, n_tokens, pos_start, n_head, n_kv, dk, dv, p);
                let mut first: Option<Vec<f32>> = None;
                for isa in Isa::all_supported() {
                    let mut out = vec![f32::NAN; n_tokens * n_head * dv];
                    attention_isa(&pool, isa, &cache, layer, &seq.table, &q, n_tokens, pos_start, n_head, p, &mut out).expect("attention");
                    let vmax = seq.v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
                    for i in 0..out.len() {
                        let err = (out[i] as f64 - want[i]).abs();
                        assert!(
                            err <= 2e-5 * vmax + slack[i],
                            "seq {si} n_tokens {n_tokens} pos {pos_start} {p:?} {isa:?} [{i}]: {} vs {} (err {err:e})",
                            out[i],
                            want[i]
                        );
                    }
                    match &first {
                        None => first = Some(out),
                        Some(f) => {
                            assert!(f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} differs from the scalar path")
                        }
                    }
                }
            }
        }
    }
    // Layer 0 was never written: its blocks are still zero, and reading layer 1 back is exact.
    let mut row = vec![0f32; dk];
    cache.read(layer, &seqs[0].table, 20, 1, false, &mut row).unwrap();
    assert_eq!(&row[..], &seqs[0].k[(20 * n_kv + 1) * dk..(20 * n_kv + 2) * dk]);
    cache.read(0, &seqs[0].table, 20, 1, false, &mut row).unwrap();
    assert!(row.iter().all(|&x| x == 0.0));
}

#[test]
fn bad_tables_are_errors() {
    let pool = ThreadPool::new(2);
    let mut cache = KvCache::new(1, 1, 8, 8, BS, 4);
    let k = vec![0f32; 8];
    assert!(cache.write(0, &[1], 15, &k, &k, 1).is_ok());
    assert!(cache.write(0, &[1], 16, &k, &k, 1).is_err(), "table too short");
    assert!(cache.write(0, &[4], 0, &k, &k, 1).is_err(), "block id out of range");
    assert!(cache.write(1, &[0], 0, &k, &k, 1).is_err(), "layer out of range");
    let mut out = vec![0f32; 8];
    let p = AttnParams::default();
    assert!(rocmforge_cpu::attention(&pool, &cache, 0, &[1], &k, 1, 16, 1, &p, &mut out).is_err());
    assert!(rocmforge_cpu::attention(&pool, &cache, 0, &[1, 2], &k, 1, 16, 1, &p, &mut out).is_ok());
    assert!(
        rocmforge_cpu::attention(&pool, &cache, 0, &[1], &k, 1, 0, 3, &p, &mut [0f32; 24]).is_err(),
        "q of 8 values cannot hold 3 heads of 8"
    );
}

/// A sliding window's given-back blocks (the engine puts an invalid id, `u32::MAX`, in their
/// table entries): attention reads only keys from the first query's window on, so the result is
/// bit-identical to the one with every block present; a given-back block inside a window is an
/// error, never a read. For the f16 and a quantized cache, causal and not.
#[test]
fn given_back_blocks_behind_the_window_are_never_read() {
    const NULL: u32 = u32::MAX;
    let (n_kv, n_head, dk, dv) = (2, 4, 32, 32);
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(7);
    for ty in [rocmforge_cpu::KvCacheType::F16, rocmforge_cpu::KvCacheType::Q8_0] {
        let mut cache = KvCache::with_type(ty, 1, n_kv, dk, dv, BS, 8).expect("cache");
        let table = [3, 2, 5, 0];
        let (pos_start, n_tokens) = (40, 10);
        let k = rng.vec(50 * n_kv * dk, 1.0);
        let v = rng.vec(50 * n_kv * dv, 1.0);
        cache.write(0, &table, 0, &k, &v, 50).expect("write");
        let q = rng.vec(n_tokens * n_head * dk, 1.0);
        for causal in [true, false] {
            // Window 5: the first query (40) reads keys 36.., all in block 2 (32..47) and on.
            let p = AttnParams { sliding_window: Some(5), causal, ..Default::default() };
            let run = |t: &[u32]| {
                let mut out = vec![0f32; n_tokens * n_head * dv];
                rocmforge_cpu::attention(&pool, &cache, 0, t, &q, n_tokens, pos_start, n_head, &p, &mut out).map(|_| out)
            };
            let all = run(&table).expect("every block present");
            let given_back = run(&[NULL, NULL, 5, 0]).expect("blocks behind the window given back");
            assert!(all.iter().zip(&given_back).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty:?} causal {causal}");
            assert!(run(&[NULL, NULL, NULL, 0]).is_err(), "{ty:?}: block 2 holds keys 36..39 of the window");
        }
    }
}
