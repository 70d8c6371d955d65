//! Weight repacking at load: GGUF matrices into the layouts `kernels/mmv.cu` reads with 128-bit
//! loads (the GGUF file itself stays as it is; this is a one-time copy per tensor).
//!
//! GGUF's 18/20/22/34/210-byte blocks are not 16-byte aligned, so the quants of each block move
//! into one array (16 or 32 bytes per block, aligned) and the scales into arrays of their own:
//!
//! ```text
//!   Q4_0  qs[n_rows][nb][16]  d[n_rows][nb]            (nb = k / 32)
//!   Q4_1  qs[n_rows][nb][16]  (d, m)[n_rows][nb]
//!   Q5_0  qs[n_rows][nb][16]  qh[n_rows][nb] (u32)  d[n_rows][nb]
//!   Q8_0  qs[n_rows][nb][32]  d[n_rows][nb]
//!   Q6_K  (ql[128] qh[64] scales[16])[n_rows][nsb]  d[n_rows][nsb]   (nsb = k / 256)
//!   Q4_K, F16: unchanged (144-byte super-blocks and f16 rows are already 16-byte multiples)
//! ```
//!
//! Bytes inside a block's quants keep GGUF's order, so the kernels decode them as llama.cpp
//! does. The functions here are pure: the tests check them against `rocmforge_quant`'s
//! dequantizer through an inverse that rebuilds GGUF blocks.

use rocmforge_quant::GgmlType;

use crate::error::{GpuError, Result};

/// True if the GPU matrix-vector kernels take weights of type `ty`.
pub fn supports_mmv(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K | GgmlType::F16)
}

/// Check a matrix of `n_rows` x `k` elements of `ty` stored in `bytes` GGUF bytes, returning the
/// row size in bytes.
pub fn check_matrix(op: &'static str, ty: GgmlType, bytes: usize, n_rows: usize, k: usize) -> Result<usize> {
    if !supports_mmv(ty) {
        return Err(GpuError::Unsupported { op, ty: ty.name() });
    }
    // The kernels' 16-byte loads need whole 32-blocks (K-quants: 256) and F16 rows of 8 values.
    let align = match ty {
        GgmlType::Q4_K | GgmlType::Q6_K => 256,
        GgmlType::F16 => 8,
        _ => 32,
    };
    if k == 0 || !k.is_multiple_of(align) {
        return Err(GpuError::shape(op, format!("{}: k = {k} is not a positive multiple of {align}", ty.name())));
    }
    let row_bytes = k / ty.block_size() * ty.type_size();
    let want = row_bytes.checked_mul(n_rows).ok_or_else(|| GpuError::shape(op, "matrix size overflows"))?;
    if bytes != want {
        return Err(GpuError::shape(op, format!("{} {n_rows} x {k}: {bytes} bytes, expected {want}", ty.name())));
    }
    if k > i32::MAX as usize || n_rows > i32::MAX as usize {
        return Err(GpuError::shape(op, format!("{n_rows} x {k} exceeds the kernels' 32-bit indices")));
    }
    Ok(row_bytes)
}

/// GGUF bytes of an `n_rows` x `k` matrix of `ty` in the GPU layout (see the module header).
pub fn repack(ty: GgmlType, src: &[u8], n_rows: usize, k: usize) -> Result<Vec<u8>> {
    check_matrix("repack", ty, src.len(), n_rows, k)?;
    let n_blocks = n_rows * (k / ty.block_size());
    let bs = ty.type_size();
    let blocks = src.chunks_exact(bs);
    Ok(match ty {
        GgmlType::Q4_K | GgmlType::F16 => src.to_vec(),
        GgmlType::Q4_0 => split(blocks, n_blocks, &[(2, 16), (0, 2)]),
        GgmlType::Q4_1 => split(blocks, n_blocks, &[(4, 16), (0, 4)]),
        GgmlType::Q5_0 => split(blocks, n_blocks, &[(6, 16), (2, 4), (0, 2)]),
        GgmlType::Q8_0 => split(blocks, n_blocks, &[(2, 32), (0, 2)]),
        GgmlType::Q6_K => split(blocks, n_blocks, &[(0, 208), (208, 2)]),
        _ => return Err(GpuError::Unsupported { op: "repack", ty: ty.name() }),
    })
}

/// Gather byte ranges (offset, len) of every block into consecutive sections, in `fields` order.
fn split<'a>(blocks: impl Iterator<Item = &'a [u8]> + Clone, n_blocks: usize, fields: &[(usize, usize)]) -> Vec<u8> {
    let total: usize = fields.iter().map(|f| f.1).sum::<usize>() * n_blocks;
    let mut out = Vec::with_capacity(total);
    for &(off, len) in fields {
        for b in blocks.clone() {
            out.extend_from_slice(&b[off..off + len]);
        }
    }
    out
}

/// Inverse of [`repack`] (GPU layout back to GGUF blocks), for tests and debugging.
pub fn unpack(ty: GgmlType, packed: &[u8], n_rows: usize, k: usize) -> Result<Vec<u8>> {
    let row_bytes = check_matrix("unpack", ty, packed.len(), n_rows, k)?;
    let _ = row_bytes;
    let n_blocks = n_rows * (k / ty.block_size());
    let bs = ty.type_size();
    let fields: &[(usize, usize)] = match ty {
        GgmlType::Q4_K | GgmlType::F16 => return Ok(packed.to_vec()),
        GgmlType::Q4_0 => &[(2, 16), (0, 2)],
        GgmlType::Q4_1 => &[(4, 16), (0, 4)],
        GgmlType::Q5_0 => &[(6, 16), (2, 4), (0, 2)],
        GgmlType::Q8_0 => &[(2, 32), (0, 2)],
        GgmlType::Q6_K => &[(0, 208), (208, 2)],
        _ => return Err(GpuError::Unsupported { op: "unpack", ty: ty.name() }),
    };
    let mut out = vec![0u8; n_blocks * bs];
    let mut section = 0;
    for &(off, len) in fields {
        for b in 0..n_blocks {
            out[b * bs + off..b * bs + off + len].copy_from_slice(&packed[section + b * len..section + (b + 1) * len]);
        }
        section += n_blocks * len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repack_round_trips_every_type() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16] {
            let (n_rows, k) = (3, 512);
            let bytes = n_rows * k / ty.block_size() * ty.type_size();
            let src: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 13) as u8).collect();
            let packed = repack(ty, &src, n_rows, k).expect("repack");
            assert_eq!(packed.len(), src.len(), "{}", ty.name());
            assert_eq!(unpack(ty, &packed, n_rows, k).expect("unpack"), src, "{}", ty.name());
        }
    }

    #[test]
    fn repack_puts_quants_first_and_aligned() {
        // Q4_0 block: d (2 bytes) then 16 quant bytes; the packed form starts with the quants.
        let mut src = vec![0u8; 2 * 18];
        src[0] = 0xAA;
        src[2] = 0x11;
        src[18 + 2] = 0x22;
        let p = repack(GgmlType::Q4_0, &src, 1, 64).expect("repack");
        assert_eq!(p[0], 0x11);
        assert_eq!(p[16], 0x22);
        assert_eq!(p[32], 0xAA);
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(matches!(repack(GgmlType::Q4_K, &[0; 144], 1, 128), Err(GpuError::Shape { .. })));
        assert!(matches!(repack(GgmlType::Q4_0, &[0; 17], 1, 32), Err(GpuError::Shape { .. })));
        assert!(matches!(repack(GgmlType::Q2_K, &[0; 84], 1, 256), Err(GpuError::Unsupported { .. })));
    }
}
