//! ROCmForge GPU backend: one runtime layer for NVIDIA (CUDA driver API) and AMD (HIP), loaded at
//! run time, and the kernels of `kernels/` compiled for the device at first use.
//!
//! - [`Device`]: `Device::open(spec)` with `cuda:N`, `hip:N` or `auto`; [`DeviceInfo`] reports
//!   name, memory, compute capability / gfx arch, warp size. Device memory ([`DeviceBuffer`]),
//!   [`Stream`]s, [`Event`]s, graph capture and replay ([`Graph`], [`GraphExec`]).
//! - [`Module`] / [`Function`] / [`KernelArgs`]: code objects and launches.
//! - [`Kernels`]: every kernel of `kernels/` behind shape-checked wrappers (RMSNorm, RoPE, GLUs,
//!   add/mul/scale, argmax, get_rows, quantized matrix-vector products, KV write, paged
//!   attention); [`GpuMatrix`] holds weights repacked for 128-bit loads ([`repack`]).
//! - [`GpuKvCache`] (f16 / q8_0 / fp8 elements, [`KvType`]) and split-K attention for long
//!   contexts ([`AttnSplit`], [`attn_split_parts`]): `attention.rs`.
//!
//! No GPU library is linked: `libcuda` / `libamdhip64` and NVRTC / hipRTC are opened with
//! `libloading` when a device is first asked for, so this crate builds and its CPU-side tests
//! run on a machine with neither. One vendor table (`api.rs`, `rtc.rs`) maps symbol names and
//! enum values; all other code is shared, so every H100 run exercises the AMD code path except
//! that table (DESIGN.md decisions 3 and 4).
//!
//! Knows nothing of graphs, models or requests.

mod api;
mod attention;
mod blas;
mod device;
mod error;
mod fused;
mod gemm;
mod graph_kernels;
mod kernels;
mod module;
pub mod repack;
mod rtc;

pub use api::Vendor;
pub use attention::{
    attn_key_parts, attn_split_parts, attn_workspace_rows, AttnBatch, AttnConfig, AttnSeq, AttnSplit, AttnWorkspace, GpuKvCache, KvSlots,
    KvType, ATTN_MAX_PARTS, ATTN_PART_KEYS, NULL_BLOCK,
};
pub use blas::Blas;
pub use device::{Device, DeviceBuffer, DeviceCopy, DeviceInfo, DeviceSpec, DeviceView, Event, Graph, GraphExec, Stream};
pub use error::{GpuError, Result};
pub use fused::Glu;
pub use gemm::{GemmScratch, GEMM_CHUNK_VALUES};
pub use graph_kernels::{PoolMode, Unary};
pub use kernels::{
    compile_all, compile_options, compile_source, compiler_library, rope_yarn_corr_dims, GpuMatrix, Kernels, QuantActs, RopeConfig,
    HEADERS, MMV_MAX_TOKENS, SOURCES,
};
pub use module::{Function, KernelArgs, Module};
pub use rtc::cache_dir;

/// Is a GPU of either vendor present and usable? (Cheap after the first call.)
pub fn gpu_available() -> bool {
    Device::count(Vendor::Cuda) > 0 || Device::count(Vendor::Hip) > 0
}
