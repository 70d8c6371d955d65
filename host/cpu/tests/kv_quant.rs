//! Attention over q8_0 and fp8 (E4M3) KV caches against an f64 dequantize-then-attend reference.
//!
//! Same setting as `attention.rs` (scattered 16-token blocks, two sequences in one pool, GQA 6
//! query heads on 2 KV heads, head_dim_v != head_dim_k, sliding window, softcap, non-causal,
//! decode and chunked prefill). Three properties:
//!
//! 1. Storage: every element read back lies within the format's rounding of what was written:
//!    q8_0 `|x - x'| <= d/2 + |d - d16| * 127` with `d = amax/127` of its block of 32 and `d16`
//!    the stored f16 scale (round to nearest of x * 127/amax, then times the rounded scale);
//!    fp8 E4M3 `|x - x'| <= 2^-4 |x|` (half an ulp of a 3-bit mantissa) or `2^-10` in the
//!    subnormal range, saturating at 448.
//! 2. The kernel against f64 attention over the dequantized K/V and the q the kernel uses (q8_0:
//!    q quantized to q8_0, as llama.cpp's K dot; fp8: q as is):
//!    `|out - ref| <= 1e-6 * max|v|` (f32 rounding of dot products, exp and sums only;
//!    margins printed).
//! 3. Every ISA path gives the same bits.
//!
//! Plus the end-to-end cost against f64 attention over the unquantized K/V, for information
//! (printed): it is what the real-model test in `tests/kv_cache_types.rs` measures on logprobs.

mod common;

use common::Rng;
use rocmforge_cpu::{attention_isa, AttnParams, GgmlType, Isa, KvCache, KvCacheType, ThreadPool};
use rocmforge_quant::f16_to_f32;

const BS: usize = 16;

struct Seq {
    table: Vec<u32>,
    /// Everything written, [pos][n_kv][d]: as written (f32) and as read back (dequantized).
    k: Vec<f32>,
    v: Vec<f32>,
    kd: Vec<f32>,
    vd: Vec<f32>,
}

/// q as the kernel sees it: q8_0 quantized and dequantized (the K dot's vec_dot_type), else as is.
fn q_seen(ty: KvCacheType, q: &[f32]) -> Vec<f64> {
    if ty != KvCacheType::Q8_0 {
        return q.iter().map(|&x| x as f64).collect();
    }
    let (_, bytes) = rocmforge_cpu::quantize_activations(GgmlType::Q8_0, q).expect("q8_0");
    let mut out = Vec::with_capacity(q.len());
    for b in bytes.chunks_exact(34) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64;
        out.extend(b[2..].iter().map(|&x| (x as i8) as f64 * d));
    }
    out
}

/// f64 attention of `n_tokens` queries over K/V (`[pos][n_kv][d]`).
#[allow(clippy::too_many_arguments)]
fn reference(
    kk: &[f32],
    vv: &[f32],
    q: &[f64],
    n_tokens: usize,
    pos_start: usize,
    n_head: usize,
    n_kv: usize,
    dk: usize,
    dv: usize,
    p: &AttnParams,
) -> Vec<f64> {
    let group = n_head / n_kv;
    let scale = p.scale.map_or(1.0 / (dk as f64).sqrt(), |s| s as f64);
    let seq_len = pos_start + n_tokens;
    let mut out = vec![0f64; n_tokens * n_head * dv];
    for t in 0..n_tokens {
        let qp = pos_start + t;
        for h in 0..n_head {
            let g = h / group;
            let keys: Vec<usize> = (0..seq_len)
                .filter(|&kp| (!p.causal || kp <= qp) && p.sliding_window.is_none_or(|w| kp + w > qp && (p.causal || qp + w > kp)))
                .collect();
            let logits: Vec<f64> = keys
                .iter()
                .map(|&kp| {
                    let s: f64 = (0..dk).map(|d| q[(t * n_head + h) * dk + d] * kk[(kp * n_kv + g) * dk + d] as f64).sum::<f64>() * scale;
                    p.softcap.map_or(s, |c| c as f64 * (s / c as f64).tanh())
                })
                .collect();
            // An attention sink joins the max and the denominator, with no value row.
            let sink = p.sinks.as_ref().map(|s| s[h] as f64);
            let m = logits.iter().cloned().chain(sink).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|l| (l - m).exp()).sum::<f64>() + sink.map_or(0.0, |s| (s - m).exp());
            for (j, &kp) in keys.iter().enumerate() {
                let w = (logits[j] - m).exp() / sum;
                for d in 0..dv {
                    out[(t * n_head + h) * dv + d] += w * vv[(kp * n_kv + g) * dv + d] as f64;
                }
            }
        }
    }
    out
}

/// Bound of one element's storage error (property 1 of the header).
fn storage_bound(ty: KvCacheType, block: &[f32], x: f32) -> f64 {
    match ty {
        KvCacheType::Q8_0 => {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            let d = amax / 127.0;
            let d16 = f16_to_f32(rocmforge_quant::f32_to_f16((amax / 127.0) as f32)) as f64;
            // (1 + 1e-6): x * (127 / amax) is rounded once in f32 before rounding to an integer.
            d / 2.0 * (1.0 + 1e-6) + (d - d16).abs() * 127.0
        }
        KvCacheType::Fp8E4M3 => (x.abs() as f64 / 16.0).max(1.0 / 1024.0),
        KvCacheType::F16 => unreachable!(),
    }
}

fn read_all(cache: &KvCache, layer: usize, seq: &Seq, n_pos: usize, n_kv: usize, d: usize, value: bool) -> Vec<f32> {
    let mut out = vec![0f32; n_pos * n_kv * d];
    for pos in 0..n_pos {
        for h in 0..n_kv {
            cache.read(layer, &seq.table, pos, h, value, &mut out[(pos * n_kv + h) * d..][..d]).expect("read");
        }
    }
    out
}

fn check_type(ty: KvCacheType) {
    let (n_layer, n_kv, n_head, dk, dv, n_blocks) = (2, 2, 6, 64, 32, 24);
    let pool = ThreadPool::new(3);
    let mut rng = Rng::new(7);
    let mut cache = KvCache::with_type(ty, n_layer, n_kv, dk, dv, BS, n_blocks).expect("cache");
    assert_eq!(cache.cache_type(), ty);
    let mut seqs = [
        Seq { table: vec![13, 2, 9, 0, 21], k: vec![], v: vec![], kd: vec![], vd: vec![] },
        Seq { table: vec![5, 17, 1, 11, 3], k: vec![], v: vec![], kd: vec![], vd: vec![] },
    ];
    let layer = 1;
    let params = [
        AttnParams::default(),
        AttnParams { sliding_window: Some(5), ..Default::default() },
        AttnParams { softcap: Some(5.0), scale: Some(0.5), ..Default::default() },
        AttnParams { causal: false, ..Default::default() },
        AttnParams { causal: false, sliding_window: Some(7), ..Default::default() },
        // gpt-oss's attention sinks (one above every score: the sink-first branch).
        AttnParams { sliding_window: Some(5), sinks: Some(vec![-1.0, 0.0, 0.5, 1.5, 3.0, 40.0]), ..Default::default() },
    ];
    let (mut worst_kernel, mut worst_e2e, mut worst_storage) = (0f64, 0f64, 0f64);
    for &n_tokens in &[17usize, 1, 20, 1, 15, 3] {
        for seq in seqs.iter_mut() {
            let pos_start = seq.k.len() / (n_kv * dk);
            // K with a per-channel offset (as RoPE'd keys have), V plain; both with outliers.
            let k: Vec<f32> =
                rng.vec(n_tokens * n_kv * dk, 1.5).iter().enumerate().map(|(i, x)| x + ((i % dk) as f32 * 0.37).sin()).collect();
            let v = rng.vec(n_tokens * n_kv * dv, 1.0);
            cache.write(layer, &seq.table, pos_start, &k, &v, n_tokens).expect("write");
            seq.k.extend(&k);
            seq.v.extend(&v);
            let n_pos = pos_start + n_tokens;
            seq.kd = read_all(&cache, layer, seq, n_pos, n_kv, dk, false);
            seq.vd = read_all(&cache, layer, seq, n_pos, n_kv, dv, true);
            // 1. Storage.
            for (x, xd, d) in [(&seq.k, &seq.kd, dk), (&seq.v, &seq.vd, dv)] {
                for (i, (&a, &b)) in x.iter().zip(xd.iter()).enumerate() {
                    let blk = &x[i / 32 * 32..(i / 32 * 32 + 32).min(i / d * d + d)];
                    let bound = storage_bound(ty, blk, a);
                    let err = (a as f64 - b as f64).abs();
                    assert!(err <= bound, "{ty} storage [{i}]: wrote {a}, read {b} (err {err:e} > {bound:e})");
                    worst_storage = worst_storage.max(err / bound);
                }
            }
            let q = rng.vec(n_tokens * n_head * dk, 1.0);
            let qs = q_seen(ty, &q);
            let qx: Vec<f64> = q.iter().map(|&x| x as f64).collect();
            let vmax = seq.vd.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            for p in &params {
                let want = reference(&seq.kd, &seq.vd, &qs, n_tokens, pos_start, n_head, n_kv, dk, dv, p);
                let exact = reference(&seq.k, &seq.v, &qx, n_tokens, pos_start, n_head, n_kv, dk, dv, p);
                let mut first: Option<Vec<f32>> = None;
                for isa in Isa::all_supported() {
                    let mut out = vec![f32::NAN; n_tokens * n_head * dv];
                    attention_isa(&pool, isa, &cache, layer, &seq.table, &q, n_tokens, pos_start, n_head, p, &mut out).expect("attention");
                    // 2. Kernel against dequantize-then-attend.
                    let bound = 1e-6 * vmax;
                    for i in 0..out.len() {
                        let err = (out[i] as f64 - want[i]).abs();
                        assert!(
                            err <= bound,
                            "{ty} n_tokens {n_tokens} pos {pos_start} {p:?} {isa:?} [{i}]: {} vs {} (err {err:e} > {bound:e})",
                            out[i],
                            want[i]
                        );
                        worst_kernel = worst_kernel.max(err / bound);
                        worst_e2e = worst_e2e.max((out[i] as f64 - exact[i]).abs() / vmax);
                    }
                    // 3. Every path the same bits.
                    match &first {
                        None => first = Some(out),
                        Some(f) => {
                            assert!(f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty} {isa:?} differs from the first path")
                        }
                    }
                }
            }
        }
    }
    println!(
        "{ty}: storage error at most {:.2} of its bound; kernel vs f64 dequantize-then-attend at most {:.3} of 1e-6*max|v| \
         (margin {:.1}x); vs unquantized f64 attention max |err|/max|v| = {worst_e2e:.2e}",
        worst_storage,
        worst_kernel,
        1.0 / worst_kernel.max(1e-30)
    );
}

#[test]
fn q8_0_attention_matches_f64_dequantize_then_attend() {
    check_type(KvCacheType::Q8_0);
}

#[test]
fn fp8_attention_matches_f64_dequantize_then_attend() {
    check_type(KvCacheType::Fp8E4M3);
}

#[test]
fn fp8_scales_apply_and_saturate() {
    // Values beyond 448 saturate at scale 1 (vLLM's uncalibrated default); a calibrated scale
    // keeps them: stored x / 4, read back x.
    let mut cache = KvCache::with_type(KvCacheType::Fp8E4M3, 1, 1, 32, 32, BS, 2).expect("cache");
    let k: Vec<f32> = (0..32).map(|i| i as f32 * 40.0).collect();
    cache.write(0, &[0], 0, &k, &k, 1).expect("write");
    let mut row = vec![0f32; 32];
    cache.read(0, &[0], 0, 0, false, &mut row).expect("read");
    assert_eq!(row[31], 448.0, "1240 saturates to 448 at scale 1");
    cache.set_fp8_scales(4.0, 4.0).expect("scales");
    cache.write(0, &[0], 1, &k, &k, 1).expect("write");
    cache.read(0, &[0], 1, 0, true, &mut row).expect("read");
    for (i, (&a, &b)) in k.iter().zip(&row).enumerate() {
        assert!((a - b).abs() <= a / 16.0 + 4.0 / 1024.0, "[{i}] {a} -> {b}");
    }
    assert!(cache.set_fp8_scales(0.0, 1.0).is_err());
    assert!(cache.set_fp8_scales(1.0, f32::NAN).is_err());
}

#[test]
fn q8_0_needs_head_dims_of_32_and_caches_shrink() {
    let e = KvCache::with_type(KvCacheType::Q8_0, 1, 1, 48, 64, BS, 2).err().expect("48 is not a multiple of 32").to_string();
    assert!(e.contains("q8_0") && e.contains("48") && e.contains("32"), "{e}");
    let f16 = KvCache::with_type(KvCacheType::F16, 2, 2, 64, 64, BS, 8).expect("f16");
    let q8 = KvCache::with_type(KvCacheType::Q8_0, 2, 2, 64, 64, BS, 8).expect("q8_0");
    let f8 = KvCache::with_type(KvCacheType::Fp8E4M3, 2, 2, 64, 64, BS, 8).expect("fp8");
    assert_eq!(q8.bytes() * 128, f16.bytes() * 68, "q8_0: 34 bytes per 32 elements");
    assert_eq!(f8.bytes() * 2, f16.bytes());
}

#[test]
fn window_of_one_and_bad_tables_are_handled() {
    // A query over one key returns that key's value, causal or not, also with a sliding window of
    // 1 on a non-causal query (it still sees itself); bad tables are errors before anything is read.
    let pool = ThreadPool::new(2);
    let mut cache = KvCache::with_type(KvCacheType::Q8_0, 1, 1, 32, 32, BS, 4).expect("cache");
    let k = vec![0.5f32; 32];
    assert!(cache.write(0, &[1], 16, &k, &k, 1).is_err(), "table too short");
    cache.write(0, &[1], 0, &k, &k, 1).expect("write");
    let mut out = vec![f32::NAN; 32];
    let p = AttnParams::default();
    attention_isa(&pool, Isa::detect(), &cache, 0, &[1], &k, 1, 0, 1, &p, &mut out).expect("attention");
    assert!(out.iter().all(|&x| (x - 0.5).abs() < 1e-2), "{out:?}");
    let w1 = AttnParams { causal: false, sliding_window: Some(1), ..AttnParams::default() };
    out.fill(f32::NAN);
    attention_isa(&pool, Isa::detect(), &cache, 0, &[1], &k, 1, 0, 1, &w1, &mut out).expect("attention, window 1");
    assert!(out.iter().all(|&x| (x - 0.5).abs() < 1e-2), "window 1, non-causal: {out:?}");
    assert!(attention_isa(&pool, Isa::detect(), &cache, 0, &[1], &k, 1, 16, 1, &p, &mut out).is_err());
}

/// E4M3FN quantize-then-dequantize in f64, from the format's definition (independent of the
/// kernel's bit tricks): the nearest of the 127 finite magnitudes `m/8 * 2^-6` (subnormal) and
/// `(1 + m/8) * 2^(e-7)`, ties to the even code, saturating at 448; then times `scale`.
fn e4m3_round_f64(x: f64, scale: f64) -> f64 {
    let codes: Vec<f64> = (0..0x7Fu32)
        .map(|c| {
            let (e, m) = ((c >> 3) as i32, (c & 7) as f64);
            if e == 0 {
                m / 8.0 * 2f64.powi(-6)
            } else {
                (1.0 + m / 8.0) * 2f64.powi(e - 7)
            }
        })
        .collect();
    let y = (x / scale).abs();
    let mut best = 0usize;
    for (c, &v) in codes.iter().enumerate() {
        let (d, db) = ((v - y).abs(), (codes[best] - y).abs());
        if d < db || (d == db && c % 2 == 0) {
            best = c;
        }
    }
    x.signum() * codes[best] * scale
}

/// Whether `x / scale` lies within `rel` (relative) of a rounding midpoint between two E4M3
/// magnitudes: there the kernel's `x * (1 / scale)` in f32 may round to the other neighbour.
fn near_e4m3_tie(x: f64, scale: f64, rel: f64) -> bool {
    let y = (x / scale).abs();
    let lo = e4m3_round_f64(y * (1.0 - rel), 1.0);
    let hi = e4m3_round_f64(y * (1.0 + rel), 1.0);
    lo != hi
}

/// Per-KV-head fp8 scales are applied per head: three KV heads of magnitudes 1e-3, 1 and 1e3
/// (no single scale serves them: checked), each with its own K and V scale. Every element read
/// back equals the f64 quantize-then-dequantize with its head's scale (up to the f32 rounding of
/// `e4m3 * scale`); attention matches f64 attention over those values per head; every ISA path
/// gives the same bits; one value repeated per head gives exactly the bits of that per-tensor
/// scale; and f16 / q8_0 caches ignore scales.
#[test]
fn fp8_per_head_scales_apply_per_head() {
    use rocmforge_cpu::{attention_with_scales, KvHeadScales};
    let (n_kv, n_head, dk, dv, n_tokens) = (3usize, 6usize, 64usize, 32usize, 20usize);
    let group = n_head / n_kv;
    let pool = ThreadPool::new(2);
    let mut rng = Rng::new(11);
    let mag = [1e-3f32, 1.0, 1e3];
    let scales = KvHeadScales { k: mag.iter().map(|m| m * 4.0 / 448.0).collect(), v: mag.iter().map(|m| m * 3.0 / 448.0).collect() };
    let per_head = |x: Vec<f32>, d: usize| -> Vec<f32> { x.iter().enumerate().map(|(i, &v)| v * mag[(i / d) % n_kv]).collect() };
    let k = per_head(rng.vec(n_tokens * n_kv * dk, 1.0), dk);
    let v = per_head(rng.vec(n_tokens * n_kv * dv, 1.0), dv);
    // Queries of head h scaled by 1 / (its KV head's magnitude): logits of order 1 everywhere.
    let q: Vec<f32> = rng.vec(n_tokens * n_head * dk, 1.0).iter().enumerate().map(|(i, &x)| x / mag[(i / dk) % n_head / group]).collect();
    let (layer, table) = (1, [3u32, 1]);
    let mut cache = KvCache::with_type(KvCacheType::Fp8E4M3, 2, n_kv, dk, dv, BS, 4).expect("cache");
    cache.write_scaled(layer, &table, 0, &k, &v, n_tokens, Some(&scales)).expect("write");

    // 1. Storage, per head, against f64.
    let (mut kd, mut vd) = (vec![0f32; k.len()], vec![0f32; v.len()]);
    let mut ties = 0;
    for (x, xd, d, value) in [(&k, &mut kd, dk, false), (&v, &mut vd, dv, true)] {
        for t in 0..n_tokens {
            for g in 0..n_kv {
                let row = &mut xd[(t * n_kv + g) * d..][..d];
                cache.read_scaled(layer, &table, t, g, value, Some(&scales), row).expect("read");
                let s = if value { scales.v[g] } else { scales.k[g] } as f64;
                for (j, &got) in row.iter().enumerate() {
                    let w = x[(t * n_kv + g) * d + j] as f64;
                    let want = e4m3_round_f64(w, s);
                    if (got as f64 - want).abs() > want.abs() * 2f64.powi(-23) {
                        assert!(
                            near_e4m3_tie(w, s, 1e-6),
                            "head {g} {} [{t}][{j}]: wrote {w}, read {got}, f64 {want}",
                            if value { "V" } else { "K" }
                        );
                        ties += 1;
                    }
                }
            }
        }
    }
    assert!(ties <= 2, "{ties} elements off the f64 rounding (only near-ties may be)");
    // The data needs per-head scales: the middle head's scale for every head loses the small
    // head to subnormals and saturates the large one.
    let one = scales.k[1] as f64;
    let rel_err = |g: usize| -> f64 {
        (0..n_tokens * dk)
            .map(|i| {
                let w = k[(i / dk * n_kv + g) * dk + i % dk] as f64;
                ((e4m3_round_f64(w, one) - w) / w.abs().max(1e-30)).abs()
            })
            .fold(0.0, f64::max)
    };
    assert!(rel_err(0) > 0.25 && rel_err(2) > 0.25, "one scale would do: {} {}", rel_err(0), rel_err(2));

    // 2. + 3. Attention against f64 over the dequantized values, per head; every ISA the same bits.
    let qx: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    let p = AttnParams::default();
    let want = reference(&kd, &vd, &qx, n_tokens, 0, n_head, n_kv, dk, dv, &p);
    // Per KV head: max |v| read back (the kernel's bound as in `check_type`, head by head).
    let vmax: Vec<f64> =
        (0..n_kv).map(|g| (0..n_tokens * dv).map(|i| vd[(i / dv * n_kv + g) * dv + i % dv].abs() as f64).fold(0.0, f64::max)).collect();
    let mut first: Option<Vec<f32>> = None;
    let mut worst = 0f64;
    for isa in Isa::all_supported() {
        let mut out = vec![f32::NAN; n_tokens * n_head * dv];
        attention_with_scales(&pool, isa, &cache, layer, &table, &q, n_tokens, 0, n_head, &p, Some(&scales), &mut out).expect("attention");
        for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
            let g = i / dv % n_head / group;
            let bound = 1e-6 * vmax[g];
            let err = (o as f64 - w).abs();
            assert!(err <= bound, "{isa:?} [{i}] head {g}: {o} vs {w} (err {err:e} > {bound:e})");
            worst = worst.max(err / bound);
        }
        match &first {
            None => first = Some(out),
            Some(f) => assert!(f.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?} differs from the first path"),
        }
    }
    println!("per-head fp8: {ties} near-tie elements; attention vs f64 at most {worst:.3} of its bound");
    // The scales are needed to read the rows back: the cache's own (1.0) give other values.
    let mut out1 = vec![0f32; n_tokens * n_head * dv];
    attention_with_scales(&pool, Isa::detect(), &cache, layer, &table, &q, n_tokens, 0, n_head, &p, None, &mut out1).expect("attention");
    assert!(out1.iter().zip(first.as_ref().expect("ran")).any(|(a, b)| a != b));

    // 4. One value per head, repeated, is the per-tensor scale bit for bit.
    let (ks, vs) = (0.37f32, 0.011f32);
    let rep = KvHeadScales { k: vec![ks; n_kv], v: vec![vs; n_kv] };
    let mut a = KvCache::with_type(KvCacheType::Fp8E4M3, 2, n_kv, dk, dv, BS, 4).expect("cache");
    let mut b = KvCache::with_type(KvCacheType::Fp8E4M3, 2, n_kv, dk, dv, BS, 4).expect("cache");
    let (kn, vn) = (rng.vec(k.len(), 2.0), rng.vec(v.len(), 0.05));
    let qn = rng.vec(q.len(), 1.0);
    a.write_scaled(layer, &table, 0, &kn, &vn, n_tokens, Some(&rep)).expect("write");
    b.set_fp8_scales(ks, vs).expect("scales");
    b.write(layer, &table, 0, &kn, &vn, n_tokens).expect("write");
    let (mut oa, mut ob) = (vec![0f32; n_tokens * n_head * dv], vec![0f32; n_tokens * n_head * dv]);
    attention_with_scales(&pool, Isa::detect(), &a, layer, &table, &qn, n_tokens, 0, n_head, &p, Some(&rep), &mut oa).expect("attention");
    attention_isa(&pool, Isa::detect(), &b, layer, &table, &qn, n_tokens, 0, n_head, &p, &mut ob).expect("attention");
    assert!(oa.iter().zip(&ob).all(|(x, y)| x.to_bits() == y.to_bits()), "per-head copies of one scale differ from the per-tensor scale");

    // 5. f16 and q8_0 ignore scales: the same bits with and without.
    for ty in [KvCacheType::F16, KvCacheType::Q8_0] {
        let mut a = KvCache::with_type(ty, 2, n_kv, dk, dv, BS, 4).expect("cache");
        let mut b = KvCache::with_type(ty, 2, n_kv, dk, dv, BS, 4).expect("cache");
        a.write_scaled(layer, &table, 0, &kn, &vn, n_tokens, Some(&scales)).expect("write");
        b.write(layer, &table, 0, &kn, &vn, n_tokens).expect("write");
        attention_with_scales(&pool, Isa::detect(), &a, layer, &table, &qn, n_tokens, 0, n_head, &p, Some(&scales), &mut oa)
            .expect("attention");
        attention_isa(&pool, Isa::detect(), &b, layer, &table, &qn, n_tokens, 0, n_head, &p, &mut ob).expect("attention");
        assert!(oa.iter().zip(&ob).all(|(x, y)| x.to_bits() == y.to_bits()), "{ty}: scales changed the result");
    }

    // Bad scale lists are errors naming the count or the value.
    let e = cache
        .write_scaled(layer, &table, 0, &k, &v, n_tokens, Some(&KvHeadScales { k: vec![1.0; 2], v: vec![1.0] }))
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 fp8 K scales for 3 KV heads"), "{e}");
    let e = cache
        .write_scaled(layer, &table, 0, &k, &v, n_tokens, Some(&KvHeadScales { k: vec![1.0], v: vec![1.0, -2.0, 1.0] }))
        .unwrap_err()
        .to_string();
    assert!(e.contains("-2"), "{e}");
}
