//! `rocmforge plugins check FILE.so`: load one plugin the way the host does and prove it works
//! before anyone serves a model with it.
//!
//! Steps, each reported with a clear error: (1) load the file (ABI version, table size, claims,
//! tensor and config maps); (2) compare its claims with the installed plugins and say which one
//! serves each contested architecture under the precedence rules ([`crate::plugin`]); (3) for
//! each GGUF architecture it claims, build its graph against a tiny model and (4) run one
//! forward pass of it on the CPU, checking the outputs are finite.
//!
//! The tiny model is either a real file (`--model`), or synthesised: LLaMA-shaped metadata under
//! the architecture's own prefix (`{arch}.block_count`, `{arch}.attention.head_count`, ...) and
//! one small random F32 tensor for every *required* row of the plugin's tensor table, shaped by
//! llama.cpp's naming conventions (`blk.N.attn_q.weight` = `[n_embd, n_head·head_dim]`, ...).
//! A required tensor whose name has no known shape, or an architecture needing metadata beyond
//! the LLaMA set, is reported with a hint to pass `--model`.

use std::path::{Path, PathBuf};

use rocmforge_model::gguf::{GgufValue, GgufWriter};
use rocmforge_quant::GgmlType;

use crate::exec::{Executor, KvConfig, Logits, SeqChunk};
use crate::plugin::{Plugin, Registry};
use crate::source::ModelSource;
use crate::{build_graph, RuntimeError};

/// The ABI version this host speaks (for reports).
pub const HOST_ABI_VERSION: u32 = rocmforge_abi::ABI_VERSION;

/// Hyperparameters of the synthetic model (small, GQA, head_dim 16).
pub const N_VOCAB: usize = 128;
pub const N_EMBD: usize = 64;
pub const N_HEAD: usize = 4;
pub const N_HEAD_KV: usize = 2;
pub const HEAD_DIM: usize = N_EMBD / N_HEAD;
pub const N_FF: usize = 96;
pub const N_LAYER: usize = 2;
pub const N_CTX: usize = 256;
/// Mixture-of-experts shape (written for every architecture; dense ones never read it).
pub const N_EXPERT: usize = 4;
pub const N_EXPERT_USED: usize = 2;

/// Architectures without grouped-query attention (their plugins refuse `head_count_kv` ≠
/// `head_count`): their synthetic K/V heads equal the query heads.
const MHA_ONLY: &[&str] = &["bert", "nomic-bert", "jina-bert-v2"];

fn n_head_kv(arch: &str) -> usize {
    if MHA_ONLY.contains(&arch) {
        N_HEAD
    } else {
        N_HEAD_KV
    }
}

/// One contested claim of the checked plugin.
#[derive(Debug, Clone)]
pub struct ClaimConflict {
    pub arch: String,
    pub hf: bool,
    /// Other installed plugins claiming it: (name, file), in precedence order.
    pub others: Vec<(String, PathBuf)>,
    /// Whether the checked plugin serves it: `None` when the file is not on the search path (the
    /// installed registry does not contain it).
    pub wins: Option<bool>,
}

/// What a successful build and forward pass produced.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    pub nodes: usize,
    pub weights: usize,
    pub layers: usize,
    pub output_cols: usize,
    pub embedding: bool,
}

/// The build check of one architecture.
#[derive(Debug)]
pub struct BuildCheck {
    pub arch: String,
    /// "synthetic" or the model file's path.
    pub model: String,
    pub result: Result<BuildSummary, String>,
}

/// The whole report.
#[derive(Debug)]
pub struct CheckReport {
    pub plugin: Plugin,
    /// The file is on the search path, behind a plugin of the same name (which is used instead).
    pub shadowed_by: Option<PathBuf>,
    pub conflicts: Vec<ClaimConflict>,
    pub builds: Vec<BuildCheck>,
}

impl CheckReport {
    /// Whether every build check passed (conflicts are reported, not failures).
    pub fn ok(&self) -> bool {
        !self.builds.is_empty() && self.builds.iter().all(|b| b.result.is_ok())
    }
}

/// Check `path` against the `installed` plugins; `model` replaces the synthetic model.
pub fn check(path: &Path, installed: &Registry, model: Option<&Path>) -> Result<CheckReport, RuntimeError> {
    let plugin = Plugin::load(path)?;
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let me = canon(path);
    let my_index = installed.plugins.iter().position(|p| canon(&p.path) == me);
    let shadowed_by = installed.shadowed.iter().find(|s| canon(&s.path) == me).map(|s| s.by.clone());

    let mut conflicts = Vec::new();
    let claims = plugin.gguf_archs().map(|a| (false, a.to_string())).chain(plugin.hf_archs().map(|a| (true, a.to_string())));
    for (hf, arch) in claims {
        let claimants: Vec<usize> = installed
            .plugins
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                if hf {
                    p.hf_archs().any(|a| a == arch)
                } else {
                    p.gguf_archs().any(|a| a == arch) && !p.meta_claims.iter().any(|(c, _)| *c == arch)
                }
            })
            .map(|(i, _)| i)
            .collect();
        let others: Vec<(String, PathBuf)> = claimants
            .iter()
            .filter(|&&i| Some(i) != my_index)
            .map(|&i| (installed.plugins[i].name.clone(), installed.plugins[i].path.clone()))
            .collect();
        if !others.is_empty() {
            let wins = my_index.map(|_| claimants.first() == my_index.as_ref());
            conflicts.push(ClaimConflict { arch, hf, others, wins });
        }
    }

    let builds = match model {
        Some(m) => vec![check_model(&plugin, m)],
        None => {
            let mut archs: Vec<&str> = plugin.gguf_archs().collect();
            archs.dedup();
            if archs.is_empty() {
                vec![BuildCheck {
                    arch: String::new(),
                    model: "synthetic".into(),
                    result: Err("the plugin claims no GGUF architecture, only HF ones: pass --model with a tiny model".into()),
                }]
            } else {
                archs.iter().map(|a| check_synthetic(&plugin, a)).collect()
            }
        }
    };
    Ok(CheckReport { plugin, shadowed_by, conflicts, builds })
}

fn check_model(plugin: &Plugin, model: &Path) -> BuildCheck {
    let result = || -> Result<(String, BuildSummary), String> {
        // HF directories are opened with the checked plugin's maps, whatever is installed (a
        // second load of the same file is the same, never-unloaded library).
        let reg = Registry { plugins: vec![Plugin::load(&plugin.path).map_err(|e| e.to_string())?], ..Registry::default() };
        let src = ModelSource::open(model, &reg).map_err(|e| format!("cannot open {}: {e}", model.display()))?;
        let arch = src.arch().to_string();
        if !plugin.gguf_archs().any(|a| a == arch) {
            let claims: Vec<&str> = plugin.gguf_archs().collect();
            return Err(format!("the model's architecture '{arch}' is not claimed by this plugin (it claims: {})", claims.join(", ")));
        }
        Ok((arch, build_and_run(plugin, &src)?))
    };
    match result() {
        Ok((arch, s)) => BuildCheck { arch, model: model.display().to_string(), result: Ok(s) },
        Err(e) => BuildCheck { arch: String::new(), model: model.display().to_string(), result: Err(e) },
    }
}

fn check_synthetic(plugin: &Plugin, arch: &str) -> BuildCheck {
    let path = std::env::temp_dir().join(format!("rocmforge-plugins-check-{}-{arch}.gguf", std::process::id()));
    let result = (|| {
        // Tensors a plugin marks optional because it accepts alternatives (a fused `attn_qkv` or
        // separate q/k/v) are not in the first model; when the build then asks for one that is
        // missing, it is added in every layer and the build retried. Bounded: each round adds a
        // new name, and only names with a known shape.
        let mut extra: Vec<String> = Vec::new();
        for _ in 0..MAX_DISCOVERY_ROUNDS {
            write_synthetic(plugin, arch, &extra, &path)?;
            let src = ModelSource::open(&path, &Registry::default()).map_err(|e| format!("cannot open the synthetic model: {e}"))?;
            match build_graph(plugin, &src) {
                Err(RuntimeError::MissingTensor { name } | RuntimeError::MissingTensorOfArch { name, .. })
                    if synthetic_shape(arch, &name).is_some() && !extra.contains(&layer_pattern(&name)) =>
                {
                    extra.push(layer_pattern(&name));
                }
                _ => return build_and_run(plugin, &src).map_err(|e| format!("{e}\n  ({SYNTHETIC_HINT} {arch} model)")),
            }
        }
        Err(format!("the plugin kept asking for more tensors after {MAX_DISCOVERY_ROUNDS} rounds\n  ({SYNTHETIC_HINT} {arch} model)"))
    })();
    let _ = std::fs::remove_file(&path);
    BuildCheck { arch: arch.to_string(), model: "synthetic".into(), result }
}

const MAX_DISCOVERY_ROUNDS: usize = 32;
const SYNTHETIC_HINT: &str =
    "the synthetic model has LLaMA-shaped metadata and the tensors the plugin asked for only: pass --model FILE with a real tiny";

/// `blk.3.attn_q.weight` -> `blk.{il}.attn_q.weight` (a global name stays as it is).
fn layer_pattern(name: &str) -> String {
    match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((il, rest)) if il.parse::<usize>().is_ok() => format!("blk.{{il}}.{rest}"),
        _ => name.to_string(),
    }
}

/// Architectures whose `ffn_up` holds gate and up fused (`[n_embd, 2·n_ff]`, gate first), as
/// llama.cpp's converter writes Phi-3 and GLM-4.
const FUSED_GATE_UP: &[&str] = &["phi3", "glm4"];

fn build_and_run(plugin: &Plugin, src: &ModelSource) -> Result<BuildSummary, String> {
    let graph = build_graph(plugin, src).map_err(|e| format!("graph build failed: {e}"))?;
    let summary = BuildSummary {
        nodes: graph.nodes.len(),
        weights: graph.nodes.iter().filter(|n| matches!(n.op, crate::graph::Op::Weight { .. })).count(),
        layers: graph.layers.len(),
        output_cols: 0,
        embedding: graph.embedding,
    };
    let mut exec = Executor::new(graph, src, KvConfig { block_size: 16, n_blocks: 2 }).map_err(|e| format!("executor: {e}"))?;
    let cols = exec.n_out_cols();
    let tokens = [1u32, 2, 3];
    let out = exec
        .forward(&[SeqChunk { tokens: &tokens, pos_start: 0, block_table: &[0, 1], group_tables: &[], logits: Logits::Last }])
        .map_err(|e| format!("forward pass on the CPU failed: {e}"))?;
    if let Some(i) = out.iter().position(|x| !x.is_finite()) {
        return Err(format!("forward pass produced a non-finite output ({} at column {i})", out[i]));
    }
    Ok(BuildSummary { output_cols: cols, ..summary })
}

/// GGUF dims of a tensor of `arch`'s synthetic model, from llama.cpp's naming conventions.
pub fn synthetic_shape(arch: &str, name: &str) -> Option<Vec<usize>> {
    let (e, q, kv, f, x) = (N_EMBD, N_HEAD * HEAD_DIM, n_head_kv(arch) * HEAD_DIM, N_FF, N_EXPERT);
    let base = match name.strip_prefix("blk.") {
        Some(rest) => rest.split_once('.').map(|(_, r)| r)?,
        None => name,
    };
    let layer = name.starts_with("blk.");
    Some(match (layer, base) {
        (false, "token_embd.weight" | "output.weight") => vec![e, N_VOCAB],
        (false, "output_norm.weight" | "output_norm.bias" | "token_embd_norm.weight" | "token_embd_norm.bias") => vec![e],
        (false, "rope_freqs.weight") => vec![HEAD_DIM / 2],
        (false, "position_embd.weight") => vec![e, N_CTX],
        (false, "token_types.weight") => vec![e, 2],
        (true, "attn_q.weight") => vec![e, q],
        (true, "attn_k.weight" | "attn_v.weight") => vec![e, kv],
        (true, "attn_qkv.weight") => vec![e, q + 2 * kv],
        (true, "attn_output.weight") => vec![q, e],
        (true, "attn_q.bias") => vec![q],
        (true, "attn_k.bias" | "attn_v.bias") => vec![kv],
        (true, "attn_qkv.bias") => vec![q + 2 * kv],
        (true, "attn_q_norm.weight" | "attn_k_norm.weight") => vec![HEAD_DIM],
        (true, "ffn_up.weight") if FUSED_GATE_UP.contains(&arch) => vec![e, 2 * f],
        (true, "ffn_gate.weight" | "ffn_up.weight") => vec![e, f],
        (true, "ffn_down.weight") => vec![f, e],
        (true, "ffn_gate_inp.weight") => vec![e, x],
        (true, "ffn_gate_exps.weight" | "ffn_up_exps.weight") => vec![e, f, x],
        (true, "ffn_down_exps.weight") => vec![f, e, x],
        (true, "ffn_gate_shexp.weight" | "ffn_up_shexp.weight") => vec![e, f],
        (true, "ffn_down_shexp.weight") => vec![f, e],
        (true, "ffn_gate_inp_shexp.weight") => vec![e],
        (true, "ffn_gate.bias" | "ffn_up.bias") => vec![f],
        (
            true,
            "attn_norm.weight"
            | "attn_norm.bias"
            | "ffn_norm.weight"
            | "ffn_norm.bias"
            | "attn_output.bias"
            | "ffn_down.bias"
            | "post_attention_norm.weight"
            | "post_ffw_norm.weight"
            | "attn_output_norm.weight"
            | "attn_output_norm.bias"
            | "layer_output_norm.weight"
            | "layer_output_norm.bias",
        ) => vec![e],
        _ => return None,
    })
}

/// LLaMA-shaped metadata under `arch`'s prefix.
pub fn synthetic_metadata(arch: &str) -> Vec<(String, GgufValue)> {
    let u = |x: usize| GgufValue::U32(x as u32);
    let k = |s: &str| format!("{arch}.{s}");
    vec![
        ("general.architecture".into(), GgufValue::Str(arch.into())),
        ("general.name".into(), GgufValue::Str(format!("synthetic {arch} (rocmforge plugins check)"))),
        (k("block_count"), u(N_LAYER)),
        (k("context_length"), u(N_CTX)),
        (k("embedding_length"), u(N_EMBD)),
        (k("feed_forward_length"), u(N_FF)),
        (k("vocab_size"), u(N_VOCAB)),
        (k("attention.head_count"), u(N_HEAD)),
        (k("attention.head_count_kv"), u(n_head_kv(arch))),
        (k("expert_count"), u(N_EXPERT)),
        (k("expert_used_count"), u(N_EXPERT_USED)),
        (k("expert_feed_forward_length"), u(N_FF)),
        (k("expert_shared_feed_forward_length"), u(N_FF)),
        (k("attention.key_length"), u(HEAD_DIM)),
        (k("attention.value_length"), u(HEAD_DIM)),
        (k("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-5)),
        (k("attention.layer_norm_epsilon"), GgufValue::F32(1e-5)),
        (k("rope.freq_base"), GgufValue::F32(10000.0)),
        (k("rope.dimension_count"), u(HEAD_DIM)),
    ]
}

/// Write the synthetic model of `arch` for `plugin` to `path`: the required rows of its tensor
/// table and the `extra` names (patterns with `{il}` for every layer).
fn write_synthetic(plugin: &Plugin, arch: &str, extra: &[String], path: &Path) -> Result<(), String> {
    let mut w = GgufWriter::new();
    for (k, v) in synthetic_metadata(arch) {
        w.set(k, v);
    }
    let mut tensors: Vec<(String, Vec<usize>)> = Vec::new();
    let required = plugin.tensors.iter().filter(|t| !t.optional).map(|t| &t.gguf);
    for pattern in required.chain(extra) {
        let names: Vec<String> = if pattern.contains("{il}") {
            (0..N_LAYER).map(|il| pattern.replace("{il}", &il.to_string())).collect()
        } else {
            vec![pattern.clone()]
        };
        // A name several table rows map (one GGUF tensor, alternative HF names) is written once.
        for name in names.into_iter().filter(|n| !tensors.iter().any(|(t, _)| t == n)).collect::<Vec<_>>() {
            let dims = synthetic_shape(arch, &name).ok_or_else(|| {
                format!("no synthetic shape for required tensor '{name}' (not a llama.cpp name this check knows): pass --model FILE with a real tiny {arch} model")
            })?;
            tensors.push((name, dims));
        }
    }
    for (name, dims) in &tensors {
        w.add_tensor_info(name.clone(), dims.iter().map(|&d| d as u64).collect(), GgmlType::F32)
            .map_err(|e| format!("tensor '{name}': {e}"))?;
    }
    let mut seed = 0x5eed_u64;
    w.write_file(path, |i| {
        let (name, dims) = &tensors[i];
        let n: usize = dims.iter().product();
        // Norm weights near 1 and matrices scaled ~1/sqrt(k): activations stay O(1).
        let is_norm = name.contains("norm") && dims.len() == 1;
        let spread = if dims.len() == 2 { 1.0 / (dims[0] as f32).sqrt() } else { 0.1 };
        let center = if is_norm { 1.0 } else { 0.0 };
        Ok((0..n).flat_map(|_| (center + spread * next_uniform(&mut seed)).to_le_bytes()).collect::<Vec<u8>>())
    })
    .map_err(|e| format!("cannot write the synthetic model to {}: {e}", path.display()))
}

/// SplitMix64 mapped to [-1, 1): deterministic weights without a dependency.
fn next_uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}
