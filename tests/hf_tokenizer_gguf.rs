//! The tokenizer of a Hugging Face directory written as GGUF metadata
//! (`rocmforge_tokenizer::hf_tokenizer_gguf_metadata`, used by `rocmforge quantize HF_DIR ...`).
//!
//! References: the HF `tokenizers` library (`Tokenizer::from_hf_dir`) on the same directory, and for
//! all-MiniLM-L6-v2 the GGUF made by `/work/shared/scripts/bert_st_to_gguf.py` (llama.cpp's
//! BertModel vocabulary code), whose token list and tokenization must be reproduced exactly.
//! That the quantized tiny-llama output also loads in llama.cpp is checked by hand with
//! `/work/venv/bin/python scripts/check-quantized-in-llama-cpp.py OUT.gguf` (CI has no llama.cpp).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{model, repo};
use rocmforge_model::gguf::{GgufFile, GgufValue};
use rocmforge_tokenizer::{hf_tokenizer_gguf_metadata, GgufVocab, Tokenizer, TokenizerError};

const TEXTS: &[&str] = &[
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and   inner   spaces ",
    "Numbers: 3.14159, 42, 1,000,000 and 2026-11-25",
    "unbelievable tokenization of UNCOMMON Wörter, café, naïve",
    "日本語のテキスト and 中文 mixed",
    "tabs\tand\nnew\n\nlines",
    "emoji 🙂👍 and symbols @#$%^&*()[]{}",
    "",
    "[CLS] special text [SEP] inside",
];

fn fixture(name: &str) -> PathBuf {
    let p = repo().join("tests/fixtures").join(name);
    assert!(p.exists(), "{} is missing: it is committed", p.display());
    p
}

fn md_str<'a>(md: &'a [(String, GgufValue)], key: &str) -> Option<&'a str> {
    md.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_str())
}

#[test]
fn minilm_bert_vocab_matches_hf_and_the_reference_gguf() {
    let dir = model("all-MiniLM-L6-v2");
    let md = hf_tokenizer_gguf_metadata(&dir).expect("convert");
    assert_eq!(md_str(&md, "tokenizer.ggml.model"), Some("bert"));
    let reference = GgufFile::open(model("all-MiniLM-L6-v2-f16.gguf")).expect("reference gguf");

    // Same token texts (phantom-space form) and types as the reference converter.
    let ours = GgufVocab::from_metadata(&md).expect("vocab");
    let theirs = GgufVocab::from_gguf(&reference).expect("reference vocab");
    assert_eq!(ours.tokens.len(), theirs.tokens.len());
    let diff = ours.tokens.iter().zip(&theirs.tokens).position(|(a, b)| a != b);
    assert_eq!(diff, None, "first differing token: {:?}", diff.map(|i| (&ours.tokens[i], &theirs.tokens[i])));
    assert_eq!(ours.token_types, theirs.token_types);
    assert_eq!(ours.special.unk, theirs.special.unk);
    assert_eq!(ours.special.sep, theirs.special.sep);
    assert_eq!(ours.special.pad, theirs.special.pad);
    assert_eq!(ours.special.mask, theirs.special.mask);

    let tok = Tokenizer::from_gguf_vocab(ours).expect("tokenizer");
    let hf = Tokenizer::from_hf_dir(&dir).expect("hf tokenizer");
    let refr = Tokenizer::from_gguf(&reference).expect("reference tokenizer");
    for t in TEXTS {
        let a = tok.encode(t, true, true).expect("encode");
        assert_eq!(a, hf.encode(t, true, true).expect("hf encode"), "vs tokenizers on {t:?}");
        assert_eq!(a, refr.encode(t, true, true).expect("ref encode"), "vs reference GGUF on {t:?}");
    }
}

#[test]
fn tiny_llama_quantized_to_f16_carries_its_tokenizer_and_generates() {
    let dir = fixture("tiny-llama-hf");
    let out = std::env::temp_dir().join(format!("rf-hftok-{}.gguf", std::process::id()));
    let q = Command::new(env!("CARGO_BIN_EXE_rocmforge")).arg("quantize").arg(&dir).arg(&out).arg("F16").output().expect("spawn");
    assert!(q.status.success(), "quantize failed: {}", String::from_utf8_lossy(&q.stderr));

    let f = GgufFile::open(&out).expect("open output");
    assert_eq!(f.get("tokenizer.ggml.model").and_then(|v| v.as_str()), Some("gpt2"));
    assert_eq!(f.get("tokenizer.ggml.pre").and_then(|v| v.as_str()), Some("gpt-2"));
    let tok = Tokenizer::from_gguf(&f).expect("tokenizer from output");
    let hf = Tokenizer::from_hf_dir(&dir).expect("hf tokenizer");
    assert_eq!(tok.n_vocab(), hf.n_vocab());
    assert_eq!(tok.eos(), hf.eos());
    for t in TEXTS.iter().chain(&["<s>hello</s> world"]) {
        assert_eq!(tok.encode(t, false, true).expect("encode"), hf.encode(t, false, true).expect("hf encode"), "on {t:?}");
    }

    let g = Command::new(env!("CARGO_BIN_EXE_rocmforge"))
        .args(["generate", out.to_str().unwrap_or_default(), "Hello world", "-n", "8", "--temperature", "0", "--ignore-eos"])
        .output()
        .expect("spawn");
    let _ = std::fs::remove_file(&out);
    assert!(g.status.success(), "generate failed: {}", String::from_utf8_lossy(&g.stderr));
}

#[test]
fn unknown_pre_tokenizer_regex_is_an_error_naming_it() {
    let src = fixture("tiny-llama-hf");
    let dir = std::env::temp_dir().join(format!("rf-hftok-pre-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("tokenizer.json")).expect("read")).expect("json");
    j["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{L}{1,7}|[0-9]"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&j).expect("ser")).expect("write");
    let r = hf_tokenizer_gguf_metadata(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        Err(e @ TokenizerError::UnknownHfPreTokenizer { .. }) => assert!(e.to_string().contains(r"\p{L}{1,7}|[0-9]"), "{e}"),
        other => panic!("expected UnknownHfPreTokenizer, got {other:?}"),
    }
}

/// A byte-fallback BPE tokenizer (llama/SentencePiece style, made by
/// scripts/fixtures/tiny_spm_tokenizer.py) becomes a `llama` (SPM) vocabulary that tokenizes like
/// HF tokenizers.
#[test]
fn spm_style_bpe_becomes_a_llama_vocab_that_tokenizes_like_hf() {
    let dir = fixture("tiny-spm-tokenizer");
    let md = hf_tokenizer_gguf_metadata(&dir).expect("convert");
    assert_eq!(md_str(&md, "tokenizer.ggml.model"), Some("llama"));
    assert!(md_str(&md, "tokenizer.chat_template").is_some_and(|t| t.contains("messages")));
    let tok = Tokenizer::from_gguf_vocab(GgufVocab::from_metadata(&md).expect("vocab")).expect("tokenizer");
    let hf = Tokenizer::from_hf_dir(&dir).expect("hf tokenizer");
    assert_eq!(tok.n_vocab(), hf.n_vocab());
    assert_eq!((tok.bos(), tok.eos(), tok.unk()), (hf.bos(), hf.eos(), hf.unk()));
    assert!(tok.add_bos());
    for t in TEXTS.iter().chain(&["The quick brown fox", "there then the"]) {
        assert_eq!(tok.encode(t, false, true).expect("encode"), hf.encode(t, false, true).expect("hf encode"), "on {t:?}");
        assert_eq!(tok.decode(&tok.encode(t, false, true).expect("encode"), true), *t, "round trip of {t:?}");
    }
}
