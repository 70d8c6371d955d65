//! Batch invariance of the serving engine on real models (DESIGN.md §4.7): every prompt of a
//! mixed workload — different lengths, staggered arrivals, chunked prefill under a small token
//! budget, shared prefixes (prefix-cache hits), one request cancelled mid-way and preemptions
//! forced by a small KV pool — produces exactly the greedy tokens it produces alone.
//!
//! Deterministic mode (batch-invariant kernels) makes equality exact: in the default mode the
//! K-quant matmuls and the attention dot products take llama.cpp's per-batch-size float orders
//! (one token vs many), so near-ties can flip; `engine_default_mode.rs` states and tests that
//! bound. The reference is the same engine running each prompt alone, which the llama.cpp
//! parity tests tie to llama.cpp's own greedy output.
//!
//! Its own test binary: deterministic mode is process-wide.

mod common;

use std::thread;

use rocmforge_engine::{Event, FinishReason};

use common::engine_util::{collect, engine, greedy, prompts};

fn check(model: &str, deterministic: bool) {
    // Alone: a roomy pool, one request at a time.
    let alone_engine = engine(model, deterministic, 64, 512);
    let ps = prompts(&alone_engine);
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .map(|p| {
            let (t, f) = collect(alone_engine.submit(greedy(p.clone())).expect("submit"));
            assert_eq!(f.reason, FinishReason::Length, "{f:?}");
            t
        })
        .collect();
    drop(alone_engine);

    // Mixed: 10 blocks of 16 tokens (fewer than the six requests need together, so some are
    // preempted), a 24-token budget (every prompt is prefilled in chunks).
    let e = engine(model, deterministic, 10, 24);
    let mut handles = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        let s = e.submit(greedy(p.clone())).expect("submit");
        handles.push((i, thread::spawn(move || collect(s))));
        if i == 2 {
            // A request that is cancelled after a few tokens, while the others run.
            let mut c = e.submit(greedy(ps[3].clone())).expect("submit");
            let mut n = 0;
            while let Some(ev) = c.blocking_recv() {
                if let Event::Delta { tokens, .. } = ev {
                    n += tokens.len();
                    if n >= 3 {
                        break;
                    }
                }
            }
            c.cancel();
            let rest: Vec<Event> = std::iter::from_fn(|| c.blocking_recv()).collect();
            match rest.last() {
                Some(Event::Done(f)) => assert_eq!(f.reason, FinishReason::Cancelled),
                other => panic!("cancelled stream ended with {other:?}"),
            }
        }
    }
    let mut preemptions = 0;
    let mut cached = 0;
    for (i, h) in handles {
        let (toks, f) = h.join().expect("reader");
        assert_eq!(f.reason, FinishReason::Length, "request {i}: {f:?}");
        assert_eq!(toks, alone[i], "request {i} differs from its run alone ({model}, deterministic {deterministic})");
        preemptions += f.metrics.preemptions;
        cached += f.metrics.cached_tokens;
    }
    let st = e.stats_blocking().expect("stats");
    eprintln!("{model}: preemptions {preemptions}, cached prompt tokens {cached}, {st:?}");
    assert!(preemptions > 0, "the small pool must force preemptions: {st:?}");
    assert!(st.prefix_hits > 0, "shared prefixes must hit the prefix cache: {st:?}");
    assert_eq!((st.running, st.waiting), (0, 0));
    assert_eq!(st.kv_blocks_free, st.kv_blocks_total, "every block is free again");
}

#[test]
fn smollm2_mixed_batch_equals_alone_in_deterministic_mode() {
    check("SmolLM2-135M-Instruct.Q4_1.gguf", true);
}

#[test]
fn gemma3_mixed_batch_equals_alone_in_deterministic_mode() {
    check("gemma-3-270m-q4_k_m.gguf", true);
}

/// Prompt-lookup speculative decoding changes nothing in greedy output (deterministic mode: the
/// verification chunk's rows compute exactly as one-token steps) and accepts drafts on a
/// code-editing prompt whose answer repeats its input.
#[test]
fn prompt_lookup_keeps_greedy_output() {
    use rocmforge_engine::{EngineConfig, KvBudget, LoadOptions, Model, PromptBuilder, Request, SamplingParams, SchedulerConfig};
    let code =
        "def total(items):\n    result = 0\n    for item in items:\n        result = result + item.price * item.count\n    return result\n";
    let text = format!("Rename the variable `result` to `acc` in this Python function and print the whole function:\n```python\n{code}```\nAnswer:\n```python\n");
    let run = |k: usize| {
        let reg = common::registry();
        let m = Model::load(
            &common::model("SmolLM2-135M-Instruct.Q4_1.gguf"),
            &reg,
            &LoadOptions { n_ctx: Some(512), kv: KvBudget::Blocks(64), ..Default::default() },
        )
        .expect("load");
        let cfg = EngineConfig { scheduler: SchedulerConfig { prompt_lookup: k, ..Default::default() }, deterministic: true };
        let e = rocmforge_engine::Engine::start(m, cfg).expect("engine");
        let prompt = PromptBuilder::new(e.model()).raw(&text, true, false).expect("tokenize");
        let mut r = Request::new(prompt, SamplingParams::greedy());
        r.max_tokens = Some(48);
        let (toks, f) = collect(e.submit(r).expect("submit"));
        (toks, f, e.stats_blocking().expect("stats"))
    };
    let (plain, _, _) = run(0);
    let (spec, f, st) = run(4);
    eprintln!(
        "prompt lookup: {} drafted, {} accepted, {} steps for {} tokens ({:?})",
        st.spec_drafted,
        st.spec_accepted,
        st.steps,
        spec.len(),
        f.reason
    );
    assert_eq!(spec, plain, "greedy output with prompt lookup equals the output without");
    assert!(st.spec_accepted > 0, "a reply that repeats its input must accept drafts: {st:?}");
    assert!(st.steps < spec.len() as u64, "fewer steps than tokens: {st:?}");
}
