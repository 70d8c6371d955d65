// dequant.cu: the prefill path's inputs for the vendor GEMM (host/gpu/src/gemm.rs):
//   - dequant_<type>_f16: rows [row0, row0 + rows) of a weight matrix in the GPU layout of
//     host/gpu/src/repack.rs (see mmv.cu's header) into row-major f16, out[(r - row0) * k + i];
//   - f32_to_f16: activations to f16 (round to nearest even, as llama.cpp's cuBLAS path does).
// One thread per 32-value group (a block of the 32-element types, a sub-block of the K-quants and
// IQ4_XS); its 32 halves are written as four 16-byte stores. BF16 and F32 rows take one thread
// per 16 bytes read (8 and 4 values). Values are computed as the CPU dequantizer computes them
// (host/quant), in f32, then rounded once to f16 (so values beyond f16's range, |x| > 65504,
// become infinities: no GGUF weight we know of comes near).
#include "compat.h"

#define DQ_PARAMS const u8 *__restrict__ w, u16 *__restrict__ out, int n_rows, int k, int row0, int rows

// Group index -> (row, group in the row); returns false past the end.
#define DQ_PROLOGUE                                                        \
    const int ng = k / 32;                                                 \
    const u64 gid = (u64)blockIdx.x * blockDim.x + threadIdx.x;            \
    if (gid >= (u64)rows * ng) return;                                     \
    const int r = row0 + (int)(gid / ng), b = (int)(gid % ng);             \
    (void)n_rows;                                                          \
    float v[32];

#define DQ_EPILOGUE                                                                           \
    uint4* o = (uint4*)(out + (gid / ng) * (u64)k + (u64)b * 32);                              \
    _Pragma("unroll") for (int i = 0; i < 4; ++i) {                                            \
        u32 p[4];                                                                              \
        _Pragma("unroll") for (int j = 0; j < 4; ++j) p[j] =                                   \
            (u32)rf_f2h(v[8 * i + 2 * j]) | ((u32)rf_f2h(v[8 * i + 2 * j + 1]) << 16);         \
        o[i] = make_uint4(p[0], p[1], p[2], p[3]);                                             \
    }

extern "C" __global__ void dequant_q4_0_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const u8* q = w + ((u64)r * ng + b) * 16;
    const float d = rf_h2f(((const u16*)(w + (u64)n_rows * ng * 16))[(u64)r * ng + b]);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        v[j] = d * (float)((int)(q[j] & 0xF) - 8);
        v[j + 16] = d * (float)((int)(q[j] >> 4) - 8);
    }
    DQ_EPILOGUE
}

extern "C" __global__ void dequant_q4_1_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const u8* q = w + ((u64)r * ng + b) * 16;
    const u32 dm = ((const u32*)(w + (u64)n_rows * ng * 16))[(u64)r * ng + b];
    const float d = rf_h2f((u16)(dm & 0xFFFF)), m = rf_h2f((u16)(dm >> 16));
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        v[j] = d * (float)(q[j] & 0xF) + m;
        v[j + 16] = d * (float)(q[j] >> 4) + m;
    }
    DQ_EPILOGUE
}

extern "C" __global__ void dequant_q5_0_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const u8* q = w + ((u64)r * ng + b) * 16;
    const u32 qh = ((const u32*)(w + (u64)n_rows * ng * 16))[(u64)r * ng + b];
    const float d = rf_h2f(((const u16*)(w + (u64)n_rows * ng * 20))[(u64)r * ng + b]);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        v[j] = d * (float)((int)((q[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16);
        v[j + 16] = d * (float)((int)((q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
    }
    DQ_EPILOGUE
}

extern "C" __global__ void dequant_q5_1_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const u8* q = w + ((u64)r * ng + b) * 16;
    const u32 qh = ((const u32*)(w + (u64)n_rows * ng * 16))[(u64)r * ng + b];
    const u32 dm = ((const u32*)(w + (u64)n_rows * ng * 20))[(u64)r * ng + b];
    const float d = rf_h2f((u16)(dm & 0xFFFF)), m = rf_h2f((u16)(dm >> 16));
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        v[j] = (float)((q[j] & 0xF) | (((qh >> j) & 1) << 4)) * d + m;
        v[j + 16] = (float)((q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) * d + m;
    }
    DQ_EPILOGUE
}

// IQ4_NL (repacked as Q4_0: qs[n_rows][nb][16], d[n_rows][nb]) and IQ4_XS (qs[n_rows][nsb][128],
// sc[n_rows][nsb][8] int8, d[n_rows][nsb]; group b of a row is sub-block b % 8 of super-block
// b / 8): 16 bytes of codes, looked up four at a time (compat.h rf_iq4nl4).
RF_INLINE void iq4_group(const u8* q16, float dl, float* v) {
    const uint4 q = *(const uint4*)q16;
    const u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int lo = rf_iq4nl4(words[i] & 0x0F0F0F0Fu), hi = rf_iq4nl4((words[i] >> 4) & 0x0F0F0F0Fu);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            v[4 * i + j] = dl * (float)(i8)(lo >> (8 * j));
            v[16 + 4 * i + j] = dl * (float)(i8)(hi >> (8 * j));
        }
    }
}

extern "C" __global__ void dequant_iq4_nl_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const float d = rf_h2f(((const u16*)(w + (u64)n_rows * ng * 16))[(u64)r * ng + b]);
    iq4_group(w + ((u64)r * ng + b) * 16, d, v);
    DQ_EPILOGUE
}

extern "C" __global__ void dequant_iq4_xs_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const int nsb = k / 256;
    const i8 sc = ((const i8*)(w + (u64)n_rows * ng * 16))[(u64)r * ng + b];
    const float d = rf_h2f(((const u16*)(w + (u64)n_rows * nsb * 136))[(u64)r * nsb + b / 8]);
    iq4_group(w + ((u64)r * ng + b) * 16, d * (float)sc, v);
    DQ_EPILOGUE
}

extern "C" __global__ void dequant_q8_0_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const i8* q = (const i8*)w + ((u64)r * ng + b) * 32;
    const float d = rf_h2f(((const u16*)(w + (u64)n_rows * ng * 32))[(u64)r * ng + b]);
#pragma unroll
    for (int j = 0; j < 32; ++j) v[j] = d * (float)q[j];
    DQ_EPILOGUE
}

// Q4_K (repacked: qs[n_rows][nsb][128], sm[n_rows][nsb][16], dm[n_rows][nsb]; see mmv.cu):
// group j of super-block sb is chunk c = j / 2 of 32 qs bytes, low nibbles (j even) or high
// (j odd), with scale sm[4c + (j & 1)] and min sm[4c + 2 + (j & 1)].
extern "C" __global__ void dequant_q4_k_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const int nsb = k / 256, sb = b / 8, j = b % 8, c = j / 2, hi = j & 1;
    const u64 blk = (u64)r * nsb + sb;
    const u8* f = w + (u64)n_rows * nsb * 128 + blk * 16 + 4 * c;
    const u32 dmv = ((const u32*)(w + (u64)n_rows * nsb * 144))[blk];
    const float d1 = rf_h2f((u16)(dmv & 0xFFFF)) * (float)f[hi], m1 = rf_h2f((u16)(dmv >> 16)) * (float)f[2 + hi];
    const u8* q = w + blk * 128 + 32 * c;
#pragma unroll
    for (int l = 0; l < 32; ++l) v[l] = d1 * (float)(hi ? (q[l] >> 4) : (q[l] & 0xF)) - m1;
    DQ_EPILOGUE
}

// Q5_K (repacked: qs at 0, the per-chunk high-bit words at n_rows * nsb * 128, sm at * 160, dm
// at * 176; see mmv.cu): group j of super-block sb is Q4_K's group plus bit l of the chunk's lo
// (j even) or hi (j odd) word as the fifth bit of element l.
extern "C" __global__ void dequant_q5_k_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const int nsb = k / 256, sb = b / 8, j = b % 8, c = j / 2, hi = j & 1;
    const u64 blk = (u64)r * nsb + sb;
    const u32 bits = ((const u32*)(w + (u64)n_rows * nsb * 128))[blk * 8 + 2 * c + hi];
    const u8* f = w + (u64)n_rows * nsb * 160 + blk * 16 + 4 * c;
    const u32 dmv = ((const u32*)(w + (u64)n_rows * nsb * 176))[blk];
    const float d1 = rf_h2f((u16)(dmv & 0xFFFF)) * (float)f[hi], m1 = rf_h2f((u16)(dmv >> 16)) * (float)f[2 + hi];
    const u8* q = w + blk * 128 + 32 * c;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        const int qv = (int)(hi ? (q[l] >> 4) : (q[l] & 0xF)) | (int)(((bits >> l) & 1u) << 4);
        v[l] = d1 * (float)qv - m1;
    }
    DQ_EPILOGUE
}

// Q6_K (repacked: (ql[128] qh[64] scales[16]) per super-block, then the f16 d's): group j is
// quarter g = j % 4 of half j / 4; elements 128 * half + 32 * g + l take the low (g < 2) or high
// nibble of ql[64 * half + 32 * (g & 1) + l], bits 2g..2g+1 of qh[32 * half + l], scale
// scales[8 * half + l / 16 + 2g].
extern "C" __global__ void dequant_q6_k_f16(DQ_PARAMS) {
    DQ_PROLOGUE
    const int nsb = k / 256, sb = b / 8, j = b % 8, half = j / 4, g = j % 4;
    const u8* blk = w + ((u64)r * nsb + sb) * 208;
    const float d = rf_h2f(((const u16*)(w + (u64)n_rows * nsb * 208))[(u64)r * nsb + sb]);
    const u8* ql = blk + 64 * half + 32 * (g & 1);
    const u8* qh = blk + 128 + 32 * half;
    const i8* sc = (const i8*)(blk + 192 + 8 * half + 2 * g);
    const int nib = 4 * (g >> 1), hs = 2 * g;
#pragma unroll
    for (int l = 0; l < 32; ++l) {
        const int q = (int)(((ql[l] >> nib) & 0xF) | (((qh[l] >> hs) & 3) << 4)) - 32;
        v[l] = d * (float)sc[l / 16] * (float)q;
    }
    DQ_EPILOGUE
}

// BF16 / F32 rows (GGUF as is) to f16: one thread per 16 bytes read, i.e. 8 (BF16) or 4 (F32)
// values of a row (k a multiple of 8 / 4).
extern "C" __global__ void dequant_bf16_f16(DQ_PARAMS) {
    (void)n_rows;
    const int nu = k / 8;
    const u64 gid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= (u64)rows * nu) return;
    const u64 rr = gid / nu, u = gid % nu;
    const uint4 q = ((const uint4*)(w + (u64)(row0 + rr) * k * 2))[u];
    const u32 words[4] = {q.x, q.y, q.z, q.w};
    u32 p[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
        p[i] = (u32)rf_f2h(rf_bf2f(words[i] & 0xFFFFu)) | ((u32)rf_f2h(__int_as_float((int)(words[i] & 0xFFFF0000u))) << 16);
    ((uint4*)(out + rr * (u64)k))[u] = make_uint4(p[0], p[1], p[2], p[3]);
}

extern "C" __global__ void dequant_f32_f16(DQ_PARAMS) {
    (void)n_rows;
    const int nu = k / 4;
    const u64 gid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (gid >= (u64)rows * nu) return;
    const u64 rr = gid / nu, u = gid % nu;
    const float4 x = ((const float4*)(w + (u64)(row0 + rr) * k * 4))[u];
    ((uint2*)(out + rr * (u64)k))[u] =
        make_uint2((u32)rf_f2h(x.x) | ((u32)rf_f2h(x.y) << 16), (u32)rf_f2h(x.z) | ((u32)rf_f2h(x.w) << 16));
}

extern "C" __global__ void f32_to_f16(const float* __restrict__ x, u16* __restrict__ out, u64 n) {
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = rf_f2h(x[i]);
}
