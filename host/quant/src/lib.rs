//! GGML tensor types as GGUF stores them: ids, block layouts, and reference (scalar) dequantize
//! and quantize for every type in use.
//!
//! Crate boundary (a deviation from DESIGN.md §1, which lists quant formats under `host/model`): the
//! block formats are their own crate because both `host/model` (quantizer) and the CPU backend need
//! them and neither should depend on the other.
//!
//! Invariants: a tensor of type `t` with `n` elements (n a multiple of `t.block_size()`) occupies
//! exactly `n / block_size * type_size` bytes; the numeric ids are GGUF's `ggml_type` values and
//! never change. Reference implementations follow llama.cpp's `ggml-quants.c` bit for bit (checked
//! against vectors produced by llama.cpp, see `tests/`); fast dot products live in the CPU backend.
//!
//! Exactness (tests/llama_refs.rs, vectors from llama.cpp's own library):
//! - `dequantize` is bitwise equal to llama.cpp's `to_float` for every type, lattice i-quants
//!   (IQ1/IQ2/IQ3) included.
//! - `quantize` is byte-equal to `ggml_quantize_chunk(type, .., imatrix = NULL)`, i.e. what
//!   `llama-quantize` writes without an importance matrix, for F32, F16, BF16, Q4_0, Q4_1, Q5_0,
//!   Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4 (and `quantize_row_q8_1_ref` /
//!   `quantize_row_q8_K_ref` for the activation formats Q8_1 / Q8_K). That takes keeping
//!   llama.cpp's f32 operation order everywhere (Rust never fuses multiply-adds on its own).
//!
//! Every function here is single-threaded and allocation-free per block: callers parallelise
//! over rows or tensors. Unsupported requests give `QuantError::Unsupported`, and no input
//! (bytes or floats, NaN included) makes them panic. Multi-byte fields are little-endian.

pub mod blocks;
pub mod fp;
mod iq4;
mod iq_grids;
mod iq_lattice;
mod kquants;
mod ksearch;
mod legacy;
mod tq_mxfp4;
mod types;

use bytemuck::Pod;

pub use blocks::{get_scale_min_k4, KVALUES_IQ4NL, KVALUES_MXFP4, QK_K};
pub use fp::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
pub use tq_mxfp4::e8m0_half;
pub use types::{GgmlType, QuantError};

/// (dequantize, quantize) support per type. Exhaustive on purpose: a type added to
/// `GgmlType` must be classified here before the crate compiles.
#[rustfmt::skip]
fn support(ty: GgmlType) -> (bool, bool) {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 => (true, true),
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => (true, true),
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => (true, true),
        IQ4_NL | IQ4_XS | TQ1_0 | TQ2_0 | MXFP4 => (true, true),
        // Lattice i-quants: quantizing them needs an importance matrix and search tables.
        IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S | IQ1_S | IQ1_M => (true, false),
        // Plain scalars other than floats: readable (converted with `as f32`), never written.
        I8 | I16 | I32 | I64 | F64 => (true, false),
    }
}

/// True if [`dequantize`] supports `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    support(ty).0
}

/// True if [`quantize`] supports `ty` (converting from f32).
pub fn can_quantize(ty: GgmlType) -> bool {
    support(ty).1
}

fn unsupported(ty: GgmlType, op: &'static str) -> QuantError {
    QuantError::Unsupported { ty: ty.name(), op }
}

/// Bytes for `n` elements of `ty`, checking block alignment.
fn bytes_for(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    let block = ty.block_size();
    if !n.is_multiple_of(block) {
        return Err(QuantError::NotBlockAligned { ty: ty.name(), n, block });
    }
    Ok(n / block * ty.type_size())
}

fn check_len(ty: GgmlType, got: usize, want: usize) -> Result<(), QuantError> {
    if got != want {
        return Err(QuantError::BadLength { ty: ty.name(), got, want });
    }
    Ok(())
}

/// Decode every block of `src` with `f` into consecutive `block`-sized chunks of `dst`.
/// Blocks are read unaligned (a copy of at most 292 bytes), so any byte slice works.
#[inline]
fn each_block<B: Pod>(src: &[u8], dst: &mut [f32], block: usize, f: impl Fn(&B, &mut [f32])) {
    let size = std::mem::size_of::<B>();
    for (s, d) in src.chunks_exact(size).zip(dst.chunks_exact_mut(block)) {
        f(&bytemuck::pod_read_unaligned::<B>(s), d);
    }
}

/// Encode consecutive `block`-sized chunks of `src` with `f` into `dst`.
#[inline]
fn each_chunk<B: Pod>(src: &[f32], dst: &mut [u8], block: usize, f: impl Fn(&[f32]) -> B) {
    let size = std::mem::size_of::<B>();
    for (s, d) in src.chunks_exact(block).zip(dst.chunks_exact_mut(size)) {
        d.copy_from_slice(bytemuck::bytes_of(&f(s)));
    }
}

/// Plain little-endian scalars of `W` bytes each, converted with `f`.
#[inline]
fn each_scalar<const W: usize>(src: &[u8], dst: &mut [f32], f: impl Fn([u8; W]) -> f32) {
    for (s, d) in src.chunks_exact(W).zip(dst.iter_mut()) {
        let mut a = [0u8; W];
        a.copy_from_slice(s);
        *d = f(a);
    }
}

/// Decode `dst.len()` elements of type `ty` from `src` (exactly `ty.row_bytes(dst.len())` bytes).
/// Integer and f64 types convert with `as f32`.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    if !can_dequantize(ty) {
        return Err(unsupported(ty, "dequantize"));
    }
    let want = bytes_for(ty, dst.len())?;
    check_len(ty, src.len(), want)?;
    let bs = ty.block_size();
    match ty {
        F32 => each_scalar::<4>(src, dst, f32::from_le_bytes),
        F16 => each_scalar::<2>(src, dst, |b| f16_to_f32(u16::from_le_bytes(b))),
        BF16 => each_scalar::<2>(src, dst, |b| bf16_to_f32(u16::from_le_bytes(b))),
        F64 => each_scalar::<8>(src, dst, |b| f64::from_le_bytes(b) as f32),
        I8 => each_scalar::<1>(src, dst, |b| b[0] as i8 as f32),
        I16 => each_scalar::<2>(src, dst, |b| i16::from_le_bytes(b) as f32),
        I32 => each_scalar::<4>(src, dst, |b| i32::from_le_bytes(b) as f32),
        I64 => each_scalar::<8>(src, dst, |b| i64::from_le_bytes(b) as f32),
        Q4_0 => each_block(src, dst, bs, legacy::dequantize_q4_0),
        Q4_1 => each_block(src, dst, bs, legacy::dequantize_q4_1),
        Q5_0 => each_block(src, dst, bs, legacy::dequantize_q5_0),
        Q5_1 => each_block(src, dst, bs, legacy::dequantize_q5_1),
        Q8_0 => each_block(src, dst, bs, legacy::dequantize_q8_0),
        Q8_1 => each_block(src, dst, bs, legacy::dequantize_q8_1),
        Q2_K => each_block(src, dst, bs, kquants::dequantize_q2_k),
        Q3_K => each_block(src, dst, bs, kquants::dequantize_q3_k),
        Q4_K => each_block(src, dst, bs, kquants::dequantize_q4_k),
        Q5_K => each_block(src, dst, bs, kquants::dequantize_q5_k),
        Q6_K => each_block(src, dst, bs, kquants::dequantize_q6_k),
        Q8_K => each_block(src, dst, bs, kquants::dequantize_q8_k),
        IQ4_NL => each_block(src, dst, bs, iq4::dequantize_iq4_nl),
        IQ4_XS => each_block(src, dst, bs, iq4::dequantize_iq4_xs),
        TQ1_0 => each_block(src, dst, bs, tq_mxfp4::dequantize_tq1_0),
        TQ2_0 => each_block(src, dst, bs, tq_mxfp4::dequantize_tq2_0),
        MXFP4 => each_block(src, dst, bs, tq_mxfp4::dequantize_mxfp4),
        IQ2_XXS => each_block(src, dst, bs, iq_lattice::dequantize_iq2_xxs),
        IQ2_XS => each_block(src, dst, bs, iq_lattice::dequantize_iq2_xs),
        IQ2_S => each_block(src, dst, bs, iq_lattice::dequantize_iq2_s),
        IQ3_XXS => each_block(src, dst, bs, iq_lattice::dequantize_iq3_xxs),
        IQ3_S => each_block(src, dst, bs, iq_lattice::dequantize_iq3_s),
        IQ1_S => each_block(src, dst, bs, iq_lattice::dequantize_iq1_s),
        IQ1_M => each_block(src, dst, bs, iq_lattice::dequantize_iq1_m),
    }
    Ok(())
}

/// Encode `src` (a whole number of blocks) as type `ty` into `dst` (exactly the row size).
/// Output equals llama.cpp's `ggml_quantize_chunk(ty, ..., imatrix = NULL)` byte for byte.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    use GgmlType::*;
    if !can_quantize(ty) {
        return Err(unsupported(ty, "quantize"));
    }
    let want = bytes_for(ty, src.len())?;
    check_len(ty, dst.len(), want)?;
    let bs = ty.block_size();
    match ty {
        F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        F16 | BF16 => {
            let conv = if ty == F16 { f32_to_f16 } else { f32_to_bf16 };
            for (d, &s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&conv(s).to_le_bytes());
            }
        }
        Q4_0 => each_chunk(src, dst, bs, legacy::quantize_q4_0),
        Q4_1 => each_chunk(src, dst, bs, legacy::quantize_q4_1),
        Q5_0 => each_chunk(src, dst, bs, legacy::quantize_q5_0),
        Q5_1 => each_chunk(src, dst, bs, legacy::quantize_q5_1),
        Q8_0 => each_chunk(src, dst, bs, legacy::quantize_q8_0),
        Q8_1 => each_chunk(src, dst, bs, legacy::quantize_q8_1),
        Q2_K => each_chunk(src, dst, bs, kquants::quantize_q2_k),
        Q3_K => each_chunk(src, dst, bs, kquants::quantize_q3_k),
        Q4_K => each_chunk(src, dst, bs, kquants::quantize_q4_k),
        Q5_K => each_chunk(src, dst, bs, kquants::quantize_q5_k),
        Q6_K => each_chunk(src, dst, bs, kquants::quantize_q6_k),
        Q8_K => each_chunk(src, dst, bs, kquants::quantize_q8_k),
        IQ4_NL => each_chunk(src, dst, bs, iq4::quantize_iq4_nl),
        IQ4_XS => each_chunk(src, dst, bs, iq4::quantize_iq4_xs),
        TQ1_0 => each_chunk(src, dst, bs, tq_mxfp4::quantize_tq1_0),
        TQ2_0 => each_chunk(src, dst, bs, tq_mxfp4::quantize_tq2_0),
        MXFP4 => each_chunk(src, dst, bs, tq_mxfp4::quantize_mxfp4),
        _ => return Err(unsupported(ty, "quantize")),
    }
    Ok(())
}

/// [`quantize`] into a new buffer.
pub fn quantize_to_vec(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    if !can_quantize(ty) {
        return Err(unsupported(ty, "quantize"));
    }
    let mut out = vec![0u8; bytes_for(ty, src.len())?];
    quantize(ty, src, &mut out)?;
    Ok(out)
}

/// [`dequantize`] `n` elements into a new buffer.
pub fn dequantize_to_vec(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>, QuantError> {
    if !can_dequantize(ty) {
        return Err(unsupported(ty, "dequantize"));
    }
    // Check the length before allocating: `n` may come from an untrusted header.
    check_len(ty, src.len(), bytes_for(ty, n)?)?;
    let mut out = vec![0.0f32; n];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_structs_match_type_sizes() {
        use blocks::*;
        use std::mem::size_of;
        let sizes = [
            (GgmlType::Q4_0, size_of::<BlockQ4_0>()),
            (GgmlType::Q4_1, size_of::<BlockQ4_1>()),
            (GgmlType::Q5_0, size_of::<BlockQ5_0>()),
            (GgmlType::Q5_1, size_of::<BlockQ5_1>()),
            (GgmlType::Q8_0, size_of::<BlockQ8_0>()),
            (GgmlType::Q8_1, size_of::<BlockQ8_1>()),
            (GgmlType::Q2_K, size_of::<BlockQ2K>()),
            (GgmlType::Q3_K, size_of::<BlockQ3K>()),
            (GgmlType::Q4_K, size_of::<BlockQ4K>()),
            (GgmlType::Q5_K, size_of::<BlockQ5K>()),
            (GgmlType::Q6_K, size_of::<BlockQ6K>()),
            (GgmlType::Q8_K, size_of::<BlockQ8K>()),
            (GgmlType::IQ4_NL, size_of::<BlockIq4Nl>()),
            (GgmlType::IQ4_XS, size_of::<BlockIq4Xs>()),
            (GgmlType::TQ1_0, size_of::<BlockTq1_0>()),
            (GgmlType::TQ2_0, size_of::<BlockTq2_0>()),
            (GgmlType::MXFP4, size_of::<BlockMxfp4>()),
            (GgmlType::IQ2_XXS, size_of::<BlockIq2Xxs>()),
            (GgmlType::IQ2_XS, size_of::<BlockIq2Xs>()),
            (GgmlType::IQ2_S, size_of::<BlockIq2S>()),
            (GgmlType::IQ3_XXS, size_of::<BlockIq3Xxs>()),
            (GgmlType::IQ3_S, size_of::<BlockIq3S>()),
            (GgmlType::IQ1_S, size_of::<BlockIq1S>()),
            (GgmlType::IQ1_M, size_of::<BlockIq1M>()),
        ];
        for (t, s) in sizes {
            assert_eq!(t.type_size(), s, "{t}");
        }
    }
}
