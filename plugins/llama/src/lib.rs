//! LLaMA architecture plugin: LLaMA 1/2/3 and models of the same shape (SmolLM2, TinyLlama...).
//!
//! Four sections, as DESIGN.md §3 asks: (1) tensor table, (2) hyperparameters, (3) the graph,
//! (4) the export. The graph follows llama.cpp's `llm_build_llama` and llama2.c's `forward`:
//! pre-norm blocks of RMSNorm → attention (GQA, RoPE) → residual → RMSNorm → SwiGLU FFN → residual.
//!
//! RoPE style: GGUF files store Q/K rows permuted for interleaved ("normal") RoPE, which is what
//! llama.cpp's converter writes; Hugging Face checkpoints store them for rotate-half. We keep the
//! GGUF layout as the internal one (zero-copy for GGUF, the common case) and declare a PERMUTE_Q /
//! PERMUTE_K load transform for HF tensors, so the graph always uses interleaved RoPE.

use rocmforge_abi::{arch, config, tensor, tensor_flags::OPTIONAL, transform, Builder, Heads, Meta, OpError, SelfAttention};

// ---------------------------------------------------------------------------------------------
// (1) Tensor table: GGUF name (internal vocabulary) <- Hugging Face name, flags, load transform.
// ---------------------------------------------------------------------------------------------

static TENSORS: [rocmforge_abi::RfTensorMap; 13] = [
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
    tensor("blk.{il}.ffn_gate.weight", "model.layers.{il}.mlp.gate_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.up_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.down_proj.weight", 0, transform::NONE),
];

/// `config.json` keys -> GGUF metadata keys (`{arch}` = the GGUF architecture name).
/// RoPE (theta, scaling, Llama-3 frequency factors) is translated by the host for every plugin.
static CONFIG: [rocmforge_abi::RfConfigMap; 2] =
    [config("{arch}.attention.key_length", "head_dim"), config("{arch}.attention.value_length", "head_dim")];

static ARCHS: [rocmforge_abi::RfArchClaim; 1] = [arch("llama", "LlamaForCausalLM")];

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

struct HParams {
    n_layer: usize,
    eps: f32,
    attn: SelfAttention,
}

impl HParams {
    fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let heads = Heads::read(m, arch)?;
        Ok(HParams {
            n_layer: m.meta_usize(&format!("{arch}.block_count"))?,
            eps: m.meta_f32_or(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5)?,
            attn: heads.self_attention(heads.rope(m, arch, false)?),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graph. Shapes: n = tokens in the batch, m = rows whose logits are wanted.
// ---------------------------------------------------------------------------------------------

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    let mut hp = HParams::read(b, arch)?;
    let tok_embd = b.weight("token_embd.weight")?;
    hp.attn.rope_freqs = b.weight_opt("rope_freqs.weight")?; // Llama-3 frequency factors
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]

    for il in 0..hp.n_layer {
        let cur = b.layer_rms_norm(il, "attn_norm", x, hp.eps)?; // [n, n_embd]
        let attn_out = b.self_attention(il, cur, &hp.attn)?; // [n, n_embd]
        let ffn_inp = b.add(&format!("blk.{il}.ffn_inp"), attn_out, x)?; // [n, n_embd]

        let cur = b.layer_rms_norm(il, "ffn_norm", ffn_inp, hp.eps)?; // [n, n_embd]
        let down = b.swiglu_ffn(il, "", cur)?; // [n, n_embd]
        x = b.add(&format!("blk.{il}.l_out"), down, ffn_inp)?; // [n, n_embd]
    }
    // Tied embeddings: without output.weight the token embedding doubles as the LM head.
    b.rms_output_head(x, tok_embd, hp.eps)?; // [m, n_vocab]
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (4) Export.
// ---------------------------------------------------------------------------------------------

rocmforge_abi::export_plugin! {
    name: "llama",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}
