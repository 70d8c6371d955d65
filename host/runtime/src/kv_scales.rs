//! fp8 (E4M3) KV cache scales per attention layer: where they come from, and how the executor
//! hands them to a backend.
//!
//! An fp8 cache stores `x / scale` rounded to E4M3 (largest finite value 448) and reads back
//! `e4m3 * scale`; one scale per tensor or per KV head, for K and for V, per layer. Without
//! scales every one is 1.0, as vLLM's `kv_cache_dtype=fp8` without calibration. Scales come from:
//!
//! 1. **The checkpoint.** HF FP8 checkpoints (llm-compressor, vLLM, ModelOpt, Quark) carry them
//!    per layer under one of these names (vLLM's `maybe_remap_kv_scale_name` and the
//!    compressed-tensors cache-scale mapping read the same ones):
//!
//!    ```text
//!      <layer>.self_attn.k_scale / .v_scale             llm-compressor, vLLM
//!      <layer>.self_attn.attn.k_scale / .attn.v_scale   vLLM's own parameter names
//!      <layer>.self_attn.k_proj.k_scale / v_proj.v_scale      ModelOpt
//!      <layer>.self_attn.k_proj.output_scale / v_proj.output_scale   compressed-tensors, Quark
//!      <layer>.self_attn.kv_scale                        deprecated: one scale for K and V
//!    ```
//!
//!    a scalar (per tensor) or one value per KV head (newer "attn_head" strategies). The layer is
//!    the last numeric component of the name (`model.layers.12.self_attn.k_scale` -> 12), so
//!    other prefixes (`language_model.model.layers.N`) work too. [`hf_scale_tensors`] maps them
//!    onto GGUF names, `blk.{il}.attn_k_scale` / `blk.{il}.attn_v_scale` (1-D f32): GGUF has no
//!    standard key (llama.cpp has no scaled KV cache), so these optional tensors are ours, and a
//!    conversion of the HF directory to GGUF (`rocmforge quantize`, `/api/create`) writes them
//!    like any other tensor of the source. [`KvScales::from_source`] reads them from either.
//! 2. **Calibration** (`--kv-scales auto`, as vLLM's `calculate_kv_scales`): the absolute
//!    maximum of each layer's K and V per KV head over a calibration text run at load, turned
//!    into `scale = amax * CALIBRATION_MARGIN / 448` ([`KvScales::from_amax`]); the capture is
//!    [`AmaxProbe`], fed by the executor's intermediate-dump hook, so it works on every backend.
//!
//! Scales are fixed for the life of the loaded model (rows already written stay decodable). They
//! only apply to an fp8 cache; f16 and q8_0 caches ignore them (the executor logs that at
//! debug level), so those paths are untouched. Invariant of a [`KvScales`] the executor accepts:
//! one entry per graph layer, `Some` exactly for layers with attention, each list 1 or
//! `n_head_kv` long, every value finite and positive ([`KvScales::check`]).

use std::collections::HashMap;
use std::sync::Mutex;

use rocmforge_model::hf::HfModelDir;

use crate::graph::{Graph, Op};
use crate::source::ModelSource;
use crate::RuntimeError;

pub use rocmforge_cpu::KvHeadScales;

/// Largest finite E4M3 (E4M3FN) value.
pub const E4M3_MAX: f32 = 448.0;

/// Headroom of calibrated scales: the largest |K| / |V| seen maps to `448 / CALIBRATION_MARGIN`
/// (~358), so values up to 1.25x the calibration maximum are still stored unclipped. Costs
/// nothing measurable at the small end (E4M3 keeps 3 mantissa bits down to 2^-6 of the scale,
/// 2^15 below the top); vLLM's `calculate_kv_scales` divides amax by 200 (K) and 100 (V), a
/// margin of 2.24x / 4.48x. The accuracy test (`tests/kv_cache_types.rs`) measured both.
pub const CALIBRATION_MARGIN: f32 = 1.25;

/// GGUF name of layer `il`'s K scale (optional tensor; see the module header).
pub fn gguf_k_name(il: usize) -> String {
    format!("blk.{il}.attn_k_scale")
}

/// GGUF name of layer `il`'s V scale.
pub fn gguf_v_name(il: usize) -> String {
    format!("blk.{il}.attn_v_scale")
}

/// Where a model's scales came from (for the load log).
#[derive(Clone, Debug, PartialEq)]
pub enum KvScalesOrigin {
    /// Tensors of the model file or directory.
    Checkpoint,
    /// Measured over `n_tokens` calibration tokens at load.
    Calibrated { n_tokens: usize },
}

/// fp8 scales of every layer of a model (see the module header).
#[derive(Clone, Debug, PartialEq)]
pub struct KvScales {
    /// Indexed by layer (`il`, as the graph's ATTENTION ops number them); None for layers
    /// without attention.
    pub layers: Vec<Option<KvHeadScales>>,
    pub origin: KvScalesOrigin,
}

/// Which scale an HF tensor name gives: `(preference, is K, is V)`, lower preference winning
/// when a layer has several: `..k_scale` / `..v_scale` (0), ModelOpt's `k_proj.k_scale` /
/// `v_proj.v_scale` (1), `k_proj.output_scale` / `v_proj.output_scale` (2), `kv_scale` (3).
/// Weight-quantization scales (`weight_scale`, `input_scale`) are not KV scales.
fn hf_suffix(name: &str) -> Option<(usize, bool, bool)> {
    let mut parts = name.rsplit('.');
    let last = parts.next()?;
    let module = parts.next().unwrap_or("");
    match (module, last) {
        ("k_proj", "k_scale") => Some((1, true, false)),
        ("v_proj", "v_scale") => Some((1, false, true)),
        ("k_proj" | "v_proj", "k_scale" | "v_scale") => None,
        (_, "k_scale") => Some((0, true, false)),
        (_, "v_scale") => Some((0, false, true)),
        ("k_proj", "output_scale") => Some((2, true, false)),
        ("v_proj", "output_scale") => Some((2, false, true)),
        (_, "kv_scale") => Some((3, true, true)),
        _ => None,
    }
}

/// The layer of an HF tensor name: its last numeric component.
fn hf_layer(name: &str) -> Option<usize> {
    name.split('.').rev().find_map(|c| if !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) { c.parse().ok() } else { None })
}

/// The KV cache scales of an HF directory under GGUF names: `(gguf name, hf name, values)`,
/// one per layer and K/V at most, for layers below `n_layer` (others are warned about and
/// skipped). Values are read now (they are a few floats); a tensor that cannot be read is an
/// error naming it. Validation against the model's heads happens at load
/// ([`KvScales::from_source`]).
pub fn hf_scale_tensors(dir: &HfModelDir, n_layer: usize) -> Result<Vec<(String, String, Vec<f32>)>, RuntimeError> {
    // (layer, is_v) -> (rank, hf name)
    let mut best: HashMap<(usize, bool), (usize, String)> = HashMap::new();
    for t in dir.tensors() {
        let Some((rank, k, v)) = hf_suffix(&t.name) else { continue };
        let Some(il) = hf_layer(&t.name) else {
            tracing::warn!("{}: KV cache scale '{}' names no layer; ignored", dir.path().display(), t.name);
            continue;
        };
        if il >= n_layer {
            tracing::warn!("{}: KV cache scale '{}' is for layer {il}, the model has {n_layer}; ignored", dir.path().display(), t.name);
            continue;
        }
        for (want, is_v) in [(k, false), (v, true)] {
            if want && best.get(&(il, is_v)).is_none_or(|(r, _)| rank < *r) {
                best.insert((il, is_v), (rank, t.name.clone()));
            }
        }
    }
    let mut keys: Vec<_> = best.into_iter().collect();
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for ((il, is_v), (_, hf)) in keys {
        let values = dir.tensor_f32(&hf).map_err(|e| RuntimeError::Weight { name: hf.clone(), what: e.to_string() })?;
        out.push((if is_v { gguf_v_name(il) } else { gguf_k_name(il) }, hf, values));
    }
    Ok(out)
}

impl KvScales {
    /// The scales of layer `il`, if it has attention and the scales cover it.
    pub fn layer(&self, il: usize) -> Option<&KvHeadScales> {
        self.layers.get(il).and_then(|s| s.as_ref())
    }

    /// The model's checkpoint scales (`blk.{il}.attn_k_scale` / `attn_v_scale`, see the module
    /// header), None when it has none. A layer with attention missing one of them gets 1.0 for
    /// it (with a warning, as vLLM); a value that is not finite and positive, or a count that is
    /// neither 1 nor the layer's KV heads, is an error naming the tensor.
    pub fn from_source(src: &ModelSource, graph: &Graph) -> Result<Option<KvScales>, RuntimeError> {
        let mut layers = Vec::with_capacity(graph.layers.len());
        let (mut found, mut missing) = (0usize, Vec::new());
        for (il, geo) in graph.layers.iter().enumerate() {
            let Some(geo) = geo else {
                layers.push(None);
                continue;
            };
            let mut s = KvHeadScales::default();
            for (is_v, name) in [(false, gguf_k_name(il)), (true, gguf_v_name(il))] {
                if src.tensor_info(&name).is_none() {
                    missing.push(name);
                    continue;
                }
                found += 1;
                let values = src.weight(&name)?.to_f32()?;
                if is_v {
                    s.v = values;
                } else {
                    s.k = values;
                }
                s.check("fp8 KV scale", geo.n_head_kv).map_err(|e| RuntimeError::Weight { name: name.clone(), what: e.to_string() })?;
            }
            layers.push(Some(s));
        }
        if found == 0 {
            return Ok(None);
        }
        if !missing.is_empty() {
            tracing::warn!(
                "{}: fp8 KV cache scales missing for {} of {} tensors ({}{}); those use 1.0",
                src.path().display(),
                missing.len(),
                missing.len() + found,
                missing.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                if missing.len() > 3 { ", ..." } else { "" }
            );
        }
        Ok(Some(KvScales { layers, origin: KvScalesOrigin::Checkpoint }))
    }

    /// Calibrated scales from per-layer, per-KV-head absolute maxima (`k_amax[il]`, `v_amax[il]`,
    /// None for layers without attention): `scale = amax * margin / 448`. A head that saw only
    /// zeros (or nothing) gets 1.0, the uncalibrated value.
    pub fn from_amax(k_amax: &[Option<Vec<f32>>], v_amax: &[Option<Vec<f32>>], margin: f32, n_tokens: usize) -> KvScales {
        let scale = |a: &f32| if a.is_finite() && *a > 0.0 { *a * margin / E4M3_MAX } else { 1.0 };
        let layers = k_amax
            .iter()
            .zip(v_amax)
            .map(|(k, v)| match (k, v) {
                (Some(k), Some(v)) => Some(KvHeadScales { k: k.iter().map(scale).collect(), v: v.iter().map(scale).collect() }),
                _ => None,
            })
            .collect();
        KvScales { layers, origin: KvScalesOrigin::Calibrated { n_tokens } }
    }

    /// The scales fit `graph`: one entry per layer, present for layers with attention, each
    /// list 1 or `n_head_kv` values, all finite and positive.
    pub fn check(&self, graph: &Graph) -> Result<(), RuntimeError> {
        let bad = |what: String| RuntimeError::KvCache(format!("fp8 scales: {what}"));
        if self.layers.len() != graph.layers.len() {
            return Err(bad(format!("{} layers given, the model has {}", self.layers.len(), graph.layers.len())));
        }
        for (il, (s, geo)) in self.layers.iter().zip(&graph.layers).enumerate() {
            match (s, geo) {
                (Some(s), Some(geo)) => s.check("fp8 scales", geo.n_head_kv).map_err(|e| bad(format!("layer {il}: {e}")))?,
                (None, Some(_)) => return Err(bad(format!("layer {il} has attention but no scales"))),
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether any layer has one scale per KV head (rather than per tensor).
    pub fn per_head(&self) -> bool {
        self.layers.iter().flatten().any(|s| s.k.len() > 1 || s.v.len() > 1)
    }

    /// `min..max` of the K and of the V scales over every layer and head, for the load log.
    pub fn range(&self) -> ((f32, f32), (f32, f32)) {
        let mm = |it: &mut dyn Iterator<Item = f32>| it.fold((f32::INFINITY, 0f32), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let k = mm(&mut self.layers.iter().flatten().flat_map(|s| s.k.iter().copied()));
        let v = mm(&mut self.layers.iter().flatten().flat_map(|s| s.v.iter().copied()));
        (k, v)
    }

    /// One line for the load log: origin, granularity, K and V ranges over the layers.
    pub fn summary(&self) -> String {
        let ((klo, khi), (vlo, vhi)) = self.range();
        let n = self.layers.iter().flatten().count();
        let how = if self.per_head() { "per KV head" } else { "per tensor" };
        let origin = match &self.origin {
            KvScalesOrigin::Checkpoint => "from the checkpoint".to_string(),
            KvScalesOrigin::Calibrated { n_tokens } => {
                format!("calibrated over {n_tokens} tokens (amax x {CALIBRATION_MARGIN} / {E4M3_MAX})")
            }
        };
        format!("fp8 KV scales {origin}, {how}, {n} layers: K {klo:.4e}..{khi:.4e}, V {vlo:.4e}..{vhi:.4e}")
    }
}

/// K and V absolute maxima of one layer, per KV head.
type LayerAmax = (Vec<f32>, Vec<f32>);

/// Per-KV-head absolute maxima of the K and V inputs of every ATTENTION op, gathered from the
/// node outputs the backends hand to the dump hook (`Dump::write`), whatever the backend.
pub struct AmaxProbe {
    /// Node index -> (layer, is V, head dim, n heads).
    nodes: HashMap<usize, (usize, bool, usize, usize)>,
    /// Per layer (None: no attention).
    amax: Mutex<Vec<Option<LayerAmax>>>,
}

impl AmaxProbe {
    /// A probe for `graph`'s attention inputs, and the names of the nodes it reads (for the
    /// dump's node filter). V read from K (MLA): V's maxima are K's.
    pub fn new(graph: &Graph) -> (AmaxProbe, Vec<String>) {
        let mut nodes = HashMap::new();
        let mut names = Vec::new();
        let mut amax: Vec<Option<LayerAmax>> = vec![None; graph.layers.len()];
        for node in &graph.nodes {
            let Op::Attention { k, v, p, .. } = &node.op else { continue };
            let Some(Some(geo)) = graph.layers.get(p.layer) else { continue };
            nodes.insert(*k, (p.layer, false, geo.head_dim_k, geo.n_head_kv));
            names.push(graph.nodes[*k].name.clone());
            if !geo.v_in_k {
                nodes.insert(*v, (p.layer, true, geo.head_dim_v, geo.n_head_kv));
                names.push(graph.nodes[*v].name.clone());
            }
            amax[p.layer] = Some((vec![0.0; geo.n_head_kv], vec![0.0; geo.n_head_kv]));
        }
        (AmaxProbe { nodes, amax: Mutex::new(amax) }, names)
    }

    /// Take in node `i`'s output (`rows x cols`, row-major).
    pub(crate) fn observe(&self, i: usize, cols: usize, data: &[f32]) {
        let Some(&(il, is_v, hd, n_head)) = self.nodes.get(&i) else { return };
        if hd == 0 || cols < hd * n_head {
            return;
        }
        let mut amax = self.amax.lock().unwrap_or_else(|e| e.into_inner());
        let Some((k, v)) = amax.get_mut(il).and_then(|a| a.as_mut()) else { return };
        let dst = if is_v { v } else { k };
        for row in data.chunks_exact(cols) {
            for (h, m) in dst.iter_mut().enumerate() {
                // f32::max ignores NaN: a NaN activation does not poison the scale.
                *m = row[h * hd..(h + 1) * hd].iter().fold(*m, |a, x| a.max(x.abs()));
            }
        }
    }

    /// The scales these maxima give (see [`KvScales::from_amax`]); V read from K takes K's.
    pub fn scales(&self, graph: &Graph, n_tokens: usize) -> KvScales {
        let amax = self.amax.lock().unwrap_or_else(|e| e.into_inner());
        let mut ks = Vec::with_capacity(amax.len());
        let mut vs = Vec::with_capacity(amax.len());
        for (il, a) in amax.iter().enumerate() {
            let v_in_k = graph.layers.get(il).and_then(|g| g.as_ref()).is_some_and(|g| g.v_in_k);
            ks.push(a.as_ref().map(|(k, _)| k.clone()));
            vs.push(a.as_ref().map(|(k, v)| if v_in_k { k.clone() } else { v.clone() }));
        }
        KvScales::from_amax(&ks, &vs, CALIBRATION_MARGIN, n_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names_give_layer_and_kind() {
        assert_eq!(hf_layer("model.layers.12.self_attn.k_scale"), Some(12));
        assert_eq!(hf_layer("language_model.model.layers.3.self_attn.k_proj.output_scale"), Some(3));
        assert_eq!(hf_layer("lm_head.k_scale"), None);
        assert_eq!(hf_suffix("model.layers.0.self_attn.k_scale"), Some((0, true, false)));
        assert_eq!(hf_suffix("model.layers.0.self_attn.attn.v_scale"), Some((0, false, true)));
        assert_eq!(hf_suffix("model.layers.0.self_attn.k_proj.output_scale"), Some((2, true, false)));
        assert_eq!(hf_suffix("model.layers.0.self_attn.v_proj.v_scale"), Some((1, false, true)));
        assert_eq!(hf_suffix("model.layers.0.self_attn.kv_scale"), Some((3, true, true)));
        // Weight quantization scales are not KV scales.
        for n in ["model.layers.0.self_attn.k_proj.weight_scale", "model.layers.0.self_attn.k_proj.input_scale", "x.q_scale"] {
            assert_eq!(hf_suffix(n), None, "{n}");
        }
    }

    #[test]
    fn amax_gives_margined_scales_and_zero_heads_stay_at_one() {
        let s = KvScales::from_amax(&[Some(vec![448.0, 0.0]), None], &[Some(vec![1.0, 2.0]), None], 1.25, 7);
        assert_eq!(s.layers[1], None);
        let l = s.layer(0).expect("layer 0");
        assert_eq!(l.k, vec![1.25, 1.0]);
        assert_eq!(l.v, vec![1.25 / 448.0, 2.5 / 448.0]);
        assert!(s.per_head());
        assert!(s.summary().contains("calibrated over 7 tokens"), "{}", s.summary());
    }
}
