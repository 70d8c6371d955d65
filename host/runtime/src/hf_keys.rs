//! `config.json` values that llama.cpp's converter writes computed rather than copied, so that an
//! HF directory and its GGUF conversion carry the metadata a llama.cpp file of the same model has:
//!
//! - config-map arithmetic: an HF key `a+b` is the sum of the numbers at paths `a` and `b`, and
//!   `a*0.1` the number at `a` times a constant (DeepSeek-V2: `attention.key_length` =
//!   `kv_lora_rank + qk_rope_head_dim`, `rope.scaling.yarn_log_multiplier` = `0.1 ·
//!   mscale_all_dim`). Integers stay integers (u32 when they fit, as the rest of the map writes
//!   them); a factor makes an f32. A missing or non-numeric term makes the whole key absent.
//! - the MoE router's score function, spelled as a string under one of several names, becomes
//!   `{arch}.expert_gating_func` (llama.cpp's `LLAMA_EXPERT_GATING_FUNC_TYPE`: 1 softmax,
//!   2 sigmoid, 4 sqrt-softplus), for every architecture, as the converter's `TextModel` does; an
//!   unknown function is an error naming it (a silently wrong gating routes every token wrong).

use rocmforge_model::gguf::GgufValue;
use serde_json::Value;

/// Whether a config-map HF key is arithmetic (see the module header).
pub(crate) fn is_arith(hf_key: &str) -> bool {
    !hf_key.starts_with('=') && !hf_key.contains("==") && (hf_key.contains('+') || hf_key.contains('*'))
}

/// The value of an arithmetic HF key, or None when a term is missing or not a number.
pub(crate) fn arith(cfg: &Value, hf_key: &str) -> Option<GgufValue> {
    let (sum, factor) = match hf_key.split_once('*') {
        Some((lhs, f)) => (lhs, Some(f.trim().parse::<f64>().ok().filter(|f| f.is_finite())?)),
        None => (hf_key, None),
    };
    let terms: Vec<&Value> = sum.split('+').map(|t| t.trim().split('.').try_fold(cfg, |v, part| v.get(part))).collect::<Option<_>>()?;
    if factor.is_none() && terms.iter().all(|t| t.is_u64()) {
        let total = terms.iter().try_fold(0u64, |acc, t| acc.checked_add(t.as_u64()?))?;
        return Some(u32::try_from(total).map_or(GgufValue::U64(total), GgufValue::U32));
    }
    let total: f64 = terms.iter().map(|t| t.as_f64()).sum::<Option<f64>>()?;
    // Finite as written (an f32): a huge config value is no value rather than infinity.
    let v = (total * factor.unwrap_or(1.0)) as f32;
    v.is_finite().then_some(GgufValue::F32(v))
}

/// The config keys naming a router's score function, in llama.cpp's converter's order.
const SCORE_FUNC_KEYS: [&str; 6] =
    ["score_function", "scoring_func", "score_func", "moe_router_activation", "moe_router_activation_func", "expert_selection_fn"];

/// `{arch}.expert_gating_func` from the first score-function key the config has (see the module
/// header); Ok(None) when it has none.
pub(crate) fn expert_gating(cfg: &Value) -> Result<Option<GgufValue>, String> {
    let Some((key, v)) = SCORE_FUNC_KEYS.iter().find_map(|k| cfg.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v))) else {
        return Ok(None);
    };
    let id = match v.as_str() {
        Some("softmax") => 1,
        Some("sigmoid") => 2,
        Some("sqrtsoftplus") => 4,
        _ => return Err(format!("{key} = {v} is not a supported MoE score function (softmax, sigmoid, sqrtsoftplus)")),
    };
    Ok(Some(GgufValue::U32(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sums_and_factors() {
        let cfg = json!({"kv_lora_rank": 512, "qk_rope_head_dim": 64, "rope_scaling": {"mscale_all_dim": 0.707}, "neg": -3, "x": null});
        assert!(matches!(arith(&cfg, "kv_lora_rank+qk_rope_head_dim"), Some(GgufValue::U32(576))));
        match arith(&cfg, "rope_scaling.mscale_all_dim*0.1") {
            Some(GgufValue::F32(v)) => assert!((v - 0.0707).abs() < 1e-7, "{v}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(arith(&cfg, "neg+kv_lora_rank"), Some(GgufValue::F32(v)) if v == 509.0));
        assert!(arith(&cfg, "kv_lora_rank+missing").is_none(), "a missing term drops the key");
        assert!(arith(&cfg, "x*2").is_none(), "null is not a number");
        assert!(arith(&cfg, "kv_lora_rank*nan").is_none());
        let huge = json!({"a": u64::MAX, "b": 1});
        assert!(arith(&huge, "a+b").is_none(), "an overflowing sum is no value");
        assert!(is_arith("a+b") && is_arith("a*0.1") && !is_arith("=1") && !is_arith("layer_types==x") && !is_arith("a.b"));
    }

    #[test]
    fn score_functions() {
        assert!(matches!(expert_gating(&json!({"scoring_func": "sigmoid"})), Ok(Some(GgufValue::U32(2)))));
        assert!(matches!(expert_gating(&json!({"score_function": "softmax", "scoring_func": "sigmoid"})), Ok(Some(GgufValue::U32(1)))));
        assert!(matches!(expert_gating(&json!({"hidden_size": 8})), Ok(None)));
        let e = expert_gating(&json!({"scoring_func": "relu"})).unwrap_err();
        assert!(e.contains("scoring_func") && e.contains("relu"), "{e}");
    }
}
