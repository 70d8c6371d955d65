//! The model-file layer: GGUF (v2/v3) reading over a memory map and writing, safetensors, and
//! Hugging Face model directories (safetensors, or PyTorch `.bin` checkpoints read by a restricted
//! unpickler that runs nothing), LoRA adapters (GGUF and PEFT), a model summary for `rocmforge show`, and the quantizer.
//!
//! Everything here is GPU-free and HTTP-free. Parsers treat files as untrusted: every offset,
//! length and count is checked against the file size before use, and nothing is allocated on the
//! say-so of a header alone (the GGUF, safetensors and `.bin` readers are fuzzed, see `fuzz/`).

pub mod error;
pub mod fp8;
pub mod gguf;
pub mod hf;
pub mod info;
pub mod lora;
pub mod mxfp6;
pub mod quantize;
pub mod torch_bin;
pub use error::ModelError;
