//! Quantized matmul: activations quantized once to 8-bit blocks (`act`), weights unpacked a tile
//! of rows at a time (`unpack`), then integer dot products with per-lane float scales.
//!
//! For one weight row r and token t (lane l = 4 consecutive elements, see `act` and `unpack`):
//!
//! ```text
//!   y[t, r] = sum_l S[r, l] * dx[t, l] * I[r, t, l]  +  sum_j B[r, j] * xs[t, j]
//!   I[r, t, l] = sum_{i in lane l} (u[r, i] - off) * xq[t, i]      (exact, in i32)
//! ```
//!
//! Summation order (every path, scalar and SIMD, prefill and decode, computes exactly this, so
//! they agree bit for bit): eight f32 lane accumulators, step c = 0, 32, 64, ... adds lane
//! `l = c/4 + j` to accumulator j as `acc[j] = fma(I, S * dx, acc[j])`; then `hsum8` =
//! `((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7))`. This is llama.cpp's x86 `ggml_vec_dot_q8_0_q8_0`
//! (and q4_0, q4_1, q5_0, iq4_nl) order, so for those types one output equals llama.cpp's up to
//! the Q4_1 minimum term. The bias sum (types with a minimum), added last: Q4_1 / Q5_1 as
//! llama.cpp, one sequential `fma(m_b, s_b, sum)` per block (entries j = 2b); K-quants sixteen
//! accumulators over j (`bias_acc[j % 16] = fma(B, xs, ..)`), folded as `hsum8(lo + hi)`.
//!
//! Kernels: AVX-512 VNNI (`vpdpbusd`, 64 bytes, 4 rows x 4 tokens), AVX2 (`vpmaddubsw` +
//! `vpmaddwd`, 32 bytes, 2 rows x 4 tokens; wide types via the sign trick), AArch64 NEON
//! (`neon_qmatmul`: `sdot` or `smull`, 2 x 16 bytes, 2 rows x 4 tokens) and a scalar twin.
//! Prefill reuse: a tile of 4 unpacked rows (L1-resident) is swept over a chunk of 64 tokens, so
//! the unpacking cost is paid once per 64 tokens and each weight vector load serves 4 tokens.
//! Threads split output rows (chunks handed out by an atomic counter, so a descheduled thread
//! does not stall the step). Modelled on the structure of llama.cpp's `ggml_vec_dot_*` +
//! llamafile tinyBLAS tiling; written from scratch.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use rocmforge_quant::GgmlType;

use crate::act::{act_format, quantize_token, ActFormat, QActs, TokenSlots};
use crate::pool::ThreadPool;
use crate::simd::Isa;
use crate::unpack::{has_bias, is_wide, unpack_row, zero_padding};

/// Rows unpacked together.
const ROW_TILE: usize = 4;
/// Tokens swept per unpacked tile.
const TOKEN_CHUNK: usize = 64;

#[derive(Clone, Copy)]
pub struct SyncPtr<T>(pub *mut T);
// SAFETY: used only to share output buffers whose disjoint parts are written by different threads.
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the raw field).
    pub fn get(&self) -> *mut T {
        self.0
    }
}

#[derive(Default)]
struct Scratch {
    u: Vec<u8>,
    s4: Vec<f32>,
    b16: Vec<f32>,
    /// AVX-512 only: `u` and `s4` with row pairs interleaved per step of 32 (see `interleave`).
    up: Vec<u8>,
    s4p: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static ACTS: RefCell<QActs> = RefCell::new(QActs::default());
}

/// Per-call constants of the kernels.
#[derive(Clone, Copy)]
pub(crate) struct Kc {
    pub(crate) kp: usize,
    pub(crate) g16: usize,
    pub(crate) bias: bool,
    /// Bias summed block by block in sequence (Q4_1 / Q5_1, see the module header).
    pub(crate) seq_bias: bool,
}

/// Row 0 of an unpacked tile (row strides kp, kp/4, g16).
#[derive(Clone, Copy)]
pub(crate) struct WPtr {
    pub(crate) u: *const u8,
    pub(crate) s4: *const f32,
    pub(crate) b16: *const f32,
}

/// Token 0 of a token tile (token strides kp, kp/4, g16, kp/4).
#[derive(Clone, Copy)]
pub(crate) struct XPtr {
    pub(crate) xq: *const i8,
    pub(crate) dx4: *const f32,
    pub(crate) xs16: *const f32,
    pub(crate) xc4: *const i32,
}

/// Output element (token 0, row 0) of the tile; `ld` = n_out.
#[derive(Clone, Copy)]
pub(crate) struct YPtr {
    pub(crate) y: *mut f32,
    pub(crate) ld: usize,
}

impl WPtr {
    /// # Safety
    /// Row `r` must exist in the tile.
    pub(crate) unsafe fn row(self, kc: &Kc, r: usize) -> WPtr {
        WPtr { u: self.u.add(r * kc.kp), s4: self.s4.add(r * kc.kp / 4), b16: self.b16.add(r * kc.g16) }
    }
}

/// Quantized `y = W x` for every token; see the module header. Arguments are validated by the
/// caller (`matmul::matmul_ext`): `w` holds `n_out` rows of `k` elements of `ty`, `x` is
/// `n_tokens * k`, `y` is `n_tokens * n_out`, `k` is a multiple of the block size.
#[allow(clippy::too_many_arguments)]
pub(crate) fn qmatmul(
    pool: &ThreadPool,
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) {
    let isa = isa.clamp();
    ACTS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut acts) => qmatmul_with(pool, isa, ty, w, n_out, k, x, n_tokens, y, &mut acts),
        Err(_) => qmatmul_with(pool, isa, ty, w, n_out, k, x, n_tokens, y, &mut QActs::default()),
    })
}

#[allow(clippy::too_many_arguments)]
fn qmatmul_with(
    pool: &ThreadPool,
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    n_out: usize,
    k: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
    acts: &mut QActs,
) {
    let fmt = act_format(ty);
    // The Q/K/V (and gate/up) projections quantize the same input back to back: reuse the
    // previous call's result when the input is bit-identical (compared in full, so a buffer
    // rewritten in place is never mistaken for the old one).
    if !acts.holds(fmt, k, x) {
        acts.reset(k, n_tokens);
        quantize_all(pool, fmt, x, k, n_tokens, acts);
        acts.remember(fmt, k, x);
    }
    let (kp, g16) = (acts.kp, acts.g16);
    let acts = &*acts;

    if crate::kquant::handles(ty, n_out, n_tokens) {
        // llama.cpp's own K-quant summation orders (see `kquant`).
        crate::kquant::run(pool, isa, ty, w, n_out, k, acts, n_tokens, y);
        return;
    }
    let row_bytes = k / ty.block_size() * ty.type_size();
    if fused_decode(isa, n_tokens) && crate::qdecode::has_fused(ty) {
        let job = FusedJob { ty, w: w.as_ptr(), n_out, y: y.as_mut_ptr() };
        // SAFETY: shapes validated by `matmul_ext`; `fused_decode` checked the (clamped) isa.
        unsafe { decode_fused(pool, isa, &[job], k, n_tokens, acts) };
        return;
    }
    let kc = Kc { kp, g16, bias: has_bias(ty), seq_bias: act_format(ty) == ActFormat::Q8_1 };
    let wide = is_wide(ty);
    let n_tiles = n_out.div_ceil(ROW_TILE);
    let nth = pool.n_threads();
    let chunk = n_tiles.div_ceil(nth * 4).max(1);
    let n_chunks = n_tiles.div_ceil(chunk);
    let next = AtomicUsize::new(0);
    let yp = SyncPtr(y.as_mut_ptr());

    pool.run_dynamic(|_, _| {
        SCRATCH.with(|cell| {
            let mut fresh = Scratch::default();
            let mut guard = cell.try_borrow_mut();
            let s: &mut Scratch = match guard.as_mut() {
                Ok(g) => g,
                Err(_) => &mut fresh,
            };
            s.u.resize(ROW_TILE * kp, 0);
            s.s4.resize(ROW_TILE * kp / 4, 0.0);
            s.b16.resize(ROW_TILE * g16, 0.0);
            // Prefill re-lays each tile once for 64 tokens; decode reads the rows in place.
            let paired = isa == Isa::Avx512 && n_tokens > 3;
            if paired {
                s.up.resize(ROW_TILE * kp, 0);
                s.s4p.resize(ROW_TILE * kp / 4, 0.0);
            }
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= n_chunks {
                    break;
                }
                let tiles = c * chunk..((c + 1) * chunk).min(n_tiles);
                for t0 in (0..n_tokens).step_by(TOKEN_CHUNK) {
                    let tc = TOKEN_CHUNK.min(n_tokens - t0);
                    for tile in tiles.clone() {
                        let r0 = tile * ROW_TILE;
                        let nr = ROW_TILE.min(n_out - r0);
                        for r in 0..nr {
                            let src = &w[(r0 + r) * row_bytes..(r0 + r + 1) * row_bytes];
                            let u = &mut s.u[r * kp..(r + 1) * kp];
                            let s4 = &mut s.s4[r * kp / 4..(r + 1) * kp / 4];
                            let b16 = &mut s.b16[r * g16..(r + 1) * g16];
                            unpack_dispatch(isa, ty, src, k, u, s4, b16);
                            zero_padding(k, u, s4, b16);
                        }
                        if isa == Isa::Avx512 {
                            // Missing rows of the last tile: zeros (computed, never stored).
                            s.u[nr * kp..].fill(0);
                            s.s4[nr * kp / 4..].fill(0.0);
                            s.b16[nr * g16..].fill(0.0);
                        }
                        let wp = if paired {
                            interleave(kp, &s.u, &s.s4, &mut s.up, &mut s.s4p);
                            WPtr { u: s.up.as_ptr(), s4: s.s4p.as_ptr(), b16: s.b16.as_ptr() }
                        } else {
                            WPtr { u: s.u.as_ptr(), s4: s.s4.as_ptr(), b16: s.b16.as_ptr() }
                        };
                        let mut tt = 0;
                        while tt < tc {
                            let nt = 4.min(tc - tt);
                            let t = t0 + tt;
                            let xp = XPtr {
                                // SAFETY: token t < n_tokens, buffers sized by `reset`.
                                xq: unsafe { acts.xq.as_ptr().add(t * kp) },
                                dx4: unsafe { acts.dx4.as_ptr().add(t * kp / 4) },
                                xs16: unsafe { acts.xs16.as_ptr().add(t * g16) },
                                xc4: unsafe { acts.xc4.as_ptr().add(t * kp / 4) },
                            };
                            // SAFETY: (t, r0) is inside y (n_tokens x n_out); this thread owns rows
                            // r0..r0+nr of every token (row chunks are disjoint).
                            let ypt = YPtr { y: unsafe { yp.get().add(t * n_out + r0) }, ld: n_out };
                            // SAFETY: tile rows nr <= 4 and tokens nt <= 4 exist in the buffers.
                            unsafe { run_tile(isa, wide, paired, &kc, wp, nr, xp, nt, ypt) };
                            tt += nt;
                        }
                    }
                }
            }
        });
    });
}

/// Re-lay a tile of 4 unpacked rows for `tile512`: per row pair p and step st of 32 elements,
/// 64 bytes `[row 2p, row 2p+1]` of u and 16 lane scales, so one 512-bit op serves two rows of
/// the same block and each half keeps the canonical per-row summation order.
fn interleave(kp: usize, u: &[u8], s4: &[f32], up: &mut [u8], s4p: &mut [f32]) {
    let steps = kp / 32;
    for p in 0..ROW_TILE / 2 {
        for st in 0..steps {
            for h in 0..2 {
                let r = 2 * p + h;
                let o = (p * steps + st) * 64 + 32 * h;
                up[o..o + 32].copy_from_slice(&u[r * kp + 32 * st..r * kp + 32 * st + 32]);
                let o = (p * steps + st) * 16 + 8 * h;
                s4p[o..o + 8].copy_from_slice(&s4[r * kp / 4 + 8 * st..r * kp / 4 + 8 * st + 8]);
            }
        }
    }
}

/// True if a call of `n_tokens` tokens at (clamped) level `isa` takes the fused decode path:
/// AVX-512 VNNI (`qdecode`) or NEON (`neon_decode`), up to 3 tokens.
fn fused_decode(isa: Isa, n_tokens: usize) -> bool {
    let simd = match isa {
        Isa::Avx512 => cfg!(target_arch = "x86_64"),
        Isa::Neon | Isa::NeonDot => cfg!(target_arch = "aarch64"),
        _ => false,
    };
    simd && n_tokens <= 3
}

/// Four rows' dots with one token straight from GGML blocks, on the level `fused_decode` chose.
///
/// # Safety
/// As `qdecode::rows_dot` / `neon_decode::rows_dot`; `isa` accepted by `fused_decode`.
#[inline(always)]
unsafe fn fused_rows_dot(isa: Isa, ty: GgmlType, rows: [*const u8; 4], nb: usize, x: crate::qdecode::XTok) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = isa;
        crate::qdecode::rows_dot(ty, rows, nb, x)
    }
    #[cfg(target_arch = "aarch64")]
    {
        crate::neon_decode::rows_dot(isa == Isa::NeonDot, ty, rows, nb, x)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (isa, ty, rows, nb, x);
        unreachable!("fused_decode is false on this architecture")
    }
}

/// One weight matrix of a fused decode call (see `decode_fused`).
#[derive(Clone, Copy)]
pub(crate) struct FusedJob {
    pub ty: GgmlType,
    /// `n_out` rows of `k` elements of `ty`.
    pub w: *const u8,
    pub n_out: usize,
    /// `n_tokens x n_out` outputs.
    pub y: *mut f32,
}

/// Few-token path: the rows of one or more matrices sharing the same quantized input split over
/// threads in one job, each row dotted straight from its GGML blocks (four rows at a time).
///
/// # Safety
/// Every job's `w` must hold `n_out` rows of `k` elements of its type (which must satisfy
/// `qdecode::has_fused`), `y` must be valid for `n_tokens * n_out` writes and not overlap any
/// other job's `y`; `acts` holds `n_tokens` (<= 3) quantized tokens of length `k`; `isa` must
/// be a (clamped) level accepted by `fused_decode`.
pub(crate) unsafe fn decode_fused(pool: &ThreadPool, isa: Isa, jobs: &[FusedJob], k: usize, n_tokens: usize, acts: &QActs) {
    use crate::qdecode::XTok;
    let nb = k / 32;
    let (kp, n32, g16) = (acts.kp, acts.n32, acts.g16);
    let nth = pool.n_threads();
    // Groups of 4 rows ("quads"), numbered across the jobs.
    let mut starts = Vec::with_capacity(jobs.len() + 1);
    starts.push(0usize);
    for j in jobs {
        starts.push(starts[starts.len() - 1] + j.n_out.div_ceil(4));
    }
    let n_quads = starts[jobs.len()];
    let next = AtomicUsize::new(0);
    let mut toks = [XTok { xq: std::ptr::null(), xc4: std::ptr::null(), d32: std::ptr::null(), xs16: std::ptr::null() }; 3];
    for (t, xt) in toks.iter_mut().enumerate().take(n_tokens) {
        *xt = XTok {
            xq: acts.xq[t * kp..].as_ptr(),
            xc4: acts.xc4[t * kp / 4..].as_ptr(),
            d32: acts.d32[t * n32..].as_ptr(),
            xs16: acts.xs16[t * g16..].as_ptr(),
        };
    }
    struct Shared<'a>([XTok; 3], &'a [FusedJob], Vec<usize>);
    // SAFETY: read-only pointers into `acts` and the weights, and output pointers whose rows are
    // written by exactly one thread (chunks are disjoint); all outlive the `run` below.
    unsafe impl Sync for Shared<'_> {}
    let sh = Shared(toks, jobs, starts);
    pool.run_dynamic(|_, _| {
        let sh = &sh;
        let mut j = 0;
        loop {
            // Guided chunks: a share of what is left (at most 64 groups), so the last claims
            // are small and no thread idles long at the end.
            let cur = next.load(Ordering::Relaxed);
            if cur >= n_quads {
                break;
            }
            let take = ((n_quads - cur) / (2 * nth)).clamp(1, 64);
            if next.compare_exchange_weak(cur, cur + take, Ordering::Relaxed, Ordering::Relaxed).is_err() {
                continue;
            }
            for q in cur..cur + take {
                while q >= sh.2[j + 1] {
                    j += 1;
                }
                while q < sh.2[j] {
                    j -= 1;
                }
                let job = sh.1[j];
                let row_bytes = nb * job.ty.type_size();
                let r0 = 4 * (q - sh.2[j]);
                let nr = 4.min(job.n_out - r0);
                // Missing rows of the last group repeat the group's last row (results dropped).
                // SAFETY: every row index < n_out, so each pointer starts a whole row.
                let rows: [*const u8; 4] = std::array::from_fn(|i| unsafe { job.w.add((r0 + i.min(nr - 1)) * row_bytes) });
                // Stream the next group (of this matrix, or the next matrix's first) into L1
                // while this one computes: the block scales are gathered, and gathers that miss
                // stall the whole group.
                let (pw, p0, p1) = if r0 + 4 < job.n_out {
                    (job.w, (r0 + 4) * row_bytes, (r0 + 8).min(job.n_out) * row_bytes)
                } else if j + 1 < sh.1.len() {
                    let nj = sh.1[j + 1];
                    (nj.w, 0, 4.min(nj.n_out) * nb * nj.ty.type_size())
                } else {
                    (job.w, 0, 0)
                };
                // (AArch64: the NEON kernel reads the scales in order, no gathers; left to the
                // hardware prefetcher.)
                #[cfg(target_arch = "x86_64")]
                {
                    let mut off = p0;
                    while off < p1 {
                        // SAFETY: prefetch of an address inside a weight matrix (never faults).
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(pw.add(off) as *const i8) };
                        off += 64;
                    }
                }
                let _ = (pw, p0, p1);
                for (t, xt) in sh.0.iter().enumerate().take(n_tokens) {
                    // SAFETY: the level was detected (caller); rows hold nb blocks; the token
                    // arrays are padded by `QActs::reset`.
                    let v = unsafe { fused_rows_dot(isa, job.ty, rows, nb, *xt) };
                    for (i, &vi) in v.iter().enumerate().take(nr) {
                        // SAFETY: (t, r0 + i) is inside this job's y; these rows belong to this
                        // chunk only.
                        unsafe { *job.y.add(t * job.n_out + r0 + i) = vi };
                    }
                }
            }
        }
    });
}

/// Several matrices times the same input (the Q/K/V or gate/up projections of a layer): one
/// activation quantization and, on the fused decode path, one thread-pool job for all rows.
/// Arguments validated by `matmul::matmul_many`. Returns false (nothing done) when the fused
/// path does not apply; the caller then runs the matrices one by one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn qmatmul_many(
    pool: &ThreadPool,
    isa: Isa,
    jobs: &[(GgmlType, &[u8], usize)],
    ys: &mut [&mut [f32]],
    k: usize,
    x: &[f32],
    n_tokens: usize,
) -> bool {
    let Some(&(ty0, _, _)) = jobs.first() else {
        return true;
    };
    let fmt = act_format(ty0);
    let isa = isa.clamp();
    let fusable = fused_decode(isa, n_tokens) && jobs.iter().all(|&(ty, _, _)| crate::qdecode::has_fused(ty) && act_format(ty) == fmt);
    if !fusable {
        return false;
    }
    ACTS.with(|cell| {
        let mut fresh = QActs::default();
        let mut guard = cell.try_borrow_mut();
        let acts: &mut QActs = match guard.as_mut() {
            Ok(g) => g,
            Err(_) => &mut fresh,
        };
        if !acts.holds(fmt, k, x) {
            acts.reset(k, n_tokens);
            quantize_all(pool, fmt, x, k, n_tokens, acts);
            acts.remember(fmt, k, x);
        }
        let fj: Vec<FusedJob> =
            jobs.iter().zip(ys.iter_mut()).map(|(&(ty, w, n_out), y)| FusedJob { ty, w: w.as_ptr(), n_out, y: y.as_mut_ptr() }).collect();
        // SAFETY: shapes validated by `matmul_many`; the outputs are distinct `&mut`
        // slices; `fused_decode` checked the clamped isa.
        unsafe { decode_fused(pool, isa, &fj, k, n_tokens, acts) };
    });
    true
}

/// Quantize every token of `x` into `acts` (in parallel for prefill).
fn quantize_all(pool: &ThreadPool, fmt: ActFormat, x: &[f32], k: usize, n_tokens: usize, acts: &mut QActs) {
    let (kp, g16, n32) = (acts.kp, acts.g16, acts.n32);
    let slots = |acts: &mut QActs, t: usize| {
        // Pointers instead of split borrows so the closure below can be shared by threads.
        (
            SyncPtr(acts.xq.as_mut_ptr().wrapping_add(t * kp)),
            SyncPtr(acts.dx4.as_mut_ptr().wrapping_add(t * kp / 4)),
            SyncPtr(acts.xs16.as_mut_ptr().wrapping_add(t * g16)),
            SyncPtr(acts.xc4.as_mut_ptr().wrapping_add(t * kp / 4)),
            SyncPtr(acts.d32.as_mut_ptr().wrapping_add(t * n32)),
        )
    };
    let base = slots(acts, 0);
    let one = |t: usize| {
        let b = base;
        // SAFETY: token t < n_tokens; each token's slots are disjoint and sized by `reset`;
        // each t is handled by exactly one thread.
        let s = unsafe {
            TokenSlots {
                xq: std::slice::from_raw_parts_mut(b.0 .0.add(t * kp), kp),
                dx4: std::slice::from_raw_parts_mut(b.1 .0.add(t * kp / 4), kp / 4),
                xs16: std::slice::from_raw_parts_mut(b.2 .0.add(t * g16), g16),
                xc4: std::slice::from_raw_parts_mut(b.3 .0.add(t * kp / 4), kp / 4),
                d32: std::slice::from_raw_parts_mut(b.4 .0.add(t * n32), n32),
            }
        };
        quantize_token(fmt, &x[t * k..(t + 1) * k], s);
    };
    if n_tokens >= 4 && pool.n_threads() > 1 {
        let next = AtomicUsize::new(0);
        pool.run_dynamic(|_, _| loop {
            let t = next.fetch_add(1, Ordering::Relaxed);
            if t >= n_tokens {
                break;
            }
            one(t);
        });
    } else {
        for t in 0..n_tokens {
            one(t);
        }
    }
}

fn unpack_dispatch(isa: Isa, ty: GgmlType, src: &[u8], k: usize, u: &mut [u8], s4: &mut [f32], b16: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: AVX2/FMA detected (isa was clamped to the CPU's level).
        unsafe { unpack_avx2(ty, src, k, u, s4, b16) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa >= Isa::Neon {
        // SAFETY: NEON detected (isa was clamped to the CPU's level).
        unsafe { crate::neon_qmatmul::unpack(ty, src, k, u, s4, b16) };
        return;
    }
    let _ = isa;
    unpack_row(ty, src, k, u, s4, b16, rocmforge_quant::f16_to_f32);
}

/// The portable unpacker compiled with AVX2 enabled, so its byte loops auto-vectorise wide, and
/// with F16C doing the scale conversions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_avx2(ty: GgmlType, src: &[u8], k: usize, u: &mut [u8], s4: &mut [f32], b16: &mut [f32]) {
    #[inline(always)]
    fn cvt(h: u16) -> f32 {
        // SAFETY: only reached from `unpack_avx2`, which runs after F16C was detected.
        unsafe { f16c_cvt(h) }
    }
    unpack_row(ty, src, k, u, s4, b16, cvt);
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "f16c")]
unsafe fn f16c_cvt(h: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// Dispatch one tile of `nr` (<= 4) rows by `nt` (<= 4) tokens to the best kernel.
///
/// # Safety
/// `w` must hold `nr` unpacked rows, `x` `nt` quantized tokens, `y` must be writable at
/// `t * ld + r` for t < nt, r < nr; `isa` must be supported by the CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn run_tile(isa: Isa, wide: bool, paired: bool, kc: &Kc, w: WPtr, nr: usize, x: XPtr, nt: usize, y: YPtr) {
    let _ = paired;
    #[cfg(target_arch = "x86_64")]
    macro_rules! by_t {
        ($f:ident, $r:literal, $wide:literal, $w:expr, $y:expr) => {
            match nt {
                1 => $f::<$r, 1, $wide>(kc, $w, x, $y),
                2 => $f::<$r, 2, $wide>(kc, $w, x, $y),
                3 => $f::<$r, 3, $wide>(kc, $w, x, $y),
                _ => $f::<$r, 4, $wide>(kc, $w, x, $y),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    macro_rules! rows {
        ($f:ident, $rt:literal) => {{
            let mut r = 0;
            while r < nr {
                let wr = w.row(kc, r);
                let yr = YPtr { y: y.y.add(r), ld: y.ld };
                if nr - r >= $rt {
                    if wide {
                        by_t!($f, $rt, true, wr, yr)
                    } else {
                        by_t!($f, $rt, false, wr, yr)
                    }
                    r += $rt;
                } else {
                    if wide {
                        by_t!($f, 1, true, wr, yr)
                    } else {
                        by_t!($f, 1, false, wr, yr)
                    }
                    r += 1;
                }
            }
        }};
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match (nt, wide, paired) {
            (1, false, false) => tile512::<1, false, false>(kc, w, nr, x, y),
            (2, false, false) => tile512::<2, false, false>(kc, w, nr, x, y),
            (_, false, false) => tile512::<3, false, false>(kc, w, nr, x, y),
            (1, true, false) => tile512::<1, true, false>(kc, w, nr, x, y),
            (2, true, false) => tile512::<2, true, false>(kc, w, nr, x, y),
            (_, true, false) => tile512::<3, true, false>(kc, w, nr, x, y),
            (1, false, true) => tile512::<1, false, true>(kc, w, nr, x, y),
            (2, false, true) => tile512::<2, false, true>(kc, w, nr, x, y),
            (3, false, true) => tile512::<3, false, true>(kc, w, nr, x, y),
            (_, false, true) => tile512::<4, false, true>(kc, w, nr, x, y),
            (1, true, true) => tile512::<1, true, true>(kc, w, nr, x, y),
            (2, true, true) => tile512::<2, true, true>(kc, w, nr, x, y),
            (3, true, true) => tile512::<3, true, true>(kc, w, nr, x, y),
            (_, true, true) => tile512::<4, true, true>(kc, w, nr, x, y),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => rows!(tile256, 2),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDot => crate::neon_qmatmul::run_tile(isa == Isa::NeonDot, wide, kc, w, nr, x, nt, y),
        _ => tile_scalar(kc, w, nr, x, nt, y, wide),
    }
}

/// The canonical horizontal sum of eight lane accumulators (see the module header); equal to
/// llama.cpp's `hsum_float_8`.
#[inline(always)]
pub(crate) fn hsum8(a: [f32; 8]) -> f32 {
    let s = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// The canonical bias sum `sum_j b[j] * xs[j]` (`n` a multiple of 16), portable.
#[inline(always)]
pub(crate) fn bias_scalar(b: &[f32], xs: &[f32], n: usize) -> f32 {
    let mut acc = [0f32; 16];
    for j in 0..n {
        acc[j % 16] = b[j].mul_add(xs[j], acc[j % 16]);
    }
    hsum8(std::array::from_fn(|i| acc[i] + acc[i + 8]))
}

/// llama.cpp's Q4_1 / Q5_1 minimum term: `sum = fma(m_b, s_b, sum)` for blocks b in order
/// (entries 2b of the per-16 arrays; odd entries are 0).
///
/// # Safety
/// `b` and `xs` valid for `2 * nb` floats.
#[inline(always)]
pub(crate) unsafe fn bias_seq(b: *const f32, xs: *const f32, nb: usize) -> f32 {
    let mut sum = 0f32;
    for blk in 0..nb {
        sum = (*b.add(2 * blk)).mul_add(*xs.add(2 * blk), sum);
    }
    sum
}

/// The portable kernel (also the oracle the SIMD kernels are tested against, bit for bit).
/// `mul_add` is a correctly rounded fma on every target, as the SIMD kernels' `vfmadd`.
///
/// # Safety
/// As `run_tile`.
unsafe fn tile_scalar(kc: &Kc, w: WPtr, nr: usize, x: XPtr, nt: usize, y: YPtr, wide: bool) {
    let (kp, g16) = (kc.kp, kc.g16);
    for r in 0..nr {
        let wr = w.row(kc, r);
        let u = std::slice::from_raw_parts(wr.u, kp);
        let s4 = std::slice::from_raw_parts(wr.s4, kp / 4);
        let b16 = std::slice::from_raw_parts(wr.b16, g16);
        for t in 0..nt {
            let xq = std::slice::from_raw_parts(x.xq.add(t * kp), kp);
            let dx4 = std::slice::from_raw_parts(x.dx4.add(t * kp / 4), kp / 4);
            let xs16 = std::slice::from_raw_parts(x.xs16.add(t * g16), g16);
            let xc4 = std::slice::from_raw_parts(x.xc4.add(t * kp / 4), kp / 4);
            let mut acc = [0f32; 8];
            for c in (0..kp).step_by(32) {
                for (j, a) in acc.iter_mut().enumerate() {
                    let l = c / 4 + j;
                    let mut i = if wide { xc4[l] } else { 0 };
                    for e in 4 * l..4 * l + 4 {
                        i += u[e] as i32 * xq[e] as i32;
                    }
                    *a = (i as f32).mul_add(s4[l] * dx4[l], *a);
                }
            }
            let mut v = hsum8(acc);
            if kc.seq_bias {
                v += bias_seq(b16.as_ptr(), xs16.as_ptr(), kp / 32);
            } else if kc.bias {
                v += bias_scalar(b16, xs16, g16);
            }
            *y.y.add(t * y.ld + r) = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// AVX-512 VNNI tile: 4 rows (two pairs) x T tokens, 32 elements per step: the low 256 bits of
/// each vector belong to row 2p, the high ones to row 2p + 1, so each half is one canonical
/// 8-lane accumulator. PAIRED: `w` in the interleaved layout (`interleave`, one 512-bit load per
/// pair); else row-major (two 256-bit loads per pair, for decode where a tile is used once).
///
/// # Safety
/// As `run_tile` with `w` holding 4 rows (missing ones zero), and the CPU must support AVX-512
/// F/BW/VL/VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn tile512<const T: usize, const WIDE: bool, const PAIRED: bool>(kc: &Kc, w: WPtr, nr: usize, x: XPtr, y: YPtr) {
    let kp = kc.kp;
    let kp4 = kp / 4;
    let steps = kp / 32;
    let mut acc = [[_mm512_setzero_ps(); T]; 2];
    for st in 0..steps {
        let mut wv = [_mm512_setzero_si512(); 2];
        let mut sv = [_mm512_setzero_ps(); 2];
        for p in 0..2 {
            if PAIRED {
                wv[p] = _mm512_loadu_si512(w.u.add((p * steps + st) * 64) as *const _);
                sv[p] = _mm512_loadu_ps(w.s4.add((p * steps + st) * 16));
            } else {
                let (r0, r1) = (2 * p * kp + 32 * st, (2 * p + 1) * kp + 32 * st);
                wv[p] = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_loadu_si256(w.u.add(r0) as *const __m256i)),
                    _mm256_loadu_si256(w.u.add(r1) as *const __m256i),
                );
                sv[p] = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castpd256_pd512(_mm256_loadu_pd(w.s4.add(r0 / 4) as *const f64)),
                    _mm256_loadu_pd(w.s4.add(r1 / 4) as *const f64),
                ));
            }
        }
        for t in 0..T {
            let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(x.xq.add(t * kp + 32 * st) as *const __m256i));
            let dv = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(x.dx4.add(t * kp4 + 8 * st) as *const f64)));
            let init = if WIDE {
                _mm512_broadcast_i64x4(_mm256_loadu_si256(x.xc4.add(t * kp4 + 8 * st) as *const __m256i))
            } else {
                _mm512_setzero_si512()
            };
            for p in 0..2 {
                let f = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, wv[p], xv));
                acc[p][t] = _mm512_fmadd_ps(f, _mm512_mul_ps(sv[p], dv), acc[p][t]);
            }
        }
    }
    for p in 0..2 {
        for t in 0..T {
            for h in 0..2 {
                let r = 2 * p + h;
                if r >= nr {
                    continue;
                }
                let a = if h == 0 { _mm512_castps512_ps256(acc[p][t]) } else { hi256(acc[p][t]) };
                let mut v = crate::simd::x86::hsum256(a);
                if kc.seq_bias {
                    v += bias_seq(w.b16.add(r * kc.g16), x.xs16.add(t * kc.g16), kp / 32);
                } else if kc.bias {
                    v += bias512(w.b16.add(r * kc.g16), x.xs16.add(t * kc.g16), kc.g16);
                }
                *y.y.add(t * y.ld + r) = v;
            }
        }
    }
}

/// The high 256 bits of a 512-bit float vector (AVX-512 F only, no DQ).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn hi256(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// The canonical bias sum (`bias_scalar`) with one 16-lane accumulator.
///
/// # Safety
/// AVX-512 F; `b` and `xs` valid for `n` (a multiple of 16) floats.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn bias512(b: *const f32, xs: *const f32, n: usize) -> f32 {
    let mut a = _mm512_setzero_ps();
    let mut j = 0;
    while j < n {
        a = _mm512_fmadd_ps(_mm512_loadu_ps(b.add(j)), _mm512_loadu_ps(xs.add(j)), a);
        j += 16;
    }
    crate::simd::x86::hsum256(_mm256_add_ps(_mm512_castps512_ps256(a), hi256(a)))
}

/// AVX2 tile: R rows x T tokens, 32 bytes (one canonical step) per iteration.
///
/// # Safety
/// As `run_tile`, and the CPU must support AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile256<const R: usize, const T: usize, const WIDE: bool>(kc: &Kc, w: WPtr, x: XPtr, y: YPtr) {
    let kp = kc.kp;
    let kp4 = kp / 4;
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut c = 0;
    while c < kp {
        let l = c / 4;
        let mut wv = [_mm256_setzero_si256(); R];
        let mut sg = [_mm256_setzero_si256(); R];
        let mut sv = [_mm256_setzero_ps(); R];
        for r in 0..R {
            let raw = _mm256_loadu_si256(w.u.add(r * kp + c) as *const __m256i);
            if WIDE {
                // value = u - 128 as i8; |value| as u8 times x with value's sign: exact, no
                // saturation since |value| <= 128 and |x| <= 127.
                sg[r] = _mm256_xor_si256(raw, flip);
                wv[r] = _mm256_abs_epi8(sg[r]);
            } else {
                wv[r] = raw;
            }
            sv[r] = _mm256_loadu_ps(w.s4.add(r * kp4 + l));
        }
        for t in 0..T {
            let xv = _mm256_loadu_si256(x.xq.add(t * kp + c) as *const __m256i);
            let dv = _mm256_loadu_ps(x.dx4.add(t * kp4 + l));
            for r in 0..R {
                let xs = if WIDE { _mm256_sign_epi8(xv, sg[r]) } else { xv };
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv[r], xs), ones);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(sv[r], dv), acc[r][t]);
            }
        }
        c += 32;
    }
    for r in 0..R {
        for t in 0..T {
            let mut v = crate::simd::x86::hsum256(acc[r][t]);
            if kc.seq_bias {
                v += bias_seq(w.b16.add(r * kc.g16), x.xs16.add(t * kc.g16), kp / 32);
            } else if kc.bias {
                let b = w.b16.add(r * kc.g16);
                let s = x.xs16.add(t * kc.g16);
                let mut lo = _mm256_setzero_ps();
                let mut hi = _mm256_setzero_ps();
                let mut j = 0;
                while j < kc.g16 {
                    lo = _mm256_fmadd_ps(_mm256_loadu_ps(b.add(j)), _mm256_loadu_ps(s.add(j)), lo);
                    hi = _mm256_fmadd_ps(_mm256_loadu_ps(b.add(j + 8)), _mm256_loadu_ps(s.add(j + 8)), hi);
                    j += 16;
                }
                v += crate::simd::x86::hsum256(_mm256_add_ps(lo, hi));
            }
            *y.y.add(t * y.ld + r) = v;
        }
    }
}
