//! Hostile `config.json` values that `fuzz/fuzz_targets/hf_config.rs` found to crash the loader,
//! kept as regression tests: each must now give a clear error (or load), never a panic, a hang
//! or a runaway allocation. The configs are the files the fuzz target wrote, under
//! `tests/fixtures/fuzz/hf_config-<model>-<what>.json`; they are paired with the weights of the
//! named `tests/fixtures/hf-tiny/<model>` checkpoint.

mod common;

use std::path::{Path, PathBuf};

use common::{registry, repo};
use rocmforge_runtime::{build_graph, ModelSource};

/// A scratch HF directory: the weights of hf-tiny `model`, with `config` as its config.json.
fn scratch(model: &str, config: &[u8], tag: &str) -> PathBuf {
    let src = repo().join("tests/fixtures/hf-tiny").join(model);
    let d = std::env::temp_dir().join(format!("rf-hostile-{}-{model}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    std::fs::copy(src.join("model.safetensors"), d.join("model.safetensors")).expect("weights");
    std::fs::write(d.join("config.json"), config).expect("config");
    d
}

/// Opens and builds the graph; returns the error text (the test fails if it loads).
fn load_error(dir: &Path) -> String {
    let reg = registry();
    let err = match ModelSource::open(dir, &reg) {
        Err(e) => e.to_string(),
        Ok(src) => match reg.for_source(&src).and_then(|p| build_graph(p, &src)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{} loaded", dir.display()),
        },
    };
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The fuzzer's input: num_hidden_layers = i64::MAX among other hostile values. The per-layer
/// tensor-name expansion tried to allocate i64::MAX entries ("capacity overflow" panic).
#[test]
fn fuzzer_config_with_huge_layer_count_is_an_error() {
    let cfg = std::fs::read(repo().join("tests/fixtures/fuzz/hf_config-llama-huge-layers.json")).expect("fixture");
    let d = scratch("llama", &cfg, "fuzz");
    load_error(&d);
    let _ = std::fs::remove_dir_all(&d);
}

/// The same layer count alone in a valid config: the error names it.
#[test]
fn huge_layer_count_is_a_clear_error() {
    let path = repo().join("tests/fixtures/hf-tiny/llama/config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("config")).expect("json");
    for n in [i64::MAX as u64, u64::MAX, 1 << 40] {
        cfg["num_hidden_layers"] = serde_json::json!(n);
        let d = scratch("llama", &serde_json::to_vec(&cfg).expect("json"), "layers");
        let err = load_error(&d);
        assert!(err.contains(&format!("num_hidden_layers = {n}")), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// head_dim = i64::MAX: the graph checked `n_head * head_dim == cols` with an overflowing
/// product (a panic in debug builds; in release a wrapped product could pass the check).
#[test]
fn huge_head_dim_is_a_clear_error() {
    let cfg = std::fs::read(repo().join("tests/fixtures/fuzz/hf_config-mistral-huge-head-dim.json")).expect("fixture");
    let d = scratch("mistral", &cfg, "head-dim");
    let err = load_error(&d);
    assert!(err.contains("9223372036854775807 overflows"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
