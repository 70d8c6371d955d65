//! The GGUF vocabulary: [`GgufVocab`] is the plain data read from `tokenizer.ggml.*` keys,
//! [`Vocab`] is what llama.cpp's `llama_vocab::impl::load` derives from it: the tokenizer type,
//! per-token attributes, special ids with llama.cpp's per-type defaults, the end-of-generation
//! set, and the special-token list used to split text before tokenizing.
//!
//! Invariants of a built `Vocab`: every id it stores (`bos`, `eog`, `special_cache`, ...) is
//! `< n_tokens`; `token_to_id` maps each text to its last id (llama.cpp overwrites duplicates);
//! empty token texts are renamed `[EMPTY_i]` as llama.cpp does.
//!
//! Modelled on llama.cpp `src/llama-vocab.cpp` (`load`, special-token auto-detection, EOG list).

use std::collections::{BTreeSet, HashMap};

use rocmforge_model::gguf::{GgufArray, GgufFile, GgufValue};

use crate::pretokenize::{self, PreSpec, PreTokenizer};
use crate::TokenizerError;

// llama_token_attr bits
pub(crate) const ATTR_UNKNOWN: u32 = 1 << 0;
pub(crate) const ATTR_UNUSED: u32 = 1 << 1;
pub(crate) const ATTR_NORMAL: u32 = 1 << 2;
pub(crate) const ATTR_CONTROL: u32 = 1 << 3;
pub(crate) const ATTR_USER_DEFINED: u32 = 1 << 4;
pub(crate) const ATTR_BYTE: u32 = 1 << 5;
pub(crate) const ATTR_LSTRIP: u32 = 1 << 7;
pub(crate) const ATTR_RSTRIP: u32 = 1 << 8;

/// Special-token ids as stored in GGUF (None: key absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u64>,
    pub eos: Option<u64>,
    pub eot: Option<u64>,
    pub eom: Option<u64>,
    pub unk: Option<u64>,
    pub sep: Option<u64>,
    pub pad: Option<u64>,
    pub mask: Option<u64>,
    pub fim_pre: Option<u64>,
    pub fim_suf: Option<u64>,
    pub fim_mid: Option<u64>,
    pub fim_pad: Option<u64>,
    pub fim_rep: Option<u64>,
    pub fim_sep: Option<u64>,
}

/// The tokenizer part of a GGUF file's metadata, as plain data.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `llama`, `gpt2`, `bert`, `gemma4`, ...
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    pub merges: Option<Vec<String>>,
    pub special: SpecialIds,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_sep: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub normalizer_lowercase: Option<bool>,
    pub normalizer_strip_accents: Option<bool>,
    /// `general.name` and `general.architecture`: llama.cpp sets lstrip/rstrip by them.
    pub general_name: Option<String>,
    pub general_arch: Option<String>,
}

fn wrong_type(key: &'static str, expected: &'static str, v: &GgufValue) -> TokenizerError {
    TokenizerError::WrongType { key, expected, found: v.type_name().to_string() }
}

impl GgufVocab {
    /// Reads the `tokenizer.ggml.*` keys of a GGUF file.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_lookup(|k| f.get(k))
    }

    /// Reads the `tokenizer.ggml.*` keys of a metadata list (e.g. before it is written to a file).
    pub fn from_metadata(md: &[(String, GgufValue)]) -> Result<Self, TokenizerError> {
        Self::from_lookup(|k| md.iter().find(|(n, _)| n == k).map(|(_, v)| v))
    }

    fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a GgufValue>) -> Result<Self, TokenizerError> {
        let f = FnGet(get);
        let str_key = |key: &'static str| -> Result<Option<String>, TokenizerError> {
            match f.get(key) {
                None => Ok(None),
                Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| wrong_type(key, "string", v)),
            }
        };
        let bool_key = |key: &'static str| -> Result<Option<bool>, TokenizerError> {
            match f.get(key) {
                None => Ok(None),
                Some(v) => v.as_bool().map(Some).ok_or_else(|| wrong_type(key, "bool", v)),
            }
        };
        let id_key = |key: &'static str| -> Result<Option<u64>, TokenizerError> {
            match f.get(key) {
                None => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| wrong_type(key, "unsigned integer", v)),
            }
        };
        let model = str_key("tokenizer.ggml.model")?.ok_or(TokenizerError::MissingKey { key: "tokenizer.ggml.model" })?;
        let tokens = match f.get("tokenizer.ggml.tokens") {
            None => return Err(TokenizerError::MissingKey { key: "tokenizer.ggml.tokens" }),
            Some(v) => match v.as_array() {
                Some(GgufArray::Str(t)) => t.clone(),
                _ => return Err(wrong_type("tokenizer.ggml.tokens", "array of strings", v)),
            },
        };
        let scores = match f.get("tokenizer.ggml.scores") {
            None => None,
            Some(v) => match v.as_array() {
                Some(GgufArray::F32(s)) => Some(s.clone()),
                Some(GgufArray::I32(s)) => Some(s.iter().map(|&x| x as f32).collect()),
                _ => return Err(wrong_type("tokenizer.ggml.scores", "array of f32 or i32", v)),
            },
        };
        let token_types = match f.get("tokenizer.ggml.token_type") {
            None => None,
            Some(v) => match v.as_array() {
                Some(GgufArray::I32(t)) => Some(t.clone()),
                _ => return Err(wrong_type("tokenizer.ggml.token_type", "array of i32", v)),
            },
        };
        let merges = match f.get("tokenizer.ggml.merges") {
            None => None,
            Some(v) => match v.as_array() {
                Some(GgufArray::Str(m)) => Some(m.clone()),
                _ => return Err(wrong_type("tokenizer.ggml.merges", "array of strings", v)),
            },
        };
        let special = SpecialIds {
            bos: id_key("tokenizer.ggml.bos_token_id")?,
            eos: id_key("tokenizer.ggml.eos_token_id")?,
            eot: id_key("tokenizer.ggml.eot_token_id")?,
            eom: id_key("tokenizer.ggml.eom_token_id")?,
            unk: id_key("tokenizer.ggml.unknown_token_id")?,
            sep: id_key("tokenizer.ggml.seperator_token_id")?,
            pad: id_key("tokenizer.ggml.padding_token_id")?,
            mask: id_key("tokenizer.ggml.mask_token_id")?,
            fim_pre: id_key("tokenizer.ggml.fim_pre_token_id")?.or(id_key("tokenizer.ggml.prefix_token_id")?),
            fim_suf: id_key("tokenizer.ggml.fim_suf_token_id")?.or(id_key("tokenizer.ggml.suffix_token_id")?),
            fim_mid: id_key("tokenizer.ggml.fim_mid_token_id")?.or(id_key("tokenizer.ggml.middle_token_id")?),
            fim_pad: id_key("tokenizer.ggml.fim_pad_token_id")?,
            fim_rep: id_key("tokenizer.ggml.fim_rep_token_id")?,
            fim_sep: id_key("tokenizer.ggml.fim_sep_token_id")?,
        };
        Ok(GgufVocab {
            model,
            pre: str_key("tokenizer.ggml.pre")?,
            tokens,
            scores,
            token_types,
            merges,
            special,
            add_bos: bool_key("tokenizer.ggml.add_bos_token")?,
            add_eos: bool_key("tokenizer.ggml.add_eos_token")?,
            add_sep: bool_key("tokenizer.ggml.add_sep_token")?,
            add_space_prefix: bool_key("tokenizer.ggml.add_space_prefix")?,
            normalizer_lowercase: bool_key("tokenizer.ggml.normalizer.lowercase")?,
            normalizer_strip_accents: bool_key("tokenizer.ggml.normalizer.strip_accents")?,
            general_name: str_key("general.name")?,
            general_arch: str_key("general.architecture")?,
        })
    }
}

/// Adapts a lookup closure to the `f.get(key)` calls of `from_lookup`.
struct FnGet<F>(F);

impl<'a, F: Fn(&str) -> Option<&'a GgufValue>> FnGet<F> {
    fn get(&self, key: &str) -> Option<&'a GgufValue> {
        (self.0)(key)
    }
}

/// llama.cpp's vocab types that we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VocabType {
    /// SentencePiece BPE (`llama`).
    Spm,
    /// Byte-level BPE (`gpt2`) or SPM-style BPE (`gemma4`).
    Bpe,
    /// WordPiece (`bert`).
    Wpm,
}

/// BPE merge ranks keyed by interned part ids, so lookups need no allocation.
#[derive(Debug, Default)]
pub(crate) struct MergeRanks {
    part_id: HashMap<String, u32>,
    rank: HashMap<(u32, u32), u32>,
}

impl MergeRanks {
    fn new(merges: &[String]) -> Self {
        let mut m = MergeRanks::default();
        for (i, line) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte (a part may start with ' ').
            let (first, second) = match line.bytes().skip(1).position(|b| b == b' ') {
                Some(p) => (&line[..p + 1], &line[p + 2..]),
                None => ("", ""),
            };
            let a = m.intern(first);
            let b = m.intern(second);
            m.rank.entry((a, b)).or_insert(i as u32);
        }
        m
    }
    fn intern(&mut self, s: &str) -> u32 {
        let n = self.part_id.len() as u32;
        *self.part_id.entry(s.to_string()).or_insert(n)
    }
    pub(crate) fn get(&self, left: &str, right: &str) -> Option<u32> {
        let a = self.part_id.get(left)?;
        let b = self.part_id.get(right)?;
        self.rank.get(&(*a, *b)).copied()
    }
}

/// A loaded vocabulary with everything llama.cpp derives at load time.
#[derive(Debug)]
pub(crate) struct Vocab {
    pub ty: VocabType,
    pub model: String,
    pub pre: Option<PreSpec>,
    pub pretok: Option<PreTokenizer>,
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u32>,
    pub token_to_id: HashMap<String, u32>,
    pub merges: MergeRanks,
    pub max_token_len: usize,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub escape_whitespaces: bool,
    pub clean_spaces: bool,
    pub ignore_merges: bool,
    pub lowercase: bool,
    pub strip_accents: bool,
    pub eog: BTreeSet<u32>,
    /// CONTROL / USER_DEFINED / UNKNOWN tokens, longest text first.
    pub special_cache: Vec<u32>,
}

/// Texts llama.cpp treats as end-of-generation (`special_eog_ids`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PRE_TEXTS: &[&str] =
    &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"];
const FIM_SUF_TEXTS: &[&str] =
    &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"];
const FIM_MID_TEXTS: &[&str] =
    &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

impl Vocab {
    pub(crate) fn build(v: GgufVocab) -> Result<Vocab, TokenizerError> {
        let n = v.tokens.len();
        let in_range = |id: u32| (id as usize) < n;
        // (type, default bos, eos, unk, sep, pad)
        let (ty, [mut bos, mut eos, mut unk, mut sep, mut pad]): (VocabType, [Option<u32>; 5]) = match v.model.as_str() {
            "llama" => (VocabType::Spm, [Some(1), Some(2), Some(0), None, None]),
            "bert" => (VocabType::Wpm, [Some(101), None, Some(100), Some(102), Some(0)]),
            "gpt2" => (VocabType::Bpe, [Some(11), Some(11), None, None, None]),
            "gemma4" => (VocabType::Bpe, [None; 5]),
            other => return Err(TokenizerError::UnknownModel { model: other.to_string() }),
        };
        let mut add_bos = false;
        let mut add_eos = false;
        let mut add_space_prefix = false;
        let mut escape_whitespaces = true;
        let mut clean_spaces = false;
        let mut ignore_merges = false;
        let mut pre = None;
        match ty {
            VocabType::Bpe => {
                let pre_name = if v.model == "gemma4" { Some("gemma4") } else { v.pre.as_deref() };
                let spec = pretokenize::pre_spec(pre_name)?;
                escape_whitespaces = spec.escape_whitespaces;
                clean_spaces = spec.clean_spaces;
                ignore_merges = spec.ignore_merges;
                if let Some(b) = spec.add_bos {
                    add_bos = b;
                }
                if spec.no_bos {
                    bos = None;
                }
                pre = Some(spec);
            }
            VocabType::Spm => {
                add_space_prefix = true;
                add_bos = true;
            }
            VocabType::Wpm => {
                clean_spaces = true;
                add_bos = true;
            }
        }
        if let Some(b) = v.add_space_prefix {
            add_space_prefix = b;
        }
        let merges = match (ty, &v.merges) {
            (VocabType::Bpe, Some(m)) => MergeRanks::new(m),
            (VocabType::Bpe, None) => return Err(TokenizerError::MissingKey { key: "tokenizer.ggml.merges" }),
            _ => MergeRanks::default(),
        };
        if let Some(s) = &v.scores {
            if s.len() < n {
                return Err(TokenizerError::ArrayLength { key: "tokenizer.ggml.scores", found: s.len(), expected: n });
            }
        }
        if let Some(t) = &v.token_types {
            if t.len() < n {
                return Err(TokenizerError::ArrayLength { key: "tokenizer.ggml.token_type", found: t.len(), expected: n });
            }
        }

        let mut tokens = v.tokens;
        let mut token_to_id = HashMap::with_capacity(n);
        let mut attrs = vec![ATTR_NORMAL; n];
        let mut max_token_len = 0;
        for (i, text) in tokens.iter_mut().enumerate() {
            if text.is_empty() {
                *text = format!("[EMPTY_{i}]");
            }
            token_to_id.insert(text.clone(), i as u32);
            max_token_len = max_token_len.max(text.len());
            if let Some(t) = &v.token_types {
                attrs[i] = match t[i] {
                    1 => ATTR_NORMAL,
                    2 => ATTR_UNKNOWN,
                    3 => ATTR_CONTROL,
                    4 => ATTR_USER_DEFINED,
                    5 => ATTR_UNUSED,
                    6 => ATTR_BYTE,
                    _ => 0,
                };
            }
        }
        let scores = v.scores.unwrap_or_else(|| vec![0.0; n]);

        // Special ids: defaults out of range are dropped; a GGUF id out of range keeps the default.
        let mut eot = None;
        let mut eom = None;
        let mut mask: Option<u32> = if ty == VocabType::Wpm { Some(103) } else { None };
        let (mut fim_pre, mut fim_suf, mut fim_mid, mut fim_pad, mut fim_rep, mut fim_sep) = (None, None, None, None, None, None);
        {
            let sp = &v.special;
            let slots: [(&mut Option<u32>, Option<u64>); 14] = [
                (&mut bos, sp.bos),
                (&mut eos, sp.eos),
                (&mut eot, sp.eot),
                (&mut eom, sp.eom),
                (&mut unk, sp.unk),
                (&mut sep, sp.sep),
                (&mut pad, sp.pad),
                (&mut mask, sp.mask),
                (&mut fim_pre, sp.fim_pre),
                (&mut fim_suf, sp.fim_suf),
                (&mut fim_mid, sp.fim_mid),
                (&mut fim_pad, sp.fim_pad),
                (&mut fim_rep, sp.fim_rep),
                (&mut fim_sep, sp.fim_sep),
            ];
            for (slot, from_gguf) in slots {
                if slot.is_some_and(|id| !in_range(id)) {
                    *slot = None;
                }
                match from_gguf {
                    Some(id) if (id as usize) < n => *slot = Some(id as u32),
                    Some(id) => tracing::warn!("bad special token id {id} (n_vocab {n}); keeping default {slot:?}"),
                    None => {}
                }
            }
        }
        let _ = mask;
        if let Some(b) = v.add_bos {
            add_bos = b;
        }
        if let Some(b) = v.add_eos {
            add_eos = b;
        }
        if pre.as_ref().is_some_and(|p| p.name == "gemma4") {
            add_bos = true;
        }
        let lowercase = v.normalizer_lowercase.unwrap_or(true);
        let strip_accents = v.normalizer_strip_accents.unwrap_or(lowercase);

        // Auto-detect EOT/EOM/FIM by text. llama.cpp walks a hash map, so with several
        // candidates its pick is unspecified; we take the first text of the list that exists
        // (e.g. `<|im_end|>` before `<|endoftext|>`).
        let set_by_text = |slot: &mut Option<u32>, texts: &[&str], attrs: &mut Vec<u32>| {
            if slot.is_some() {
                return;
            }
            if let Some(id) = texts.iter().find_map(|t| token_to_id.get(*t).copied()) {
                *slot = Some(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        };
        set_by_text(&mut eot, EOT_TEXTS, &mut attrs);
        set_by_text(&mut eom, &["<|eom_id|>"], &mut attrs);
        set_by_text(&mut fim_pre, FIM_PRE_TEXTS, &mut attrs);
        set_by_text(&mut fim_suf, FIM_SUF_TEXTS, &mut attrs);
        set_by_text(&mut fim_mid, FIM_MID_TEXTS, &mut attrs);
        set_by_text(&mut fim_pad, FIM_PAD_TEXTS, &mut attrs);
        set_by_text(&mut fim_rep, FIM_REP_TEXTS, &mut attrs);
        set_by_text(&mut fim_sep, FIM_SEP_TEXTS, &mut attrs);

        for (i, text) in tokens.iter().enumerate() {
            if attrs[i] & ATTR_CONTROL != 0 && text.contains("unused") {
                attrs[i] |= ATTR_UNUSED;
            }
        }

        let mut eog = BTreeSet::new();
        eog.extend([fim_pad, fim_rep, fim_sep].into_iter().flatten());
        for (i, text) in tokens.iter().enumerate() {
            if EOG_TEXTS.contains(&text.as_str()) {
                eog.insert(i as u32);
                attrs[i] |= ATTR_CONTROL;
            }
        }
        for (i, text) in tokens.iter().enumerate() {
            if matches!(text.as_str(), "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>") {
                attrs[i] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        // o200k_harmony / solar-open: "<|end|>" is not EOG when "<|return|>"+"<|call|>" exist.
        let text_in_eog = |t: &str, eog: &BTreeSet<u32>| eog.iter().find(|&&id| tokens[id as usize] == t).copied();
        let end_id = text_in_eog("<|end|>", &eog);
        let has_return = text_in_eog("<|return|>", &eog).is_some();
        let has_call = text_in_eog("<|call|>", &eog).is_some() || text_in_eog("<|calls|>", &eog).is_some();
        let has_flush = text_in_eog("<|flush|>", &eog).is_some();
        if let Some(end_id) = end_id {
            if has_call && (has_return || has_flush) {
                eog.remove(&end_id);
                attrs[end_id as usize] = ATTR_USER_DEFINED;
            }
        }
        // gemma4 / plamo: "</s>" is a normal token there.
        let s_id = text_in_eog("</s>", &eog);
        let normal_s = text_in_eog("<|tool_response>", &eog).is_some() || text_in_eog("<|plamo:eos|>", &eog).is_some();
        if let (Some(s_id), true) = (s_id, normal_s) {
            eog.remove(&s_id);
            attrs[s_id as usize] = ATTR_NORMAL;
        }

        let mut special_cache: Vec<u32> =
            (0..n as u32).filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0).collect();
        special_cache.sort_by(|&a, &b| tokens[b as usize].len().cmp(&tokens[a as usize].len()));

        // Per-model lstrip/rstrip (llama.cpp sets these by general.name / pre / architecture).
        let name = v.general_name.as_deref().unwrap_or("").to_lowercase();
        let pre_raw = v.pre.as_deref().unwrap_or("");
        let arch = v.general_arch.as_deref().unwrap_or("");
        let id_of = |t: &str| token_to_id.get(t).copied();
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"].iter().any(|s| pre_raw.contains(s))
            || ["nomic-bert-moe", "jina-bert-v3"].iter().any(|s| arch.contains(s))
        {
            if let Some(id) = id_of("<mask>") {
                attrs[id as usize] |= ATTR_LSTRIP;
            }
        } else if name.contains("phi-3") || name.contains("phi3") {
            for &id in &special_cache {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            if let Some(id) = id_of("</s>") {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(id) = id_of(t) {
                    attrs[id as usize] &= !ATTR_RSTRIP;
                }
            }
        } else if name.contains("modern-bert") {
            if let Some(id) = id_of("[MASK]") {
                attrs[id as usize] |= ATTR_LSTRIP;
            }
        }

        let pretok = match &pre {
            Some(spec) => Some(PreTokenizer::new(spec)?),
            None => None,
        };
        Ok(Vocab {
            ty,
            model: v.model,
            pre,
            pretok,
            tokens,
            scores,
            attrs,
            token_to_id,
            merges,
            max_token_len,
            bos,
            eos,
            eot,
            unk,
            sep,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
            escape_whitespaces,
            clean_spaces,
            ignore_merges,
            lowercase,
            strip_accents,
            eog,
            special_cache,
        })
    }

    pub(crate) fn text_to_token(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub(crate) fn attr(&self, id: u32) -> u32 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }
}
