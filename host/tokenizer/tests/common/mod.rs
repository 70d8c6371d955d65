//! Shared helpers for the tokenizer integration tests: repo-relative test-data paths (a missing
//! file fails with a hint to run `scripts/fetch-test-data.sh`) and GGUF loading through our reader.
#![allow(dead_code)]

use std::path::PathBuf;

use rocmforge_model::gguf::GgufFile;
use rocmforge_tokenizer::{Tokenizer, TokenizerError};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A test-data file that must exist.
pub fn data(rel: &str) -> PathBuf {
    let p = repo_root().join(rel);
    assert!(p.exists(), "missing test data {}: run scripts/fetch-test-data.sh", p.display());
    p
}

pub fn try_load_gguf(rel: &str) -> Result<Tokenizer, TokenizerError> {
    let path = data(rel);
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&f)
}

pub fn load_gguf(rel: &str) -> Tokenizer {
    try_load_gguf(rel).unwrap_or_else(|e| panic!("{rel}: {e}"))
}
