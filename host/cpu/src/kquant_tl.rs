//! Batched K-quant matmuls (prefill) on AVX-512 VNNI or AVX2 with *tokens in lanes*, giving exactly the
//! bits of `kquant.rs`'s portable kernels, which reproduce llama.cpp (see its header).
//!
//! Why this layout: every llama.cpp K-quant order is, per (row, token), a fixed sequence of float
//! steps over superblocks whose inputs are exact integers (`I = sum sc (q - bias) x`, the mins
//! term `M`). Integers can be summed in any order, and the float steps of different (row, token)
//! pairs are independent. So 16 tokens go in the 16 lanes of a register: each lane runs its own
//! pair's float sequence unchanged, and the integer sums need no horizontal reduction at all.
//! (AVX2: 8 tokens per register, `vpmaddwd` + `vpaddd` for `vpdpwssd`; one generic kernel.)
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
#[derive(Default)]
struct TlActs {
    k: usize,
    nb: usize,
    /// [token block][k/2][lanes] packed (x[2i], x[2i+1]).
    xt: Vec<i32>,
    /// [token block][nb][lanes] Q8_K scales.
    dxt: Vec<f32>,
    /// [token block][nb][4][lanes] packed (sum x over 32, next 32) per 64 elements.
    bst: Vec<i32>,
}

fn pack(lo: i32, hi: i32) -> i32 {
    ((lo as u16) as u32 | (((hi as u16) as u32) << 16)) as i32
}

thread_local! {
    /// The transposed activations' buffers, reused from call to call (a prefill makes dozens of
    /// these calls of a few MB each; fresh allocations would page-fault every time).
    static ACTS: std::cell::RefCell<TlActs> = std::cell::RefCell::new(TlActs::default());
}

/// Refill `a` (zeroed, so padded lanes are zero) for this call.
fn prep_acts(pool: &ThreadPool, acts: &QActs, k: usize, n_tok: usize, mins: bool, lanes: usize, a: &mut TlActs) {
    let (kh, nb, kp) = (k / 2, k / 256, acts.kp);
    let n_blocks = n_tok.div_ceil(lanes);
    (a.k, a.nb) = (k, nb);
    let refill = |v: &mut Vec<i32>, n: usize| {
        v.clear();
        v.resize(n, 0);
    };
    refill(&mut a.xt, n_blocks * kh * lanes);
    refill(&mut a.bst, if mins { n_blocks * nb * 4 * lanes } else { 0 });
    a.dxt.clear();
    a.dxt.resize(n_blocks * nb * lanes, 0.0);
    let (xt, dxt, bst) = (SyncPtr(a.xt.as_mut_ptr()), SyncPtr(a.dxt.as_mut_ptr()), SyncPtr(a.bst.as_mut_ptr()));
    let next = AtomicUsize::new(0);
    pool.run_dynamic(|_, _| loop {
        let tb = next.fetch_add(1, Ordering::Relaxed);
        if tb >= n_blocks {
            break;
        }
        for lane in 0..lanes {
            let t = tb * lanes + lane;
            if t >= n_tok {
                break; // padded lanes stay zero
            }
            let x = &acts.xq[t * kp..t * kp + k];
            let bs32 = if mins { crate::kquant_dec::bsums32(x, k) } else { Vec::new() };
            // SAFETY: every (tb, lane) slot is written by exactly one thread, inside the buffers.
            unsafe {
                for i in 0..kh {
                    *xt.get().add((tb * kh + i) * lanes + lane) = pack(x[2 * i] as i32, x[2 * i + 1] as i32);
                }
                for b in 0..nb {
                    *dxt.get().add((tb * nb + b) * lanes + lane) = acts.dx4[t * kp / 4 + 64 * b];
                    if mins {
                        for p in 0..4 {
                            let (s0, s1) = (bs32[8 * b + 2 * p], bs32[8 * b + 2 * p + 1]);
                            *bst.get().add(((tb * nb + b) * 4 + p) * lanes + lane) = pack(s0, s1);
                        }
                    }
                }
            }
        }
    });
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

/// The vector operations the kernel needs, for one register width (tokens per register = `L`).
trait Lanes {
    const L: usize;
    type I: Copy;
    type F: Copy;
    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    /// `acc + sum over the pair of (x pair) * (w pair)` per lane; `x` points at `L` packed pairs.
    unsafe fn dot(acc: Self::I, x: *const i32, w: i32) -> Self::I;
    unsafe fn add_i(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn cvt(a: Self::I) -> Self::F;
    unsafe fn load_f(p: *const f32) -> Self::F;
    unsafe fn splat(v: f32) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// a * b + c, one rounding.
    unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn store(p: *mut f32, v: Self::F);
}

/// AVX-512 VNNI: 16 tokens, `vpdpwssd`.
struct L16;

impl Lanes for L16 {
    const L: usize = 16;
    type I = __m512i;
    type F = __m512;
    #[inline(always)]
    unsafe fn zero_i() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, x: *const i32, w: i32) -> __m512i {
        _mm512_dpwssd_epi32(acc, _mm512_loadu_si512(x as *const _), _mm512_set1_epi32(w))
    }
    #[inline(always)]
    unsafe fn add_i(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn cvt(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn load_f(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        _mm512_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
}

/// AVX2: 8 tokens, `vpmaddwd` + `vpaddd`.
struct L8;

impl Lanes for L8 {
    const L: usize = 8;
    type I = __m256i;
    type F = __m256;
    #[inline(always)]
    unsafe fn zero_i() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: *const i32, w: i32) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_loadu_si256(x as *const __m256i), _mm256_set1_epi32(w)))
    }
    #[inline(always)]
    unsafe fn add_i(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn cvt(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn load_f(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        _mm256_sub_ps(a, b)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
}

/// Integer dots of the packed pairs `pairs` of each row in `w` with the token block at `xt`.
#[inline(always)]
unsafe fn dots<V: Lanes, const NR: usize>(xt: *const i32, w: &[*const i32; NR], pairs: std::ops::Range<usize>) -> [V::I; NR] {
    let mut s = [V::zero_i(); NR];
    for i in pairs {
        for r in 0..NR {
            s[r] = V::dot(s[r], xt.add(i * V::L), *w[r].add(i));
        }
    }
    s
}

/// `y[t][r] = row r . token t` for rows `i0..i0 + NR` of `wr` (output rows from `first_row`) and
/// token block `tb`, in `ord`'s float order. Writes only real tokens.
///
/// # Safety
/// `V`'s instruction set available (the callers' `target_feature`); `y` valid for
/// `n_tok * n_out`, rows disjoint per thread; `a` laid out for `V::L` lanes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<V: Lanes, const NR: usize>(
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
    let l = V::L;
    let (kh, nb) = (a.k / 2, a.nb);
    let xt = a.xt.as_ptr().add(tb * kh * l);
    let dxt = a.dxt.as_ptr().add(tb * nb * l);
    let w: [*const i32; NR] = std::array::from_fn(|r| wr.w.as_ptr().add((i0 + r) * kh));
    let mut acc = [V::zero_f(); NR];
    let mut accm = [V::zero_f(); NR];
    for b in 0..nb {
        let dxv = V::load_f(dxt.add(b * l));
        let bs = if a.bst.is_empty() { std::ptr::null() } else { a.bst.as_ptr().add((tb * nb + b) * 4 * l) };
        // (Plain fns, not closures: a closure is not inlined into the target_feature caller
        // reliably, and then neither are the intrinsics.)
        let dots = |p0: usize, p1: usize| dots::<V, NR>(xt, &w, b * 128 + p0..b * 128 + p1);
        let mins = |p: usize, r: usize| V::dot(V::zero_i(), bs.add(p * l), wr.mp[((i0 + r) * nb + b) * 4 + p]);
        match ord {
            Order::Q6KTiled => {
                // y = fma(f32(I) * d_w, d_x, y)
                let s = dots(0, 128);
                for r in 0..NR {
                    let d = V::splat(wr.d[(i0 + r) * nb + b]);
                    acc[r] = V::fma(V::mul(V::cvt(s[r]), d), dxv, acc[r]);
                }
            }
            Order::Q4KTiled => {
                // r = fma(-dmin_w, f32(M), f32(I) * d_w); y = fma(r, d_x, y)
                let s = dots(0, 128);
                for r in 0..NR {
                    let m = V::add_i(V::add_i(mins(0, r), mins(1, r)), V::add_i(mins(2, r), mins(3, r)));
                    let d = V::splat(wr.d[(i0 + r) * nb + b]);
                    let ndmin = V::splat(-wr.dmin[(i0 + r) * nb + b]);
                    let v = V::fma(ndmin, V::cvt(m), V::mul(V::cvt(s[r]), d));
                    acc[r] = V::fma(v, dxv, acc[r]);
                }
            }
            _ => {
                // Q4_K repacked, gemm: per 64 elements acc = fma(f32(i), d_w d_x, acc),
                // accm = fma(f32(m), dmin_w d_x, accm); y = acc - accm.
                for p in 0..4 {
                    let s = dots(32 * p, 32 * p + 32);
                    for r in 0..NR {
                        let dd = V::mul(V::splat(wr.d[(i0 + r) * nb + b]), dxv);
                        let dm = V::mul(V::splat(wr.dmin[(i0 + r) * nb + b]), dxv);
                        acc[r] = V::fma(V::cvt(s[r]), dd, acc[r]);
                        accm[r] = V::fma(V::cvt(mins(p, r)), dm, accm[r]);
                    }
                }
            }
        }
    }
    let lanes = l.min(n_tok - tb * l);
    for r in 0..NR {
        let v = if matches!(ord, Order::Q4KRepack) { V::sub(acc[r], accm[r]) } else { acc[r] };
        let mut out = [0f32; 16];
        V::store(out.as_mut_ptr(), v);
        for (t, o) in out.iter().enumerate().take(lanes) {
            *y.add((tb * l + t) * n_out + first_row + r) = *o;
        }
    }
}

/// All token blocks for the unpacked rows `wr` (output rows `r0..`), `NR` rows at a time.
///
/// # Safety
/// As `kernel`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_block<V: Lanes>(ord: Order, wr: &TlRows, n_rows: usize, r0: usize, a: &TlActs, n_tok: usize, y: *mut f32, n_out: usize) {
    for tb in 0..n_tok.div_ceil(V::L) {
        let mut i = 0;
        while i < n_rows {
            if n_rows - i >= R {
                kernel::<V, R>(ord, wr, i, r0 + i, a, tb, n_tok, y, n_out);
                i += R;
            } else {
                kernel::<V, 1>(ord, wr, i, r0 + i, a, tb, n_tok, y, n_out);
                i += 1;
            }
        }
    }
}

/// # Safety
/// AVX-512 F/BW/VL + VNNI + FMA available; as `kernel`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_block512(ord: Order, wr: &TlRows, n_rows: usize, r0: usize, a: &TlActs, n_tok: usize, y: *mut f32, n_out: usize) {
    row_block::<L16>(ord, wr, n_rows, r0, a, n_tok, y, n_out)
}

/// # Safety
/// AVX2 + FMA available; as `kernel`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_block256(ord: Order, wr: &TlRows, n_rows: usize, r0: usize, a: &TlActs, n_tok: usize, y: *mut f32, n_out: usize) {
    row_block::<L8>(ord, wr, n_rows, r0, a, n_tok, y, n_out)
}

/// `y` rows of tokens `0..n_tok` (see `tl_tokens`) for an order `handles` accepts; `wide`:
/// AVX-512 VNNI (16 tokens per register), else AVX2 (8).
///
/// # Safety
/// The chosen instruction set (with FMA) must be available; `y` holds `n_tok * n_out` floats.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run(
    pool: &ThreadPool,
    wide: bool,
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
    let lanes = if wide { L16::L } else { L8::L };
    ACTS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut a) => {
            prep_acts(pool, acts, k, n_tok, mins, lanes, &mut a);
            run_rows(pool, wide, ord, ty, w, n_out, k, &a, n_tok, y);
        }
        Err(_) => {
            // Re-entered on this thread (not done by the executor): a buffer of its own.
            let mut a = TlActs::default();
            prep_acts(pool, acts, k, n_tok, mins, lanes, &mut a);
            run_rows(pool, wide, ord, ty, w, n_out, k, &a, n_tok, y);
        }
    });
}

/// The row blocks of `run` over the pool.
///
/// # Safety
/// As `run`.
#[allow(clippy::too_many_arguments)]
unsafe fn run_rows(
    pool: &ThreadPool,
    wide: bool,
    ord: Order,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    a: &TlActs,
    n_tok: usize,
    y: *mut f32,
) {
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
            // SAFETY: the caller guarantees the ISA; rows r0..r1 belong to this thread.
            unsafe {
                if wide {
                    row_block512(ord, &rows, r1 - r0, r0, a, n_tok, yp.get(), n_out);
                } else {
                    row_block256(ord, &rows, r1 - r0, r0, a, n_tok, yp.get(), n_out);
                }
            }
        }
    });
}
