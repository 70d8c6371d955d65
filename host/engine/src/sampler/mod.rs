//! Token sampling for one request: every stage the Ollama, OpenAI and llama-server APIs expose,
//! in llama.cpp's default chain order (`common/sampling.cpp`):
//!
//! ```text
//! logits ─▶ mask ─▶ logit_bias ─▶ penalties ─▶ DRY ─┬─▶ greedy argmax                  (temperature <= 0)
//!  (row)   (constraint, never                       ├─▶ top_k ▶ typical_p ▶ top_p ▶ min_p ▶ XTC ▶ temperature ▶ draw
//!           sampled, any stage)                     └─▶ temperature ▶ mirostat v1 / v2 (draws itself)
//! ```
//!
//! - The allowed-token mask (from [`crate::constraint`]) is applied first, so no stage can ever
//!   pick a masked token, greedy included; tokens past the mask's end are masked.
//! - Penalties and DRY look at the history: the prompt (as llama.cpp's server feeds it) plus every
//!   token passed to [`Sampler::accept`]. `sample` never changes history; `accept` updates the
//!   penalty counts (O(1), see `penalties.rs`), the DRY history and mirostat's mu.
//! - Logprobs are the log-softmax of the raw logits (before mask, bias, penalties, temperature),
//!   as OpenAI and vLLM's default report them: the model's own belief.
//! - Determinism: each sampler owns two xoshiro256** streams seeded from the request's seed (one
//!   for the draw, one for XTC's coin), and every ordering is total (ties by token id), so the
//!   same seed and the same logits give the same tokens whatever else the engine runs.
//! - Cost per token: one pass over the vocabulary to build candidates (plus one copy when bias /
//!   penalties / DRY are on, and one for logprobs); the truncation stages sort only what they
//!   need (`filters.rs`), never the whole vocabulary.
//!
//! Modelled on llama.cpp's sampler chain (definitions of every stage) and vLLM's `Sampler`
//! (logprobs from raw logits, per-request generators); the code is our own.

mod filters;
mod penalties;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::request::{SamplingParams, TokenLogprob};
use filters::{desc, extend_sorted, Cand, Cands};
use penalties::{Dry, PenaltyWindow};

pub use penalties::DryBreakers;

/// Tokens mirostat 1.0 uses to estimate the Zipf exponent (llama.cpp's `m`).
const MIROSTAT_M: usize = 100;

/// What [`Sampler::sample`] picked.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Present iff the request asked for logprobs.
    pub logprob: Option<TokenLogprob>,
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

/// Is token `t` allowed by `mask` (bit t of word t/32; no mask = all allowed)?
#[inline]
pub(crate) fn mask_allows(mask: Option<&[u32]>, t: usize) -> bool {
    match mask {
        None => true,
        Some(m) => m.get(t / 32).is_some_and(|w| (w >> (t % 32)) & 1 == 1),
    }
}

/// The sampler of one request: parameters, random streams and history-dependent state.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    xtc_rng: Rng,
    /// Prompt plus accepted tokens: the source of the penalty window and of DRY's window.
    history: Vec<u32>,
    window: PenaltyWindow,
    dry: Dry,
    breakers: Option<Arc<DryBreakers>>,
    /// Mirostat's target surprise bound, updated in `accept` (starts at 2 * tau).
    mu: f32,
    /// Mirostat: the last draw's candidates and probabilities, to find the accepted token's
    /// surprise in `accept`.
    last_probs: Vec<(u32, f64)>,
    cands: Cands,
    work: Vec<f32>,
}

impl Sampler {
    /// `seed` is already resolved by the engine (SamplingParams::seed or a random one). `prompt`
    /// seeds the penalty history (penalties count prompt tokens too, as llama.cpp does). `dry`:
    /// the breakers precomputed for this model and the request's breaker list; DRY runs only
    /// with a table (pass `DryBreakers::default()` for "no breakers").
    pub fn new(params: &SamplingParams, seed: u64, prompt: &[u32], dry: Option<Arc<DryBreakers>>) -> Sampler {
        let mut s = Sampler {
            params: params.clone(),
            rng: Rng::new(seed),
            // An independent stream, so turning XTC on does not shift the draws of other stages.
            xtc_rng: Rng::new(seed ^ 0x5854_435f_5354_524d),
            history: Vec::with_capacity(prompt.len() + 256),
            window: PenaltyWindow::new(params.repeat_last_n),
            dry: Dry::new(params.dry_multiplier, params.dry_base, params.dry_allowed_length, params.dry_penalty_last_n),
            breakers: dry,
            mu: 2.0 * params.mirostat_tau,
            last_probs: Vec::new(),
            cands: Cands::default(),
            work: Vec::new(),
        };
        for &t in prompt {
            s.push_history(t);
        }
        s
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Is this sampler's pick the plain argmax of the logits (temperature 0 with nothing that
    /// changes or reports them: no bias, penalties, DRY or logprobs)? Then the backend may find
    /// it where the logits are (`Executor::forward_argmax`); `sample` would return the same
    /// token (the first maximum).
    pub fn is_plain_argmax(&self) -> bool {
        let p = &self.params;
        p.temperature <= 0.0
            && p.logit_bias.is_empty()
            && p.logprobs.is_none()
            && (p.repeat_last_n == 0 || (p.repeat_penalty == 1.0 && p.frequency_penalty == 0.0 && p.presence_penalty == 0.0))
            && !(self.dry.enabled() && self.breakers.is_some())
    }

    /// Mirostat's current mu (for tests and diagnostics).
    pub fn mirostat_mu(&self) -> f32 {
        self.mu
    }

    fn push_history(&mut self, t: u32) {
        self.history.push(t);
        self.window.on_push(&self.history);
    }

    /// Pick a token from one row of logits. `allowed`: an optional bitmask (bit t of word t/32
    /// set = token t allowed; from the constraint) applied before every other stage. Does not
    /// update history. If the mask allows nothing, the raw argmax is returned (the constraint's
    /// `commit` then reports the error); if it allows only tokens that bias/penalties drove to
    /// -inf, the first allowed one is returned.
    pub fn sample(&mut self, logits: &[f32], allowed: Option<&[u32]>) -> Sampled {
        let token = self.pick(logits, allowed);
        let logprob = self.params.logprobs.map(|n| logprob_of(logits, token, n, &mut self.cands));
        Sampled { token, logprob }
    }

    /// Record the token that was actually emitted (updates penalty counts incrementally, the DRY
    /// history, mirostat's mu).
    pub fn accept(&mut self, token: u32) {
        if self.params.mirostat != 0 && self.params.temperature > 0.0 {
            // e = surprise - tau; a token outside the last truncated set has no finite surprise
            // and leaves mu alone.
            if let Some(&(_, p)) = self.last_probs.iter().find(|x| x.0 == token) {
                let surprise = -p.log2() as f32;
                self.mu -= self.params.mirostat_eta * (surprise - self.params.mirostat_tau);
            }
            self.last_probs.clear();
        }
        self.push_history(token);
    }

    fn pick(&mut self, logits: &[f32], mask: Option<&[u32]>) -> u32 {
        let p = &self.params;
        let dry_on = self.dry.enabled() && self.breakers.is_some();
        let penalties_on = p.repeat_last_n != 0
            && !self.window.counts.is_empty()
            && (p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0);
        let lg: &[f32] = if p.logit_bias.is_empty() && !penalties_on && !dry_on {
            logits
        } else {
            self.work.clear();
            self.work.extend_from_slice(logits);
            for &(t, b) in &p.logit_bias {
                if let Some(l) = self.work.get_mut(t as usize) {
                    *l += b;
                }
            }
            if penalties_on {
                self.window.apply(&mut self.work, p.repeat_penalty, p.frequency_penalty, p.presence_penalty);
            }
            if let (true, Some(br)) = (dry_on, &self.breakers) {
                let work = &mut self.work;
                self.dry.penalties(&self.history, br, |t, pen| {
                    if let Some(l) = work.get_mut(t as usize) {
                        *l -= pen;
                    }
                });
            }
            &self.work
        };

        if p.temperature <= 0.0 {
            // First maximum among the allowed tokens (ids arrive in increasing order).
            let best = allowed_cands(lg, mask).fold(None::<Cand>, |b, c| match b {
                Some(b) if c.logit <= b.logit => Some(b),
                _ => Some(c),
            });
            return best.map(|c| c.id).unwrap_or_else(|| first_allowed(lg.len(), mask).unwrap_or_else(|| argmax(logits)));
        }

        let c = &mut self.cands;
        c.clear();
        if p.mirostat == 0 && p.top_k > 0 {
            // Only the k best ever enter the list (Ollama's and llama-server's default path).
            c.extend_top_k(p.top_k, allowed_cands(lg, mask));
        } else {
            c.v.extend(allowed_cands(lg, mask));
        }
        if c.v.is_empty() {
            return first_allowed(lg.len(), mask).unwrap_or_else(|| argmax(logits));
        }

        match p.mirostat {
            1 | 2 => {
                c.temperature(p.temperature);
                if p.mirostat == 1 {
                    c.mirostat_v1_truncate(self.mu, MIROSTAT_M, logits.len());
                } else {
                    c.mirostat_v2_truncate(self.mu);
                }
                let probs = c.probs();
                self.last_probs.clear();
                self.last_probs.extend(c.v.iter().zip(&probs).map(|(c, &q)| (c.id, q)));
            }
            _ => {
                c.top_k(p.top_k);
                c.typical(p.typical_p);
                c.top_p(p.top_p);
                c.min_p(p.min_p);
                c.xtc(p.xtc_probability, p.xtc_threshold, &mut self.xtc_rng);
                c.temperature(p.temperature);
            }
        }
        let (i, _) = c.draw(&mut self.rng);
        c.v[i].id
    }

    /// The distribution the draw would use for these logits: the surviving candidates and their
    /// renormalised probabilities, after every stage but the draw (tests compare it with naive
    /// references). Consumes XTC's coin like `sample` does.
    #[cfg(test)]
    pub(crate) fn distribution(&mut self, logits: &[f32], allowed: Option<&[u32]>) -> Vec<(u32, f64)> {
        // Run the pipeline with a throw-away draw stream, then read the candidates.
        let saved = self.rng.clone();
        let _ = self.pick(logits, allowed);
        self.rng = saved;
        let probs = self.cands.probs();
        self.cands.v.iter().zip(probs).map(|(c, q)| (c.id, q)).collect()
    }
}

/// The allowed tokens with a logit above -inf (NaN never qualifies), in increasing id order.
/// With a mask, only its set bits are visited.
fn allowed_cands<'a>(lg: &'a [f32], mask: Option<&'a [u32]>) -> impl Iterator<Item = Cand> + 'a {
    let keep = |t: usize| match lg.get(t) {
        Some(&l) if l > f32::NEG_INFINITY => Some(Cand { id: t as u32, logit: l }),
        _ => None,
    };
    let (all, masked) = match mask {
        None => (Some((0..lg.len()).filter_map(keep)), None),
        Some(m) => (None, Some(set_bits(m).filter_map(keep))),
    };
    all.into_iter().flatten().chain(masked.into_iter().flatten())
}

/// Indices of the set bits of a bitmask, increasing.
fn set_bits(m: &[u32]) -> impl Iterator<Item = usize> + '_ {
    m.iter().enumerate().flat_map(|(wi, &w)| {
        let mut bits = w;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                wi * 32 + b
            })
        })
    })
}

fn first_allowed(n: usize, mask: Option<&[u32]>) -> Option<u32> {
    (0..n).find(|&t| mask_allows(mask, t)).map(|t| t as u32)
}

/// Log-softmax of the raw logits for `token`, plus the `n` most likely tokens (ties by id).
fn logprob_of(logits: &[f32], token: u32, n: usize, scratch: &mut Cands) -> TokenLogprob {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    let sum: f64 = logits.iter().map(|&l| if l == max { 1.0 } else { ((l - max) as f64).exp() }).sum();
    let lse = max as f64 + sum.ln();
    let lp = |t: u32| logits.get(t as usize).map_or(f32::NEG_INFINITY, |&l| (l as f64 - lse) as f32);
    let mut top = Vec::new();
    if n > 0 {
        scratch.clear();
        scratch.v.extend(logits.iter().enumerate().filter(|x| !x.1.is_nan()).map(|(i, &l)| Cand { id: i as u32, logit: l }));
        extend_sorted(&mut scratch.v, &mut scratch.sorted, n, &desc);
        top.extend(scratch.v.iter().take(n).map(|c| (c.id, lp(c.id))));
    }
    TokenLogprob { token, logprob: lp(token), top }
}

/// xoshiro256** seeded through SplitMix64: small, fast, and reproducible across platforms.
#[derive(Clone, Debug)]
pub(crate) struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
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

    pub fn next_u64(&mut self) -> u64 {
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

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, 1) with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }
}
