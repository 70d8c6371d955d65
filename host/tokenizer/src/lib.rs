//! Tokenizers for ROCmForge: built from GGUF metadata exactly as llama.cpp builds them
//! (`llama` SPM, `gpt2` byte-level BPE with llama.cpp's pre-tokenizers, `bert` WordPiece,
//! `gemma4` SPM-style BPE), or loaded from a Hugging Face `tokenizer.json`; plus decoding and a
//! streaming detokenizer that never emits half a UTF-8 character.
//!
//! Crate boundary (a deviation from DESIGN.md §1, which lists tokenizers under `host/model`): kept
//! apart so `host/model` stays free of the `tokenizers` dependency and the engine/server can use
//! tokenizers without the file layer's writer and quantizer.
//!
//! Invariants:
//! - For GGUF vocabularies, `encode` reproduces `llama_tokenize` id for id (tested against
//!   llama.cpp's `ggml-vocab-*.gguf` vectors and llama-cpp-python fixtures); an unknown
//!   `tokenizer.ggml.pre` is an error naming it, never a fallback.
//! - `StreamDecoder` pieces concatenate to exactly `decode(ids, skip_special)`.
//!
//! Layout: `vocab` (GGUF keys → llama.cpp's derived vocab), `pretokenize` (BPE splitting),
//! `encode` (SPM/BPE/WPM algorithms), `decode` (pieces, detokenize, stream core), `hf`
//! (tokenizer.json), `unicode` (codepoint tables). Modelled on llama.cpp `src/llama-vocab.cpp`
//! and `src/unicode.cpp`; the GGUF-to-tokenizer idea on mistral.rs `gguf_tokenizer.rs`.

mod decode;
mod encode;
mod hf;
mod pretokenize;
mod to_gguf;
mod unicode;
mod vocab;

use std::path::{Path, PathBuf};

use rocmforge_model::gguf::GgufFile;

pub use to_gguf::{has_hf_tokenizer, hf_tokenizer_gguf_metadata};
pub use vocab::{GgufVocab, SpecialIds};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata key '{key}' is missing")]
    MissingKey { key: &'static str },
    #[error("GGUF metadata key '{key}' has type {found}, expected {expected}")]
    WrongType { key: &'static str, expected: &'static str, found: String },
    #[error("GGUF array '{key}' has {found} entries, expected at least {expected}")]
    ArrayLength { key: &'static str, found: usize, expected: usize },
    #[error("unknown tokenizer model '{model}'")]
    UnknownModel { model: String },
    #[error("unknown pre-tokenizer '{pre}'")]
    UnknownPre { pre: String },
    #[error("pre-tokenizer '{pre}': regex does not compile: {message}")]
    BadRegex { pre: &'static str, message: String },
    #[error("the vocabulary has no token for byte 0x{byte:02X}")]
    MissingByteToken { byte: u8 },
    #[error("the vocabulary defines no {what} token but tokenization needs one")]
    MissingSpecial { what: &'static str },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: cannot load tokenizer: {message}")]
    HfLoad { path: PathBuf, message: String },
    #[error("tokenizer.json pre-tokenizer regex matches no known pre-tokenizer: {regex}")]
    UnknownHfPreTokenizer { regex: String },
    #[error("tokenizers: {message}")]
    Hf { message: String },
}

/// Special-token texts llama.cpp treats as end of generation, for the tokenizer.json path.
pub(crate) fn vocab_eog_text(t: &str) -> bool {
    matches!(
        t,
        "<|eot_id|>"
            | "<|im_end|>"
            | "<|end|>"
            | "<end_of_turn>"
            | "<|endoftext|>"
            | "<|eom_id|>"
            | "<EOT>"
            | "<|end_of_text|>"
            | "<end_of_utterance>"
            | "</s>"
            | "<eos>"
            | "<turn|>"
    )
}

#[derive(Debug)]
enum Inner {
    Gguf(Box<vocab::Vocab>),
    Hf(Box<hf::HfTokenizer>),
}

/// A tokenizer (GGUF-built or tokenizer.json).
#[derive(Debug)]
pub struct Tokenizer {
    inner: Inner,
    kind: String,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (`tokenizer.ggml.*`).
    pub fn from_gguf(f: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_gguf_vocab(GgufVocab::from_gguf(f)?)
    }

    /// Builds a tokenizer from already-read GGUF vocabulary data.
    pub fn from_gguf_vocab(v: GgufVocab) -> Result<Self, TokenizerError> {
        let raw_pre = v.pre.clone();
        let vocab = vocab::Vocab::build(v)?;
        let kind = match vocab.ty {
            vocab::VocabType::Spm => format!("{} (SPM)", vocab.model),
            vocab::VocabType::Wpm => format!("{} (WordPiece)", vocab.model),
            vocab::VocabType::Bpe => {
                let pre = raw_pre.or_else(|| vocab.pre.as_ref().map(|p| p.name.to_string())).unwrap_or_default();
                format!("{} ({pre})", vocab.model)
            }
        };
        Ok(Tokenizer { inner: Inner::Gguf(Box::new(vocab)), kind })
    }

    /// Loads `dir/tokenizer.json` (and `dir/tokenizer_config.json` if present).
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let hf = hf::HfTokenizer::load(dir)?;
        let kind = format!("tokenizer.json ({})", hf.model_type);
        Ok(Tokenizer { inner: Inner::Hf(Box::new(hf)), kind })
    }

    /// Text → ids. `add_special`: BOS/EOS (CLS/SEP) as the model says; `parse_special`:
    /// special-token texts in `text` become their ids instead of being tokenized as text.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        match &self.inner {
            Inner::Gguf(v) => encode::tokenize(v, text, add_special, parse_special),
            Inner::Hf(h) => h.encode(text, add_special, parse_special),
        }
    }

    /// Ids → text. GGUF: llama.cpp `llama_detokenize(remove_special = skip_special,
    /// unparse_special = !skip_special)`; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        match &self.inner {
            Inner::Gguf(v) => String::from_utf8_lossy(&decode::detokenize(v, ids, skip_special, !skip_special)).into_owned(),
            Inner::Hf(h) => h.decode(ids, skip_special),
        }
    }

    /// The bytes of one token with special tokens rendered (llama.cpp `token_to_piece(.., special = true)`).
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        match &self.inner {
            Inner::Gguf(v) => decode::token_to_piece(v, id, true),
            Inner::Hf(h) => h.token_to_piece(id),
        }
    }

    pub fn n_vocab(&self) -> usize {
        match &self.inner {
            Inner::Gguf(v) => v.tokens.len(),
            Inner::Hf(h) => h.id_to_token.len(),
        }
    }

    pub fn bos(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.bos,
            Inner::Hf(h) => h.bos,
        }
    }

    pub fn eos(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.eos,
            Inner::Hf(h) => h.eos,
        }
    }

    /// End-of-turn token (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`, ...) if known.
    pub fn eot(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.eot,
            Inner::Hf(_) => None,
        }
    }

    pub fn unk(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.unk,
            Inner::Hf(h) => h.unk,
        }
    }

    pub fn pad(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.pad,
            Inner::Hf(_) => None,
        }
    }

    /// Does generating `id` end the generation (llama.cpp `is_eog`)?
    pub fn is_eog(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.eog.contains(&id),
            Inner::Hf(h) => h.eog.contains(&id),
        }
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> Vec<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.eog.iter().copied().collect(),
            Inner::Hf(h) => {
                let mut e = h.eog.clone();
                e.sort_unstable();
                e
            }
        }
    }

    /// Whether `encode(.., add_special = true, ..)` puts BOS in front.
    pub fn add_bos(&self) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.add_bos || v.ty == vocab::VocabType::Wpm,
            Inner::Hf(h) => h.add_bos,
        }
    }

    pub fn add_eos(&self) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.add_eos,
            Inner::Hf(_) => false,
        }
    }

    /// The vocabulary text of a token (GGUF form: `Ġ`/`▁` escapes are kept).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        match &self.inner {
            Inner::Gguf(v) => v.tokens.get(id as usize).map(String::as_str),
            Inner::Hf(h) => h.id_to_token.get(id as usize).map(String::as_str),
        }
    }

    /// Looks a token up by its exact vocabulary text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(v) => v.text_to_token(text),
            Inner::Hf(h) => h.tok.token_to_id(text),
        }
    }

    /// Is `id` a control/special token (hidden by `decode(.., skip_special = true)`)?
    pub fn is_special(&self, id: u32) -> bool {
        match &self.inner {
            Inner::Gguf(v) => v.attr(id) & (vocab::ATTR_CONTROL | vocab::ATTR_UNKNOWN) != 0,
            Inner::Hf(h) => h.special.get(id as usize).copied().unwrap_or(false),
        }
    }

    /// "gpt2 (smollm)", "llama (SPM)", "bert (WordPiece)", "tokenizer.json (BPE)", ...
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// A streaming detokenizer over this tokenizer.
    pub fn stream(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder::new(self, skip_special)
    }
}

#[derive(Debug)]
enum StreamState {
    Gguf(decode::ByteStream),
    Hf(hf::HfStream),
}

/// Turns ids arriving one at a time into text: emits only complete UTF-8 (a character split
/// over byte tokens is held back), and the pieces of `push`* + `flush` concatenate to
/// `Tokenizer::decode(ids, skip_special)`.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    state: StreamState,
}

impl<'a> StreamDecoder<'a> {
    /// `skip_special`: hide control tokens (true) or render their text (false).
    pub fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        let state = match &tok.inner {
            Inner::Gguf(_) => StreamState::Gguf(decode::ByteStream::new(skip_special)),
            Inner::Hf(_) => StreamState::Hf(hf::HfStream::new(skip_special)),
        };
        StreamDecoder { tok, state }
    }

    /// Adds one id; returns the text that became final (often empty).
    pub fn push(&mut self, id: u32) -> String {
        match (&mut self.state, &self.tok.inner) {
            (StreamState::Gguf(s), Inner::Gguf(v)) => s.push(v, id),
            (StreamState::Hf(s), Inner::Hf(h)) => s.push(h, id),
            _ => String::new(),
        }
    }

    /// Emits everything held back; invalid or incomplete bytes become U+FFFD.
    pub fn flush(&mut self) -> String {
        match (&mut self.state, &self.tok.inner) {
            (StreamState::Gguf(s), Inner::Gguf(v)) => s.flush(v),
            (StreamState::Hf(s), Inner::Hf(h)) => s.flush(h),
            _ => String::new(),
        }
    }
}
