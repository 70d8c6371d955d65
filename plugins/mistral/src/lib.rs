//! Mistral architecture plugin: Mistral 7B (sliding-window attention) and Mixtral (sparse mixture
//! of experts, top-2 of 8 in the released models).
//!
//! Four sections, as DESIGN.md §3 asks: (1) tensor table, (2) hyperparameters, (3) the graph,
//! (4) the export. The block is LLaMA's (pre-norm RMSNorm, GQA attention with RoPE, SwiGLU FFN;
//! llama.cpp `src/models/llama.cpp`, transformers `modeling_mistral.py` / `modeling_mixtral.py`)
//! with two differences:
//! - Mistral: attention sees only the last `sliding_window` positions (transformers masks
//!   `kv_pos <= q_pos - sliding_window`), when the model declares a window;
//! - Mixtral: the FFN is a routed mixture of experts: router logits `x·ffn_gate_inp`, softmax,
//!   top-k (`expert_used_count`), the k weights renormalised to sum 1 (transformers'
//!   `MixtralSparseMoeBlock`; the same as a softmax over the top-k logits), then the weighted sum
//!   of the selected experts' SwiGLU FFNs (the graph's MOE_ROUTE / MOE_GATE_UP / MOE_DOWN ops).
//!
//! Which files are ours: Hugging Face `MistralForCausalLM` and `MixtralForCausalLM`. GGUF files of
//! both say `general.architecture = llama` (llama.cpp's converter writes them as LLaMA), so the
//! choice is made on data in the file, through conditional claims: a `llama` file with
//! `llama.expert_count > 0` (Mixtral) or `llama.attention.sliding_window > 0` (Mistral with its
//! window, as our HF conversion writes it) is served here; every other `llama` file stays with the
//! LLaMA plugin. llama.cpp's converter does not write the window for Mistral 7B v0.1, so such a
//! file runs as LLaMA with full attention, as in llama.cpp.
//!
//! RoPE and Q/K layout as in the LLaMA plugin: GGUF's interleaved layout is the internal one and HF
//! Q/K rows are permuted at load (PERMUTE_Q / PERMUTE_K).

use rocmforge_abi::{
    arch, config, meta_claim, moe_act, moe_gating, tensor, tensor_flags::OPTIONAL, transform, Builder, Heads, Meta, Node, OpError,
    SelfAttention,
};

// ---------------------------------------------------------------------------------------------
// (1) Tensor table: GGUF name (internal vocabulary) <- Hugging Face name, flags, load transform.
// `{xid}` = expert index: the host stacks experts into GGUF's 3-D `*_exps` tensors.
// ---------------------------------------------------------------------------------------------

static TENSORS: [rocmforge_abi::RfTensorMap; 17] = [
    tensor("token_embd.weight", "model.embed_tokens.weight", 0, transform::NONE),
    tensor("output_norm.weight", "model.norm.weight", 0, transform::NONE),
    tensor("output.weight", "lm_head.weight", OPTIONAL, transform::NONE),
    tensor("rope_freqs.weight", "", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_norm.weight", "model.layers.{il}.input_layernorm.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_q.weight", "model.layers.{il}.self_attn.q_proj.weight", 0, transform::PERMUTE_Q),
    tensor("blk.{il}.attn_k.weight", "model.layers.{il}.self_attn.k_proj.weight", 0, transform::PERMUTE_K),
    tensor("blk.{il}.attn_v.weight", "model.layers.{il}.self_attn.v_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.o_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", 0, transform::NONE),
    // Dense FFN (Mistral).
    tensor("blk.{il}.ffn_gate.weight", "model.layers.{il}.mlp.gate_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.up_proj.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.down_proj.weight", OPTIONAL, transform::NONE),
    // Routed experts (Mixtral): router [n_embd, n_expert]; w1 = gate, w3 = up, w2 = down.
    tensor("blk.{il}.ffn_gate_inp.weight", "model.layers.{il}.block_sparse_moe.gate.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_gate_exps.weight", "model.layers.{il}.block_sparse_moe.experts.{xid}.w1.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_up_exps.weight", "model.layers.{il}.block_sparse_moe.experts.{xid}.w3.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_down_exps.weight", "model.layers.{il}.block_sparse_moe.experts.{xid}.w2.weight", OPTIONAL, transform::NONE),
];

/// `config.json` keys -> GGUF metadata keys (`{arch}` = the GGUF architecture name). RoPE is
/// translated by the host (host/runtime/src/hf_rope.rs). A JSON null
/// (Mixtral's `sliding_window`) writes nothing.
static CONFIG: [rocmforge_abi::RfConfigMap; 5] = [
    config("{arch}.attention.key_length", "head_dim"),
    config("{arch}.attention.value_length", "head_dim"),
    config("{arch}.attention.sliding_window", "sliding_window"),
    config("{arch}.expert_count", "num_local_experts"),
    config("{arch}.expert_used_count", "num_experts_per_tok"),
];

static ARCHS: [rocmforge_abi::RfArchClaim; 2] = [arch("llama", "MistralForCausalLM"), arch("llama", "MixtralForCausalLM")];

/// GGUF `llama` files are ours only when one of these keys is set (see the module header).
static META_CLAIMS: [rocmforge_abi::RfMetaClaim; 2] =
    [meta_claim("llama", "{arch}.expert_count"), meta_claim("llama", "{arch}.attention.sliding_window")];

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

struct HParams {
    n_layer: usize,
    eps: f32,
    /// Sliding-window attention when `attention.sliding_window` is set (Mistral 7B v0.1).
    attn: SelfAttention,
    /// 0 = dense FFN.
    n_expert: usize,
    n_expert_used: usize,
}

impl HParams {
    fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let key = |k: &str| format!("{arch}.{k}");
        let heads = Heads::read(m, arch)?;
        let mut attn = heads.self_attention(heads.rope(m, arch, false)?);
        attn.sliding_window = m.meta_usize_or(&key("attention.sliding_window"), 0)?;
        let n_expert = m.meta_usize_or(&key("expert_count"), 0)?;
        let n_expert_used = m.meta_usize_or(&key("expert_used_count"), 0)?;
        if n_expert > 0 && (n_expert_used == 0 || n_expert_used > n_expert) {
            return Err(OpError(format!("{arch}: expert_used_count {n_expert_used} must be in 1..={n_expert} (expert_count)")));
        }
        Ok(HParams {
            n_layer: m.meta_usize(&key("block_count"))?,
            eps: m.meta_f32_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)?,
            attn,
            n_expert,
            n_expert_used,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graph. Shapes: n = tokens in the batch, m = rows whose logits are wanted.
// ---------------------------------------------------------------------------------------------

/// The FFN of layer `il` on the normed input `cur [n, n_embd]` -> `[n, n_embd]`.
fn ffn(b: &mut Builder, hp: &HParams, il: usize, cur: Node) -> Result<Node, OpError> {
    let w = |t: &str| format!("blk.{il}.{t}.weight");
    let name = |t: &str| format!("blk.{il}.{t}");
    if hp.n_expert == 0 {
        return b.swiglu_ffn(il, "", cur); // [n, n_embd]
    }
    let router = b.weight(&w("ffn_gate_inp"))?; // [n_embd, n_expert]
    let logits = b.matmul(&name("ffn_moe_logits"), cur, router, None)?; // [n, n_expert]
    let k = hp.n_expert_used;
    let route = b.moe_route(&name("ffn_moe_route"), logits, k, moe_gating::SOFTMAX_NORM)?; // [n, 2k]
    let (gate_exps, up_exps, down_exps) = (b.weight(&w("ffn_gate_exps"))?, b.weight(&w("ffn_up_exps"))?, b.weight(&w("ffn_down_exps"))?);
    let h = b.moe_gate_up(&name("ffn_moe_gate_up"), cur, route, gate_exps, up_exps, k, moe_act::SWIGLU)?; // [n, k*n_ff]
    b.moe_down(&name("ffn_moe_down"), h, route, down_exps, k) // [n, n_embd]
}

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    let mut hp = HParams::read(b, arch)?;
    let tok_embd = b.weight("token_embd.weight")?;
    hp.attn.rope_freqs = b.weight_opt("rope_freqs.weight")?;
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]

    for il in 0..hp.n_layer {
        let cur = b.layer_rms_norm(il, "attn_norm", x, hp.eps)?; // [n, n_embd]
        let attn_out = b.self_attention(il, cur, &hp.attn)?; // [n, n_embd]
        let ffn_inp = b.add(&format!("blk.{il}.ffn_inp"), attn_out, x)?; // [n, n_embd]

        let cur = b.layer_rms_norm(il, "ffn_norm", ffn_inp, hp.eps)?;
        let out = ffn(b, &hp, il, cur)?; // [n, n_embd]
        x = b.add(&format!("blk.{il}.l_out"), out, ffn_inp)?; // [n, n_embd]
    }
    // Tied embeddings: without output.weight the token embedding doubles as the LM head.
    b.rms_output_head(x, tok_embd, hp.eps)?; // [m, n_vocab]
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (4) Export.
// ---------------------------------------------------------------------------------------------

rocmforge_abi::export_plugin! {
    name: "mistral",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
    meta_claims: META_CLAIMS,
}
