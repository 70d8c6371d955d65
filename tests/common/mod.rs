//! Shared helpers of the end-to-end tests: locating test data (fetched by
//! `scripts/fetch-test-data.sh` into `.cache/`) and loading models through the real plugin path.
#![allow(dead_code)]

use std::path::PathBuf;

use rocmforge_runtime::exec::{Executor, KvConfig, Logits, SeqChunk};
use rocmforge_runtime::{build_graph, ModelSource, Registry};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `.cache/models`, or a failure telling how to get it.
pub fn model(name: &str) -> PathBuf {
    let p = repo().join(".cache/models").join(name);
    assert!(p.exists(), "{} is missing: run scripts/fetch-test-data.sh first", p.display());
    p
}

pub fn registry() -> Registry {
    let reg = Registry::discover();
    assert!(
        !reg.plugins.is_empty(),
        "no plugins found next to the test binary: run `cargo test --workspace` (it builds plugins/*), failures: {:?}",
        reg.failures
    );
    reg
}

/// A model ready to run one sequence at a time.
pub struct Runner {
    pub exec: Executor,
    pub n_vocab: usize,
    table: Vec<u32>,
    pos: usize,
}

impl Runner {
    pub fn load(path: &std::path::Path, n_ctx: usize) -> Runner {
        let reg = registry();
        let src = ModelSource::open(path, &reg).expect("open model");
        let plugin = reg.for_gguf_arch(src.arch()).expect("plugin");
        let graph = build_graph(plugin, &src).expect("graph");
        let n_blocks = n_ctx.div_ceil(16);
        let exec = Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks }).expect("executor");
        let n_vocab = exec.n_out_cols();
        Runner { exec, n_vocab, table: (0..n_blocks as u32).collect(), pos: 0 }
    }

    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Feed tokens; returns logits of every fed token (`all`) or of the last one.
    pub fn feed(&mut self, tokens: &[u32], all: bool) -> Vec<f32> {
        let c = SeqChunk { tokens, pos_start: self.pos, block_table: &self.table, logits: if all { Logits::All } else { Logits::Last } };
        let out = self.exec.forward(std::slice::from_ref(&c)).expect("forward");
        self.pos += tokens.len();
        out
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
