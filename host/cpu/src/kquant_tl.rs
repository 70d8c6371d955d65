//! Batched K-quant matmuls (prefill) on AVX-512 VNNI with *tokens in lanes*, giving exactly the
//! bits of `kquant.rs`'s portable kernels, which reproduce llama.cpp (see its header).
//!
//! Why this layout: every llama.cpp K-quant order is, per (row, token), a fixed sequence of float
//! steps over superblocks whose inputs are exact integers (`I = sum sc (q - bias) x`, the mins
//! term `M`). Integers can be summed in any order, and the float steps of different (row, token)
//! pairs are independent. So 16 tokens go in the 16 lanes of a register: each lane runs its own
//! pair's float sequence unchanged, and the integer sums need no horizontal reduction at all.
//!
//! - Weights: a block of rows is unpacked once into i16 `sc * (q - bias)` (|value| <= 4096), two
//!   per i32, and reused for every token block.
//! - Activations: the Q8_K values of 16 tokens transposed once per call into, per element pair,
//!   one 16-lane vector of (x[2i], x[2i+1]) i16 pairs; per superblock the 16 scales `d_x`, and
//!   (Q4_K/Q5_K) the 32-element sums paired per 64 elements for the mins.
//! - `vpdpwssd` then adds `w[2i] x[2i] + w[2i+1] x[2i+1]` of one row (broadcast) into each token's
//!   lane; 4 rows share every activation load. Mins: `vpdpwssd` of the paired sums with the
//!   paired mins gives exactly llama.cpp's per-64 `m[2p] bs[2p] + m[2p+1] bs[2p+1]`.
//!
//! Orders handled (names from `kquant.rs`): `Q6KTiled` (Q6_K, Q3_K), `Q4KTiled` (Q5_K, and Q4_K
//! when rows are not a multiple of 8) and `Q4KRepackGemm` (Q4_K, whole groups of 4 tokens); the
//! rest (decode, the gemv tail of a repacked Q4_K batch) stays on the portable kernels.

use std::arch::x86_64::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use rocmforge_quant::GgmlType;

use crate::act::QActs;
use crate::kquant::{unpack_sb, Order, Sb};
use crate::pool::ThreadPool;
use crate::qmatmul::SyncPtr;

/// Tokens per register (lanes of a 512-bit i32/f32 vector).
const LANES: usize = 16;
/// Rows unpacked together (their i16 weights stay in L2 while every token block passes).
const ROW_BLOCK: usize = 32;
/// Rows sharing each activation load in the inner loop.
const R: usize = 4;

/// True if the tokens-in-lanes kernel computes this order (for the tokens `tl_tokens` says).
pub(crate) fn handles(ord: Order) -> bool {
    matches!(ord, Order::Q6KTiled | Order::Q4KTiled | Order::Q4KRepack)
}

/// How many leading tokens the kernel takes for `ord` (Q4_K repacked: whole groups of 4, the
/// rest follows llama.cpp's gemv order on the portable kernel).
pub(crate) fn tl_tokens(ord: Order, n_tokens: usize) -> usize {
    match ord {
        Order::Q4KRepack if n_tokens > 3 => n_tokens - n_tokens % 4,
        Order::Q4KRepack => 0,
        _ => n_tokens,
    }
}

/// The transposed activations of one call (see the module header).
struct TlActs {
    k: usize,
    nb: usize,
    /// [token block][k/2][16] packed (x[2i], x[2i+1]).
    xt: Vec<i32>,
    /// [token block][nb][16] Q8_K scales.
    dxt: Vec<f32>,
    /// [token block][nb][4][16] packed (sum x over 32, next 32) per 64 elements.
    bst: Vec<i32>,
}

fn pack(lo: i32, hi: i32) -> i32 {
    ((lo as u16) as u32 | (((hi as u16) as u32) << 16)) as i32
}

fn prep_acts(pool: &ThreadPool, acts: &QActs, k: usize, n_tok: usize, mins: bool) -> TlActs {
    let (kh, nb, kp) = (k / 2, k / 256, acts.kp);
    let n_blocks = n_tok.div_ceil(LANES);
    let mut a = TlActs {
        k,
        nb,
        xt: vec![0; n_blocks * kh * LANES],
        dxt: vec![0.0; n_blocks * nb * LANES],
        bst: if mins { vec![0; n_blocks * nb * 4 * LANES] } else { Vec::new() },
    };
    let (xt, dxt, bst) = (SyncPtr(a.xt.as_mut_ptr()), SyncPtr(a.dxt.as_mut_ptr()), SyncPtr(a.bst.as_mut_ptr()));
    let next = AtomicUsize::new(0);
    pool.run_dynamic(|_, _| loop {
        let tb = next.fetch_add(1, Ordering::Relaxed);
        if tb >= n_blocks {
            break;
        }
        for lane in 0..LANES {
            let t = tb * LANES + lane;
            if t >= n_tok {
                break; // padded lanes stay zero
            }
            let x = &acts.xq[t * kp..t * kp + k];
            // SAFETY: every (tb, lane) slot is written by exactly one thread, inside the buffers.
            unsafe {
                for i in 0..kh {
                    *xt.get().add((tb * kh + i) * LANES + lane) = pack(x[2 * i] as i32, x[2 * i + 1] as i32);
                }
                for b in 0..nb {
                    *dxt.get().add((tb * nb + b) * LANES + lane) = acts.dx4[t * kp / 4 + 64 * b];
                    if mins {
                        for p in 0..4 {
                            let s = |o: usize| x[256 * b + 64 * p + o..256 * b + 64 * p + o + 32].iter().map(|&v| v as i32).sum::<i32>();
                            *bst.get().add(((tb * nb + b) * 4 + p) * LANES + lane) = pack(s(0), s(32));
                        }
                    }
                }
            }
        }
    });
    a
}

/// A block of rows unpacked for the kernel.
struct TlRows {
    /// [row][k/2] packed (w[2i], w[2i+1]), w = sc * (q - bias).
    w: Vec<i32>,
    /// [row][nb] super-scales.
    d: Vec<f32>,
    dmin: Vec<f32>,
    /// [row][nb][4] packed (m[2p], m[2p+1]).
    mp: Vec<i32>,
}

fn unpack_rows(ty: GgmlType, w: &[u8], k: usize, rows: std::ops::Range<usize>, out: &mut TlRows, sb: &mut Sb) {
    let (kh, nb, ts) = (k / 2, k / 256, ty.type_size());
    let n = rows.len();
    out.w.resize(n * kh, 0);
    out.d.resize(n * nb, 0.0);
    out.dmin.resize(n * nb, 0.0);
    out.mp.resize(n * nb * 4, 0);
    for (i, r) in rows.enumerate() {
        let row = &w[r * nb * ts..(r + 1) * nb * ts];
        for b in 0..nb {
            unpack_sb(ty, &row[b * ts..(b + 1) * ts], sb);
            for e in (0..256).step_by(2) {
                let v = |e: usize| sb.sc16[e / 16] * (sb.q[e] as i32 - sb.bias);
                out.w[i * kh + b * 128 + e / 2] = pack(v(e), v(e + 1));
            }
            out.d[i * nb + b] = sb.d;
            out.dmin[i * nb + b] = sb.dmin;
            for p in 0..4 {
                out.mp[(i * nb + b) * 4 + p] = pack(sb.m32[2 * p], sb.m32[2 * p + 1]);
            }
        }
    }
}

/// `y[t][r] = row r . token t` for rows `i0..i0 + R` of `wr` and token block `tb`, in `ord`'s
/// float order; `rows[i]` is the output row of unpacked row i. Writes only real tokens.
///
/// # Safety
/// AVX-512 F/BW + VNNI + FMA available; `y` valid for `n_tok * n_out`, rows disjoint per thread.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const NR: usize>(
    ord: Order,
    wr: &TlRows,
    i0: usize,
    first_row: usize,
    a: &TlActs,
    tb: usize,
    n_tok: usize,
    y: *mut f32,
    n_out: usize,
) {
    let (kh, nb) = (a.k / 2, a.nb);
    let xt = a.xt.as_ptr().add(tb * kh * LANES);
    let dxt = a.dxt.as_ptr().add(tb * nb * LANES);
    let w: [*const i32; NR] = std::array::from_fn(|r| wr.w.as_ptr().add((i0 + r) * kh));
    let mut acc = [_mm512_setzero_ps(); NR];
    let mut accm = [_mm512_setzero_ps(); NR];
    for b in 0..nb {
        let dxv = _mm512_loadu_ps(dxt.add(b * LANES));
        let bs = if a.bst.is_empty() { std::ptr::null() } else { a.bst.as_ptr().add((tb * nb + b) * 4 * LANES) };
        // Integer dot of pairs [p0, p1) of superblock b, for each row.
        let dots = |p0: usize, p1: usize| {
            let mut s = [_mm512_setzero_si512(); NR];
            for i in b * 128 + p0..b * 128 + p1 {
                let xv = _mm512_loadu_si512(xt.add(i * LANES) as *const _);
                for r in 0..NR {
                    s[r] = _mm512_dpwssd_epi32(s[r], xv, _mm512_set1_epi32(*w[r].add(i)));
                }
            }
            s
        };
        let mins = |p: usize, r: usize| {
            let m = _mm512_set1_epi32(wr.mp[((i0 + r) * nb + b) * 4 + p]);
            _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(bs.add(p * LANES) as *const _), m)
        };
        match ord {
            Order::Q6KTiled => {
                // y = fma(f32(I) * d_w, d_x, y)
                let s = dots(0, 128);
                for r in 0..NR {
                    let d = _mm512_set1_ps(wr.d[(i0 + r) * nb + b]);
                    acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s[r]), d), dxv, acc[r]);
                }
            }
            Order::Q4KTiled => {
                // r = fma(-dmin_w, f32(M), f32(I) * d_w); y = fma(r, d_x, y)
                let s = dots(0, 128);
                for r in 0..NR {
                    let m = _mm512_add_epi32(_mm512_add_epi32(mins(0, r), mins(1, r)), _mm512_add_epi32(mins(2, r), mins(3, r)));
                    let d = _mm512_set1_ps(wr.d[(i0 + r) * nb + b]);
                    let ndmin = _mm512_set1_ps(-wr.dmin[(i0 + r) * nb + b]);
                    let v = _mm512_fmadd_ps(ndmin, _mm512_cvtepi32_ps(m), _mm512_mul_ps(_mm512_cvtepi32_ps(s[r]), d));
                    acc[r] = _mm512_fmadd_ps(v, dxv, acc[r]);
                }
            }
            _ => {
                // Q4_K repacked, gemm: per 64 elements acc = fma(f32(i), d_w d_x, acc),
                // accm = fma(f32(m), dmin_w d_x, accm); y = acc - accm.
                for p in 0..4 {
                    let s = dots(32 * p, 32 * p + 32);
                    for r in 0..NR {
                        let dd = _mm512_mul_ps(_mm512_set1_ps(wr.d[(i0 + r) * nb + b]), dxv);
                        let dm = _mm512_mul_ps(_mm512_set1_ps(wr.dmin[(i0 + r) * nb + b]), dxv);
                        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), dd, acc[r]);
                        accm[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins(p, r)), dm, accm[r]);
                    }
                }
            }
        }
    }
    let lanes = LANES.min(n_tok - tb * LANES);
    for r in 0..NR {
        let v = if matches!(ord, Order::Q4KRepack) { _mm512_sub_ps(acc[r], accm[r]) } else { acc[r] };
        let mut out = [0f32; LANES];
        _mm512_storeu_ps(out.as_mut_ptr(), v);
        for (l, o) in out.iter().enumerate().take(lanes) {
            *y.add((tb * LANES + l) * n_out + first_row + r) = *o;
        }
    }
}

/// `y` rows of tokens `0..n_tok` (see `tl_tokens`) for an order `handles` accepts.
///
/// # Safety
/// AVX-512 F/BW/VL + VNNI + FMA must be available; `y` holds `n_tok * n_out` floats at least.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    pool: &ThreadPool,
    ord: Order,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    acts: &QActs,
    n_tok: usize,
    y: *mut f32,
) {
    let mins = matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K);
    let a = prep_acts(pool, acts, k, n_tok, mins);
    let n_chunks = n_out.div_ceil(ROW_BLOCK);
    let next = AtomicUsize::new(0);
    let yp = SyncPtr(y);
    pool.run_dynamic(|_, _| {
        let mut rows = TlRows { w: Vec::new(), d: Vec::new(), dmin: Vec::new(), mp: Vec::new() };
        let mut sb = Sb::default();
        loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            let (r0, r1) = (c * ROW_BLOCK, ((c + 1) * ROW_BLOCK).min(n_out));
            unpack_rows(ty, w, k, r0..r1, &mut rows, &mut sb);
            for tb in 0..n_tok.div_ceil(LANES) {
                let mut i = 0;
                while i < r1 - r0 {
                    // SAFETY: the caller guarantees the ISA; rows r0..r1 belong to this thread.
                    unsafe {
                        if r1 - r0 - i >= R {
                            kernel::<R>(ord, &rows, i, r0 + i, &a, tb, n_tok, yp.get(), n_out);
                            i += R;
                        } else {
                            kernel::<1>(ord, &rows, i, r0 + i, &a, tb, n_tok, yp.get(), n_out);
                            i += 1;
                        }
                    }
                }
            }
        }
    });
}
