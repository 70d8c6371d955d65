//! The error type of the CPU backend.

use rocmforge_quant::QuantError;

/// Errors of the CPU kernels: bad shapes or unsupported types, never numeric trouble.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuError {
    #[error("{op}: tensor type {ty} is not supported")]
    UnsupportedType { op: &'static str, ty: &'static str },
    #[error("{op}: length {k} is not a multiple of the {ty} block size {block}")]
    NotBlockAligned { op: &'static str, ty: &'static str, k: usize, block: usize },
    #[error("{op}: {what} has length {got}, expected {want}")]
    BadLength { op: &'static str, what: &'static str, got: usize, want: usize },
    #[error("{op}: row id {id} out of range (table has {n_rows} rows)")]
    RowOutOfRange { op: &'static str, id: u32, n_rows: usize },
    #[error("{op}: position {pos} needs block-table entry {index}, table has {len}")]
    BlockTableTooShort { op: &'static str, pos: usize, index: usize, len: usize },
    #[error("{op}: block id {block} out of range (cache has {n_blocks} blocks)")]
    BlockOutOfRange { op: &'static str, block: u32, n_blocks: usize },
    #[error("{op}: layer {layer} out of range (cache has {n_layer} layers)")]
    LayerOutOfRange { op: &'static str, layer: usize, n_layer: usize },
    #[error("{op}: {n_head} query heads are not a multiple of {n_head_kv} KV heads")]
    BadHeadGrouping { op: &'static str, n_head: usize, n_head_kv: usize },
    #[error("kv cache type '{got}' is not supported: use f16|q8_0|fp8")]
    UnsupportedKvCacheType { got: String },
    #[error("kv cache type {ty} needs head dims that are multiples of {block}, the model has {dim}")]
    KvCacheHeadDim { ty: &'static str, dim: usize, block: usize },
    #[error("kv cache with V read from K: head_dim_v {dv} must be in 1..={dk} (head_dim_k)")]
    VInKHeadDims { dk: usize, dv: usize },
    /// (The scale as text: the enum is `Eq`.)
    #[error("{op}: fp8 scale {scale} must be finite and positive")]
    BadKvScale { op: &'static str, scale: String },
    #[error("{op}: {n} fp8 {which} scales for {n_head_kv} KV heads: give one (per tensor) or one per KV head")]
    KvScaleCount { op: &'static str, which: &'static str, n: usize, n_head_kv: usize },
    #[error(transparent)]
    Quant(#[from] QuantError),
}
