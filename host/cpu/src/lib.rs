//! ROCmForge CPU backend: the compute kernels the graph executor calls on the CPU.
//!
//! - [`matmul`] / [`matmul_bias`] / [`matmul_many`]: `y = W x` for F32/F16/BF16 and every GGML
//!   quant type the model files use (Q4_0/1, Q5_0/1, Q8_0, Q2_K..Q6_K, Q8_K, IQ4_NL, IQ4_XS, MXFP4), with
//!   activations quantized as llama.cpp does ([`quantize_activations`]) and integer dot products
//!   (AVX-512 VNNI, AVX2, AArch64 NEON with or without `sdot`, scalar).
//! - [`get_rows`], [`rms_norm`], [`layer_norm`], [`rope`], activations and GLUs, [`softmax_inplace`].
//! - [`head_matmul`], [`head_view`], [`head_concat`]: per-head products and column moves (MLA).
//! - [`KvCache`] + [`attention`]: paged KV memory addressed through block tables, elements f16
//!   (default), q8_0 or fp8 E4M3 ([`KvCacheType`]).
//! - [`ThreadPool`]: persistent workers; every parallel op takes one.
//!
//! Numerics: every ISA path gives the same bits as the portable one, and the kernels reproduce
//! llama.cpp's x86 CPU backend bit for bit where that is feasible (activation quantization,
//! Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 dot products, Q3_K/Q4_K/Q5_K/Q6_K matmuls (`kquant`: llama.cpp's kernel choice
//! per batch size and weight shape), attention with an f16 cache, RoPE, RMS norm, SiLU /
//! SwiGLU): with 8-bit activations any 1-ulp difference upstream flips roundings and shows as
//! ~0.1-1 logit noise, so "close" is not enough. Q2_K/IQ4_XS dots and dense F16/BF16
//! dots use their own (fixed) summation order.
//!
//! Knows nothing of graphs, models or files. SIMD is chosen at run time ([`Isa::detect`]).

// Kernels index several parallel arrays (rows x tokens x lanes) with one loop variable.
#![allow(clippy::needless_range_loop)]

mod act;
mod attention;
mod error;
mod heads;
mod kquant;
#[cfg(target_arch = "x86_64")]
mod kquant_dec;
#[cfg(target_arch = "x86_64")]
mod kquant_tl;
mod kv_quant;
mod matmul;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "aarch64")]
mod neon_act;
#[cfg(target_arch = "aarch64")]
mod neon_decode;
#[cfg(target_arch = "aarch64")]
mod neon_qmatmul;
mod ops;
mod pool;
mod qdecode;
mod qmatmul;
mod simd;
mod unpack;

pub use act::quantize_activations;
pub use attention::{attention, attention_isa, attention_with_scales, AttnParams, KvCache};
pub use error::CpuError;
pub use heads::{head_concat, head_matmul, head_view};
pub use kquant::{batch_invariant, set_batch_invariant};
pub use kv_quant::{e4m3_to_f32, f32_to_e4m3, KvCacheType, KvHeadScales, KV_CACHE_TYPES};
pub use matmul::{get_rows, matmul, matmul_bias, matmul_ext, matmul_many, supports_matmul, MatmulOut};
pub use ops::{
    add, geglu, gelu, gelu_erf, layer_norm, mul, rms_norm, rope, rope_cache, rope_yarn_corr_dims, rope_yarn_corr_dims_exact, scale, silu,
    softcap, softmax_inplace, swiglu, swiglu_oai, RopeParams,
};
pub use pool::ThreadPool;
pub use qmatmul::SyncPtr;
pub use rocmforge_quant::GgmlType;
pub use simd::Isa;
