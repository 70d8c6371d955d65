//! GGML tensor types as GGUF stores them: ids, block layouts, and reference (scalar) dequantize
//! and quantize for every type in use.
//!
//! Invariants: a tensor of type `t` with `n` elements (n a multiple of `t.block_size()`) occupies
//! exactly `n / block_size * type_size` bytes; the numeric ids are GGUF's `ggml_type` values and
//! never change. Reference implementations follow llama.cpp's `ggml-quants.c` bit for bit (checked
//! against vectors produced by llama.cpp, see `tests/`); fast dot products live in the CPU backend.

mod types;
pub use types::{GgmlType, QuantError};
