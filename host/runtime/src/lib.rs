//! The runtime: plugin loading, the graph IR that plugins record, model sources (GGUF and HF
//! directories under GGUF names), and the executor that runs a graph on a backend over a paged
//! KV cache. Knows nothing of requests or HTTP (DESIGN.md §1).

pub mod backend;
pub mod batch;
mod dump;
pub mod exec;
pub mod graph;
mod hf_keys;
mod hf_rope;
pub mod host_api;
pub mod kv_layout;
pub mod kv_scales;
pub mod lora;
pub mod op_spec;
pub mod plan;
pub mod plugin;
pub mod plugin_check;
pub mod source;
mod source_derived;

use std::path::PathBuf;

pub use exec::{Executor, SeqBatch};
pub use graph::Graph;
pub use host_api::build_graph;
pub use kv_layout::{KvGroup, KvKind, KvLayout, NULL_BLOCK};
pub use kv_scales::{KvHeadScales, KvScales, KvScalesOrigin};
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
    /// A host callback refused a plugin's call (bad pointer, wrong thread) or panicked serving it.
    #[error("plugin '{plugin}' ({path}): host callback {callback}: {what}")]
    PluginCallback { plugin: String, path: PathBuf, callback: &'static str, what: String },
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
    #[error("node '{node}': {what}")]
    Kernel { node: String, what: String },
    #[error("intermediate dump to {path}: {what}")]
    Dump { path: PathBuf, what: String },
    /// A driver, compiler or kernel-shape failure of the GPU backend.
    #[error("GPU: {0}")]
    Gpu(#[from] rocmforge_gpu::GpuError),
    /// An op the chosen backend does not implement (yet).
    #[error("node '{node}': {op} is not supported by the {backend} backend yet")]
    Unsupported { node: String, op: String, backend: String },
    /// The model does not fit the device's free memory (bytes).
    #[error("the model needs {need} bytes of device memory ({what}), {free} are free")]
    DeviceMemory { need: usize, free: usize, what: String },
    /// The KV cache cannot be made for this model (e.g. q8_0 with a head dim not a multiple of 32).
    #[error("KV cache: {0}")]
    KvCache(String),
    /// A LoRA adapter that does not fit the model (architecture, tensor names, shapes).
    #[error("LoRA adapter {path}: {what}")]
    Lora { path: PathBuf, what: String },
    /// A bad `--device` / `ROCMFORGE_DEVICE` value.
    #[error("bad device '{0}': expected cpu, auto, cuda[:N] or hip[:N]")]
    BadDevice(String),
}

impl RuntimeError {
    /// True when the backend's device is gone for good (a GPU error that poisoned its context,
    /// `rocmforge_gpu::GpuError::DeviceLost`): nothing more can run on this executor, so the
    /// caller fails the work in flight and drops the model instead of retrying.
    pub fn is_device_lost(&self) -> bool {
        matches!(self, RuntimeError::Gpu(e) if e.is_device_lost())
    }
}
