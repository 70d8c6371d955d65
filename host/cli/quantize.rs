//! `rocmforge quantize IN OUT TYPE`: llama-quantize's job with a progress bar. A GGUF input goes
//! straight to the model crate's quantizer; a Hugging Face directory is first mapped to GGUF
//! names and metadata by its architecture plugin (the same path `run` uses), so the output is
//! what llama.cpp's converter + quantizer would produce for the weights. The directory's
//! `tokenizer.json` becomes `tokenizer.ggml.*` keys (`rocmforge_tokenizer::hf_tokenizer_gguf_metadata`);
//! a tokenizer it cannot convert fails the command, a missing one only warns.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rocmforge_model::gguf::GgufValue;
use rocmforge_model::quantize::{quantize_file, quantize_model, FileType, QuantInput, QuantizeOptions, QuantizeReport};
use rocmforge_model::ModelError;
use rocmforge_quant::GgmlType;
use rocmforge_runtime::{ModelSource, Registry};

/// A model source (HF directory) seen as quantizer input, with the tokenizer metadata made from
/// its `tokenizer.json`.
struct SourceInput<'a>(&'a ModelSource, Vec<(String, GgufValue)>);

impl QuantInput for SourceInput<'_> {
    fn metadata(&self) -> Vec<(String, GgufValue)> {
        let mut md = self.0.metadata();
        // The tokenizer travels in the GGUF (llama.cpp and `run` build it from these keys).
        md.extend(self.1.iter().filter(|(k, _)| !md.iter().any(|(m, _)| m == k)).cloned().collect::<Vec<_>>());
        md
    }
    fn tensors(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        self.0
            .tensor_names()
            .into_iter()
            .filter_map(|n| self.0.tensor_info(&n).map(|(ty, d)| (n, ty, d.into_iter().map(|x| x as u64).collect())))
            .collect()
    }
    fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        self.0.weight(name).and_then(|w| w.to_f32()).map_err(|e| ModelError::Other(e.to_string()))
    }
    fn arch(&self) -> Result<String, ModelError> {
        Ok(self.0.arch().to_string())
    }
    fn tensor_raw(&self, _name: &str) -> Result<Option<Cow<'_, [u8]>>, ModelError> {
        Ok(None)
    }
    fn source_path(&self) -> PathBuf {
        self.0.path().to_path_buf()
    }
}

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
        quantize_model(&SourceInput(&src, tok), output, &opts, &progress)?
    } else {
        quantize_file(input, output, &opts, &progress)?
    };
    bar.finish_and_clear();
    Ok(report)
}
