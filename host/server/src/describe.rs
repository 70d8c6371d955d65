//! What the inventory endpoints say about a model without loading it: Ollama's `details`
//! object, `capabilities`, and `/api/show`'s `model_info` (the GGUF metadata), read from the
//! file header (a memory map: no weights are touched).
//!
//! Capability rules follow Ollama's `Capabilities` (spec §1.12): `<arch>.pooling_type` or an
//! encoder architecture means `embedding`, otherwise `completion`; a chat template that
//! mentions `tools` gives `tools`, one with `<think>` gives `thinking`; FIM tokens give `insert`.

use std::path::Path;

use rocmforge_model::gguf::{GgufArray, GgufFile, GgufValue};
use serde_json::{json, Map, Value as Json};

use crate::manager::Resolved;

/// Facts read from a model file's header.
#[derive(Clone, Debug, Default)]
pub struct FileFacts {
    pub family: String,
    pub parameter_size: String,
    pub quantization: String,
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
    pub chat_template: Option<String>,
    pub capabilities: Vec<&'static str>,
    pub license: Option<String>,
}

const ENCODER_ARCHS: &[&str] = &["bert", "nomic-bert", "jina-bert-v2", "t5encoder"];

pub fn capabilities(arch: &str, embedding: bool, template: Option<&str>, has_fim: bool) -> Vec<&'static str> {
    let mut c = Vec::new();
    if embedding || ENCODER_ARCHS.contains(&arch) {
        c.push("embedding");
        return c;
    }
    c.push("completion");
    if let Some(t) = template {
        if t.contains("tools") || t.contains("tool_call") {
            c.push("tools");
        }
        if t.contains("<think>") {
            c.push("thinking");
        }
    }
    if has_fim {
        c.push("insert");
    }
    c
}

pub fn file_facts(path: &Path) -> FileFacts {
    let Ok(info) = rocmforge_model::info::ModelInfo::open(path) else { return FileFacts::default() };
    let (pooling, fim) = match GgufFile::open(path) {
        Ok(f) => {
            let pooling = f.get(&format!("{}.pooling_type", info.architecture)).is_some();
            let fim = f.get("tokenizer.ggml.fim_pre_token_id").is_some()
                || f.get("tokenizer.ggml.tokens")
                    .and_then(GgufValue::as_array)
                    .and_then(|a| a.as_str_slice())
                    .is_some_and(|t| t.iter().any(|s| s == "<|fim_prefix|>" || s == "<fim_prefix>" || s == "<fim-prefix>"));
            (pooling, fim)
        }
        Err(_) => (false, false),
    };
    FileFacts {
        capabilities: capabilities(&info.architecture, pooling, info.chat_template.as_deref(), fim),
        family: info.architecture.clone(),
        parameter_size: rocmforge_model::info::human_params(info.n_params),
        quantization: info.quantization.clone(),
        context_length: info.context_length,
        embedding_length: info.embedding_length,
        chat_template: info.chat_template.clone(),
        license: info.license.clone(),
    }
}

/// Ollama's `details` object.
pub fn details(r: &Resolved, f: &FileFacts) -> Json {
    let (family, ptype, quant) = match &r.stored {
        Some(s) if !s.config.model_family.is_empty() => {
            (s.config.model_family.clone(), s.config.model_type.clone(), s.config.file_type.clone())
        }
        _ => (f.family.clone(), f.parameter_size.clone(), f.quantization.clone()),
    };
    let families = match &r.stored {
        Some(s) => s.config.model_families.clone().map(Json::from).unwrap_or(Json::Null),
        None => json!([family]),
    };
    let parent = r.stored.as_ref().map(|s| s.parent.clone()).unwrap_or_default();
    json!({
        "parent_model": parent,
        "format": "gguf",
        "family": family,
        "families": families,
        "parameter_size": ptype,
        "quantization_level": quant,
    })
}

fn value_json(v: &GgufValue, verbose: bool) -> Json {
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F32(x) => json!(x),
        GgufValue::F64(x) => json!(x),
        GgufValue::Bool(x) => json!(x),
        GgufValue::Str(s) => json!(s),
        GgufValue::Array(a) => {
            if !verbose && a.len() > 5 {
                return Json::Null;
            }
            array_json(a)
        }
    }
}

fn array_json(a: &GgufArray) -> Json {
    match a {
        GgufArray::U8(v) => json!(v),
        GgufArray::I8(v) => json!(v),
        GgufArray::U16(v) => json!(v),
        GgufArray::I16(v) => json!(v),
        GgufArray::U32(v) => json!(v),
        GgufArray::I32(v) => json!(v),
        GgufArray::U64(v) => json!(v),
        GgufArray::I64(v) => json!(v),
        GgufArray::F32(v) => json!(v),
        GgufArray::F64(v) => json!(v),
        GgufArray::Bool(v) => json!(v),
        GgufArray::Str(v) => json!(v),
        GgufArray::Array(v) => Json::Array(v.iter().map(array_json).collect()),
    }
}

/// `model_info`: GGUF metadata minus `general.name` and the chat template; long arrays are
/// `null` unless `verbose` (Ollama's rule, so responses stay small). Always an object.
pub fn model_info(path: &Path, verbose: bool) -> Json {
    let mut m = Map::new();
    if path.is_dir() {
        if let Ok(info) = rocmforge_model::info::ModelInfo::open(path) {
            m.insert("general.architecture".into(), json!(info.architecture));
            m.insert("general.parameter_count".into(), json!(info.n_params));
            if let Some(c) = info.context_length {
                m.insert(format!("{}.context_length", info.architecture), json!(c));
            }
            if let Some(e) = info.embedding_length {
                m.insert(format!("{}.embedding_length", info.architecture), json!(e));
            }
        }
        return Json::Object(m);
    }
    if let Ok(f) = GgufFile::open(path) {
        for (k, v) in f.metadata() {
            if k == "general.name" || k == "tokenizer.chat_template" {
                continue;
            }
            m.insert(k.clone(), value_json(v, verbose));
        }
        if !m.contains_key("general.parameter_count") {
            let n: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
            m.insert("general.parameter_count".into(), json!(n));
        }
    }
    Json::Object(m)
}

/// `tensors` of `/api/show` (verbose only).
pub fn tensors(path: &Path) -> Json {
    match rocmforge_model::info::ModelInfo::open(path) {
        Ok(info) => Json::Array(info.tensors.iter().map(|t| json!({"name": t.name, "type": t.ty, "shape": t.shape})).collect()),
        Err(_) => json!([]),
    }
}

/// `parameters` of `/api/show`: one `key value` line per parameter, Go's `%-30s %#v` layout.
pub fn parameters_text(params: &Map<String, Json>) -> String {
    let mut out = String::new();
    for (k, v) in params {
        let vals: Vec<Json> = match v {
            Json::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for v in vals {
            out.push_str(&format!("{k:<30} {v}\n"));
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        assert_eq!(capabilities("bert", false, None, false), vec!["embedding"]);
        assert_eq!(capabilities("llama", false, Some("{% if tools %}<think>"), true), vec!["completion", "tools", "thinking", "insert"]);
        assert_eq!(capabilities("llama", false, None, false), vec!["completion"]);
    }

    #[test]
    fn params_text() {
        let mut m = Map::new();
        m.insert("stop".into(), json!(["<|im_end|>", "x"]));
        m.insert("temperature".into(), json!(0.6));
        let t = parameters_text(&m);
        assert!(t.starts_with("stop                           \"<|im_end|>\"\n"), "{t}");
        assert!(t.ends_with("temperature                    0.6"));
    }
}
