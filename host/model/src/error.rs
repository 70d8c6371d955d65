//! The model layer's error type. Every variant names the file it concerns, so a user can act on it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic {magic:02x?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: truncated at byte {offset} while reading {what}")]
    Truncated { path: PathBuf, offset: u64, what: String },
    #[error("{path}: malformed: {what}")]
    Malformed { path: PathBuf, what: String },
    #[error("{path}: tensor '{tensor}': {what}")]
    BadTensor { path: PathBuf, tensor: String, what: String },
    #[error("{path}: missing metadata key '{key}'")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key '{key}' has type {got}, expected {want}")]
    WrongType { path: PathBuf, key: String, got: &'static str, want: &'static str },
    #[error("{path}: tensor '{tensor}' has dtype {dtype}, which ROCmForge cannot run yet")]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String },
    #[error("{path}: {source}")]
    Quant {
        path: PathBuf,
        #[source]
        source: rocmforge_quant::QuantError,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("unknown quantization type '{name}'; valid types: {valid}")]
    UnknownFileType { name: String, valid: String },
    #[error("{path}: tensor '{tensor}' is already quantized ({from}); requantizing it to {to} loses quality and is off unless asked for (--allow-requantize)")]
    RequantizeDisabled { path: PathBuf, tensor: String, from: &'static str, to: &'static str },
    #[error("{path}: {ftype} needs an importance matrix for tensor '{tensor}' ({ty}), which is not supported")]
    NeedsImatrix { path: PathBuf, tensor: String, ftype: &'static str, ty: &'static str },
    /// A PyTorch `.bin` pickle names a global outside the unpickler's allow-list (see
    /// `torch_bin::pickle`): it would run code under `torch.load`, so nothing of it is used.
    #[error("{path}: refused: the checkpoint's pickle imports '{global}', which is not a tensor or state-dict constructor; a .bin checkpoint can run code when Python loads it, so ROCmForge only reads tensors from it and never executes anything (if the file is trusted, convert it to safetensors)")]
    RefusedGlobal { path: PathBuf, global: String },
    #[error("{0}")]
    Other(String),
}
