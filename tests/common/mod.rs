//! Shared helpers of the end-to-end tests: locating test data (fetched by
//! `scripts/fetch-test-data.sh` into `.cache/`) and loading models through the real plugin path.
#![allow(dead_code)]

pub mod engine_util;

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

/// The plugins found next to the test binary. Every plugin crate of the workspace (`plugins/<name>/`)
/// must have loaded: a plugin that was not built, or fails to load, fails the test instead of
/// silently taking its architectures out of it.
pub fn registry() -> Registry {
    let reg = Registry::discover();
    let missing: Vec<String> = workspace_plugins().into_iter().filter(|name| !reg.plugins.iter().any(|p| &p.name == name)).collect();
    assert!(
        missing.is_empty(),
        "plugins {missing:?} did not load (run `cargo build --workspace` first, as scripts/test.sh does); loaded: {:?}, failures: {:?}",
        reg.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        reg.failures
    );
    reg
}

/// Names of the plugin crates of the workspace: the folders of `plugins/` (each plugin is named
/// after its folder).
pub fn workspace_plugins() -> Vec<String> {
    let dir = repo().join("plugins");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").exists())
        .map(|p| p.file_name().expect("folder name").to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no plugin crates under {}", dir.display());
    v
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
        let plugin = reg.for_source(&src).expect("plugin");
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
        let c = SeqChunk {
            tokens,
            pos_start: self.pos,
            block_table: &self.table,
            group_tables: &[],
            logits: if all { Logits::All } else { Logits::Last },
        };
        let out = self.exec.forward(std::slice::from_ref(&c)).expect("forward").to_vec();
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

// ---- llama.cpp greedy-decode parity (shared by tests/llama_cpp_parity.rs and per-architecture tests) ----

/// One prompt of a `scripts/fixtures/llama_cpp_greedy.py` fixture.
pub struct Case {
    pub prompt_tokens: Vec<u32>,
    pub generated: Vec<u32>,
    pub top_logits: Vec<Vec<(u32, f32)>>,
}

/// Reads `tests/fixtures/NAME` (made by `scripts/fixtures/llama_cpp_greedy.py`).
pub fn load_fixture(name: &str) -> Vec<Case> {
    let p = repo().join("tests/fixtures").join(name);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("fixture")).expect("json");
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    j["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt_tokens: ids(&c["prompt_tokens"]),
            generated: ids(&c["generated"]),
            top_logits: c["top_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row.as_array().unwrap().iter().map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap() as f32)).collect())
                .collect(),
        })
        .collect()
}

/// Greedy decodes may only part from llama.cpp's where llama.cpp itself nearly tied: its top two
/// logits closer than this (our logits differ from llama.cpp's by float rounding of the order of
/// 0.1–0.5, see the printed statistics). Anywhere else a different token fails the test.
pub const TIE_MARGIN: f32 = 0.3;

/// Runs every case: tokens must equal llama.cpp's up to the end or up to a near-tie (then the rest
/// of that case is not compared); logits at llama.cpp's top-16 ids must agree within `max_logit_diff`.
/// A near-tie is a llama.cpp margin below `TIE_MARGIN` and below `2 * max_logit_diff` (logits
/// within d of llama.cpp's can only pick another token where its top two are within 2d), so a
/// model with bit-identical logits may never part from llama.cpp's tokens.
pub fn check(model_path: &std::path::Path, fixture: &str, max_logit_diff: f32) {
    let tie_margin = TIE_MARGIN.min(2.0 * max_logit_diff);
    let name = model_path.file_name().unwrap().to_string_lossy().into_owned();
    let cases = load_fixture(fixture);
    let mut r = Runner::load(model_path, 512);
    let mut diffs = Vec::new();
    let (mut matched, mut total, mut full) = (0usize, 0usize, 0usize);
    for (ci, c) in cases.iter().enumerate() {
        r.reset();
        let n_vocab = r.n_vocab;
        let mut rows: Vec<Vec<f32>> = r.feed(&c.prompt_tokens, true).chunks(n_vocab).map(<[f32]>::to_vec).collect();
        total += c.generated.len();
        let mut forked = false;
        for i in 0..c.generated.len() {
            let t = argmax(rows.last().unwrap());
            let want = &c.top_logits[c.prompt_tokens.len() - 1 + i];
            if t != c.generated[i] {
                let margin = want[0].1 - want[1].1;
                assert!(
                    margin < tie_margin,
                    "{name} case {ci}: token {i} is {t}, llama.cpp chose {} with a margin of {margin:.3} (llama.cpp top-3 {:?}; ours at those ids {:?})",
                    c.generated[i],
                    &want[..3],
                    want[..3].iter().map(|(id, _)| rows.last().unwrap()[*id as usize]).collect::<Vec<_>>()
                );
                eprintln!("{name} case {ci}: parts from llama.cpp at token {i}, a near-tie (llama.cpp margin {margin:.3})");
                forked = true;
                break;
            }
            matched += 1;
            if i + 1 < c.generated.len() {
                rows.push(r.feed(&[c.generated[i]], false));
            }
        }
        full += usize::from(!forked);
        for (pos, (row, want)) in rows.iter().zip(&c.top_logits).enumerate() {
            for &(id, v) in want {
                let d = (row[id as usize] - v).abs();
                assert!(d <= max_logit_diff, "{name} case {ci} position {pos} token {id}: ours {} vs llama.cpp {v}", row[id as usize]);
                diffs.push(d);
            }
        }
    }
    diffs.sort_by(f32::total_cmp);
    let q = |f: f64| diffs[((diffs.len() - 1) as f64 * f) as usize];
    eprintln!(
        "{name}: {matched}/{total} greedy tokens equal to llama.cpp ({full}/{} cases in full); logit |diff| at llama.cpp's top-16: median {:.4}, p99 {:.4}, max {:.3e} (bound {max_logit_diff:.1e}, margin {:.3e})",
        cases.len(),
        q(0.5),
        q(0.99),
        diffs[diffs.len() - 1],
        max_logit_diff - diffs[diffs.len() - 1]
    );
}
