//! `rocmforge bench MODEL`: prompt processing (ppN) and token generation (tgN) throughput, the two
//! numbers llama-bench reports, measured the same way: pp = one N-token prompt from an empty
//! cache; tg = N single-token steps. Random token ids (fixed seed) so the tokenizer plays no part.
//! Each test runs `reps` times after one warm-up and reports mean ± stddev tokens/s.
//! Everything runs through the engine (scheduler, sampler, detokenizer), as a server request
//! would; each repetition gets its own cache salt so the prefix cache never serves it.

use anyhow::{bail, Result};
use rocmforge_engine::{Engine, Event, Request, RequestMetrics, SamplingParams};

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

/// One greedy request to the end; its metrics.
fn one(engine: &Engine, prompt: Vec<u32>, max_tokens: usize, salt: String) -> Result<RequestMetrics> {
    let mut req = Request::new(prompt, SamplingParams::greedy());
    req.max_tokens = Some(max_tokens);
    req.ignore_eos = true;
    req.cache_salt = Some(salt);
    let mut stream = engine.submit(req)?;
    while let Some(ev) = stream.blocking_recv() {
        if let Event::Done(f) = ev {
            if let Some(e) = f.error {
                bail!("{e}");
            }
            return Ok(f.metrics);
        }
    }
    bail!("the engine stopped")
}

pub fn run(engine: &Engine, n_prompt: usize, n_gen: usize, reps: usize) -> Result<Vec<BenchResult>> {
    let n_vocab = engine.model().n_vocab().min(engine.model().n_out()).max(2);
    let mut out = Vec::new();
    if n_prompt > 0 {
        let mut rates = Vec::new();
        for i in 0..=reps {
            let m = one(engine, tokens(n_prompt, n_vocab, 1), 1, format!("pp{i}"))?;
            if i > 0 {
                rates.push(n_prompt as f64 / m.prompt_time.as_secs_f64());
            }
        }
        let (mean, stddev) = stats(&rates);
        out.push(BenchResult { test: format!("pp{n_prompt}"), mean, stddev });
    }
    if n_gen > 0 {
        let mut rates = Vec::new();
        for i in 0..=reps {
            // One prompt token, then n_gen decode steps (the first sampled token comes from
            // the prompt's pass and is not counted).
            let m = one(engine, tokens(1, n_vocab, 2), n_gen + 1, format!("tg{i}"))?;
            if i > 0 {
                rates.push((m.completion_tokens - 1) as f64 / m.decode_time.as_secs_f64());
            }
        }
        let (mean, stddev) = stats(&rates);
        out.push(BenchResult { test: format!("tg{n_gen}"), mean, stddev });
    }
    Ok(out)
}

/// Results of a serving run (`bench --concurrency N`), in the form of vLLM's `bench serve`.
pub struct ServeResult {
    pub requests: usize,
    pub duration: f64,
    pub output_tokens: usize,
    pub ttft_ms: (f64, f64, f64),
    pub itl_ms: (f64, f64, f64),
}

impl ServeResult {
    pub fn throughput(&self) -> f64 {
        self.output_tokens as f64 / self.duration
    }
}

/// (mean, median, p99) of `v` in milliseconds.
fn dist(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (v.iter().sum::<f64>() / v.len() as f64, at(0.5), at(0.99))
}

/// `num_requests` greedy requests of `n_prompt` random tokens and exactly `n_gen` output tokens,
/// at most `concurrency` in flight, through the in-process engine (continuous batching).
/// Each client thread submits its next request when the previous one ends.
pub fn run_concurrent(engine: &Engine, n_prompt: usize, n_gen: usize, concurrency: usize, num_requests: usize) -> Result<ServeResult> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;
    let n_vocab = engine.model().n_vocab().min(engine.model().n_out()).max(2);
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let per_client: Vec<Result<(Vec<f64>, Vec<f64>, usize)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                s.spawn(|| -> Result<(Vec<f64>, Vec<f64>, usize)> {
                    let (mut ttft, mut itl, mut n_out) = (Vec::new(), Vec::new(), 0);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= num_requests {
                            return Ok((ttft, itl, n_out));
                        }
                        let mut req = Request::new(tokens(n_prompt.max(1), n_vocab, 1000 + i as u64), SamplingParams::greedy());
                        req.max_tokens = Some(n_gen);
                        req.ignore_eos = true;
                        let start = Instant::now();
                        let mut last: Option<Instant> = None;
                        let mut stream = engine.submit(req)?;
                        while let Some(ev) = stream.blocking_recv() {
                            match ev {
                                Event::Delta { tokens, .. } if !tokens.is_empty() => {
                                    let now = Instant::now();
                                    match last {
                                        None => ttft.push((now - start).as_secs_f64() * 1e3),
                                        Some(l) => itl.push((now - l).as_secs_f64() * 1e3),
                                    }
                                    last = Some(now);
                                    n_out += tokens.len();
                                }
                                Event::Delta { .. } => {}
                                Event::Done(f) => {
                                    if let Some(e) = f.error {
                                        bail!("{e}");
                                    }
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("client thread panicked")))).collect()
    });
    let duration = t0.elapsed().as_secs_f64();
    let (mut ttft, mut itl, mut output_tokens) = (Vec::new(), Vec::new(), 0);
    for r in per_client {
        let (a, b, n) = r?;
        ttft.extend(a);
        itl.extend(b);
        output_tokens += n;
    }
    Ok(ServeResult { requests: num_requests, duration, output_tokens, ttft_ms: dist(ttft), itl_ms: dist(itl) })
}
