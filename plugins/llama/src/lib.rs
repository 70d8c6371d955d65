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

use rocmforge_abi::builder::{AttnOpts, RopeOpts};
use rocmforge_abi::{arch, config, tensor, tensor_flags::OPTIONAL, transform, Builder, Meta, Node, OpError};

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
static CONFIG: [rocmforge_abi::RfConfigMap; 2] = [
    config("{arch}.attention.key_length", "head_dim"),
    config("{arch}.attention.value_length", "head_dim"),
];

static ARCHS: [rocmforge_abi::RfArchClaim; 1] = [arch("llama", "LlamaForCausalLM")];

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

struct HParams {
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    eps: f32,
    rope: RopeOpts,
}

impl HParams {
    fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let n_embd = m.meta_usize(&format!("{arch}.embedding_length"))?;
        let n_head = m.meta_usize(&format!("{arch}.attention.head_count"))?;
        if n_head == 0 || n_embd % n_head != 0 {
            return Err(OpError(format!("{arch}: embedding_length {n_embd} is not a multiple of head_count {n_head}")));
        }
        let n_head_kv = m.meta_usize_or(&format!("{arch}.attention.head_count_kv"), n_head)?;
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(OpError(format!("{arch}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")));
        }
        let head_dim = m.meta_usize_or(&format!("{arch}.attention.key_length"), n_embd / n_head)?;
        let n_rot = m.meta_usize_or(&format!("{arch}.rope.dimension_count"), head_dim)?;
        let freq_base = m.meta_f32_or(&format!("{arch}.rope.freq_base"), 10000.0)?;
        let rope = RopeOpts::new(n_head, head_dim, n_rot, false, freq_base).with_scaling_from(m, arch)?;
        Ok(HParams {
            n_layer: m.meta_usize(&format!("{arch}.block_count"))?,
            n_head,
            n_head_kv,
            head_dim,
            eps: m.meta_f32_or(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5)?,
            rope,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graph. Shapes: n = tokens in the batch, m = rows whose logits are wanted.
// ---------------------------------------------------------------------------------------------

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    let hp = HParams::read(b, arch)?;
    let tok_embd = b.weight("token_embd.weight")?;
    let rope_freqs = b.weight_opt("rope_freqs.weight")?;
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]

    for il in 0..hp.n_layer {
        let w = |t: &str| format!("blk.{il}.{t}.weight");
        let bias = |b: &mut Builder, t: &str| b.weight_opt(&format!("blk.{il}.{t}.bias"));
        let attn_norm = b.weight(&w("attn_norm"))?;
        let cur = b.rms_norm(&format!("blk.{il}.attn_norm"), x, Some(attn_norm), hp.eps, 0)?; // [n, n_embd]

        let (wq, wk, wv) = (b.weight(&w("attn_q"))?, b.weight(&w("attn_k"))?, b.weight(&w("attn_v"))?);
        let (bq, bk, bv) = (bias(b, "attn_q")?, bias(b, "attn_k")?, bias(b, "attn_v")?);
        let q = b.matmul(&format!("blk.{il}.attn_q"), cur, wq, bq)?; // [n, n_head*head_dim]
        let k = b.matmul(&format!("blk.{il}.attn_k"), cur, wk, bk)?; // [n, n_head_kv*head_dim]
        let v = b.matmul(&format!("blk.{il}.attn_v"), cur, wv, bv)?; // [n, n_head_kv*head_dim]
        let q = b.rope(&format!("blk.{il}.attn_q_rope"), q, rope_freqs, &hp.rope)?;
        let rope_k = RopeOpts { n_head: hp.n_head_kv, ..hp.rope.clone() };
        let k = b.rope(&format!("blk.{il}.attn_k_rope"), k, rope_freqs, &rope_k)?;
        let attn = b.attention(
            &format!("blk.{il}.attn"),
            q,
            k,
            v,
            &AttnOpts {
                layer: il,
                n_head: hp.n_head,
                n_head_kv: hp.n_head_kv,
                head_dim_k: hp.head_dim,
                head_dim_v: hp.head_dim,
                sliding_window: 0,
                causal: true,
                scale: 0.0,
                softcap: 0.0,
            },
        )?; // [n, n_head*head_dim]
        let wo = b.weight(&w("attn_output"))?;
        let bo = bias(b, "attn_output")?;
        let attn_out = b.matmul(&format!("blk.{il}.attn_output"), attn, wo, bo)?; // [n, n_embd]
        let ffn_inp = b.add(&format!("blk.{il}.ffn_inp"), attn_out, x)?; // [n, n_embd]

        let ffn_norm = b.weight(&w("ffn_norm"))?;
        let cur = b.rms_norm(&format!("blk.{il}.ffn_norm"), ffn_inp, Some(ffn_norm), hp.eps, 0)?;
        let (w_gate, w_up, w_down) = (b.weight(&w("ffn_gate"))?, b.weight(&w("ffn_up"))?, b.weight(&w("ffn_down"))?);
        let gate = b.matmul(&format!("blk.{il}.ffn_gate"), cur, w_gate, None)?; // [n, n_ff]
        let up = b.matmul(&format!("blk.{il}.ffn_up"), cur, w_up, None)?; // [n, n_ff]
        let act = b.swiglu(&format!("blk.{il}.ffn_act"), gate, up)?; // [n, n_ff]
        let down = b.matmul(&format!("blk.{il}.ffn_down"), act, w_down, None)?; // [n, n_embd]
        x = b.add(&format!("blk.{il}.l_out"), down, ffn_inp)?; // [n, n_embd]
    }

    let x = b.output_rows("out_rows", x)?; // [m, n_embd]
    let out_norm = b.weight("output_norm.weight")?;
    let x = b.rms_norm("result_norm", x, Some(out_norm), hp.eps, 0)?; // [m, n_embd]
                                                                      // Tied embeddings: without output.weight the token embedding doubles as the LM head.
    let lm_head: Node = match b.weight_opt("output.weight")? {
        Some(w) => w,
        None => tok_embd,
    };
    let logits = b.matmul("result_output", x, lm_head, None)?; // [m, n_vocab]
    b.output("logits", logits)?;
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
