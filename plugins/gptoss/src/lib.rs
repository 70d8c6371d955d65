//! gpt-oss architecture plugin: OpenAI's open-weight mixture-of-experts models (HF
//! `GptOssForCausalLM`, model_type `gpt_oss`; GGUF architecture `gpt-oss`, llama.cpp's
//! `LLM_ARCH_OPENAI_MOE`), e.g. gpt-oss-20b (24 layers, 32 experts) and gpt-oss-120b (36, 128).
//!
//! Four sections, as DESIGN.md §3 asks: (1) tensor table, (2) hyperparameters, (3) the graph,
//! (4) the export. The graph follows transformers' `modeling_gpt_oss.py` and llama.cpp's
//! `src/models/openai-moe.cpp`, read for facts:
//!
//! ```text
//!   x ─ rms_norm ─ q,k,v (+bias) ─ rope(NeoX, YaRN) ─ attn(sinks; local: window) ─ o (+bias) ─ + x ─ ffn_inp
//!   ffn_inp ─ rms_norm ─ router (+bias) ─ top-k, softmax over the k ─┐
//!                      └──────────── experts: gate,up (+bias) ─ clamped swiglu ─ down (+bias) ─ Σ w· ─ + ffn_inp ─ l_out
//! ```
//!
//! What differs from a LLaMA-style MoE:
//! - Attention sinks: every query head has a learned logit (`attn_sinks`, HF `self_attn.sinks`)
//!   that joins the softmax's denominator and attends to nothing (the ATTENTION op's sinks input).
//! - Layers alternate sliding-window (window `attention.sliding_window`, 128) and full attention:
//!   HF `layer_types`, or in GGUF files llama.cpp's period 2 (even layers local).
//! - RoPE is NeoX style (HF `_apply_rotary_emb` rotates halves; llama.cpp: LLAMA_ROPE_TYPE_NEOX)
//!   with YaRN (factor 32, β 32 / 1, original context 4096) whose correction range is *not*
//!   rounded to whole dims: transformers' `truncate = False`, which gpt-oss's config states and
//!   llama.cpp ignores (its files carry no such key, so for GGUF files the unrounded range is the
//!   default here; `rope.scaling.yarn_truncate`, ours, overrides it). cos/sin are scaled by
//!   `0.1·ln(factor) + 1` in both (ggml's YaRN mscale).
//! - Q/K/V and O have biases; GQA; head_dim (64) is not n_embd / n_head (2880 / 64).
//! - MoE on every layer: the router has a bias; its top-k logits are softmaxed (llama.cpp's
//!   SOFTMAX_WEIGHT), which equals a softmax over all experts renormalised over the top k
//!   (MOE_ROUTE's SOFTMAX_NORM gating). Experts have biases and the clamped SwiGLU
//!   `(clamp(up, ±7) + 1) · g · sigmoid(1.702 g)`, `g = min(gate, 7)` (MOE_GATE_UP's SWIGLU_OAI).
//!   HF stores gate and up fused and interleaved (`gate_up_proj[..., ::2]` / `[..., 1::2]`),
//!   input-major (`x @ W`); the INTERLEAVED_GATE / INTERLEAVED_UP / TRANSPOSE load transforms
//!   make them GGUF's `ffn_gate_exps` / `ffn_up_exps` / `ffn_down_exps`, as llama.cpp's
//!   converter does. GGUF files from llama.cpp hold the experts in MXFP4, which the CPU runs.
//!
//! Not supported, refused by the host with a message: HF checkpoints whose experts are MXFP4
//! blocks (`gate_up_proj_blocks` / `_scales`, the released safetensors): convert them with
//! llama.cpp's `convert_hf_to_gguf.py` or use its GGUF files. The GPU backend has no kernels for
//! sinks, MoE or the unrounded YaRN range yet: `--device auto` runs gpt-oss on the CPU.

use rocmforge_abi::builder::{AttnOpts, MoeExperts, RopeOpts};
use rocmforge_abi::{
    arch, cap, config, moe_act, moe_gating, op, rope_yarn, tensor, tensor_flags::OPTIONAL, transform, Builder, Heads, Meta, Node, OpError,
    SwaPattern,
};

// ---------------------------------------------------------------------------------------------
// (1) Tensor table: GGUF name (internal vocabulary) <- Hugging Face name, flags, load transform.
//     Names as llama.cpp's `gpt-oss` (gguf-py constants.py, llama-arch.cpp) and its converter
//     (conversion/gpt_oss.py: sinks get a `.weight` suffix, experts are split and transposed).
// ---------------------------------------------------------------------------------------------

static TENSORS: [rocmforge_abi::RfTensorMap; 24] = [
    tensor("token_embd.weight", "model.embed_tokens.weight", 0, transform::NONE),
    tensor("output_norm.weight", "model.norm.weight", 0, transform::NONE),
    tensor("output.weight", "lm_head.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_norm.weight", "model.layers.{il}.input_layernorm.weight", 0, transform::NONE),
    // Separate Q/K/V (HF, and llama.cpp's converter) ...
    tensor("blk.{il}.attn_q.weight", "model.layers.{il}.self_attn.q_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_q.bias", "model.layers.{il}.self_attn.q_proj.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_k.weight", "model.layers.{il}.self_attn.k_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_k.bias", "model.layers.{il}.self_attn.k_proj.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_v.weight", "model.layers.{il}.self_attn.v_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_v.bias", "model.layers.{il}.self_attn.v_proj.bias", OPTIONAL, transform::NONE),
    // ... or one fused QKV, rows [q | k | v] (GGUF only; llama.cpp's `create_tensor_qkv`).
    tensor("blk.{il}.attn_qkv.weight", "", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_qkv.bias", "", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.o_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_output.bias", "model.layers.{il}.self_attn.o_proj.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_sinks.weight", "model.layers.{il}.self_attn.sinks", 0, transform::NONE),
    // HF's post_attention_layernorm is the pre-MoE norm; llama.cpp calls it ATTN_POST_NORM.
    tensor("blk.{il}.post_attention_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_gate_inp.weight", "model.layers.{il}.mlp.router.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_gate_inp.bias", "model.layers.{il}.mlp.router.bias", OPTIONAL, transform::NONE),
    // Experts: HF [n_expert, n_embd, 2·n_ff] interleaved gate/up -> [n_embd, n_ff, n_expert] each.
    tensor("blk.{il}.ffn_gate_exps.weight", "model.layers.{il}.mlp.experts.gate_up_proj", 0, transform::INTERLEAVED_GATE),
    tensor("blk.{il}.ffn_up_exps.weight", "model.layers.{il}.mlp.experts.gate_up_proj", 0, transform::INTERLEAVED_UP),
    tensor("blk.{il}.ffn_down_exps.weight", "model.layers.{il}.mlp.experts.down_proj", 0, transform::TRANSPOSE),
    // Expert biases, HF [n_expert, 2·n_ff] and [n_expert, n_embd] (GGUF [n_ff, n_expert], ...).
    tensor("blk.{il}.ffn_gate_exps.bias", "model.layers.{il}.mlp.experts.gate_up_proj_bias", OPTIONAL, transform::INTERLEAVED_GATE),
    tensor("blk.{il}.ffn_up_exps.bias", "model.layers.{il}.mlp.experts.gate_up_proj_bias", OPTIONAL, transform::INTERLEAVED_UP),
    tensor("blk.{il}.ffn_down_exps.bias", "model.layers.{il}.mlp.experts.down_proj_bias", OPTIONAL, transform::NONE),
];

/// `config.json` keys -> GGUF metadata keys (`{arch}` = the GGUF architecture name); the first
/// row found wins. The host maps the common keys (layers, sizes, heads, eps, RoPE theta and YaRN
/// scaling). `{arch}.attention.sliding_window_pattern` and `{arch}.rope.scaling.yarn_truncate`
/// are ours (llama.cpp derives the first from a period of 2 and ignores the second); the `=true`
/// row is transformers' default for a YaRN config without `truncate`.
static CONFIG: [rocmforge_abi::RfConfigMap; 11] = [
    config("{arch}.attention.key_length", "head_dim"),
    config("{arch}.attention.value_length", "head_dim"),
    config("{arch}.expert_count", "num_local_experts"),
    config("{arch}.expert_count", "num_experts"),
    config("{arch}.expert_used_count", "num_experts_per_tok"),
    config("{arch}.expert_feed_forward_length", "intermediate_size"),
    config("{arch}.attention.sliding_window", "sliding_window"),
    config("{arch}.attention.sliding_window_pattern", "layer_types==sliding_attention"),
    config("{arch}.rope.scaling.yarn_truncate", "rope_parameters.truncate"),
    config("{arch}.rope.scaling.yarn_truncate", "rope_scaling.truncate"),
    config("{arch}.rope.scaling.yarn_truncate", "=true"),
];

static ARCHS: [rocmforge_abi::RfArchClaim; 1] = [arch("gpt-oss", "GptOssForCausalLM")];

/// The clamped SwiGLU's constants (transformers' `GptOssExperts.alpha` / `.limit`, llama.cpp's
/// `LLM_FFN_SWIGLU_OAI_MOE`): facts of the architecture, in no config.
const SWIGLU_ALPHA: f32 = 1.702;
const SWIGLU_LIMIT: f32 = 7.0;

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

struct HParams {
    n_layer: usize,
    heads: Heads,
    eps: f32,
    rope: RopeOpts,
    /// Window of the local layers (0: no layer is local).
    n_swa: usize,
    swa: SwaPattern,
    n_expert_used: usize,
}

impl HParams {
    fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let key = |k: &str| format!("{arch}.{k}");
        let n_layer = m.meta_usize(&key("block_count"))?;
        let heads = Heads::read(m, arch)?;
        let head_dim = heads.head_dim;
        // Checked here: head counts and head_dim come from the model's config (hostile files
        // reach this point), and every product below must fit.
        for (what, n) in [("head_count", heads.n_head), ("head_count_kv", heads.n_head_kv)] {
            if n.checked_mul(head_dim).and_then(|w| w.checked_mul(2)).is_none() || head_dim == 0 {
                return Err(OpError(format!("{arch}: {what} ({n}) x key_length ({head_dim}) is not a usable width")));
            }
        }
        let n_rot = m.meta_usize_or(&key("rope.dimension_count"), head_dim)?;
        if n_rot == 0 || n_rot % 2 != 0 || n_rot > head_dim {
            return Err(OpError(format!("{arch}: rope.dimension_count {n_rot} must be even, positive and <= key_length {head_dim}")));
        }
        let freq_base = m.meta_f32_or(&key("rope.freq_base"), 10000.0)?;
        let mut rope = RopeOpts::new(heads.n_head, head_dim, n_rot, true, freq_base).with_scaling_from(m, arch)?;
        // gpt-oss's YaRN range is unrounded unless the file says otherwise (module header); the
        // flag means nothing without YaRN, and is then left at the ABI's default.
        let truncate = m.meta_int_opt(&key("rope.scaling.yarn_truncate"))?;
        rope.yarn_exact = rope.ext_factor != 0.0 && truncate.is_none_or(|t| t == 0);
        let n_expert = m.meta_usize(&key("expert_count"))?;
        let n_expert_used = m.meta_usize(&key("expert_used_count"))?;
        if n_expert_used == 0 || n_expert_used > n_expert {
            return Err(OpError(format!("{arch}: expert_used_count {n_expert_used} must be in 1..={n_expert} (expert_count)")));
        }
        let n_swa = m.meta_usize_or(&key("attention.sliding_window"), 0)?;
        // llama.cpp's `load_swa_pattern(ml, 2)`: without a per-layer array, even layers are local.
        let swa = SwaPattern::read(m, &key("attention.sliding_window_pattern"), 2, n_layer)?;
        Ok(HParams { n_layer, heads, eps: m.meta_f32(&key("attention.layer_norm_rms_epsilon"))?, rope, n_swa, swa, n_expert_used })
    }
}

/// The appended ABI slots this graph uses; a host without one is refused by name (the op would be
/// refused anyway, this says why before anything is recorded).
fn check_host(b: &Builder, hp: &HParams) -> Result<(), OpError> {
    let mut needs = vec![
        (op::ATTENTION, cap::INPUT, 3, 0, "attention sinks"),
        (op::MOE_GATE_UP, cap::IPARAM_VALUE, 1, moe_act::SWIGLU_OAI, "the clamped SwiGLU"),
        (op::MOE_GATE_UP, cap::INPUT, 5, 0, "expert biases"),
        (op::MOE_DOWN, cap::INPUT, 3, 0, "expert biases"),
    ];
    if hp.rope.yarn_exact {
        needs.push((op::ROPE, cap::IPARAM_VALUE, 5, rope_yarn::EXACT, "the unrounded YaRN range"));
    }
    match needs.iter().find(|&&(o, what, slot, value, _)| !b.supports(o, what, slot, value)) {
        Some(n) => Err(OpError(format!("gpt-oss needs {} (a graph op this host does not have; a newer ROCmForge does)", n.4))),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graph. Shapes: n = tokens in the batch, m = rows whose logits are wanted.
// ---------------------------------------------------------------------------------------------

/// Q, K, V of layer `il` with their biases, from separate projections or a fused `attn_qkv`
/// (rows `[q | k | v]`).
fn qkv(b: &mut Builder, hp: &HParams, il: usize, cur: Node) -> Result<(Node, Node, Node), OpError> {
    let n_q = hp.heads.n_head * hp.heads.head_dim; // checked in HParams::read
    let n_kv = hp.heads.n_head_kv * hp.heads.head_dim;
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

/// The routed experts of layer `il` on the normed `cur [r, n_embd]` -> `[r, n_embd]`.
fn moe_ffn(b: &mut Builder, hp: &HParams, il: usize, cur: Node) -> Result<Node, OpError> {
    let w = |t: &str| format!("blk.{il}.{t}.weight");
    let bias = |t: &str| format!("blk.{il}.{t}.bias");
    let name = |t: &str| format!("blk.{il}.{t}");
    let k = hp.n_expert_used;
    let (router, router_b) = (b.weight(&w("ffn_gate_inp"))?, b.weight_opt(&bias("ffn_gate_inp"))?);
    let logits = b.matmul(&name("ffn_moe_logits"), cur, router, router_b)?; // [r, n_expert]
                                                                            // Softmax over the top-k logits = top-k of the softmax, renormalised (module header).
    let route = b.moe_route(&name("ffn_moe_route"), logits, k, moe_gating::SOFTMAX_NORM)?; // [r, 2k]
    let experts = MoeExperts {
        gate: b.weight(&w("ffn_gate_exps"))?,
        up: b.weight(&w("ffn_up_exps"))?,
        gate_bias: b.weight_opt(&bias("ffn_gate_exps"))?,
        up_bias: b.weight_opt(&bias("ffn_up_exps"))?,
    };
    let h = b.moe_gate_up_ex(&name("ffn_moe_gate_up"), cur, route, &experts, k, moe_act::SWIGLU_OAI, [SWIGLU_ALPHA, SWIGLU_LIMIT])?; // [r, k*n_ff]
    let (down, down_b) = (b.weight(&w("ffn_down_exps"))?, b.weight_opt(&bias("ffn_down_exps"))?);
    b.moe_down_biased(&name("ffn_moe_out"), h, route, down, down_b, k) // [r, n_embd]
}

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    if arch != "gpt-oss" {
        return Err(OpError(format!("the gptoss plugin does not build architecture '{arch}'")));
    }
    let hp = HParams::read(b, arch)?;
    check_host(b, &hp)?;
    let Heads { n_head, n_head_kv, head_dim, .. } = hp.heads;
    let rope_k = RopeOpts { n_head: n_head_kv, ..hp.rope.clone() };
    let tok_embd = b.weight("token_embd.weight")?;
    let mut x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]
    for il in 0..hp.n_layer {
        let name = |t: &str| format!("blk.{il}.{t}");
        let last = il + 1 == hp.n_layer;

        let cur = b.layer_rms_norm(il, "attn_norm", x, hp.eps)?; // [n, n_embd]
        let (q, k, v) = qkv(b, &hp, il, cur)?;
        let q = b.rope(&name("Qcur_rope"), q, None, &hp.rope)?; // [n, n_head*head_dim]
        let k = b.rope(&name("Kcur_rope"), k, None, &rope_k)?; // [n, n_head_kv*head_dim]
        let sinks = b.weight(&format!("blk.{il}.attn_sinks.weight"))?; // [n_head]
        let opts = AttnOpts {
            layer: il,
            n_head,
            n_head_kv,
            head_dim_k: head_dim,
            head_dim_v: head_dim,
            sliding_window: if hp.swa.is_swa(il) { hp.n_swa } else { 0 },
            causal: true,
            scale: 0.0, // 1/sqrt(head_dim), as both references
            softcap: 0.0,
        };
        let attn = b.attention_with_sinks(&name("attn"), q, k, v, Some(sinks), &opts)?; // [n, n_head*head_dim]
        let wo = b.weight(&format!("blk.{il}.attn_output.weight"))?;
        let bo = b.weight_opt(&format!("blk.{il}.attn_output.bias"))?;
        let mut cur = b.matmul(&name("attn_output"), attn, wo, bo)?; // [n, n_embd]
        let mut inp_sa = x;
        if last {
            // Only the rows whose logits are wanted go on through the last layer's experts.
            cur = b.output_rows(&name("attn_out_rows"), cur)?; // [m, n_embd]
            inp_sa = b.output_rows(&name("inp_out_rows"), inp_sa)?; // [m, n_embd]
        }
        let ffn_inp = b.add(&name("ffn_inp"), cur, inp_sa)?; // [n|m, n_embd]
        let cur = b.layer_rms_norm(il, "post_attention_norm", ffn_inp, hp.eps)?; // [n|m, n_embd]
        let moe = moe_ffn(b, &hp, il, cur)?; // [n|m, n_embd]
        x = b.add(&name("l_out"), moe, ffn_inp)?; // [n|m, n_embd]
    }
    let out_norm = b.weight("output_norm.weight")?;
    let x = b.rms_norm("result_norm", x, Some(out_norm), hp.eps, 0)?; // [m, n_embd]
    let lm_head = b.weight_opt("output.weight")?.unwrap_or(tok_embd); // tied when absent
    let logits = b.matmul("result_output", x, lm_head, None)?; // [m, n_vocab]
    b.output("logits", logits)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (4) Export.
// ---------------------------------------------------------------------------------------------

rocmforge_abi::export_plugin! {
    name: "gptoss",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}
