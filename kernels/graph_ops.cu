// graph_ops.cu: the remaining ops of the graph IR (host/runtime/src/graph.rs) that the executor's
// GPU backend needs beside ops.cu: element-wise activations (SiLU, sigmoid, GELU tanh / erf,
// softcap), per-row broadcast add/mul, column views, output-row gathers, LayerNorm, L2 norm and
// sequence pooling.
//
// Semantics are those of the CPU backend (host/runtime/src/backend/cpu.rs, host/cpu/src/ops.rs):
// - unary: silu = x / (1 + e^-x); sigmoid; gelu = tanh approximation (the CPU uses ggml's f16
//   table, ~1e-3 apart, as for geglu); gelu_erf = 0.5 x (1 + erf(x / sqrt 2)); softcap =
//   cap * tanh(x / cap).
// - binary_row: b holds one value per row (an activation [rows, 1], e.g. a per-token gate).
// - layer_norm: (x - mean) / sqrt(var + eps) * w + b, the CPU sums in f64; here in f32 per
//   thread then a block reduction (relative differences ~1e-7 on rows of <= 4096).
// - pool: mean (summed in f64 as the CPU does), first (CLS) or last token of each sequence.
// All pointer arguments are device pointers; sizes are checked on the host.
#include "compat.h"

#define W RF_WARP_SIZE

enum { UN_SILU = 0, UN_SIGMOID = 1, UN_GELU = 2, UN_GELU_ERF = 3, UN_SOFTCAP = 4 };

// out may alias x (in-place activations).
extern "C" __global__ void unary_f32(const float* x, float* out, u64 n, int kind, float p) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float v = x[i];
        float r;
        switch (kind) {
            case UN_SILU: r = v / (1.0f + expf(-v)); break;
            case UN_SIGMOID: r = 1.0f / (1.0f + expf(-v)); break;
            case UN_GELU: {
                const float k = 0.7978845608028654f;  // sqrt(2 / pi)
                r = 0.5f * v * (1.0f + tanhf(k * v * (1.0f + 0.044715f * v * v)));
                break;
            }
            case UN_GELU_ERF: r = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); break;
            default: r = p * tanhf(v / p); break;  // UN_SOFTCAP
        }
        out[i] = r;
    }
}

// out[i] = a[i] (+ or *) b[i / cols]: b has one value per row. out may alias a.
extern "C" __global__ void binary_row_f32(const float* a, const float* __restrict__ b, float* out, u64 n, int cols, int mul) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float y = b[i / (u64)cols];
        out[i] = mul ? a[i] * y : a[i] + y;
    }
}

// out[r, c] = x[r, off + c] for c < cols (a VIEW of a column range, made contiguous).
extern "C" __global__ void copy_cols_f32(const float* __restrict__ x, float* __restrict__ out, u64 n, int src_cols, int off,
                                         int cols) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u64 r = i / (u64)cols, c = i % (u64)cols;
        out[i] = x[r * (u64)src_cols + off + c];
    }
}

// out[i, :] = x[ids[i], :]; grid (n_ids, ceil(cols / blockDim.x)). An id past the n_rows of x
// writes NaN (ids live on the device so captured graphs can replay with new ones).
extern "C" __global__ void gather_rows_f32(const float* __restrict__ x, const u32* __restrict__ ids, float* __restrict__ out,
                                           int cols, u32 n_rows) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const u32 id = ids[blockIdx.x];
    out[(u64)blockIdx.x * cols + c] = id < n_rows ? x[(u64)id * cols + c] : __int_as_float(0x7fc00000);
}

// One block per row. w and b optional (null).
extern "C" __global__ void layer_norm_f32(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                                          float* __restrict__ out, int row_len, float eps) {
    __shared__ float scratch[1024 / W];
    const float* xr = x + (u64)blockIdx.x * row_len;
    float* o = out + (u64)blockIdx.x * row_len;
    float s = 0.0f;
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) s += xr[i];
    const float mean = block_sum<W>(s, scratch) / (float)row_len;
    float s2 = 0.0f;
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        const float d = xr[i] - mean;
        s2 += d * d;
    }
    const float scale = 1.0f / sqrtf(block_sum<W>(s2, scratch) / (float)row_len + eps);
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) {
        float v = (xr[i] - mean) * scale;
        if (w) v *= w[i];
        if (b) v += b[i];
        o[i] = v;
    }
}

// One block per row: out = x / max(||x||, eps).
extern "C" __global__ void l2_norm_f32(const float* __restrict__ x, float* __restrict__ out, int row_len, float eps) {
    __shared__ float scratch[1024 / W];
    const float* xr = x + (u64)blockIdx.x * row_len;
    float* o = out + (u64)blockIdx.x * row_len;
    float s = 0.0f;
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) s += xr[i] * xr[i];
    const float inv = 1.0f / fmaxf(sqrtf(block_sum<W>(s, scratch)), eps);
    for (int i = threadIdx.x; i < row_len; i += blockDim.x) o[i] = xr[i] * inv;
}

enum { POOL_MEAN = 1, POOL_CLS = 2, POOL_LAST = 3 };

// grid (n_seq, ceil(cols / blockDim.x)): one output row per sequence from its token rows
// [start, start + len) of x (len >= 1, checked on the host).
extern "C" __global__ void pool_f32(const float* __restrict__ x, const int* __restrict__ seq_start, const int* __restrict__ seq_len,
                                    float* __restrict__ out, int cols, int mode) {
    const int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int s = blockIdx.x, t0 = seq_start[s], n = seq_len[s];
    float r;
    if (mode == POOL_CLS) {
        r = x[(u64)t0 * cols + c];
    } else if (mode == POOL_LAST) {
        r = x[(u64)(t0 + n - 1) * cols + c];
    } else {
        double acc = 0.0;
        for (int t = 0; t < n; ++t) acc += (double)x[(u64)(t0 + t) * cols + c];
        r = (float)(acc / (double)n);
    }
    out[(u64)s * cols + c] = r;
}
