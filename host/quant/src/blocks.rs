//! Block layouts of the quantized GGML types, byte for byte as GGUF stores them
//! (llama.cpp `ggml-common.h`), plus the small shared tables and helpers that dot-product
//! kernels need (`get_scale_min_k4`, `KVALUES_IQ4NL`).
//!
//! Invariants: every struct is `#[repr(C)]`, has no padding (bytemuck's `Pod` derive checks
//! that at compile time) and `size_of` equals `GgmlType::type_size()` (checked by the
//! `const` assertions below and by a test over `GgmlType::ALL`). Multi-byte fields are
//! little-endian, as in GGUF files; `d`/`dmin`/`m`/`s` fields hold IEEE f16 *bits*.
//! Blocks are 2-aligned (4 for `BlockQ8K`): use [`cast_blocks`] to view an aligned byte slice
//! in place, or `bytemuck::pod_read_unaligned` for one block from arbitrary bytes.

use bytemuck::{Pod, Zeroable};

use crate::{GgmlType, QuantError};

/// Elements per super-block of the K-quants and IQ4_XS.
pub const QK_K: usize = 256;
/// Elements per block of the legacy quants (Q4_0 .. Q8_1) and IQ4_NL.
pub const QK32: usize = 32;

/// Non-linear 4-bit codebook of IQ4_NL / IQ4_XS (sorted ascending).
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// E2M1 (FP4) values doubled, as MXFP4 stores them (scale is halved to compensate).
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Q4_0: `x = d * (q - 8)`; low nibbles hold elements 0..16, high nibbles 16..32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; 16],
}

/// Q4_1: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; 16],
}

/// Q5_0: `x = d * (q - 16)`; bit j of the little-endian u32 `qh` is the 5th bit of element j.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q5_1: `x = d * q + m`, high bits as in Q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// Q8_0: `x = d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; 32],
}

/// Q8_1: `x = d * q`; `s` caches `d * sum(q)` for dot products with Q4_1/Q5_1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ8_1 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; 32],
}

/// Q2_K: 16 groups of 16; `scales[g]` low nibble = scale, high nibble = min;
/// `x = d * sc * q - dmin * m`. `qs` packs 4 two-bit values per byte (see `dequantize`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: u16,
    pub dmin: u16,
}

/// Q3_K: 16 groups of 16; 6-bit signed scales (offset 32) packed in 12 bytes;
/// `x = d * (sc - 32) * (q - (hbit ? 0 : 4))`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: u16,
}

/// Q4_K: 8 groups of 32; 6-bit scales and mins packed in 12 bytes (see [`get_scale_min_k4`]);
/// `x = d * sc * q - dmin * m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// Q5_K: as Q4_K plus a fifth bit per element in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Q6_K: 16 groups of 16 with signed 8-bit scales; `x = d * sc * (q - 32)`, q 6-bit
/// (low 4 bits in `ql`, high 2 bits in `qh`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: u16,
}

/// Q8_K: the activation format of K-quant dot products; `d` is a plain f32 and `bsums` the
/// sums of each group of 16 quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

/// IQ4_NL: `x = d * KVALUES_IQ4NL[q]`, nibble order as Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockIq4Nl {
    pub d: u16,
    pub qs: [u8; 16],
}

/// IQ4_XS: 8 groups of 32 with 6-bit scales (offset 32), low 4 bits in `scales_l`
/// (two per byte), high 2 bits in `scales_h`; `x = d * (ls - 32) * KVALUES_IQ4NL[q]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockIq4Xs {
    pub d: u16,
    pub scales_h: u16,
    pub scales_l: [u8; 4],
    pub qs: [u8; 128],
}

/// TQ1_0: ternary, 5 trits per byte in `qs` (base-3, fixed-point scaled) and 4 per byte in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockTq1_0 {
    pub qs: [u8; 48],
    pub qh: [u8; 4],
    pub d: u16,
}

/// TQ2_0: ternary stored as 2-bit values `q - 1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockTq2_0 {
    pub qs: [u8; 64],
    pub d: u16,
}

/// MXFP4: shared E8M0 exponent `e`, 32 E2M1 values as nibbles (Q4_0 order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockMxfp4 {
    pub e: u8,
    pub qs: [u8; 16],
}

/// IQ2_XXS: per 32 elements two u32 (as 4 u16): four 8-bit indices into `IQ2XXS_GRID`, then
/// four 7-bit sign patterns and a 4-bit scale in the top bits of the second u32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockIq2Xxs {
    pub d: u16,
    pub qs: [u16; 32],
}

/// IQ2_XS: per 8 elements a u16 = 9-bit `IQ2XS_GRID` index | 7-bit sign pattern << 9; two
/// 4-bit scales per 32 elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockIq2Xs {
    pub d: u16,
    pub qs: [u16; 32],
    pub scales: [u8; 8],
}

/// IQ2_S: `qs[0..32]` low 8 index bits, `qs[32..64]` explicit sign bytes, `qh` 2 high index
/// bits per 8 elements, two 4-bit scales per 32 elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockIq2S {
    pub d: u16,
    pub qs: [u8; 64],
    pub qh: [u8; 8],
    pub scales: [u8; 8],
}

/// IQ3_XXS: `qs[0..64]` 8-bit `IQ3XXS_GRID` indices (4 elements each), `qs[64..96]` one u32
/// per 32 elements: four 7-bit sign patterns and a 4-bit scale on top.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockIq3Xxs {
    pub d: u16,
    pub qs: [u8; 96],
}

/// IQ3_S: 9-bit `IQ3S_GRID` indices (low bits in `qs`, high bit in `qh`), explicit signs,
/// 4-bit odd scales `1 + 2s` per 32 elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockIq3S {
    pub d: u16,
    pub qs: [u8; 64],
    pub qh: [u8; 8],
    pub signs: [u8; 32],
    pub scales: [u8; 4],
}

/// IQ1_S: 11-bit `IQ1S_GRID` indices (8 low bits in `qs`, 3 high in `qh`), per 32 elements
/// a 3-bit scale and the sign of a +-1/8 shift in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockIq1S {
    pub d: u16,
    pub qs: [u8; 32],
    pub qh: [u16; 8],
}

/// IQ1_M: as IQ1_S with a shift per 8 elements and 3-bit scales per 16; the f16 super-scale
/// is spread over the top nibbles of the four u16 of `scales`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable, PartialEq, Eq)]
pub struct BlockIq1M {
    pub qs: [u8; 32],
    pub qh: [u8; 16],
    pub scales: [u8; 8],
}

macro_rules! assert_sizes {
    ($($t:ty => $n:expr),* $(,)?) => { $( const _: () = assert!(std::mem::size_of::<$t>() == $n); )* };
}
assert_sizes! {
    BlockQ4_0 => 18, BlockQ4_1 => 20, BlockQ5_0 => 22, BlockQ5_1 => 24, BlockQ8_0 => 34,
    BlockQ8_1 => 36, BlockQ2K => 84, BlockQ3K => 110, BlockQ4K => 144, BlockQ5K => 176,
    BlockQ6K => 210, BlockQ8K => 292, BlockIq4Nl => 18, BlockIq4Xs => 136,
    BlockTq1_0 => 54, BlockTq2_0 => 66, BlockMxfp4 => 17, BlockIq2Xxs => 66, BlockIq2Xs => 74,
    BlockIq2S => 82, BlockIq3Xxs => 98, BlockIq3S => 110, BlockIq1S => 50, BlockIq1M => 56,
}

/// The 6-bit scale and min of group `j` (0..8) of a Q4_K/Q5_K block.
///
/// ```text
/// bytes 0..4 : low 6 bits = scale j (j<4),  top 2 bits = high bits of scale j+4
/// bytes 4..8 : low 6 bits = min j   (j<4),  top 2 bits = high bits of min j+4
/// bytes 8..12: low nibble = low 4 bits of scale j+4, high nibble = low 4 bits of min j+4
/// ```
#[inline]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (d, m)
    }
}

/// Unpack the 16 signed Q3_K scales (each already minus 32).
#[inline]
pub fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i8) - 32;
    }
    out
}

/// Block struct of a type, for [`cast_blocks`].
pub trait Block: Pod {
    const TYPE: GgmlType;
}
macro_rules! impl_block {
    ($($t:ty => $g:ident),* $(,)?) => { $( impl Block for $t { const TYPE: GgmlType = GgmlType::$g; } )* };
}
impl_block! {
    BlockQ4_0 => Q4_0, BlockQ4_1 => Q4_1, BlockQ5_0 => Q5_0, BlockQ5_1 => Q5_1, BlockQ8_0 => Q8_0,
    BlockQ8_1 => Q8_1, BlockQ2K => Q2_K, BlockQ3K => Q3_K, BlockQ4K => Q4_K, BlockQ5K => Q5_K,
    BlockQ6K => Q6_K, BlockQ8K => Q8_K, BlockIq4Nl => IQ4_NL, BlockIq4Xs => IQ4_XS,
    BlockTq1_0 => TQ1_0, BlockTq2_0 => TQ2_0, BlockMxfp4 => MXFP4, BlockIq2Xxs => IQ2_XXS,
    BlockIq2Xs => IQ2_XS, BlockIq2S => IQ2_S, BlockIq3Xxs => IQ3_XXS, BlockIq3S => IQ3_S,
    BlockIq1S => IQ1_S, BlockIq1M => IQ1_M,
}

/// View `bytes` as a slice of blocks without copying. Fails with `BadLength` if the length is
/// not a whole number of blocks, or `Misaligned` if the start is not aligned for `B`
/// (GGUF tensor data is 32-aligned, so mapped weights always qualify).
pub fn cast_blocks<B: Block>(bytes: &[u8]) -> Result<&[B], QuantError> {
    let size = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(size) {
        return Err(QuantError::BadLength { ty: B::TYPE.name(), got: bytes.len(), want: bytes.len() / size * size });
    }
    bytemuck::try_cast_slice(bytes).map_err(|_| QuantError::Misaligned { ty: B::TYPE.name(), align: std::mem::align_of::<B>() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_k4_round_trips_every_6bit_pair() {
        // Pack with the layout drawn above (written independently of the unpacker) and unpack.
        for seed in 0..64u32 {
            let sc: Vec<u8> = (0..8).map(|j| ((seed * 7 + j * 13) % 64) as u8).collect();
            let mn: Vec<u8> = (0..8).map(|j| ((seed * 11 + j * 5 + 3) % 64) as u8).collect();
            let mut q = [0u8; 12];
            for j in 0..4 {
                q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
                q[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
                q[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
            }
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &q), (sc[j], mn[j]));
            }
        }
    }

    #[test]
    fn cast_blocks_checks_length_and_alignment() {
        let buf = vec![0u16; 200];
        let bytes: &[u8] = bytemuck::cast_slice(&buf);
        assert_eq!(cast_blocks::<BlockQ4K>(&bytes[..288]).map(|b| b.len()), Ok(2));
        assert!(matches!(cast_blocks::<BlockQ4K>(&bytes[..287]), Err(QuantError::BadLength { .. })));
        assert!(matches!(cast_blocks::<BlockQ4_0>(&bytes[1..19]), Err(QuantError::Misaligned { .. })));
    }
}
