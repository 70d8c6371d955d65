//! Gemma architecture plugin: Gemma (1), Gemma 2 and Gemma 3 text models.
//!
//! Four sections, as DESIGN.md §3 asks: (1) tensor table, (2) hyperparameters, (3) the graph,
//! (4) the export. The graph follows llama.cpp's `llm_build_gemma`, `llm_build_gemma2_iswa` and
//! `llm_build_gemma3` (src/models/gemma*.cpp), read for facts. What differs from LLaMA:
//! - token embeddings are multiplied by sqrt(n_embd);
//! - RMSNorm weights act as `1 + w`: llama.cpp's converter stores `1 + w` in GGUF, so GGUF norm
//!   weights are used as they are and HF ones get the ADD_ONE load transform;
//! - the FFN is GeGLU (tanh GELU); RoPE is NeoX style (HF rotate-half, no Q/K permutation);
//! - Gemma 2/3: post-attention and post-FFN norms, Q scaled by 1/sqrt(query_pre_attn_scalar),
//!   interleaved local (sliding-window) and global layers, optional final logit softcap;
//!   Gemma 2 also softcaps attention logits;
//! - Gemma 3: per-head q/k RMSNorm; local layers use their own RoPE base (default 10000) without
//!   scaling, global layers use `rope.freq_base` and the declared rope scaling.
//!
//! Which layers are local follows llama.cpp's `load_swa_pattern` ([`SwaPattern`]): a per-layer
//! bool array in `{arch}.attention.sliding_window_pattern`, or a period `n` (Gemma 2: 2, Gemma 3:
//! 6) where layer `il` is local unless `il % n == n - 1`.

use rocmforge_abi::builder::RopeOpts;
use rocmforge_abi::{
    arch, config, tensor, tensor_flags::OPTIONAL, transform, Builder, Heads, Meta, Node, OpError, SelfAttention, SwaPattern,
};

// ---------------------------------------------------------------------------------------------
// (1) Tensor table: GGUF name (internal vocabulary) <- Hugging Face name, flags, load transform.
// ---------------------------------------------------------------------------------------------

/// HF Gemma 1 calls its pre-FFN norm `post_attention_layernorm`; Gemma 2/3 use that name for the
/// post-attention norm and call the pre-FFN norm `pre_feedforward_layernorm`. The host maps table
/// rows in order and a later row for the same GGUF name wins, so the Gemma 1 row for `ffn_norm`
/// comes first and the Gemma 2/3 row overrides it where the model has that tensor. Gemma 1's graph
/// never reads `post_attention_norm`, so the extra mapping it gets is unused.
static TENSORS: [rocmforge_abi::RfTensorMap; 18] = [
    tensor("token_embd.weight", "model.embed_tokens.weight", 0, transform::NONE),
    tensor("output_norm.weight", "model.norm.weight", 0, transform::ADD_ONE),
    tensor("output.weight", "lm_head.weight", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_norm.weight", "model.layers.{il}.input_layernorm.weight", 0, transform::ADD_ONE),
    tensor("blk.{il}.attn_q.weight", "model.layers.{il}.self_attn.q_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_k.weight", "model.layers.{il}.self_attn.k_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_v.weight", "model.layers.{il}.self_attn.v_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_q_norm.weight", "model.layers.{il}.self_attn.q_norm.weight", OPTIONAL, transform::ADD_ONE),
    tensor("blk.{il}.attn_k_norm.weight", "model.layers.{il}.self_attn.k_norm.weight", OPTIONAL, transform::ADD_ONE),
    tensor("blk.{il}.attn_output.weight", "model.layers.{il}.self_attn.o_proj.weight", 0, transform::NONE),
    // Gemma 1 first (see above), then Gemma 2/3.
    tensor("blk.{il}.ffn_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", 0, transform::ADD_ONE),
    tensor("blk.{il}.post_attention_norm.weight", "model.layers.{il}.post_attention_layernorm.weight", OPTIONAL, transform::ADD_ONE),
    tensor("blk.{il}.ffn_norm.weight", "model.layers.{il}.pre_feedforward_layernorm.weight", 0, transform::ADD_ONE),
    tensor("blk.{il}.post_ffw_norm.weight", "model.layers.{il}.post_feedforward_layernorm.weight", OPTIONAL, transform::ADD_ONE),
    tensor("blk.{il}.ffn_gate.weight", "model.layers.{il}.mlp.gate_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_up.weight", "model.layers.{il}.mlp.up_proj.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_down.weight", "model.layers.{il}.mlp.down_proj.weight", 0, transform::NONE),
    tensor("rope_freqs.weight", "", OPTIONAL, transform::NONE),
];

/// `config.json` keys -> GGUF metadata keys (`{arch}` = the GGUF architecture name). Where two rows
/// name the same GGUF key, the first `config.json` key present wins. RoPE theta and scaling come
/// from the host (host/runtime/src/hf_rope.rs, which reads transformers 5's per-layer-type
/// `rope_parameters.full_attention`); only the local layers' base is Gemma's own.
/// `{arch}.attention.query_pre_attn_scalar` is ours (llama.cpp derives the scale from the model
/// size instead; see [`HParams::read`]).
static CONFIG: [rocmforge_abi::RfConfigMap; 11] = [
    config("{arch}.attention.key_length", "head_dim"),
    config("{arch}.attention.value_length", "head_dim"),
    config("{arch}.rope.freq_base_swa", "rope_local_base_freq"),
    config("{arch}.attention.sliding_window", "sliding_window"),
    config("{arch}.attention.sliding_window_pattern", "layer_types==sliding_attention"),
    config("{arch}.attention.sliding_window_pattern", "sliding_window_pattern"),
    config("{arch}.attention.sliding_window_pattern", "_sliding_window_pattern"),
    config("{arch}.attn_logit_softcapping", "attn_logit_softcapping"),
    config("{arch}.final_logit_softcapping", "final_logit_softcapping"),
    config("{arch}.attention.query_pre_attn_scalar", "query_pre_attn_scalar"),
    config("{arch}.rope.freq_base_swa", "rope_parameters.sliding_attention.rope_theta"),
];

static ARCHS: [rocmforge_abi::RfArchClaim; 3] =
    [arch("gemma", "GemmaForCausalLM"), arch("gemma2", "Gemma2ForCausalLM"), arch("gemma3", "Gemma3ForCausalLM")];

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gen {
    Gemma1,
    Gemma2,
    Gemma3,
}

struct HParams {
    gen: Gen,
    n_layer: usize,
    n_embd: usize,
    eps: f32,
    /// 0 = none.
    final_softcap: f32,
    /// Which layers are local (sliding-window attention).
    swa: SwaPattern,
    /// Global and local layers' attention: RoPE bases, window, Q scale, softcap, q/k norms.
    attn_global: SelfAttention,
    attn_local: SelfAttention,
}

impl HParams {
    fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let key = |k: &str| format!("{arch}.{k}");
        let gen = match arch {
            "gemma" => Gen::Gemma1,
            "gemma2" => Gen::Gemma2,
            "gemma3" => Gen::Gemma3,
            other => return Err(OpError(format!("the gemma plugin does not serve architecture '{other}'"))),
        };
        let n_layer = m.meta_usize(&key("block_count"))?;
        let heads = Heads::read(m, arch)?;
        let Heads { n_embd, n_head, head_dim, .. } = heads;
        let n_rot = m.meta_usize_or(&key("rope.dimension_count"), head_dim)?;
        let eps = m.meta_f32(&key("attention.layer_norm_rms_epsilon"))?;

        // Q scale: HF's query_pre_attn_scalar when given; else llama.cpp's rule (gemma_pytorch's
        // config): the 27B models (Gemma 2: 46 layers, Gemma 3: 62) use n_embd / n_head.
        let q_scale = match m.meta_float_opt(&key("attention.query_pre_attn_scalar"))? {
            Some(s) if s > 0.0 => 1.0 / (s as f32).sqrt(),
            Some(s) => return Err(OpError(format!("{arch}: query_pre_attn_scalar {s} must be positive"))),
            None => {
                let is_27b = matches!((gen, n_layer), (Gen::Gemma2, 46) | (Gen::Gemma3, 62));
                let d = if is_27b { n_embd / n_head } else { head_dim };
                1.0 / (d as f32).sqrt()
            }
        };

        // Softcaps: Gemma 2 always caps attention logits (default 50) and final logits (default
        // 30); Gemma 3 caps final logits only when the key says so; Gemma 1 caps nothing.
        let (attn_softcap, final_softcap) = match gen {
            Gen::Gemma1 => (0.0, 0.0),
            Gen::Gemma2 => (m.meta_f32_or(&key("attn_logit_softcapping"), 50.0)?, m.meta_f32_or(&key("final_logit_softcapping"), 30.0)?),
            Gen::Gemma3 => (0.0, m.meta_f32_or(&key("final_logit_softcapping"), 0.0)?),
        };

        // Local layers: Gemma 2 always has them (window default 4096, period 2); Gemma 3 only
        // when a positive sliding window is declared (period 6).
        let n_swa = match gen {
            Gen::Gemma1 => 0,
            Gen::Gemma2 => m.meta_usize_or(&key("attention.sliding_window"), 4096)?,
            Gen::Gemma3 => m.meta_usize_or(&key("attention.sliding_window"), 0)?,
        };
        let swa = if n_swa == 0 {
            SwaPattern::Layers(Vec::new()) // no layer is local
        } else {
            SwaPattern::read(m, &key("attention.sliding_window_pattern"), if gen == Gen::Gemma2 { 2 } else { 6 }, n_layer)?
        };

        let freq_base = m.meta_f32_or(&key("rope.freq_base"), 10000.0)?;
        let rope_global = RopeOpts::new(n_head, head_dim, n_rot, true, freq_base).with_scaling_from(m, arch)?;
        // Local layers: Gemma 2 shares the global RoPE unless a local base is given; Gemma 3's
        // local layers use base 10000 (or the declared one) and no scaling.
        let rope_local = match gen {
            Gen::Gemma3 => RopeOpts::new(n_head, head_dim, n_rot, true, m.meta_f32_or(&key("rope.freq_base_swa"), 10000.0)?),
            _ => {
                let base = m.meta_f32_or(&key("rope.freq_base_swa"), freq_base)?;
                RopeOpts { freq_base: base, ..rope_global.clone() }
            }
        };
        // Q scaled before attention (llama.cpp's order), per-head q/k RMSNorm before RoPE (Gemma 3).
        let mut attn_global = heads.self_attention(rope_global);
        attn_global.q_prescale = Some(q_scale);
        attn_global.softcap = attn_softcap;
        attn_global.qk_norm_eps = (gen == Gen::Gemma3).then_some(eps);
        let attn_local = SelfAttention { rope: rope_local, sliding_window: n_swa, ..attn_global.clone() };
        Ok(HParams { gen, n_layer, n_embd, eps, final_softcap, swa, attn_global, attn_local })
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graph. Shapes: n = tokens in the batch, m = rows whose logits are wanted.
// ---------------------------------------------------------------------------------------------

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    let mut hp = HParams::read(b, arch)?;
    let post_norms = hp.gen != Gen::Gemma1;
    let tok_embd = b.weight("token_embd.weight")?;
    let rope_freqs = b.weight_opt("rope_freqs.weight")?;
    (hp.attn_global.rope_freqs, hp.attn_local.rope_freqs) = (rope_freqs, rope_freqs);
    let x = b.get_rows("inp_embd", tok_embd)?; // [n, n_embd]
    let mut x = b.scale("inp_scaled", x, (hp.n_embd as f32).sqrt())?; // [n, n_embd]

    for il in 0..hp.n_layer {
        let w = |t: &str| format!("blk.{il}.{t}.weight");
        let name = |t: &str| format!("blk.{il}.{t}");
        let last = il + 1 == hp.n_layer;

        let cur = b.layer_rms_norm(il, "attn_norm", x, hp.eps)?; // [n, n_embd]

        let mut cur = b.self_attention(il, cur, if hp.swa.is_swa(il) { &hp.attn_local } else { &hp.attn_global })?; // [n, n_embd]
        if last {
            // Only the rows whose logits are wanted go on through the last layer's FFN.
            cur = b.output_rows(&name("attn_out_rows"), cur)?; // [m, n_embd]
            x = b.output_rows(&name("inp_out_rows"), x)?; // [m, n_embd]
        }
        if post_norms {
            let pn = b.weight(&w("post_attention_norm"))?;
            cur = b.rms_norm(&name("attn_post_norm"), cur, Some(pn), hp.eps, 0)?;
            // [n|m, n_embd]
        }
        let sa_out = b.add(&name("sa_out"), cur, x)?; // [n|m, n_embd]

        let cur = b.layer_rms_norm(il, "ffn_norm", sa_out, hp.eps)?; // [n|m, n_embd]
        let (w_gate, w_up, w_down) = (b.weight(&w("ffn_gate"))?, b.weight(&w("ffn_up"))?, b.weight(&w("ffn_down"))?);
        let gate = b.matmul(&name("ffn_gate"), cur, w_gate, None)?; // [n|m, n_ff]
        let up = b.matmul(&name("ffn_up"), cur, w_up, None)?; // [n|m, n_ff]
        let act = b.geglu(&name("ffn_act"), gate, up)?; // [n|m, n_ff]
        let mut cur = b.matmul(&name("ffn_down"), act, w_down, None)?; // [n|m, n_embd]
        if post_norms {
            let pn = b.weight(&w("post_ffw_norm"))?;
            cur = b.rms_norm(&name("ffn_post_norm"), cur, Some(pn), hp.eps, 0)?;
            // [n|m, n_embd]
        }
        x = b.add(&name("l_out"), cur, sa_out)?; // [n|m, n_embd]
    }

    let out_norm = b.weight("output_norm.weight")?;
    let x = b.rms_norm("result_norm", x, Some(out_norm), hp.eps, 0)?; // [m, n_embd]
                                                                      // Tied embeddings unless the model has its own LM head.
    let lm_head: Node = match b.weight_opt("output.weight")? {
        Some(w) => w,
        None => tok_embd,
    };
    let mut logits = b.matmul("result_output", x, lm_head, None)?; // [m, n_vocab]
    if hp.final_softcap > 0.0 {
        logits = b.softcap("result_softcap", logits, hp.final_softcap)?; // [m, n_vocab]
    }
    b.output("logits", logits)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (4) Export.
// ---------------------------------------------------------------------------------------------

rocmforge_abi::export_plugin! {
    name: "gemma",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}
