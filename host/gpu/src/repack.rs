//! Weight repacking at load: GGUF matrices into the layouts `kernels/mmv.cu` reads with 128-bit
//! loads (the GGUF file itself stays as it is; this is a one-time copy per tensor).
//!
//! GGUF's 18/20/22/24/34/136/176/210-byte blocks are not 16-byte aligned, so the quants of each
//! block move into one array (16 or 32 bytes per block, aligned) and the scales into arrays of
//! their own:
//!
//! ```text
//!   Q4_0   qs[n_rows][nb][16]  d[n_rows][nb]            (nb = k / 32)
//!   Q4_1   qs[n_rows][nb][16]  (d, m)[n_rows][nb]
//!   Q5_0   qs[n_rows][nb][16]  qh[n_rows][nb] (u32)  d[n_rows][nb]
//!   Q5_1   qs[n_rows][nb][16]  qh[n_rows][nb] (u32)  (d, m)[n_rows][nb]
//!   Q8_0   qs[n_rows][nb][32]  d[n_rows][nb]
//!   IQ4_NL qs[n_rows][nb][16]  d[n_rows][nb]
//!   Q6_K   (ql[128] qh[64] scales[16])[n_rows][nsb]  d[n_rows][nsb]   (nsb = k / 256)
//!   Q4_K   qs[n_rows][nsb][128]  sm[n_rows][nsb][16]  (d, dmin)[n_rows][nsb]
//!   Q5_K   qs[n_rows][nsb][128]  qh[n_rows][nsb][4][2] (u32)  sm[n_rows][nsb][16]  (d, dmin)[n_rows][nsb]
//!   IQ4_XS qs[n_rows][nsb][128]  sc[n_rows][nsb][8] (i8)  d[n_rows][nsb]
//!   F16, BF16, F32  unchanged (rows of k % 8, k % 8, k % 4 values are 16-byte multiples)
//! ```
//!
//! Decoded here, once, so the kernels do no bit twiddling per weight load:
//! - Q4_K / Q5_K: the twelve bytes of packed 6-bit scales and mins become one byte each,
//!   ordered per 64-value chunk c as (scale 2c, scale 2c+1, min 2c, min 2c+1), so a lane reading
//!   a chunk's 32 quant bytes gets its four factors with one 32-bit load (the header decode was
//!   the Q4_K kernel's cost: 50% of copy bandwidth against 81% for Q4_0). 148 / 180 bytes per
//!   super-block instead of 144 / 176 ([`packed_bytes`]).
//! - Q5_K's 32 bytes of high bits (bit 2c / 2c+1 of byte l: element 64c + l / 64c + 32 + l)
//!   become two u32 words per chunk c, (lo, hi) with bit l = that element's fifth bit, so a
//!   chunk's lane reads 8 bytes of high bits instead of all 32 and spreads them as Q5_0 does.
//! - IQ4_XS's 6-bit sub-block scales (low 4 bits in `scales_l`, high 2 in `scales_h`, offset
//!   32) become one int8 `ls - 32` each: 138 bytes per super-block instead of 136.
//!
//! [`unpack`] re-encodes every decoded field exactly.
//!
//! Bytes inside a block's quants keep GGUF's order, so the kernels decode them as llama.cpp
//! does. The functions here are pure: the tests check them against `rocmforge_quant`'s
//! dequantizer through an inverse that rebuilds GGUF blocks.

use rocmforge_quant::GgmlType;

use crate::error::{GpuError, Result};

/// True if the GPU matrix-vector kernels take weights of type `ty`.
pub fn supports_mmv(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | IQ4_NL | Q4_K | Q5_K | Q6_K | IQ4_XS | F16 | BF16 | F32)
}

/// True for the float weight types (F16, BF16, F32), whose products take f32 activations; the
/// quantized types take activations quantized to int8 (`Kernels::quantize_q8`).
pub fn takes_f32_input(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F16 | GgmlType::BF16 | GgmlType::F32)
}

/// Check a matrix of `n_rows` x `k` elements of `ty` stored in `bytes` GGUF bytes, returning the
/// row size in bytes.
pub fn check_matrix(op: &'static str, ty: GgmlType, bytes: usize, n_rows: usize, k: usize) -> Result<usize> {
    if !supports_mmv(ty) {
        return Err(GpuError::Unsupported { op, ty: ty.name() });
    }
    // The kernels' 16-byte loads need whole 32-blocks (K-quants: 256) and F16 rows of 8 values.
    let align = match ty {
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::IQ4_XS => 256,
        GgmlType::F16 | GgmlType::BF16 => 8,
        GgmlType::F32 => 4,
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
        GgmlType::Q5_K => gguf / 176 * 180,
        GgmlType::IQ4_XS => gguf / 136 * 138,
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

/// The twelve packed scale/min bytes of a Q4_K / Q5_K block as the 16 decoded bytes of the GPU
/// layout: per chunk c, (scale 2c, scale 2c+1, min 2c, min 2c+1).
fn decode_k_scales(s: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for c in 0..4 {
        let (s0, m0) = q4k_scale_min(s, 2 * c);
        let (s1, m1) = q4k_scale_min(s, 2 * c + 1);
        out[4 * c..4 * c + 4].copy_from_slice(&[s0, s1, m0, m1]);
    }
    out
}

/// Inverse of [`decode_k_scales`] (the 6-bit values back into twelve bytes).
fn encode_k_scales(f: &[u8], s: &mut [u8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for c in 0..4 {
        (sc[2 * c], sc[2 * c + 1], mn[2 * c], mn[2 * c + 1]) = (f[4 * c], f[4 * c + 1], f[4 * c + 2], f[4 * c + 3]);
    }
    for j in 0..4 {
        s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
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
        sm[b * 16..(b + 1) * 16].copy_from_slice(&decode_k_scales(&blk[4..16]));
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
        encode_k_scales(&sm[b * 16..(b + 1) * 16], &mut blk[4..16]);
    }
    out
}

/// Q5_K super-blocks (GGUF: d, dmin, scales[12], qh[32], qs[128]) into qs / qh words / sm / dm
/// sections (module header).
fn repack_q5_k(src: &[u8], n_blocks: usize) -> Vec<u8> {
    let mut out = vec![0u8; n_blocks * 180];
    let (qs, rest) = out.split_at_mut(n_blocks * 128);
    let (qh, rest) = rest.split_at_mut(n_blocks * 32);
    let (sm, dm) = rest.split_at_mut(n_blocks * 16);
    for (b, blk) in src.chunks_exact(176).enumerate() {
        qs[b * 128..(b + 1) * 128].copy_from_slice(&blk[48..176]);
        dm[b * 4..(b + 1) * 4].copy_from_slice(&blk[0..4]);
        sm[b * 16..(b + 1) * 16].copy_from_slice(&decode_k_scales(&blk[4..16]));
        let h = &blk[16..48];
        for c in 0..4 {
            let (mut lo, mut hi) = (0u32, 0u32);
            for (l, &byte) in h.iter().enumerate() {
                lo |= (((byte >> (2 * c)) & 1) as u32) << l;
                hi |= (((byte >> (2 * c + 1)) & 1) as u32) << l;
            }
            let o = b * 32 + 8 * c;
            qh[o..o + 4].copy_from_slice(&lo.to_le_bytes());
            qh[o + 4..o + 8].copy_from_slice(&hi.to_le_bytes());
        }
    }
    out
}

/// Inverse of [`repack_q5_k`].
fn unpack_q5_k(packed: &[u8], n_blocks: usize) -> Vec<u8> {
    let (qs, rest) = packed.split_at(n_blocks * 128);
    let (qh, rest) = rest.split_at(n_blocks * 32);
    let (sm, dm) = rest.split_at(n_blocks * 16);
    let mut out = vec![0u8; n_blocks * 176];
    for (b, blk) in out.chunks_exact_mut(176).enumerate() {
        blk[48..176].copy_from_slice(&qs[b * 128..(b + 1) * 128]);
        blk[0..4].copy_from_slice(&dm[b * 4..(b + 1) * 4]);
        encode_k_scales(&sm[b * 16..(b + 1) * 16], &mut blk[4..16]);
        for c in 0..4 {
            let word = |i: usize| u32::from_le_bytes(qh[b * 32 + 8 * c + 4 * i..b * 32 + 8 * c + 4 * i + 4].try_into().expect("4 bytes"));
            let (lo, hi) = (word(0), word(1));
            for l in 0..32 {
                blk[16 + l] |= ((((lo >> l) & 1) << (2 * c)) | (((hi >> l) & 1) << (2 * c + 1))) as u8;
            }
        }
    }
    out
}

/// IQ4_XS's 6-bit scale of sub-block `ib` (0..8), as GGUF packs it.
fn iq4xs_ls(scales_h: u16, scales_l: &[u8], ib: usize) -> u8 {
    ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | ((((scales_h >> (2 * ib)) & 3) as u8) << 4)
}

/// IQ4_XS super-blocks (GGUF: d, scales_h, scales_l[4], qs[128]) into qs / sc / d sections.
fn repack_iq4_xs(src: &[u8], n_blocks: usize) -> Vec<u8> {
    let mut out = vec![0u8; n_blocks * 138];
    let (qs, rest) = out.split_at_mut(n_blocks * 128);
    let (sc, d) = rest.split_at_mut(n_blocks * 8);
    for (b, blk) in src.chunks_exact(136).enumerate() {
        qs[b * 128..(b + 1) * 128].copy_from_slice(&blk[8..136]);
        d[b * 2..(b + 1) * 2].copy_from_slice(&blk[0..2]);
        let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
        for ib in 0..8 {
            sc[b * 8 + ib] = (iq4xs_ls(scales_h, &blk[4..8], ib) as i8 - 32) as u8;
        }
    }
    out
}

/// Inverse of [`repack_iq4_xs`].
fn unpack_iq4_xs(packed: &[u8], n_blocks: usize) -> Vec<u8> {
    let (qs, rest) = packed.split_at(n_blocks * 128);
    let (sc, d) = rest.split_at(n_blocks * 8);
    let mut out = vec![0u8; n_blocks * 136];
    for (b, blk) in out.chunks_exact_mut(136).enumerate() {
        blk[8..136].copy_from_slice(&qs[b * 128..(b + 1) * 128]);
        blk[0..2].copy_from_slice(&d[b * 2..(b + 1) * 2]);
        let mut scales_h = 0u16;
        for ib in 0..8 {
            let ls = (sc[b * 8 + ib] as i8 as i32 + 32) as u8;
            blk[4 + ib / 2] |= (ls & 0xF) << (4 * (ib % 2));
            scales_h |= (((ls >> 4) & 3) as u16) << (2 * ib);
        }
        blk[2..4].copy_from_slice(&scales_h.to_le_bytes());
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
        GgmlType::F16 | GgmlType::BF16 | GgmlType::F32 => src.to_vec(),
        GgmlType::Q4_K => repack_q4_k(src, n_blocks),
        GgmlType::Q5_K => repack_q5_k(src, n_blocks),
        GgmlType::IQ4_XS => repack_iq4_xs(src, n_blocks),
        _ => match fields(ty) {
            Some(f) => split(blocks, n_blocks, f),
            None => return Err(GpuError::Unsupported { op: "repack", ty: ty.name() }),
        },
    })
}

/// The GGUF byte ranges (offset, len) of a block, in the order [`split`] gathers them into
/// sections, for the types whose repack is only a split.
fn fields(ty: GgmlType) -> Option<&'static [(usize, usize)]> {
    Some(match ty {
        GgmlType::Q4_0 | GgmlType::IQ4_NL => &[(2, 16), (0, 2)],
        GgmlType::Q4_1 => &[(4, 16), (0, 4)],
        GgmlType::Q5_0 => &[(6, 16), (2, 4), (0, 2)],
        GgmlType::Q5_1 => &[(8, 16), (4, 4), (0, 4)],
        GgmlType::Q8_0 => &[(2, 32), (0, 2)],
        GgmlType::Q6_K => &[(0, 208), (208, 2)],
        _ => return None,
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
        GgmlType::F16 | GgmlType::BF16 | GgmlType::F32 => return Ok(packed.to_vec()),
        GgmlType::Q4_K => return Ok(unpack_q4_k(packed, n_blocks)),
        GgmlType::Q5_K => return Ok(unpack_q5_k(packed, n_blocks)),
        GgmlType::IQ4_XS => return Ok(unpack_iq4_xs(packed, n_blocks)),
        _ => fields(ty).ok_or(GpuError::Unsupported { op: "unpack", ty: ty.name() })?,
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
        use GgmlType::*;
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q4_K, Q5_K, Q6_K, IQ4_XS, F16, BF16, F32] {
            assert!(supports_mmv(ty), "{}", ty.name());
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

    fn f16_at(b: &[u8], i: usize) -> f32 {
        half::f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32()
    }

    /// Dequantize a matrix from the GPU layout with the formulas of `kernels/dequant.cu` (and
    /// the matching mat-vec kernels), in the same f32 operation order.
    fn dequant_packed(ty: GgmlType, p: &[u8], n_rows: usize, k: usize) -> Vec<f32> {
        let kv = rocmforge_quant::KVALUES_IQ4NL;
        let (nb, nsb) = (k / 32, k / 256);
        let mut out = vec![0f32; n_rows * k];
        for r in 0..n_rows {
            for b in 0..nb {
                let blk = r * nb + b;
                let v = &mut out[r * k + b * 32..r * k + b * 32 + 32];
                let q = &p[blk * 16..blk * 16 + 16];
                let word = |off: usize, i: usize| u32::from_le_bytes(p[off + 4 * i..off + 4 * i + 4].try_into().expect("4 bytes"));
                match ty {
                    GgmlType::Q5_1 => {
                        let qh = word(n_rows * nb * 16, blk);
                        let (d, m) = (f16_at(p, n_rows * nb * 10 + 2 * blk), f16_at(p, n_rows * nb * 10 + 2 * blk + 1));
                        for j in 0..16 {
                            v[j] = ((q[j] & 0xF) as u32 | ((qh >> j) & 1) << 4) as f32 * d + m;
                            v[j + 16] = ((q[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as f32 * d + m;
                        }
                    }
                    GgmlType::IQ4_NL | GgmlType::IQ4_XS => {
                        let dl = if ty == GgmlType::IQ4_NL {
                            f16_at(p, n_rows * nb * 8 + blk)
                        } else {
                            f16_at(p, n_rows * nsb * 68 + r * nsb + b / 8) * p[n_rows * nb * 16 + blk] as i8 as f32
                        };
                        for j in 0..16 {
                            v[j] = dl * kv[(q[j] & 0xF) as usize] as f32;
                            v[j + 16] = dl * kv[(q[j] >> 4) as usize] as f32;
                        }
                    }
                    GgmlType::Q5_K => {
                        let (sb, j) = (b / 8, b % 8);
                        let (c, hi) = (j / 2, j % 2);
                        let sblk = r * nsb + sb;
                        let bits = word(n_rows * nsb * 128, sblk * 8 + 2 * c + hi);
                        let f = &p[n_rows * nsb * 160 + sblk * 16 + 4 * c..];
                        let (d, dmin) = (f16_at(p, n_rows * nsb * 88 + 2 * sblk), f16_at(p, n_rows * nsb * 88 + 2 * sblk + 1));
                        let (d1, m1) = (d * f[hi] as f32, dmin * f[2 + hi] as f32);
                        let qs = &p[sblk * 128 + 32 * c..];
                        for (l, o) in v.iter_mut().enumerate() {
                            let nib = if hi == 1 { qs[l] >> 4 } else { qs[l] & 0xF } as u32;
                            *o = d1 * (nib | ((bits >> l) & 1) << 4) as f32 - m1;
                        }
                    }
                    GgmlType::BF16 => {
                        for (i, o) in v.iter_mut().enumerate() {
                            let e = 2 * (r * k + b * 32 + i);
                            *o = f32::from_bits((u16::from_le_bytes([p[e], p[e + 1]]) as u32) << 16);
                        }
                    }
                    GgmlType::F32 => {
                        for (i, o) in v.iter_mut().enumerate() {
                            let e = 4 * (r * k + b * 32 + i);
                            *o = f32::from_le_bytes(p[e..e + 4].try_into().expect("4 bytes"));
                        }
                    }
                    _ => unreachable!("only the types above"),
                }
            }
        }
        out
    }

    #[test]
    fn new_layouts_dequantize_as_the_cpu_does() {
        // Real quantized data (not random bytes) through the GPU layout and the kernels'
        // formulas, against rocmforge_quant's dequantizer, bit for bit.
        use GgmlType::*;
        let (n_rows, k) = (3, 768);
        let x: Vec<f32> = (0..n_rows * k).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
        for ty in [Q5_1, IQ4_NL, Q5_K, IQ4_XS, BF16, F32] {
            let q = match ty {
                F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                _ => rocmforge_quant::quantize_to_vec(ty, &x).expect("quantize"),
            };
            let mut want = vec![0f32; x.len()];
            rocmforge_quant::dequantize(ty, &q, &mut want).expect("dequantize");
            let got = dequant_packed(ty, &repack(ty, &q, n_rows, k).expect("repack"), n_rows, k);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{} element {i}: {g} vs {w}", ty.name());
            }
        }
    }

    #[test]
    fn iq4_table_in_compat_h_is_ggufs() {
        let words: Vec<u32> = rocmforge_quant::KVALUES_IQ4NL
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]))
            .collect();
        let compat = crate::HEADERS.iter().find(|h| h.0 == "compat.h").expect("compat.h").1;
        for (i, w) in words.iter().enumerate() {
            let line = format!("#define RF_IQ4NL_T{i} 0x{w:08X}u");
            assert!(compat.contains(&line), "compat.h lacks `{line}`");
        }
    }

    /// PTX `prmt.b32` (generic mode): bytes of (b << 32 | a) picked by four 4-bit selectors.
    fn prmt(a: u32, b: u32, sel: u32) -> u32 {
        let src = ((b as u64) << 32) | a as u64;
        (0..4).map(|i| (((src >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) as u32) << (8 * i)).fold(0, |x, y| x | y)
    }

    /// AMD `v_perm_b32 d, s0, s1, sel` for selectors 0..7: bytes of (s0 << 32 | s1), one
    /// selector byte per result byte.
    fn v_perm(s0: u32, s1: u32, sel: u32) -> u32 {
        let src = ((s0 as u64) << 32) | s1 as u64;
        (0..4).map(|i| (((src >> (8 * ((sel >> (8 * i)) & 0xFF))) & 0xFF) as u32) << (8 * i)).fold(0, |x, y| x | y)
    }

    #[test]
    fn lut16_selectors_pick_the_table_bytes() {
        // compat.h's rf_lut16, step by step on both vendors' byte permutes (emulated from the
        // PTX and GCN ISA definitions), for every index in every byte position.
        let t: Vec<u32> = rocmforge_quant::KVALUES_IQ4NL
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]))
            .collect();
        for a in 0..16u32 {
            for b in 0..16u32 {
                let idx = a | (b << 8) | (((a + 3) % 16) << 16) | (((b + 7) % 16) << 24);
                let hi = ((idx >> 3) & 0x0101_0101) * 0xFF;
                let sel_cuda = (idx & 0x7) | ((idx >> 4) & 0x70) | ((idx >> 8) & 0x700) | ((idx >> 12) & 0x7000);
                let cuda = (prmt(t[0], t[1], sel_cuda) & !hi) | (prmt(t[2], t[3], sel_cuda) & hi);
                let sel_hip = idx & 0x0707_0707;
                let hip = (v_perm(t[1], t[0], sel_hip) & !hi) | (v_perm(t[3], t[2], sel_hip) & hi);
                let want: Vec<i8> = (0..4).map(|i| rocmforge_quant::KVALUES_IQ4NL[((idx >> (8 * i)) & 15) as usize]).collect();
                assert_eq!(cuda.to_le_bytes().map(|x| x as i8).to_vec(), want, "cuda idx {idx:#010x}");
                assert_eq!(hip.to_le_bytes().map(|x| x as i8).to_vec(), want, "hip idx {idx:#010x}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(matches!(repack(GgmlType::Q4_K, &[0; 144], 1, 128), Err(GpuError::Shape { .. })));
        assert!(matches!(repack(GgmlType::Q4_0, &[0; 17], 1, 32), Err(GpuError::Shape { .. })));
        assert!(matches!(repack(GgmlType::Q2_K, &[0; 84], 1, 256), Err(GpuError::Unsupported { .. })));
    }
}
