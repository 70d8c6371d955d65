// mmv.cu: quantized matrix-vector products for decode and small batches:
//   y[t * n_rows + r] = sum_k W[r, k] * x[t, k],  t < nt <= NT (NT in 1, 2, 4, 8).
//
// Design (specs/gpu-kernels.md §2, "the pattern that recurs"):
// - one warp per weight row, several rows per block (blockDim = rows_per_block * warp size);
// - every lane loads 16 bytes of weights at a time (one 128-bit load, coalesced across the
//   warp) from a layout repacked at load (host/gpu/src/repack.rs) so that quants are 16-byte
//   aligned and the per-block scales sit in their own arrays;
// - activations are quantized once per step to int8 per 32 values (ops.cu quantize_q8_f32, a
//   structure-of-arrays layout: 16-byte aligned int8 rows, then f32 d and s = d * sum(q)), and
//   the dot products are 4-way int8 (dp4a / sdot4), as llama.cpp's MMVQ does; float weights
//   (F16, BF16, F32) take f32 activations;
// - the weights are decoded once per unit and used for all nt tokens.
//
// Weight layouts (nb = k / 32 blocks per row, nsb = k / 256 super-blocks per row), all sections
// back to back in one buffer:
//   Q4_0  qs[n_rows][nb][16]  d[n_rows][nb] (f16)
//   Q4_1  qs[n_rows][nb][16]  (d, m)[n_rows][nb] (f16 pairs)
//   Q5_0  qs[n_rows][nb][16]  qh[n_rows][nb] (u32)  d[n_rows][nb] (f16)
//   Q5_1  qs[n_rows][nb][16]  qh[n_rows][nb] (u32)  (d, m)[n_rows][nb] (f16 pairs)
//   IQ4_NL qs[n_rows][nb][16]  d[n_rows][nb] (f16)
//   Q8_0  qs[n_rows][nb][32]  d[n_rows][nb] (f16)
//   Q4_K  qs[n_rows][nsb][128]  sm[n_rows][nsb][16] (decoded 6-bit scales/mins)  dm[n_rows][nsb]
//   Q5_K  qs[n_rows][nsb][128]  qh[n_rows][nsb][4][2] (u32 bit words)  sm[n_rows][nsb][16]  dm[n_rows][nsb]
//   Q6_K  (ql[128] qh[64] scales[16])[n_rows][nsb]  d[n_rows][nsb] (f16)
//   IQ4_XS qs[n_rows][nsb][128]  sc[n_rows][nsb][8] (i8, the 6-bit scale - 32)  d[n_rows][nsb] (f16)
//   F16 / BF16  GGUF as is (k % 8 == 0); F32 as is (k % 4 == 0)
// Nibble and bit orders inside qs/ql/qh are GGUF's (host/quant): only the sections move, except
// where a line of repack.rs's header says a field is decoded at load (Q4_K / Q5_K scales, Q5_K's
// high bits, IQ4_XS scales).
// IQ4_NL / IQ4_XS codes become int8 values through a 16-byte table held in registers
// (compat.h rf_lut16: two byte permutes per four values), then dp4a as for the other types.
#include "compat.h"

#define W RF_WARP_SIZE

// The unit loops are unrolled so several 16-byte loads are in flight per lane before the first
// use. Tuning knobs the benchmark varies; defaults from its ablation on the H100 (14336 x 4096,
// one token): unrolling 4 took Q4_0 from 69% to 81% of copy bandwidth, but cost the K-quants
// (Q4_K 60% -> 50%, Q6_K 81% -> 72%: register pressure), which therefore stay at 1.
#ifndef RF_MMV_UNROLL
#define RF_MMV_UNROLL 4
#endif
#ifndef RF_MMV_UNROLL_K
#define RF_MMV_UNROLL_K 1
#endif
#define RF_STR2(x) #x
#define RF_STR(x) RF_STR2(x)
#define RF_MMV_UNROLL_PRAGMA _Pragma(RF_STR(unroll RF_MMV_UNROLL))
#define RF_MMV_UNROLL_K_PRAGMA _Pragma(RF_STR(unroll RF_MMV_UNROLL_K))

#define MMV_PARAMS                                                                                                      \
    const u8 *__restrict__ w, const i8 *__restrict__ xq, const float *__restrict__ xd, const float *__restrict__ xs, \
        float *__restrict__ y, int n_rows, int k, int nt
// The device functions take the row their warp computes (the entry points below decide it).
#define MMV_DPARAMS MMV_PARAMS, int row

#define MMV_PROLOGUE                                                 \
    const int lane = threadIdx.x % W;                                \
    if (row >= n_rows) return; /* uniform per warp */                \
    float acc[NT];                                                   \
    _Pragma("unroll") for (int t = 0; t < NT; ++t) acc[t] = 0.0f;

#define MMV_EPILOGUE                                                 \
    _Pragma("unroll") for (int t = 0; t < NT; ++t) {                 \
        if (t < nt) {                                                \
            const float v = warp_sum<W>(acc[t]);                     \
            if (lane == 0) y[(size_t)t * n_rows + row] = v;          \
        }                                                            \
    }

RF_INLINE int lo_nib(u32 v) { return (int)(v & 0x0F0F0F0Fu); }
RF_INLINE int hi_nib(u32 v) { return (int)((v >> 4) & 0x0F0F0F0Fu); }

// sum of 4 ints of weights times 4 ints of activations
RF_INLINE int dot16(int a0, int a1, int a2, int a3, int4 x) {
    return rf_dp4a(a3, x.w, rf_dp4a(a2, x.z, rf_dp4a(a1, x.y, rf_dp4a(a0, x.x, 0))));
}

// ------------------------------------------------------------------------------ Q4_0 / Q4_1 / Q5_0

template <int NT> __device__ void mmv_q4_0(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nb = k / 32;
    const uint4* qs = (const uint4*)w + (size_t)row * nb;
    const u16* dw = (const u16*)(w + (size_t)n_rows * nb * 16) + (size_t)row * nb;
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < nb; u += W) {
        const uint4 q = rf_ldw16(qs + u);
        const float d = rf_h2f(dw[u]);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const int4* xv = (const int4*)(xq + (size_t)t * k + (size_t)u * 32);
                const int s = dot16(lo_nib(q.x), lo_nib(q.y), lo_nib(q.z), lo_nib(q.w), xv[0]) +
                              dot16(hi_nib(q.x), hi_nib(q.y), hi_nib(q.z), hi_nib(q.w), xv[1]);
                const size_t b = (size_t)t * nb + u;
                acc[t] += d * (xd[b] * (float)s - 8.0f * xs[b]);
            }
        }
    }
    MMV_EPILOGUE
}

template <int NT> __device__ void mmv_q4_1(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nb = k / 32;
    const uint4* qs = (const uint4*)w + (size_t)row * nb;
    const u32* dm = (const u32*)(w + (size_t)n_rows * nb * 16) + (size_t)row * nb;
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < nb; u += W) {
        const uint4 q = rf_ldw16(qs + u);
        const u32 dmv = dm[u];
        const float d = rf_h2f((u16)(dmv & 0xFFFF)), m = rf_h2f((u16)(dmv >> 16));
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const int4* xv = (const int4*)(xq + (size_t)t * k + (size_t)u * 32);
                const int s = dot16(lo_nib(q.x), lo_nib(q.y), lo_nib(q.z), lo_nib(q.w), xv[0]) +
                              dot16(hi_nib(q.x), hi_nib(q.y), hi_nib(q.z), hi_nib(q.w), xv[1]);
                const size_t b = (size_t)t * nb + u;
                acc[t] += d * xd[b] * (float)s + m * xs[b];
            }
        }
    }
    MMV_EPILOGUE
}

template <int NT> __device__ void mmv_q5_0(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nb = k / 32;
    const uint4* qs = (const uint4*)w + (size_t)row * nb;
    const u32* qhs = (const u32*)(w + (size_t)n_rows * nb * 16) + (size_t)row * nb;
    const u16* dw = (const u16*)(w + (size_t)n_rows * nb * 20) + (size_t)row * nb;
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < nb; u += W) {
        const uint4 q = rf_ldw16(qs + u);
        const u32 qh = qhs[u];
        const float d = rf_h2f(dw[u]);
        // Element j's fifth bit is qh bit j: low nibbles are elements 0..15, high 16..31.
        const int l0 = lo_nib(q.x) | (rf_spread4(qh) << 4), l1 = lo_nib(q.y) | (rf_spread4(qh >> 4) << 4);
        const int l2 = lo_nib(q.z) | (rf_spread4(qh >> 8) << 4), l3 = lo_nib(q.w) | (rf_spread4(qh >> 12) << 4);
        const int h0 = hi_nib(q.x) | (rf_spread4(qh >> 16) << 4), h1 = hi_nib(q.y) | (rf_spread4(qh >> 20) << 4);
        const int h2 = hi_nib(q.z) | (rf_spread4(qh >> 24) << 4), h3 = hi_nib(q.w) | (rf_spread4(qh >> 28) << 4);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const int4* xv = (const int4*)(xq + (size_t)t * k + (size_t)u * 32);
                const int s = dot16(l0, l1, l2, l3, xv[0]) + dot16(h0, h1, h2, h3, xv[1]);
                const size_t b = (size_t)t * nb + u;
                acc[t] += d * (xd[b] * (float)s - 16.0f * xs[b]);
            }
        }
    }
    MMV_EPILOGUE
}

// Q5_1: Q5_0's quants with Q4_1's (d, m) pair; x = d * q + m, q in 0..31.
template <int NT> __device__ void mmv_q5_1(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nb = k / 32;
    const uint4* qs = (const uint4*)w + (size_t)row * nb;
    const u32* qhs = (const u32*)(w + (size_t)n_rows * nb * 16) + (size_t)row * nb;
    const u32* dm = (const u32*)(w + (size_t)n_rows * nb * 20) + (size_t)row * nb;
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < nb; u += W) {
        const uint4 q = rf_ldw16(qs + u);
        const u32 qh = qhs[u], dmv = dm[u];
        const float d = rf_h2f((u16)(dmv & 0xFFFF)), m = rf_h2f((u16)(dmv >> 16));
        const int l0 = lo_nib(q.x) | (rf_spread4(qh) << 4), l1 = lo_nib(q.y) | (rf_spread4(qh >> 4) << 4);
        const int l2 = lo_nib(q.z) | (rf_spread4(qh >> 8) << 4), l3 = lo_nib(q.w) | (rf_spread4(qh >> 12) << 4);
        const int h0 = hi_nib(q.x) | (rf_spread4(qh >> 16) << 4), h1 = hi_nib(q.y) | (rf_spread4(qh >> 20) << 4);
        const int h2 = hi_nib(q.z) | (rf_spread4(qh >> 24) << 4), h3 = hi_nib(q.w) | (rf_spread4(qh >> 28) << 4);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const int4* xv = (const int4*)(xq + (size_t)t * k + (size_t)u * 32);
                const int s = dot16(l0, l1, l2, l3, xv[0]) + dot16(h0, h1, h2, h3, xv[1]);
                const size_t b = (size_t)t * nb + u;
                acc[t] += d * xd[b] * (float)s + m * xs[b];
            }
        }
    }
    MMV_EPILOGUE
}

// ------------------------------------------------------------------------------ IQ4_NL / IQ4_XS

// One unit is a 32-value block (IQ4_NL) or sub-block (IQ4_XS): 16 bytes whose low nibbles are
// elements 0..16 and high nibbles 16..32, as Q4_0, each code looked up in the IQ4_NL table.
RF_INLINE int iq4_dot(uint4 q, const int4* xv) {
    return dot16(rf_iq4nl4(lo_nib(q.x)), rf_iq4nl4(lo_nib(q.y)), rf_iq4nl4(lo_nib(q.z)), rf_iq4nl4(lo_nib(q.w)), xv[0]) +
           dot16(rf_iq4nl4(hi_nib(q.x)), rf_iq4nl4(hi_nib(q.y)), rf_iq4nl4(hi_nib(q.z)), rf_iq4nl4(hi_nib(q.w)), xv[1]);
}

template <int NT> __device__ void mmv_iq4_nl(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nb = k / 32;
    const uint4* qs = (const uint4*)w + (size_t)row * nb;
    const u16* dw = (const u16*)(w + (size_t)n_rows * nb * 16) + (size_t)row * nb;
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < nb; u += W) {
        const uint4 q = rf_ldw16(qs + u);
        const float d = rf_h2f(dw[u]);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const int s = iq4_dot(q, (const int4*)(xq + (size_t)t * k + (size_t)u * 32));
                acc[t] += d * xd[(size_t)t * nb + u] * (float)s;
            }
        }
    }
    MMV_EPILOGUE
}

// IQ4_XS (repacked: qs[n_rows][nsb][128], sc[n_rows][nsb][8] int8 = ls - 32, d[n_rows][nsb]):
// unit u of a row is sub-block u % 8 of super-block u / 8, scaled by d * sc.
template <int NT> __device__ void mmv_iq4_xs(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nsb = k / 256, nb = k / 32;
    const uint4* qs = (const uint4*)w + (size_t)row * nb;
    const i8* sc = (const i8*)(w + (size_t)n_rows * nsb * 128) + (size_t)row * nb;
    const u16* dw = (const u16*)(w + (size_t)n_rows * nsb * 136) + (size_t)row * nsb;
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < nb; u += W) {
        const uint4 q = rf_ldw16(qs + u);
        const float dl = rf_h2f(dw[u >> 3]) * (float)sc[u];
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const int s = iq4_dot(q, (const int4*)(xq + (size_t)t * k + (size_t)u * 32));
                acc[t] += dl * xd[(size_t)t * nb + u] * (float)s;
            }
        }
    }
    MMV_EPILOGUE
}

// ------------------------------------------------------------------------------ Q8_0

// A unit is half a block (16 weights, one 128-bit load).
template <int NT> __device__ void mmv_q8_0(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nb = k / 32;
    const uint4* qs = (const uint4*)w + (size_t)row * nb * 2;
    const u16* dw = (const u16*)(w + (size_t)n_rows * nb * 32) + (size_t)row * nb;
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < 2 * nb; u += W) {
        const uint4 q = rf_ldw16(qs + u);
        const float d = rf_h2f(dw[u >> 1]);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const int4 xv = *(const int4*)(xq + (size_t)t * k + (size_t)u * 16);
                const int s = dot16((int)q.x, (int)q.y, (int)q.z, (int)q.w, xv);
                acc[t] += d * xd[(size_t)t * nb + (u >> 1)] * (float)s;
            }
        }
    }
    MMV_EPILOGUE
}

// ------------------------------------------------------------------------------ Q4_K

// Repacked (repack.rs): qs[n_rows][nsb][128], sm[n_rows][nsb][16] (per 64-value chunk c: scale
// 2c, scale 2c+1, min 2c, min 2c+1, one byte each), dm[n_rows][nsb] (f16 d, f16 dmin).
// A unit is chunk c of a super-block: 32 qs bytes (two 128-bit loads) whose low nibbles are
// elements 64c + 0..32 (group 2c) and high nibbles 64c + 32..64 (group 2c + 1), with its four
// factors in one 32-bit load. The min term uses the activation block sums s.
// RF_Q4K_UNIT16=1 (a benchmark knob): a unit is half a chunk instead, one 16-byte load (low
// nibbles: elements 64c + 16h + 0..16, high: 64c + 32 + 16h + 0..16), twice the units per row so
// more loads are in flight per warp on short rows; the chunk's min term is added by half 0.
#ifndef RF_Q4K_UNIT16
#define RF_Q4K_UNIT16 0
#endif
template <int NT> __device__ void mmv_q4_k(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nsb = k / 256, nb = k / 32;
#if RF_Q4K_UNIT16
    const uint4* qs = (const uint4*)w + (size_t)row * nsb * 8;
    const u32* sm = (const u32*)(w + (size_t)n_rows * nsb * 128) + (size_t)row * nsb * 4;
    const u32* dm = (const u32*)(w + (size_t)n_rows * nsb * 144) + (size_t)row * nsb;
    RF_MMV_UNROLL_K_PRAGMA
    for (int u = lane; u < nsb * 8; u += W) {
        const int sb = u >> 3, c = (u >> 1) & 3, h = u & 1;
        const uint4 q = rf_ldw16(qs + u);
        const u32 f = sm[u >> 1], dmv = dm[sb];
        const float d = rf_h2f((u16)(dmv & 0xFFFF)), dmin = h ? 0.0f : rf_h2f((u16)(dmv >> 16));
        const float sc0 = (float)(f & 0xFF), sc1 = (float)((f >> 8) & 0xFF);
        const float m0 = (float)((f >> 16) & 0xFF), m1 = (float)(f >> 24);
        const int l0 = lo_nib(q.x), l1 = lo_nib(q.y), l2 = lo_nib(q.z), l3 = lo_nib(q.w);
        const int h0 = hi_nib(q.x), h1 = hi_nib(q.y), h2 = hi_nib(q.z), h3 = hi_nib(q.w);
        const int xb = sb * 8 + 2 * c;
        const int off = sb * 256 + 64 * c + 16 * h;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const i8* xt = xq + (size_t)t * k + off;
                const int s0 = dot16(l0, l1, l2, l3, *(const int4*)xt);
                const int s1 = dot16(h0, h1, h2, h3, *(const int4*)(xt + 32));
                const size_t b = (size_t)t * nb + xb;
                acc[t] += d * (sc0 * xd[b] * (float)s0 + sc1 * xd[b + 1] * (float)s1) - dmin * (m0 * xs[b] + m1 * xs[b + 1]);
            }
        }
    }
#else
    const uint4* qs = (const uint4*)w + (size_t)row * nsb * 8;
    const u32* sm = (const u32*)(w + (size_t)n_rows * nsb * 128) + (size_t)row * nsb * 4;
    const u32* dm = (const u32*)(w + (size_t)n_rows * nsb * 144) + (size_t)row * nsb;
    RF_MMV_UNROLL_K_PRAGMA
    for (int u = lane; u < nsb * 4; u += W) {
        const int sb = u >> 2, c = u & 3;
        const uint4 q0 = rf_ldw16(qs + 2 * u), q1 = rf_ldw16(qs + 2 * u + 1);
        const u32 f = sm[u], dmv = dm[sb];
        const float d = rf_h2f((u16)(dmv & 0xFFFF)), dmin = rf_h2f((u16)(dmv >> 16));
        const float sc0 = (float)(f & 0xFF), sc1 = (float)((f >> 8) & 0xFF);
        const float m0 = (float)((f >> 16) & 0xFF), m1 = (float)(f >> 24);
        const int l0 = lo_nib(q0.x), l1 = lo_nib(q0.y), l2 = lo_nib(q0.z), l3 = lo_nib(q0.w);
        const int l4 = lo_nib(q1.x), l5 = lo_nib(q1.y), l6 = lo_nib(q1.z), l7 = lo_nib(q1.w);
        const int h0 = hi_nib(q0.x), h1 = hi_nib(q0.y), h2 = hi_nib(q0.z), h3 = hi_nib(q0.w);
        const int h4 = hi_nib(q1.x), h5 = hi_nib(q1.y), h6 = hi_nib(q1.z), h7 = hi_nib(q1.w);
        const int xb = sb * 8 + 2 * c;
        const int off = sb * 256 + 64 * c;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const int4* xt = (const int4*)(xq + (size_t)t * k + off);
                const int s0 = dot16(l0, l1, l2, l3, xt[0]) + dot16(l4, l5, l6, l7, xt[1]);
                const int s1 = dot16(h0, h1, h2, h3, xt[2]) + dot16(h4, h5, h6, h7, xt[3]);
                const size_t b = (size_t)t * nb + xb;
                acc[t] += d * (sc0 * xd[b] * (float)s0 + sc1 * xd[b + 1] * (float)s1) - dmin * (m0 * xs[b] + m1 * xs[b + 1]);
            }
        }
    }
#endif
    MMV_EPILOGUE
}

// ------------------------------------------------------------------------------ Q5_K

// Repacked (repack.rs): qs[n_rows][nsb][128] and sm / dm as Q4_K (at n_rows * nsb * 160 and
// * 176), and the fifth bits regrouped per chunk: qh[n_rows][nsb][c] = (lo, hi) u32 words at
// n_rows * nsb * 128, where bit l of lo is the high bit of element 64c + l (low nibble of qs
// byte 32c + l) and bit l of hi that of element 64c + 32 + l (its high nibble). A unit is
// chunk c, as Q4_K's: two 16-byte loads of quants and one 8-byte load of their high bits.
template <int NT> __device__ void mmv_q5_k(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nsb = k / 256, nb = k / 32;
    const uint4* qs = (const uint4*)w + (size_t)row * nsb * 8;
    const uint2* qhw = (const uint2*)(w + (size_t)n_rows * nsb * 128) + (size_t)row * nsb * 4;
    const u32* sm = (const u32*)(w + (size_t)n_rows * nsb * 160) + (size_t)row * nsb * 4;
    const u32* dm = (const u32*)(w + (size_t)n_rows * nsb * 176) + (size_t)row * nsb;
    RF_MMV_UNROLL_K_PRAGMA
    for (int u = lane; u < nsb * 4; u += W) {
        const int sb = u >> 2, c = u & 3;
        const uint4 q0 = rf_ldw16(qs + 2 * u), q1 = rf_ldw16(qs + 2 * u + 1);
        const uint2 hb = qhw[u];
        const u32 f = sm[u], dmv = dm[sb];
        const float d = rf_h2f((u16)(dmv & 0xFFFF)), dmin = rf_h2f((u16)(dmv >> 16));
        const float sc0 = (float)(f & 0xFF), sc1 = (float)((f >> 8) & 0xFF);
        const float m0 = (float)((f >> 16) & 0xFF), m1 = (float)(f >> 24);
#define Q5K_LO(v, sh) (lo_nib(v) | (rf_spread4(hb.x >> (sh)) << 4))
#define Q5K_HI(v, sh) (hi_nib(v) | (rf_spread4(hb.y >> (sh)) << 4))
        const int l0 = Q5K_LO(q0.x, 0), l1 = Q5K_LO(q0.y, 4), l2 = Q5K_LO(q0.z, 8), l3 = Q5K_LO(q0.w, 12);
        const int l4 = Q5K_LO(q1.x, 16), l5 = Q5K_LO(q1.y, 20), l6 = Q5K_LO(q1.z, 24), l7 = Q5K_LO(q1.w, 28);
        const int h0 = Q5K_HI(q0.x, 0), h1 = Q5K_HI(q0.y, 4), h2 = Q5K_HI(q0.z, 8), h3 = Q5K_HI(q0.w, 12);
        const int h4 = Q5K_HI(q1.x, 16), h5 = Q5K_HI(q1.y, 20), h6 = Q5K_HI(q1.z, 24), h7 = Q5K_HI(q1.w, 28);
#undef Q5K_LO
#undef Q5K_HI
        const int xb = sb * 8 + 2 * c;
        const int off = sb * 256 + 64 * c;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const int4* xt = (const int4*)(xq + (size_t)t * k + off);
                const int s0 = dot16(l0, l1, l2, l3, xt[0]) + dot16(l4, l5, l6, l7, xt[1]);
                const int s1 = dot16(h0, h1, h2, h3, xt[2]) + dot16(h4, h5, h6, h7, xt[3]);
                const size_t b = (size_t)t * nb + xb;
                acc[t] += d * (sc0 * xd[b] * (float)s0 + sc1 * xd[b + 1] * (float)s1) - dmin * (m0 * xs[b] + m1 * xs[b + 1]);
            }
        }
    }
    MMV_EPILOGUE
}

// ------------------------------------------------------------------------------ Q6_K

// A unit is 16 ql bytes: m = 4 * half + t4. ql bytes 64*half + 16*t4 .. +16 hold elements
// 128*half + 32*klo + j0 + 0..16 (low nibbles) and the same with khi = klo + 2 (high nibbles),
// where klo = t4 / 2 and j0 = 16 * (t4 % 2); their 2-bit high parts are bit pairs klo and khi of
// qh bytes 32*half + j0 .. +16. Values q - 32 are formed bytewise (rf_sub32_bytes), then dp4a.
template <int NT> __device__ void mmv_q6_k(MMV_DPARAMS) {
    MMV_PROLOGUE
    const int nsb = k / 256, nb = k / 32;
    const u8* wr = w + (size_t)row * nsb * 208;
    const u16* dw = (const u16*)(w + (size_t)n_rows * nsb * 208) + (size_t)row * nsb;
    RF_MMV_UNROLL_K_PRAGMA
    for (int u = lane; u < nsb * 8; u += W) {
        const int sb = u >> 3, m = u & 7, hf = m >> 2, t4 = m & 3;
        const int klo = t4 >> 1, khi = klo + 2, jh = t4 & 1;
        const u8* blk = wr + (size_t)sb * 208;
        const uint4 ql = rf_ldw16((const uint4*)(blk + 64 * hf + 16 * t4));
        const uint4 qh = rf_ldw16((const uint4*)(blk + 128 + 32 * hf + 16 * jh));
        const float d = rf_h2f(dw[sb]);
        const float sc_lo = (float)(i8)blk[192 + 8 * hf + 2 * klo + jh];
        const float sc_hi = (float)(i8)blk[192 + 8 * hf + 2 * khi + jh];
        const int sl = 2 * klo, sh = 2 * khi;
#define Q6_LO(a, b) rf_sub32_bytes(lo_nib(a) | ((int)(((b) >> sl) & 0x03030303u) << 4))
#define Q6_HI(a, b) rf_sub32_bytes(hi_nib(a) | ((int)(((b) >> sh) & 0x03030303u) << 4))
        const int l0 = Q6_LO(ql.x, qh.x), l1 = Q6_LO(ql.y, qh.y), l2 = Q6_LO(ql.z, qh.z), l3 = Q6_LO(ql.w, qh.w);
        const int h0 = Q6_HI(ql.x, qh.x), h1 = Q6_HI(ql.y, qh.y), h2 = Q6_HI(ql.z, qh.z), h3 = Q6_HI(ql.w, qh.w);
#undef Q6_LO
#undef Q6_HI
        const int off_lo = sb * 256 + 128 * hf + 32 * klo + 16 * jh;
        const int xb_lo = sb * 8 + 4 * hf + klo;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const i8* xt = xq + (size_t)t * k + off_lo;
                const int s0 = dot16(l0, l1, l2, l3, *(const int4*)xt);
                const int s1 = dot16(h0, h1, h2, h3, *(const int4*)(xt + 64));
                const size_t b = (size_t)t * nb + xb_lo;
                acc[t] += d * (sc_lo * xd[b] * (float)s0 + sc_hi * xd[b + 2] * (float)s1);
            }
        }
    }
    MMV_EPILOGUE
}

// ------------------------------------------------------------------------------ F16

// F16 weights with f32 activations (x: nt x k). A unit is 8 halves.
template <int NT>
__device__ void mmv_f16(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int n_rows, int k, int nt, int row) {
    MMV_PROLOGUE
    const uint4* wr = (const uint4*)(w + (size_t)row * k * 2);
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < k / 8; u += W) {
        const uint4 q = rf_ldw16(wr + u);
        float wf[8];
        const u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            wf[2 * i] = rf_h2f((u16)(words[i] & 0xFFFF));
            wf[2 * i + 1] = rf_h2f((u16)(words[i] >> 16));
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const float4* xv = (const float4*)(x + (size_t)t * k + (size_t)u * 8);
                const float4 a = xv[0], b = xv[1];
                acc[t] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z +
                          wf[7] * b.w;
            }
        }
    }
    MMV_EPILOGUE
}

// ------------------------------------------------------------------------------ BF16 / F32

// BF16 weights with f32 activations. A unit is 8 bf16 values (one 16-byte load).
template <int NT>
__device__ void mmv_bf16(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int n_rows, int k, int nt, int row) {
    MMV_PROLOGUE
    const uint4* wr = (const uint4*)(w + (size_t)row * k * 2);
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < k / 8; u += W) {
        const uint4 q = rf_ldw16(wr + u);
        const u32 words[4] = {q.x, q.y, q.z, q.w};
        float wf[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            wf[2 * i] = rf_bf2f(words[i] & 0xFFFFu);
            wf[2 * i + 1] = __int_as_float((int)(words[i] & 0xFFFF0000u));
        }
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const float4* xv = (const float4*)(x + (size_t)t * k + (size_t)u * 8);
                const float4 a = xv[0], b = xv[1];
                acc[t] += wf[0] * a.x + wf[1] * a.y + wf[2] * a.z + wf[3] * a.w + wf[4] * b.x + wf[5] * b.y + wf[6] * b.z +
                          wf[7] * b.w;
            }
        }
    }
    MMV_EPILOGUE
}

// F32 weights with f32 activations. A unit is 4 values (one 16-byte load).
template <int NT>
__device__ void mmv_f32(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int n_rows, int k, int nt, int row) {
    MMV_PROLOGUE
    const float4* wr = (const float4*)(w + (size_t)row * k * 4);
    RF_MMV_UNROLL_PRAGMA
    for (int u = lane; u < k / 4; u += W) {
        const uint4 q = rf_ldw16((const uint4*)(wr + u));
        const float w0 = __int_as_float((int)q.x), w1 = __int_as_float((int)q.y);
        const float w2 = __int_as_float((int)q.z), w3 = __int_as_float((int)q.w);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const float4 a = *(const float4*)(x + (size_t)t * k + (size_t)u * 4);
                acc[t] += w0 * a.x + w1 * a.y + w2 * a.z + w3 * a.w;
            }
        }
    }
    MMV_EPILOGUE
}

// ------------------------------------------------------------------------------ entry points

#define MMV_ROW (int)(blockIdx.x * (blockDim.x / W) + threadIdx.x / W)

// Single matrix: mmv_<type>_<NT>. Up to three matrices of one type sharing the input (Q/K/V,
// gate/up) in one launch: mmv3_<type>_<NT>, whose warps take rows of w0 (n0 rows), then w1, then
// w2, so a decode step pays one launch instead of three (n2 = 0 for two matrices).
#define MMV_ENTRY(ty, NT)                                                                                                 \
    extern "C" __global__ void mmv_##ty##_##NT(MMV_PARAMS) { mmv_##ty<NT>(w, xq, xd, xs, y, n_rows, k, nt, MMV_ROW); }  \
    extern "C" __global__ void mmv3_##ty##_##NT(const u8* __restrict__ w0, const u8* __restrict__ w1, const u8* __restrict__ w2, \
                                                const i8* __restrict__ xq, const float* __restrict__ xd,                  \
                                                const float* __restrict__ xs, float* __restrict__ y0, float* __restrict__ y1, \
                                                float* __restrict__ y2, int n0, int n1, int n2, int k, int nt) {          \
        const int r = MMV_ROW;                                                                                            \
        if (r < n0) mmv_##ty<NT>(w0, xq, xd, xs, y0, n0, k, nt, r);                                                       \
        else if (r < n0 + n1) mmv_##ty<NT>(w1, xq, xd, xs, y1, n1, k, nt, r - n0);                                        \
        else mmv_##ty<NT>(w2, xq, xd, xs, y2, n2, k, nt, r - n0 - n1);                                                    \
    }
#define MMV_ENTRIES(ty) MMV_ENTRY(ty, 1) MMV_ENTRY(ty, 2) MMV_ENTRY(ty, 4) MMV_ENTRY(ty, 8)
MMV_ENTRIES(q4_0)
MMV_ENTRIES(q4_1)
MMV_ENTRIES(q5_0)
MMV_ENTRIES(q5_1)
MMV_ENTRIES(q8_0)
MMV_ENTRIES(iq4_nl)
MMV_ENTRIES(q4_k)
MMV_ENTRIES(q5_k)
MMV_ENTRIES(q6_k)
MMV_ENTRIES(iq4_xs)

// Float weights (F16, BF16, F32) take f32 activations: mmv_<type>_<NT>(w, x, y, n_rows, k, nt).
#define MMV_FLOAT_ENTRY(ty, NT)                                                                                      \
    extern "C" __global__ void mmv_##ty##_##NT(const u8* w, const float* x, float* y, int n_rows, int k, int nt) { \
        mmv_##ty<NT>(w, x, y, n_rows, k, nt, MMV_ROW);                                                                \
    }
#define MMV_FLOAT_ENTRIES(ty) MMV_FLOAT_ENTRY(ty, 1) MMV_FLOAT_ENTRY(ty, 2) MMV_FLOAT_ENTRY(ty, 4) MMV_FLOAT_ENTRY(ty, 8)
MMV_FLOAT_ENTRIES(f16)
MMV_FLOAT_ENTRIES(bf16)
MMV_FLOAT_ENTRIES(f32)
