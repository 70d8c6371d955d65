//! A model summary for `rocmforge show`: what `ollama show` prints (architecture, parameters,
//! context length, embedding length, quantization, license, stop tokens) plus the tokenizer,
//! whether a chat template is present, and a tensor table summary.
//!
//! Works on GGUF files and Hugging Face directories alike. Counts come from the tensor table,
//! not from metadata claims, so a lying header cannot make the summary lie.

use std::collections::BTreeMap;
use std::path::Path;

use rocmforge_quant::GgmlType;

use crate::gguf::{GgufFile, GgufValue};
use crate::hf::HfModelDir;
use crate::ModelError;

/// One row of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorRow {
    pub name: String,
    pub ty: String,
    /// Dims as the file stores them (GGUF: ne0 first; HF: outermost first).
    pub shape: Vec<u64>,
}

/// Everything `show` prints.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    pub format: String,
    pub architecture: String,
    pub name: Option<String>,
    pub n_params: u64,
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
    pub block_count: Option<u64>,
    pub head_count: Option<u64>,
    pub head_count_kv: Option<u64>,
    pub quantization: String,
    pub file_bytes: u64,
    pub tokenizer: Option<String>,
    pub vocab_size: Option<u64>,
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub chat_template: Option<String>,
    pub license: Option<String>,
    /// Tensor count per type name.
    pub type_counts: BTreeMap<String, usize>,
    pub tensors: Vec<TensorRow>,
}

/// llama.cpp's `general.file_type` names (LLAMA_FTYPE_MOSTLY_*).
pub fn file_type_name(id: u64) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        _ => return None,
    })
}

/// Parameter count the way Ollama prints it: `134.52M`, `1.78B`.
pub fn human_params(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.2}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

fn most_common(counts: &BTreeMap<String, usize>, skip_f32: bool) -> String {
    counts
        .iter()
        .filter(|(t, _)| !(skip_f32 && t.as_str() == "F32"))
        .max_by_key(|(_, c)| **c)
        .map(|(t, _)| t.clone())
        .unwrap_or_else(|| "F32".into())
}

impl ModelInfo {
    /// Summarise a GGUF file or an HF directory.
    pub fn open(path: &Path) -> Result<ModelInfo, ModelError> {
        if path.is_dir() {
            Ok(Self::from_hf(&HfModelDir::open(path)?))
        } else {
            Self::from_gguf(&GgufFile::open(path)?)
        }
    }

    pub fn from_gguf(f: &GgufFile) -> Result<ModelInfo, ModelError> {
        let arch = f.architecture()?.to_string();
        let u = |k: &str| f.get(&format!("{arch}.{k}")).and_then(GgufValue::as_u64);
        let s = |k: &str| f.get(k).and_then(GgufValue::as_str).map(str::to_string);
        let mut type_counts = BTreeMap::new();
        let mut n_params = 0u64;
        let tensors: Vec<TensorRow> = f
            .tensors()
            .iter()
            .map(|t| {
                *type_counts.entry(t.ty.name().to_string()).or_insert(0) += 1;
                n_params += t.n_elements();
                TensorRow { name: t.name.clone(), ty: t.ty.name().to_string(), shape: t.dims.clone() }
            })
            .collect();
        let quantization = f
            .get("general.file_type")
            .and_then(GgufValue::as_u64)
            .and_then(file_type_name)
            .map(str::to_string)
            .unwrap_or_else(|| most_common(&type_counts, true));
        let tokens = f.get("tokenizer.ggml.tokens").and_then(GgufValue::as_array).and_then(|a| a.as_str_slice());
        let tok_name = |key: &str| {
            let id = f.get(key).and_then(GgufValue::as_u64)? as usize;
            tokens.and_then(|t| t.get(id)).cloned()
        };
        let tokenizer = s("tokenizer.ggml.model").map(|m| match s("tokenizer.ggml.pre") {
            Some(p) => format!("{m} (pre-tokenizer {p})"),
            None => m,
        });
        Ok(ModelInfo {
            format: format!("GGUF v{}", f.version()),
            name: s("general.name"),
            n_params,
            context_length: u("context_length"),
            embedding_length: u("embedding_length"),
            block_count: u("block_count"),
            head_count: u("attention.head_count"),
            head_count_kv: u("attention.head_count_kv"),
            quantization,
            file_bytes: f.as_bytes().len() as u64,
            tokenizer,
            vocab_size: tokens.map(|t| t.len() as u64),
            bos: tok_name("tokenizer.ggml.bos_token_id"),
            eos: tok_name("tokenizer.ggml.eos_token_id"),
            chat_template: s("tokenizer.chat_template"),
            license: s("general.license"),
            architecture: arch,
            type_counts,
            tensors,
        })
    }

    pub fn from_hf(d: &HfModelDir) -> ModelInfo {
        let cfg = d.config();
        let u = |k: &str| cfg.get(k).and_then(|v| v.as_u64());
        let mut type_counts = BTreeMap::new();
        let mut n_params = 0u64;
        let tensors: Vec<TensorRow> = d
            .tensors()
            .into_iter()
            .map(|t| {
                *type_counts.entry(t.dtype.name().to_string()).or_insert(0) += 1;
                n_params += t.n_elements();
                TensorRow { name: t.name.clone(), ty: t.dtype.name().to_string(), shape: t.shape.clone() }
            })
            .collect();
        let tc = d.tokenizer_config();
        let tok_str = |k: &str| {
            tc.and_then(|c| c.get(k))
                .and_then(|v| v.as_str().map(str::to_string).or_else(|| v.get("content")?.as_str().map(str::to_string)))
        };
        let file_bytes = d.shard_paths().iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        let tokenizer = d.tokenizer_json_path().map(|p| {
            let model = std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|j| j.get("model")?.get("type")?.as_str().map(str::to_string))
                .unwrap_or_else(|| "?".into());
            format!("tokenizer.json ({model})")
        });
        ModelInfo {
            format: "safetensors (Hugging Face directory)".into(),
            architecture: d.architectures().first().cloned().unwrap_or_else(|| "unknown".into()),
            name: d.path().file_name().and_then(|n| n.to_str()).map(str::to_string),
            n_params,
            context_length: u("max_position_embeddings"),
            embedding_length: u("hidden_size"),
            block_count: u("num_hidden_layers"),
            head_count: u("num_attention_heads"),
            head_count_kv: u("num_key_value_heads"),
            quantization: most_common(&type_counts, false),
            file_bytes,
            tokenizer,
            vocab_size: u("vocab_size"),
            bos: tok_str("bos_token"),
            eos: tok_str("eos_token"),
            chat_template: d.chat_template(),
            license: None,
            type_counts,
            tensors,
        }
    }

    /// The text `rocmforge show` prints, laid out like `ollama show`.
    pub fn render(&self, verbose: bool) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let row = |o: &mut String, k: &str, v: &str| {
            let _ = writeln!(o, "    {k:<20}{v}");
        };
        let _ = writeln!(o, "  Model");
        row(&mut o, "architecture", &self.architecture);
        if let Some(n) = &self.name {
            row(&mut o, "name", n);
        }
        row(&mut o, "parameters", &human_params(self.n_params));
        if let Some(v) = self.context_length {
            row(&mut o, "context length", &v.to_string());
        }
        if let Some(v) = self.embedding_length {
            row(&mut o, "embedding length", &v.to_string());
        }
        if let Some(v) = self.block_count {
            row(&mut o, "block count", &v.to_string());
        }
        if let Some(h) = self.head_count {
            let kv = self.head_count_kv.map(|k| format!(" (kv {k})")).unwrap_or_default();
            row(&mut o, "attention heads", &format!("{h}{kv}"));
        }
        row(&mut o, "quantization", &self.quantization);
        row(&mut o, "format", &self.format);
        row(&mut o, "size", &format!("{:.1} MiB", self.file_bytes as f64 / (1 << 20) as f64));
        let _ = writeln!(o, "\n  Tokenizer");
        row(&mut o, "model", self.tokenizer.as_deref().unwrap_or("none"));
        if let Some(v) = self.vocab_size {
            row(&mut o, "vocab size", &v.to_string());
        }
        if let Some(b) = &self.bos {
            row(&mut o, "bos token", b);
        }
        if let Some(e) = &self.eos {
            row(&mut o, "eos token", e);
        }
        let _ = writeln!(o, "\n  Chat template");
        match &self.chat_template {
            Some(t) => row(&mut o, "template", &format!("{} chars (rocmforge show --template prints it)", t.len())),
            None => row(&mut o, "template", "none (ChatML will be used)"),
        }
        let _ = writeln!(o, "\n  Tensors");
        row(&mut o, "count", &self.tensors.len().to_string());
        let types: Vec<String> = self.type_counts.iter().map(|(t, c)| format!("{t} {c}")).collect();
        row(&mut o, "types", &types.join(", "));
        if verbose {
            for t in &self.tensors {
                let _ = writeln!(o, "    {:<40}{:<8}{:?}", t.name, t.ty, t.shape);
            }
        }
        if let Some(l) = &self.license {
            let _ = writeln!(o, "\n  License\n    {l}");
        }
        o
    }

    /// Tensor types in use, parsed (for callers that need GgmlType).
    pub fn ggml_types(&self) -> Vec<GgmlType> {
        self.type_counts.keys().filter_map(|t| GgmlType::from_name(t).ok()).collect()
    }
}
