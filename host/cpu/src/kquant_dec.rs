//! Q6_K and repacked-Q4_K decode (fewer than 8 tokens) on AVX-512 VNNI (and AVX2, `*_avx2`): llama.cpp's `ggml_vec_dot_q6_K_q8_K` lane
//! order (see `kquant.rs`, `Q6KVecDot`) with the integer work in 512-bit registers, so the result
//! is the portable kernel's bits, several times faster. Q6_K is the type of `ffn_down` (and
//! often `attn_v` / `output`) in Q4_K_M files, so this is the bulk of their K-quant decode time.
//!
//! Per superblock (256 elements): the 6-bit values are rebuilt from `ql` / `qh` in registers
//! (two halves of 128: low nibbles with qh bits 0-1 / 2-3, high nibbles with bits 4-5 / 6-7);
//! `vpdpbusd` of each 64 values with the token's bytes gives 16 per-4 sums, lane L of chunk c
//! holding elements 64c + 4L..64c + 4L + 4, i.e. vec_dot lane j = L % 8 and scale group
//! g = 4c + L / 4; `vpmulld` by the per-lane scales and a fold of the two 8-lane halves give
//! the eight lane integers; the bias 32 (sc[2j] bs[2j] + sc[2j+1] bs[2j+1]) is one `vpmaddwd` of
//! the paired scales with the paired 16-element activation sums. Then, as llama.cpp:
//! `acc[j] = fma(d_x d_w, f32(lane_j - bias_j), acc[j])` and `hsum8` at the end.

use std::arch::x86_64::*;

use rocmforge_quant::f16_to_f32;

use crate::qmatmul::hsum8;

/// Bytes of one Q6_K superblock: ql[128], qh[64], scales[16] (i8), d (f16).
const Q6K_BYTES: usize = 210;

/// The 16-element sums of one token's Q8_K values, as i16 (|sum| <= 2048), `k / 16` of them.
pub(crate) fn bsums16(xq: &[i8], k: usize) -> Vec<i16> {
    xq[..k].chunks_exact(16).map(|g| g.iter().map(|&v| v as i16).sum()).collect()
}

/// Dot of one Q6_K row of `nb` superblocks with one Q8_K token (`xq` its bytes, `bs` its
/// `bsums16`, `dx` its per-superblock scales).
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI + FMA available; `row` valid for `nb * 210` bytes, `xq` for `nb * 256`,
/// `bs` for `nb * 16`, `dx` for `nb`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn q6k_dot(row: *const u8, nb: usize, xq: *const i8, bs: *const i16, dx: *const f32) -> f32 {
    let m3 = _mm512_set1_epi8(3);
    let m15 = _mm512_set1_epi8(0x0F);
    // Lane L of chunk c takes the scale of group 4c + L / 4.
    let idx: [__m512i; 4] = std::array::from_fn(|c| {
        let c = c as i32 * 4;
        _mm512_setr_epi32(c, c, c, c, c + 1, c + 1, c + 1, c + 1, c + 2, c + 2, c + 2, c + 2, c + 3, c + 3, c + 3, c + 3)
    });
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        let blk = row.add(b * Q6K_BYTES);
        let (ql, qh, sc) = (blk, blk.add(128), blk.add(192));
        let d_w = f16_to_f32(u16::from_le_bytes([*blk.add(208), *blk.add(209)]));
        let sc16 = _mm_loadu_si128(sc as *const __m128i);
        let sc32 = _mm512_cvtepi8_epi32(sc16);
        let x = xq.add(256 * b);
        let mut lanes = _mm512_setzero_si512();
        for n in 0..2 {
            let l = _mm512_loadu_si512(ql.add(64 * n) as *const _);
            let h = _mm256_loadu_si256(qh.add(32 * n) as *const __m256i);
            // Byte-wise shifts by 16-bit shifts: bits crossing from the neighbour byte are masked off.
            let ha = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h), _mm256_srli_epi16::<2>(h));
            let hb = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_srli_epi16::<4>(h)), _mm256_srli_epi16::<6>(h));
            let qa = _mm512_or_si512(_mm512_and_si512(l, m15), _mm512_slli_epi16::<4>(_mm512_and_si512(ha, m3)));
            let qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(l), m15), _mm512_slli_epi16::<4>(_mm512_and_si512(hb, m3)));
            let xa = _mm512_loadu_si512(x.add(128 * n) as *const _);
            let xb = _mm512_loadu_si512(x.add(128 * n + 64) as *const _);
            let da = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, xa);
            let db = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qb, xb);
            lanes = _mm512_add_epi32(lanes, _mm512_mullo_epi32(da, _mm512_permutexvar_epi32(idx[2 * n], sc32)));
            lanes = _mm512_add_epi32(lanes, _mm512_mullo_epi32(db, _mm512_permutexvar_epi32(idx[2 * n + 1], sc32)));
        }
        let lane8 = _mm256_add_epi32(_mm512_castsi512_si256(lanes), _mm512_extracti64x4_epi64::<1>(lanes));
        let bias = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc16), _mm256_loadu_si256(bs.add(16 * b) as *const __m256i));
        let v = _mm256_sub_epi32(lane8, _mm256_slli_epi32::<5>(bias));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(*dx.add(b) * d_w), _mm256_cvtepi32_ps(v), acc);
    }
    let mut a = [0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), acc);
    hsum8(a)
}

/// Bytes of one Q4_K superblock: d, dmin (f16), scales[12], qs[128].
const Q4K_BYTES: usize = 144;

/// The 32-element sums of one token's Q8_K values, `k / 32` of them.
pub(crate) fn bsums32(xq: &[i8], k: usize) -> Vec<i32> {
    xq[..k].chunks_exact(32).map(|g| g.iter().map(|&v| v as i32).sum()).collect()
}

/// Dot of one Q4_K row with one Q8_K token in llama.cpp's repacked-Q4_K orders (`kquant.rs`):
/// `GEMM` false = `Q4KRepack` (gemv: one fma pair per superblock), true = `Q4KRepackGemm` (one
/// per 64 elements). `bs` = the token's `bsums32`; the rest as `q6k_dot`.
///
/// # Safety
/// As `q6k_dot`, with `row` valid for `nb * 144` bytes and `bs` for `nb * 8`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn q4k_dot<const GEMM: bool>(row: *const u8, nb: usize, xq: *const i8, bs: *const i32, dx: *const f32) -> f32 {
    let m15 = _mm256_set1_epi8(0x0F);
    let (mut acc, mut accm) = (0f32, 0f32);
    for b in 0..nb {
        let blk = std::slice::from_raw_parts(row.add(b * Q4K_BYTES), Q4K_BYTES);
        let (d_w, dmin_w, sc, mn) = q4k_header(blk);
        let x = xq.add(256 * b);
        let bsb = bs.add(8 * b);
        let dx_b = *dx.add(b);
        let (dd, dm) = (d_w * dx_b, dmin_w * dx_b);
        // Chunk c: elements 64c..64c + 64 = low nibbles of qs[32c..32c + 32], then high nibbles;
        // lanes 0..8 are sub-block 2c, lanes 8..16 sub-block 2c + 1.
        let mut lanes = _mm512_setzero_si512();
        for c in 0..4 {
            let q = _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * c) as *const __m256i);
            let qz =
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(_mm256_and_si256(q, m15)), _mm256_and_si256(_mm256_srli_epi16::<4>(q), m15));
            let dz = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qz, _mm512_loadu_si512(x.add(64 * c) as *const _));
            let sv = _mm512_inserti64x4::<1>(_mm512_set1_epi32(sc[2 * c]), _mm256_set1_epi32(sc[2 * c + 1]));
            if GEMM {
                let i = _mm512_reduce_add_epi32(_mm512_mullo_epi32(dz, sv));
                let m = mn[2 * c] * *bsb.add(2 * c) + mn[2 * c + 1] * *bsb.add(2 * c + 1);
                q4k_step(&mut acc, &mut accm, i, m, dd, dm);
            } else {
                lanes = _mm512_add_epi32(lanes, _mm512_mullo_epi32(dz, sv));
            }
        }
        if !GEMM {
            let i = _mm512_reduce_add_epi32(lanes);
            let m: i32 = (0..8).map(|j| mn[j] * *bsb.add(j)).sum();
            q4k_step(&mut acc, &mut accm, i, m, dd, dm);
        }
    }
    acc - accm
}

/// Sum of the eight i32 lanes (exact).
#[inline(always)]
unsafe fn hsum_i32x8(v: __m256i) -> i32 {
    let mut a = [0i32; 8];
    _mm256_storeu_si256(a.as_mut_ptr() as *mut __m256i, v);
    a.iter().sum()
}

/// `q6k_dot` on AVX2 (`vpmaddubsw` + `vpmaddwd` with the per-16 scales), same integers and bits.
///
/// # Safety
/// AVX2 + FMA available; pointers as `q6k_dot`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn q6k_dot_avx2(row: *const u8, nb: usize, xq: *const i8, bs: *const i16, dx: *const f32) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let m15 = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        let blk = row.add(b * Q6K_BYTES);
        let (ql, qh, sc) = (blk, blk.add(128), blk.add(192));
        let d_w = f16_to_f32(u16::from_le_bytes([*blk.add(208), *blk.add(209)]));
        let sc16 = _mm_loadu_si128(sc as *const __m128i);
        let x = xq.add(256 * b);
        let mut lanes = _mm256_setzero_si256();
        for n in 0..2 {
            let l0 = _mm256_loadu_si256(ql.add(64 * n) as *const __m256i);
            let l1 = _mm256_loadu_si256(ql.add(64 * n + 32) as *const __m256i);
            let h = _mm256_loadu_si256(qh.add(32 * n) as *const __m256i);
            let hi = |s: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(s, m3));
            // Elements 128n + 32i.. for i = 0..4 (the unpack order of `kquant::unpack_q6k`).
            let q = [
                _mm256_or_si256(_mm256_and_si256(l0, m15), hi(h)),
                _mm256_or_si256(_mm256_and_si256(l1, m15), hi(_mm256_srli_epi16::<2>(h))),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m15), hi(_mm256_srli_epi16::<4>(h))),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m15), hi(_mm256_srli_epi16::<6>(h))),
            ];
            for (i, qi) in q.iter().enumerate() {
                let m = 4 * n + i; // chunk of 32: lane j holds elements 32m + 4j.., group 2m + j / 4
                let p16 = _mm256_maddubs_epi16(*qi, _mm256_loadu_si256(x.add(32 * m) as *const __m256i));
                let s = _mm256_set_m128i(_mm_set1_epi16(*sc.add(2 * m + 1) as i8 as i16), _mm_set1_epi16(*sc.add(2 * m) as i8 as i16));
                lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(p16, s));
            }
        }
        let bias = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc16), _mm256_loadu_si256(bs.add(16 * b) as *const __m256i));
        let v = _mm256_sub_epi32(lanes, _mm256_slli_epi32::<5>(bias));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(*dx.add(b) * d_w), _mm256_cvtepi32_ps(v), acc);
    }
    let mut a = [0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), acc);
    hsum8(a)
}

/// `q4k_dot` on AVX2, same integers and bits.
///
/// # Safety
/// AVX2 + FMA available; pointers as `q4k_dot`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn q4k_dot_avx2<const GEMM: bool>(row: *const u8, nb: usize, xq: *const i8, bs: *const i32, dx: *const f32) -> f32 {
    let m15 = _mm256_set1_epi8(0x0F);
    let (mut acc, mut accm) = (0f32, 0f32);
    for b in 0..nb {
        let blk = std::slice::from_raw_parts(row.add(b * Q4K_BYTES), Q4K_BYTES);
        let (d_w, dmin_w, sc, mn) = q4k_header(blk);
        let x = xq.add(256 * b);
        let bsb = bs.add(8 * b);
        let dx_b = *dx.add(b);
        let (dd, dm) = (d_w * dx_b, dmin_w * dx_b);
        let mut lanes = _mm256_setzero_si256();
        for c in 0..4 {
            let q = _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * c) as *const __m256i);
            let lo = _mm256_maddubs_epi16(_mm256_and_si256(q, m15), _mm256_loadu_si256(x.add(64 * c) as *const __m256i));
            let hi = _mm256_maddubs_epi16(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), m15),
                _mm256_loadu_si256(x.add(64 * c + 32) as *const __m256i),
            );
            let part = _mm256_add_epi32(
                _mm256_madd_epi16(lo, _mm256_set1_epi16(sc[2 * c] as i16)),
                _mm256_madd_epi16(hi, _mm256_set1_epi16(sc[2 * c + 1] as i16)),
            );
            if GEMM {
                let i = hsum_i32x8(part);
                let m = mn[2 * c] * *bsb.add(2 * c) + mn[2 * c + 1] * *bsb.add(2 * c + 1);
                q4k_step(&mut acc, &mut accm, i, m, dd, dm);
            } else {
                lanes = _mm256_add_epi32(lanes, part);
            }
        }
        if !GEMM {
            let i = hsum_i32x8(lanes);
            let m: i32 = (0..8).map(|j| mn[j] * *bsb.add(j)).sum();
            q4k_step(&mut acc, &mut accm, i, m, dd, dm);
        }
    }
    acc - accm
}

/// d, dmin (as f32) and the eight 6-bit scales and mins of a Q4_K / Q5_K superblock.
#[inline(always)]
fn q4k_header(blk: &[u8]) -> (f32, f32, [i32; 8], [i32; 8]) {
    let (sc, mn) = q4k_scales(&blk[4..16]);
    (f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])), f16_to_f32(u16::from_le_bytes([blk[2], blk[3]])), sc, mn)
}

/// One float step of llama.cpp's repacked-Q4_K kernels: `acc = fma(f32(I), d_w d_x, acc)`,
/// `accm = fma(f32(M), dmin_w d_x, accm)` (the row's value is `acc - accm` at the end).
#[inline(always)]
fn q4k_step(acc: &mut f32, accm: &mut f32, i: i32, m: i32, dd: f32, dm: f32) {
    *acc = (i as f32).mul_add(dd, *acc);
    *accm = (m as f32).mul_add(dm, *accm);
}

/// The eight 6-bit scales and mins of a Q4_K superblock (its 12 scale bytes).
#[inline(always)]
fn q4k_scales(s: &[u8]) -> ([i32; 8], [i32; 8]) {
    let mut sc = [0i32; 8];
    let mut mn = [0i32; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = if j < 4 {
            ((s[j] & 63) as i32, (s[j + 4] & 63) as i32)
        } else {
            (((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4)) as i32, ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as i32)
        };
    }
    (sc, mn)
}

/// Bytes of one Q5_K superblock: d, dmin (f16), scales[12], qh[32], qs[128].
const Q5K_BYTES: usize = 176;

/// Dot of one Q5_K row with one Q8_K token in llama.cpp's `ggml_vec_dot_q5_K_q8_K` order
/// (`Q5KVecDot`): eight lanes `acc[j] = fma(d_x d_w, f32(lane_j), acc[j])` (lane j: the elements
/// with (e % 32) / 4 == j, scaled per sub-block of 32), the minimum term
/// `summs = fma(-d_x dmin_w, f32(M), summs)`; `hsum8(acc) + summs`. `bs` = the token's `bsums32`.
///
/// # Safety
/// As `q4k_dot`, with `row` valid for `nb * 176` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub(crate) unsafe fn q5k_dot(row: *const u8, nb: usize, xq: *const i8, bs: *const i32, dx: *const f32) -> f32 {
    let m15 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for b in 0..nb {
        let blk = std::slice::from_raw_parts(row.add(b * Q5K_BYTES), Q5K_BYTES);
        let (d_w, dmin_w, sc, mn) = q4k_header(blk);
        let qh = _mm256_loadu_si256(blk.as_ptr().add(16) as *const __m256i);
        let x = xq.add(256 * b);
        let mut lanes = _mm512_setzero_si512();
        for c in 0..4 {
            let q = _mm256_loadu_si256(blk.as_ptr().add(48 + 32 * c) as *const __m256i);
            // Bit 4 of element 64c + l is bit 2c of qh[l], of 64c + 32 + l bit 2c + 1.
            let h0 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32)), one);
            let h1 = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32 + 1)), one);
            let lo = _mm256_or_si256(_mm256_and_si256(q, m15), _mm256_slli_epi16::<4>(h0));
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m15), _mm256_slli_epi16::<4>(h1));
            let qz = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let dz = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qz, _mm512_loadu_si512(x.add(64 * c) as *const _));
            let sv = _mm512_inserti64x4::<1>(_mm512_set1_epi32(sc[2 * c]), _mm256_set1_epi32(sc[2 * c + 1]));
            lanes = _mm512_add_epi32(lanes, _mm512_mullo_epi32(dz, sv));
        }
        let lane8 = _mm256_add_epi32(_mm512_castsi512_si256(lanes), _mm512_extracti64x4_epi64::<1>(lanes));
        let m: i32 = (0..8).map(|j| mn[j] * *bs.add(8 * b + j)).sum();
        let dx_b = *dx.add(b);
        summs = (-dx_b * dmin_w).mul_add(m as f32, summs);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dx_b * d_w), _mm256_cvtepi32_ps(lane8), acc);
    }
    let mut a = [0f32; 8];
    _mm256_storeu_ps(a.as_mut_ptr(), acc);
    hsum8(a) + summs
}
