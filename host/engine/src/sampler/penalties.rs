//! The history-dependent logit adjustments: repetition / presence / frequency penalties over a
//! sliding window with counts kept incrementally, and DRY ("don't repeat yourself") with its
//! sequence breakers precomputed once per vocabulary ([`DryBreakers`]).
//!
//! Definitions follow llama.cpp `src/llama-sampling.cpp` (penalties: CTRL-style repeat penalty
//! that divides positive and multiplies non-positive logits, then OpenAI's
//! `logit -= count * frequency + (count > 0) * presence`; DRY: koboldcpp's algorithm as ported to
//! llama.cpp, with its restart sequences, Z-algorithm and exponent clamp).
//!
//! Invariant of [`PenaltyWindow`]: `counts[t]` = occurrences of `t` among the last `last_n`
//! tokens of the history, and no zero counts are stored. It is updated in O(1) per token
//! (one increment, at most one decrement), and applied in O(distinct tokens in the window).

use std::collections::HashMap;

/// Occurrence counts of the tokens in the last `last_n` tokens of a history.
#[derive(Clone, Debug, Default)]
pub(crate) struct PenaltyWindow {
    pub last_n: usize,
    pub counts: HashMap<u32, u32>,
}

impl PenaltyWindow {
    pub fn new(last_n: usize) -> Self {
        PenaltyWindow { last_n, counts: HashMap::new() }
    }

    /// Account for `history`'s last token, which was just pushed.
    pub fn on_push(&mut self, history: &[u32]) {
        let Some(&t) = history.last() else { return };
        if self.last_n == 0 {
            return;
        }
        *self.counts.entry(t).or_insert(0) += 1;
        // The token that just left the window (usize::MAX never evicts).
        if history.len() > self.last_n {
            let old = history[history.len() - 1 - self.last_n];
            if let Some(c) = self.counts.get_mut(&old) {
                *c -= 1;
                if *c == 0 {
                    self.counts.remove(&old);
                }
            }
        }
    }

    /// Applies the penalties to `logits` (tokens outside it are ignored).
    pub fn apply(&self, logits: &mut [f32], repeat: f32, frequency: f32, presence: f32) {
        if self.last_n == 0 || (repeat == 1.0 && frequency == 0.0 && presence == 0.0) {
            return;
        }
        for (&t, &count) in &self.counts {
            let Some(l) = logits.get_mut(t as usize) else { continue };
            // Dividing a negative logit would raise it; multiply instead (the usual CTRL fix).
            if *l <= 0.0 {
                *l *= repeat;
            } else {
                *l /= repeat;
            }
            *l -= count as f32 * frequency + presence;
        }
    }
}

/// Longest breaker considered, in bytes, and longest tail kept, in tokens (llama.cpp's limits:
/// they bound the backward scan per token).
const MAX_BREAKER_BYTES: usize = 40;
const MAX_TAIL_TOKENS: usize = 20;

/// DRY sequence breakers resolved against a vocabulary: for each "head" token whose text contains
/// a breaker, or ends with the beginning of one, the token sequences ("tails") that complete it.
/// A head with an empty tail is a breaker on its own. Built once per model and breaker set.
#[derive(Clone, Debug, Default)]
pub struct DryBreakers {
    heads: HashMap<u32, Vec<Vec<u32>>>,
}

impl DryBreakers {
    /// `piece(t)`: the bytes token `t` decodes to. Tails are tokenized greedily (longest piece
    /// first) over the vocabulary, which is how a breaker split across tokens is recognised; a
    /// tail no piece sequence spells is dropped.
    pub fn new(breakers: &[String], n_vocab: usize, piece: &dyn Fn(u32) -> Vec<u8>) -> Self {
        let breakers: Vec<&[u8]> = breakers
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| {
                // Truncate at a character boundary at most MAX_BREAKER_BYTES long.
                let mut end = b.len().min(MAX_BREAKER_BYTES);
                while !b.is_char_boundary(end) {
                    end -= 1;
                }
                &b.as_bytes()[..end]
            })
            .filter(|b| !b.is_empty())
            .collect();
        let mut heads: HashMap<u32, Vec<Vec<u32>>> = HashMap::new();
        if breakers.is_empty() {
            return DryBreakers { heads };
        }
        let pieces: Vec<Vec<u8>> = (0..n_vocab as u32).map(piece).collect();
        // Piece -> lowest token id, for tokenizing tails; only multi-byte breakers have tails.
        let by_piece: HashMap<&[u8], u32> = if breakers.iter().any(|b| b.len() > 1) {
            let mut m = HashMap::new();
            for (t, p) in pieces.iter().enumerate().rev() {
                if !p.is_empty() {
                    m.insert(p.as_slice(), t as u32);
                }
            }
            m
        } else {
            HashMap::new()
        };
        let max_piece = by_piece.keys().map(|p| p.len()).max().unwrap_or(0);
        for (t, w) in pieces.iter().enumerate() {
            let t = t as u32;
            for b in &breakers {
                if contains(w, b) {
                    push_unique(heads.entry(t).or_default(), Vec::new());
                    continue;
                }
                // Every suffix of the piece that is a (proper) prefix of the breaker.
                for pos in 0..w.len() {
                    let suffix = &w[pos..];
                    if suffix.len() < b.len() && b.starts_with(suffix) {
                        if let Some(mut tail) = greedy_tokenize(&b[suffix.len()..], &by_piece, max_piece) {
                            tail.truncate(MAX_TAIL_TOKENS);
                            push_unique(heads.entry(t).or_default(), tail);
                        }
                    }
                }
            }
        }
        DryBreakers { heads }
    }

    /// Builds the table from explicit token sequences (head first), for tests and callers that
    /// tokenized the breakers themselves.
    pub fn from_token_sequences(seqs: &[Vec<u32>]) -> Self {
        let mut heads: HashMap<u32, Vec<Vec<u32>>> = HashMap::new();
        for s in seqs {
            if let Some((&h, tail)) = s.split_first() {
                push_unique(heads.entry(h).or_default(), tail.to_vec());
            }
        }
        DryBreakers { heads }
    }

    /// Is `t` a breaker on its own (it contains a whole breaker)?
    pub fn is_single_token_breaker(&self, t: u32) -> bool {
        self.heads.get(&t).is_some_and(|tails| tails.iter().any(|x| x.is_empty()))
    }

    /// Number of tokens after the most recent breaker in `window` (its length if none).
    pub(crate) fn rep_limit(&self, window: &[u32]) -> usize {
        let n = window.len();
        // i: distance from the end (0 = last token); a head at distance i with its tail on the
        // following tokens (distances i-1, i-2, ...) ends a breaker.
        for i in 0..n {
            let Some(tails) = self.heads.get(&window[n - 1 - i]) else { continue };
            let longest = tails
                .iter()
                .filter(|tail| tail.len() <= i && tail.iter().enumerate().all(|(o, &x)| window[n - 1 - (i - o - 1)] == x))
                .map(|tail| tail.len())
                .max();
            if let Some(len) = longest {
                return i - len;
            }
        }
        n
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

fn push_unique(v: &mut Vec<Vec<u32>>, x: Vec<u32>) {
    if !v.contains(&x) {
        v.push(x);
    }
}

fn greedy_tokenize(mut s: &[u8], by_piece: &HashMap<&[u8], u32>, max_piece: usize) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (len, t) = (1..=s.len().min(max_piece)).rev().find_map(|l| by_piece.get(&s[..l]).map(|&t| (l, t)))?;
        out.push(t);
        s = &s[len..];
    }
    Some(out)
}

/// Scratch buffers and parameters of DRY for one sampler.
#[derive(Clone, Debug)]
pub(crate) struct Dry {
    pub multiplier: f32,
    pub base: f32,
    pub allowed_length: usize,
    pub last_n: usize,
    repeat: Vec<usize>,
    max_repeat: HashMap<u32, usize>,
}

impl Dry {
    pub fn new(multiplier: f32, base: f32, allowed_length: usize, last_n: usize) -> Self {
        Dry { multiplier, base, allowed_length, last_n, repeat: Vec::new(), max_repeat: HashMap::new() }
    }

    pub fn enabled(&self) -> bool {
        self.multiplier != 0.0 && self.base >= 1.0 && self.last_n != 0
    }

    /// The DRY penalty per token for the next position after `history`: a token t that would
    /// extend a repeat of length n >= allowed_length (the last n tokens also occur earlier,
    /// followed by t) loses `multiplier * base^(n - allowed_length)`, n capped at the tokens
    /// after the latest sequence breaker. Tokens that are breakers themselves are spared.
    pub fn penalties(&mut self, history: &[u32], breakers: &DryBreakers, mut f: impl FnMut(u32, f32)) {
        if !self.enabled() {
            return;
        }
        let window = &history[history.len() - history.len().min(self.last_n)..];
        let n = window.len();
        if n <= self.allowed_length {
            return;
        }
        let rep_limit = breakers.rep_limit(window);
        if rep_limit < self.allowed_length {
            return;
        }
        // Z-algorithm over the reversed window: z[k] = length of the common suffix of `window`
        // and `window[..n-k]`, so repeat[n-1-k] = how long a repeat of the current suffix ends at
        // position n-1-k. Linear time.
        let at = |i: usize| window[n - 1 - i]; // reversed indexing
        self.repeat.clear();
        self.repeat.resize(n, 0);
        let (mut lt, mut rt) = (0usize, 0usize);
        for k in 1..n {
            let z = if k > rt {
                let mut m = 0;
                while m + k < n && at(m) == at(m + k) {
                    m += 1;
                }
                if m > 0 {
                    lt = k;
                    rt = k + m - 1;
                }
                m
            } else {
                let p = k - lt;
                let right = rt - k + 1;
                let zp = self.repeat[n - 1 - p];
                if zp < right {
                    zp
                } else {
                    let mut i = rt + 1;
                    while i < n && at(i) == at(i - k) {
                        i += 1;
                    }
                    lt = k;
                    rt = i - 1;
                    i - k
                }
            };
            // Stored uncapped (the Z-box reuse needs true lengths); capped when read below.
            self.repeat[n - 1 - k] = z;
        }
        self.max_repeat.clear();
        for i in 0..n - 1 {
            let len = self.repeat[i].min(rep_limit);
            if len >= self.allowed_length {
                let next = window[i + 1];
                let e = self.max_repeat.entry(next).or_insert(0);
                *e = (*e).max(len);
            }
        }
        // Clamp the exponent so base^exp stays finite in f32 (ln(f32::MAX) ~ 88.72).
        let max_exp = if self.base > 1.000_001 { (88.722_84 / self.base.ln()) as usize } else { usize::MAX };
        for (&t, &len) in &self.max_repeat {
            if breakers.is_single_token_breaker(t) {
                continue;
            }
            let exp = (len - self.allowed_length).min(max_exp);
            f(t, self.multiplier * self.base.powf(exp as f32));
        }
    }
}
