//! Models found in plain folders (`rocmforge serve --models-dir DIR`): every `*.gguf` file and
//! every Hugging Face directory (a `config.json` next to `*.safetensors`) directly inside DIR, each
//! under a name derived from its file name the way users write it:
//!
//! ```text
//! SmolLM2-135M-Instruct.Q4_1.gguf      -> smollm2-135m-instruct:q4_1
//! all-MiniLM-L6-v2-f16.gguf            -> all-minilm-l6-v2:f16
//! qwen2.5-coder-0.5b-instruct-q4_k_m.gguf -> qwen2.5-coder-0.5b-instruct:q4_k_m
//! Qwen2.5-0.5B-Instruct/ (HF dir)      -> qwen2.5-0.5b-instruct:latest
//! ```
//!
//! Invariants: a derived name always parses as a [`ModelName`] (characters outside the grammar
//! become `-`); split GGUF shards other than the first (`-00002-of-00003`) are not listed.

use std::path::{Path, PathBuf};

use crate::name::ModelName;

/// A model file or directory found on disk.
#[derive(Clone, Debug)]
pub struct Discovered {
    pub name: ModelName,
    pub path: PathBuf,
}

/// Quantization names that may end a GGUF file name (case-insensitive).
fn is_quant(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    let known = ["f32", "f16", "bf16", "fp16", "fp32"];
    if known.contains(&s.as_str()) {
        return true;
    }
    // q4_0, q4_k_m, q8_0, iq2_xxs, tq1_0, mxfp4 ...
    let rest = s.strip_prefix("iq").or_else(|| s.strip_prefix("tq")).or_else(|| s.strip_prefix('q'));
    match rest {
        Some(r) => r.chars().next().is_some_and(|c| c.is_ascii_digit()) && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        None => s == "mxfp4",
    }
}

fn sanitize(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c.to_ascii_lowercase() } else { '-' }).collect();
    while out.starts_with(['.', '-']) {
        out.remove(0);
    }
    out.truncate(80);
    if out.is_empty() {
        out.push_str("model");
    }
    out
}

/// The name a file or directory is listed under.
pub fn derive_name(path: &Path) -> Option<ModelName> {
    let file = path.file_name()?.to_str()?;
    let (model, tag) = if path.is_dir() {
        (file.to_string(), "latest".to_string())
    } else {
        let stem = file.strip_suffix(".gguf").or_else(|| file.strip_suffix(".GGUF"))?;
        // Split shards: keep the first only, named without the shard suffix.
        let stem = match stem.rfind("-of-") {
            Some(i) if stem.len() >= i + 9 && stem[..i].len() >= 6 => {
                let shard = &stem[i - 5..i];
                if shard != "00001" {
                    return None;
                }
                &stem[..i - 6]
            }
            _ => stem,
        };
        match stem.rfind(['.', '-']) {
            Some(i) if is_quant(&stem[i + 1..]) => (stem[..i].to_string(), stem[i + 1..].to_string()),
            _ => (stem.to_string(), "latest".to_string()),
        }
    };
    ModelName::parse(&format!("{}:{}", sanitize(&model), sanitize(&tag))).ok()
}

/// A Hugging Face model directory: `config.json` and weights as safetensors or PyTorch `.bin`
/// checkpoints (read without executing code, `rocmforge_model::torch_bin`).
fn is_hf_dir(p: &Path) -> bool {
    p.join("config.json").is_file()
        && std::fs::read_dir(p).into_iter().flatten().flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.ends_with(".safetensors") || (n.starts_with("pytorch_model") && n.ends_with(".bin"))
        })
}

/// The models directly inside `dir`, sorted by name.
pub fn discover(dir: &Path) -> Vec<Discovered> {
    let mut out: Vec<Discovered> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| (p.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf"))) || (p.is_dir() && is_hf_dir(p)))
        .filter_map(|p| Some(Discovered { name: derive_name(&p)?, path: p }))
        .collect();
    out.sort_by_key(|d| d.name.key());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        derive_name(Path::new(s)).map(|n| n.display_shortest()).unwrap_or_default()
    }

    #[test]
    fn names_from_files() {
        assert_eq!(n("/m/SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2-135m-instruct:q4_1");
        assert_eq!(n("/m/all-MiniLM-L6-v2-f16.gguf"), "all-minilm-l6-v2:f16");
        assert_eq!(n("/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), "qwen2.5-coder-0.5b-instruct:q4_k_m");
        assert_eq!(n("/m/gemma-3-270m-q4_k_m.gguf"), "gemma-3-270m:q4_k_m");
        assert_eq!(n("/m/model.gguf"), "model:latest");
        assert_eq!(n("/m/My Model (v2).gguf"), "my-model--v2-:latest");
        assert_eq!(n("/m/big-Q4_K_M-00001-of-00003.gguf"), "big:q4_k_m");
        assert_eq!(n("/m/big-Q4_K_M-00002-of-00003.gguf"), "");
        assert_eq!(n("/m/notes.txt"), "");
    }
}
