//! DeepSeek-V2 / V3 architecture plugin (GGUF `deepseek2`; HF `DeepseekV2ForCausalLM`,
//! `DeepseekV3ForCausalLM`): Multi-head Latent Attention (MLA) over a latent KV cache, and a
//! mixture of shared and routed experts with group-limited routing.
//!
//! Four sections, as DESIGN.md §3 asks: (1) tensor table, (2) hyperparameters, (3) the graph,
//! (4) the export. The graph follows llama.cpp's `src/models/deepseek2.cpp` (its MLA branch) and
//! transformers' `modeling_deepseek_v2.py` / `modeling_deepseek_v3.py`, read for facts; the
//! absorbed form was checked against transformers by `scripts/fixtures/deepseek_v2_mla_check.py`.
//!
//! ```text
//!   x ─ rms_norm ─┬─ q (q_proj, or q_a ─ rms_norm ─ q_b)  [n, H·(dn+dr)] ─┬─ q_nope [n, H·dn] ─ ·k_b per head ─ q_abs [n, H·r] ─┐
//!                 │                                                        └─ q_pe [n, H·dr] ─ rope ───────────────────────────┴─ Q [n, H·(r+dr)]
//!                 └─ kv_a_mqa [n, r+dr] ─┬─ c_kv [n, r] ─ rms_norm(kv_a_norm) ─┐
//!                                        └─ k_pe [n, dr] ─ rope ───────────────┴─ K [n, r+dr]  (cached once per token)
//!   LATENT_ATTENTION(Q, K): MQA, V = K's first r columns, scale mscale²/√(dn+dr) ─ [n, H·r] ─ ·v_b per head ─ [n, H·dv] ─ o ─ + x
//!   ffn_norm ─ dense SwiGLU (first `leading_dense_block_count` layers) | routed experts + shared experts ─ + ffn_inp
//! ```
//!
//! Facts this relies on (r = kv_lora_rank, dn = qk_nope_head_dim, dr = qk_rope_head_dim,
//! dv = v_head_dim, H = heads):
//! - Absorption: `q_nope_h · k_nope_h = (q_nope_h · k_b_h) · c_kv` and `softmax · (c_kv · v_b_hᵀ) =
//!   (softmax · c_kv) · v_b_hᵀ`, so attention runs as MQA over the normed latent plus the rope
//!   key, one cache row of r + dr per token (the latent is V too), instead of H rows of dn+dr
//!   and dv. The scale stays 1/√(dn + dr) (not of r + dr), times YaRN's mscale² (below).
//! - RoPE touches only the rope parts (q_pe per head, the one shared k_pe) and rotates adjacent
//!   pairs: transformers' DeepSeek-V2 `apply_rotary_emb` views pairs as complex numbers, V3's
//!   `apply_rotary_pos_emb_interleave` rotates (x[2i], x[2i+1]) (its output lists the rotated
//!   evens before the odds, a permutation shared by q and k that leaves every q·k unchanged);
//!   llama.cpp says LLAMA_ROPE_TYPE_NORM for DEEPSEEK2 and its converter permutes nothing. So
//!   ggml's interleaved mode on the checkpoints' own rows; V3's `rope_interleave = false`
//!   (rotate-half) maps to NeoX mode (our key `{arch}.rope.interleaved`).
//! - YaRN (`rope_type` yarn): transformers scales the rotated cos/sin by
//!   `get_mscale(f, mscale) / get_mscale(f, mscale_all_dim)` (`get_mscale(f)` when either is
//!   missing) and the softmax scale by `get_mscale(f, mscale_all_dim)²` when `mscale_all_dim` is
//!   set, with `get_mscale(f, m) = 1 + 0.1·m·ln f` (1 for f <= 1). llama.cpp's files carry
//!   `rope.scaling.yarn_log_multiplier` = 0.1·mscale_all_dim and assume mscale = mscale_all_dim;
//!   HF directories also carry mscale (our key `{arch}.rope.scaling.yarn_mscale`, 0 = absent),
//!   so both follow their reference. ggml's YaRN rope multiplies by `1 + 0.1·ln f` itself, which
//!   the rope's attention factor cancels.
//! - kv_b: llama.cpp's converter writes `attn_k_b` `[dn, r, H]` (transposed) and `attn_v_b`
//!   `[r, dv, H]`; older GGUF files and HF checkpoints have the fused `attn_kv_b`, split at load by
//!   derived rows (`gguf:` HF names; the host's `source_derived.rs`). Metadata: MLA files say
//!   `attention.head_count_kv` = 1, `key_length` = r + dr, `value_length` = r,
//!   `key_length_mla` = dn + dr, `value_length_mla` = dv; older files `key_length` = dn + dr,
//!   `value_length` = dv. Both are read.
//! - Routing (MOE_ROUTE's appended slots): scores are a softmax (V2) or sigmoids (V3,
//!   `expert_gating_func` = 2; a file without the key: sigmoid when the layer has the selection
//!   bias `exp_probs_b`, as only V3 has, else softmax, llama.cpp's default); the bias moves the
//!   choice only; `expert_group_count` > 1 limits the choice to the best `expert_group_used_count`
//!   groups, a group scored by its best score (V2's `group_limited_greedy`) or the sum of its two
//!   best (V3's `noaux_tc`; llama.cpp scores V2's groups this way too, transformers and
//!   DeepSeek's code do not); weights renormalised when `expert_weights_norm`, then times
//!   `expert_weights_scale` (`routed_scaling_factor`). transformers' V2 port ignores
//!   `norm_topk_prob`; DeepSeek's code and llama.cpp honour it, and so do we.
//! - The latent norms (`attn_q_a_norm`, `attn_kv_a_norm`) use eps 1e-6 whatever
//!   `rms_norm_eps` says, as transformers and DeepSeek's code build them.
//! - Shared experts: one dense SwiGLU of `n_shared · moe_intermediate_size` (`ffn_*_shexp`)
//!   added to the routed output, ungated.
//!
//! Not supported, refused by name: sqrt-softplus gating; the DeepSeek-OCR vision variant
//! (`deepseek2-ocr` is another architecture). NextN (multi-token prediction) blocks at the end
//! of a file are skipped, as llama.cpp does.

use rocmforge_abi::builder::{AttnOpts, RopeOpts};
use rocmforge_abi::{
    arch, cap, config, moe_act, moe_gating, moe_group, op, tensor, tensor_flags::OPTIONAL, transform, Builder, Meta, MoeRouteOpts, Node,
    OpError,
};

// ---------------------------------------------------------------------------------------------
// (1) Tensor table: GGUF name (internal vocabulary) <- Hugging Face name, flags, load transform.
//     Names as llama.cpp's `deepseek2` (gguf-py constants, src/llama-arch.cpp) and its converter.
// ---------------------------------------------------------------------------------------------

const KV_B: &str = "gguf:blk.{il}.attn_kv_b.weight";

static TENSORS: [rocmforge_abi::RfTensorMap; 29] = [
    tensor("token_embd.weight", "model.embed_tokens.weight", 0, transform::NONE),
    tensor("output_norm.weight", "model.norm.weight", 0, transform::NONE),
    tensor("output.weight", "lm_head.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_norm.weight", "model.layers.{il}.input_layernorm.weight", 0, transform::NONE),
    // Queries: one projection (V2-Lite), or a low-rank pair with a norm between (q_lora_rank).
    tensor("blk.{il}.attn_q.weight", "model.layers.{il}.self_attn.q_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_q_a.weight", "model.layers.{il}.self_attn.q_a_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_q_a.bias", "model.layers.{il}.self_attn.q_a_proj.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_q_a_norm.weight", "model.layers.{il}.self_attn.q_a_layernorm.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_q_b.weight", "model.layers.{il}.self_attn.q_b_proj.weight", OPTIONAL, transform::NONE),
    // The compressed KV: latent of r and the shared rope key of dr, the latent's norm.
    tensor("blk.{il}.attn_kv_a_mqa.weight", "model.layers.{il}.self_attn.kv_a_proj_with_mqa.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_kv_a_mqa.bias", "model.layers.{il}.self_attn.kv_a_proj_with_mqa.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_kv_a_norm.weight", "model.layers.{il}.self_attn.kv_a_layernorm.weight", 0, transform::NONE),
    // kv_b fused (HF, older GGUF) and split per head (llama.cpp's converter; derived otherwise).
    tensor("blk.{il}.attn_kv_b.weight", "model.layers.{il}.self_attn.kv_b_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_k_b.weight", KV_B, OPTIONAL, transform::KV_B_TO_K_B),
    tensor("blk.{il}.attn_v_b.weight", KV_B, OPTIONAL, transform::KV_B_TO_V_B),
    tensor("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.o_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_output.bias", "model.layers.{il}.self_attn.o_proj.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", 0, transform::NONE),
    // Dense FFN of the leading layers.
    tensor("blk.{il}.ffn_gate.weight", "model.layers.{il}.mlp.gate_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.up_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.down_proj.weight", OPTIONAL, transform::NONE),
    // Router, its selection bias (V3), routed experts stacked [n_embd, n_ff_exp, n_expert].
    tensor("blk.{il}.ffn_gate_inp.weight", "model.layers.{il}.mlp.gate.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.exp_probs_b.bias", "model.layers.{il}.mlp.gate.e_score_correction_bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_gate_exps.weight", "model.layers.{il}.mlp.experts.{xid}.gate_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_up_exps.weight", "model.layers.{il}.mlp.experts.{xid}.up_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_down_exps.weight", "model.layers.{il}.mlp.experts.{xid}.down_proj.weight", OPTIONAL, transform::NONE),
    // Shared experts: one dense SwiGLU of n_shared x n_ff_exp.
    tensor("blk.{il}.ffn_gate_shexp.weight", "model.layers.{il}.mlp.shared_experts.gate_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_up_shexp.weight", "model.layers.{il}.mlp.shared_experts.up_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_down_shexp.weight", "model.layers.{il}.mlp.shared_experts.down_proj.weight", OPTIONAL, transform::NONE),
];

/// `config.json` keys -> GGUF metadata keys as llama.cpp's converter writes them for
/// `deepseek2` (the first row found wins; `a+b`, `a*0.1` are the host's config arithmetic).
/// `{arch}.rope.scaling.yarn_mscale` and `{arch}.rope.interleaved` are ours (see the header).
static CONFIG: [rocmforge_abi::RfConfigMap; 23] = [
    // MLA converts to MQA over one latent "head" of r + dr (V = its first r).
    config("{arch}.attention.head_count_kv", "=1"),
    config("{arch}.attention.key_length", "kv_lora_rank+qk_rope_head_dim"),
    config("{arch}.attention.value_length", "kv_lora_rank"),
    config("{arch}.attention.key_length_mla", "qk_nope_head_dim+qk_rope_head_dim"),
    config("{arch}.attention.value_length_mla", "v_head_dim"),
    config("{arch}.attention.q_lora_rank", "q_lora_rank"),
    config("{arch}.attention.kv_lora_rank", "kv_lora_rank"),
    config("{arch}.rope.dimension_count", "qk_rope_head_dim"),
    config("{arch}.rope.interleaved", "rope_interleave"),
    config("{arch}.rope.scaling.yarn_log_multiplier", "rope_parameters.mscale_all_dim*0.1"),
    config("{arch}.rope.scaling.yarn_log_multiplier", "rope_scaling.mscale_all_dim*0.1"),
    config("{arch}.rope.scaling.yarn_mscale", "rope_parameters.mscale"),
    config("{arch}.rope.scaling.yarn_mscale", "rope_scaling.mscale"),
    config("{arch}.rope.scaling.yarn_mscale", "=0"),
    config("{arch}.leading_dense_block_count", "first_k_dense_replace"),
    config("{arch}.expert_count", "n_routed_experts"),
    config("{arch}.expert_used_count", "num_experts_per_tok"),
    config("{arch}.expert_shared_count", "n_shared_experts"),
    config("{arch}.expert_feed_forward_length", "moe_intermediate_size"),
    config("{arch}.expert_weights_scale", "routed_scaling_factor"),
    config("{arch}.expert_weights_norm", "norm_topk_prob"),
    config("{arch}.expert_group_count", "n_group"),
    config("{arch}.expert_group_used_count", "topk_group"),
];

static ARCHS: [rocmforge_abi::RfArchClaim; 2] = [arch("deepseek2", "DeepseekV2ForCausalLM"), arch("deepseek2", "DeepseekV3ForCausalLM")];

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

/// `a · b` of two config-given sizes: an overflow (a hostile config) is an error, never a panic.
fn mul(a: usize, b: usize, what: &str) -> Result<usize, OpError> {
    a.checked_mul(b).filter(|p| p.checked_mul(4).is_some()).ok_or_else(|| OpError(format!("deepseek2: {what} ({a} x {b}) overflows")))
}
fn add(a: usize, b: usize, what: &str) -> Result<usize, OpError> {
    a.checked_add(b).ok_or_else(|| OpError(format!("deepseek2: {what} ({a} + {b}) overflows")))
}

/// transformers' / DeepSeek's YaRN magnitude scale.
fn get_mscale(factor: f64, mscale: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale * factor.ln() + 1.0
    }
}

/// Routed experts' settings (layers from `n_dense_lead` on).
struct Moe {
    n_expert: usize,
    n_expert_used: usize,
    /// Gating from metadata: Some(sigmoid) when `expert_gating_func` says, None = by the layer.
    sigmoid: Option<bool>,
    norm: bool,
    scale: f32,
    n_group: usize,
    n_group_used: usize,
}

struct HParams {
    n_layer: usize,
    n_embd: usize,
    n_head: usize,
    /// kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim (v_head_dim is `attn_v_b`'s).
    r: usize,
    dn: usize,
    dr: usize,
    eps: f32,
    n_dense_lead: usize,
    moe: Option<Moe>,
    /// RoPE of the rope parts (`n_head` and `head_dim` set per use).
    rope: RopeOpts,
    kq_scale: f32,
}

impl HParams {
    fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let key = |k: &str| format!("{arch}.{k}");
        let err = |what: String| OpError(format!("{arch}: {what}"));
        let n_embd = m.meta_usize(&key("embedding_length"))?;
        let n_head = m.meta_usize(&key("attention.head_count"))?;
        let r = m.meta_usize(&key("attention.kv_lora_rank"))?;
        let dr = m.meta_usize(&key("rope.dimension_count"))?;
        // MLA files: the per-head sizes under *_mla; older files: under key/value_length.
        let dk = match m.meta_int_opt(&key("attention.key_length_mla"))? {
            Some(_) => m.meta_usize(&key("attention.key_length_mla"))?,
            None => m.meta_usize(&key("attention.key_length"))?,
        };
        let dv = match m.meta_int_opt(&key("attention.value_length_mla"))? {
            Some(_) => m.meta_usize(&key("attention.value_length_mla"))?,
            None => m.meta_usize(&key("attention.value_length"))?,
        };
        if n_embd == 0 || n_head == 0 || r == 0 || dv == 0 {
            return Err(err(format!(
                "embedding_length {n_embd}, head_count {n_head}, kv_lora_rank {r} and value length {dv} must be positive"
            )));
        }
        if dr == 0 || dr % 2 != 0 {
            return Err(err(format!("rope.dimension_count {dr} (qk_rope_head_dim) must be even and positive")));
        }
        if dk <= dr {
            return Err(err(format!("key length {dk} (qk_nope_head_dim + qk_rope_head_dim) must exceed rope.dimension_count {dr}")));
        }
        let dn = dk - dr;
        // Every width the graph forms, checked once (hostile configs reach here).
        mul(n_head, add(dn, dr, "key length")?, "query width")?;
        mul(n_head, add(r, dr, "latent width")?, "absorbed query width")?;
        mul(n_head, dv, "value width")?;
        mul(n_head, r, "latent output width")?;

        let n_layer_all = m.meta_usize(&key("block_count"))?;
        let n_nextn = m.meta_usize_or(&key("nextn_predict_layers"), 0)?;
        if n_nextn >= n_layer_all {
            return Err(err(format!("nextn_predict_layers {n_nextn} leaves none of the {n_layer_all} blocks")));
        }
        let n_layer = n_layer_all - n_nextn;
        let n_dense_lead = m.meta_usize_or(&key("leading_dense_block_count"), 0)?;
        let moe = if n_dense_lead >= n_layer {
            None
        } else {
            let n_expert = m.meta_usize(&key("expert_count"))?;
            let n_expert_used = m.meta_usize(&key("expert_used_count"))?;
            if n_expert_used == 0 || n_expert_used > n_expert {
                return Err(err(format!("expert_used_count {n_expert_used} must be in 1..={n_expert} (expert_count)")));
            }
            let sigmoid = match m.meta_int_opt(&key("expert_gating_func"))? {
                None | Some(0) => None,
                Some(1) => Some(false),
                Some(2) => Some(true),
                Some(g) => return Err(err(format!("expert_gating_func {g} is not supported (1 = softmax, 2 = sigmoid)"))),
            };
            let scale = m.meta_f32_or(&key("expert_weights_scale"), 0.0)?;
            if !scale.is_finite() || scale < 0.0 {
                return Err(err(format!("expert_weights_scale {scale} must be finite and >= 0")));
            }
            Some(Moe {
                n_expert,
                n_expert_used,
                sigmoid,
                norm: m.meta_int_opt(&key("expert_weights_norm"))?.is_some_and(|v| v != 0),
                scale: if scale == 0.0 { 1.0 } else { scale },
                n_group: m.meta_usize_or(&key("expert_group_count"), 0)?,
                n_group_used: m.meta_usize_or(&key("expert_group_used_count"), 0)?,
            })
        };

        let freq_base = m.meta_f32_or(&key("rope.freq_base"), 10000.0)?;
        let neox = m.meta_int_opt(&key("rope.interleaved"))? == Some(0);
        let mut rope = RopeOpts::new(n_head, dr, dr, neox, freq_base).with_scaling_from(m, arch)?;
        let mut kq_scale = 1.0 / ((dn + dr) as f64).sqrt();
        let log_mul = m.meta_float_opt(&key("rope.scaling.yarn_log_multiplier"))?.unwrap_or(0.0);
        if rope.ext_factor != 0.0 && log_mul != 0.0 {
            // YaRN with DeepSeek's mscale (see the header); f = 1 / freq_scale.
            let f = 1.0 / rope.freq_scale as f64;
            let m_all = log_mul / 0.1;
            let total = match m.meta_float_opt(&key("rope.scaling.yarn_mscale"))? {
                // An HF directory: transformers' attention factor.
                Some(ms) if ms != 0.0 => get_mscale(f, ms) / get_mscale(f, m_all),
                Some(_) => get_mscale(f, 1.0),
                // A llama.cpp file: mscale = mscale_all_dim.
                None => 1.0,
            };
            // ggml's YaRN rope multiplies by 1 + 0.1 ln f on its own.
            rope.attn_factor = (total / get_mscale(f, 1.0)) as f32 * m.meta_f32_or(&key("rope.scaling.attn_factor"), 1.0)?;
            kq_scale *= get_mscale(f, m_all).powi(2);
        }
        if !(kq_scale.is_finite() && kq_scale > 0.0 && rope.attn_factor.is_finite()) {
            return Err(err(format!("YaRN settings give an attention scale of {kq_scale}")));
        }
        Ok(HParams {
            n_layer,
            n_embd,
            n_head,
            r,
            dn,
            dr,
            eps: m.meta_f32(&key("attention.layer_norm_rms_epsilon"))?,
            n_dense_lead,
            moe,
            rope,
            kq_scale: kq_scale as f32,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graph. Shapes: n = tokens in the batch, m = rows whose logits are wanted.
// ---------------------------------------------------------------------------------------------

/// The ops beyond the first revision of ABI v1 that MLA and this routing need, asked before use.
fn check_host(b: &Builder) -> Result<(), OpError> {
    let needs = [
        (op::HEAD_MATMUL, cap::OP, 0, 0, "HEAD_MATMUL"),
        (op::CONCAT, cap::OP, 0, 0, "CONCAT"),
        (op::LATENT_ATTENTION, cap::OP, 0, 0, "LATENT_ATTENTION"),
        (op::VIEW, cap::IPARAM, 2, 0, "VIEW's head width"),
        (op::MOE_ROUTE, cap::IPARAM_VALUE, 1, moe_gating::SIGMOID_NORM, "MOE_ROUTE's sigmoid gating"),
        (op::MOE_ROUTE, cap::IPARAM_VALUE, 4, moe_group::TOP2_SUM, "MOE_ROUTE's expert groups"),
    ];
    for (code, what, slot, value, name) in needs {
        if !b.supports(code, what, slot, value) {
            return Err(OpError(format!("deepseek2 needs {name}, which this host does not support (update ROCmForge)")));
        }
    }
    Ok(())
}

/// The epsilon of the latent norms (`q_a_layernorm`, `kv_a_layernorm`): DeepSeek's code and
/// transformers build them without `rms_norm_eps`, so they keep `DeepseekV2RMSNorm`'s default
/// 1e-6 (llama.cpp uses `rms_norm_eps`, which is 1e-6 in every released model).
const LATENT_NORM_EPS: f32 = 1e-6;

fn linear(b: &mut Builder, il: usize, t: &str, x: Node) -> Result<Node, OpError> {
    let w = b.weight(&format!("blk.{il}.{t}.weight"))?;
    let bias = b.weight_opt(&format!("blk.{il}.{t}.bias"))?;
    b.matmul(&format!("blk.{il}.{t}"), x, w, bias)
}

/// Multi-head Latent Attention of layer `il` on the normed input -> `[n, n_embd]`.
fn mla(b: &mut Builder, hp: &HParams, il: usize, cur: Node) -> Result<Node, OpError> {
    let name = |t: &str| format!("blk.{il}.{t}");
    let (h, r, dn, dr) = (hp.n_head, hp.r, hp.dn, hp.dr);
    let q = if b.has_tensor(&name("attn_q_a.weight"))? {
        let q = linear(b, il, "attn_q_a", cur)?; // [n, q_lora_rank]
        let q = b.layer_rms_norm(il, "attn_q_a_norm", q, LATENT_NORM_EPS)?; // [n, q_lora_rank]
        linear(b, il, "attn_q_b", q)? // [n, H·(dn+dr)]
    } else {
        linear(b, il, "attn_q", cur)? // [n, H·(dn+dr)]
    };
    let q_nope = b.view_heads(&name("q_nope"), q, dn + dr, 0, dn)?; // [n, H·dn]
    let q_pe = b.view_heads(&name("q_pe"), q, dn + dr, dn, dr)?; // [n, H·dr]
    let q_pe = b.rope(&name("q_pe_rope"), q_pe, None, &hp.rope)?; // [n, H·dr]

    let kv_cmpr_pe = linear(b, il, "attn_kv_a_mqa", cur)?; // [n, r+dr]
    let kv_cmpr = b.view(&name("kv_cmpr"), kv_cmpr_pe, 0, r)?; // [n, r]
    let k_pe = b.view(&name("k_pe"), kv_cmpr_pe, r, dr)?; // [n, dr]
    let k_pe = b.rope(&name("k_pe_rope"), k_pe, None, &RopeOpts { n_head: 1, ..hp.rope.clone() })?; // [n, dr]
    let kv_cmpr = b.layer_rms_norm(il, "attn_kv_a_norm", kv_cmpr, LATENT_NORM_EPS)?; // [n, r]

    let w_kb = b.weight(&name("attn_k_b.weight"))?; // [dn, r, H]
    let q_abs = b.head_matmul(&name("q_nope_absorbed"), q_nope, w_kb)?; // [n, H·r]
    let q_cur = b.concat_heads(&name("Qcur"), q_abs, q_pe, h)?; // [n, H·(r+dr)]
    let k_cur = b.concat_heads(&name("Kcur"), kv_cmpr, k_pe, 1)?; // [n, r+dr]
    let opts = AttnOpts {
        layer: il,
        n_head: h,
        n_head_kv: 1,
        head_dim_k: r + dr,
        head_dim_v: r,
        sliding_window: 0,
        causal: true,
        scale: hp.kq_scale,
        softcap: 0.0,
    };
    let kqv = b.latent_attention(&name("attn"), q_cur, k_cur, &opts)?; // [n, H·r]
    let w_vb = b.weight(&name("attn_v_b.weight"))?; // [r, dv, H]
    let out = b.head_matmul(&name("attn_v_out"), kqv, w_vb)?; // [n, H·dv]
    linear(b, il, "attn_output", out) // [n, n_embd]
}

/// `n` of a stacked expert weight `[n_embd, n, n_expert]`; any other shape is an error naming it.
fn expert_dims(b: &Builder, name: &str, n_embd: usize, n_expert: usize) -> Result<(), OpError> {
    match b.tensor_shape(name)?.as_deref() {
        Some(&[k, _, e]) if k == n_embd && e == n_expert => Ok(()),
        Some(d) => Err(OpError(format!("deepseek2: {name} has dims {d:?}, expected [{n_embd}, n_ff_exp, {n_expert}]"))),
        None => Err(OpError(format!("deepseek2: the model has no tensor '{name}' (routed experts)"))),
    }
}

/// Routed plus shared experts of layer `il` -> `[n, n_embd]`.
fn moe_ffn(b: &mut Builder, hp: &HParams, moe: &Moe, il: usize, cur: Node) -> Result<Node, OpError> {
    let w = |t: &str| format!("blk.{il}.{t}.weight");
    let name = |t: &str| format!("blk.{il}.{t}");
    for t in ["ffn_gate_exps", "ffn_up_exps"] {
        expert_dims(b, &w(t), hp.n_embd, moe.n_expert)?;
    }
    let router = b.weight(&w("ffn_gate_inp"))?; // [n_embd, n_expert]
    let logits = b.matmul(&name("ffn_moe_logits"), cur, router, None)?; // [n, n_expert]
    let bias = b.weight_opt(&format!("blk.{il}.exp_probs_b.bias"))?; // [n_expert]
    let sigmoid = moe.sigmoid.unwrap_or(bias.is_some());
    let gating = match (sigmoid, moe.norm) {
        (false, false) => moe_gating::SOFTMAX,
        (false, true) => moe_gating::SOFTMAX_NORM,
        (true, false) => moe_gating::SIGMOID,
        (true, true) => moe_gating::SIGMOID_NORM,
    };
    let opts = MoeRouteOpts {
        bias,
        n_group: moe.n_group,
        n_group_used: moe.n_group_used,
        group_score: if sigmoid { moe_group::TOP2_SUM } else { moe_group::MAX },
        scale: moe.scale,
    };
    let k = moe.n_expert_used;
    let route = b.moe_route_ex(&name("ffn_moe_route"), logits, k, gating, &opts)?; // [n, 2k]
    let (gate, up, down) = (b.weight(&w("ffn_gate_exps"))?, b.weight(&w("ffn_up_exps"))?, b.weight(&w("ffn_down_exps"))?);
    let act = b.moe_gate_up(&name("ffn_moe_gate_up"), cur, route, gate, up, k, moe_act::SWIGLU)?; // [n, k·n_ff_exp]
    let routed = b.moe_down(&name("ffn_moe_out"), act, route, down, k)?; // [n, n_embd]
    if !b.has_tensor(&w("ffn_gate_shexp"))? {
        return Ok(routed);
    }
    let shexp = b.swiglu_ffn(il, "_shexp", cur)?; // [n, n_embd]
    b.add(&name("ffn_out"), routed, shexp) // [n, n_embd]
}

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    if arch != "deepseek2" {
        return Err(OpError(format!("the deepseek2 plugin does not build architecture '{arch}'")));
    }
    check_host(b)?;
    let hp = HParams::read(b, arch)?;
    let tok_embd = b.weight("token_embd.weight")?;
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]
    for il in 0..hp.n_layer {
        let name = |t: &str| format!("blk.{il}.{t}");
        let cur = b.layer_rms_norm(il, "attn_norm", x, hp.eps)?; // [n, n_embd]
        let mut cur = mla(b, &hp, il, cur)?; // [n, n_embd]
        let mut inp_sa = x;
        if il + 1 == hp.n_layer {
            // Only the rows whose logits are wanted go on through the last layer's FFN.
            cur = b.output_rows(&name("attn_out_rows"), cur)?; // [m, n_embd]
            inp_sa = b.output_rows(&name("inp_out_rows"), inp_sa)?; // [m, n_embd]
        }
        let ffn_inp = b.add(&name("ffn_inp"), cur, inp_sa)?; // [n|m, n_embd]
        let cur = b.layer_rms_norm(il, "ffn_norm", ffn_inp, hp.eps)?; // [n|m, n_embd]
        let out = match &hp.moe {
            Some(moe) if il >= hp.n_dense_lead => moe_ffn(b, &hp, moe, il, cur)?, // [n|m, n_embd]
            _ => b.swiglu_ffn(il, "", cur)?,                                      // [n|m, n_embd]
        };
        x = b.add(&name("l_out"), out, ffn_inp)?; // [n|m, n_embd]
    }
    let out_norm = b.weight("output_norm.weight")?;
    let x = b.rms_norm("result_norm", x, Some(out_norm), hp.eps, 0)?; // [m, n_embd]
    let lm_head = b.weight_opt("output.weight")?.unwrap_or(tok_embd); // tied when absent, as llama.cpp
    let logits = b.matmul("result_output", x, lm_head, None)?; // [m, n_vocab]
    b.output("logits", logits)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (4) Export.
// ---------------------------------------------------------------------------------------------

rocmforge_abi::export_plugin! {
    name: "deepseek2",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}
