//! The runtime: plugin loading, the graph IR that plugins record, model sources (GGUF and HF
//! directories under GGUF names), and the executor that runs a graph on a backend over a paged
//! KV cache. Knows nothing of requests or HTTP (DESIGN.md §1).

pub mod exec;
pub mod graph;
mod hf_rope;
pub mod host_api;
mod moe;
pub mod plugin;
pub mod source;

use std::path::PathBuf;

pub use exec::{Executor, SeqBatch};
pub use graph::Graph;
pub use host_api::build_graph;
pub use plugin::{Plugin, Registry};
pub use source::ModelSource;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Model(#[from] rocmforge_model::ModelError),
    #[error("plugin {path}: {what}")]
    Plugin { path: PathBuf, what: String },
    #[error("plugin '{plugin}' ({path}) could not build architecture '{arch}': {what}")]
    PluginBuild { plugin: String, path: PathBuf, arch: String, what: String },
    #[error("no plugin serves architecture '{arch}'; available: {}", if available.is_empty() { "none (no plugins found: set ROCMFORGE_PLUGINS)".to_string() } else { available.join(", ") })]
    UnknownArch { arch: String, available: Vec<String> },
    #[error("missing tensor '{name}'")]
    MissingTensor { name: String },
    #[error("missing tensor '{name}' required by architecture '{arch}'")]
    MissingTensorOfArch { name: String, arch: String },
    #[error("graph node '{node}': {what}")]
    Graph { node: String, what: String },
    #[error("weight '{name}': {what}")]
    Weight { name: String, what: String },
    #[error("prompt of {n_tokens} tokens does not fit the context of {n_ctx} tokens")]
    ContextOverflow { n_tokens: usize, n_ctx: usize },
    #[error("batch: {0}")]
    Batch(String),
    #[error("CPU backend: {0}")]
    Cpu(String),
    #[error("intermediate dump to {path}: {what}")]
    Dump { path: PathBuf, what: String },
}
