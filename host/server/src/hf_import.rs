//! `/api/create` from a Hugging Face model directory on the server's disk: the directory
//! (`config.json` + `*.safetensors` or `pytorch_model*.bin`) is opened through the plugin
//! registry (the architecture's tensor and config maps, as `run` and `rocmforge quantize` do)
//! and written as a GGUF, its `tokenizer.json` becoming `tokenizer.ggml.*` keys.
//!
//! Everything that can be wrong with the directory is found by [`open`], before the response
//! starts, so that it is a 400 naming the problem and nothing is registered.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use rocmforge_model::gguf::GgufValue;
use rocmforge_model::quantize::QuantInput;
use rocmforge_model::ModelError;
use rocmforge_quant::GgmlType;
use rocmforge_runtime::{ModelSource, Registry};

/// An opened HF directory as quantizer input, with the tokenizer metadata made from its
/// `tokenizer.json` (empty when it has none).
pub struct HfInput {
    pub src: ModelSource,
    pub tokenizer: Vec<(String, GgufValue)>,
}

impl HfInput {
    /// The name of the directory's tensor type (`F32`, `F16`, `BF16`) for the progress line:
    /// the most common type among its tensors.
    pub fn source_type(&self) -> String {
        let mut counts: Vec<(GgmlType, usize)> = Vec::new();
        for (_, ty, _) in self.tensors() {
            match counts.iter_mut().find(|(t, _)| *t == ty) {
                Some((_, n)) => *n += 1,
                None => counts.push((ty, 1)),
            }
        }
        counts.iter().max_by_key(|(_, n)| *n).map_or_else(|| "source".into(), |(t, _)| t.name().to_uppercase())
    }
}

impl QuantInput for HfInput {
    fn metadata(&self) -> Vec<(String, GgufValue)> {
        let mut md = self.src.metadata();
        // The tokenizer travels in the GGUF (the loader builds it from these keys).
        let extra: Vec<_> = self.tokenizer.iter().filter(|(k, _)| !md.iter().any(|(m, _)| m == k)).cloned().collect();
        md.extend(extra);
        md
    }
    fn tensors(&self) -> Vec<(String, GgmlType, Vec<u64>)> {
        self.src
            .tensor_names()
            .into_iter()
            .filter_map(|n| self.src.tensor_info(&n).map(|(ty, d)| (n, ty, d.into_iter().map(|x| x as u64).collect())))
            .collect()
    }
    fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        self.src.weight(name).and_then(|w| w.to_f32()).map_err(|e| ModelError::Other(e.to_string()))
    }
    fn arch(&self) -> Result<String, ModelError> {
        Ok(self.src.arch().to_string())
    }
    fn tensor_raw(&self, _name: &str) -> Result<Option<Cow<'_, [u8]>>, ModelError> {
        Ok(None)
    }
    fn source_path(&self) -> PathBuf {
        self.src.path().to_path_buf()
    }
}

/// Whether `dir` looks like an HF model directory (has a `config.json`): what `from` means
/// when it names a directory.
pub fn has_config(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

/// Open `dir` for conversion. The error says what is wrong: not a directory, no `config.json`,
/// no weights, an architecture no plugin serves, a malformed config or tokenizer.
pub fn open(dir: &Path, registry: Option<&Registry>) -> Result<HfInput, String> {
    let shown = dir.display();
    if !dir.is_dir() {
        return Err(format!("{shown} is not a directory: 'from' must name a GGUF file, a Hugging Face model directory or a model"));
    }
    if !has_config(dir) {
        return Err(format!("{shown} has no config.json: not a Hugging Face model directory"));
    }
    let has_weights = std::fs::read_dir(dir).map_err(|e| format!("{shown}: {e}"))?.filter_map(Result::ok).any(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.ends_with(".safetensors") || (n.starts_with("pytorch_model") && n.ends_with(".bin"))
    });
    if !has_weights {
        return Err(format!("{shown} has no *.safetensors or pytorch_model*.bin weights"));
    }
    let registry = registry.ok_or_else(|| "this server has no model plugins to convert Hugging Face directories with".to_string())?;
    let src = ModelSource::open(dir, registry).map_err(|e| format!("{shown}: {e}"))?;
    let tokenizer = if rocmforge_tokenizer::has_hf_tokenizer(dir) {
        rocmforge_tokenizer::hf_tokenizer_gguf_metadata(dir).map_err(|e| format!("converting the tokenizer of {shown}: {e}"))?
    } else {
        tracing::warn!("{shown}: no tokenizer.json; the converted GGUF gets no tokenizer");
        Vec::new()
    };
    Ok(HfInput { src, tokenizer })
}
