//! `rocmforge embed MODEL TEXT...`: sentence embeddings of an encoder model (BERT), one JSON
//! object per run: `{"model", "embeddings": [[f32; n_embd], ...]}` in the order of the texts.
//!
//! Each text is tokenized with the model's own tokenizer, special tokens added as it says
//! ([CLS] ... [SEP] for BERT), and run as one whole sequence: the plugin's POOL op needs the
//! sequence in one chunk. The vectors are what the plugin's graph outputs (for sentence-transformers
//! models: mean-pooled and L2-normalised). Modelled on llama.cpp's `llama-embedding` and Ollama's
//! `/api/embed` (which also returns a list of vectors).

use std::path::Path;

use anyhow::{Context, Result};
use rocmforge_engine::{EngineConfig, LoadOptions};
use rocmforge_runtime::Registry;

/// Embeddings of `texts`, one vector per text, computed in as few batched forward passes as the
/// engine's token budget allows.
pub fn run(model: &Path, texts: &[String], registry: &Registry) -> Result<Vec<Vec<f32>>> {
    let engine = super::session::start(model, registry, &LoadOptions::default(), EngineConfig::default())?;
    let tok = engine.model().tokenizer().clone();
    let inputs = texts.iter().map(|t| tok.encode(t, true, false).context("tokenizing")).collect::<Result<Vec<_>>>()?;
    Ok(engine.embed_blocking(inputs)?)
}
