//! The candidate list and the truncation stages that work on it: top-k, typical-p, top-p, min-p,
//! XTC, temperature, mirostat v1/v2 and the final draw, each as llama.cpp's `llama-sampling.cpp`
//! defines it (its default chain order is kept by the caller, `Sampler::sample`).
//!
//! Invariants of [`Cands`]:
//! - every candidate has a logit > -inf (banned and masked tokens never enter the list);
//! - `v[..sorted]` is in [`desc`] order and no later entry ranks above any of them:
//!
//!   ```text
//!   v: [ 9.1  7.3  7.3  5.0 | 2.2  4.9  -1.0  0.3 ... ]
//!        `---- sorted ----'   `-- unordered, each <= 5.0 --'
//!   ```
//!
//!   Stages that need order (top-k, top-p, XTC, mirostat) grow that prefix with
//!   `select_nth_unstable_by` only as far as they walk, so a 150k vocabulary is never fully sorted
//!   per token; with `top_k` set (Ollama's default 40) nothing but the k survivors is ever sorted.
//! - `desc` is a total order (ties broken by token id), so every partial selection is
//!   deterministic: same logits, same survivors, same order, same draw.

use std::cmp::Ordering;

use super::Rng;

/// One candidate token and its current (biased, penalised, tempered) logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cand {
    pub id: u32,
    pub logit: f32,
}

/// Descending by logit, ties by ascending token id (llama.cpp keeps the first maximum too).
pub(crate) fn desc(a: &Cand, b: &Cand) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// `exp(l - max)`, with `l == max` giving 1 even when both are +inf (a +inf logit bias).
#[inline]
fn rel_exp(l: f32, max: f32) -> f64 {
    if l == max {
        1.0
    } else {
        ((l - max) as f64).exp()
    }
}

/// Walks `items` in `cmp` order, calling `take` on each until it returns true, and returns how
/// many were walked. Only what the walk reaches is sorted: `items[..*sorted]` is the sorted
/// prefix on entry and on exit, grown by partial selection in chunks of 64, 256, 1024, ...
pub(crate) fn walk_sorted<T>(
    items: &mut [T],
    sorted: &mut usize,
    cmp: impl Fn(&T, &T) -> Ordering,
    mut take: impl FnMut(&T) -> bool,
) -> usize {
    let mut i = 0;
    while i < items.len() {
        if i == *sorted {
            let want = (*sorted * 4).max(64);
            extend_sorted(items, sorted, want, &cmp);
        }
        let stop = take(&items[i]);
        i += 1;
        if stop {
            break;
        }
    }
    i
}

/// Grows the sorted prefix of `items` to `m` entries (or all of them).
pub(crate) fn extend_sorted<T>(items: &mut [T], sorted: &mut usize, m: usize, cmp: &impl Fn(&T, &T) -> Ordering) {
    let m = m.min(items.len());
    if m <= *sorted {
        return;
    }
    let tail = &mut items[*sorted..];
    let need = m - *sorted;
    if need < tail.len() {
        tail.select_nth_unstable_by(need - 1, cmp);
    }
    tail[..need].sort_unstable_by(cmp);
    *sorted = m;
}

/// The candidate list of one sampling step (see the module header for its invariants).
#[derive(Default, Debug)]
pub(crate) struct Cands {
    pub v: Vec<Cand>,
    pub sorted: usize,
}

impl Cands {
    pub fn clear(&mut self) {
        self.v.clear();
        self.sorted = 0;
    }

    pub fn max_logit(&self) -> f32 {
        if self.sorted > 0 {
            return self.v[0].logit;
        }
        self.v.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.logit))
    }

    /// The softmax normaliser: (max logit, sum of exp(l - max)).
    pub fn norm(&self) -> (f32, f64) {
        let max = self.max_logit();
        (max, self.v.iter().map(|c| rel_exp(c.logit, max)).sum())
    }

    /// Normalised probabilities of the current list, in list order.
    pub fn probs(&self) -> Vec<f64> {
        let (max, sum) = self.norm();
        self.v.iter().map(|c| rel_exp(c.logit, max) / sum).collect()
    }

    fn truncate(&mut self, n: usize) {
        self.v.truncate(n);
        self.sorted = self.sorted.min(n);
    }

    /// Fills the list from candidates in increasing id order keeping only the `k` best (exactly
    /// the set `top_k` keeps) without storing the rest: a running threshold, the k-th best logit
    /// so far, rejects most tokens with one comparison. A later token equal to the threshold
    /// ranks below it (ties go to the lower id), hence the strict comparison.
    pub fn extend_top_k(&mut self, k: usize, cands: impl Iterator<Item = Cand>) {
        let cap = (4 * k).max(1024);
        let mut thr = f32::NEG_INFINITY;
        for c in cands {
            if c.logit > thr || self.v.len() < k {
                self.v.push(c);
                if self.v.len() >= cap {
                    self.v.select_nth_unstable_by(k - 1, desc);
                    self.v.truncate(k);
                    thr = self.v[k - 1].logit;
                }
            }
        }
        self.sorted = 0;
        self.top_k(k);
    }

    /// Keeps the `k` highest logits (k = 0: off).
    pub fn top_k(&mut self, k: usize) {
        if k == 0 || k >= self.v.len() {
            return;
        }
        extend_sorted(&mut self.v, &mut self.sorted, k, &desc);
        self.truncate(k);
    }

    /// Keeps the smallest most-probable prefix whose probability reaches `p` (p >= 1: off).
    ///
    /// Short or already sorted lists are walked in order. A long unsorted list (top_k off) is
    /// first cut by a histogram of probability mass over logit buckets below the maximum: the
    /// buckets wholly inside the nucleus are kept without sorting, and only the bucket where the
    /// cumulative mass crosses `p` is sorted (a flat 150k-token distribution would otherwise
    /// need most of the vocabulary sorted).
    pub fn top_p(&mut self, p: f32) {
        if p >= 1.0 || self.v.len() < 2 {
            return;
        }
        let (max, sum) = self.norm();
        let target = p as f64 * sum;
        if self.sorted == self.v.len() || self.v.len() <= 2048 || !max.is_finite() {
            let mut cum = 0.0;
            let n = walk_sorted(&mut self.v, &mut self.sorted, desc, |c| {
                cum += rel_exp(c.logit, max);
                cum >= target
            });
            self.truncate(n.max(1));
            return;
        }
        const BUCKETS: usize = 512;
        const SPAN: f32 = 48.0; // nats below the max; lower logits share the last bucket
        let bucket = |l: f32| (((max - l) * (BUCKETS as f32 / SPAN)) as usize).min(BUCKETS - 1);
        let mut mass = [0.0f64; BUCKETS];
        for c in &self.v {
            mass[bucket(c.logit)] += rel_exp(c.logit, max);
        }
        let (mut cut, mut above) = (BUCKETS - 1, 0.0);
        for (b, &m) in mass.iter().enumerate() {
            if above + m >= target {
                cut = b;
                break;
            }
            above += m;
        }
        // Partition: buckets above the cut, then the cut bucket, then the rest (dropped).
        let mut n_above = 0;
        for j in 0..self.v.len() {
            if bucket(self.v[j].logit) < cut {
                self.v.swap(n_above, j);
                n_above += 1;
            }
        }
        let mut n_mid = n_above;
        for j in n_above..self.v.len() {
            if bucket(self.v[j].logit) == cut {
                self.v.swap(n_mid, j);
                n_mid += 1;
            }
        }
        let mut cum = above;
        let mut mid_sorted = 0;
        let k = walk_sorted(&mut self.v[n_above..n_mid], &mut mid_sorted, desc, |c| {
            cum += rel_exp(c.logit, max);
            cum >= target
        });
        self.v.truncate((n_above + k).max(1));
        // Sorted only if nothing sits above the cut bucket (its walked part is sorted).
        self.sorted = if n_above == 0 { self.v.len() } else { 0 };
    }

    /// Keeps tokens whose probability is at least `p` times the most likely one's (p <= 0: off).
    /// Works on logits, as llama.cpp does: l >= l_max + ln p.
    pub fn min_p(&mut self, p: f32) {
        if p <= 0.0 || self.v.is_empty() {
            return;
        }
        let min_logit = self.max_logit() + p.ln();
        let sorted = self.sorted;
        let kept_in_prefix = self.v[..sorted].iter().filter(|c| c.logit >= min_logit).count();
        self.v.retain(|c| c.logit >= min_logit);
        // The kept part of a sorted prefix is again a prefix (everything after it ranks lower).
        self.sorted = kept_in_prefix;
    }

    /// Locally typical sampling (Meister et al. 2022): keeps the tokens whose surprise is closest
    /// to the distribution's entropy until their probability exceeds `p` (p >= 1: off). The
    /// survivors are left in that order, as llama.cpp leaves them (no longer sorted by logit).
    /// Zero-probability tokens (exp underflow) count 0 towards the entropy instead of NaN.
    pub fn typical(&mut self, p: f32) {
        if p >= 1.0 || self.v.len() < 2 {
            return;
        }
        let probs = self.probs();
        let entropy: f64 = probs.iter().filter(|&&q| q > 0.0).map(|&q| -q * q.ln()).sum();
        let mut items: Vec<(f64, f64, Cand)> = probs
            .iter()
            .zip(&self.v)
            .map(|(&q, &c)| {
                let surprise = if q > 0.0 { -q.ln() } else { f64::INFINITY };
                ((surprise - entropy).abs(), q, c)
            })
            .collect();
        let by_shift = |a: &(f64, f64, Cand), b: &(f64, f64, Cand)| a.0.total_cmp(&b.0).then(a.2.id.cmp(&b.2.id));
        let mut sorted = 0;
        let mut cum = 0.0;
        let n = walk_sorted(&mut items, &mut sorted, by_shift, |it| {
            cum += it.1;
            cum > p as f64
        });
        self.v.clear();
        self.v.extend(items[..n.max(1)].iter().map(|it| it.2));
        self.sorted = 0;
    }

    /// XTC ("exclude top choices"): with probability `probability`, removes every token whose
    /// probability is at least `threshold` except the least probable of them, so that the text
    /// leaves the most predictable path while staying coherent. Off when probability <= 0,
    /// threshold > 0.5 (then at most one token can pass) or fewer than two candidates; the random
    /// draw happens only when on, from its own stream.
    pub fn xtc(&mut self, probability: f32, threshold: f32, rng: &mut Rng) {
        if probability <= 0.0 || threshold > 0.5 || self.v.len() < 2 {
            return;
        }
        if rng.next_f32() > probability {
            return;
        }
        let (max, sum) = self.norm();
        let mut n_above = 0usize;
        walk_sorted(&mut self.v, &mut self.sorted, desc, |c| {
            let above = rel_exp(c.logit, max) / sum >= threshold as f64;
            n_above += above as usize;
            !above
        });
        if n_above >= 2 {
            let cut = n_above - 1;
            self.v.drain(..cut);
            self.sorted -= cut;
        }
    }

    /// Divides every logit by `t` (> 0); order is unchanged.
    pub fn temperature(&mut self, t: f32) {
        if t != 1.0 {
            for c in &mut self.v {
                c.logit /= t;
            }
        }
    }

    /// Mirostat 1.0 (Basu et al. 2021, algorithm 1) truncation: estimates the Zipf exponent s
    /// from the `m` most likely tokens, then keeps the top k with
    /// k = (e * 2^mu / (1 - N^-e))^(1/s), e = s - 1, N = `n_vocab`.
    pub fn mirostat_v1_truncate(&mut self, mu: f32, m: usize, n_vocab: usize) {
        if self.v.len() < 2 {
            return;
        }
        extend_sorted(&mut self.v, &mut self.sorted, m, &desc);
        let top = m.min(self.v.len());
        let (mut sum_tb, mut sum_tt) = (0.0f64, 0.0f64);
        for i in 0..top - 1 {
            let t = ((i + 2) as f64 / (i + 1) as f64).ln();
            // ln(p_i / p_{i+1}) is the logit difference: no underflow for far tails.
            let b = self.v[i].logit as f64 - self.v[i + 1].logit as f64;
            sum_tb += t * b;
            sum_tt += t * t;
        }
        let s_hat = sum_tb / sum_tt;
        let k = mirostat_k(s_hat, mu as f64, n_vocab as f64);
        let k = if k.is_finite() { (k as usize).max(1) } else { self.v.len() };
        self.top_k(k);
    }

    /// Mirostat 2.0 truncation: keeps the tokens whose surprise -log2 p is at most `mu` (at
    /// least the most likely one).
    pub fn mirostat_v2_truncate(&mut self, mu: f32) {
        if self.v.len() < 2 {
            return;
        }
        let (max, sum) = self.norm();
        let min_p = (-(mu as f64)).exp2();
        let sorted = self.sorted;
        let keep = |c: &Cand| rel_exp(c.logit, max) / sum >= min_p;
        let kept_in_prefix = self.v[..sorted].iter().filter(|c| keep(c)).count();
        if self.v.iter().any(keep) {
            self.v.retain(keep);
            self.sorted = kept_in_prefix;
        } else {
            self.top_k(1);
        }
    }

    /// Draws one candidate in proportion to exp(logit) and returns its index and probability.
    pub fn draw(&self, rng: &mut Rng) -> (usize, f64) {
        let (max, sum) = self.norm();
        let target = rng.next_f64() * sum;
        let mut cum = 0.0;
        let mut last_positive = 0;
        for (i, c) in self.v.iter().enumerate() {
            let e = rel_exp(c.logit, max);
            if e > 0.0 {
                last_positive = i;
            }
            cum += e;
            if cum > target {
                return (i, e / sum);
            }
        }
        // Rounding left the target unreached: the last token with any mass.
        let e = rel_exp(self.v[last_positive].logit, max);
        (last_positive, e / sum)
    }
}

/// k of mirostat 1.0, with the e -> 0 limit (2^mu / ln N)^(1/s) where the formula is 0/0.
pub(crate) fn mirostat_k(s_hat: f64, mu: f64, n: f64) -> f64 {
    let e = s_hat - 1.0;
    let base = if e.abs() < 1e-9 { mu.exp2() / n.ln() } else { e * mu.exp2() / (1.0 - n.powf(-e)) };
    base.powf(1.0 / s_hat)
}
