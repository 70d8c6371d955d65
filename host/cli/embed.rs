//! `rocmforge embed MODEL TEXT...`: sentence embeddings of an encoder model (BERT), one JSON
//! object per run: `{"model", "embeddings": [[f32; n_embd], ...]}` in the order of the texts.
//!
//! Each text is tokenized with the model's own tokenizer, special tokens added as it says
//! ([CLS] ... [SEP] for BERT), and run as one whole sequence: the plugin's POOL op needs the
//! sequence in one chunk. The vectors are what the plugin's graph outputs (for sentence-transformers
//! models: mean-pooled and L2-normalised). Modelled on llama.cpp's `llama-embedding` and Ollama's
//! `/api/embed` (which also returns a list of vectors).

use std::path::Path;

use anyhow::{bail, Context, Result};
use rocmforge_runtime::exec::{KvConfig, Logits, SeqChunk};
use rocmforge_runtime::{build_graph, Executor, ModelSource, Registry};
use rocmforge_tokenizer::Tokenizer;

const KV_BLOCK: usize = 16;

/// Embeddings of `texts`, one vector per text.
pub fn run(model: &Path, texts: &[String], registry: &Registry) -> Result<Vec<Vec<f32>>> {
    if !model.exists() {
        bail!("model not found: {}", model.display());
    }
    let src = ModelSource::open(model, registry)?;
    let plugin = registry.for_gguf_arch(src.arch())?;
    let graph = build_graph(plugin, &src)?;
    let n_ctx = src.meta(&format!("{}.context_length", src.arch())).and_then(|v| v.as_u64()).unwrap_or(512) as usize;
    let n_blocks = n_ctx.max(1).div_ceil(KV_BLOCK);
    let mut exec = Executor::new(graph, &src, KvConfig { block_size: KV_BLOCK, n_blocks })?;
    if !exec.is_embedding() {
        bail!("{} ({}) is not an embedding model: its graph outputs logits", model.display(), src.arch());
    }
    let tok = match (src.gguf(), src.hf()) {
        (Some(f), _) => Tokenizer::from_gguf(f),
        (None, Some(d)) => Tokenizer::from_hf_dir(d.path()),
        _ => bail!("unsupported model container"),
    }
    .with_context(|| format!("tokenizer of {}", model.display()))?;
    let table: Vec<u32> = (0..n_blocks as u32).collect();
    let n_embd = exec.n_out_cols();
    let mut out = Vec::with_capacity(texts.len());
    for text in texts {
        let ids = tok.encode(text, true, false).context("tokenizing")?;
        if ids.is_empty() || ids.len() > n_ctx {
            bail!("text of {} tokens does not fit the model's {n_ctx} positions: {text:?}", ids.len());
        }
        let c = SeqChunk { tokens: &ids, pos_start: 0, block_table: &table, logits: Logits::Last };
        let v = exec.forward(std::slice::from_ref(&c))?;
        if v.len() != n_embd {
            bail!(
                "{} outputs {} values for one text, expected one pooled row of {n_embd} (a model without pooling?)",
                model.display(),
                v.len()
            );
        }
        out.push(v);
    }
    Ok(out)
}
