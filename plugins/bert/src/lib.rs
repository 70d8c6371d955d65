//! BERT architecture plugin: encoder-only sentence-embedding models (all-MiniLM-L6-v2, bge-*).
//!
//! Four sections, as DESIGN.md §3 asks: (1) tensor table, (2) hyperparameters, (3) the graph,
//! (4) the export. The graph follows llama.cpp's `src/models/bert.cpp` and Hugging Face's
//! `BertModel` + sentence-transformers' pooling:
//!
//! ```text
//!   x = LayerNorm(tok_embd[token] + token_types[0] + position_embd[pos])     (token type 0 always)
//!   per layer (post-norm):
//!     x = LayerNorm(x + Wo·attn(Wq·x+bq, Wk·x+bk, Wv·x+bv))   non-causal: every token sees its whole sequence
//!     x = LayerNorm(x + Wdown·gelu_erf(Wup·x+bup) + bdown)
//!   embedding = l2_normalize(pool(x))     pool = {arch}.pooling_type: mean (default) / cls / last;
//!                                         0 (none) outputs every token's row, not normalised
//! ```
//!
//! Invariants: the output is an embedding (OUTPUT kind EMBEDDING), one row per sequence when
//! pooled, so the host must give each sequence whole in one chunk. GELU is the exact erf form,
//! what HF's `hidden_act: "gelu"` means (llama.cpp uses the tanh approximation here; the
//! difference is far below the test tolerance, but we follow the reference the weights were
//! trained with). HF checkpoints have no pooling key in `config.json` (sentence-transformers
//! keeps it in `1_Pooling/`): mean pooling is the default, as for all-MiniLM and most ST models.

use rocmforge_abi::builder::AttnOpts;
use rocmforge_abi::{arch, config, pool, tensor, tensor_flags::OPTIONAL, transform, Builder, Meta, OpError, RowIds};

// ---------------------------------------------------------------------------------------------
// (1) Tensor table: GGUF name (internal vocabulary) <- Hugging Face name, flags, load transform.
// ---------------------------------------------------------------------------------------------

static TENSORS: [rocmforge_abi::RfTensorMap; 21] = [
    tensor("token_embd.weight", "embeddings.word_embeddings.weight", 0, transform::NONE),
    tensor("token_types.weight", "embeddings.token_type_embeddings.weight", OPTIONAL, transform::NONE),
    tensor("position_embd.weight", "embeddings.position_embeddings.weight", 0, transform::NONE),
    tensor("token_embd_norm.weight", "embeddings.LayerNorm.weight", 0, transform::NONE),
    tensor("token_embd_norm.bias", "embeddings.LayerNorm.bias", 0, transform::NONE),
    tensor("blk.{il}.attn_q.weight", "encoder.layer.{il}.attention.self.query.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_q.bias", "encoder.layer.{il}.attention.self.query.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_k.weight", "encoder.layer.{il}.attention.self.key.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_k.bias", "encoder.layer.{il}.attention.self.key.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_v.weight", "encoder.layer.{il}.attention.self.value.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_v.bias", "encoder.layer.{il}.attention.self.value.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_output.weight", "encoder.layer.{il}.attention.output.dense.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_output.bias", "encoder.layer.{il}.attention.output.dense.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.attn_output_norm.weight", "encoder.layer.{il}.attention.output.LayerNorm.weight", 0, transform::NONE),
    tensor("blk.{il}.attn_output_norm.bias", "encoder.layer.{il}.attention.output.LayerNorm.bias", 0, transform::NONE),
    tensor("blk.{il}.ffn_up.weight", "encoder.layer.{il}.intermediate.dense.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_up.bias", "encoder.layer.{il}.intermediate.dense.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.ffn_down.weight", "encoder.layer.{il}.output.dense.weight", 0, transform::NONE),
    tensor("blk.{il}.ffn_down.bias", "encoder.layer.{il}.output.dense.bias", OPTIONAL, transform::NONE),
    tensor("blk.{il}.layer_output_norm.weight", "encoder.layer.{il}.output.LayerNorm.weight", 0, transform::NONE),
    tensor("blk.{il}.layer_output_norm.bias", "encoder.layer.{il}.output.LayerNorm.bias", 0, transform::NONE),
];

/// `config.json` keys -> GGUF metadata keys (`{arch}` = the GGUF architecture name).
static CONFIG: [rocmforge_abi::RfConfigMap; 4] = [
    config("{arch}.attention.layer_norm_epsilon", "layer_norm_eps"),
    config("tokenizer.ggml.token_type_count", "type_vocab_size"),
    // Facts of the architecture for converted files (llama.cpp defaults to causal without them).
    config("{arch}.attention.causal", "=false"),
    // sentence-transformers' pooling lives outside config.json; mean is what this plugin assumes.
    config("{arch}.pooling_type", "=1"),
];

static ARCHS: [rocmforge_abi::RfArchClaim; 1] = [arch("bert", "BertModel")];

// ---------------------------------------------------------------------------------------------
// (2) Hyperparameters, parsed once from metadata; a missing key is an error naming it.
// ---------------------------------------------------------------------------------------------

/// llama.cpp's `llama_pooling_type` value meaning "no pooling".
const POOLING_NONE: i64 = 0;

struct HParams {
    n_layer: usize,
    n_head: usize,
    head_dim: usize,
    eps: f32,
    /// A [`pool`] mode, or [`POOLING_NONE`].
    pooling: i64,
}

impl HParams {
    fn read(m: &impl Meta, arch: &str) -> Result<Self, OpError> {
        let n_embd = m.meta_usize(&format!("{arch}.embedding_length"))?;
        let n_head = m.meta_usize(&format!("{arch}.attention.head_count"))?;
        if n_head == 0 || n_embd % n_head != 0 {
            return Err(OpError(format!("{arch}: embedding_length {n_embd} is not a multiple of head_count {n_head}")));
        }
        if let Some(kv) = m.meta_int_opt(&format!("{arch}.attention.head_count_kv"))? {
            if kv != n_head as i64 {
                return Err(OpError(format!("{arch}: head_count_kv {kv} ≠ head_count {n_head} (BERT has no grouped-query attention)")));
            }
        }
        if m.meta_int_opt(&format!("{arch}.attention.causal"))?.unwrap_or(0) != 0 {
            return Err(OpError(format!("{arch}: attention.causal is true; BERT is an encoder (non-causal)")));
        }
        let pooling = m.meta_int_opt(&format!("{arch}.pooling_type"))?.unwrap_or(pool::MEAN);
        if ![POOLING_NONE, pool::MEAN, pool::CLS, pool::LAST].contains(&pooling) {
            return Err(OpError(format!("{arch}: pooling_type {pooling} is not supported (0 none, 1 mean, 2 cls, 3 last)")));
        }
        Ok(HParams {
            n_layer: m.meta_usize(&format!("{arch}.block_count"))?,
            n_head,
            head_dim: n_embd / n_head,
            eps: m.meta_f32_or(&format!("{arch}.attention.layer_norm_epsilon"), 1e-12)?,
            pooling,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// (3) The graph. Shapes: n = tokens in the batch, s = sequences in the batch.
// ---------------------------------------------------------------------------------------------

fn build(b: &mut Builder, arch: &str) -> Result<(), OpError> {
    let hp = HParams::read(b, arch)?;
    let tok_embd = b.weight("token_embd.weight")?;
    let mut x = b.get_rows("inp_tok", tok_embd)?; // [n, n_embd]
    if let Some(types) = b.weight_opt("token_types.weight")? {
        // Every token is of type 0 ("sentence A"), as in llama.cpp and sentence-transformers.
        let t = b.get_rows_of("inp_type", types, RowIds::Constant(0))?; // [n, n_embd]
        x = b.add("inp_tok_type", x, t)?;
    }
    let pos_embd = b.weight("position_embd.weight")?;
    let p = b.get_rows_of("inp_pos", pos_embd, RowIds::Positions)?; // [n, n_embd]
    x = b.add("inp_embd", x, p)?;
    let (nw, nb) = (b.weight("token_embd_norm.weight")?, b.weight("token_embd_norm.bias")?);
    x = b.layer_norm("inp_norm", x, Some(nw), Some(nb), hp.eps)?; // [n, n_embd]

    for il in 0..hp.n_layer {
        let w = |t: &str| format!("blk.{il}.{t}.weight");
        let bias = |b: &mut Builder, t: &str| b.weight_opt(&format!("blk.{il}.{t}.bias"));
        let (wq, wk, wv) = (b.weight(&w("attn_q"))?, b.weight(&w("attn_k"))?, b.weight(&w("attn_v"))?);
        let (bq, bk, bv) = (bias(b, "attn_q")?, bias(b, "attn_k")?, bias(b, "attn_v")?);
        let q = b.matmul(&format!("blk.{il}.attn_q"), x, wq, bq)?; // [n, n_embd]
        let k = b.matmul(&format!("blk.{il}.attn_k"), x, wk, bk)?; // [n, n_embd]
        let v = b.matmul(&format!("blk.{il}.attn_v"), x, wv, bv)?; // [n, n_embd]
        let attn = b.attention(
            &format!("blk.{il}.attn"),
            q,
            k,
            v,
            &AttnOpts {
                layer: il,
                n_head: hp.n_head,
                n_head_kv: hp.n_head,
                head_dim_k: hp.head_dim,
                head_dim_v: hp.head_dim,
                sliding_window: 0,
                causal: false,
                scale: 0.0,
                softcap: 0.0,
            },
        )?; // [n, n_embd]
        let (wo, bo) = (b.weight(&w("attn_output"))?, bias(b, "attn_output")?);
        let attn_out = b.matmul(&format!("blk.{il}.attn_output"), attn, wo, bo)?;
        let res = b.add(&format!("blk.{il}.attn_res"), attn_out, x)?;
        let (nw, nb) = (b.weight(&w("attn_output_norm"))?, b.weight(&format!("blk.{il}.attn_output_norm.bias"))?);
        let ffn_inp = b.layer_norm(&format!("blk.{il}.attn_output_norm"), res, Some(nw), Some(nb), hp.eps)?; // [n, n_embd]

        let (w_up, b_up) = (b.weight(&w("ffn_up"))?, bias(b, "ffn_up")?);
        let (w_down, b_down) = (b.weight(&w("ffn_down"))?, bias(b, "ffn_down")?);
        let up = b.matmul(&format!("blk.{il}.ffn_up"), ffn_inp, w_up, b_up)?; // [n, n_ff]
        let act = b.gelu_erf(&format!("blk.{il}.ffn_act"), up)?;
        let down = b.matmul(&format!("blk.{il}.ffn_down"), act, w_down, b_down)?; // [n, n_embd]
        let res = b.add(&format!("blk.{il}.ffn_res"), down, ffn_inp)?;
        let (nw, nb) = (b.weight(&w("layer_output_norm"))?, b.weight(&format!("blk.{il}.layer_output_norm.bias"))?);
        x = b.layer_norm(&format!("blk.{il}.layer_output_norm"), res, Some(nw), Some(nb), hp.eps)?;
        // [n, n_embd]
    }

    if hp.pooling == POOLING_NONE {
        b.output_embedding("embd_tokens", x)?; // [n, n_embd]
    } else {
        let pooled = b.pool("embd_pool", x, hp.pooling)?; // [s, n_embd]
                                                          // eps as torch.nn.functional.normalize's (sentence-transformers' Normalize module).
        let normed = b.l2_norm("embd_norm", pooled, 1e-12)?;
        b.output_embedding("embd", normed)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (4) Export.
// ---------------------------------------------------------------------------------------------

rocmforge_abi::export_plugin! {
    name: "bert",
    version: env!("CARGO_PKG_VERSION"),
    archs: ARCHS,
    tensors: TENSORS,
    config: CONFIG,
    build: build,
}
