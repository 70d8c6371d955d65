//! Helpers of the engine tests: real models through the engine, greedy requests, streams
//! collected into token lists.

use rocmforge_engine::{
    Engine, EngineConfig, Event, Finished, KvBudget, LoadOptions, Model, PromptBuilder, Request, RequestStream, SamplingParams,
    SchedulerConfig,
};

pub const GEN: usize = 16;

pub fn prompts(engine: &Engine) -> Vec<Vec<u32>> {
    let system = "You are a careful assistant. Answer briefly and precisely, in plain English, \
                  without lists unless asked. Prefer concrete facts over opinions. ";
    let texts = [
        format!("{system}Question: why is the sky blue?"),
        format!("{system}Question: name a prime number above 100."),
        "Once upon a time".to_string(),
        format!("{system}{system}Question: what does a compiler do? Explain the stages of a compiler one by one."),
        "def fib(n):".to_string(),
        format!("{system}Question: why is the sky blue? Answer for a child."),
    ];
    let pb = PromptBuilder::new(engine.model());
    texts.iter().map(|t| pb.raw(t, true, false).expect("tokenize")).collect()
}

pub fn greedy(prompt: Vec<u32>) -> Request {
    let mut r = Request::new(prompt, SamplingParams::greedy());
    r.max_tokens = Some(GEN);
    r.ignore_eos = true;
    r
}

/// Tokens of a request's stream and how it ended.
pub fn collect(mut s: RequestStream) -> (Vec<u32>, Finished) {
    let mut toks = Vec::new();
    while let Some(ev) = s.blocking_recv() {
        match ev {
            Event::Delta { tokens, .. } => toks.extend(tokens),
            Event::Done(f) => return (toks, f),
        }
    }
    panic!("stream ended without Done");
}

pub fn engine(model: &str, deterministic: bool, kv_blocks: usize, budget: usize) -> Engine {
    let reg = super::registry();
    let m =
        Model::load(&super::model(model), &reg, &LoadOptions { n_ctx: Some(256), kv: KvBudget::Blocks(kv_blocks), ..Default::default() })
            .expect("load");
    let cfg = EngineConfig {
        scheduler: SchedulerConfig { max_num_batched_tokens: budget, max_num_seqs: 8, ..Default::default() },
        deterministic,
    };
    Engine::start(m, cfg).expect("engine")
}

/// Tokens and their logprobs (the request must ask for logprobs).
pub fn collect_logprobs(mut s: RequestStream) -> (Vec<u32>, Vec<f32>, Finished) {
    let (mut toks, mut lps) = (Vec::new(), Vec::new());
    while let Some(ev) = s.blocking_recv() {
        match ev {
            Event::Delta { tokens, logprobs, .. } => {
                toks.extend(tokens);
                lps.extend(logprobs.iter().map(|l| l.logprob));
            }
            Event::Done(f) => return (toks, lps, f),
        }
    }
    panic!("stream ended without Done");
}
