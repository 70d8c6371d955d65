//! Sliding-window KV freeing end to end on the real Gemma-3-270M (15 local layers with a
//! 512-token window, 3 global ones): with the KV cache in groups by kind, the local layers give
//! back the blocks behind their window (`rocmforge_engine::kv_manager`). The reference is the same
//! engine with one group that keeps every block (`LoadOptions::free_sliding_window: false`), whose
//! greedy output the llama.cpp parity tests of `tests/gemma.rs` tie to llama.cpp's.
//!
//! - A prompt of ~1,200 tokens (more than twice the window) and a second one that extends it
//!   (a prefix-cache hit that must skip the given-back blocks): greedy tokens identical with and
//!   without freeing.
//! - KV memory in use while decoding (blocks in use times the bytes of a block, which differ
//!   between the layouts) is lower with freeing; the numbers are printed.

mod common;

use rocmforge_engine::{
    Engine, EngineConfig, Event, FinishReason, KvBudget, LoadOptions, Model, PromptBuilder, Request, SamplingParams, SchedulerConfig,
};

const MODEL: &str = "gemma-3-270m-q4_k_m.gguf";
const GEN: usize = 16;

struct Run {
    /// Greedy tokens of each request, in order.
    outputs: Vec<Vec<u32>>,
    cached_tokens: Vec<usize>,
    /// Most blocks in use seen between decode steps, and the bytes of one block.
    peak_blocks: usize,
    block_bytes: usize,
    n_blocks: usize,
    groups: String,
}

fn long_text() -> String {
    let mut s = String::from("The following is a long report about the history of lighthouses along a rocky coast.\n");
    for i in 0..24 {
        s.push_str(&format!(
            "Section {i}: The keeper of lighthouse number {i} wrote in the logbook that the lamp burned for {} hours, \
             that {} ships passed in the night, and that the fog horn sounded {} times before dawn.\n",
            7 + i % 5,
            3 + (i * 7) % 11,
            2 + (i * 3) % 9
        ));
    }
    s.push_str("Summary of the report in one sentence:");
    s
}

fn run(free_sliding_window: bool) -> Run {
    let reg = common::registry();
    let opts = LoadOptions { n_ctx: Some(2048), kv: KvBudget::Blocks(256), free_sliding_window, ..Default::default() };
    let m = Model::load(&common::model(MODEL), &reg, &opts).expect("load");
    let (block_bytes, n_blocks, groups) = (m.kv_block_bytes(), m.kv_config().n_blocks, m.kv_layout().describe());
    let cfg = EngineConfig { scheduler: SchedulerConfig { max_num_batched_tokens: 256, ..Default::default() }, deterministic: false };
    let e = Engine::start(m, cfg).expect("engine");
    let pb = PromptBuilder::new(e.model());
    let first = pb.raw(&long_text(), true, false).expect("tokenize");
    let second = pb.raw(&format!("{} Then list the three busiest lighthouses:", long_text()), true, false).expect("tokenize");
    assert!(first.len() > 2 * 512, "the prompt ({} tokens) must pass the 512-token window twice", first.len());
    let mut r = Run { outputs: Vec::new(), cached_tokens: Vec::new(), peak_blocks: 0, block_bytes, n_blocks, groups };
    for prompt in [first, second] {
        let mut req = Request::new(prompt, SamplingParams::greedy());
        req.max_tokens = Some(GEN);
        req.ignore_eos = true;
        let mut s = e.submit(req).expect("submit");
        let mut toks = Vec::new();
        loop {
            match s.blocking_recv().expect("stream ends with Done") {
                Event::Delta { tokens, .. } => {
                    toks.extend(tokens);
                    let st = e.stats_blocking().expect("stats");
                    r.peak_blocks = r.peak_blocks.max(st.kv_blocks_total - st.kv_blocks_free);
                }
                Event::Done(f) => {
                    assert_eq!(f.reason, FinishReason::Length, "{f:?}");
                    r.cached_tokens.push(f.metrics.cached_tokens);
                    break;
                }
            }
        }
        r.outputs.push(toks);
    }
    let st = e.stats_blocking().expect("stats");
    assert_eq!(st.kv_blocks_free, st.kv_blocks_total, "every block is free again");
    r
}

#[test]
fn gemma3_greedy_output_is_the_same_with_and_without_sliding_window_freeing() {
    let keep = run(false);
    let free = run(true);
    let mib = |r: &Run| (r.peak_blocks * r.block_bytes) as f64 / (1 << 20) as f64;
    for (name, r) in [("every block kept", &keep), ("sliding-window freeing", &free)] {
        eprintln!(
            "{MODEL} {name}: {} ({} blocks of {} KiB); KV in use while decoding: at most {} blocks = {:.2} MiB; cached prompt tokens {:?}",
            r.groups,
            r.n_blocks,
            r.block_bytes / 1024,
            r.peak_blocks,
            mib(r),
            r.cached_tokens
        );
    }
    assert_eq!(free.outputs, keep.outputs, "greedy tokens differ with sliding-window freeing");
    assert!(free.n_blocks > keep.n_blocks, "the same memory in smaller blocks");
    assert!(
        free.peak_blocks * free.block_bytes < keep.peak_blocks * keep.block_bytes,
        "sliding-window freeing must hold less KV memory: {:.2} vs {:.2} MiB",
        mib(&free),
        mib(&keep)
    );
    // The second prompt extends the first: its prefix hits the cache in both runs, across the
    // blocks the local layers gave back.
    assert!(free.cached_tokens[1] > 2 * 512 && keep.cached_tokens[1] > 2 * 512, "{:?} {:?}", free.cached_tokens, keep.cached_tokens);
}
