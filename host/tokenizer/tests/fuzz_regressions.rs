//! Inputs the fuzz targets (`fuzz/fuzz_targets/tokenizer_json.rs`, `gguf_tokenizer.rs`) found to
//! crash, kept as regression tests: each must now load with a clear error (or work), never panic.
//! Files: `tests/fixtures/fuzz/<target>-<what>.json`, the crashing input as libFuzzer wrote it.

mod common;

use std::path::PathBuf;

use rocmforge_tokenizer::{hf_tokenizer_gguf_metadata, GgufVocab, Tokenizer, TokenizerError};

/// A scratch model directory holding `tokenizer.json` = `bytes`.
fn dir_with(name: &str, bytes: &[u8]) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rf-tok-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    std::fs::write(d.join("tokenizer.json"), bytes).expect("write");
    d
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(common::repo_root().join("host/tokenizer/tests/fixtures/fuzz").join(name)).expect("fixture")
}

/// tokenizers 0.22 deserializes a TemplateProcessing whose template names a special token that
/// its `special_tokens` map lacks (here the key was mutated to "[SGP]"), then panics in
/// `encode` ("no entry found for key"). We refuse it at load, naming the token.
#[test]
fn template_with_undefined_special_token_is_a_load_error() {
    let d = dir_with("template", &fixture("tokenizer_json-template-undefined-special.json"));
    match Tokenizer::from_hf_dir(&d) {
        Err(TokenizerError::HfLoad { message, .. }) => {
            assert!(message.contains("'[SEP]'") && message.contains("special_tokens"), "{message}")
        }
        other => panic!("expected HfLoad, got {:?}", other.map(|t| t.kind().to_string())),
    }
    // The GGUF conversion does not use the post-processor's map: it loads and encodes.
    let md = hf_tokenizer_gguf_metadata(&d).expect("GGUF metadata");
    let t = Tokenizer::from_gguf_vocab(GgufVocab::from_metadata(&md).expect("vocab")).expect("tokenizer");
    assert!(!t.encode("hello world", true, true).expect("encode").is_empty());
    let _ = std::fs::remove_dir_all(&d);
}

/// A WordPiece vocabulary entry with id 13922222222222222222: the GGUF conversion truncated it to
/// 32 bits and built a vocabulary of ~3 billion `[PADi]` tokens (out of memory). Ids must fit
/// 32 bits and may leave at most as many gaps as there are tokens.
#[test]
fn huge_vocab_id_is_a_clear_error() {
    let d = dir_with("huge-id", &fixture("tokenizer_json-huge-vocab-id.json"));
    match hf_tokenizer_gguf_metadata(&d) {
        Err(TokenizerError::HfLoad { message, .. }) => assert!(message.contains("32-bit"), "{message}"),
        other => panic!("expected HfLoad, got {:?}", other.map(|m| m.len())),
    }
    // The `tokenizers` crate refuses the id too.
    assert!(Tokenizer::from_hf_dir(&d).is_err());
    // A 32-bit id far past the vocabulary: sparse.
    let json = std::fs::read_to_string(d.join("tokenizer.json")).expect("read");
    let sparse = json.replace("13922222222222222222", "4000000000");
    let d2 = dir_with("sparse-id", sparse.as_bytes());
    match hf_tokenizer_gguf_metadata(&d2) {
        Err(TokenizerError::HfLoad { message, .. }) => assert!(message.contains("sparse"), "{message}"),
        other => panic!("expected HfLoad, got {:?}", other.map(|m| m.len())),
    }
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&d2);
}
