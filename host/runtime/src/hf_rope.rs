//! transformers' RoPE configuration → GGUF metadata and tensors, as llama.cpp's converter
//! (`convert_hf_to_gguf.py`) writes them, so that an HF directory and its GGUF conversion run the
//! same graph and the conversion loads in llama.cpp.
//!
//! `config.json` states RoPE in one of three spellings: `rope_theta` + `rope_scaling`
//! (transformers ≤ 4), `rope_parameters` (transformers 5: theta and scaling in one object), or
//! `rope_parameters.{full_attention,sliding_attention}` per layer type (the global layers' entry
//! holds the scaling; plugins map the sliding layers' base themselves). The scaling type is
//! `rope_type` (older files: `type`). Translation, type by type, as llama.cpp's converter does:
//! - `default` / absent: nothing beyond `rope.freq_base`;
//! - `linear`: `rope.scaling.type = linear`, `rope.scaling.factor`;
//! - `yarn`: type, factor, `rope.scaling.original_context_length`, the β bounds when given, and
//!   (ours) `rope.scaling.yarn_truncate` when the config states `truncate`;
//! - `longrope`: type, original context and `rope.scaling.attn_factor` (the factor arrays are
//!   tensors the plugin maps through `config:` entries);
//! - `llama3`: no metadata at all: the converter bakes the scaling into a `rope_freqs.weight`
//!   tensor of per-frequency divisors (computed here in f32, as the converter computes it);
//! - `dynamic` (dynamic NTK): nothing; it only changes positions past the trained context, which
//!   llama.cpp does not model either.
//!
//! Any other type is an error naming it: a silently ignored scaling gives plausible garbage. This
//! is a fact of the transformers config format shared by every architecture, not of one of them;
//! a plugin's own config-map rows still come first and win (Gemma-3's per-layer-type bases).

use serde_json::Value;

use rocmforge_model::gguf::GgufValue;

/// What the RoPE part of a `config.json` becomes in GGUF's vocabulary.
#[derive(Debug, Default)]
pub(crate) struct HfRope {
    /// GGUF keys with the `{arch}` placeholder, and their values.
    pub meta: Vec<(&'static str, GgufValue)>,
    /// `rope_freqs.weight` values (Llama-3 scaling): per rotated pair, the divisor of its frequency.
    pub freq_factors: Option<Vec<f32>>,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// The object holding `rope_type` / `factor` / ..., if the config has one.
fn scaling_params(cfg: &Value) -> Option<&Value> {
    let params = cfg.get("rope_parameters").filter(|p| p.is_object());
    let params = match params {
        // Per layer type: the global (full-attention) layers carry the model's scaling.
        Some(p) if p.get("full_attention").is_some_and(Value::is_object) => p.get("full_attention"),
        Some(p) => Some(p),
        None => None,
    };
    params.or_else(|| cfg.get("rope_scaling").filter(|p| p.is_object()))
}

/// Translate the RoPE entries of `cfg` (see the module header).
pub(crate) fn translate(cfg: &Value) -> Result<HfRope, String> {
    let mut out = HfRope::default();
    let params = scaling_params(cfg);
    let theta = num(cfg, "rope_theta").or_else(|| params.and_then(|p| num(p, "rope_theta")));
    if let Some(t) = theta {
        out.meta.push(("{arch}.rope.freq_base", GgufValue::F32(t as f32)));
    }
    let Some(p) = params else { return Ok(out) };
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let factor = num(p, "factor");
    let orig_ctx = num(p, "original_max_position_embeddings").or_else(|| num(cfg, "original_max_position_embeddings"));
    let bad = |what: String| what;
    match kind {
        "default" | "dynamic" => {}
        "linear" => {
            let f = factor.ok_or_else(|| bad("rope scaling 'linear' without a \"factor\"".into()))?;
            out.meta.push(("{arch}.rope.scaling.type", GgufValue::Str("linear".into())));
            out.meta.push(("{arch}.rope.scaling.factor", GgufValue::F32(f as f32)));
        }
        "yarn" => {
            let f = factor.ok_or_else(|| bad("rope scaling 'yarn' without a \"factor\"".into()))?;
            out.meta.push(("{arch}.rope.scaling.type", GgufValue::Str("yarn".into())));
            out.meta.push(("{arch}.rope.scaling.factor", GgufValue::F32(f as f32)));
            if let Some(n) = orig_ctx {
                out.meta.push(("{arch}.rope.scaling.original_context_length", GgufValue::U32(n as u32)));
            }
            if let Some(b) = num(p, "beta_fast") {
                out.meta.push(("{arch}.rope.scaling.yarn_beta_fast", GgufValue::F32(b as f32)));
            }
            if let Some(b) = num(p, "beta_slow") {
                out.meta.push(("{arch}.rope.scaling.yarn_beta_slow", GgufValue::F32(b as f32)));
            }
            // Ours (llama.cpp's converter drops it and always rounds the correction range):
            // transformers' `truncate = False` keeps it exact (gpt-oss).
            if let Some(t) = p.get("truncate").and_then(Value::as_bool) {
                out.meta.push(("{arch}.rope.scaling.yarn_truncate", GgufValue::Bool(t)));
            }
        }
        "longrope" => {
            out.meta.push(("{arch}.rope.scaling.type", GgufValue::Str("longrope".into())));
            if let Some(n) = orig_ctx {
                out.meta.push(("{arch}.rope.scaling.original_context_length", GgufValue::U32(n as u32)));
            }
            if let Some(a) = num(p, "attention_factor") {
                out.meta.push(("{arch}.rope.scaling.attn_factor", GgufValue::F32(a as f32)));
            }
        }
        "llama3" => out.freq_factors = Some(llama3_freq_factors(cfg, p, theta)?),
        other => {
            return Err(bad(format!("rope type '{other}' is not supported (supported: default, linear, yarn, longrope, llama3, dynamic)")))
        }
    }
    Ok(out)
}

/// Largest head dimension accepted from a config (real models: 64–256).
const MAX_HEAD_DIM: usize = 1 << 16;

/// Llama-3.1's frequency-dependent scaling as divisors of each rotated pair's frequency (what
/// ggml's rope multiplies into the wavelength): 1 for short wavelengths (below the original
/// context / `high_freq_factor`), `factor` for long ones (above the original context /
/// `low_freq_factor`), and a smooth blend between. f32 arithmetic, as the converter's torch code.
fn llama3_freq_factors(cfg: &Value, p: &Value, theta: Option<f64>) -> Result<Vec<f32>, String> {
    let need = |key: &str| num(p, key).ok_or_else(|| format!("rope scaling 'llama3' without \"{key}\""));
    let factor = need("factor")? as f32;
    let low = num(p, "low_freq_factor").unwrap_or(1.0) as f32;
    let high = num(p, "high_freq_factor").unwrap_or(4.0) as f32;
    let old_ctx = need("original_max_position_embeddings")? as f32;
    let base = theta.unwrap_or(10000.0) as f32;
    let head_dim = match num(cfg, "head_dim") {
        Some(d) => d as usize,
        None => {
            let e = num(cfg, "hidden_size").unwrap_or(0.0) as usize;
            let h = num(cfg, "num_attention_heads").unwrap_or(0.0) as usize;
            e.checked_div(h).unwrap_or(0)
        }
    };
    // Bounded: config.json is untrusted and this allocates head_dim / 2 values.
    if !(2..=MAX_HEAD_DIM).contains(&head_dim) || high <= low {
        return Err(format!(
            "rope scaling 'llama3' needs 2 ≤ head_dim ≤ {MAX_HEAD_DIM} and high_freq_factor > low_freq_factor (got {head_dim}, {high}, {low})"
        ));
    }
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    Ok((0..head_dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / base.powf(i as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The three regimes against the formula evaluated in f64 (Llama-3.1's published defaults:
    /// factor 8, low 1, high 4, original context 8192, theta 500000, head_dim 128).
    #[test]
    fn llama3_factors_follow_the_formula_in_f64() {
        let cfg = json!({"head_dim": 128, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}});
        let r = translate(&cfg).unwrap();
        let ff = r.freq_factors.unwrap();
        assert_eq!(ff.len(), 64);
        let (mut ones, mut full, mut mid) = (0, 0, 0);
        for (j, &got) in ff.iter().enumerate() {
            let freq = 1.0 / 500000f64.powf(2.0 * j as f64 / 128.0);
            let wl = 2.0 * std::f64::consts::PI / freq;
            let want = if wl < 2048.0 {
                ones += 1;
                1.0
            } else if wl > 8192.0 {
                full += 1;
                8.0
            } else {
                mid += 1;
                let s = (8192.0 / wl - 1.0) / 3.0;
                1.0 / ((1.0 - s) / 8.0 + s)
            };
            assert!((got as f64 - want).abs() <= 1e-5 * want, "pair {j}: {got} vs {want}");
        }
        assert!(ones > 0 && full > 0 && mid > 0, "{ones} {full} {mid}");
        // No scaling metadata: llama.cpp's converter writes none for llama3 (its loader rejects
        // unknown scaling type names).
        assert!(r.meta.iter().all(|(k, _)| !k.contains("scaling")));
    }

    #[test]
    fn spellings_and_errors() {
        let old = translate(&json!({"rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 2.0}})).unwrap();
        assert_eq!(old.meta.len(), 3);
        let nested = translate(&json!({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}))
        .unwrap();
        assert!(nested.meta.iter().any(|(k, v)| *k == "{arch}.rope.freq_base" && matches!(v, GgufValue::F32(t) if *t == 1e6)));
        assert!(nested.meta.iter().any(|(k, _)| *k == "{arch}.rope.scaling.factor"));
        // "default" writes no scaling type: llama.cpp's loader rejects type names it does not know.
        let default = translate(&json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})).unwrap();
        assert_eq!(default.meta.len(), 1);
        let e = translate(&json!({"rope_scaling": {"rope_type": "su", "factor": 2.0}})).unwrap_err();
        assert!(e.contains("'su'"), "{e}");
        assert!(translate(&json!({"rope_scaling": {"rope_type": "linear"}})).is_err());
        let huge =
            json!({"head_dim": 1e18, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}});
        assert!(translate(&huge).unwrap_err().contains("head_dim"));
    }
}
