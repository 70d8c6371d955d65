//! Building blocks that most decoder plugins share, on top of the op recorder in `builder.rs`:
//! the per-layer RMSNorm, the self-attention sub-block, the SwiGLU feed-forward and the output head, with llama.cpp's
//! tensor and node names (`blk.{il}.attn_q`, `blk.{il}.ffn_gate`, `result_norm`, ...), so that
//! intermediate dumps line up with llama.cpp's eval callback and every plugin names its nodes the
//! same way. Modelled on llama.cpp's `llm_graph_context::build_attn` / `build_ffn` helpers.
//!
//! They are conveniences for Rust plugins only: each records plain ops of the C ABI, a plugin in
//! another language records the same ops itself. A family whose block differs (Gemma's
//! post-norms, Phi-2's parallel block, BERT's post-norm encoder) writes its own and may still use
//! the pieces that fit.

use crate::builder::{AttnOpts, Builder, Meta, Node, OpError, RopeOpts};

/// Attention geometry as every decoder reads it from GGUF metadata: `{arch}.embedding_length`,
/// `attention.head_count`, `attention.head_count_kv` (default: no GQA) and
/// `attention.key_length` (default n_embd / n_head; `value_length` must equal it); inconsistent
/// values are an error naming them.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

impl Heads {
    pub fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let n_embd = m.meta_usize(&format!("{arch}.embedding_length"))?;
        let n_head = m.meta_usize(&format!("{arch}.attention.head_count"))?;
        if n_head == 0 {
            return Err(OpError(format!("{arch}: head_count is 0")));
        }
        let n_head_kv = m.meta_usize_or(&format!("{arch}.attention.head_count_kv"), n_head)?;
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(OpError(format!("{arch}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")));
        }
        // An explicit key_length need not equal n_embd / n_head (Qwen3, Gemma); without it, the
        // embedding must split evenly into heads.
        let head_dim = match m.meta_int_opt(&format!("{arch}.attention.key_length"))? {
            Some(_) => m.meta_usize(&format!("{arch}.attention.key_length"))?,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => return Err(OpError(format!("{arch}: embedding_length {n_embd} is not a multiple of head_count {n_head}"))),
        };
        let head_dim_v = m.meta_usize_or(&format!("{arch}.attention.value_length"), head_dim)?;
        if head_dim_v != head_dim {
            return Err(OpError(format!("{arch}: value_length {head_dim_v} differs from key_length {head_dim}")));
        }
        Ok(Heads { n_embd, n_head, n_head_kv, head_dim })
    }

    /// RoPE over these heads from `{arch}.rope.*` metadata: `rope.dimension_count` rotated
    /// dimensions (default head_dim), `rope.freq_base` (default 10000) and the scaling keys.
    pub fn rope(&self, m: &impl Meta, arch: &str, neox: bool) -> Result<RopeOpts, OpError> {
        let n_rot = m.meta_usize_or(&format!("{arch}.rope.dimension_count"), self.head_dim)?;
        let freq_base = m.meta_f32_or(&format!("{arch}.rope.freq_base"), 10000.0)?;
        RopeOpts::new(self.n_head, self.head_dim, n_rot, neox, freq_base).with_scaling_from(m, arch)
    }

    /// Plain causal self-attention over these heads with `rope`.
    pub fn self_attention(&self, rope: RopeOpts) -> SelfAttention {
        SelfAttention::new(self.n_head, self.n_head_kv, self.head_dim, rope)
    }
}

/// Which layers use sliding-window ("local") attention, as llama.cpp's `load_swa_pattern` reads
/// `{arch}.attention.sliding_window_pattern`: a per-layer array (bools or 0/1; transformers'
/// `layer_types`), or a period `n` (the key as an integer, else the architecture's default)
/// making layer `il` local unless `il % n == n - 1` (`n == 0`: every layer local). Kept as the
/// rule rather than a vector of `n_layer` flags, so a hostile layer count allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwaPattern {
    Layers(Vec<bool>),
    Period(usize),
}

impl SwaPattern {
    /// Read `key`; an array must have one entry per layer.
    pub fn read(m: &impl Meta, key: &str, default_period: usize, n_layer: usize) -> Result<Self, OpError> {
        // An integer period, or (WRONG_TYPE) a per-layer array.
        match m.meta_int_opt(key) {
            Ok(Some(p)) => {
                usize::try_from(p).map(SwaPattern::Period).map_err(|_| OpError(format!("metadata key '{key}' = {p} is not a valid period")))
            }
            Ok(None) => Ok(SwaPattern::Period(default_period)),
            Err(_) => {
                let arr = m.meta_array_opt(key)?.ok_or_else(|| OpError(format!("metadata key '{key}' vanished")))?;
                if arr.len() != n_layer {
                    return Err(OpError(format!("metadata key '{key}' has {} entries for {n_layer} layers", arr.len())));
                }
                Ok(SwaPattern::Layers(arr.iter().map(|&v| v != 0.0).collect()))
            }
        }
    }

    /// Whether layer `il` is local.
    pub fn is_swa(&self, il: usize) -> bool {
        match self {
            SwaPattern::Layers(v) => v.get(il).copied().unwrap_or(false),
            SwaPattern::Period(p) => *p == 0 || il % p < p - 1,
        }
    }
}

/// The self-attention of one layer, as `Builder::self_attention` records it.
#[derive(Clone, Debug)]
pub struct SelfAttention {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// RoPE of the queries (`n_head`); the keys use the same with `n_head_kv`.
    pub rope: RopeOpts,
    /// Per-frequency divisors (`rope_freqs.weight`, Llama-3 scaling), if the model has them.
    pub rope_freqs: Option<Node>,
    /// Per-head RMSNorm of q and k before RoPE (`attn_q_norm` / `attn_k_norm`, Qwen3), with eps.
    pub qk_norm_eps: Option<f32>,
    /// 0 = full causal attention; else the sliding-window width.
    pub sliding_window: usize,
    /// 0 = 1/sqrt(head_dim).
    pub scale: f32,
    /// Multiply Q by this after RoPE (node `attn_q_scaled`) and attend with scale 1, as
    /// llama.cpp's Gemma graphs do: Q's rounding to f16 inside attention then sees the same
    /// values. Overrides `scale`.
    pub q_prescale: Option<f32>,
    /// 0 = no attention-logit softcap.
    pub softcap: f32,
}

impl SelfAttention {
    /// Plain causal attention with the given heads and RoPE, no extras.
    pub fn new(n_head: usize, n_head_kv: usize, head_dim: usize, rope: RopeOpts) -> Self {
        SelfAttention {
            n_head,
            n_head_kv,
            head_dim,
            rope,
            rope_freqs: None,
            qk_norm_eps: None,
            sliding_window: 0,
            scale: 0.0,
            q_prescale: None,
            softcap: 0.0,
        }
    }
}

impl Builder<'_> {
    /// RMSNorm of `x` with layer `il`'s weight `blk.{il}.{t}.weight`, recorded as node
    /// `blk.{il}.{t}` (e.g. `t` = "attn_norm", "ffn_norm").
    pub fn layer_rms_norm(&mut self, il: usize, t: &str, x: Node, eps: f32) -> Result<Node, OpError> {
        let w = self.weight(&format!("blk.{il}.{t}.weight"))?;
        self.rms_norm(&format!("blk.{il}.{t}"), x, Some(w), eps, 0)
    }

    /// Self-attention of layer `il` on the normed input `cur [n, n_embd]` -> `[n, n_embd]`
    /// (before the residual add): q/k/v projections with their biases when the model has them
    /// (`blk.{il}.attn_{q,k,v}.bias`), optional per-head q/k RMSNorm, RoPE, attention over the KV
    /// cache, output projection (and its bias).
    pub fn self_attention(&mut self, il: usize, cur: Node, a: &SelfAttention) -> Result<Node, OpError> {
        let name = |t: &str| format!("blk.{il}.{t}");
        let w = |b: &mut Self, t: &str| b.weight(&format!("blk.{il}.{t}.weight"));
        let bias = |b: &mut Self, t: &str| b.weight_opt(&format!("blk.{il}.{t}.bias"));
        let (wq, wk, wv) = (w(self, "attn_q")?, w(self, "attn_k")?, w(self, "attn_v")?);
        let (bq, bk, bv) = (bias(self, "attn_q")?, bias(self, "attn_k")?, bias(self, "attn_v")?);
        let mut q = self.matmul(&name("attn_q"), cur, wq, bq)?; // [n, n_head*head_dim]
        let mut k = self.matmul(&name("attn_k"), cur, wk, bk)?; // [n, n_head_kv*head_dim]
        let v = self.matmul(&name("attn_v"), cur, wv, bv)?; // [n, n_head_kv*head_dim]
        if let Some(eps) = a.qk_norm_eps {
            let (q_norm, k_norm) = (w(self, "attn_q_norm")?, w(self, "attn_k_norm")?);
            q = self.rms_norm(&name("attn_q_norm"), q, Some(q_norm), eps, a.head_dim)?;
            k = self.rms_norm(&name("attn_k_norm"), k, Some(k_norm), eps, a.head_dim)?;
        }
        let q = self.rope(&name("attn_q_rope"), q, a.rope_freqs, &a.rope)?;
        let rope_k = RopeOpts { n_head: a.n_head_kv, ..a.rope.clone() };
        let k = self.rope(&name("attn_k_rope"), k, a.rope_freqs, &rope_k)?;
        let (q, scale) = match a.q_prescale {
            Some(s) => (self.scale(&name("attn_q_scaled"), q, s)?, 1.0),
            None => (q, a.scale),
        };
        let opts = AttnOpts {
            layer: il,
            n_head: a.n_head,
            n_head_kv: a.n_head_kv,
            head_dim_k: a.head_dim,
            head_dim_v: a.head_dim,
            sliding_window: a.sliding_window,
            causal: true,
            scale,
            softcap: a.softcap,
        };
        let attn = self.attention(&name("attn"), q, k, v, &opts)?; // [n, n_head*head_dim]
        let (wo, bo) = (w(self, "attn_output")?, bias(self, "attn_output")?);
        self.matmul(&name("attn_output"), attn, wo, bo) // [n, n_embd]
    }

    /// Dense SwiGLU feed-forward of layer `il` with tensors `blk.{il}.ffn_{gate,up,down}{suffix}`
    /// (suffix "" or e.g. "_shexp" for a shared expert) on `cur [n, n_embd]` -> `[n, n_embd]`.
    pub fn swiglu_ffn(&mut self, il: usize, suffix: &str, cur: Node) -> Result<Node, OpError> {
        let t = |p: &str| format!("blk.{il}.ffn_{p}{suffix}");
        let w_gate = self.weight(&format!("{}.weight", t("gate")))?;
        let w_up = self.weight(&format!("{}.weight", t("up")))?;
        let w_down = self.weight(&format!("{}.weight", t("down")))?;
        let gate = self.matmul(&t("gate"), cur, w_gate, None)?; // [n, n_ff]
        let up = self.matmul(&t("up"), cur, w_up, None)?; // [n, n_ff]
        let act = self.swiglu(&t("act"), gate, up)?; // [n, n_ff]
        self.matmul(&t("down"), act, w_down, None) // [n, n_embd]
    }

    /// The output head: keep the rows whose logits are wanted, RMSNorm with `output_norm`, and
    /// project onto the vocabulary with `output.weight` — or, for tied embeddings (no such
    /// tensor), with the token embedding `tok_embd`. Records the `logits` output; returns the
    /// `[m, n_vocab]` node (a plugin may still post-process it before that: `head_logits`).
    pub fn rms_output_head(&mut self, x: Node, tok_embd: Node, eps: f32) -> Result<Node, OpError> {
        let logits = self.head_logits(x, tok_embd, eps)?;
        self.output("logits", logits)
    }

    /// `rms_output_head` without recording the output: for plugins that transform the logits
    /// (e.g. a final softcap) before `Builder::output`.
    pub fn head_logits(&mut self, x: Node, tok_embd: Node, eps: f32) -> Result<Node, OpError> {
        let x = self.output_rows("out_rows", x)?; // [m, n_embd]
        let out_norm = self.weight("output_norm.weight")?;
        let x = self.rms_norm("result_norm", x, Some(out_norm), eps, 0)?; // [m, n_embd]
        let lm_head = match self.weight_opt("output.weight")? {
            Some(w) => w,
            None => tok_embd,
        };
        self.matmul("result_output", x, lm_head, None) // [m, n_vocab]
    }
}
