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
//!   Q4_K  qs[n_rows][nsb][128]  sm[n_rows][nsb][16]  (d, dmin)[n_rows][nsb]
//!   F16   unchanged (f16 rows are already 16-byte multiples)
//! ```
//!
//! Q4_K's twelve bytes of packed 6-bit scales and mins are decoded here, once, into one byte
//! each, ordered per 64-value chunk c as (scale 2c, scale 2c+1, min 2c, min 2c+1), so a lane
//! reading a chunk's 32 quant bytes gets its four factors with one 32-bit load and no bit
//! twiddling (the header decode was the Q4_K kernel's cost: 50% of copy bandwidth against
//! 81% for Q4_0). The packed matrix is 148 bytes per super-block instead of 144
//! ([`packed_bytes`]); [`unpack`] re-encodes the twelve bytes exactly.
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

/// Bytes of an `n_rows` x `k` matrix of `ty` in the GPU layout (`ty`, `k` as checked by
/// [`check_matrix`]).
pub fn packed_bytes(ty: GgmlType, n_rows: usize, k: usize) -> usize {
    let gguf = n_rows * (k / ty.block_size()) * ty.type_size();
    match ty {
        GgmlType::Q4_K => gguf / 144 * 148,
        _ => gguf,
    }
}

/// Check a matrix in the GPU layout (the device buffer of a [`crate::GpuMatrix`]).
pub fn check_packed(op: &'static str, ty: GgmlType, bytes: usize, n_rows: usize, k: usize) -> Result<()> {
    let gguf = n_rows
        .checked_mul(k / ty.block_size().max(1))
        .and_then(|b| b.checked_mul(ty.type_size()))
        .ok_or_else(|| GpuError::shape(op, "matrix size overflows"))?;
    check_matrix(op, ty, gguf, n_rows, k)?;
    let want = packed_bytes(ty, n_rows, k);
    if bytes != want {
        return Err(GpuError::shape(op, format!("{} {n_rows} x {k}: {bytes} packed bytes, expected {want}", ty.name())));
    }
    Ok(())
}

/// Q4_K's 6-bit scale and min `j` (0..8) from a block's twelve packed bytes (GGUF's
/// `get_scale_min_k4`).
fn q4k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K super-blocks into qs / sm / dm sections (module header).
fn repack_q4_k(src: &[u8], n_blocks: usize) -> Vec<u8> {
    let mut out = vec![0u8; n_blocks * 148];
    let (qs, rest) = out.split_at_mut(n_blocks * 128);
    let (sm, dm) = rest.split_at_mut(n_blocks * 16);
    for (b, blk) in src.chunks_exact(144).enumerate() {
        qs[b * 128..(b + 1) * 128].copy_from_slice(&blk[16..144]);
        dm[b * 4..(b + 1) * 4].copy_from_slice(&blk[0..4]);
        for c in 0..4 {
            let (s0, m0) = q4k_scale_min(&blk[4..16], 2 * c);
            let (s1, m1) = q4k_scale_min(&blk[4..16], 2 * c + 1);
            sm[b * 16 + 4 * c..b * 16 + 4 * c + 4].copy_from_slice(&[s0, s1, m0, m1]);
        }
    }
    out
}

/// Inverse of [`repack_q4_k`].
fn unpack_q4_k(packed: &[u8], n_blocks: usize) -> Vec<u8> {
    let (qs, rest) = packed.split_at(n_blocks * 128);
    let (sm, dm) = rest.split_at(n_blocks * 16);
    let mut out = vec![0u8; n_blocks * 144];
    for (b, blk) in out.chunks_exact_mut(144).enumerate() {
        blk[16..144].copy_from_slice(&qs[b * 128..(b + 1) * 128]);
        blk[0..4].copy_from_slice(&dm[b * 4..(b + 1) * 4]);
        let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
        for c in 0..4 {
            let f = &sm[b * 16 + 4 * c..b * 16 + 4 * c + 4];
            (sc[2 * c], sc[2 * c + 1], mn[2 * c], mn[2 * c + 1]) = (f[0], f[1], f[2], f[3]);
        }
        let s = &mut blk[4..16];
        for j in 0..4 {
            s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
    }
    out
}

/// GGUF bytes of an `n_rows` x `k` matrix of `ty` in the GPU layout (see the module header).
pub fn repack(ty: GgmlType, src: &[u8], n_rows: usize, k: usize) -> Result<Vec<u8>> {
    check_matrix("repack", ty, src.len(), n_rows, k)?;
    let n_blocks = n_rows * (k / ty.block_size());
    let bs = ty.type_size();
    let blocks = src.chunks_exact(bs);
    Ok(match ty {
        GgmlType::F16 => src.to_vec(),
        GgmlType::Q4_K => repack_q4_k(src, n_blocks),
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
    check_packed("unpack", ty, packed.len(), n_rows, k)?;
    let n_blocks = n_rows * (k / ty.block_size());
    let bs = ty.type_size();
    let fields: &[(usize, usize)] = match ty {
        GgmlType::F16 => return Ok(packed.to_vec()),
        GgmlType::Q4_K => return Ok(unpack_q4_k(packed, n_blocks)),
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
            assert_eq!(packed.len(), packed_bytes(ty, n_rows, k), "{}", ty.name());
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
    fn q4_k_scales_are_decoded_as_the_dequantizer_does() {
        // Dequantize a real Q4_K block both ways: through GGUF (rocmforge_quant) and from the
        // packed sections with the decoded bytes (the kernels' formula).
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let q = rocmforge_quant::quantize_to_vec(GgmlType::Q4_K, &x).expect("quantize");
        let mut want = vec![0f32; 512];
        rocmforge_quant::dequantize(GgmlType::Q4_K, &q, &mut want).expect("dequantize");
        let p = repack(GgmlType::Q4_K, &q, 1, 512).expect("repack");
        let (qs, rest) = p.split_at(2 * 128);
        let (sm, dm) = rest.split_at(2 * 16);
        let h = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (i, &w) in want.iter().enumerate() {
            let (sb, e) = (i / 256, i % 256);
            let (c, hi, l) = (e / 64, (e % 64) / 32, e % 32);
            let qb = qs[sb * 128 + 32 * c + l];
            let nib = if hi == 1 { qb >> 4 } else { qb & 0xF };
            let f = &sm[sb * 16 + 4 * c..];
            let (d, dmin) = (h(&dm[sb * 4..]), h(&dm[sb * 4 + 2..]));
            let got = d * f[hi] as f32 * nib as f32 - dmin * f[2 + hi] as f32;
            assert!((got - w).abs() <= 1e-5 * w.abs().max(1.0), "element {i}: {got} vs {w}");
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(matches!(repack(GgmlType::Q4_K, &[0; 144], 1, 128), Err(GpuError::Shape { .. })));
        assert!(matches!(repack(GgmlType::Q4_0, &[0; 17], 1, 32), Err(GpuError::Shape { .. })));
        assert!(matches!(repack(GgmlType::Q2_K, &[0; 84], 1, 256), Err(GpuError::Unsupported { .. })));
    }
}
