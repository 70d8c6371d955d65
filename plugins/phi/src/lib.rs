//! Phi architecture plugin: Microsoft Phi-3 / Phi-3.5 / Phi-4-mini (GGUF `phi3`) and Phi-2 (`phi2`).
//!
//! Four sections, as DESIGN.md §3 asks: (1) tensor table, (2) hyperparameters, (3) the graphs,
//! (4) the export. The graphs follow llama.cpp's `src/models/phi3.cpp` and `phi2.cpp`:
//!
//! ```text
//!   Phi-3 (sequential, RMSNorm):              Phi-2 (parallel, LayerNorm with bias):
//!   x ─ rms_norm ─ attn_qkv ─ rope ─ attn ─┐   x ─ layer_norm ─┬─ q,k,v ─ rope ─ attn ─ dense ─┐
//!   └──────────────────────────────────── + │                  └─ fc1 ─ gelu ─ fc2 ────────── +
//!   ffn_inp ─ rms_norm ─ ffn_up(gate|up) ─ swiglu ─ ffn_down ─ +   x ──────────────────────── +
//! ```
//!
//! Fused weights stay fused: Phi-3's `attn_qkv` rows are `[q | k | v]` and its `ffn_up` rows are
//! `[gate | up]`, in GGUF as in HF (`qkv_proj`, `gate_up_proj`); the graph splits them with `view`.
//! Both use NeoX (rotate-half) RoPE, so HF Q/K rows need no permutation; Phi-2 rotates only the first
//! `n_rot = head_dim * partial_rotary_factor` dims of each head.
//!
//! LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini): per-pair frequency divisors `rope_factors_short` /
//! `rope_factors_long` (HF: `rope_scaling` / `rope_parameters` `short_factor` / `long_factor`, read
//! through the host's `config:` tensor entries) and a magnitude scale `attn_factor`
//! = sqrt(1 + ln(s) / ln(n_ctx_orig)), s = n_ctx_train / n_ctx_orig, on both cos and sin.
//! Which factors: transformers switches per forward call (long when the sequence reaches past
//! `original_max_position_embeddings`); llama.cpp picks once per context (long when the context
//! exceeds it). The graph is built once per model, before any context size is known, so we take
//! llama.cpp's rule with its default context, the training context: long iff
//! `context_length > original_context_length`. This equals transformers for every sequence longer
//! than the original context (the `phi3-longrope` fixture) and differs for shorter ones.
//! Phi-3's sliding window is ignored, as llama.cpp does.

use rocmforge_abi::builder::{AttnOpts, RopeOpts};
use rocmforge_abi::{arch, config, tensor, tensor_flags::OPTIONAL, transform::NONE, Builder, Heads, Meta, Node, OpError};

// ---------------------------------------------------------------------------------------------
// (1) Tensor table: GGUF name (internal vocabulary) <- Hugging Face name, flags, load transform.
//     Both architectures share one table; an entry whose HF tensor is absent is simply unused.
// ---------------------------------------------------------------------------------------------

static TENSORS: [rocmforge_abi::RfTensorMap; 31] = [
    tensor("token_embd.weight", "model.embed_tokens.weight", 0, NONE),
    tensor("output_norm.weight", "model.norm.weight", OPTIONAL, NONE), // phi3
    tensor("output_norm.weight", "model.final_layernorm.weight", OPTIONAL, NONE), // phi2
    tensor("output_norm.bias", "model.final_layernorm.bias", OPTIONAL, NONE),
    tensor("output.weight", "lm_head.weight", OPTIONAL, NONE),
    tensor("output.bias", "lm_head.bias", OPTIONAL, NONE),
    // LongRoPE factors from config.json arrays (transformers 5 name first; first found wins).
    tensor("rope_factors_long.weight", "config:rope_parameters.long_factor", OPTIONAL, NONE),
    tensor("rope_factors_long.weight", "config:rope_scaling.long_factor", OPTIONAL, NONE),
    tensor("rope_factors_short.weight", "config:rope_parameters.short_factor", OPTIONAL, NONE),
    tensor("rope_factors_short.weight", "config:rope_scaling.short_factor", OPTIONAL, NONE),
    tensor("blk.{il}.attn_norm.weight", "model.layers.{il}.input_layernorm.weight", 0, NONE),
    tensor("blk.{il}.attn_norm.bias", "model.layers.{il}.input_layernorm.bias", OPTIONAL, NONE),
    // Phi-3: fused QKV and gate|up.
    tensor("blk.{il}.attn_qkv.weight", "model.layers.{il}.self_attn.qkv_proj.weight", OPTIONAL, NONE),
    tensor("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.o_proj.weight", OPTIONAL, NONE),
    tensor("blk.{il}.ffn_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", OPTIONAL, NONE),
    tensor("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.gate_up_proj.weight", OPTIONAL, NONE),
    tensor("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.down_proj.weight", OPTIONAL, NONE),
    // Phi-2: separate Q/K/V, `dense` output, fc1/fc2, biases everywhere.
    tensor("blk.{il}.attn_q.weight", "model.layers.{il}.self_attn.q_proj.weight", OPTIONAL, NONE),
    tensor("blk.{il}.attn_q.bias", "model.layers.{il}.self_attn.q_proj.bias", OPTIONAL, NONE),
    tensor("blk.{il}.attn_k.weight", "model.layers.{il}.self_attn.k_proj.weight", OPTIONAL, NONE),
    tensor("blk.{il}.attn_k.bias", "model.layers.{il}.self_attn.k_proj.bias", OPTIONAL, NONE),
    tensor("blk.{il}.attn_v.weight", "model.layers.{il}.self_attn.v_proj.weight", OPTIONAL, NONE),
    tensor("blk.{il}.attn_v.bias", "model.layers.{il}.self_attn.v_proj.bias", OPTIONAL, NONE),
    tensor("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.dense.weight", OPTIONAL, NONE),
    tensor("blk.{il}.attn_output.bias", "model.layers.{il}.self_attn.dense.bias", OPTIONAL, NONE),
    tensor("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.fc1.weight", OPTIONAL, NONE),
    tensor("blk.{il}.ffn_up.bias", "model.layers.{il}.mlp.fc1.bias", OPTIONAL, NONE),
    tensor("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.fc2.weight", OPTIONAL, NONE),
    tensor("blk.{il}.ffn_down.bias", "model.layers.{il}.mlp.fc2.bias", OPTIONAL, NONE),
    // Older Phi-2 GGUFs (converted from the original `Wqkv` checkpoint) carry a fused QKV with bias.
    tensor("blk.{il}.attn_qkv.bias", "", OPTIONAL, NONE),
    tensor("blk.{il}.attn_output.bias", "model.layers.{il}.self_attn.o_proj.bias", OPTIONAL, NONE),
];

/// `config.json` keys -> GGUF metadata keys (`{arch}` = the GGUF architecture name). The first
/// entry found wins; RoPE theta and scaling (LongRoPE's type, original context, attention factor)
/// are translated by the host (host/runtime/src/hf_rope.rs).
/// `{arch}.rope.partial_rotary_factor` is ours (GGUF stores `rope.dimension_count` instead).
static CONFIG: [rocmforge_abi::RfConfigMap; 3] = [
    config("{arch}.attention.layer_norm_epsilon", "layer_norm_eps"),
    config("{arch}.rope.partial_rotary_factor", "partial_rotary_factor"),
    config("{arch}.rope.partial_rotary_factor", "rope_parameters.partial_rotary_factor"),
];

static ARCHS: [rocmforge_abi::RfArchClaim; 2] = [arch("phi3", "Phi3ForCausalLM"), arch("phi2", "PhiForCausalLM")];

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

struct HParams {
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    /// RMSNorm epsilon (Phi-3) or LayerNorm epsilon (Phi-2).
    eps: f32,
    rope: RopeOpts,
    /// LongRoPE factors to use (`rope_factors_long` / `_short`), if the model has them.
    rope_factors: Option<&'static str>,
}

impl HParams {
    fn read(b: &Builder, arch: &str) -> Result<Self, OpError> {
        let key = |k: &str| format!("{arch}.{k}");
        let Heads { n_embd, n_head, n_head_kv, head_dim } = Heads::read(b, arch)?;
        // GGUF: rope.dimension_count; HF: head_dim * partial_rotary_factor (llama.cpp's converter:
        // int(factor * n_embd) / n_head).
        let partial = b.meta_f32_or(&key("rope.partial_rotary_factor"), 1.0)?;
        let n_rot_default = ((partial as f64 * n_embd as f64) as usize) / n_head;
        let n_rot = b.meta_usize_or(&key("rope.dimension_count"), n_rot_default)?;
        let freq_base = b.meta_f32_or(&key("rope.freq_base"), 10000.0)?;
        let mut rope = RopeOpts::new(n_head, head_dim, n_rot, true, freq_base);

        let scaling = b.meta_str_opt(&key("rope.scaling.type"))?.unwrap_or_default();
        if !matches!(scaling.as_str(), "" | "none" | "default" | "longrope" | "su") {
            return Err(OpError(format!("{arch}: unsupported rope scaling type '{scaling}' (supported: none, longrope)")));
        }
        let n_ctx_train = b.meta_usize_or(&key("context_length"), 0)?;
        rope.n_ctx_orig = b.meta_usize_or(&key("rope.scaling.original_context_length"), n_ctx_train)?;
        let rope_factors = if b.has_tensor("rope_factors_long.weight")? && b.has_tensor("rope_factors_short.weight")? {
            // llama.cpp's rule with its default context (= the training context); see the header.
            Some(if n_ctx_train > rope.n_ctx_orig { "rope_factors_long.weight" } else { "rope_factors_short.weight" })
        } else {
            None
        };
        if rope_factors.is_some() {
            // GGUF stores the converter's value; from HF, compute it as the converter does.
            rope.attn_factor = match b.meta_float_opt(&key("rope.scaling.attn_factor"))? {
                Some(f) => f as f32,
                None => longrope_attn_factor(n_ctx_train, rope.n_ctx_orig),
            };
        }
        let eps_key = if arch == "phi2" { "attention.layer_norm_epsilon" } else { "attention.layer_norm_rms_epsilon" };
        Ok(HParams {
            n_layer: b.meta_usize(&key("block_count"))?,
            n_head,
            n_head_kv,
            head_dim,
            eps: b.meta_f32_or(&key(eps_key), 1e-5)?,
            rope,
            rope_factors,
        })
    }

    fn attn_opts(&self, il: usize) -> AttnOpts {
        AttnOpts {
            layer: il,
            n_head: self.n_head,
            n_head_kv: self.n_head_kv,
            head_dim_k: self.head_dim,
            head_dim_v: self.head_dim,
            sliding_window: 0,
            causal: true,
            scale: 0.0, // 1/sqrt(head_dim), as llama.cpp's pre-scaled Q with kq_scale 1
            softcap: 0.0,
        }
    }
}

/// LongRoPE magnitude scale: sqrt(1 + ln(s) / ln(n_ctx_orig)) with s = n_ctx_train / n_ctx_orig,
/// 1 when the model is not extended (llama.cpp's converter, transformers' longrope init).
fn longrope_attn_factor(n_ctx_train: usize, n_ctx_orig: usize) -> f32 {
    if n_ctx_orig <= 1 {
        return 1.0;
    }
    let s = n_ctx_train as f64 / n_ctx_orig as f64;
    if s <= 1.0 {
        1.0
    } else {
        (1.0 + s.ln() / (n_ctx_orig as f64).ln()).sqrt() as f32
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graphs. Shapes: n = tokens in the batch, m = rows whose logits are wanted.
// ---------------------------------------------------------------------------------------------

/// Q, K, V of layer `il` from a fused `attn_qkv` (rows `[q | k | v]`) or separate projections,
/// each with its bias when the model has one; Q and K rotated.
fn qkv_rope(b: &mut Builder, hp: &HParams, il: usize, cur: Node, rope_factors: Option<Node>) -> Result<(Node, Node, Node), OpError> {
    let n_q = hp.n_head * hp.head_dim;
    let n_kv = hp.n_head_kv * hp.head_dim;
    let (q, k, v) = if b.has_tensor(&format!("blk.{il}.attn_qkv.weight"))? {
        let w = b.weight(&format!("blk.{il}.attn_qkv.weight"))?;
        let bias = b.weight_opt(&format!("blk.{il}.attn_qkv.bias"))?;
        let qkv = b.matmul(&format!("blk.{il}.attn_qkv"), cur, w, bias)?; // [n, n_q + 2*n_kv]
        (
            b.view(&format!("blk.{il}.Qcur"), qkv, 0, n_q)?,           // [n, n_q]
            b.view(&format!("blk.{il}.Kcur"), qkv, n_q, n_kv)?,        // [n, n_kv]
            b.view(&format!("blk.{il}.Vcur"), qkv, n_q + n_kv, n_kv)?, // [n, n_kv]
        )
    } else {
        let mut proj = |t: &str| -> Result<Node, OpError> {
            let w = b.weight(&format!("blk.{il}.{t}.weight"))?;
            let bias = b.weight_opt(&format!("blk.{il}.{t}.bias"))?;
            b.matmul(&format!("blk.{il}.{t}"), cur, w, bias)
        };
        (proj("attn_q")?, proj("attn_k")?, proj("attn_v")?) // [n, n_q], [n, n_kv], [n, n_kv]
    };
    let q = b.rope(&format!("blk.{il}.Qcur_rope"), q, rope_factors, &hp.rope)?; // [n, n_q]
    let rope_k = RopeOpts { n_head: hp.n_head_kv, ..hp.rope.clone() };
    let k = b.rope(&format!("blk.{il}.Kcur_rope"), k, rope_factors, &rope_k)?; // [n, n_kv]
    Ok((q, k, v))
}

/// LM head: `output.weight` (or the tied token embedding) plus `output.bias` when present.
fn lm_head(b: &mut Builder, x: Node, tok_embd: Node) -> Result<Node, OpError> {
    let w = b.weight_opt("output.weight")?.unwrap_or(tok_embd);
    let bias = b.weight_opt("output.bias")?;
    b.matmul("result_output", x, w, bias) // [m, n_vocab]
}

/// Phi-3: pre-norm RMSNorm blocks, fused QKV, LongRoPE, fused gate|up SwiGLU.
fn build_phi3(b: &mut Builder, hp: &HParams) -> Result<(), OpError> {
    let tok_embd = b.weight("token_embd.weight")?;
    let rope_factors = match hp.rope_factors {
        Some(t) => Some(b.weight(t)?),
        None => None,
    };
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]
    for il in 0..hp.n_layer {
        let w = |t: &str| format!("blk.{il}.{t}.weight");
        let cur = b.layer_rms_norm(il, "attn_norm", x, hp.eps)?; // [n, n_embd]
        let (q, k, v) = qkv_rope(b, hp, il, cur, rope_factors)?;
        let attn = b.attention(&format!("blk.{il}.attn"), q, k, v, &hp.attn_opts(il))?; // [n, n_head*head_dim]
        let wo = b.weight(&w("attn_output"))?;
        let bo = b.weight_opt(&format!("blk.{il}.attn_output.bias"))?;
        let attn_out = b.matmul(&format!("blk.{il}.attn_output"), attn, wo, bo)?; // [n, n_embd]
        let ffn_inp = b.add(&format!("blk.{il}.ffn_inp"), attn_out, x)?; // [n, n_embd]

        let cur = b.layer_rms_norm(il, "ffn_norm", ffn_inp, hp.eps)?; // [n, n_embd]
                                                                      // The weight first: an absent `ffn_up` is then reported as a missing tensor.
        let w_up = b.weight(&w("ffn_up"))?;
        let up_shape = b.tensor_shape(&w("ffn_up"))?.unwrap_or_default();
        let n_ff = match up_shape.as_slice() {
            [_, rows] if rows % 2 == 0 => rows / 2,
            d => return Err(OpError(format!("phi3: {} has dims {d:?}, expected [n_embd, 2*n_ff]", w("ffn_up")))),
        };
        let gate_up = b.matmul(&format!("blk.{il}.ffn_up"), cur, w_up, None)?; // [n, 2*n_ff]
        let gate = b.view(&format!("blk.{il}.ffn_gate"), gate_up, 0, n_ff)?; // [n, n_ff]
        let up = b.view(&format!("blk.{il}.ffn_up_half"), gate_up, n_ff, n_ff)?; // [n, n_ff]
        let act = b.swiglu(&format!("blk.{il}.ffn_act"), gate, up)?; // [n, n_ff]
        let w_down = b.weight(&w("ffn_down"))?;
        let down = b.matmul(&format!("blk.{il}.ffn_down"), act, w_down, None)?; // [n, n_embd]
        x = b.add(&format!("blk.{il}.l_out"), down, ffn_inp)?; // [n, n_embd]
    }
    let x = b.output_rows("out_rows", x)?; // [m, n_embd]
    let out_norm = b.weight("output_norm.weight")?;
    let x = b.rms_norm("result_norm", x, Some(out_norm), hp.eps, 0)?; // [m, n_embd]
    let logits = lm_head(b, x, tok_embd)?; // [m, n_vocab]
    b.output("logits", logits)?;
    Ok(())
}

/// Phi-2: one LayerNorm per block feeding attention and the GELU MLP in parallel; biases everywhere.
fn build_phi2(b: &mut Builder, hp: &HParams) -> Result<(), OpError> {
    let tok_embd = b.weight("token_embd.weight")?;
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]
    for il in 0..hp.n_layer {
        let w = |t: &str| format!("blk.{il}.{t}.weight");
        let bias = |b: &mut Builder, t: &str| b.weight_opt(&format!("blk.{il}.{t}.bias"));
        let (norm_w, norm_b) = (b.weight(&w("attn_norm"))?, bias(b, "attn_norm")?);
        let cur = b.layer_norm(&format!("blk.{il}.attn_norm"), x, Some(norm_w), norm_b, hp.eps)?; // [n, n_embd]

        let (q, k, v) = qkv_rope(b, hp, il, cur, None)?;
        let attn = b.attention(&format!("blk.{il}.attn"), q, k, v, &hp.attn_opts(il))?; // [n, n_head*head_dim]
        let (wo, bo) = (b.weight(&w("attn_output"))?, bias(b, "attn_output")?);
        let attn_out = b.matmul(&format!("blk.{il}.attn_output"), attn, wo, bo)?; // [n, n_embd]

        let (w_up, b_up) = (b.weight(&w("ffn_up"))?, bias(b, "ffn_up")?);
        let up = b.matmul(&format!("blk.{il}.ffn_up"), cur, w_up, b_up)?; // [n, n_ff]
        let act = b.gelu(&format!("blk.{il}.ffn_act"), up)?; // [n, n_ff] (HF gelu_new = tanh form)
        let (w_down, b_down) = (b.weight(&w("ffn_down"))?, bias(b, "ffn_down")?);
        let ffn_out = b.matmul(&format!("blk.{il}.ffn_down"), act, w_down, b_down)?; // [n, n_embd]

        let sum = b.add(&format!("blk.{il}.attn_ffn"), attn_out, ffn_out)?; // [n, n_embd]
        x = b.add(&format!("blk.{il}.l_out"), sum, x)?; // [n, n_embd]
    }
    let x = b.output_rows("out_rows", x)?; // [m, n_embd]
    let (norm_w, norm_b) = (b.weight("output_norm.weight")?, b.weight_opt("output_norm.bias")?);
    let x = b.layer_norm("result_norm", x, Some(norm_w), norm_b, hp.eps)?; // [m, n_embd]
    let logits = lm_head(b, x, tok_embd)?; // [m, n_vocab]
    b.output("logits", logits)?;
    Ok(())
}

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    let hp = HParams::read(b, arch)?;
    match arch {
        "phi3" => build_phi3(b, &hp),
        "phi2" => build_phi2(b, &hp),
        other => Err(OpError(format!("the phi plugin does not build architecture '{other}'"))),
    }
}

// ---------------------------------------------------------------------------------------------
// (4) Export.
// ---------------------------------------------------------------------------------------------

rocmforge_abi::export_plugin! {
    name: "phi",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}
