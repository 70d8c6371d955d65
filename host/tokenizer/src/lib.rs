//! Tokenizers (placeholder)
