//! Q3_K, Q4_K, Q5_K and Q6_K matmuls that sum exactly like llama.cpp's x86 CPU backend (GGML_NATIVE build on
//! an AVX-512 VNNI machine, GCC, which contracts the tiled kernel's separate mul + add into FMA).
//!
//! The integer part of every K-quant dot is exact (any order gives the same i32), so what has to
//! match is only where llama.cpp leaves integers for floats and in which order it adds the floats.
//! llama.cpp picks a kernel per weight tensor and batch (facts read from ggml-cpu's `repack.cpp`,
//! `arch/x86/repack.cpp`, `arch/x86/quants.c`, `tiled/`; checked bit for bit against its library
//! by `tests/llama_cpp_kquant.rs`):
//!
//! ```text
//!   per superblock b (256 elements), sub-block s: raw_s = sum_{e in s} q_e x_e   (q unsigned)
//!   I = sum_s sc_s raw_s (Q6_K / Q3_K: sc_s (raw_s - B bsum16_s), B = 32 / 4),
//!   M = sum_{s of 32} m_s bsum32_s
//!
//!   Q4_K, n_out % 8 == 0: weights repacked to Q4_Kx8 at load (CPU "repack" buffer type).
//!     gemv (tokens past the last whole group of 4, or all of a batch <= 3), per superblock:
//!       acc = fma(f32(I), d_w * d_x, acc);  accm = fma(f32(M), dmin_w * d_x, accm)
//!     gemm (groups of 4 tokens): the same, but one fma pair per 64 elements (two sub-blocks)
//!     y = acc - accm
//!   else, fewer than 8 tokens: `ggml_vec_dot_q{3,4,5,6}_K_q8_K` (AVX2 branch), eight i32 lanes,
//!     lane j holding the elements with (e % 32) / 4 == j (Q3_K: signed values; Q6_K: unsigned,
//!     minus 32 (bsum16[2j] sc[2j] + bsum16[2j+1] sc[2j+1])): acc[j] = fma(d_x d_w, f32(lane_j), acc[j]);
//!     Q4_K minimum: 4 lanes k, fma(-d_x dmin_w, f32(m[2k] bsum32[2k] + m[2k+1] bsum32[2k+1]), ..)
//!     folded ((a0 + a2) + (a1 + a3)); Q5_K minimum: summs = fma(-d_x dmin_w, f32(M), summs);
//!     y = hsum8(acc) (+ the minimum term)
//!   else (8 tokens or more): the tiled kernel, per superblock in order:
//!     r = f32(I) * d_w  (Q4_K/Q5_K: r = fma(-dmin_w, f32(M), r));  y = fma(r, d_x, y)
//! ```
//!
//! One portable implementation (compiled once more with AVX2 / AVX-512 enabled so the integer
//! loops vectorise; on AArch64 with the per-4 dots `raw4` in NEON, `sdot` where available), so
//! every ISA gives the same bits. Written from scratch after those facts.

use std::sync::atomic::{AtomicUsize, Ordering};

use rocmforge_quant::{f16_to_f32, GgmlType};

use crate::act::QActs;
use crate::pool::ThreadPool;
use crate::qmatmul::{hsum8, SyncPtr};

/// The llama.cpp kernel whose order a call reproduces.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Q4_K repacked, one token (`ggml_gemv_q4_K_8x8_q8_K`).
    Q4KRepack,
    /// Q4_K repacked, groups of 4 tokens (`ggml_gemm_q4_K_8x8_q8_K`).
    Q4KRepackGemm,
    /// Q6_K / Q3_K `ggml_vec_dot_q{6,3}_K_q8_K`.
    Q6KVecDot,
    /// Q4_K `ggml_vec_dot_q4_K_q8_K`.
    Q4KVecDot,
    /// Q4_K / Q5_K tiled kernel.
    Q4KTiled,
    /// Q5_K `ggml_vec_dot_q5_K_q8_K`.
    Q5KVecDot,
    /// Q6_K / Q3_K tiled kernel.
    Q6KTiled,
}

/// Batch-invariant mode (`set_batch_invariant`): every token takes the order a lone token
/// takes, so a row's bits never depend on what else is in the batch.
static BATCH_INVARIANT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Make K-quant matmuls batch-invariant (each token computed in the one-token order, at a cost
/// in prefill speed) or batch-dependent like llama.cpp (the default: faster kernels for batches,
/// whose float order differs from the one-token kernels). The other matmul types are
/// batch-invariant in every mode (see `qmatmul`).
pub fn set_batch_invariant(on: bool) {
    BATCH_INVARIANT.store(on, std::sync::atomic::Ordering::Relaxed);
}

pub fn batch_invariant() -> bool {
    BATCH_INVARIANT.load(std::sync::atomic::Ordering::Relaxed)
}

fn order(ty: GgmlType, n_out: usize, n_tokens: usize) -> Option<Order> {
    let n_tokens = if batch_invariant() { 1 } else { n_tokens };
    match ty {
        GgmlType::Q4_K if n_out.is_multiple_of(8) => Some(Order::Q4KRepack),
        GgmlType::Q4_K if n_tokens >= 8 => Some(Order::Q4KTiled),
        GgmlType::Q4_K => Some(Order::Q4KVecDot),
        GgmlType::Q5_K if n_tokens >= 8 => Some(Order::Q4KTiled),
        GgmlType::Q5_K => Some(Order::Q5KVecDot),
        GgmlType::Q6_K | GgmlType::Q3_K if n_tokens >= 8 => Some(Order::Q6KTiled),
        GgmlType::Q6_K | GgmlType::Q3_K => Some(Order::Q6KVecDot),
        _ => None,
    }
}

/// Batches from this many tokens take the tokens-in-lanes kernel where it applies.
#[cfg(target_arch = "x86_64")]
const TL_MIN_TOKENS: usize = 8;

/// True if `run` handles this call (else the generic kernels do).
pub(crate) fn handles(ty: GgmlType, n_out: usize, n_tokens: usize) -> bool {
    order(ty, n_out, n_tokens).is_some()
}

/// One superblock unpacked: unsigned quants, per-16 scales (Q4_K: each sub-block scale twice),
/// Q4_K mins per 32, and the f32 super-scales.
pub(crate) struct Sb {
    pub q: [u8; 256],
    pub sc16: [i32; 16],
    pub m32: [i32; 8],
    pub d: f32,
    pub dmin: f32,
    /// Offset of the unsigned quants (value = q - bias): Q6_K 32, Q3_K 4, else 0.
    pub bias: i32,
}

impl Default for Sb {
    fn default() -> Self {
        Sb { q: [0; 256], sc16: [0; 16], m32: [0; 8], d: 0.0, dmin: 0.0, bias: 0 }
    }
}

#[inline(always)]
fn unpack_q4k(b: &[u8], o: &mut Sb) {
    unpack_q4k_scales(b, o);
    let qs = &b[16..144];
    for g in 0..4 {
        for l in 0..32 {
            let v = qs[32 * g + l];
            o.q[64 * g + l] = v & 0x0F;
            o.q[64 * g + 32 + l] = v >> 4;
        }
    }
}

/// d, dmin and the 6-bit sub-block scales / mins of a Q4_K / Q5_K block.
#[inline(always)]
fn unpack_q4k_scales(b: &[u8], o: &mut Sb) {
    o.d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    o.dmin = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
    let s = &b[4..16];
    for j in 0..8 {
        let (sc, m) = if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
        };
        o.sc16[2 * j] = sc as i32;
        o.sc16[2 * j + 1] = sc as i32;
        o.m32[j] = m as i32;
    }
}

#[inline(always)]
fn unpack_q5k(b: &[u8], o: &mut Sb) {
    // Same header (d, dmin, 12 scale bytes) as Q4_K, then qh[32], qs[128].
    unpack_q4k_scales(b, o);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for g in 0..4 {
        for l in 0..32 {
            let v = qs[32 * g + l];
            o.q[64 * g + l] = (v & 0x0F) | (((qh[l] >> (2 * g)) & 1) << 4);
            o.q[64 * g + 32 + l] = (v >> 4) | (((qh[l] >> (2 * g + 1)) & 1) << 4);
        }
    }
}

#[inline(always)]
fn unpack_q3k(b: &[u8], o: &mut Sb) {
    let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
    o.d = f16_to_f32(u16::from_le_bytes([b[108], b[109]]));
    o.bias = 4;
    // 6-bit signed scales (stored + 32): low 4 bits in bytes 0..8, high 2 bits in bytes 8..12.
    for j in 0..16 {
        let lo = if j < 8 { sc[j] & 0x0F } else { sc[j - 8] >> 4 };
        let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        o.sc16[j] = (lo | (hi << 4)) as i32 - 32;
    }
    for e in 0..256 {
        let (half, el) = (e >> 7, e & 127);
        let (group, l) = (el >> 5, el & 31);
        let low2 = (qs[half * 32 + l] >> (2 * group)) & 3;
        let high = (hmask[l] >> (half * 4 + group)) & 1;
        o.q[e] = low2 | (high << 2);
    }
}

#[inline(always)]
fn unpack_q6k(b: &[u8], o: &mut Sb) {
    o.bias = 32;
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    o.d = f16_to_f32(u16::from_le_bytes([b[208], b[209]]));
    for j in 0..16 {
        o.sc16[j] = sc[j] as i8 as i32;
    }
    for n in 0..2 {
        let (ql, qh, q) = (&ql[64 * n..], &qh[32 * n..], &mut o.q[128 * n..]);
        for l in 0..32 {
            q[l] = (ql[l] & 0x0F) | ((qh[l] & 3) << 4);
            q[l + 32] = (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4);
            q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
}

/// Unpack one Q3_K / Q4_K / Q5_K / Q6_K superblock (`blk` = its bytes).
#[inline(always)]
pub(crate) fn unpack_sb(ty: GgmlType, blk: &[u8], sb: &mut Sb) {
    match ty {
        GgmlType::Q4_K => unpack_q4k(blk, sb),
        GgmlType::Q5_K => unpack_q5k(blk, sb),
        GgmlType::Q3_K => unpack_q3k(blk, sb),
        _ => unpack_q6k(blk, sb),
    }
}

/// The per-4 integer dots of one superblock (`raw4`), portable or SIMD (`neon_qmatmul`); every
/// implementation gives the same integers, so the kernels' bits do not depend on the choice.
pub(crate) trait Raw4 {
    /// r[l] = sum q x and s[l] = sum x over elements 4l..4l+4 of the first 256 of `x` (all zero
    /// if `x` is shorter). `q` values are at most 63.
    ///
    /// # Safety
    /// The implementation's instruction set must be available.
    unsafe fn raw4(q: &[u8; 256], x: &[i8]) -> ([i32; 64], [i32; 64]);
}

/// `raw4` in portable Rust (auto-vectorised for whatever the enclosing function enables).
pub(crate) struct Portable;

impl Raw4 for Portable {
    #[inline(always)]
    unsafe fn raw4(q: &[u8; 256], x: &[i8]) -> ([i32; 64], [i32; 64]) {
        raw4(q, x)
    }
}

/// Per 4 consecutive elements l (64 per superblock): the raw dots `sum q x` and the activation
/// sums. Every other integer of the kernels is a sum of these (the loops vectorise well).
#[inline(always)]
fn raw4(q: &[u8; 256], x: &[i8]) -> ([i32; 64], [i32; 64]) {
    let mut r = [0i32; 64];
    let mut s = [0i32; 64];
    let Some(x) = x.first_chunk::<256>() else {
        return (r, s);
    };
    for l in 0..64 {
        let (mut a, mut b) = (0i32, 0i32);
        for i in 4 * l..4 * l + 4 {
            a += q[i] as i32 * x[i] as i32;
            b += x[i] as i32;
        }
        r[l] = a;
        s[l] = b;
    }
    (r, s)
}

/// Per group of 16 elements: the raw dots `sum q x` and the activation sums (`bsums`).
#[inline(always)]
unsafe fn group_dots<K: Raw4>(q: &[u8; 256], x: &[i8]) -> ([i32; 16], [i32; 16]) {
    let (r, s) = K::raw4(q, x);
    let mut dot = [0i32; 16];
    let mut bs = [0i32; 16];
    for g in 0..16 {
        dot[g] = r[4 * g] + r[4 * g + 1] + r[4 * g + 2] + r[4 * g + 3];
        bs[g] = s[4 * g] + s[4 * g + 1] + s[4 * g + 2] + s[4 * g + 3];
    }
    (dot, bs)
}

/// The eight `vec_dot` lanes (lane j: the elements with (e % 32) / 4 == j), each element's value
/// `q - bias`, with the per-16 scales; and the raw per-4 activation sums.
#[inline(always)]
unsafe fn lanes<K: Raw4>(sb: &Sb, x: &[i8], bias: i32) -> ([i32; 8], [i32; 64]) {
    let (r, s) = K::raw4(&sb.q, x);
    let mut lane = [0i32; 8];
    for m in 0..8 {
        for j in 0..8 {
            let l = 8 * m + j;
            lane[j] += sb.sc16[2 * m + j / 4] * (r[l] - bias * s[l]);
        }
    }
    (lane, s)
}

/// Dot of one row (already unpacked, `sbs`) with one token.
///
/// # Safety
/// `K`'s instruction set must be available.
#[inline(always)]
unsafe fn row_dot<K: Raw4>(ord: Order, sbs: &[Sb], x: &[i8], dx: &[f32]) -> f32 {
    match ord {
        Order::Q4KRepack => {
            let (mut acc, mut accm) = (0f32, 0f32);
            for (b, sb) in sbs.iter().enumerate() {
                let (dot, bs) = group_dots::<K>(&sb.q, &x[256 * b..256 * b + 256]);
                let mut i = 0i32;
                let mut m = 0i32;
                for g in 0..16 {
                    i += sb.sc16[g] * dot[g];
                }
                for s in 0..8 {
                    m += sb.m32[s] * (bs[2 * s] + bs[2 * s + 1]);
                }
                let d = dx[b];
                acc = (i as f32).mul_add(sb.d * d, acc);
                accm = (m as f32).mul_add(sb.dmin * d, accm);
            }
            acc - accm
        }
        Order::Q4KTiled => {
            let mut y = 0f32;
            for (b, sb) in sbs.iter().enumerate() {
                let (dot, bs) = group_dots::<K>(&sb.q, &x[256 * b..256 * b + 256]);
                let (mut i, mut m) = (0i32, 0i32);
                for g in 0..16 {
                    i += sb.sc16[g] * dot[g];
                }
                for s in 0..8 {
                    m += sb.m32[s] * (bs[2 * s] + bs[2 * s + 1]);
                }
                let r = (-sb.dmin).mul_add(m as f32, (i as f32) * sb.d);
                y = r.mul_add(dx[b], y);
            }
            y
        }
        Order::Q5KVecDot => {
            let mut acc = [0f32; 8];
            let mut summs = 0f32;
            for (b, sb) in sbs.iter().enumerate() {
                let (lane, s4) = lanes::<K>(sb, &x[256 * b..], 0);
                let mut m = 0i32;
                for s in 0..8 {
                    m += sb.m32[s] * s4[8 * s..8 * s + 8].iter().sum::<i32>();
                }
                let d = dx[b] * sb.d;
                let dmin = -dx[b] * sb.dmin;
                // `summs += dmin * M`: GCC contracts it into one fma.
                summs = dmin.mul_add(m as f32, summs);
                for j in 0..8 {
                    acc[j] = d.mul_add(lane[j] as f32, acc[j]);
                }
            }
            hsum8(acc) + summs
        }
        Order::Q4KVecDot => {
            let mut acc = [0f32; 8];
            let mut accm = [0f32; 4];
            for (b, sb) in sbs.iter().enumerate() {
                let (lane, s4) = lanes::<K>(sb, &x[256 * b..], 0);
                let mut bs = [0i32; 8];
                for s in 0..8 {
                    bs[s] = s4[8 * s..8 * s + 8].iter().sum();
                }
                let d = dx[b] * sb.d;
                let dmin = -dx[b] * sb.dmin;
                for j in 0..8 {
                    acc[j] = d.mul_add(lane[j] as f32, acc[j]);
                }
                for k in 0..4 {
                    let p = sb.m32[2 * k] * bs[2 * k] + sb.m32[2 * k + 1] * bs[2 * k + 1];
                    accm[k] = dmin.mul_add(p as f32, accm[k]);
                }
            }
            hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]))
        }
        Order::Q4KRepackGemm => {
            let (mut acc, mut accm) = (0f32, 0f32);
            for (b, sb) in sbs.iter().enumerate() {
                let (dot, bs) = group_dots::<K>(&sb.q, &x[256 * b..256 * b + 256]);
                let d = dx[b];
                for p in 0..4 {
                    // One fma per 64 elements (two sub-blocks of 32).
                    let mut i = 0i32;
                    for g in 4 * p..4 * p + 4 {
                        i += sb.sc16[g] * dot[g];
                    }
                    let m = sb.m32[2 * p] * (bs[4 * p] + bs[4 * p + 1]) + sb.m32[2 * p + 1] * (bs[4 * p + 2] + bs[4 * p + 3]);
                    acc = (i as f32).mul_add(sb.d * d, acc);
                    accm = (m as f32).mul_add(sb.dmin * d, accm);
                }
            }
            acc - accm
        }
        Order::Q6KTiled => {
            let mut y = 0f32;
            for (b, sb) in sbs.iter().enumerate() {
                let (dot, bs) = group_dots::<K>(&sb.q, &x[256 * b..256 * b + 256]);
                let mut i = 0i32;
                for g in 0..16 {
                    i += sb.sc16[g] * (dot[g] - sb.bias * bs[g]);
                }
                y = ((i as f32) * sb.d).mul_add(dx[b], y);
            }
            y
        }
        Order::Q6KVecDot => {
            let mut acc = [0f32; 8];
            for (b, sb) in sbs.iter().enumerate() {
                // Q6_K: unsigned quants in the lanes, the bias taken out per lane j with the
                // bsums of groups 2j, 2j + 1 (not lane j's own elements; the total is equal).
                // Q3_K: the bias leaves each element in its own lane.
                let q6 = sb.bias == 32;
                let (lane, s4) = lanes::<K>(sb, &x[256 * b..], if q6 { 0 } else { sb.bias });
                let mut bs = [0i32; 16];
                if q6 {
                    for g in 0..16 {
                        bs[g] = s4[4 * g] + s4[4 * g + 1] + s4[4 * g + 2] + s4[4 * g + 3];
                    }
                }
                let d = dx[b] * sb.d;
                for j in 0..8 {
                    let l = lane[j] - sb.bias * (bs[2 * j] * sb.sc16[2 * j] + bs[2 * j + 1] * sb.sc16[2 * j + 1]);
                    acc[j] = d.mul_add(l as f32, acc[j]);
                }
            }
            hsum8(acc)
        }
    }
}

/// Rows `rows` of the output for every token.
///
/// # Safety
/// `y` valid for `n_tokens * n_out` floats; no other thread writes these rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn rows_portable<K: Raw4>(
    ord: Order,
    ty: GgmlType,
    w: &[u8],
    k: usize,
    rows: std::ops::Range<usize>,
    acts: &QActs,
    tokens: std::ops::Range<usize>,
    y: *mut f32,
    n_out: usize,
) {
    let n_tokens = tokens.end;
    let nb = k / 256;
    let ts = ty.type_size();
    let row_bytes = nb * ts;
    let kp = acts.kp;
    let mut sbs: Vec<Sb> = (0..nb).map(|_| Sb::default()).collect();
    let mut dx = vec![0f32; nb];
    for r in rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (b, sb) in sbs.iter_mut().enumerate() {
            unpack_sb(ty, &row[b * ts..(b + 1) * ts], sb);
        }
        // Repacked Q4_K: llama.cpp runs whole groups of 4 tokens through its gemm kernel and
        // the rest (or a batch of at most 3) through gemv.
        let n_gemm = if n_tokens > 3 && !batch_invariant() { n_tokens - n_tokens % 4 } else { 0 };
        for t in tokens.clone() {
            let x = &acts.xq[t * kp..t * kp + k];
            for b in 0..nb {
                dx[b] = acts.dx4[t * kp / 4 + 64 * b];
            }
            let o = if ord == Order::Q4KRepack && t < n_gemm { Order::Q4KRepackGemm } else { ord };
            *y.add(t * n_out + r) = row_dot::<K>(o, &sbs, x, &dx);
        }
    }
}

/// `rows_portable` compiled once more for an instruction set (the integer loops vectorise for it;
/// the bits are the same, see the module header), with `raw4` from `$raw4`.
macro_rules! rows_for_isa {
    ($(#[$attr:meta])* $name:ident, $features:literal, $raw4:ty) => {
        $(#[$attr])*
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            ord: Order,
            ty: GgmlType,
            w: &[u8],
            k: usize,
            rows: std::ops::Range<usize>,
            acts: &QActs,
            tokens: std::ops::Range<usize>,
            y: *mut f32,
            n_out: usize,
        ) {
            rows_portable::<$raw4>(ord, ty, w, k, rows, acts, tokens, y, n_out)
        }
    };
}

rows_for_isa!(
    #[cfg(target_arch = "x86_64")]
    rows_avx512,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma",
    Portable
);
rows_for_isa!(
    #[cfg(target_arch = "x86_64")]
    rows_avx2,
    "avx2,fma",
    Portable
);
rows_for_isa!(
    /// NEON: the per-4 dots by `smull` (`Neon`), see `neon_qmatmul`.
    #[cfg(target_arch = "aarch64")]
    rows_neon,
    "neon",
    crate::neon_qmatmul::Raw4Neon<crate::neon::Mull>
);
rows_for_isa!(
    /// NEON with FEAT_DotProd: the per-4 dots by `sdot`.
    #[cfg(target_arch = "aarch64")]
    rows_neon_dot,
    "neon,dotprod",
    crate::neon_qmatmul::Raw4Neon<crate::neon::Sdot>
);

/// `y = W x` for `handles`-accepted calls; `acts` holds the Q8_K activations of `n_tokens`
/// tokens of length `k` (a multiple of 256), `w` `n_out` rows, `y` `n_tokens * n_out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    pool: &ThreadPool,
    isa: crate::simd::Isa,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    acts: &QActs,
    n_tokens: usize,
    y: &mut [f32],
) {
    let Some(ord) = order(ty, n_out, n_tokens) else {
        return;
    };
    let isa = isa.clamp();
    // Batches on AVX2 / AVX-512 VNNI: tokens in lanes (kquant_tl.rs), same bits; what it leaves (the
    // gemv tail of a repacked Q4_K batch) goes on below.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut t0 = 0;
    #[cfg(target_arch = "x86_64")]
    if isa >= crate::simd::Isa::Avx2 && crate::kquant_tl::handles(ord) && n_tokens >= TL_MIN_TOKENS && !batch_invariant() {
        let n_tl = crate::kquant_tl::tl_tokens(ord, n_tokens);
        let wide = isa >= crate::simd::Isa::Avx512;
        // SAFETY: AVX2+FMA (and AVX-512 VNNI when `wide`) detected: isa is clamped to what the
        // CPU has; y holds n_tokens * n_out.
        unsafe { crate::kquant_tl::run(pool, wide, ord, ty, w, n_out, k, acts, n_tl, y.as_mut_ptr()) };
        t0 = n_tl;
    }
    if t0 == n_tokens {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = isa >= crate::simd::Isa::Avx512;
        let q6 = ord == Order::Q6KVecDot && ty == GgmlType::Q6_K;
        if isa >= crate::simd::Isa::Avx2 && (ord == Order::Q4KRepack || q6 || (avx512 && ord == Order::Q5KVecDot)) {
            // SAFETY: AVX2+FMA (AVX-512 VNNI when isa says so) detected: isa is clamped to the CPU.
            unsafe { decode_x86(pool, avx512, ord, ty, w, n_out, k, acts, t0..n_tokens, y) };
            return;
        }
    }
    let tokens = t0..n_tokens;
    let chunk = n_out.div_ceil(pool.n_threads() * 4).clamp(1, 64);
    let n_chunks = n_out.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let yp = SyncPtr(y.as_mut_ptr());
    // Every compilation of `rows_portable` gives the same bits (exact integers, and explicit
    // fma / mul / add in a fixed order); `isa` picks one (tests run each).
    pool.run_dynamic(|_, _| loop {
        let c = next.fetch_add(1, Ordering::Relaxed);
        if c >= n_chunks {
            break;
        }
        let rows = c * chunk..((c + 1) * chunk).min(n_out);
        #[cfg(target_arch = "x86_64")]
        if isa >= crate::simd::Isa::Avx512 {
            // SAFETY: AVX-512 VNNI detected; chunks are disjoint row ranges of y.
            unsafe { rows_avx512(ord, ty, w, k, rows, acts, tokens.clone(), yp.get(), n_out) };
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if isa >= crate::simd::Isa::Avx2 {
            // SAFETY: AVX2/FMA detected; chunks are disjoint row ranges of y, sized by the caller.
            unsafe { rows_avx2(ord, ty, w, k, rows, acts, tokens.clone(), yp.get(), n_out) };
            continue;
        }
        #[cfg(target_arch = "aarch64")]
        if isa >= crate::simd::Isa::NeonDot {
            // SAFETY: NEON + FEAT_DotProd detected; chunks are disjoint row ranges of y.
            unsafe { rows_neon_dot(ord, ty, w, k, rows, acts, tokens.clone(), yp.get(), n_out) };
            continue;
        }
        #[cfg(target_arch = "aarch64")]
        if isa >= crate::simd::Isa::Neon {
            // SAFETY: NEON detected; chunks are disjoint row ranges of y.
            unsafe { rows_neon(ord, ty, w, k, rows, acts, tokens.clone(), yp.get(), n_out) };
            continue;
        }
        let _ = isa;
        // SAFETY: as above (portable code).
        unsafe { rows_portable::<Portable>(ord, ty, w, k, rows, acts, tokens.clone(), yp.get(), n_out) };
    });
}

/// One token of `decode_x86`: index, sums per 16 (Q6_K) or per 32 (Q4_K, Q5_K), per-superblock scales.
#[cfg(target_arch = "x86_64")]
type DecodeTok = (usize, Vec<i16>, Vec<i32>, Vec<f32>);

/// Q6_K (`Q6KVecDot`), repacked Q4_K and (AVX-512 only) Q5_K with fewer than 8 tokens on AVX-512
/// (`wide`) or AVX2: `kquant_dec`'s
/// dots per row and token, the same bits as `rows_portable` (Q4_K: llama.cpp's gemm order for
/// whole groups of 4 tokens, gemv for the rest). Only `tokens` (of `0..tokens.end`) are computed.
///
/// # Safety
/// AVX2 + FMA available, and AVX-512 F/BW/VL + VNNI when `wide`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn decode_x86(
    pool: &ThreadPool,
    wide: bool,
    ord: Order,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    acts: &QActs,
    tokens: std::ops::Range<usize>,
    y: &mut [f32],
) {
    let n_tokens = tokens.end;
    use crate::kquant_dec::{bsums16, bsums32, q4k_dot, q4k_dot_avx2, q5k_dot, q6k_dot, q6k_dot_avx2};
    let (nb, kp) = (k / 256, acts.kp);
    let row_bytes = nb * ty.type_size();
    let q6 = ord == Order::Q6KVecDot;
    let n_gemm = if n_tokens > 3 && !batch_invariant() { n_tokens - n_tokens % 4 } else { 0 };
    // Per token: activation sums (per 16 for Q6_K, per 32 for Q4_K) and per-superblock scales.
    let toks: Vec<DecodeTok> = tokens
        .map(|t| {
            let xq = &acts.xq[t * kp..];
            let (b16, b32) = if q6 { (bsums16(xq, k), Vec::new()) } else { (Vec::new(), bsums32(xq, k)) };
            (t, b16, b32, (0..nb).map(|b| acts.dx4[t * kp / 4 + 64 * b]).collect())
        })
        .collect();
    let chunk = n_out.div_ceil(pool.n_threads() * 8).clamp(1, 64);
    let n_chunks = n_out.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let yp = SyncPtr(y.as_mut_ptr());
    pool.run_dynamic(|_, _| loop {
        let c = next.fetch_add(1, Ordering::Relaxed);
        if c >= n_chunks {
            break;
        }
        for r in c * chunk..((c + 1) * chunk).min(n_out) {
            let row = w[r * row_bytes..(r + 1) * row_bytes].as_ptr();
            for (t, b16, b32, dx) in &toks {
                let t = *t;
                let xq = acts.xq[t * kp..].as_ptr();
                // SAFETY: ISA checked by the caller; row, token and y ranges are in bounds; each
                // (t, r) is written by the one thread that took row r's chunk.
                unsafe {
                    *yp.get().add(t * n_out + r) = if ord == Order::Q5KVecDot {
                        q5k_dot(row, nb, xq, b32.as_ptr(), dx.as_ptr())
                    } else {
                        match (q6, t < n_gemm, wide) {
                            (true, _, true) => q6k_dot(row, nb, xq, b16.as_ptr(), dx.as_ptr()),
                            (true, _, false) => q6k_dot_avx2(row, nb, xq, b16.as_ptr(), dx.as_ptr()),
                            (false, true, true) => q4k_dot::<true>(row, nb, xq, b32.as_ptr(), dx.as_ptr()),
                            (false, true, false) => q4k_dot_avx2::<true>(row, nb, xq, b32.as_ptr(), dx.as_ptr()),
                            (false, false, true) => q4k_dot::<false>(row, nb, xq, b32.as_ptr(), dx.as_ptr()),
                            (false, false, false) => q4k_dot_avx2::<false>(row, nb, xq, b32.as_ptr(), dx.as_ptr()),
                        }
                    };
                }
            }
        }
    });
}
