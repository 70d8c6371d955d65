//! Every architecture a plugin claims, as a tiny random-weight Hugging Face model, against the
//! logits of Hugging Face transformers itself (f32, eager attention), loaded three ways: from the
//! HF directory, and from its GGUF conversions made by `rocmforge quantize DIR OUT.gguf F32` / `F16`;
//! each sequence run twice: in one batch, and as a prefill, a second chunk and then one token at a
//! time (the decode path, with the KV cache and, for sliding-window models, keys leaving the window).
//!
//! Fixtures: `tests/fixtures/hf-tiny/<variant>/` made by `scripts/fixtures/hf_tiny_models.py`
//! (transformers 5.17.0, torch 2.11.0; command in each reference.json). Their configs use, for
//! every key a plugin reads, a value other than the one it falls back to, and
//! `dropped_*_keys_are_caught` (one test per plugin) remove each key in turn and require an error
//! or logits far outside the bound: a lost config mapping cannot pass.
//!
//! No silent skips: every plugin crate must load (`common::registry`, and
//! `plugins_and_fixtures_correspond`, which also fails on any plugin load failure), every fixture
//! must be checked, a plugin claiming an HF architecture without a fixture fails, and so does a
//! fixture whose architecture no plugin claims.

mod common;

use std::path::{Path, PathBuf};

use common::{registry, repo, workspace_plugins};
use rocmforge_runtime::exec::{Executor, KvConfig, Logits, SeqChunk};
use rocmforge_runtime::{build_graph, ModelSource};

struct Fixture {
    /// The HF architecture (`config.json` "architectures"[0]).
    arch: String,
    dir: PathBuf,
    reference: serde_json::Value,
}

impl Fixture {
    fn name(&self) -> String {
        self.dir.file_name().expect("dir name").to_string_lossy().into_owned()
    }

    fn sequences(&self) -> Vec<Vec<u32>> {
        let seqs = self.reference["sequences"].as_array().expect("sequences");
        seqs.iter().map(|s| s.as_array().expect("sequence").iter().map(|v| v.as_u64().expect("token") as u32).collect()).collect()
    }

    /// transformers' logits, [sequence][position * n_vocab + token] flattened.
    fn logits(&self) -> Vec<f32> {
        let bytes = std::fs::read(self.dir.join("logits.f32")).expect("logits.f32");
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    fn has_logits(&self) -> bool {
        self.reference["shape"].get("logits").is_some()
    }
}

fn fixtures() -> Vec<Fixture> {
    let root = repo().join("tests/fixtures/hf-tiny");
    let mut v: Vec<Fixture> = std::fs::read_dir(&root)
        .expect("tests/fixtures/hf-tiny")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(|dir| {
            let path = dir.join("reference.json");
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (every fixture folder needs one)", path.display()));
            let reference: serde_json::Value = serde_json::from_slice(&bytes).expect("reference.json");
            let arch = reference["architectures"][0].as_str().expect("architectures").to_string();
            Fixture { arch, dir, reference }
        })
        .collect();
    v.sort_by(|a, b| a.dir.cmp(&b.dir));
    assert!(v.len() >= 18, "only {} hf-tiny fixtures", v.len());
    v
}

fn fixture(variant: &str) -> Fixture {
    fixtures().into_iter().find(|f| f.name() == variant).unwrap_or_else(|| panic!("no hf-tiny fixture '{variant}'"))
}

/// f16 KV cache (as llama.cpp) and f32 math elsewhere: errors are of the order of 1e-3.
const MAX_REL_ERR: f64 = 5e-3;
/// F16 GGUF conversion: weights rounded to f16 (11-bit mantissa) add about 1e-3.
const MAX_REL_ERR_F16: f64 = 1e-2;
/// A dropped config key must move the logits by this much (relative): 10x the bound.
const MIN_DROPPED_REL_ERR: f64 = 10.0 * MAX_REL_ERR;

/// The stepped run of a sequence: `PREFILL` tokens, then a chunk of `CHUNK`, then one at a time.
const PREFILL: usize = 8;
const CHUNK: usize = 4;
/// KV cache size (blocks of 16): the fixtures' sequences are 24 tokens.
const N_CTX: usize = 64;

/// A loaded model, or the error that stopped it (config mapping, graph build or executor).
fn load(model: &Path) -> Result<Executor, String> {
    let reg = registry();
    let src = ModelSource::open(model, &reg).map_err(|e| format!("open: {e}"))?;
    let plugin = reg.for_source(&src).map_err(|e| format!("plugin: {e}"))?;
    let graph = build_graph(plugin, &src).map_err(|e| format!("graph: {e}"))?;
    Executor::new(graph, &src, KvConfig { block_size: 16, n_blocks: N_CTX / 16 }).map_err(|e| format!("executor: {e}"))
}

/// Logits of `tokens` fed from position `pos` (all rows).
fn feed(exec: &mut Executor, tokens: &[u32], pos: usize) -> Result<Vec<f32>, String> {
    let table: Vec<u32> = (0..(N_CTX / 16) as u32).collect();
    let c = SeqChunk { tokens, pos_start: pos, block_table: &table, group_tables: &[], logits: Logits::All };
    Ok(exec.forward(std::slice::from_ref(&c)).map_err(|e| format!("forward: {e}"))?.to_vec())
}

/// ‖ours − ref‖₂ / ‖ref‖₂ accumulated over rows, and the worst row (for the report).
#[derive(Default)]
struct RelErr {
    num: f64,
    den: f64,
    /// (row error, sequence, position)
    worst: (f64, usize, usize),
}

impl RelErr {
    fn add(&mut self, got: &[f32], want: &[f32], n_vocab: usize, seq: usize) {
        assert_eq!(got.len(), want.len(), "output size differs from the reference");
        for (pos, (g, w)) in got.chunks(n_vocab).zip(want.chunks(n_vocab)).enumerate() {
            let num: f64 = g.iter().zip(w).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
            let den: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum();
            (self.num, self.den) = (self.num + num, self.den + den);
            if (num / den).sqrt() > self.worst.0 {
                self.worst = ((num / den).sqrt(), seq, pos);
            }
        }
    }
    fn get(&self) -> f64 {
        (self.num / self.den).sqrt()
    }
}

/// (one batch, prefill + chunk + decode) relative errors of every sequence against `want`; the
/// worst row of each is printed.
fn run_and_compare(model: &Path, f: &Fixture, want: &[f32], stepped: bool) -> Result<(f64, f64), String> {
    let mut exec = load(model)?;
    let (mut whole, mut step) = (RelErr::default(), RelErr::default());
    let mut off = 0;
    for (si, seq) in f.sequences().iter().enumerate() {
        let n_vocab = exec.n_out_cols();
        let want = &want[off..off + seq.len() * n_vocab];
        whole.add(&feed(&mut exec, seq, 0)?, want, n_vocab, si);
        if stepped {
            assert!(seq.len() > PREFILL + CHUNK + 2, "{}: sequences too short to decode after the prefill", f.name());
            let mut got = feed(&mut exec, &seq[..PREFILL], 0)?;
            got.extend(feed(&mut exec, &seq[PREFILL..PREFILL + CHUNK], PREFILL)?);
            for (i, t) in seq.iter().enumerate().skip(PREFILL + CHUNK) {
                got.extend(feed(&mut exec, std::slice::from_ref(t), i)?);
            }
            step.add(&got, want, n_vocab, si);
        }
        off += want.len();
    }
    assert_eq!(off, want.len(), "{}: output size differs from the reference", model.display());
    let w = |e: &RelErr| format!("{:.1e} at sequence {} position {}", e.worst.0, e.worst.1, e.worst.2);
    if stepped {
        eprintln!("  {}: worst row {} (one batch), {} (decode)", model.display(), w(&whole), w(&step));
    }
    Ok((whole.get(), if stepped { step.get() } else { 0.0 }))
}

#[test]
fn claimed_architectures_match_transformers() {
    let reg = registry();
    let (mut checked, mut failed) = (0, Vec::new());
    let all = fixtures();
    for f in &all {
        if !f.has_logits() {
            // Encoder fixtures hold hidden states and pooled embeddings: tests/bert.rs checks them.
            assert_eq!(f.arch, "BertModel", "{}: a fixture without logits that no test checks", f.name());
            continue;
        }
        let (plugin, _) = reg.for_hf_arch(&f.arch).unwrap_or_else(|e| panic!("{}: no plugin serves {}: {e}", f.name(), f.arch));
        let want = f.logits();
        let mut errs = Vec::new();
        let (whole, stepped) = run_and_compare(&f.dir, f, &want, true).unwrap_or_else(|e| panic!("{}: {e}", f.name()));
        errs.extend([("HF dir", whole, MAX_REL_ERR), ("HF dir decode", stepped, MAX_REL_ERR)]);
        for (ty, bound) in [("F32", MAX_REL_ERR), ("F16", MAX_REL_ERR_F16)] {
            let gguf = std::env::temp_dir().join(format!("rf-hftiny-{}-{}-{ty}.gguf", std::process::id(), f.name()));
            let st = std::process::Command::new(env!("CARGO_BIN_EXE_rocmforge"))
                .arg("quantize")
                .arg(&f.dir)
                .arg(&gguf)
                .arg(ty)
                .output()
                .unwrap();
            assert!(st.status.success(), "{}: {}", f.dir.display(), String::from_utf8_lossy(&st.stderr));
            let (whole, stepped) = run_and_compare(&gguf, f, &want, true).unwrap_or_else(|e| panic!("{} {ty}: {e}", f.name()));
            let _ = std::fs::remove_file(&gguf);
            errs.extend([(ty, whole, bound), (if ty == "F32" { "F32 decode" } else { "F16 decode" }, stepped, bound)]);
        }
        let row: Vec<String> = errs.iter().map(|(what, e, _)| format!("{what} {e:.2e}")).collect();
        eprintln!("{:<14} {:<20} {:<8} rel. error vs transformers: {}", f.name(), f.arch, plugin.name, row.join(", "));
        for (what, e, bound) in errs {
            if !(e < bound) {
                failed.push(format!("{} ({}) {what}: {e:.2e} (bound {bound:.0e})", f.name(), f.arch));
            }
        }
        checked += 1;
    }
    assert!(failed.is_empty(), "relative error above the bound: {failed:#?}");
    assert_eq!(checked, all.iter().filter(|f| f.has_logits()).count());
}

/// Registry level: every plugin crate loads (no load failure at all), every HF architecture a
/// plugin claims has a fixture, every plugin has one, and every fixture's architecture is claimed.
#[test]
fn plugins_and_fixtures_correspond() {
    let reg = registry();
    assert!(reg.failures.is_empty(), "plugins failed to load: {:#?}", reg.failures);
    let loaded: Vec<&str> = reg.plugins.iter().map(|p| p.name.as_str()).collect();
    for name in workspace_plugins() {
        assert!(loaded.contains(&name.as_str()), "plugin crate plugins/{name} did not load (loaded: {loaded:?})");
    }
    let all = fixtures();
    for p in &reg.plugins {
        let mut n = 0;
        for hf in p.hf_archs() {
            assert!(all.iter().any(|f| f.arch == hf), "plugin '{}' claims {hf} but tests/fixtures/hf-tiny has no fixture for it", p.name);
            n += 1;
        }
        assert!(n > 0, "plugin '{}' claims no HF architecture, so no fixture checks it", p.name);
    }
    for f in &all {
        assert!(reg.for_hf_arch(&f.arch).is_ok(), "fixture {} is {} but no plugin claims it (loaded: {loaded:?})", f.name(), f.arch);
    }
}

/// The same config as transformers 4 wrote it: top-level `rope_theta` (and `partial_rotary_factor`,
/// Gemma 3's `rope_local_base_freq`), the scaling in `rope_scaling` with its type under `type`,
/// Gemma's local layers as a period `sliding_window_pattern` where one fits, and
/// `num_experts` for Qwen3-MoE's expert count (transformers 5 writes `num_local_experts`). True if
/// anything changed.
fn transformers4_spelling(cfg: &mut serde_json::Value) -> bool {
    use serde_json::{json, Value};
    let before = cfg.clone();
    let obj = cfg.as_object_mut().expect("config object");
    if let Some(Value::Object(rp)) = obj.remove("rope_parameters") {
        let (mut main, local) = match (rp.get("full_attention"), rp.get("sliding_attention")) {
            (Some(Value::Object(full)), Some(local)) => (full.clone(), Some(local["rope_theta"].clone())),
            _ => (rp.clone(), None),
        };
        if let Some(t) = main.remove("rope_theta") {
            obj.insert("rope_theta".into(), t);
        }
        if let Some(t) = local {
            obj.insert("rope_local_base_freq".into(), t);
        }
        if let Some(f) = main.remove("partial_rotary_factor") {
            obj.insert("partial_rotary_factor".into(), f);
        }
        let kind = main.remove("rope_type").unwrap_or(json!("default"));
        if kind != json!("default") {
            main.insert("type".into(), kind);
            obj.insert("rope_scaling".into(), Value::Object(main));
        }
    }
    if obj.get("model_type").and_then(Value::as_str).is_some_and(|m| m.starts_with("gemma")) {
        let local: Option<Vec<bool>> =
            obj.get("layer_types").and_then(Value::as_array).map(|a| a.iter().map(|t| t == "sliding_attention").collect());
        if let Some(local) = local {
            let fits = |p: usize| local.iter().enumerate().all(|(il, &l)| l == (il % p < p - 1));
            if let Some(p) = (2..=local.len()).find(|&p| fits(p)) {
                obj.remove("layer_types");
                obj.insert("sliding_window_pattern".into(), json!(p));
            }
        }
    }
    if obj.get("model_type").and_then(Value::as_str) == Some("qwen3_moe") {
        if let Some(n) = obj.remove("num_local_experts") {
            obj.insert("num_experts".into(), n);
        }
    }
    *cfg != before
}

/// Every config-map row a plugin keeps for an older spelling is exercised: each fixture rewritten
/// as transformers 4 spelled it gives transformers' logits within the same bound.
#[test]
fn transformers4_config_spellings_match_transformers() {
    let mut rewritten = Vec::new();
    for f in fixtures().into_iter().filter(Fixture::has_logits) {
        let tmp = TempDir::copy_of(&f.dir, &format!("{}-tf4", f.name()));
        let cfg_path = tmp.0.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).expect("read")).expect("json");
        if !transformers4_spelling(&mut cfg) {
            continue;
        }
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write");
        let (e, _) =
            run_and_compare(&tmp.0, &f, &f.logits(), false).unwrap_or_else(|e| panic!("{} (transformers 4 spelling): {e}", f.name()));
        eprintln!("{:<14} transformers 4 spelling: rel. error {e:.2e}", f.name());
        assert!(e < MAX_REL_ERR, "{} in transformers 4 spelling: rel. error {e:.2e}", f.name());
        rewritten.push(f.name());
    }
    for v in ["gemma3", "phi3-longrope", "llama3-rope", "qwen2-yarn", "qwen3moe", "phi2", "glm4", "gptoss", "deepseek3"] {
        assert!(rewritten.iter().any(|r| r == v), "{v} was not rewritten");
    }
}

// ---------------------------------------------------------------------------------------------
// Dropped config keys: each plugin's mappings are exercised by the fixtures.
// ---------------------------------------------------------------------------------------------

/// Remove a dotted path (`rope_parameters.rope_theta`) from a JSON object; false if absent.
fn remove_path(v: &mut serde_json::Value, path: &str) -> bool {
    match path.split_once('.') {
        Some((head, rest)) => v.get_mut(head).is_some_and(|inner| remove_path(inner, rest)),
        None => v.as_object_mut().and_then(|o| o.remove(path)).is_some(),
    }
}

/// A scratch copy of a fixture directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn copy_of(src: &Path, tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("rocmforge-hf-tiny-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        for e in std::fs::read_dir(src).expect("read_dir") {
            let e = e.expect("entry");
            std::fs::copy(e.path(), d.join(e.file_name())).expect("copy");
        }
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// For each (variant, keys): the fixture with those `config.json` keys removed (together: some
/// values are spelled in two places) must fail to load or move the logits by
/// `MIN_DROPPED_REL_ERR`, while the untouched fixture stays within the bound.
fn check_dropped(plugin: &str, cases: &[(&str, &[&str])]) {
    let reg = registry();
    let mut weak = Vec::new();
    for &(variant, keys) in cases {
        let f = fixture(variant);
        assert_eq!(reg.for_hf_arch(&f.arch).expect("plugin").0.name, plugin, "{variant} is not served by {plugin}");
        let tmp = TempDir::copy_of(&f.dir, &format!("{variant}-{}", keys.join("+")));
        let cfg_path = tmp.0.join("config.json");
        let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).expect("read")).expect("json");
        for k in keys {
            assert!(remove_path(&mut cfg, k), "{variant}: config.json has no {k}");
        }
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).expect("json")).expect("write");
        match run_and_compare(&tmp.0, &f, &f.logits(), false) {
            Err(e) => eprintln!("{variant:<14} without {keys:?}: refused ({e})"),
            Ok((e, _)) => {
                eprintln!("{variant:<14} without {keys:?}: rel. error {e:.2e}");
                if !(e > MIN_DROPPED_REL_ERR) {
                    weak.push(format!("{variant} without {keys:?}: {e:.2e}"));
                }
            }
        }
    }
    assert!(weak.is_empty(), "dropping these config keys moved the logits by less than {MIN_DROPPED_REL_ERR:.0e}: {weak:#?}");
}

#[test]
fn dropped_llama_keys_are_caught() {
    check_dropped(
        "llama",
        &[
            ("llama", &["head_dim"]),
            ("llama", &["num_key_value_heads"]),
            ("llama", &["rms_norm_eps"]),
            ("llama", &["rope_parameters.rope_theta"]),
            ("llama3-rope", &["rope_parameters.rope_type"]),
            ("llama3-rope", &["rope_parameters.rope_theta"]),
            ("llama3-rope", &["rope_parameters.factor"]),
            ("llama3-rope", &["rope_parameters.low_freq_factor"]),
            ("llama3-rope", &["rope_parameters.high_freq_factor"]),
            ("llama3-rope", &["rope_parameters.original_max_position_embeddings"]),
            ("llama-linear", &["rope_parameters.rope_type"]),
            ("llama-linear", &["rope_parameters.factor"]),
            ("llama-linear", &["rope_parameters.rope_theta"]),
        ],
    );
}

#[test]
fn dropped_qwen_keys_are_caught() {
    check_dropped(
        "qwen",
        &[
            ("qwen2", &["head_dim"]),
            ("qwen2", &["num_key_value_heads"]),
            ("qwen2", &["rms_norm_eps"]),
            ("qwen2", &["rope_parameters.rope_theta"]),
            ("qwen2-yarn", &["rope_parameters.rope_type"]),
            ("qwen2-yarn", &["rope_parameters.rope_theta"]),
            ("qwen2-yarn", &["rope_parameters.factor"]),
            ("qwen2-yarn", &["rope_parameters.original_max_position_embeddings"]),
            ("qwen2-yarn", &["rope_parameters.beta_fast"]),
            ("qwen2-yarn", &["rope_parameters.beta_slow"]),
            ("qwen3", &["head_dim"]),
            ("qwen3", &["rms_norm_eps"]),
            ("qwen3", &["rope_parameters.rope_theta"]),
            ("qwen2moe", &["num_experts"]),
            ("qwen2moe", &["num_experts_per_tok"]),
            ("qwen2moe", &["norm_topk_prob"]),
            ("qwen2moe", &["rope_parameters.rope_theta"]),
            ("qwen3moe", &["head_dim"]),
            ("qwen3moe", &["num_local_experts"]),
            ("qwen3moe", &["num_experts_per_tok"]),
            ("qwen3moe", &["norm_topk_prob"]),
            ("qwen3moe", &["rope_parameters.rope_theta"]),
        ],
    );
}

#[test]
fn dropped_mistral_keys_are_caught() {
    check_dropped(
        "mistral",
        &[
            ("mistral", &["head_dim"]),
            ("mistral", &["num_key_value_heads"]),
            ("mistral", &["sliding_window"]),
            ("mistral", &["rms_norm_eps"]),
            ("mistral", &["rope_parameters.rope_theta"]),
            ("mixtral", &["head_dim"]),
            ("mixtral", &["num_local_experts"]),
            ("mixtral", &["num_experts_per_tok"]),
            ("mixtral", &["rms_norm_eps"]),
            ("mixtral", &["rope_parameters.rope_theta"]),
        ],
    );
}

#[test]
fn dropped_phi_keys_are_caught() {
    check_dropped(
        "phi",
        &[
            ("phi3", &["num_key_value_heads"]),
            ("phi3", &["rms_norm_eps"]),
            ("phi3", &["rope_parameters.rope_theta"]),
            ("phi3", &["rope_parameters.partial_rotary_factor"]),
            ("phi3-longrope", &["rope_parameters.rope_type"]),
            ("phi3-longrope", &["rope_parameters.long_factor"]),
            ("phi3-longrope", &["rope_parameters.short_factor"]),
            ("phi3-longrope", &["rope_parameters.attention_factor"]),
            ("phi3-longrope", &["rope_parameters.partial_rotary_factor"]),
            ("phi3-longrope", &["max_position_embeddings"]),
            // transformers writes the original context twice; both spellings are read.
            ("phi3-longrope", &["original_max_position_embeddings", "rope_parameters.original_max_position_embeddings"]),
            ("phi2", &["layer_norm_eps"]),
            ("phi2", &["rope_parameters.rope_theta"]),
            // transformers writes the factor twice; both spellings are read.
            ("phi2", &["partial_rotary_factor", "rope_parameters.partial_rotary_factor"]),
        ],
    );
}

#[test]
fn dropped_glm4_keys_are_caught() {
    check_dropped(
        "glm4",
        &[
            // Without head_dim, transformers' Glm4Config default 128 applies (the plugin's
            // `=128` row), which the weights' shapes refuse.
            ("glm4", &["head_dim"]),
            ("glm4", &["num_key_value_heads"]),
            ("glm4", &["rms_norm_eps"]),
            ("glm4", &["rope_parameters.rope_theta"]),
            // transformers writes the factor twice: 0.75 in rope_parameters (the one it uses) and
            // the 0.5 default at the top level; each copy is read in that order.
            ("glm4", &["rope_parameters.partial_rotary_factor"]),
        ],
    );
}

#[test]
fn dropped_gptoss_keys_are_caught() {
    check_dropped(
        "gptoss",
        &[
            ("gptoss", &["head_dim"]),
            ("gptoss", &["num_key_value_heads"]),
            ("gptoss", &["rms_norm_eps"]),
            ("gptoss", &["num_local_experts"]),
            ("gptoss", &["num_experts_per_tok"]),
            // The window (8) is shorter than the sequences (24); the layer pattern is not the
            // default period of 2.
            ("gptoss", &["sliding_window"]),
            ("gptoss", &["layer_types"]),
            ("gptoss", &["rope_parameters.rope_theta"]),
            ("gptoss", &["rope_parameters.rope_type"]),
            ("gptoss", &["rope_parameters.factor"]),
            ("gptoss", &["rope_parameters.original_max_position_embeddings"]),
            ("gptoss", &["rope_parameters.beta_fast"]),
            ("gptoss", &["rope_parameters.beta_slow"]),
            // Without it transformers rounds the YaRN range (its default), and so do we.
            ("gptoss", &["rope_parameters.truncate"]),
        ],
    );
}

#[test]
fn dropped_deepseek2_keys_are_caught() {
    check_dropped(
        "deepseek2",
        &[
            ("deepseek2", &["kv_lora_rank"]),
            ("deepseek2", &["qk_nope_head_dim"]),
            ("deepseek2", &["qk_rope_head_dim"]),
            ("deepseek2", &["v_head_dim"]),
            ("deepseek2", &["rms_norm_eps"]),
            ("deepseek2", &["rope_parameters.rope_theta"]),
            ("deepseek2", &["first_k_dense_replace"]),
            ("deepseek2", &["n_routed_experts"]),
            ("deepseek2", &["num_experts_per_tok"]),
            ("deepseek2", &["n_group"]),
            ("deepseek2", &["topk_group"]),
            ("deepseek2", &["routed_scaling_factor"]),
            ("deepseek3", &["norm_topk_prob"]),
            ("deepseek3", &["routed_scaling_factor"]),
            ("deepseek3", &["n_group"]),
            ("deepseek3", &["topk_group"]),
            ("deepseek3", &["rope_parameters.rope_type"]),
            ("deepseek3", &["rope_parameters.factor"]),
            ("deepseek3", &["rope_parameters.mscale_all_dim"]),
            ("deepseek3", &["rope_parameters.mscale"]),
            ("deepseek3", &["rope_parameters.beta_fast"]),
            ("deepseek3", &["rope_parameters.original_max_position_embeddings"]),
        ],
    );
}

#[test]
fn dropped_gemma_keys_are_caught() {
    check_dropped(
        "gemma",
        &[
            ("gemma", &["head_dim"]),
            ("gemma", &["num_key_value_heads"]),
            ("gemma", &["rms_norm_eps"]),
            ("gemma", &["rope_parameters.rope_theta"]),
            ("gemma2", &["head_dim"]),
            ("gemma2", &["query_pre_attn_scalar"]),
            ("gemma2", &["attn_logit_softcapping"]),
            ("gemma2", &["final_logit_softcapping"]),
            ("gemma2", &["sliding_window"]),
            ("gemma2", &["layer_types"]),
            ("gemma2", &["rms_norm_eps"]),
            ("gemma2", &["rope_parameters.rope_theta"]),
            ("gemma3", &["head_dim"]),
            ("gemma3", &["query_pre_attn_scalar"]),
            ("gemma3", &["final_logit_softcapping"]),
            ("gemma3", &["sliding_window"]),
            ("gemma3", &["layer_types"]),
            ("gemma3", &["rms_norm_eps"]),
            ("gemma3", &["rope_parameters.full_attention.rope_theta"]),
            ("gemma3", &["rope_parameters.full_attention.rope_type"]),
            ("gemma3", &["rope_parameters.full_attention.factor"]),
            ("gemma3", &["rope_parameters.sliding_attention.rope_theta"]),
        ],
    );
}
