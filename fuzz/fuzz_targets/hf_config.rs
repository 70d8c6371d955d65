//! Fuzz target: a Hugging Face `config.json` mapped into plugin hyperparameters, with hostile
//! values (zero, negative, huge or non-integer head counts, layers, dimensions, RoPE settings),
//! through the real path: `ModelSource::open` (config → GGUF metadata, RoPE translation, tensor
//! map) → `build_graph` (the plugin's hyperparameter parsing and graph) → `Executor::new` with a
//! small KV cache → one 3-token forward pass.
//!
//! Models: every `tests/fixtures/hf-tiny/*` directory (tiny random-weight checkpoints of each
//! architecture, one per plugin variant) is copied into a scratch directory once; each input
//! then writes that directory's `config.json`. Input: byte 0 picks the model; if the rest is a
//! JSON object it is the whole config (the committed corpus holds real ones); otherwise it is
//! read as pairs (key, value): keys are every `config.json` key the loaded plugins map (their
//! config tables), the shared defaults and the RoPE keys; values come from a table of hostile
//! numbers and shapes. Plugins are the workspace's `.so` files (`ROCMFORGE_PLUGINS`, set by
//! scripts/fuzz-ci.sh).
//! Oracle: an error or a finite-sized run; never a panic (a plugin's panic comes back as a
//! "plugin panicked" error, which counts as a crash), a hang or a runaway allocation.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rocmforge_runtime::exec::{Executor, KvConfig, Logits, SeqChunk};
use rocmforge_runtime::{build_graph, ModelSource, Registry};
use serde_json::{json, Value};

struct Setup {
    reg: Registry,
    /// (scratch model dir, its original config).
    models: Vec<(PathBuf, Value)>,
    keys: Vec<String>,
}

fn hostile_values() -> Vec<Value> {
    vec![
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(3),
        json!(7),
        json!(64),
        json!(1000),
        json!(65537),
        json!(i32::MAX),
        json!(u32::MAX),
        json!(1u64 << 40),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(0.0),
        json!(-0.5),
        json!(0.5),
        json!(1e-300),
        json!(1e300),
        json!(f64::MAX),
        json!(f64::MIN_POSITIVE),
        json!(null),
        json!(true),
        json!("8"),
        json!([]),
        json!([0, 1, 1]),
        json!({}),
        json!({"rope_type": "yarn", "factor": 0.0, "original_max_position_embeddings": 0}),
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 0}),
        json!({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [], "original_max_position_embeddings": 1}),
        json!({"rope_type": "linear", "factor": -1.0}),
        json!({"rope_type": "dynamic", "factor": 1e300}),
        json!({"type": "su"}),
        json!(["sliding_attention", "full_attention"]),
    ]
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let reg = Registry::discover();
        assert!(reg.failures.is_empty(), "plugins failed to load: {:?}", reg.failures);
        assert!(reg.plugins.len() >= 5, "set ROCMFORGE_PLUGINS to the directory of the workspace's plugin .so files");
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf-tiny");
        let scratch = std::env::temp_dir().join(format!("rf-fuzz-hfconfig-{}", std::process::id()));
        let mut models = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&src).expect("tests/fixtures/hf-tiny").map(|e| e.expect("entry").path()).collect();
        dirs.sort();
        for d in dirs {
            let dst = scratch.join(d.file_name().expect("name"));
            std::fs::create_dir_all(&dst).expect("scratch");
            for f in ["model.safetensors", "config.json"] {
                std::fs::copy(d.join(f), dst.join(f)).expect("copy fixture");
            }
            let cfg: Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).expect("config")).expect("json");
            models.push((dst, cfg));
        }
        let mut keys: Vec<String> = [
            "num_hidden_layers",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "rms_norm_eps",
            "max_position_embeddings",
            "vocab_size",
            "head_dim",
            "rope_theta",
            "rope_scaling",
            "rope_parameters",
            "rope_scaling.factor",
            "rope_scaling.rope_type",
            "rope_scaling.original_max_position_embeddings",
            "rope_scaling.beta_fast",
            "rope_scaling.beta_slow",
            "rope_scaling.attention_factor",
            "partial_rotary_factor",
            "tie_word_embeddings",
            "layer_types",
            "architectures",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for p in &reg.plugins {
            for (_, hf) in &p.config {
                if hf.starts_with('=') {
                    continue;
                }
                let k = hf.split("==").next().unwrap_or(hf).to_string();
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        Setup { reg, models, keys }
    })
}

/// Sets `path` (dotted) in `cfg` to `v`, making objects on the way.
fn set(cfg: &mut Value, path: &str, v: Value) {
    let mut cur = cfg;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(obj) = cur.as_object_mut() else { return };
        if parts.peek().is_none() {
            obj.insert(p.to_string(), v);
            return;
        }
        cur = obj.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

fn run(dir: &std::path::Path, reg: &Registry) {
    let src = match ModelSource::open(dir, reg) {
        Ok(s) => s,
        Err(e) => return check_err(&e.to_string()),
    };
    let plugin = match reg.for_source(&src) {
        Ok(p) => p,
        Err(e) => return check_err(&e.to_string()),
    };
    let graph = match build_graph(plugin, &src) {
        Ok(g) => g,
        Err(e) => return check_err(&e.to_string()),
    };
    let exec = match Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks: 2 }) {
        Ok(x) => x,
        Err(e) => return check_err(&e.to_string()),
    };
    let mut exec = exec;
    let table = [0u32, 1];
    let c = SeqChunk { tokens: &[1, 2, 3], pos_start: 0, block_table: &table, group_tables: &[], logits: Logits::Last };
    if let Err(e) = exec.forward(std::slice::from_ref(&c)) {
        check_err(&e.to_string());
    }
}

fn check_err(msg: &str) {
    assert!(!msg.contains("panicked"), "a plugin or host callback panicked: {msg}");
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let Some((&pick, rest)) = data.split_first() else { return };
    let (dir, base) = &s.models[pick as usize % s.models.len()];
    let cfg = match serde_json::from_slice::<Value>(rest) {
        Ok(v) if v.is_object() => v,
        _ => {
            let mut cfg = base.clone();
            let values = hostile_values();
            for pair in rest.chunks_exact(2) {
                let key = &s.keys[pair[0] as usize % s.keys.len()];
                set(&mut cfg, key, values[pair[1] as usize % values.len()].clone());
            }
            cfg
        }
    };
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).expect("json")).expect("write config");
    run(dir, &s.reg);
});
