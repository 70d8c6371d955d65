//! Qwen architecture plugin: Qwen2 / Qwen2.5 (GGUF `qwen2`, HF `Qwen2ForCausalLM`) and dense Qwen3
//! (GGUF `qwen3`, HF `Qwen3ForCausalLM`).
//!
//! Four sections, as DESIGN.md §3 asks: (1) tensor table, (2) hyperparameters, (3) the graph,
//! (4) the export. The graph follows llama.cpp's `llama_model_qwen2::graph` / `llama_model_qwen3::graph`:
//! the LLaMA block (pre-RMSNorm, GQA attention, SwiGLU FFN) with these differences:
//! - RoPE is NeoX style (rotate halves). llama.cpp's converter does not permute Qwen's Q/K rows,
//!   so GGUF and HF tensors share one layout and no PERMUTE_Q/PERMUTE_K transform is declared.
//! - Qwen2 has biases on the Q/K/V projections (optional tensors: used when present).
//! - Qwen3 RMS-normalizes every head of Q and K (`attn_q_norm`/`attn_k_norm`, one weight of
//!   head_dim shared by all heads) before RoPE; these tensors are required for `qwen3`.
//! - Without `output.weight` the token embedding doubles as the LM head (tied embeddings).
//!
//! Mixture-of-experts variants (GGUF `qwen2moe` / `qwen3moe`, HF `Qwen2MoeForCausalLM` /
//! `Qwen3MoeForCausalLM`; transformers' `Qwen2MoeSparseMoeBlock`, llama.cpp's `build_moe_ffn`):
//! the FFN is a router (`ffn_gate_inp`), softmax, top-k (`expert_used_count`) experts, their k
//! weights renormalised when `expert_weights_norm` (HF `norm_topk_prob`; llama.cpp's defaults
//! when a GGUF file omits it: false for qwen2moe, true for qwen3moe), through the graph's
//! MOE_ROUTE / MOE_GATE_UP / MOE_DOWN ops. Qwen2-MoE adds a shared expert, a dense SwiGLU FFN
//! scaled per token by `sigmoid(x · ffn_gate_inp_shexp)`, expressed with ordinary ops.

use rocmforge_abi::{
    arch, config, moe_act, moe_gating, tensor, tensor_flags::OPTIONAL, transform, Builder, Heads, Meta, Node, OpError, SelfAttention,
};

// ---------------------------------------------------------------------------------------------
// (1) Tensor table: GGUF name (internal vocabulary) <- Hugging Face name, flags, load transform.
// ---------------------------------------------------------------------------------------------

static TENSORS: [rocmforge_abi::RfTensorMap; 27] = [
    tensor("token_embd.weight", "model.embed_tokens.weight", 0, transform::NONE),
    tensor("output_norm.weight", "model.norm.weight", 0, transform::NONE),
    tensor("output.weight", "lm_head.weight", OPTIONAL, transform::NONE),
    tensor("output.bias", "lm_head.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_norm.weight", "model.layers.{il}.input_layernorm.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_q.weight", "model.layers.{il}.self_attn.q_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_k.weight", "model.layers.{il}.self_attn.k_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_v.weight", "model.layers.{il}.self_attn.v_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_q.bias", "model.layers.{il}.self_attn.q_proj.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_k.bias", "model.layers.{il}.self_attn.k_proj.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_v.bias", "model.layers.{il}.self_attn.v_proj.bias", OPTIONAL, transform::NONE),
    // Required for qwen3 (the graph asks for them with `weight`), absent in qwen2.
    tensor("blk.{il}.attn_q_norm.weight", "model.layers.{il}.self_attn.q_norm.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_k_norm.weight", "model.layers.{il}.self_attn.k_norm.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.o_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_output.bias", "model.layers.{il}.self_attn.o_proj.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", 0, transform::NONE),
    // Dense FFN (required by the dense archs through `weight`; absent in MoE layers).
    tensor("blk.{il}.ffn_gate.weight", "model.layers.{il}.mlp.gate_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.up_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.down_proj.weight", OPTIONAL, transform::NONE),
    // Routed experts: `{xid}` = expert index, stacked by the host into [n_embd, n_ff_exp, n_expert].
    tensor("blk.{il}.ffn_gate_inp.weight", "model.layers.{il}.mlp.gate.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_gate_exps.weight", "model.layers.{il}.mlp.experts.{xid}.gate_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_up_exps.weight", "model.layers.{il}.mlp.experts.{xid}.up_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_down_exps.weight", "model.layers.{il}.mlp.experts.{xid}.down_proj.weight", OPTIONAL, transform::NONE),
    // Qwen2-MoE's shared expert and its per-token gate ([n_embd, 1] from HF, [n_embd] in llama.cpp's GGUF).
    tensor("blk.{il}.ffn_gate_inp_shexp.weight", "model.layers.{il}.mlp.shared_expert_gate.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_gate_shexp.weight", "model.layers.{il}.mlp.shared_expert.gate_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_up_shexp.weight", "model.layers.{il}.mlp.shared_expert.up_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_down_shexp.weight", "model.layers.{il}.mlp.shared_expert.down_proj.weight", OPTIONAL, transform::NONE),
];

/// `config.json` keys -> GGUF metadata keys (`{arch}` = the GGUF architecture name). Qwen2's
/// config has no `head_dim` (n_embd / n_head is used); Qwen3's has one that differs from it.
static CONFIG: [rocmforge_abi::RfConfigMap; 8] = [
    config("{arch}.attention.key_length", "head_dim"),
    config("{arch}.attention.value_length", "head_dim"),
    // MoE: Qwen2-MoE calls the expert count `num_experts`, Qwen3-MoE `num_local_experts` (both
    // spellings exist across transformers versions).
    config("{arch}.expert_count", "num_experts"),
    config("{arch}.expert_count", "num_local_experts"),
    config("{arch}.expert_used_count", "num_experts_per_tok"),
    config("{arch}.expert_feed_forward_length", "moe_intermediate_size"),
    config("{arch}.expert_shared_feed_forward_length", "shared_expert_intermediate_size"),
    config("{arch}.expert_weights_norm", "norm_topk_prob"),
];

static ARCHS: [rocmforge_abi::RfArchClaim; 4] = [
    arch("qwen2", "Qwen2ForCausalLM"),
    arch("qwen3", "Qwen3ForCausalLM"),
    arch("qwen2moe", "Qwen2MoeForCausalLM"),
    arch("qwen3moe", "Qwen3MoeForCausalLM"),
];

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

struct HParams {
    n_layer: usize,
    eps: f32,
    /// NeoX RoPE, QKV biases when present (Qwen2), per-head q/k RMSNorm (Qwen3).
    attn: SelfAttention,
    /// MoE archs: experts used per token (0 = dense FFN) and whether their weights are renormalised.
    n_expert_used: usize,
    norm_topk: bool,
}

impl HParams {
    fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let heads = Heads::read(m, arch)?;
        // llama.cpp asserts n_rot == head_dim for Qwen; partial rotary stays possible anyway.
        // Qwen's rope_theta is 1e6; the default only applies to files that omit the key.
        let mut attn = heads.self_attention(heads.rope(m, arch, true)?);
        // Required, as in llama.cpp's load_arch_hparams (no silent default).
        let eps = m.meta_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))?;
        if arch == "qwen3" || arch == "qwen3moe" {
            attn.qk_norm_eps = Some(eps);
        }
        Ok(HParams {
            n_layer: m.meta_usize(&format!("{arch}.block_count"))?,
            eps,
            attn,
            n_expert_used: match arch {
                "qwen2moe" | "qwen3moe" => {
                    let n_expert = m.meta_usize(&format!("{arch}.expert_count"))?;
                    let k = m.meta_usize(&format!("{arch}.expert_used_count"))?;
                    if k == 0 || k > n_expert {
                        return Err(OpError(format!("{arch}: expert_used_count {k} must be in 1..={n_expert} (expert_count)")));
                    }
                    k
                }
                _ => 0,
            },
            norm_topk: m.meta_int_opt(&format!("{arch}.expert_weights_norm"))?.map_or(arch == "qwen3moe", |v| v != 0),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graph. Shapes: n = tokens in the batch, m = rows whose logits are wanted.
// ---------------------------------------------------------------------------------------------

/// Routed experts of layer `il` (plus Qwen2-MoE's gated shared expert) -> `[n, n_embd]`.
fn moe_ffn(b: &mut Builder, hp: &HParams, il: usize, cur: Node) -> Result<Node, OpError> {
    let w = |t: &str| format!("blk.{il}.{t}.weight");
    let name = |t: &str| format!("blk.{il}.{t}");
    let k = hp.n_expert_used;
    let router = b.weight(&w("ffn_gate_inp"))?; // [n_embd, n_expert]
    let logits = b.matmul(&name("ffn_moe_logits"), cur, router, None)?; // [n, n_expert]
    let gating = if hp.norm_topk { moe_gating::SOFTMAX_NORM } else { moe_gating::SOFTMAX };
    let route = b.moe_route(&name("ffn_moe_route"), logits, k, gating)?; // [n, 2k]
    let (gate_exps, up_exps, down_exps) = (b.weight(&w("ffn_gate_exps"))?, b.weight(&w("ffn_up_exps"))?, b.weight(&w("ffn_down_exps"))?);
    let h = b.moe_gate_up(&name("ffn_moe_gate_up"), cur, route, gate_exps, up_exps, k, moe_act::SWIGLU)?; // [n, k*n_ff_exp]
    let moe = b.moe_down(&name("ffn_moe_down"), h, route, down_exps, k)?; // [n, n_embd]
    match b.weight_opt(&w("ffn_gate_inp_shexp"))? {
        None => Ok(moe),
        Some(shexp_gate) => {
            let shexp = b.swiglu_ffn(il, "_shexp", cur)?; // [n, n_embd]
            let g = b.matmul(&name("ffn_shexp_gate"), cur, shexp_gate, None)?; // [n, 1]
            let g = b.sigmoid(&name("ffn_shexp_gate_act"), g)?; // [n, 1]
            let shexp = b.mul(&name("ffn_shexp_gated"), shexp, g)?; // [n, n_embd]
            b.add(&name("ffn_moe_out"), moe, shexp) // [n, n_embd]
        }
    }
}

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    let hp = HParams::read(b, arch)?;
    let tok_embd = b.weight("token_embd.weight")?;
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]

    for il in 0..hp.n_layer {
        let cur = b.layer_rms_norm(il, "attn_norm", x, hp.eps)?; // [n, n_embd]
        let attn_out = b.self_attention(il, cur, &hp.attn)?; // [n, n_embd]
        let ffn_inp = b.add(&format!("blk.{il}.ffn_inp"), attn_out, x)?; // [n, n_embd]

        let cur = b.layer_rms_norm(il, "ffn_norm", ffn_inp, hp.eps)?; // [n, n_embd]
        let down = if hp.n_expert_used == 0 {
            b.swiglu_ffn(il, "", cur)? // [n, n_embd]
        } else {
            moe_ffn(b, &hp, il, cur)? // [n, n_embd]
        };
        x = b.add(&format!("blk.{il}.l_out"), down, ffn_inp)?; // [n, n_embd]
    }
    // Tied embeddings (small Qwen2.5 models): the token embedding doubles as the LM head.
    b.rms_output_head(x, tok_embd, hp.eps)?; // [m, n_vocab]
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (4) Export.
// ---------------------------------------------------------------------------------------------

rocmforge_abi::export_plugin! {
    name: "qwen",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}
