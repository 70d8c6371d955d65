//! An example ROCmForge architecture plugin in Rust that claims `llama` (GGUF) and
//! `LlamaForCausalLM` (Hugging Face), the built-in llama plugin's architectures, to show plugin
//! precedence: installed ahead of the built-in plugin (its directory in `ROCMFORGE_PLUGINS`), it
//! serves LLaMA models; elsewhere on the search path it loses, and `rocmforge plugins` lists the
//! conflict either way. The graph is the LLaMA 2 forward pass, written op by op so it reads as a
//! tutorial next to docs/plugins.md (the in-tree plugins use the `blocks` helpers instead).
//!
//! Four sections: (1) tables, (2) hyperparameters, (3) the graph, (4) the export.

use rocmforge_abi::builder::{AttnOpts, RopeOpts};
use rocmforge_abi::{arch, config, tensor, tensor_flags::OPTIONAL, transform, Builder, Meta, Node, OpError};

// ---- (1) Tables: what the plugin claims, and how HF names map onto GGUF names ----------------

static ARCHS: [rocmforge_abi::RfArchClaim; 1] = [arch("llama", "LlamaForCausalLM")];

static TENSORS: [rocmforge_abi::RfTensorMap; 12] = [
    tensor("token_embd.weight", "model.embed_tokens.weight", 0, transform::NONE),
    tensor("output_norm.weight", "model.norm.weight", 0, transform::NONE),
    tensor("output.weight", "lm_head.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_norm.weight", "model.layers.{il}.input_layernorm.weight", 0, transform::NONE),
    // HF stores Q/K rows for rotate-half RoPE; the host permutes them at load to GGUF's layout.
    tensor("blk.{il}.attn_q.weight", "model.layers.{il}.self_attn.q_proj.weight", 0, transform::PERMUTE_Q),
    tensor("blk.{il}.attn_k.weight", "model.layers.{il}.self_attn.k_proj.weight", 0, transform::PERMUTE_K),
    tensor("blk.{il}.attn_v.weight", "model.layers.{il}.self_attn.v_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.o_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_gate.weight", "model.layers.{il}.mlp.gate_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.up_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.down_proj.weight", 0, transform::NONE),
];

/// config.json keys the host does not translate for every plugin already (it does the common
/// LLaMA ones: layers, sizes, heads, eps, RoPE).
static CONFIG: [rocmforge_abi::RfConfigMap; 1] = [config("{arch}.attention.key_length", "head_dim")];

// ---- (2) Hyperparameters, read once; a missing key is an error naming it ----------------------

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
        let k = |s: &str| format!("{arch}.{s}");
        let n_embd = m.meta_usize(&k("embedding_length"))?;
        let n_head = m.meta_usize(&k("attention.head_count"))?;
        if n_head == 0 {
            return Err(OpError(format!("{} is 0", k("attention.head_count"))));
        }
        let head_dim = m.meta_usize_or(&k("attention.key_length"), n_embd / n_head)?;
        let n_rot = m.meta_usize_or(&k("rope.dimension_count"), head_dim)?;
        let freq_base = m.meta_f32_or(&k("rope.freq_base"), 10000.0)?;
        Ok(HParams {
            n_layer: m.meta_usize(&k("block_count"))?,
            n_head,
            n_head_kv: m.meta_usize_or(&k("attention.head_count_kv"), n_head)?,
            head_dim,
            eps: m.meta_f32_or(&k("attention.layer_norm_rms_epsilon"), 1e-5)?,
            // Interleaved RoPE (neox = false): GGUF's Q/K layout. Scaling from metadata.
            rope: RopeOpts::new(n_head, head_dim, n_rot, false, freq_base).with_scaling_from(m, arch)?,
        })
    }
}

// ---- (3) The graph. n = tokens in the batch, m = rows whose logits are wanted -----------------

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    let hp = HParams::read(b, arch)?;
    // Anything newer than the first revision of ABI v1 (a new op, slot or enumerated value) is
    // asked for first, e.g. `b.supports(op::MOE_ROUTE, cap::IPARAM_VALUE, 1, NEW_GATING)`: an
    // older host answers false, and the plugin falls back or fails with a clear message instead
    // of having an op refused halfway. This graph only uses first-revision ops.
    let (nh, nkv, hd) = (hp.n_head, hp.n_head_kv, hp.head_dim);
    let rope_k = RopeOpts { n_head: nkv, ..hp.rope.clone() };
    let w = |b: &mut Builder, il: usize, t: &str| b.weight(&format!("blk.{il}.{t}.weight"));
    let n = |il: usize, s: &str| format!("blk.{il}.{s}");

    let tok_embd = b.weight("token_embd.weight")?; // [n_embd, n_vocab]
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]
    for il in 0..hp.n_layer {
        let norm_w = w(b, il, "attn_norm")?;
        let h = b.rms_norm(&n(il, "attn_norm"), x, Some(norm_w), hp.eps, 0)?; // [n, n_embd]
        let wq = w(b, il, "attn_q")?;
        let q = b.matmul(&n(il, "attn_q"), h, wq, None)?; // [n, nh*hd]
        let wk = w(b, il, "attn_k")?;
        let k = b.matmul(&n(il, "attn_k"), h, wk, None)?; // [n, nkv*hd]
        let wv = w(b, il, "attn_v")?;
        let v = b.matmul(&n(il, "attn_v"), h, wv, None)?; // [n, nkv*hd]
        let q = b.rope(&n(il, "attn_q_rope"), q, None, &hp.rope)?;
        let k = b.rope(&n(il, "attn_k_rope"), k, None, &rope_k)?;
        let opts = AttnOpts {
            layer: il,
            n_head: nh,
            n_head_kv: nkv,
            head_dim_k: hd,
            head_dim_v: hd,
            sliding_window: 0,
            causal: true,
            scale: 0.0,   // 1/sqrt(head_dim)
            softcap: 0.0, // none
        };
        let a = b.attention(&n(il, "attn"), q, k, v, &opts)?; // [n, nh*hd]
        let wo = w(b, il, "attn_output")?;
        let a = b.matmul(&n(il, "attn_output"), a, wo, None)?; // [n, n_embd]
        let ffn_inp = b.add(&n(il, "ffn_inp"), a, x)?;

        let norm_w = w(b, il, "ffn_norm")?;
        let h = b.rms_norm(&n(il, "ffn_norm"), ffn_inp, Some(norm_w), hp.eps, 0)?;
        let down = ffn(b, il, h)?; // [n, n_embd]
        x = b.add(&n(il, "l_out"), down, ffn_inp)?;
    }
    let x = b.output_rows("out_rows", x)?; // [m, n_embd]
    let norm_w = b.weight("output_norm.weight")?;
    let x = b.rms_norm("result_norm", x, Some(norm_w), hp.eps, 0)?;
    // Tied embeddings: without output.weight the token embedding is the LM head.
    let lm_head = b.weight_opt("output.weight")?.unwrap_or(tok_embd);
    let logits = b.matmul("result_output", x, lm_head, None)?; // [m, n_vocab]
    b.output("logits", logits)?;
    Ok(())
}

/// SwiGLU feed-forward: `down(silu(gate(h)) * up(h))`.
fn ffn(b: &mut Builder, il: usize, h: Node) -> Result<Node, OpError> {
    let (wg, wu, wd) = (
        b.weight(&format!("blk.{il}.ffn_gate.weight"))?,
        b.weight(&format!("blk.{il}.ffn_up.weight"))?,
        b.weight(&format!("blk.{il}.ffn_down.weight"))?,
    );
    let gate = b.matmul(&format!("blk.{il}.ffn_gate"), h, wg, None)?; // [n, n_ff]
    let up = b.matmul(&format!("blk.{il}.ffn_up"), h, wu, None)?; // [n, n_ff]
    let act = b.swiglu(&format!("blk.{il}.ffn_act"), gate, up)?;
    b.matmul(&format!("blk.{il}.ffn_down"), act, wd, None)
}

// ---- (4) The export: one symbol, rocmforge_plugin_v1, returning the static table --------------

rocmforge_abi::export_plugin! {
    name: "example_rust",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}
