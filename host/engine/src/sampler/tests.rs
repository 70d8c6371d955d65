//! Sampler tests: each stage against a naive f64 reference written from its definition (full
//! sorts, recounts, quadratic scans), chi-square tests of the draws with fixed seeds, and the
//! engine-facing guarantees (mask, bans, logprobs, determinism).

use super::penalties::{Dry, PenaltyWindow};
use super::*;

// ----- helpers and naive references -----------------------------------------------------------

fn rand_logits(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    // Sum of uniforms: roughly normal, no external RNG crate needed.
    (0..n).map(|_| ((0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0) as f32 * scale as f32).collect()
}

fn params() -> SamplingParams {
    SamplingParams { temperature: 1.0, ..SamplingParams::neutral() }
}

/// (id, logit as f64) of every finite logit, sorted descending (ties by id): the naive full sort.
fn ref_sorted(logits: &[f32]) -> Vec<(u32, f64)> {
    let mut v: Vec<(u32, f64)> = logits.iter().enumerate().filter(|x| x.1.is_finite()).map(|(i, &l)| (i as u32, l as f64)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// Softmax of (id, logit) pairs -> (id, p), order kept.
fn ref_softmax(v: &[(u32, f64)]) -> Vec<(u32, f64)> {
    let max = v.iter().fold(f64::NEG_INFINITY, |m, x| m.max(x.1));
    let z: f64 = v.iter().map(|x| (x.1 - max).exp()).sum();
    v.iter().map(|x| (x.0, (x.1 - max).exp() / z)).collect()
}

fn ref_top_k(v: Vec<(u32, f64)>, k: usize) -> Vec<(u32, f64)> {
    v.into_iter().take(if k == 0 { usize::MAX } else { k }).collect()
}

fn ref_top_p(v: Vec<(u32, f64)>, p: f64) -> Vec<(u32, f64)> {
    let probs = ref_softmax(&v);
    let mut cum = 0.0;
    let mut n = v.len();
    for (i, x) in probs.iter().enumerate() {
        cum += x.1;
        if cum >= p {
            n = i + 1;
            break;
        }
    }
    v.into_iter().take(n).collect()
}

fn ref_min_p(v: Vec<(u32, f64)>, p: f64) -> Vec<(u32, f64)> {
    let probs = ref_softmax(&v);
    let pmax = probs.iter().fold(0.0f64, |m, x| m.max(x.1));
    v.into_iter().zip(probs).filter(|(_, q)| q.1 >= p * pmax * (1.0 - 1e-9)).map(|x| x.0).collect()
}

fn ref_typical(v: Vec<(u32, f64)>, p: f64) -> Vec<(u32, f64)> {
    let probs = ref_softmax(&v);
    let h: f64 = probs.iter().map(|x| -x.1 * x.1.ln()).sum();
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| (-probs[a].1.ln() - h).abs().total_cmp(&(-probs[b].1.ln() - h).abs()).then(v[a].0.cmp(&v[b].0)));
    let mut cum = 0.0;
    let mut out = Vec::new();
    for i in idx {
        out.push(v[i]);
        cum += probs[i].1;
        if cum > p {
            break;
        }
    }
    out
}

/// XTC when its coin says "apply": drop every token with p >= t except the least probable one.
fn ref_xtc(v: Vec<(u32, f64)>, t: f64) -> Vec<(u32, f64)> {
    let probs = ref_softmax(&v);
    let above = probs.iter().filter(|x| x.1 >= t).count();
    if above >= 2 {
        v.into_iter().skip(above - 1).collect()
    } else {
        v
    }
}

/// Back to descending logit order (typical leaves its own order; top-p sorts again).
fn resort(mut v: Vec<(u32, f64)>) -> Vec<(u32, f64)> {
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn ref_temp(v: Vec<(u32, f64)>, t: f64) -> Vec<(u32, f64)> {
    v.into_iter().map(|x| (x.0, x.1 / t)).collect()
}

/// Compares two distributions as sets of (id, p).
fn assert_same_dist(got: &[(u32, f64)], want: &[(u32, f64)], what: &str) {
    let mut g = got.to_vec();
    let mut w = ref_softmax(want);
    g.sort_by_key(|x| x.0);
    w.sort_by_key(|x| x.0);
    let gi: Vec<u32> = g.iter().map(|x| x.0).collect();
    let wi: Vec<u32> = w.iter().map(|x| x.0).collect();
    assert_eq!(gi.len(), wi.len(), "{what}: {} survivors, reference {}", gi.len(), wi.len());
    assert_eq!(gi, wi, "{what}: surviving sets differ");
    for (a, b) in g.iter().zip(&w) {
        assert!((a.1 - b.1).abs() < 1e-6 + 1e-5 * b.1, "{what}: token {} p {} vs reference {}", a.0, a.1, b.1);
    }
}

/// Chi-square upper critical value at p = 0.001 (Wilson–Hilferty; z = 3.0902).
fn chi2_crit(df: usize) -> f64 {
    let d = df as f64;
    let a = 2.0 / (9.0 * d);
    d * (1.0 - a + 3.0902 * a.sqrt()).powi(3)
}

/// Draws `n` tokens and checks their frequencies against `want` (id, p), pooling tiny cells.
fn chi_square(s: &mut Sampler, logits: &[f32], want: &[(u32, f64)], n: usize, what: &str) {
    let mut counts = std::collections::HashMap::new();
    for _ in 0..n {
        *counts.entry(s.sample(logits, None).token).or_insert(0usize) += 1;
    }
    let pmap: std::collections::HashMap<u32, f64> = want.iter().copied().collect();
    for t in counts.keys() {
        assert!(pmap.get(t).is_some_and(|&p| p > 0.0), "{what}: drew token {t} outside the reference support");
    }
    let (mut chi2, mut df) = (0.0, 0usize);
    let (mut pool_e, mut pool_o) = (0.0, 0.0);
    for &(t, p) in want {
        let e = p * n as f64;
        let o = *counts.get(&t).unwrap_or(&0) as f64;
        if e < 5.0 {
            pool_e += e;
            pool_o += o;
        } else {
            chi2 += (o - e).powi(2) / e;
            df += 1;
        }
    }
    if pool_e > 0.0 {
        chi2 += (pool_o - pool_e).powi(2) / pool_e.max(1e-9);
        df += 1;
    }
    let df = df.saturating_sub(1).max(1);
    assert!(chi2 < chi2_crit(df), "{what}: chi2 {chi2:.1} over {df} df (critical {:.1})", chi2_crit(df));
}

fn mask_of(n: usize, allowed: impl Fn(usize) -> bool) -> Vec<u32> {
    let mut m = vec![0u32; n.div_ceil(32)];
    for t in (0..n).filter(|&t| allowed(t)) {
        m[t / 32] |= 1 << (t % 32);
    }
    m
}

// ----- each filter alone against its reference ---------------------------------------------

#[test]
fn argmax_takes_first_max() {
    assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
    let mut s = Sampler::new(&SamplingParams::greedy(), 1, &[], None);
    assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], None).token, 1);
}

/// A stage's name, its parameters and the reference's surviving (id, logit) list.
type Case = (&'static str, SamplingParams, Vec<(u32, f64)>);

#[test]
fn each_filter_alone_matches_its_reference() {
    let mut rng = Rng::new(11);
    for trial in 0..20 {
        let n = [50, 300, 2000][trial % 3];
        let logits = rand_logits(&mut rng, n, 2.5);
        let sorted = ref_sorted(&logits);
        let cases: Vec<Case> = vec![
            ("top_k", SamplingParams { top_k: 17, ..params() }, ref_top_k(sorted.clone(), 17)),
            ("top_p", SamplingParams { top_p: 0.7, ..params() }, ref_top_p(sorted.clone(), 0.7)),
            ("min_p", SamplingParams { min_p: 0.05, ..params() }, ref_min_p(sorted.clone(), 0.05)),
            ("typical", SamplingParams { typical_p: 0.6, ..params() }, ref_typical(sorted.clone(), 0.6)),
            ("xtc", SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.02, ..params() }, ref_xtc(sorted.clone(), 0.02)),
            ("temperature", SamplingParams { temperature: 0.6, ..params() }, ref_temp(sorted.clone(), 0.6)),
            (
                "chain",
                SamplingParams { top_k: 200, typical_p: 0.95, top_p: 0.9, min_p: 0.01, temperature: 0.8, ..params() },
                ref_temp(ref_min_p(ref_top_p(resort(ref_typical(ref_top_k(sorted.clone(), 200), 0.95)), 0.9), 0.01), 0.8),
            ),
        ];
        for (what, p, want) in cases {
            let mut s = Sampler::new(&p, 5, &[], None);
            let got = s.distribution(&logits, None);
            assert_same_dist(&got, &want, &format!("{what} (trial {trial}, n {n})"));
        }
    }
}

/// The chain with top_k off on a 150k vocabulary (no full sort inside) gives exactly what the
/// naive full-sort reference gives.
#[test]
fn large_vocabulary_without_top_k_matches_full_sort() {
    let mut rng = Rng::new(3);
    let logits = rand_logits(&mut rng, 150_000, 3.0);
    let sorted = ref_sorted(&logits);
    for (p, want) in [
        (SamplingParams { top_p: 0.95, ..params() }, ref_top_p(sorted.clone(), 0.95)),
        (SamplingParams { top_p: 0.5, min_p: 0.001, ..params() }, ref_min_p(ref_top_p(sorted.clone(), 0.5), 0.001)),
        (SamplingParams { typical_p: 0.3, ..params() }, ref_typical(sorted.clone(), 0.3)),
        (SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.0001, ..params() }, ref_xtc(sorted.clone(), 0.0001)),
        (
            SamplingParams { top_k: 40, top_p: 0.9, temperature: 0.8, ..params() },
            ref_temp(ref_top_p(ref_top_k(sorted.clone(), 40), 0.9), 0.8),
        ),
    ] {
        let mut s = Sampler::new(&p, 9, &[], None);
        let got = s.distribution(&logits, None);
        assert_same_dist(&got, &want, &format!("150k vocabulary, {p:?}"));
    }
}

// ----- the draws: chi-square with fixed seeds (p = 0.001 bound) --------------------------------

#[test]
fn draws_follow_the_filtered_distribution() {
    let mut rng = Rng::new(21);
    let logits = rand_logits(&mut rng, 40, 1.5);
    let sorted = ref_sorted(&logits);
    let n = 30_000;
    for (what, p, want) in [
        ("temperature", SamplingParams { temperature: 0.7, ..params() }, ref_temp(sorted.clone(), 0.7)),
        ("top_k+top_p", SamplingParams { top_k: 10, top_p: 0.8, ..params() }, ref_top_p(ref_top_k(sorted.clone(), 10), 0.8)),
        ("typical", SamplingParams { typical_p: 0.5, ..params() }, ref_typical(sorted.clone(), 0.5)),
        ("min_p", SamplingParams { min_p: 0.2, temperature: 1.3, ..params() }, ref_temp(ref_min_p(sorted.clone(), 0.2), 1.3)),
    ] {
        let mut s = Sampler::new(&p, 77, &[], None);
        chi_square(&mut s, &logits, &ref_softmax(&want), n, what);
    }
    // XTC with probability 0.5: a mixture of the distribution with and without the cut.
    let with = ref_softmax(&ref_xtc(sorted.clone(), 0.05));
    let without = ref_softmax(&sorted);
    let mix: Vec<(u32, f64)> =
        without.iter().map(|&(t, p)| (t, 0.5 * p + 0.5 * with.iter().find(|x| x.0 == t).map_or(0.0, |x| x.1))).collect();
    let mut s = Sampler::new(&SamplingParams { xtc_probability: 0.5, xtc_threshold: 0.05, ..params() }, 78, &[], None);
    chi_square(&mut s, &logits, &mix, n, "xtc 0.5");
}

#[test]
fn xtc_removes_top_choices_except_the_least_probable() {
    // p ≈ [0.42, 0.31, 0.16, 0.06, 0.03, ...]: threshold 0.1 -> three above; keep the third.
    let logits = [3.0f32, 2.7, 2.05, 1.1, 0.4, 0.0, -1.0];
    let p = SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.1, ..params() };
    let mut s = Sampler::new(&p, 1, &[], None);
    let got = s.distribution(&logits, None);
    let mut ids: Vec<u32> = got.iter().map(|x| x.0).collect();
    ids.sort();
    assert_eq!(ids, vec![2, 3, 4, 5, 6]);
    // Only one token above the threshold: nothing removed.
    let p = SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.45, ..params() };
    let mut s = Sampler::new(&p, 1, &[], None);
    assert_eq!(s.distribution(&logits, None).len(), logits.len());
    // threshold > 0.5: off.
    let p = SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.6, ..params() };
    let mut s = Sampler::new(&p, 1, &[], None);
    assert_eq!(s.distribution(&logits, None).len(), logits.len());
}

// ----- penalties -------------------------------------------------------------------------------

#[test]
fn penalty_counts_are_incremental_and_equal_a_recount() {
    let mut rng = Rng::new(5);
    for last_n in [1usize, 3, 16, 64, usize::MAX] {
        let mut w = PenaltyWindow::new(last_n);
        let mut history = Vec::new();
        for _ in 0..400 {
            let t = (rng.next_u64() % 12) as u32;
            history.push(t);
            w.on_push(&history);
            let start = history.len() - history.len().min(last_n);
            let mut recount = std::collections::HashMap::new();
            for &x in &history[start..] {
                *recount.entry(x).or_insert(0u32) += 1;
            }
            assert_eq!(w.counts, recount, "window {last_n} after {} tokens", history.len());
        }
    }
}

#[test]
fn penalties_follow_their_formulas_and_count_the_prompt() {
    let p = SamplingParams {
        repeat_penalty: 1.5,
        presence_penalty: 0.25,
        frequency_penalty: 0.5,
        repeat_last_n: 4,
        temperature: 1.0,
        ..params()
    };
    // Prompt [1, 2, 2] then accept 3, 2: window (last 4) = [2, 2, 3, 2] -> counts {2: 3, 3: 1}.
    let mut s = Sampler::new(&p, 1, &[1, 2, 2], None);
    s.accept(3);
    s.accept(2);
    let logits = [0.5f32, 1.0, 2.0, -1.0, 0.0];
    let want = |l: f64, c: f64| (if l <= 0.0 { l * 1.5 } else { l / 1.5 }) - c * 0.5 - 0.25;
    let mut expect: Vec<(u32, f64)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l as f64)).collect();
    expect[2].1 = want(2.0, 3.0);
    expect[3].1 = want(-1.0, 1.0);
    let got = s.distribution(&logits, None);
    assert_same_dist(&got, &expect, "penalties");
}

#[test]
fn logit_bias_minus_infinity_bans() {
    let logits = [1.0f32, 5.0, 4.0, 0.0];
    let p = SamplingParams { logit_bias: vec![(1, f32::NEG_INFINITY), (3, 2.0)], ..params() };
    let mut s = Sampler::new(&p, 4, &[], None);
    assert!((0..3000).all(|_| s.sample(&logits, None).token != 1));
    let mut g = Sampler::new(&SamplingParams { temperature: 0.0, ..p.clone() }, 4, &[], None);
    assert_eq!(g.sample(&logits, None).token, 2);
    assert_same_dist(&s.distribution(&logits, None), &[(0, 1.0), (2, 4.0), (3, 2.0)], "bias");
}

// ----- DRY ------------------------------------------------------------------------------------

/// Naive DRY: for each earlier end position i, the longest L <= rep_limit with
/// w[i-L+1..=i] == w[n-L..n]; the token after it gets multiplier * base^(L - allowed).
fn ref_dry(w: &[u32], single_breakers: &[u32], mult: f64, base: f64, allowed: usize) -> std::collections::HashMap<u32, f64> {
    let n = w.len();
    let mut out = std::collections::HashMap::new();
    if n <= allowed {
        return out;
    }
    let rep_limit = w.iter().rposition(|t| single_breakers.contains(t)).map_or(n, |p| n - 1 - p);
    if rep_limit < allowed {
        return out;
    }
    let mut best: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for i in 0..n - 1 {
        let mut l = 0;
        while l < i + 1 && l < rep_limit && w[i - l] == w[n - 1 - l] {
            l += 1;
        }
        if l >= allowed {
            let e = best.entry(w[i + 1]).or_insert(0);
            *e = (*e).max(l);
        }
    }
    for (t, l) in best {
        if !single_breakers.contains(&t) {
            out.insert(t, mult * base.powi((l - allowed) as i32));
        }
    }
    out
}

fn dry_of(w: &[u32], breakers: &DryBreakers, allowed: usize) -> std::collections::HashMap<u32, f64> {
    let mut d = Dry::new(0.8, 1.75, allowed, usize::MAX);
    let mut out = std::collections::HashMap::new();
    d.penalties(w, breakers, |t, p| {
        out.insert(t, p as f64);
    });
    out
}

#[test]
fn dry_matches_naive_reference_on_random_repeats() {
    let mut rng = Rng::new(8);
    let breakers = DryBreakers::from_token_sequences(&[vec![9]]);
    for trial in 0..300 {
        let n = 1 + (rng.next_u64() % 80) as usize;
        let alphabet = 2 + trial % 4;
        let with_breakers = trial % 3 == 0;
        let w: Vec<u32> = (0..n)
            .map(|_| if with_breakers && rng.next_u64().is_multiple_of(15) { 9 } else { (rng.next_u64() % alphabet as u64) as u32 })
            .collect();
        let allowed = 1 + trial % 3;
        let got = dry_of(&w, &breakers, allowed);
        let want = ref_dry(&w, &[9], 0.8, 1.75, allowed);
        assert_eq!(got.len(), want.len(), "trial {trial}: {w:?}");
        for (t, p) in &want {
            let g = got.get(t).copied().unwrap_or(f64::NAN);
            assert!((g - p).abs() <= 1e-4 * p, "trial {trial} token {t}: {g} vs {p} in {w:?}");
        }
    }
}

#[test]
fn dry_penalises_a_repeat_and_a_breaker_stops_it() {
    let none = DryBreakers::default();
    // a b c d ... a b c: emitting d would extend the repeat "a b c" (length 3).
    let w = [1, 2, 3, 4, 7, 8, 1, 2, 3];
    let got = dry_of(&w, &none, 2);
    assert_eq!(got.len(), 1);
    assert!((got[&4] - 0.8 * 1.75f64.powi(1)).abs() < 1e-5);
    // A breaker (token 5) inside the current suffix caps the repeat at the 2 tokens after it.
    let br = DryBreakers::from_token_sequences(&[vec![5]]);
    let w = [1, 5, 2, 3, 4, 7, 8, 1, 5, 2, 3];
    let got = dry_of(&w, &br, 2);
    assert!((got[&4] - 0.8).abs() < 1e-6, "{got:?}");
    // ... and with allowed_length 3, that capped repeat is no longer penalised at all.
    assert!(dry_of(&w, &br, 3).is_empty());
    // Through the sampler: the penalty lands on the logit.
    let p = SamplingParams { dry_multiplier: 0.8, dry_allowed_length: 2, ..params() };
    let mut s = Sampler::new(&p, 1, &[1, 2, 3, 4, 7, 8, 1, 2, 3], Some(Arc::new(none)));
    let logits = [0.0f32; 10];
    let got = s.distribution(&logits, None);
    let mut want: Vec<(u32, f64)> = (0..10).map(|t| (t, 0.0)).collect();
    want[4].1 = -0.8 * 1.75;
    assert_same_dist(&got, &want, "dry in sampler");
}

#[test]
fn dry_breakers_from_the_vocabulary() {
    // Pieces: 0 "a", 1 "b", 2 ":", 3 "x:", 4 "\n", 5 "ya", 6 "bc".
    let pieces: Vec<&[u8]> = vec![b"a", b"b", b":", b"x:", b"\n", b"ya", b"bc"];
    let piece = |t: u32| pieces[t as usize].to_vec();
    let b = DryBreakers::new(&[":".into(), "ab".into()], pieces.len(), &piece);
    assert!(b.is_single_token_breaker(2) && b.is_single_token_breaker(3));
    assert!(!b.is_single_token_breaker(0) && !b.is_single_token_breaker(4));
    // "ab" split as "a" + "b", or "ya" + "b": the head ends with "a", the tail is [b].
    assert_eq!(b.rep_limit(&[6, 6, 0, 1, 6, 6]), 2);
    assert_eq!(b.rep_limit(&[5, 1, 6]), 1);
    assert_eq!(b.rep_limit(&[0, 6, 6]), 3); // "a" then "bc": not "ab" by token
    assert_eq!(b.rep_limit(&[6, 3, 6, 6, 6]), 3);
}

// ----- mirostat ---------------------------------------------------------------------------------

#[test]
fn mirostat_updates_mu_per_the_paper() {
    let mut rng = Rng::new(31);
    for version in [1u8, 2] {
        let p = SamplingParams { mirostat: version, mirostat_tau: 3.0, mirostat_eta: 0.2, temperature: 0.9, ..params() };
        let mut s = Sampler::new(&p, 17, &[], None);
        assert!((s.mirostat_mu() - 6.0).abs() < 1e-6);
        for _ in 0..50 {
            let logits = rand_logits(&mut rng, 500, 2.0);
            let mu = s.mirostat_mu() as f64;
            // Reference truncation from the definitions, on logits / T.
            let sorted = ref_temp(ref_sorted(&logits), 0.9);
            let kept = if version == 2 {
                let probs = ref_softmax(&sorted);
                let k = probs.iter().filter(|x| -x.1.log2() <= mu).count().max(1);
                ref_top_k(sorted.clone(), k)
            } else {
                let (mut tb, mut tt) = (0.0, 0.0);
                for i in 0..99 {
                    let t = ((i + 2) as f64 / (i + 1) as f64).ln();
                    tb += t * (sorted[i].1 - sorted[i + 1].1);
                    tt += t * t;
                }
                let s_hat = tb / tt;
                let e = s_hat - 1.0;
                let k = (e * mu.exp2() / (1.0 - 500f64.powf(-e))).powf(1.0 / s_hat);
                ref_top_k(sorted.clone(), (k as usize).max(1))
            };
            let want = ref_softmax(&kept);
            let got = s.sample(&logits, None).token;
            let pt = want.iter().find(|x| x.0 == got).map(|x| x.1);
            let pt = pt.unwrap_or_else(|| panic!("mirostat v{version} drew {got} outside the reference set"));
            s.accept(got);
            let expect = mu - 0.2 * (-pt.log2() - 3.0);
            assert!((s.mirostat_mu() as f64 - expect).abs() < 1e-3, "v{version}: mu {} vs {expect}", s.mirostat_mu());
        }
    }
}

// ----- engine-facing guarantees ---------------------------------------------------------------------

#[test]
fn the_mask_is_honoured_by_every_stage() {
    let mut rng = Rng::new(41);
    let configs = [
        SamplingParams::greedy(),
        SamplingParams::ollama_defaults(),
        SamplingParams { top_k: 1, ..params() },
        SamplingParams { top_p: 0.05, ..params() },
        SamplingParams { min_p: 0.9, ..params() },
        SamplingParams { typical_p: 0.1, ..params() },
        SamplingParams { xtc_probability: 1.0, xtc_threshold: 0.001, ..params() },
        SamplingParams { mirostat: 1, ..params() },
        SamplingParams { mirostat: 2, mirostat_tau: 0.5, ..params() },
        SamplingParams { repeat_penalty: 1.3, presence_penalty: 1.0, dry_multiplier: 1.0, ..params() },
    ];
    for (ci, p) in configs.iter().enumerate() {
        let mut s = Sampler::new(p, ci as u64, &[3, 4, 3, 4, 3], Some(Arc::new(DryBreakers::default())));
        for step in 0..200 {
            let n = 700;
            let logits = rand_logits(&mut rng, n, 3.0);
            let best = argmax(&logits) as usize;
            // Never the argmax; a sparse random subset; the mask is shorter than the logits row.
            let salt = rng.next_u64();
            let mask = mask_of(600, |t| t != best && (t as u64 ^ salt).is_multiple_of(7));
            let t = s.sample(&logits, Some(&mask)).token as usize;
            assert!(mask_allows(Some(&mask), t), "config {ci} step {step}: sampled masked token {t}");
            s.accept(t as u32);
        }
    }
}

#[test]
fn logprobs_equal_a_float64_log_softmax() {
    let mut rng = Rng::new(51);
    let logits = rand_logits(&mut rng, 5000, 4.0);
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    // Bias and temperature change the draw but not the reported (raw) logprobs.
    let p = SamplingParams { logprobs: Some(5), temperature: 0.3, logit_bias: vec![(7, 3.0)], ..params() };
    let mut s = Sampler::new(&p, 2, &[], None);
    for _ in 0..20 {
        let r = s.sample(&logits, None);
        let lp = r.logprob.expect("logprobs were asked for");
        assert_eq!(lp.token, r.token);
        assert!((lp.logprob as f64 - (logits[r.token as usize] as f64 - lse)).abs() < 1e-5);
        let want: Vec<u32> = ref_sorted(&logits).iter().take(5).map(|x| x.0).collect();
        assert_eq!(lp.top.iter().map(|x| x.0).collect::<Vec<_>>(), want);
        for &(t, l) in &lp.top {
            assert!((l as f64 - (logits[t as usize] as f64 - lse)).abs() < 1e-5);
        }
    }
    let mut none = Sampler::new(&params(), 2, &[], None);
    assert!(none.sample(&logits, None).logprob.is_none());
}

#[test]
fn same_seed_same_tokens_other_seed_differs() {
    let run = |seed| {
        let mut rng = Rng::new(99);
        let p = SamplingParams { xtc_probability: 0.3, repeat_penalty: 1.2, ..SamplingParams::ollama_defaults() };
        let mut s = Sampler::new(&p, seed, &[1, 2, 3], None);
        (0..200)
            .map(|_| {
                let logits = rand_logits(&mut rng, 1000, 2.0);
                let t = s.sample(&logits, None).token;
                s.accept(t);
                t
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn ties_go_to_the_lower_token_id() {
    // 3000 equal logits: the running-threshold top-k must keep ids 0..5 (the first maxima).
    let logits = vec![1.0f32; 3000];
    let mut s = Sampler::new(&SamplingParams { top_k: 5, ..params() }, 1, &[], None);
    let mut ids: Vec<u32> = s.distribution(&logits, None).iter().map(|x| x.0).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    let mut g = Sampler::new(&SamplingParams::greedy(), 1, &[], None);
    assert_eq!(g.sample(&logits, Some(&mask_of(3000, |t| t >= 7))).token, 7);
}
