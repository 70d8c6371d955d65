//! Which type each tensor of a model gets for a given file type: the "mix" of a `Q4_K_M` file
//! (more bits for `attn_v`/`ffn_down` in some layers, Q6_K for `output.weight`, ...), which
//! tensors are quantized at all, and the fallback when a row is not a whole number of blocks.
//!
//! Invariants (all from llama.cpp, checked by `tests/quantize_types.rs` against its output):
//! - Tensors are visited in llama.cpp's order (`tensor_order`): tensors outside `blk.N.` first,
//!   then by layer number, then by name. The layer counters (`i_attention_wv`, `i_ffn_down`, ...)
//!   count tensors in that order, so the order is part of the rule, not a cosmetic choice.
//! - Only tensors whose name ends in `weight`, with at least 2 dims (trailing 1s dropped) and not
//!   on the exclusion list (norms, MoE gates, positional embeddings, ...) change type; everything
//!   else keeps its input type.
//! - A type whose block does not divide the row length falls back (Q4_K -> Q5_0, Q6_K -> Q8_0,
//!   ...), and to F16 if even that does not fit.
//!
//! Modelled on llama.cpp `src/llama-quant.cpp` (`tensor_allows_quantization`,
//! `llama_tensor_get_type_impl`, `tensor_type_fallback`, `init_quantize_state_counters`) and the
//! `weight_name_comparer` of `llama-model-loader.h`. Branches for file types we cannot write
//! (IQ1/IQ2/IQ3 mixes, MXFP4_MOE, TQ) are left out.

use std::cmp::Ordering;

use rocmforge_quant::GgmlType;

use super::FileType;
use crate::gguf::GgufValue;

/// Broad tensor roles the rules care about (llama.cpp's `tensor_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorCategory {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl TensorCategory {
    pub fn of(name: &str) -> Self {
        use TensorCategory::*;
        if name == "output.weight" {
            return Output;
        }
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return TokenEmbd;
        }
        // Substring tests in llama.cpp's order: `attn_qkv` before `attn_q`, etc.
        const SUBSTR: &[(&str, TensorCategory)] = &[
            ("attn_qkv.weight", AttnQkv),
            ("attn_kv_b.weight", AttnKvB),
            ("attn_v.weight", AttnV),
            ("attn_k.weight", AttnK),
            ("attn_q.weight", AttnQ),
            ("attn_output.weight", AttnOutput),
            ("ffn_up", FfnUp),
            ("ffn_gate", FfnGate),
            ("ffn_down", FfnDown),
        ];
        SUBSTR.iter().find(|(s, _)| name.contains(s)).map_or(Other, |&(_, c)| c)
    }

    /// `attn_v`-like tensors: the most quantization-sensitive, counted by `i_attention_wv`.
    fn is_attn_v(self) -> bool {
        matches!(self, TensorCategory::AttnV | TensorCategory::AttnQkv | TensorCategory::AttnKvB)
    }
}

/// `N` of a `blk.N.` prefix, the way llama.cpp's `sscanf(name, "blk.%d.")` reads it.
pub fn layer_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?;
    let (sign, digits) = match rest.as_bytes().first() {
        Some(b'-') => (-1, &rest[1..]),
        Some(b'+') => (1, &rest[1..]),
        _ => (1, rest),
    };
    let end = digits.bytes().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse::<i64>().ok().map(|n| sign * n)
}

/// llama.cpp's tensor order: non-layer tensors (layer -1) first, then by layer, then by name.
pub fn tensor_order(a: &str, b: &str) -> Ordering {
    let la = layer_of(a).unwrap_or(-1);
    let lb = layer_of(b).unwrap_or(-1);
    la.cmp(&lb).then_with(|| a.cmp(b))
}

/// `ggml_n_dims`: the number of dims once trailing 1s are dropped (at least 1).
pub fn n_dims(dims: &[u64]) -> usize {
    dims.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// True if the rules may change this tensor's type (llama.cpp's `tensor_allows_quantization`,
/// with `quantize_output_tensor = true`, `only_copy = false`).
pub fn allows_quantization(arch: &str, name: &str, dims: &[u64]) -> bool {
    if n_dims(dims) < 2 || !name.ends_with("weight") {
        return false;
    }
    if name == "position_embd.weight" || name == "token_types.weight" {
        return false;
    }
    // Small or sensitive tensors that stay as they are.
    const KEEP: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    if KEEP.iter().any(|k| name.contains(k)) {
        return false;
    }
    if arch == "glm5-next" {
        const KEEP_GLM5: &[&str] = &[
            "hc_",
            "indexer.attn_q_b",
            "indexer.attn_k",
            "indexer.proj",
            "indexer_compressor_gate",
            "indexer_compressor_ape",
            "ssm_f_a.weight",
            "ssm_f_b.weight",
            "ssm_g_a.weight",
            "ssm_g_b.weight",
            "ssm_beta.weight",
            "attn_kv_a_mqa.weight",
            "attn_k_b.weight",
            "attn_v_b.weight",
        ];
        if KEEP_GLM5.iter().any(|k| name.contains(k)) {
            return false;
        }
    }
    true
}

/// The hyper-parameters the rules read (llama.cpp reads them from the loaded model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantHparams {
    /// `{arch}.block_count`.
    pub n_layer: u32,
    /// `{arch}.attention.head_count` of layer 0.
    pub n_head: u32,
    /// `{arch}.attention.head_count_kv` of layer 0 (`n_head` if absent).
    pub n_head_kv: u32,
    /// `{arch}.expert_count` (0 if absent).
    pub n_expert: u32,
}

impl QuantHparams {
    /// Read from GGUF metadata. A missing `block_count` is taken from the largest `blk.N.` + 1
    /// of `tensor_names` (llama.cpp would refuse the file; a converter may not have written it).
    pub fn from_metadata<'a>(arch: &str, metadata: &[(String, GgufValue)], tensor_names: impl Iterator<Item = &'a str>) -> Self {
        let get = |key: &str| -> Option<u64> {
            let v = metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)?;
            // Per-layer arrays (head_count of OpenELM, Gemma-3n, ...): layer 0, as n_gqa(0).
            match v {
                GgufValue::Array(a) => a.to_u64_vec()?.first().copied(),
                v => v.as_u64(),
            }
        };
        let n_layer = get(&format!("{arch}.block_count"))
            .unwrap_or_else(|| tensor_names.filter_map(layer_of).max().map_or(0, |m| (m + 1).max(0) as u64));
        let n_head = get(&format!("{arch}.attention.head_count")).unwrap_or(0);
        let n_head_kv = get(&format!("{arch}.attention.head_count_kv")).unwrap_or(n_head);
        let clamp = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
        QuantHparams {
            n_layer: clamp(n_layer),
            n_head: clamp(n_head),
            n_head_kv: clamp(n_head_kv),
            n_expert: clamp(get(&format!("{arch}.expert_count")).unwrap_or(0)),
        }
    }

    /// Query heads per KV head (0 when there are no KV heads, as llama.cpp's `n_gqa`).
    pub fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }
}

/// llama.cpp's "more bits for these layers" pattern: the first and last eighth of the layers and
/// every third one in between.
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// The result of choosing a tensor's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeChoice {
    pub ty: GgmlType,
    /// The mixed type did not fit the row length and a fallback was used.
    pub fallback: bool,
}

/// The per-model state of the mixing rules (llama.cpp's `quantize_state_impl`): counters that
/// advance as tensors are visited in `tensor_order`.
#[derive(Debug, Clone)]
pub struct MixState {
    arch: String,
    hp: QuantHparams,
    ftype: FileType,
    pure: bool,
    /// llama.cpp's `LLM_TYPE_70B`, which gets more bits for `attn_v`.
    is_70b: bool,
    has_tied_embeddings: bool,
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    /// Number of tensors that needed a fallback type.
    pub n_fallback: usize,
}

impl MixState {
    /// `names`: every tensor name of the model (the counters' totals come from the whole list).
    pub fn new<'a>(arch: &str, hp: QuantHparams, ftype: FileType, pure: bool, names: impl Iterator<Item = &'a str>) -> Self {
        let mut n_attention_wv = 0;
        let mut has_tied_embeddings = true;
        for name in names {
            let cat = TensorCategory::of(name);
            if cat.is_attn_v() {
                n_attention_wv += 1;
            }
            if cat == TensorCategory::Output {
                has_tied_embeddings = false;
            }
        }
        // As llama.cpp's `llama_quant_model_from_metadata`: the only model size the rules use.
        let is_70b = arch == "llama" && hp.n_layer == 80 && hp.n_head != hp.n_head_kv;
        MixState {
            arch: arch.to_string(),
            hp,
            ftype,
            pure,
            is_70b,
            has_tied_embeddings,
            n_attention_wv,
            i_attention_wv: 0,
            i_ffn_down: 0,
            i_ffn_gate: 0,
            i_ffn_up: 0,
            n_fallback: 0,
        }
    }

    fn is_falcon(&self) -> bool {
        self.arch == "falcon"
    }

    /// The layer a per-layer rule applies to: the running counter for dense models, the
    /// `blk.N.` of the name for MoE models (whose expert tensors are not in layer order).
    fn layer_info(&self, counter: i64, name: &str) -> Result<(i64, i64), String> {
        let n_layer = i64::from(self.hp.n_layer);
        if self.hp.n_expert <= 1 {
            return Ok((counter, n_layer));
        }
        match layer_of(name) {
            Some(il) if (0..n_layer).contains(&il) => Ok((il, n_layer)),
            Some(il) => Err(format!("bad layer {il}, must be in [0, {n_layer})")),
            None => Err("cannot determine its layer".into()),
        }
    }

    /// The mix: adjust the file type's base type for this tensor's role and layer
    /// (llama.cpp's `llama_tensor_get_type_impl`, for the file types we write).
    fn mixed_type(&mut self, base: GgmlType, name: &str, ne0: u64, cat: TensorCategory) -> Result<GgmlType, String> {
        use FileType as F;
        use GgmlType as G;
        use TensorCategory as C;
        let ft = self.ftype;
        let mut ty = base;
        if self.arch == "glm5-next"
            && ["attn_q_a", "attn_q_b", "nextn.eh_proj"].iter().any(|s| name.contains(s))
            && !matches!(ty, G::F32 | G::BF16 | G::F16)
        {
            return Ok(G::Q8_0);
        }
        let gqa = self.hp.n_gqa();
        let n_expert = self.hp.n_expert;
        if cat == C::Output || (self.has_tied_embeddings && cat == C::TokenEmbd) {
            // The output projection (or the embedding that doubles as it) gets more bits.
            if self.is_falcon() || !ne0.is_multiple_of(ty.block_size() as u64) {
                ty = G::Q8_0;
            } else if ty != G::Q8_0 {
                ty = G::Q6_K;
            }
        } else if cat == C::TokenEmbd {
            // Only the IQ1/IQ2/IQ3/TQ mixes change untied embeddings.
        } else if cat.is_attn_v() {
            let i = self.i_attention_wv;
            match ft {
                F::Q2_K => ty = if gqa >= 4 { G::Q4_K } else { G::Q3_K },
                F::Q2_K_S if gqa >= 4 => ty = G::Q4_K,
                F::Q3_K_M => ty = if i < 2 { G::Q5_K } else { G::Q4_K },
                F::Q3_K_L => ty = G::Q5_K,
                F::IQ4_NL | F::IQ4_XS if gqa >= 4 => ty = G::Q5_K,
                F::Q4_K_M | F::Q5_K_M if use_more_bits(i, self.n_attention_wv) => ty = G::Q6_K,
                F::Q4_K_S if i < 4 => ty = G::Q5_K,
                _ => {}
            }
            if self.is_70b && matches!(ty, G::Q3_K | G::Q4_K) {
                // 8 query heads share each V head, so attn_v is 8x smaller: more bits are cheap.
                ty = G::Q5_K;
            }
            if n_expert == 8 {
                ty = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == C::AttnK {
            if n_expert == 8 {
                ty = G::Q8_0;
            }
        } else if cat == C::AttnQ {
            // Only the IQ3 mixes change attn_q.
        } else if cat == C::FfnDown {
            let (il, nl) = self.layer_info(self.i_ffn_down, name)?;
            let falcon = self.is_falcon();
            match ft {
                F::Q2_K => ty = G::Q3_K,
                F::Q2_K_S if il < nl / 8 => ty = G::Q4_K,
                F::Q3_K_M => {
                    ty = if il < nl / 16 {
                        G::Q5_K
                    } else if !falcon || use_more_bits(il, nl) {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    }
                }
                F::Q3_K_L => ty = if falcon { G::Q4_K } else { G::Q5_K },
                F::Q4_K_M if falcon => {
                    ty = if il < nl / 16 {
                        G::Q6_K
                    } else if use_more_bits(il, nl) {
                        G::Q5_K
                    } else {
                        G::Q4_K
                    }
                }
                F::Q4_K_M if use_more_bits(il, nl) => ty = G::Q6_K,
                // No importance matrix here, so the IQ4 guard always applies.
                F::IQ4_NL | F::IQ4_XS if il < nl / 8 => ty = G::Q5_K,
                F::Q5_K_M if use_more_bits(il, nl) => ty = G::Q6_K,
                F::Q4_K_S if !falcon && il < nl / 8 => ty = G::Q5_K,
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == C::AttnOutput {
            if !self.is_falcon() {
                if n_expert == 8 {
                    if matches!(ft, F::Q2_K | F::Q3_K_S | F::Q3_K_M | F::IQ4_NL | F::Q4_K_S | F::Q4_K_M | F::IQ4_XS) {
                        ty = G::Q5_K;
                    }
                } else {
                    match ft {
                        F::Q2_K => ty = G::Q3_K,
                        F::Q3_K_M => ty = G::Q4_K,
                        F::Q3_K_L => ty = G::Q5_K,
                        _ => {}
                    }
                }
            } else if ft == F::Q3_K_L {
                ty = G::Q4_K;
            }
        } else if cat == C::AttnQkv {
            match ft {
                F::Q3_K_M | F::Q3_K_L => ty = G::Q4_K,
                F::Q4_K_M => ty = G::Q5_K,
                F::Q5_K_M => ty = G::Q6_K,
                _ => {}
            }
        } else if cat == C::FfnGate {
            // Only IQ3_XS changes ffn_gate, but the layer check and counter still run.
            self.layer_info(self.i_ffn_gate, name)?;
            self.i_ffn_gate += 1;
        } else if cat == C::FfnUp {
            self.layer_info(self.i_ffn_up, name)?;
            self.i_ffn_up += 1;
        }
        Ok(ty)
    }

    /// A type whose blocks tile a row of `ne0` (llama.cpp's `tensor_type_fallback`).
    fn fallback(&mut self, ty: GgmlType, ne0: u64) -> Result<TypeChoice, String> {
        use GgmlType as G;
        let fits = |t: GgmlType| ne0.is_multiple_of(t.block_size() as u64);
        if fits(ty) {
            return Ok(TypeChoice { ty, fallback: false });
        }
        self.n_fallback += 1;
        let mut to = match ty {
            G::IQ1_S | G::IQ1_M | G::IQ2_XXS | G::IQ2_XS | G::IQ2_S | G::IQ3_XXS | G::IQ3_S | G::IQ4_XS => G::IQ4_NL,
            G::Q2_K | G::Q3_K | G::TQ1_0 | G::TQ2_0 => G::Q4_0,
            G::Q4_K => G::Q5_0,
            G::Q5_K => G::Q5_1,
            G::Q6_K => G::Q8_0,
            t if t.block_size() <= 32 => t,
            t => return Err(format!("no fallback type is defined for {t}")),
        };
        if !fits(to) {
            // Rows not even a multiple of 32: only a float type fits.
            to = G::F16;
        }
        Ok(TypeChoice { ty: to, fallback: true })
    }
}

/// The type tensor `name` (dims in GGUF order, `ne0` first; input type `cur`) gets in the
/// output. Call it once per tensor, in `tensor_order`: it advances `state`'s layer counters
/// (llama.cpp's `llama_tensor_get_type`). Errors name what is wrong with the tensor.
pub fn tensor_type_for(state: &mut MixState, name: &str, dims: &[u64], cur: GgmlType) -> Result<TypeChoice, String> {
    let keep = TypeChoice { ty: cur, fallback: false };
    if !allows_quantization(&state.arch, name, dims) {
        return Ok(keep);
    }
    let base = state.ftype.base_type();
    if !base.is_quantized() {
        return Ok(TypeChoice { ty: base, fallback: false });
    }
    let ne0 = dims.first().copied().unwrap_or(1);
    let ty = if state.pure { base } else { state.mixed_type(base, name, ne0, TensorCategory::of(name))? };
    state.fallback(ty, ne0)
}

/// True if llama.cpp refuses to write `ty` for this tensor without an importance matrix
/// (`tensor_requires_imatrix`): the only such case among our file types is Q2_K_S.
pub fn requires_imatrix(name: &str, ty: GgmlType, ftype: FileType) -> bool {
    let cat = TensorCategory::of(name);
    if name == "output.weight" || cat == TensorCategory::TokenEmbd {
        return false;
    }
    match ty {
        GgmlType::IQ3_XXS | GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ2_S | GgmlType::IQ1_M | GgmlType::IQ1_S => true,
        GgmlType::Q2_K => ftype == FileType::Q2_K_S,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_parsing_and_order() {
        assert_eq!(layer_of("blk.12.attn_q.weight"), Some(12));
        assert_eq!(layer_of("token_embd.weight"), None);
        assert_eq!(layer_of("blk.x.y"), None);
        let mut v = vec!["blk.10.a", "blk.2.b", "output.weight", "blk.2.a", "token_embd.weight"];
        v.sort_by(|a, b| tensor_order(a, b));
        assert_eq!(v, ["output.weight", "token_embd.weight", "blk.2.a", "blk.2.b", "blk.10.a"]);
    }

    #[test]
    fn n_dims_drops_trailing_ones() {
        assert_eq!(n_dims(&[576]), 1);
        assert_eq!(n_dims(&[576, 1]), 1);
        assert_eq!(n_dims(&[576, 1, 4]), 3);
        assert_eq!(n_dims(&[]), 1);
    }
}
