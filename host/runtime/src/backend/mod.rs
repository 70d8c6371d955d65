//! The backend seam: what the executor asks of a device. The executor decides everything that is
//! the same on every device once per model (the [`Plan`]: memory layout, step order, fusions)
//! and per step ([`BatchMeta`]: tokens, positions, output rows, block tables, validated); a
//! backend owns the weights in its memory, the activation arena, the paged KV cache and the
//! kernels, and runs the plan's steps.
//!
//! Contract:
//! - `forward` computes every step of the plan for the batch and returns the output rows
//!   (`[n_outputs, n_out_cols]`, or one pooled row per sequence) in host memory. The arena is
//!   sized once at construction for `max_batch_tokens` rows, so device pointers stay put for
//!   graph capture; a backend may refuse (GPU) or grow (CPU) for a larger batch.
//! - K/V of the batch's tokens are written into the blocks named by the block tables, then
//!   attention reads the sequence's whole paged history.
//! - With a dump, every written node is handed to `Dump::write` after its step.
//!
//! Backends: [`cpu::CpuBackend`] and [`gpu::GpuBackend`] (one runtime layer for CUDA and HIP,
//! `host/gpu`); `exec::Device` picks one.

pub mod cpu;
pub mod fault;
pub mod gpu;
pub(crate) mod moe;
pub(crate) mod moe_route;

use crate::batch::BatchMeta;
use crate::dump::Dump;
use crate::exec::KvConfig;
use crate::graph::Graph;
use crate::kv_scales::KvScales;
use crate::plan::Plan;
use crate::RuntimeError;

pub trait Backend: Send {
    /// A short name for logs ("CPU (AVX-512 VNNI, 16 threads)").
    fn name(&self) -> String;
    fn kv_config(&self) -> KvConfig;
    /// Run the plan for one batch (see the module header).
    fn forward(&mut self, g: &Graph, p: &Plan, b: &BatchMeta, dump: Option<&Dump>) -> Result<&[f32], RuntimeError>;
    /// Run the plan and return the index of the largest value of every output row (the first
    /// one on ties), computed where the rows are, so only token ids come back (a GPU saves the
    /// copy of `n_outputs x n_vocab` logits per step). `None`: this backend has no such path;
    /// the caller uses `forward` (nothing was run).
    fn forward_argmax(&mut self, _g: &Graph, _p: &Plan, _b: &BatchMeta) -> Result<Option<&[u32]>, RuntimeError> {
        Ok(None)
    }
    /// Use these fp8 KV cache scales (per layer, per tensor or per KV head; checked against the
    /// graph by the executor) for every K/V row written and read from now on; only called for
    /// an fp8 cache. A backend without support answers `Unsupported` (the default), which the
    /// executor reports as a warning, keeping scale 1.0.
    fn set_kv_scales(&mut self, _scales: &KvScales) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported { node: "KV cache".into(), op: "fp8 KV scales".into(), backend: self.name() })
    }
}
