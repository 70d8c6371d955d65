// ops.cu: element-wise and per-row kernels (RMSNorm, RoPE, GLUs, add/mul/scale, argmax,
// embedding rows, activation quantization, the paged KV write).
//
// Semantics are those of the CPU backend (host/cpu/src/ops.rs, matmul.rs get_rows, attention.rs
// KvCache::write), which the tests in host/gpu/tests compare against on random inputs:
// - rms_norm: out = x / sqrt(mean(x^2) + eps) * w (w optional), one block per row.
// - rope: ggml's rope_ext: NeoX (pairs i, i + n_rot/2) or normal (adjacent pairs), freq_base,
//   freq_scale, YaRN ramp (ext_factor, corr dims computed on the host) and mscale, freq_factors.
//   theta = pos * theta_scale^i with powf, as ggml's CUDA backend does (the CPU multiplies
//   repeatedly; the two differ by a few ulp of the angle).
// - GLUs: swiglu = silu(g) * u; geglu = gelu_tanh(g) * u (exact tanh; the CPU uses ggml's f16
//   table, ~1e-3 apart).
// - get_rows: rows of a GGUF-layout table (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL,
//   Q4_K, Q5_K, Q6_K, IQ4_XS) to f32.
// - quantize_q8: activations to int8 per 32 values (d = amax / 127, q = rint(x * 127 / amax)) in a
//   structure-of-arrays layout (qs | d | s) whose int8 rows are 16-byte aligned for mmv.cu.
// - kv_write: K and V rows (f32) into cache slots [slot][head_kv][row] as the CPU's KvCache::write
//   stores them per cache type: f16 (rounded), q8_0 (ggml's block_q8_0, quantized as the activations
//   are: d = amax / 127 kept as f16, q = rint(x * 127 / amax)), fp8 E4M3FN (x / scale rounded to
//   nearest even, saturated to +-448, NaN kept): bit-identical bytes.
// All pointer arguments are device pointers; sizes are checked on the host.
#include "compat.h"

#define W RF_WARP_SIZE

// ------------------------------------------------------------------------------ RMSNorm

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out,
                                        int row_len, float eps) {
    __shared__ float scratch[1024 / W];
    const size_t row = blockIdx.x;
    const float* xr = x + row * row_len;
    float* o = out + row * row_len;
    float s = 0.0f;
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        const float v = xr[i];
        s += v * v;
    }
    s = block_sum<W>(s, scratch);
    const float scale = 1.0f / sqrtf(s / (float)row_len + eps);
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        o[i] = w ? xr[i] * scale * w[i] : xr[i] * scale;
    }
}

// ------------------------------------------------------------------------------ RoPE

// grid (n_head, n_tokens), block: threads over the n_rot / 2 pairs. From src into x (src == x:
// in place; otherwise the dimensions past n_rot are copied), so the graph's RoPE needs no copy
// launch before it.
extern "C" __global__ void rope_f32(const float* src, float* x, const int* __restrict__ positions, int n_head, int head_dim, int n_rot,
                                    int neox, float freq_base, float freq_scale, float ext_factor, float attn_factor, float corr0,
                                    float corr1, const float* __restrict__ freq_factors) {
    const int h = blockIdx.x, t = blockIdx.y;
    float* v = x + ((size_t)t * n_head + h) * head_dim;
    const float* sv = src + ((size_t)t * n_head + h) * head_dim;
    if (sv != v) {
        for (int i = n_rot + threadIdx.x; i < head_dim; i += blockDim.x) v[i] = sv[i];
    }
    const float pos = (float)positions[t];
    const float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    const int half = n_rot / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float ff = freq_factors ? freq_factors[i] : 1.0f;
        const float theta_extrap = pos * powf(theta_scale, (float)i) / ff;
        const float theta_interp = freq_scale * theta_extrap;
        float theta = theta_interp;
        float mscale = attn_factor;
        if (ext_factor != 0.0f) {
            const float y = ((float)i - corr0) / fmaxf(0.001f, corr1 - corr0);
            const float ramp_mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * ext_factor;
            theta = theta_interp * (1.0f - ramp_mix) + theta_extrap * ramp_mix;
            mscale *= 1.0f + 0.1f * logf(1.0f / freq_scale);
        }
        const float c = cosf(theta) * mscale, s = sinf(theta) * mscale;
        const int a = neox ? i : 2 * i;
        const int b = neox ? i + half : 2 * i + 1;
        const float x0 = sv[a], x1 = sv[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
    }
}

// ------------------------------------------------------------------------------ GLUs, binary

RF_INLINE float gelu_tanh(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * x * (1.0f + 0.044715f * x * x)));
}

extern "C" __global__ void swiglu_f32(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ out, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float v = g[i];
        out[i] = v / (1.0f + expf(-v)) * u[i];
    }
}

extern "C" __global__ void geglu_f32(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ out, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        out[i] = gelu_tanh(g[i]) * u[i];
    }
}

// out = a + b, b broadcast over rows of nb values (nb divides n). out may alias a.
extern "C" __global__ void add_f32(const float* a, const float* __restrict__ b, float* out, u64 n, u64 nb) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) out[i] = a[i] + b[i % nb];
}

extern "C" __global__ void mul_f32(const float* a, const float* __restrict__ b, float* out, u64 n, u64 nb) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) out[i] = a[i] * b[i % nb];
}

extern "C" __global__ void scale_f32(const float* x, float* out, u64 n, float s) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) out[i] = x[i] * s;
}

// ------------------------------------------------------------------------------ argmax

// One block per row; ties go to the lowest index; NaN never wins. Writes -1 (as u32) for a row
// with no comparable value.
extern "C" __global__ void argmax_f32(const float* __restrict__ x, u32* __restrict__ out, int n_cols) {
    __shared__ float s_val[1024 / W];
    __shared__ int s_idx[1024 / W];
    const float* xr = x + (size_t)blockIdx.x * n_cols;
    float best = -RF_INF;
    int idx = -1;
    for (int i = threadIdx.x; i < n_cols; i += blockDim.x) {
        const float v = xr[i];
        if (v > best || (idx < 0 && v == best)) {
            best = v;
            idx = i;
        }
    }
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) {
        const float ov = rf_shfl_xor(best, o, W);
        const int oi = rf_shfl_xor_int(idx, o, W);
        if (oi >= 0 && (idx < 0 || ov > best || (ov == best && oi < idx))) {
            best = ov;
            idx = oi;
        }
    }
    const int lane = threadIdx.x % W, warp = threadIdx.x / W;
    if (lane == 0) {
        s_val[warp] = best;
        s_idx[warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < (int)(blockDim.x / W); ++k) {
            const int oi = s_idx[k];
            const float ov = s_val[k];
            if (oi >= 0 && (idx < 0 || ov > best || (ov == best && oi < idx))) {
                best = ov;
                idx = oi;
            }
        }
        out[blockIdx.x] = (u32)idx;
    }
}

// ------------------------------------------------------------------------------ get_rows

RF_INLINE u16 ld_u16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }

// Element i of one GGUF-layout row (byte pointer to the row). Scalar loads: rows are gathered
// once per token, so this kernel is never the bottleneck.
template <int TY> RF_INLINE float deq_elem(const u8* row, int i);

enum {
    TY_F32 = 0,
    TY_F16 = 1,
    TY_Q4_0 = 2,
    TY_Q4_1 = 3,
    TY_Q5_0 = 6,
    TY_Q5_1 = 7,
    TY_Q8_0 = 8,
    TY_Q4_K = 12,
    TY_Q5_K = 13,
    TY_Q6_K = 14,
    TY_IQ4_NL = 20,
    TY_IQ4_XS = 23,
    TY_BF16 = 30
};

template <> RF_INLINE float deq_elem<TY_F32>(const u8* row, int i) { return ((const float*)row)[i]; }
template <> RF_INLINE float deq_elem<TY_F16>(const u8* row, int i) { return rf_h2f(ld_u16(row + 2 * i)); }
template <> RF_INLINE float deq_elem<TY_Q4_0>(const u8* row, int i) {
    const u8* b = row + (i / 32) * 18;
    const int j = i % 32;
    const int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
    return (float)(q - 8) * rf_h2f(ld_u16(b));
}
template <> RF_INLINE float deq_elem<TY_Q4_1>(const u8* row, int i) {
    const u8* b = row + (i / 32) * 20;
    const int j = i % 32;
    const int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
    return (float)q * rf_h2f(ld_u16(b)) + rf_h2f(ld_u16(b + 2));
}
template <> RF_INLINE float deq_elem<TY_Q5_0>(const u8* row, int i) {
    const u8* b = row + (i / 32) * 22;
    const int j = i % 32;
    const u32 qh = b[2] | (b[3] << 8) | (b[4] << 16) | ((u32)b[5] << 24);
    const int lo = j < 16 ? (b[6 + j] & 0xF) : (b[6 + j - 16] >> 4);
    const int q = lo | (((qh >> j) & 1) << 4);
    return (float)(q - 16) * rf_h2f(ld_u16(b));
}
template <> RF_INLINE float deq_elem<TY_Q5_1>(const u8* row, int i) {
    const u8* b = row + (i / 32) * 24;
    const int j = i % 32;
    const u32 qh = b[4] | (b[5] << 8) | (b[6] << 16) | ((u32)b[7] << 24);
    const int lo = j < 16 ? (b[8 + j] & 0xF) : (b[8 + j - 16] >> 4);
    const int q = lo | (((qh >> j) & 1) << 4);
    return (float)q * rf_h2f(ld_u16(b)) + rf_h2f(ld_u16(b + 2));
}
template <> RF_INLINE float deq_elem<TY_BF16>(const u8* row, int i) { return rf_bf2f(ld_u16(row + 2 * i)); }
// IQ4_NL: d, qs[16] (nibble order as Q4_0); the value of code q is the table's byte q.
template <> RF_INLINE float deq_elem<TY_IQ4_NL>(const u8* row, int i) {
    const u8* b = row + (i / 32) * 18;
    const int j = i % 32;
    const int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
    return rf_h2f(ld_u16(b)) * (float)(i8)(rf_iq4nl4((u32)q) & 0xFF);
}
// IQ4_XS: d, scales_h (u16), scales_l[4], qs[128]; sub-block ib's 6-bit scale ls, offset 32.
template <> RF_INLINE float deq_elem<TY_IQ4_XS>(const u8* row, int i) {
    const u8* b = row + (i / 256) * 136;
    const int e = i % 256, ib = e / 32, j = e % 32;
    const int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((ld_u16(b + 2) >> (2 * ib)) & 3) << 4);
    const u8* qs = b + 8 + 16 * ib;
    const int q = j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4);
    return (rf_h2f(ld_u16(b)) * (float)(ls - 32)) * (float)(i8)(rf_iq4nl4((u32)q) & 0xFF);
}
template <> RF_INLINE float deq_elem<TY_Q8_0>(const u8* row, int i) {
    const u8* b = row + (i / 32) * 34;
    return (float)(i8)b[2 + i % 32] * rf_h2f(ld_u16(b));
}
// Q4_K: d, dmin, 12 scale bytes, 128 qs (see host/quant kquants.rs for the packing).
RF_INLINE void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}
template <> RF_INLINE float deq_elem<TY_Q4_K>(const u8* row, int i) {
    const u8* b = row + (i / 256) * 144;
    const int e = i % 256, c = e / 64, hi = (e % 64) / 32, j = e % 32;
    int sc, m;
    scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    const u8 q = b[16 + 32 * c + j];
    const int v = hi ? (q >> 4) : (q & 0xF);
    return rf_h2f(ld_u16(b)) * (float)sc * (float)v - rf_h2f(ld_u16(b + 2)) * (float)m;
}
// Q5_K: d, dmin, 12 scale bytes, qh[32] (bit 2c / 2c+1 of byte j: element 64c + j / 64c + 32 + j),
// qs[128] as Q4_K's.
template <> RF_INLINE float deq_elem<TY_Q5_K>(const u8* row, int i) {
    const u8* b = row + (i / 256) * 176;
    const int e = i % 256, c = e / 64, hi = (e % 64) / 32, j = e % 32;
    int sc, m;
    scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    const u8 q = b[48 + 32 * c + j];
    const int v = (hi ? (q >> 4) : (q & 0xF)) | (((b[16 + j] >> (2 * c + hi)) & 1) << 4);
    return rf_h2f(ld_u16(b)) * (float)sc * (float)v - rf_h2f(ld_u16(b + 2)) * (float)m;
}
// Q6_K: ql[128], qh[64], scales[16] (i8), d.
template <> RF_INLINE float deq_elem<TY_Q6_K>(const u8* row, int i) {
    const u8* b = row + (i / 256) * 210;
    const int e = i % 256, h = e / 128, k = (e % 128) / 32, j = e % 32;
    const u8 ql = b[64 * h + 32 * (k & 1) + j];
    const int lo = (k < 2) ? (ql & 0xF) : (ql >> 4);
    const int q = lo | (((b[128 + 32 * h + j] >> (2 * k)) & 3) << 4);
    return rf_h2f(ld_u16(b + 208)) * (float)(i8)b[192 + e / 16] * (float)(q - 32);
}

// grid (n_ids, ceil(row_len / blockDim.x)). An id past the table writes NaN (the host checks ids
// it knows; ids produced on the device cannot be checked there).
template <int TY>
__device__ void get_rows_body(const u8* __restrict__ table, const u32* __restrict__ ids, float* __restrict__ out, int row_len,
                              u64 row_bytes, u32 n_rows) {
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= row_len) return;
    const u32 id = ids[blockIdx.x];
    float* o = out + (size_t)blockIdx.x * row_len;
    o[i] = id < n_rows ? deq_elem<TY>(table + (u64)id * row_bytes, i) : __int_as_float(0x7fc00000);
}

#define GET_ROWS(name, TY)                                                                                            \
    extern "C" __global__ void name(const u8* table, const u32* ids, float* out, int row_len, u64 row_bytes, u32 n_rows) { \
        get_rows_body<TY>(table, ids, out, row_len, row_bytes, n_rows);                                               \
    }
GET_ROWS(get_rows_f32, TY_F32)
GET_ROWS(get_rows_f16, TY_F16)
GET_ROWS(get_rows_q4_0, TY_Q4_0)
GET_ROWS(get_rows_q4_1, TY_Q4_1)
GET_ROWS(get_rows_q5_0, TY_Q5_0)
GET_ROWS(get_rows_q5_1, TY_Q5_1)
GET_ROWS(get_rows_q8_0, TY_Q8_0)
GET_ROWS(get_rows_q4_k, TY_Q4_K)
GET_ROWS(get_rows_q5_k, TY_Q5_K)
GET_ROWS(get_rows_q6_k, TY_Q6_K)
GET_ROWS(get_rows_iq4_nl, TY_IQ4_NL)
GET_ROWS(get_rows_iq4_xs, TY_IQ4_XS)
GET_ROWS(get_rows_bf16, TY_BF16)

// ------------------------------------------------------------------------------ quantize_q8

// Activations x (n_tokens x k, k % 32 == 0) to int8: qs[t * k + i], per 32-block b (global
// index t * k / 32 + b): d = amax / 127 and s = d * sum(q). One thread per 32-block; the rows are
// short (k values), so this is a few microseconds at most.
//
// q8_block quantizes the 32 values v of block b; the fused kernels below (norm + quantize, GLU +
// quantize) call it on values they already hold in registers, saving a launch and a pass over
// memory per matrix product input in decode.
RF_INLINE void q8_block(const float* v, i8* __restrict__ qs, float* __restrict__ d_out, float* __restrict__ s_out, u64 b) {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(v[i]));
    // As llama.cpp's x86 quantize_row_q8_0: scale by 127 / amax, round half to even.
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    int packed[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        u32 p = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int q = (int)rintf(v[4 * i + j] * id);
            sum += q;
            p |= ((u32)(u8)(i8)q) << (8 * j);
        }
        packed[i] = (int)p;
    }
    int4* dst = (int4*)(qs + b * 32);
    dst[0] = make_int4(packed[0], packed[1], packed[2], packed[3]);
    dst[1] = make_int4(packed[4], packed[5], packed[6], packed[7]);
    d_out[b] = d;
    s_out[b] = d * (float)sum;
}

RF_INLINE void load32(const float* x, float* v) {
    const float4* xb = (const float4*)x;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float4 f = xb[i];
        v[4 * i] = f.x;
        v[4 * i + 1] = f.y;
        v[4 * i + 2] = f.z;
        v[4 * i + 3] = f.w;
    }
}

RF_INLINE void store32(float* o, const float* v) {
    float4* ob = (float4*)o;
#pragma unroll
    for (int i = 0; i < 8; ++i) ob[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
}

extern "C" __global__ void quantize_q8_f32(const float* __restrict__ x, i8* __restrict__ qs, float* __restrict__ d_out,
                                           float* __restrict__ s_out, u64 n_blocks) {
    const u64 b = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    float v[32];
    load32(x + b * 32, v);
    q8_block(v, qs, d_out, s_out, b);
}

// rms_norm_f32 (one block per row, row_len % 32 == 0) that also quantizes its output row as
// quantize_q8_f32 would: out is still written (other consumers may read it).
extern "C" __global__ void rms_norm_q8_f32(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ out,
                                           int row_len, float eps, i8* __restrict__ qs, float* __restrict__ d_out,
                                           float* __restrict__ s_out) {
    __shared__ float scratch[1024 / W];
    const size_t row = blockIdx.x;
    const float* xr = x + row * row_len;
    float s = 0.0f;
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        const float v = xr[i];
        s += v * v;
    }
    s = block_sum<W>(s, scratch);
    const float scale = 1.0f / sqrtf(s / (float)row_len + eps);
    const int nb = row_len / 32;
    for (int j = threadIdx.x; j < nb; j += blockDim.x) {
        float v[32];
        load32(xr + 32 * j, v);
#pragma unroll
        for (int i = 0; i < 32; ++i) v[i] = w ? v[i] * scale * w[32 * j + i] : v[i] * scale;
        store32(out + row * row_len + 32 * j, v);
        q8_block(v, qs + row * row_len, d_out + row * nb, s_out + row * nb, j);
    }
}

// out = act(g) * u (act: 0 SiLU, 1 GELU-tanh) over n_blocks blocks of 32, quantized as
// quantize_q8_f32 would.
extern "C" __global__ void glu_q8_f32(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ out, int act,
                                      i8* __restrict__ qs, float* __restrict__ d_out, float* __restrict__ s_out, u64 n_blocks) {
    const u64 b = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    float v[32], uv[32];
    load32(g + b * 32, v);
    load32(u + b * 32, uv);
#pragma unroll
    for (int i = 0; i < 32; ++i) v[i] = (act == 0 ? v[i] / (1.0f + expf(-v[i])) : gelu_tanh(v[i])) * uv[i];
    store32(out + b * 32, v);
    q8_block(v, qs, d_out, s_out, b);
}

// ------------------------------------------------------------------------------ KV write

// K (n_tokens x n_kv x dk) and V (n_tokens x n_kv x dv), f32, into the f16 cache of one layer at
// slots[t] (= block * block_size + offset; negative: skip, for padded batches). grid: n_tokens.
extern "C" __global__ void kv_write_f16(const float* __restrict__ k, const float* __restrict__ v, u16* __restrict__ k_cache,
                                        u16* __restrict__ v_cache, const i64* __restrict__ slots, int hk, int hv) {
    const int t = blockIdx.x;
    const i64 slot = slots[t];
    if (slot < 0) return;
    for (int e = threadIdx.x; e < hk; e += blockDim.x) k_cache[slot * hk + e] = rf_f2h(k[(size_t)t * hk + e]);
    for (int e = threadIdx.x; e < hv; e += blockDim.x) v_cache[slot * hv + e] = rf_f2h(v[(size_t)t * hv + e]);
}

// K and V rows into a q8_0 cache (ggml's block_q8_0: f16 d, then 32 x i8), quantized as the CPU
// backend's KvCache::write (crate act.rs q8_block: d = amax / 127 stored as f16, q = rint(x * 127 /
// amax), round half to even). One thread per block of 32 values: a token has the hk / 32 blocks of
// K, then the hv / 32 of V. The 34-byte blocks are only 2-byte aligned: stores are u16.
extern "C" __global__ void kv_write_q8_0(const float* __restrict__ k, const float* __restrict__ v, u8* __restrict__ k_cache,
                                         u8* __restrict__ v_cache, const i64* __restrict__ slots, int n_tokens, int hk, int hv) {
    const int nbk = hk / 32, nbv = hv / 32, nb = nbk + nbv;
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (i64)n_tokens * nb) return;
    const int t = (int)(idx / nb), b = (int)(idx % nb);
    const i64 slot = slots[t];
    if (slot < 0) return;
    const bool is_k = b < nbk;
    const float* src = is_k ? k + (size_t)t * hk + 32 * b : v + (size_t)t * hv + 32 * (b - nbk);
    u16* dst = (u16*)(is_k ? k_cache + ((size_t)slot * nbk + b) * 34 : v_cache + ((size_t)slot * nbv + (b - nbk)) * 34);
    float x[32];
    load32(src, x);
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(x[i]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    dst[0] = rf_f2h(d);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        const int a = (int)rintf(x[2 * i] * id), c = (int)rintf(x[2 * i + 1] * id);
        dst[1 + i] = (u16)((u32)(u8)(i8)a | ((u32)(u8)(i8)c << 8));
    }
}

// f32 -> E4M3FN bits as the CPU's kv_quant::f32_to_e4m3: round to nearest even, finite values
// saturate to +-448 (CUDA's __NV_SATFINITE), NaN -> 0x7F.
RF_INLINE u32 f32_to_e4m3(float x) {
    if (x != x) return 0x7Fu;
    const u32 bits = (u32)__float_as_int(x);
    const u32 sign = (bits >> 24) & 0x80u;
    const float a = fabsf(x);
    if (a >= 448.0f) return sign | 0x7Eu;
    // Subnormals (and zero): multiples of 2^-9; 8 * 2^-9 rounds into the smallest normal (bits 8).
    if (a < 0.015625f) return sign | (u32)rintf(a * 512.0f);
    const u32 ab = bits & 0x7FFFFFFFu;
    u32 e = (ab >> 23) - 127u + 7u;
    const u32 mant = ab & 0x7FFFFFu;
    u32 m = mant >> 20;
    const u32 rem = mant & 0xFFFFFu;
    if (rem > 0x80000u || (rem == 0x80000u && (m & 1u))) ++m;
    if (m == 8u) {
        m = 0;
        ++e;
    }
    return sign | (e << 3) | m;  // a < 448 rounds to at most 448 (e 15, m 6): never NaN
}

// K and V rows into an fp8 E4M3 cache: x * (1 / scale) converted per element; the scale is the
// KV head's (k_scales[h] / v_scales[h], h = e / dim) when given, else the per-tensor inverse
// inv_k / inv_v (computed on the host). 1 / scale is a correctly rounded f32 division either
// way, as the CPU's KvCache::write_scaled computes it. grid: n_tokens.
extern "C" __global__ void kv_write_fp8(const float* __restrict__ k, const float* __restrict__ v, u8* __restrict__ k_cache,
                                        u8* __restrict__ v_cache, const i64* __restrict__ slots, int hk, int hv, float inv_k,
                                        float inv_v, int dk, int dv, const float* __restrict__ k_scales,
                                        const float* __restrict__ v_scales) {
    const int t = blockIdx.x;
    const i64 slot = slots[t];
    if (slot < 0) return;
    for (int e = threadIdx.x; e < hk; e += blockDim.x) {
        const float inv = k_scales ? 1.0f / k_scales[e / dk] : inv_k;
        k_cache[slot * hk + e] = (u8)f32_to_e4m3(k[(size_t)t * hk + e] * inv);
    }
    for (int e = threadIdx.x; e < hv; e += blockDim.x) {
        const float inv = v_scales ? 1.0f / v_scales[e / dv] : inv_v;
        v_cache[slot * hv + e] = (u8)f32_to_e4m3(v[(size_t)t * hv + e] * inv);
    }
}
