//! `rocmforge quantize IN OUT TYPE`: llama-quantize's job with a progress bar. A GGUF input goes
//! straight to the model crate's quantizer; a Hugging Face directory is first mapped to GGUF
//! names and metadata by its architecture plugin (the same path `run` uses), so the output is
//! what llama.cpp's converter + quantizer would produce for the weights. The directory's
//! `tokenizer.json` becomes `tokenizer.ggml.*` keys (`rocmforge_tokenizer::hf_tokenizer_gguf_metadata`);
//! a tokenizer it cannot convert fails the command, a missing one only warns.

use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rocmforge_model::quantize::{quantize_file, quantize_model, FileType, QuantizeOptions, QuantizeReport};
use rocmforge_runtime::{ModelSource, Registry};
// The HF directory as quantizer input: the same adapter `/api/create` converts with.
use rocmforge_server::hf_import::HfInput;

pub fn run(
    input: &Path,
    output: &Path,
    ty: &str,
    threads: usize,
    allow_requantize: bool,
    pure: bool,
    registry: impl FnOnce() -> Registry,
) -> Result<QuantizeReport> {
    let ftype = FileType::from_name(ty)?;
    let mut opts = QuantizeOptions::new(ftype);
    opts.n_threads = threads;
    opts.allow_requantize = allow_requantize;
    opts.pure = pure;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} quantizing [{bar:40}] {pos}/{len} tensors {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let progress = |done: usize, total: usize, name: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    };
    let report = if input.is_dir() {
        let reg = registry();
        let src = ModelSource::open(input, &reg).with_context(|| format!("opening {}", input.display()))?;
        let tok = if rocmforge_tokenizer::has_hf_tokenizer(input) {
            rocmforge_tokenizer::hf_tokenizer_gguf_metadata(input)
                .with_context(|| format!("converting the tokenizer of {}", input.display()))?
        } else {
            tracing::warn!("{}: no tokenizer.json; the GGUF gets no tokenizer", input.display());
            Vec::new()
        };
        quantize_model(&HfInput { src, tokenizer: tok }, output, &opts, &progress)?
    } else {
        quantize_file(input, output, &opts, &progress)?
    };
    bar.finish_and_clear();
    Ok(report)
}
