//! `rocmforge bench MODEL`: prompt processing (ppN) and token generation (tgN) throughput, the two
//! numbers llama-bench reports, measured the same way: pp = one N-token prompt from an empty
//! cache; tg = N single-token steps. Random token ids (fixed seed) so the tokenizer plays no part.
//! Each test runs `reps` times after one warm-up and reports mean ± stddev tokens/s.

use std::time::Instant;

use anyhow::Result;

use super::session::Session;

pub struct BenchResult {
    pub test: String,
    pub mean: f64,
    pub stddev: f64,
}

fn stats(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

fn tokens(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % n_vocab as u64) as u32
        })
        .collect()
}

pub fn run(s: &mut Session, n_prompt: usize, n_gen: usize, reps: usize) -> Result<Vec<BenchResult>> {
    let n_vocab = s.exec.n_out_cols().max(2);
    let mut out = Vec::new();
    if n_prompt > 0 {
        let p = tokens(n_prompt, n_vocab, 1);
        let mut rates = Vec::new();
        for i in 0..=reps {
            s.reset();
            let t0 = Instant::now();
            s.feed(&p, false)?;
            let dt = t0.elapsed().as_secs_f64();
            if i > 0 {
                rates.push(n_prompt as f64 / dt);
            }
        }
        let (mean, stddev) = stats(&rates);
        out.push(BenchResult { test: format!("pp{n_prompt}"), mean, stddev });
    }
    if n_gen > 0 {
        let g = tokens(n_gen, n_vocab, 2);
        let mut rates = Vec::new();
        for i in 0..=reps {
            s.reset();
            let t0 = Instant::now();
            for &t in &g {
                s.feed(&[t], false)?;
            }
            let dt = t0.elapsed().as_secs_f64();
            if i > 0 {
                rates.push(n_gen as f64 / dt);
            }
        }
        let (mean, stddev) = stats(&rates);
        out.push(BenchResult { test: format!("tg{n_gen}"), mean, stddev });
    }
    s.reset();
    Ok(out)
}
