//! A Hugging Face tokenizer directory (`tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`) turned into the `tokenizer.ggml.*` metadata llama.cpp's
//! `convert_hf_to_gguf.py` writes, so a GGUF made by `rocmforge quantize HF_DIR ...` carries its
//! tokenizer and loads in llama.cpp.
//!
//! Three families are recognised from `tokenizer.json`:
//! - byte-level BPE (`model.type == "BPE"` with a ByteLevel pre-tokenizer) → `gpt2`, tokens in id
//!   order, merges, token types (NORMAL, CONTROL for special added tokens, USER_DEFINED for the
//!   others) and `tokenizer.ggml.pre`. llama.cpp detects `pre` by hashing a tokenization; we
//!   instead compare the Split regexes of the pre-tokenizer with the regexes of every pre name this
//!   crate implements (`pretokenize::pre_spec`). No match is an error naming the regex, never a guess.
//! - SentencePiece-style BPE with byte fallback, or Unigram → `llama` with scores and token types
//!   (BPE scores are minus the rank of the merge that makes the token, so SPM merging follows the
//!   merge order).
//! - WordPiece → `bert` in llama.cpp's phantom-space form (`##x` → `x`, other non-control `t` → `▁t`).
//!
//! Special ids follow gguf-py `SpecialVocab`: names from `tokenizer_config.json` (bos falls back to
//! cls, eos to sep), `add_bos_token`/`add_eos_token` from it or from a TemplateProcessing
//! post-processor; `generation_config.json` fills bos/eos ids the config does not name.
//!
//! Modelled on llama.cpp `conversion/base.py` (`get_vocab_base`, `_set_vocab_gpt2`),
//! `conversion/bert.py` (`set_vocab`) and gguf-py `vocab.py` (`SpecialVocab`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rocmforge_model::gguf::{GgufArray, GgufValue};
use serde_json::Value;

use crate::pretokenize::{pre_spec, PreSpec};
use crate::TokenizerError;

// gguf-py TokenType
const TT_NORMAL: i32 = 1;
const TT_UNKNOWN: i32 = 2;
const TT_CONTROL: i32 = 3;
const TT_USER_DEFINED: i32 = 4;
const TT_UNUSED: i32 = 5;
const TT_BYTE: i32 = 6;

/// Pre names tried when matching regexes, in order of preference where several share a regex
/// (llama.cpp's canonical names first).
const PRE_NAMES: &[&str] =
    &["gpt-2", "llama3", "smaug-bpe", "qwen2", "qwen35", "starcoder", "deepseek-llm", "deepseek-coder", "falcon", "bloom", "viking"];

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| TokenizerError::Json { path: path.to_path_buf(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io { path: path.to_path_buf(), source }),
    }
}

fn bad(path: &Path, message: impl Into<String>) -> TokenizerError {
    TokenizerError::HfLoad { path: path.to_path_buf(), message: message.into() }
}

/// `"bos_token": "<s>"` or `{"content": "<s>", ...}`.
fn token_name(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// One token of the vocabulary being built.
struct Tok {
    text: String,
    ty: i32,
    score: f32,
}

/// Does `dir` hold a `tokenizer.json`?
pub fn has_hf_tokenizer(dir: &Path) -> bool {
    dir.join("tokenizer.json").is_file()
}

/// The GGUF tokenizer metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`) for the HF
/// tokenizer in `dir`.
pub fn hf_tokenizer_gguf_metadata(dir: &Path) -> Result<Vec<(String, GgufValue)>, TokenizerError> {
    let path = dir.join("tokenizer.json");
    let json = read_json(&path)?.ok_or_else(|| bad(&path, "file not found"))?;
    let cfg = read_json(&dir.join("tokenizer_config.json"))?;
    let gen = read_json(&dir.join("generation_config.json"))?;
    let model = json.get("model").ok_or_else(|| bad(&path, "no 'model' object"))?;
    let model_type = model.get("type").and_then(Value::as_str).unwrap_or("");

    // Base vocabulary: text → id (BPE/WordPiece map) or [piece, score] list (Unigram).
    let mut by_id: HashMap<u32, (String, f32)> = HashMap::new();
    match model.get("vocab") {
        Some(Value::Object(m)) => {
            for (t, id) in m {
                let id = id.as_u64().and_then(|i| u32::try_from(i).ok());
                let id = id.ok_or_else(|| bad(&path, format!("vocab entry '{t}' has no 32-bit integer id")))?;
                by_id.insert(id, (t.clone(), 0.0));
            }
        }
        Some(Value::Array(a)) => {
            for (i, e) in a.iter().enumerate() {
                let t = e.get(0).and_then(Value::as_str).ok_or_else(|| bad(&path, format!("unigram entry {i} has no piece")))?;
                let s = e.get(1).and_then(Value::as_f64).unwrap_or(0.0);
                by_id.insert(i as u32, (t.to_string(), s as f32));
            }
        }
        _ => return Err(bad(&path, "model has no vocab")),
    }
    let mut added: HashMap<u32, (String, bool)> = HashMap::new();
    if let Some(Value::Array(a)) = json.get("added_tokens") {
        for e in a {
            let id = e.get("id").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
            let (Some(id), Some(c)) = (id, e.get("content").and_then(Value::as_str)) else {
                return Err(bad(&path, "added token without a 32-bit id or content"));
            };
            let special = e.get("special").and_then(Value::as_bool).unwrap_or(false);
            added.insert(id, (c.to_string(), special));
        }
    }
    let n_vocab = by_id.keys().chain(added.keys()).map(|&i| i as usize + 1).max().unwrap_or(0);
    // Ids missing below the largest become `[PADi]` tokens. Allow at most as many of those as
    // there are real tokens (plus a little): a huge id in a small file must not make us build
    // billions of tokens (found by fuzz/fuzz_targets/tokenizer_json.rs).
    let n_known = by_id.len() + added.len();
    if n_vocab > 2 * n_known + 1024 {
        return Err(bad(&path, format!("token ids are sparse: the largest is {} for {n_known} tokens", n_vocab - 1)));
    }

    let merges = merges_of(&path, model)?;
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false);
    let pre_tok = json.get("pre_tokenizer").filter(|v| !v.is_null());
    let is_byte_level = pre_tok.map(|p| has_type(p, "ByteLevel")).unwrap_or(false);

    enum Kind {
        Gpt2(&'static str),
        Spm,
        Bert,
    }
    let kind = match model_type {
        "BPE" if is_byte_level => Kind::Gpt2(detect_pre(pre_tok, model)?),
        "BPE" if byte_fallback => Kind::Spm,
        "Unigram" => Kind::Spm,
        "WordPiece" => Kind::Bert,
        other => {
            return Err(bad(
                &path,
                format!(
                    "unsupported tokenizer: model type '{other}' (byte-level BPE, byte-fallback BPE, Unigram and WordPiece are supported)"
                ),
            ))
        }
    };

    // Scores for SPM-style BPE: minus the rank of the merge that produces the token.
    let mut merge_score: HashMap<String, f32> = HashMap::new();
    if matches!(kind, Kind::Spm) && model_type == "BPE" {
        for (rank, m) in merges.iter().enumerate() {
            if let Some((a, b)) = m.split_once(' ') {
                merge_score.entry(format!("{a}{b}")).or_insert(-(rank as f32) - 1.0);
            }
        }
    }
    let unk_text = model
        .get("unk_token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| model.get("unk_id").and_then(Value::as_u64).and_then(|i| by_id.get(&(i as u32)).map(|t| t.0.clone())));

    let mut toks = Vec::with_capacity(n_vocab);
    for i in 0..n_vocab as u32 {
        let tok = if let Some((c, special)) = added.get(&i) {
            let looks_special = looks_special(c);
            if *special || looks_special {
                Tok { text: c.clone(), ty: TT_CONTROL, score: 0.0 }
            } else {
                Tok { text: c.replace('\u{2581}', " "), ty: TT_USER_DEFINED, score: 0.0 }
            }
        } else if let Some((t, s)) = by_id.get(&i) {
            let mut ty = TT_NORMAL;
            let mut score = *s;
            if matches!(kind, Kind::Spm) {
                if Some(t) == unk_text.as_ref() {
                    ty = TT_UNKNOWN;
                } else if is_byte_token(t) {
                    ty = TT_BYTE;
                }
                if model_type == "BPE" {
                    score = merge_score.get(t).copied().unwrap_or(0.0);
                }
            }
            Tok { text: t.clone(), ty, score }
        } else {
            Tok { text: format!("[PAD{i}]"), ty: TT_UNUSED, score: 0.0 }
        };
        toks.push(tok);
    }
    if matches!(kind, Kind::Bert) {
        for t in &mut toks {
            if t.ty == TT_CONTROL {
                continue;
            }
            t.text = match t.text.strip_prefix("##") {
                Some(rest) => rest.to_string(),
                None => format!("\u{2581}{}", t.text),
            };
        }
    }

    let mut md: Vec<(String, GgufValue)> = Vec::new();
    let mut put = |k: &str, v: GgufValue| md.push((k.to_string(), v));
    match kind {
        Kind::Gpt2(pre) => {
            put("tokenizer.ggml.model", GgufValue::Str("gpt2".into()));
            put("tokenizer.ggml.pre", GgufValue::Str(pre.into()));
        }
        Kind::Spm => {
            put("tokenizer.ggml.model", GgufValue::Str("llama".into()));
            put("tokenizer.ggml.pre", GgufValue::Str("default".into()));
        }
        Kind::Bert => {
            put("tokenizer.ggml.model", GgufValue::Str("bert".into()));
            put("tokenizer.ggml.pre", GgufValue::Str("default".into()));
        }
    }
    // Special ids are looked up by their HF texts (the bert phantom form renames non-control tokens).
    let mut hf_ids: HashMap<String, u32> = by_id.iter().map(|(i, (t, _))| (t.clone(), *i)).collect();
    for (i, (c, _)) in &added {
        hf_ids.insert(c.clone(), *i);
    }
    put("tokenizer.ggml.tokens", GgufValue::Array(GgufArray::Str(toks.iter().map(|t| t.text.clone()).collect())));
    if matches!(kind, Kind::Spm) {
        put("tokenizer.ggml.scores", GgufValue::Array(GgufArray::F32(toks.iter().map(|t| t.score).collect())));
    }
    put("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(toks.iter().map(|t| t.ty).collect())));
    if matches!(kind, Kind::Gpt2(_)) {
        put("tokenizer.ggml.merges", GgufValue::Array(GgufArray::Str(merges)));
    }

    // Special tokens (gguf-py SpecialVocab).
    let cfg_name = |k: &str| cfg.as_ref().and_then(|c| token_name(c.get(k)));
    let mut names: Vec<(&str, Option<String>)> =
        ["bos", "eos", "unk", "sep", "pad", "cls", "mask"].iter().map(|k| (*k, cfg_name(&format!("{k}_token")))).collect();
    let get_name = |names: &Vec<(&str, Option<String>)>, k: &str| names.iter().find(|(n, _)| *n == k).and_then(|(_, v)| v.clone());
    let (mut add_bos, mut add_eos) = (None, None);
    if let Some(pp) = json.get("post_processor").filter(|v| !v.is_null()) {
        let procs: Vec<&Value> = match pp.get("processors").and_then(Value::as_array) {
            Some(a) => a.iter().collect(),
            None => vec![pp],
        };
        for p in procs {
            match p.get("type").and_then(Value::as_str) {
                Some("ByteLevel") => {
                    add_bos.get_or_insert(false);
                    add_eos.get_or_insert(false);
                }
                Some("TemplateProcessing") => {
                    let single = p.get("single").and_then(Value::as_array).cloned().unwrap_or_default();
                    if single.len() > 1 {
                        let sp =
                            |v: Option<&Value>| v.and_then(|e| e.pointer("/SpecialToken/id")).and_then(Value::as_str).map(str::to_string);
                        let bos = get_name(&names, "bos").or_else(|| get_name(&names, "cls"));
                        let eos = get_name(&names, "eos").or_else(|| get_name(&names, "sep"));
                        if let Some(first) = sp(single.first()) {
                            add_bos = Some(Some(&first) == bos.as_ref() || bos.is_none());
                            if bos.is_none() {
                                names[0].1 = Some(first);
                            }
                        }
                        if let Some(last) = sp(single.last()) {
                            add_eos = Some(Some(&last) == eos.as_ref() || eos.is_none());
                            if eos.is_none() {
                                names[1].1 = Some(last);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // bos falls back to cls, eos to sep (SpecialVocab).
    if names[0].1.is_none() {
        names[0].1 = get_name(&names, "cls");
    }
    if names[1].1.is_none() {
        names[1].1 = get_name(&names, "sep");
    }
    if let Some(c) = &cfg {
        if let Some(b) = c.get("add_bos_token").and_then(Value::as_bool) {
            add_bos = Some(b);
        }
        if let Some(b) = c.get("add_eos_token").and_then(Value::as_bool) {
            add_eos = Some(b);
        }
    }
    let gen_id = |k: &str| -> Option<u32> {
        let v = gen.as_ref()?.get(k)?;
        match v {
            Value::Number(n) => n.as_u64().and_then(|x| u32::try_from(x).ok()),
            Value::Array(a) => a.first().and_then(Value::as_u64).and_then(|x| u32::try_from(x).ok()),
            _ => None,
        }
    };
    let key_of = |k: &str| match k {
        "unk" => "tokenizer.ggml.unknown_token_id".to_string(),
        "sep" => "tokenizer.ggml.seperator_token_id".to_string(),
        "pad" => "tokenizer.ggml.padding_token_id".to_string(),
        other => format!("tokenizer.ggml.{other}_token_id"),
    };
    for (k, name) in &names {
        let mut id = name.as_ref().and_then(|n| hf_ids.get(n).copied());
        if id.is_none() && matches!(*k, "bos" | "eos") {
            id = gen_id(&format!("{k}_token_id"));
        }
        if id.is_none() && *k == "unk" {
            id = unk_text.as_ref().and_then(|n| hf_ids.get(n).copied());
        }
        if let Some(id) = id.filter(|&i| (i as usize) < n_vocab) {
            put(&key_of(k), GgufValue::U32(id));
        }
    }
    if let Some(b) = add_bos {
        put("tokenizer.ggml.add_bos_token", GgufValue::Bool(b));
    }
    if let Some(b) = add_eos {
        put("tokenizer.ggml.add_eos_token", GgufValue::Bool(b));
    }
    if let Some(t) = cfg.as_ref().and_then(|c| c.get("chat_template")).and_then(Value::as_str) {
        put("tokenizer.chat_template", GgufValue::Str(t.to_string()));
    } else if let Some(t) = read_chat_template_file(dir)? {
        put("tokenizer.chat_template", GgufValue::Str(t));
    }
    Ok(md)
}

/// `chat_template.jinja` (newer transformers write the template there).
fn read_chat_template_file(dir: &Path) -> Result<Option<String>, TokenizerError> {
    let p: PathBuf = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io { path: p, source }),
    }
}

/// `<0xAB>`.
fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// llama.cpp `does_token_look_special`: added tokens some models forget to mark special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{FF5C}") && t.ends_with("\u{FF5C}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Merges as "a b" strings (the list-of-pairs form since transformers 4.45 encodes spaces as U+0120,
/// as gguf-py does).
fn merges_of(path: &Path, model: &Value) -> Result<Vec<String>, TokenizerError> {
    let Some(Value::Array(a)) = model.get("merges") else { return Ok(Vec::new()) };
    let enc = |s: &str| s.chars().map(|c| if c == ' ' { '\u{120}' } else { c }).collect::<String>();
    a.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(x), Some(y)) => Ok(format!("{} {}", enc(x), enc(y))),
                _ => Err(bad(path, "merge pair is not two strings")),
            },
            _ => Err(bad(path, "unknown merges format")),
        })
        .collect()
}

fn has_type(v: &Value, ty: &str) -> bool {
    if v.get("type").and_then(Value::as_str) == Some(ty) {
        return true;
    }
    v.get("pretokenizers").and_then(Value::as_array).map(|a| a.iter().any(|p| has_type(p, ty))).unwrap_or(false)
}

/// HF spells the contraction alternatives case-insensitively; llama.cpp (and `pretokenize`) with
/// explicit classes. Same language, so normalise before comparing.
fn normalise_regex(r: &str) -> String {
    r.replace("(?i:'s|'t|'re|'ve|'m|'ll|'d)", "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])")
}

/// GPT-2's regex, which a ByteLevel pre-tokenizer with `use_regex` applies.
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// `tokenizer.ggml.pre` for a byte-level BPE tokenizer from its pre-tokenizer's regexes.
fn detect_pre(pre: Option<&Value>, model: &Value) -> Result<&'static str, TokenizerError> {
    let Some(pre) = pre else { return Ok("gpt-2") };
    let steps: Vec<&Value> = match pre.get("pretokenizers").and_then(Value::as_array) {
        Some(a) => a.iter().collect(),
        None => vec![pre],
    };
    let mut regexes: Vec<String> = Vec::new();
    for s in steps {
        match s.get("type").and_then(Value::as_str) {
            Some("Split") => {
                let r = s
                    .pointer("/pattern/Regex")
                    .and_then(Value::as_str)
                    .or_else(|| s.pointer("/pattern/String").and_then(Value::as_str))
                    .unwrap_or("");
                regexes.push(normalise_regex(r));
            }
            Some("ByteLevel") if s.get("use_regex").and_then(Value::as_bool).unwrap_or(true) => regexes.push(GPT2_RE.to_string()),
            Some("ByteLevel") => {}
            Some("Digits") => {
                let individual = s.get("individual_digits").and_then(Value::as_bool).unwrap_or(false);
                regexes.push(if individual { r"\p{N}".to_string() } else { r"\p{N}+".to_string() });
            }
            Some(other) => {
                return Err(TokenizerError::UnknownHfPreTokenizer { regex: format!("<pre-tokenizer step '{other}'>") });
            }
            None => {}
        }
    }
    let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);
    let matches = |spec: &PreSpec| spec.regexes.len() == regexes.len() && spec.regexes.iter().zip(&regexes).all(|(a, b)| *a == b);
    let mut fallback = None;
    for name in PRE_NAMES {
        let Ok(spec) = pre_spec(Some(name)) else { continue };
        if matches(&spec) {
            if spec.ignore_merges == ignore_merges {
                return Ok(name);
            }
            fallback.get_or_insert(*name);
        }
    }
    fallback.ok_or_else(|| TokenizerError::UnknownHfPreTokenizer { regex: regexes.join(" ; ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_regexes_map_to_their_names() {
        let model = serde_json::json!({});
        let bl = serde_json::json!({"type": "ByteLevel", "use_regex": true});
        assert_eq!(detect_pre(Some(&bl), &model).ok(), Some("gpt-2"));
        // Qwen2's tokenizer.json pre-tokenizer, as HF writes it.
        let qwen = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
        assert_eq!(detect_pre(Some(&qwen), &model).ok(), Some("qwen2"));
        let llama3_model = serde_json::json!({"ignore_merges": true});
        let llama3 = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}},
            {"type": "ByteLevel", "use_regex": false}]});
        assert_eq!(detect_pre(Some(&llama3), &llama3_model).ok(), Some("llama3"));
    }

    #[test]
    fn unknown_regex_is_an_error_naming_it() {
        let pre = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "[a-z]+|zzz"}}, {"type": "ByteLevel", "use_regex": false}]});
        match detect_pre(Some(&pre), &serde_json::json!({})) {
            Err(e @ TokenizerError::UnknownHfPreTokenizer { .. }) => assert!(e.to_string().contains("[a-z]+|zzz"), "{e}"),
            other => panic!("expected UnknownHfPreTokenizer, got {other:?}"),
        }
    }
}
