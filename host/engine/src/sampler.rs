//! Token sampling: greedy, or repetition penalty → top-k → top-p → min-p → temperature → draw,
//! the order llama.cpp's default sampler chain uses, with Ollama's option names and defaults.
//!
//! Determinism: the random source is a seeded xoshiro256** generator, so a request with a seed
//! reproduces its output exactly on the same model and backend.

/// Sampling options (Ollama's `options` names).
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = disabled.
    pub top_k: usize,
    /// 1.0 = disabled.
    pub top_p: f32,
    /// 0.0 = disabled.
    pub min_p: f32,
    /// 1.0 = disabled.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// Ollama's defaults.
    fn default() -> Self {
        SamplerConfig { temperature: 0.8, top_k: 40, top_p: 0.9, min_p: 0.0, repeat_penalty: 1.1, repeat_last_n: 64, seed: 0 }
    }
}

/// xoshiro256** seeded through SplitMix64.
#[derive(Clone, Debug)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sampler with its own random state.
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    cand: Vec<(u32, f32)>,
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        let rng = Rng::new(cfg.seed);
        Sampler { cfg, rng, cand: Vec::new() }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Pick the next token from `logits`, given the tokens so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        if self.cfg.temperature <= 0.0 {
            return argmax(logits);
        }
        let c = &mut self.cand;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        // Repetition penalty (llama.cpp / CTRL style): divide positive logits, multiply negative.
        if self.cfg.repeat_penalty != 1.0 && self.cfg.repeat_last_n > 0 {
            let start = history.len().saturating_sub(self.cfg.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                if seen.insert(t) {
                    if let Some(e) = c.get_mut(t as usize) {
                        e.1 = if e.1 > 0.0 { e.1 / self.cfg.repeat_penalty } else { e.1 * self.cfg.repeat_penalty };
                    }
                }
            }
        }
        c.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.cfg.top_k > 0 && self.cfg.top_k < c.len() {
            c.truncate(self.cfg.top_k);
        }
        // Probabilities at temperature 1 for the top-p / min-p cut (as llama.cpp's chain does).
        let probs = softmax(c.iter().map(|x| x.1), 1.0);
        if self.cfg.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = c.len();
            for (i, p) in probs.iter().enumerate() {
                cum += p;
                if cum >= self.cfg.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        if self.cfg.min_p > 0.0 {
            let pmax = probs[0];
            let keep = probs.iter().take(c.len()).take_while(|&&p| p >= self.cfg.min_p as f64 * pmax).count();
            c.truncate(keep.max(1));
        }
        let probs = softmax(c.iter().map(|x| x.1), self.cfg.temperature);
        let r = self.rng.next_f64();
        let mut cum = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cum += p;
            if r < cum {
                return c[i].0;
            }
        }
        c[c.len() - 1].0
    }
}

fn softmax(logits: impl Iterator<Item = f32> + Clone, temp: f32) -> Vec<f64> {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.map(|l| ((l as f64 - max) / temp as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32) -> SamplerConfig {
        SamplerConfig { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 0, seed: 42 }
    }

    #[test]
    fn greedy_takes_first_max() {
        let mut s = Sampler::new(cfg(0.0));
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig { seed, ..cfg(1.0) });
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    /// Sampled frequencies match softmax(logits / T) (chi-square, 3 categories, p ≈ 0.001 bound).
    #[test]
    fn frequencies_follow_softmax() {
        let logits = [1.0f32, 2.0, 0.5];
        let t = 0.7f32;
        let mut s = Sampler::new(cfg(t));
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits, &[]) as usize] += 1;
        }
        let e: Vec<f64> = logits.iter().map(|&l| (l as f64 / t as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        let chi2: f64 = (0..3)
            .map(|i| {
                let exp = n as f64 * e[i] / z;
                (counts[i] as f64 - exp).powi(2) / exp
            })
            .sum();
        assert!(chi2 < 13.8, "chi2 {chi2} counts {counts:?}");
    }

    #[test]
    fn top_k_one_is_greedy_and_penalty_demotes_repeats() {
        let mut s = Sampler::new(SamplerConfig { top_k: 1, ..cfg(1.0) });
        assert_eq!(s.sample(&[0.0, 5.0, 4.9], &[]), 1);
        let mut s = Sampler::new(SamplerConfig { top_k: 1, repeat_penalty: 2.0, repeat_last_n: 8, ..cfg(1.0) });
        assert_eq!(s.sample(&[0.0, 5.0, 4.9], &[1]), 2);
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // p ≈ [0.665, 0.245, 0.090]: top_p 0.6 keeps only the first.
        let logits = [2.0f32, 1.0, 0.0];
        let mut s = Sampler::new(SamplerConfig { top_p: 0.6, ..cfg(1.0) });
        assert!((0..200).all(|_| s.sample(&logits, &[]) == 0));
        let mut s = Sampler::new(SamplerConfig { min_p: 0.3, ..cfg(1.0) });
        assert!((0..500).all(|_| s.sample(&logits, &[]) != 2));
    }
}
