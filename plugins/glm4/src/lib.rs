//! GLM-4 architecture plugin: Zhipu's GLM-4-0414 family (HF `Glm4ForCausalLM`, model_type `glm4`;
//! GGUF architecture `glm4`), e.g. GLM-4-9B-0414 and GLM-4-32B-0414.
//!
//! Four sections, as DESIGN.md §3 asks: (1) tensor table, (2) hyperparameters, (3) the graph,
//! (4) the export. The graph follows llama.cpp's `src/models/glm4.cpp` and transformers'
//! `modeling_glm4.py`, read for facts:
//!
//! ```text
//!   x ─ rms_norm ─ q,k,v (+bias) ─ rope(first n_rot dims, pairs) ─ attn ─ o ─ rms_norm(post_attention_norm) ─┐
//!   └──────────────────────────────────────────────────────────────────────────────────────────────────── + ─ ffn_inp
//!   ffn_inp ─ rms_norm ─ ffn_up(gate|up) ─ swiglu ─ ffn_down ─ rms_norm(post_ffw_norm) ─ + ffn_inp ─ l_out
//! ```
//!
//! What differs from LLaMA:
//! - RoPE rotates only the first `n_rot = head_dim * partial_rotary_factor` dims of each head
//!   (GLM-4: 0.5), and it rotates *adjacent pairs* (x[2i], x[2i+1]): transformers' glm4
//!   `apply_rotary_pos_emb` repeat-interleaves cos/sin and its `rotate_half` takes even/odd
//!   elements, which is ggml's "normal" mode; llama.cpp's `llama_model_rope_type` says
//!   LLAMA_ROPE_TYPE_NORM for LLM_ARCH_GLM4. So HF Q/K rows are already in the layout the graph
//!   wants: no PERMUTE transform (llama.cpp's converter does not permute them either).
//! - Two extra RMSNorms close each sub-block before its residual add: HF
//!   `post_self_attn_layernorm` (GGUF `post_attention_norm`) and `post_mlp_layernorm`
//!   (`post_ffw_norm`). HF's `post_attention_layernorm` is the *pre*-MLP norm (`ffn_norm`).
//! - gate and up are one fused `gate_up_proj` (GGUF `ffn_up`, `[n_embd, 2*n_ff]`, rows
//!   `[gate | up]`), split in the graph with `view`, as Phi-3's.
//! - Q/K/V carry biases (`attention_bias`, true for the released models); GGUF files may store
//!   them fused as `attn_qkv` (llama.cpp's `create_tensor_qkv` accepts both), and so do we.
//!
//! Not supported, refused with a message: GLM-4V's multimodal M-RoPE (`rope.dimension_sections`).
//! NextN (multi-token prediction) blocks at the end of a GGUF file are skipped, as llama.cpp does.

use rocmforge_abi::builder::{AttnOpts, RopeOpts};
use rocmforge_abi::{arch, config, tensor, tensor_flags::OPTIONAL, transform::NONE, Builder, Heads, Meta, Node, OpError};

// ---------------------------------------------------------------------------------------------
// (1) Tensor table: GGUF name (internal vocabulary) <- Hugging Face name, flags, load transform.
//     Names as llama.cpp's `glm4` (src/llama-arch.cpp) and its converter's tensor mapping.
// ---------------------------------------------------------------------------------------------

static TENSORS: [rocmforge_abi::RfTensorMap; 18] = [
    tensor("token_embd.weight", "model.embed_tokens.weight", 0, NONE),
    tensor("output_norm.weight", "model.norm.weight", 0, NONE),
    tensor("output.weight", "lm_head.weight", OPTIONAL, NONE),
    tensor("blk.{il}.attn_norm.weight", "model.layers.{il}.input_layernorm.weight", 0, NONE),
    // Separate Q/K/V (HF, and llama.cpp's converter); marked required as the usual layout (the
    // flag only shapes `plugins check`'s synthetic model: the graph asks for what the file has) ...
    tensor("blk.{il}.attn_q.weight", "model.layers.{il}.self_attn.q_proj.weight", 0, NONE),
    tensor("blk.{il}.attn_q.bias", "model.layers.{il}.self_attn.q_proj.bias", OPTIONAL, NONE),
    tensor("blk.{il}.attn_k.weight", "model.layers.{il}.self_attn.k_proj.weight", 0, NONE),
    tensor("blk.{il}.attn_k.bias", "model.layers.{il}.self_attn.k_proj.bias", OPTIONAL, NONE),
    tensor("blk.{il}.attn_v.weight", "model.layers.{il}.self_attn.v_proj.weight", 0, NONE),
    tensor("blk.{il}.attn_v.bias", "model.layers.{il}.self_attn.v_proj.bias", OPTIONAL, NONE),
    // ... or one fused QKV, rows [q | k | v] (GGUF only).
    tensor("blk.{il}.attn_qkv.weight", "", OPTIONAL, NONE),
    tensor("blk.{il}.attn_qkv.bias", "", OPTIONAL, NONE),
    tensor("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.o_proj.weight", 0, NONE),
    tensor("blk.{il}.post_attention_norm.weight", "model.layers.{il}.post_self_attn_layernorm.weight", 0, NONE),
    tensor("blk.{il}.ffn_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", 0, NONE),
    tensor("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.gate_up_proj.weight", 0, NONE),
    tensor("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.down_proj.weight", 0, NONE),
    tensor("blk.{il}.post_ffw_norm.weight", "model.layers.{il}.post_mlp_layernorm.weight", 0, NONE),
];

/// `config.json` keys -> GGUF metadata keys (`{arch}` = the GGUF architecture name); the first
/// row found wins, and the `=value` rows are transformers' `Glm4Config` defaults for a config.json
/// that leaves the key out (head_dim 128, partial_rotary_factor 0.5, rms_norm_eps 1.5625e-7),
/// so an HF directory runs what transformers runs. GGUF files follow llama.cpp instead: its
/// `rope.dimension_count` (default: the whole head) and a required RMS epsilon.
/// `{arch}.rope.partial_rotary_factor` is ours (as the phi plugin's); transformers 5 writes the
/// factor twice, and `rope_parameters`' copy is the one it uses.
static CONFIG: [rocmforge_abi::RfConfigMap; 9] = [
    config("{arch}.attention.key_length", "head_dim"),
    config("{arch}.attention.key_length", "=128"),
    config("{arch}.attention.value_length", "head_dim"),
    config("{arch}.attention.value_length", "=128"),
    config("{arch}.rope.partial_rotary_factor", "rope_parameters.partial_rotary_factor"),
    config("{arch}.rope.partial_rotary_factor", "partial_rotary_factor"),
    config("{arch}.rope.partial_rotary_factor", "=0.5"),
    config("{arch}.attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    config("{arch}.attention.layer_norm_rms_epsilon", "=1.5625e-07"),
];

static ARCHS: [rocmforge_abi::RfArchClaim; 1] = [arch("glm4", "Glm4ForCausalLM")];

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

struct HParams {
    n_layer: usize,
    heads: Heads,
    eps: f32,
    rope: RopeOpts,
}

impl HParams {
    fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let key = |k: &str| format!("{arch}.{k}");
        let heads = Heads::read(m, arch)?;
        let head_dim = heads.head_dim;
        // Rotated dims: GGUF's rope.dimension_count (llama.cpp's converter writes
        // head_dim * partial_rotary_factor), else our partial factor (HF directories and their
        // conversions), else the whole head (llama.cpp's default for a missing key).
        let n_rot = match m.meta_int_opt(&key("rope.dimension_count"))? {
            Some(_) => m.meta_usize(&key("rope.dimension_count"))?,
            None => match m.meta_float_opt(&key("rope.partial_rotary_factor"))? {
                Some(f) if f > 0.0 && f <= 1.0 => (head_dim as f64 * f) as usize,
                Some(f) => return Err(OpError(format!("{arch}: partial_rotary_factor {f} is not in (0, 1]"))),
                None => head_dim,
            },
        };
        if n_rot == 0 || n_rot % 2 != 0 || n_rot > head_dim {
            return Err(OpError(format!(
                "{arch}: {n_rot} rotated dims (rope.dimension_count) must be even, positive and <= head_dim {head_dim}"
            )));
        }
        if let Some(sections) = m.meta_array_opt(&key("rope.dimension_sections"))? {
            if sections.iter().any(|&s| s != 0.0) {
                return Err(OpError(format!(
                    "{arch}: multimodal M-RoPE (rope.dimension_sections {sections:?}, GLM-4V) is not supported; only GLM-4 text models are"
                )));
            }
        }
        // The last `nextn_predict_layers` blocks are NextN (multi-token prediction) layers that
        // the forward pass skips (llama.cpp's `n_layer() = n_layer_all - n_layer_nextn`).
        let n_layer_all = m.meta_usize(&key("block_count"))?;
        let n_nextn = m.meta_usize_or(&key("nextn_predict_layers"), 0)?;
        if n_nextn >= n_layer_all {
            return Err(OpError(format!("{arch}: nextn_predict_layers {n_nextn} leaves none of the {n_layer_all} blocks")));
        }
        let freq_base = m.meta_f32_or(&key("rope.freq_base"), 10000.0)?;
        // Interleaved pairs (ggml "normal" mode, neox = false); linear / YaRN scaling as declared,
        // any other scaling type is an error naming it.
        let rope = RopeOpts::new(heads.n_head, head_dim, n_rot, false, freq_base).with_scaling_from(m, arch)?;
        Ok(HParams { n_layer: n_layer_all - n_nextn, heads, eps: m.meta_f32(&key("attention.layer_norm_rms_epsilon"))?, rope })
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graph. Shapes: n = tokens in the batch, m = rows whose logits are wanted.
// ---------------------------------------------------------------------------------------------

/// Q, K, V of layer `il` (each with its bias when the model has one), from a fused `attn_qkv`
/// (rows `[q | k | v]`) or separate projections.
fn qkv(b: &mut Builder, hp: &HParams, il: usize, cur: Node) -> Result<(Node, Node, Node), OpError> {
    // Checked: head counts and head_dim come from the model's config (hostile files reach here).
    let width = |heads: usize, what: &str| {
        heads
            .checked_mul(hp.heads.head_dim)
            .filter(|w| w.checked_mul(2).is_some())
            .ok_or_else(|| OpError(format!("glm4: {what} ({heads}) x head_dim ({}) overflows", hp.heads.head_dim)))
    };
    let n_q = width(hp.heads.n_head, "n_head")?;
    let n_kv = width(hp.heads.n_head_kv, "n_head_kv")?;
    if b.has_tensor(&format!("blk.{il}.attn_qkv.weight"))? {
        let w = b.weight(&format!("blk.{il}.attn_qkv.weight"))?;
        let bias = b.weight_opt(&format!("blk.{il}.attn_qkv.bias"))?;
        let fused = b.matmul(&format!("blk.{il}.attn_qkv"), cur, w, bias)?; // [n, n_q + 2*n_kv]
        return Ok((
            b.view(&format!("blk.{il}.Qcur"), fused, 0, n_q)?,           // [n, n_q]
            b.view(&format!("blk.{il}.Kcur"), fused, n_q, n_kv)?,        // [n, n_kv]
            b.view(&format!("blk.{il}.Vcur"), fused, n_q + n_kv, n_kv)?, // [n, n_kv]
        ));
    }
    let mut proj = |t: &str| -> Result<Node, OpError> {
        let w = b.weight(&format!("blk.{il}.{t}.weight"))?;
        let bias = b.weight_opt(&format!("blk.{il}.{t}.bias"))?;
        b.matmul(&format!("blk.{il}.{t}"), cur, w, bias)
    };
    Ok((proj("attn_q")?, proj("attn_k")?, proj("attn_v")?)) // [n, n_q], [n, n_kv], [n, n_kv]
}

/// `n_ff` from the fused gate|up weight `[n_embd, 2*n_ff]`; any other shape is an error naming it.
fn fused_n_ff(b: &Builder, il: usize, n_embd: usize) -> Result<usize, OpError> {
    let name = format!("blk.{il}.ffn_up.weight");
    match b.tensor_shape(&name)?.as_deref() {
        Some(&[k, rows]) if k == n_embd && rows % 2 == 0 && rows > 0 => Ok(rows / 2),
        Some(d) => Err(OpError(format!("glm4: {name} has dims {d:?}, expected [{n_embd}, 2*n_ff] (fused gate|up)"))),
        None => Err(OpError(format!("glm4: the model has no tensor '{name}' (fused gate|up projection)"))),
    }
}

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    if arch != "glm4" {
        return Err(OpError(format!("the glm4 plugin does not build architecture '{arch}'")));
    }
    let hp = HParams::read(b, arch)?;
    let Heads { n_embd, n_head, n_head_kv, head_dim } = hp.heads;
    let rope_k = RopeOpts { n_head: n_head_kv, ..hp.rope.clone() };
    let tok_embd = b.weight("token_embd.weight")?;
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]
    for il in 0..hp.n_layer {
        let w = |t: &str| format!("blk.{il}.{t}.weight");
        let name = |t: &str| format!("blk.{il}.{t}");
        let last = il + 1 == hp.n_layer;

        let cur = b.layer_rms_norm(il, "attn_norm", x, hp.eps)?; // [n, n_embd]
        let (q, k, v) = qkv(b, &hp, il, cur)?;
        let q = b.rope(&name("Qcur_rope"), q, None, &hp.rope)?; // [n, n_head*head_dim]
        let k = b.rope(&name("Kcur_rope"), k, None, &rope_k)?; // [n, n_head_kv*head_dim]
        let opts = AttnOpts {
            layer: il,
            n_head,
            n_head_kv,
            head_dim_k: head_dim,
            head_dim_v: head_dim,
            sliding_window: 0,
            causal: true,
            scale: 0.0, // 1/sqrt(head_dim), as both references
            softcap: 0.0,
        };
        let attn = b.attention(&name("attn"), q, k, v, &opts)?; // [n, n_head*head_dim]
        let wo = b.weight(&w("attn_output"))?;
        let bo = b.weight_opt(&format!("blk.{il}.attn_output.bias"))?;
        let mut cur = b.matmul(&name("attn_output"), attn, wo, bo)?; // [n, n_embd]
        let mut inp_sa = x;
        if last {
            // Only the rows whose logits are wanted go on through the last layer's MLP.
            cur = b.output_rows(&name("attn_out_rows"), cur)?; // [m, n_embd]
            inp_sa = b.output_rows(&name("inp_out_rows"), inp_sa)?; // [m, n_embd]
        }
        let cur = b.layer_rms_norm(il, "post_attention_norm", cur, hp.eps)?; // [n|m, n_embd]
        let ffn_inp = b.add(&name("ffn_inp"), cur, inp_sa)?; // [n|m, n_embd]

        let cur = b.layer_rms_norm(il, "ffn_norm", ffn_inp, hp.eps)?; // [n|m, n_embd]
        let n_ff = fused_n_ff(b, il, n_embd)?;
        let w_up = b.weight(&w("ffn_up"))?;
        let gate_up = b.matmul(&name("ffn_up"), cur, w_up, None)?; // [n|m, 2*n_ff]
        let gate = b.view(&name("ffn_gate"), gate_up, 0, n_ff)?; // [n|m, n_ff]
        let up = b.view(&name("ffn_up_half"), gate_up, n_ff, n_ff)?; // [n|m, n_ff]
        let act = b.swiglu(&name("ffn_act"), gate, up)?; // [n|m, n_ff]
        let w_down = b.weight(&w("ffn_down"))?;
        let down = b.matmul(&name("ffn_down"), act, w_down, None)?; // [n|m, n_embd]
        let cur = b.layer_rms_norm(il, "post_ffw_norm", down, hp.eps)?; // [n|m, n_embd]
        x = b.add(&name("l_out"), cur, ffn_inp)?; // [n|m, n_embd]
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
    name: "glm4",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}
