//! Fuzz target: GGUF tokenizer metadata (`tokenizer.ggml.*`) as a hostile file may carry it,
//! through `GgufVocab::from_metadata` (key types) and `Tokenizer::from_gguf_vocab` (llama.cpp's
//! vocabulary derivation, pre-tokenizer regexes, special ids). The input is structured
//! (`arbitrary`): a mostly well-typed vocabulary (model and pre names drawn from the real ones,
//! tokens, scores, types, merges, special ids that may be out of range) plus entries that
//! replace any key with a value of any type. A tokenizer that builds must encode the input's text,
//! decode any ids (even out of range) and stream-decode to exactly `decode`.
//! Oracle: a typed error or a working tokenizer; never a panic, hang or runaway allocation.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rocmforge_model::gguf::{GgufArray, GgufValue};
use rocmforge_tokenizer::{GgufVocab, Tokenizer};

const MODELS: &[&str] = &["llama", "gpt2", "bert", "gemma4", "t5", "rwkv", "none", ""];
const PRES: &[&str] = &[
    "default",
    "llama3",
    "llama-bpe",
    "falcon3",
    "dbrx",
    "smaug-bpe",
    "deepseek-llm",
    "deepseek-coder",
    "falcon",
    "mpt",
    "starcoder",
    "gpt-2",
    "phi-2",
    "jina-es",
    "refact",
    "command-r",
    "smollm",
    "qwen2",
    "stablelm2",
    "qwen35",
    "poro-chat",
    "bloom",
    "viking",
    "chatglm-bpe",
    "glm4",
    "gemma4",
    "exaone",
    "olmo",
    "tekken",
];
const KEYS: &[&str] = &[
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.seperator_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.mask_token_id",
    "tokenizer.ggml.fim_pre_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_sep_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.ggml.normalizer.lowercase",
    "general.name",
    "general.architecture",
];

#[derive(Arbitrary, Debug)]
enum AnyValue {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArr(Vec<String>),
    F32Arr(Vec<f32>),
    I32Arr(Vec<i32>),
    U8Arr(Vec<u8>),
}

impl AnyValue {
    fn into_gguf(self) -> GgufValue {
        match self {
            AnyValue::U32(v) => GgufValue::U32(v),
            AnyValue::I32(v) => GgufValue::I32(v),
            AnyValue::U64(v) => GgufValue::U64(v),
            AnyValue::F32(v) => GgufValue::F32(v),
            AnyValue::Bool(v) => GgufValue::Bool(v),
            AnyValue::Str(v) => GgufValue::Str(v),
            AnyValue::StrArr(v) => GgufValue::Array(GgufArray::Str(v)),
            AnyValue::F32Arr(v) => GgufValue::Array(GgufArray::F32(v)),
            AnyValue::I32Arr(v) => GgufValue::Array(GgufArray::I32(v)),
            AnyValue::U8Arr(v) => GgufValue::Array(GgufArray::U8(v)),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    model: u8,
    pre: Option<u8>,
    /// Byte tokens `<0x00>`..`<0xFF>` (SPM byte fallback) or the GPT-2 byte alphabet.
    byte_tokens: u8,
    tokens: Vec<String>,
    scores: Option<Vec<f32>>,
    token_types: Option<Vec<i32>>,
    merges: Option<Vec<String>>,
    special: Vec<(u8, u32)>,
    flags: Vec<(u8, bool)>,
    overrides: Vec<(u8, AnyValue)>,
    text: String,
    ids: Vec<u32>,
}

fuzz_target!(|inp: Input| {
    let mut tokens = Vec::new();
    match inp.byte_tokens % 3 {
        0 => tokens.extend((0..=255u32).map(|b| format!("<0x{b:02X}>"))),
        1 => tokens.extend((0..=255u32).filter_map(char::from_u32).map(|c| c.to_string())),
        _ => {}
    }
    tokens.extend(inp.tokens);
    let mut md: Vec<(String, GgufValue)> = vec![
        ("tokenizer.ggml.model".into(), GgufValue::Str(MODELS[inp.model as usize % MODELS.len()].into())),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(GgufArray::Str(tokens))),
    ];
    if let Some(p) = inp.pre {
        md.push(("tokenizer.ggml.pre".into(), GgufValue::Str(PRES[p as usize % PRES.len()].into())));
    }
    if let Some(s) = inp.scores {
        md.push(("tokenizer.ggml.scores".into(), GgufValue::Array(GgufArray::F32(s))));
    }
    if let Some(t) = inp.token_types {
        md.push(("tokenizer.ggml.token_type".into(), GgufValue::Array(GgufArray::I32(t))));
    }
    if let Some(m) = inp.merges {
        md.push(("tokenizer.ggml.merges".into(), GgufValue::Array(GgufArray::Str(m))));
    }
    for (k, id) in inp.special {
        md.push((KEYS[6 + k as usize % 8].into(), GgufValue::U32(id)));
    }
    for (k, b) in inp.flags {
        md.push((KEYS[14 + k as usize % 5].into(), GgufValue::Bool(b)));
    }
    for (k, v) in inp.overrides {
        let key = KEYS[k as usize % KEYS.len()];
        md.retain(|(n, _)| n != key);
        md.push((key.into(), v.into_gguf()));
    }
    let Ok(v) = GgufVocab::from_metadata(&md) else { return };
    let Ok(t) = Tokenizer::from_gguf_vocab(v) else { return };
    for (add, parse) in [(true, true), (false, false)] {
        if let Ok(ids) = t.encode(&inp.text, add, parse) {
            assert!(ids.iter().all(|&i| (i as usize) < t.n_vocab()), "encode gave an id past the vocabulary");
            std::hint::black_box(t.decode(&ids, true));
        }
    }
    for skip in [false, true] {
        let whole = t.decode(&inp.ids, skip);
        let mut s = t.stream(skip);
        let mut streamed: String = inp.ids.iter().map(|&i| s.push(i)).collect();
        streamed.push_str(&s.flush());
        assert_eq!(streamed, whole, "streamed pieces differ from decode");
    }
    for &i in inp.ids.iter().take(8) {
        std::hint::black_box((t.token_to_piece(i), t.token_text(i), t.is_special(i), t.is_eog(i)));
    }
});
