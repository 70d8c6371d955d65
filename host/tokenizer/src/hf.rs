//! Tokenizers from a Hugging Face model directory: `tokenizer.json` through the `tokenizers`
//! crate (padding and truncation switched off: e.g. all-MiniLM-L6-v2 ships padding to 128),
//! with BOS/EOS names and `add_bos_token` from `tokenizer_config.json` when present.
//!
//! `parse_special = false` is served by a second copy with `encode_special_tokens` on, which
//! makes special added tokens in the text plain text (llama.cpp's meaning of the flag).
//! Streaming uses the prefix-window method of vLLM / HF `DecodeStream`: decode a small window
//! before and after the new id and emit the difference once it does not end in U+FFFD.
//!
//! Modelled on HF `transformers` tokenizer loading and vLLM's `detokenize_incrementally`.

use std::path::Path;

use serde_json::Value;

use crate::TokenizerError;

#[derive(Debug)]
pub(crate) struct HfTokenizer {
    /// Special added tokens are split out of the text.
    pub tok: tokenizers::Tokenizer,
    /// Special added tokens are encoded as text.
    pub tok_plain: tokenizers::Tokenizer,
    pub model_type: String,
    pub id_to_token: Vec<String>,
    pub special: Vec<bool>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
    pub eog: Vec<u32>,
    pub wordpiece: bool,
}

fn hf_err(path: &Path, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::HfLoad { path: path.to_path_buf(), message: e.to_string() }
}

/// `"bos_token": "<s>"` or `{"content": "<s>", ...}`.
fn token_name(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Checks what the `tokenizers` crate accepts when deserializing but panics on when encoding: a
/// `TemplateProcessing` template naming a special token its `special_tokens` map lacks
/// (`processors/template.rs`, "no entry found for key"). Found by `fuzz/fuzz_targets/tokenizer_json.rs`.
fn check_post_processor(pp: Option<&Value>) -> Result<(), String> {
    let Some(pp) = pp.filter(|v| !v.is_null()) else { return Ok(()) };
    match pp.get("type").and_then(Value::as_str) {
        Some("Sequence") => {
            for p in pp.get("processors").and_then(Value::as_array).into_iter().flatten() {
                check_post_processor(Some(p))?;
            }
        }
        Some("TemplateProcessing") => {
            let defined = pp.get("special_tokens").and_then(Value::as_object);
            for part in ["single", "pair"] {
                for piece in pp.get(part).and_then(Value::as_array).into_iter().flatten() {
                    let Some(id) = piece.pointer("/SpecialToken/id").and_then(Value::as_str) else { continue };
                    if !defined.is_some_and(|d| d.contains_key(id)) {
                        return Err(format!(
                            "post_processor template '{part}' uses special token '{id}', which its special_tokens do not define"
                        ));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

impl HfTokenizer {
    pub(crate) fn load(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let raw = std::fs::read(&path).map_err(|source| TokenizerError::Io { path: path.clone(), source })?;
        let json: Value = serde_json::from_slice(&raw).map_err(|source| TokenizerError::Json { path: path.clone(), source })?;
        let model_type = json.pointer("/model/type").and_then(Value::as_str).unwrap_or("unknown").to_string();
        check_post_processor(json.get("post_processor")).map_err(|m| hf_err(&path, m))?;
        let mut tok = tokenizers::Tokenizer::from_bytes(&raw).map_err(|e| hf_err(&path, e))?;
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| hf_err(&path, e))?;
        let mut tok_plain = tok.clone();
        tok_plain.set_encode_special_tokens(true);

        let n = tok.get_vocab_size(true);
        let mut id_to_token = vec![String::new(); n];
        for (text, id) in tok.get_vocab(true) {
            if let Some(slot) = id_to_token.get_mut(id as usize) {
                *slot = text;
            }
        }
        let mut special = vec![false; n];
        for (id, added) in tok.get_added_tokens_decoder() {
            if added.special {
                if let Some(s) = special.get_mut(id as usize) {
                    *s = true;
                }
            }
        }

        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Option<Value> = match std::fs::read(&cfg_path) {
            Ok(b) => Some(serde_json::from_slice(&b).map_err(|source| TokenizerError::Json { path: cfg_path.clone(), source })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(TokenizerError::Io { path: cfg_path, source }),
        };
        let id_of = |name: Option<String>| name.and_then(|s| tok.token_to_id(&s));
        let bos = id_of(cfg.as_ref().and_then(|c| token_name(c.get("bos_token"))));
        let eos = id_of(cfg.as_ref().and_then(|c| token_name(c.get("eos_token"))));
        // add_bos: the config's flag, else whether the post-processor puts BOS in front.
        let add_bos = match cfg.as_ref().and_then(|c| c.get("add_bos_token")).and_then(Value::as_bool) {
            Some(b) => b,
            None => match bos {
                Some(b) => tok.encode("a", true).map(|e| e.get_ids().first() == Some(&b)).unwrap_or(false),
                None => false,
            },
        };
        let mut eog: Vec<u32> = eos.into_iter().collect();
        for (id, text) in id_to_token.iter().enumerate() {
            if special[id] && crate::vocab_eog_text(text) && !eog.contains(&(id as u32)) {
                eog.push(id as u32);
            }
        }
        let wordpiece = model_type == "WordPiece";
        let unk = json.pointer("/model/unk_token").and_then(Value::as_str).and_then(|s| tok.token_to_id(s));
        Ok(HfTokenizer { tok, tok_plain, model_type, id_to_token, special, bos, eos, unk, add_bos, eog, wordpiece })
    }

    pub(crate) fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let t = if parse_special { &self.tok } else { &self.tok_plain };
        let enc = t.encode(text, add_special).map_err(|e| TokenizerError::Hf { message: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    pub(crate) fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        self.tok.decode(ids, skip_special).unwrap_or_default()
    }

    /// One token's text: WordPiece pieces get llama.cpp's WPM form (" word", "##ing" → "ing").
    pub(crate) fn token_to_piece(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.id_to_token.get(id as usize) else {
            return Vec::new();
        };
        if self.wordpiece && !self.special[id as usize] {
            return match text.strip_prefix("##") {
                Some(rest) => rest.as_bytes().to_vec(),
                None => format!(" {text}").into_bytes(),
            };
        }
        self.tok.decode(&[id], false).unwrap_or_default().into_bytes()
    }
}

/// Incremental decoding for the HF path (prefix window, see module docs).
#[derive(Debug, Default)]
pub(crate) struct HfStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special: bool,
}

impl HfStream {
    pub(crate) fn new(skip_special: bool) -> Self {
        HfStream { skip_special, ..Default::default() }
    }

    pub(crate) fn push(&mut self, hf: &HfTokenizer, id: u32) -> String {
        self.ids.push(id);
        self.step(hf, false)
    }

    pub(crate) fn flush(&mut self, hf: &HfTokenizer) -> String {
        self.step(hf, true)
    }

    fn step(&mut self, hf: &HfTokenizer, all: bool) -> String {
        let prefix = hf.decode(&self.ids[self.prefix_offset..self.read_offset], self.skip_special);
        let full = hf.decode(&self.ids[self.prefix_offset..], self.skip_special);
        if full.len() <= prefix.len() || (!all && full.ends_with('\u{FFFD}')) {
            return String::new();
        }
        let new = full.get(prefix.len()..).unwrap_or_default().to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        new
    }
}
