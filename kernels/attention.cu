// attention.cu: paged attention over the KV cache (f16, q8_0 or fp8 E4M3 elements), for decode
// (one query token per sequence, many sequences) and prefill chunks (many query tokens of one or
// more sequences) in one kernel: every query token carries its sequence and its position.
//
// Cache layout of one layer (the host passes the layer's base pointers), as rocmforge_cpu::KvCache:
//   k[block][slot][head_kv][row_k], v[block][slot][head_kv][row_v]
// with rows of `row_bytes(dim)` bytes per element type:
//   f16   dim x u16
//   q8_0  dim / 32 x { d: f16, qs: [i8; 32] }   (ggml's block_q8_0: 34 bytes, only 2-byte aligned)
//   fp8   dim x u8, OCP E4M3FN; value = e4m3 * scale (K and V scales per layer: one per tensor,
//         k_scale / v_scale, or one per KV head, k_scales[g] / v_scales[g] when not null)
// Position p of sequence s lives in block block_tables[bt_offset[s] + p / block_size], slot
// p % block_size.
//
// For query token t (sequence q_seq[t], position q_pos[t]) and head h (KV head h / (n_head /
// n_head_kv)): keys lo..hi with hi = q_pos + 1 (causal) or seq_len[s] (not causal), lo = 0 or, with
// a sliding window w, q_pos + 1 - w (and hi <= q_pos + w when not causal); logits
// x = (qscale * k_scale) * q.k, then softcap * tanh(x) when softcap > 0 (qscale = scale, divided
// by the softcap when there is one: llama.cpp's flash-attention order, as the CPU's quantized
// path; k_scale is 1 but for fp8);
// softmax; sum of p * v. q is read as the CPU backend reads it for each cache type:
//   f16:  q rounded to f16 (llama.cpp's vec_dot_type for an f16 cache);
//   q8_0: q quantized to q8_0 per 32 values (d = f16(amax / 127), q = rint(x * 127 / amax)); each
//         block's dot is the exact integer sum times d_k * d_q (ggml_vec_dot_q8_0_q8_0), blocks
//         summed in a tree rather than in order (float rounding differs, nothing else);
//   fp8:  q in f32, K decoded exactly (its scale joins the logit scale); V decoded times v_scale.
//
// Work: one block of ATT_WARPS warps per (head, query token, partition); warp w takes keys
// lo + w, lo + w + ATT_WARPS, ... with an online softmax (running max m, sum l, accumulator over
// v); lane l owns head elements 4j..4j+3 for j = l + W * i (one 8-byte f16, one 4-byte fp8 or two
// 2-byte q8_0 loads per group; the 8 lanes of a q8_0 block sum their int8 dots by shuffles); the
// warps' states are merged through shared memory at the end. Head dims: multiples of 4 (q8_0: of
// 32) up to ATT_MAX_DIM.
//
// Split-K ("flash decoding"), gridDim.z = n_part > 1: partition z of a query takes keys
// lo + z * chunk .. lo + (z + 1) * chunk (clipped to hi), chunk = max(ceil((hi - lo) / n_part),
// min_chunk), and writes its unnormalised state (m, l, acc[dv]) to the workspace (an empty
// partition writes m = -inf, l = 0); paged_attention_reduce merges the n_part states of each
// (token, head). n_part and min_chunk are launch constants chosen on the host; the key ranges
// come from q_pos / seq_len in device memory, so a graph captured once stays right as the
// context grows. Modelled on the idea of vLLM's paged_attention_v2 / flash-decoding; our code.
//
// A table entry of RF_NULL_BLOCK (the runtime's NULL_BLOCK) is a block the engine gave back
// behind a sliding window: it only occurs before the first key of every query of its sequence,
// and the key loop skips it rather than read outside the cache.
#include "compat.h"

#define RF_NULL_BLOCK 0xFFFFFFFFu

#define W RF_WARP_SIZE
#define ATT_WARPS 4
#define ATT_GROUPS 2
// Head dims up to 4 * ATT_GROUPS * W: 256 on NVIDIA and RDNA, 512 on CDNA.
#define ATT_MAX_DIM (4 * ATT_GROUPS * W)
// Most partitions paged_attention_reduce merges (the host never asks for more).
#define ATT_MAX_PARTS 64
#define Q8_0_BYTES 34

#define KV_F16 0
#define KV_Q8_0 1
#define KV_FP8 2

// E4M3FN bits -> f32, exact: 0x7F / 0xFF are NaN, no infinities; exponent 0 is subnormal
// (m * 2^-9); otherwise the f32 with exponent e - 7 + 127 and mantissa m << 20.
RF_INLINE float e4m3_to_f32(u32 b) {
    const u32 em = b & 0x7Fu;
    float v;
    if (em == 0x7Fu) {
        v = __int_as_float(0x7FC00000);
    } else if (em < 8u) {
        v = (float)em * 0.001953125f;
    } else {
        v = __int_as_float((int)((em + (120u << 3)) << 20));
    }
    return (b & 0x80u) ? -v : v;
}

// Four consecutive elements of a row, as f32.
template <int KT> RF_INLINE void load4(const u8* __restrict__ row, int e, float scale, float* o) {
    if (KT == KV_F16) {
        const uint2 u = *(const uint2*)(row + 2 * e);  // rows are 8-byte aligned (dim % 4 == 0)
        o[0] = rf_h2f((u16)(u.x & 0xFFFFu));
        o[1] = rf_h2f((u16)(u.x >> 16));
        o[2] = rf_h2f((u16)(u.y & 0xFFFFu));
        o[3] = rf_h2f((u16)(u.y >> 16));
    } else if (KT == KV_FP8) {
        const u32 u = *(const u32*)(row + e);  // rows are 4-byte aligned (dim % 4 == 0)
#pragma unroll
        for (int k = 0; k < 4; ++k) o[k] = e4m3_to_f32((u >> (8 * k)) & 0xFFu) * scale;
    } else {
        const u8* blk = row + (e / 32) * Q8_0_BYTES;
        const u16* h = (const u16*)blk;
        const float d = rf_h2f(h[0]);
        const int w = (e % 32) / 4;
        const u32 qv = (u32)h[1 + 2 * w] | ((u32)h[2 + 2 * w] << 16);
#pragma unroll
        for (int k = 0; k < 4; ++k) o[k] = (float)(i8)(u8)(qv >> (8 * k)) * d;  // ggml: qs[j] * d
    }
}

template <int KT>
__device__ __forceinline__ void attention_body(const float* __restrict__ q, const u8* __restrict__ k_cache,
                                               const u8* __restrict__ v_cache, float* __restrict__ out,
                                               float* __restrict__ ws_ml, float* __restrict__ ws_acc,
                                               const int* __restrict__ q_seq, const int* __restrict__ q_pos,
                                               const int* __restrict__ seq_len, const int* __restrict__ bt_offset,
                                               const u32* __restrict__ block_tables, int n_head, int n_head_kv, int dk, int dv,
                                               int block_size, float qscale, float softcap, int causal, int window,
                                               float k_scale, float v_scale, const float* __restrict__ k_scales,
                                               const float* __restrict__ v_scales, int min_chunk) {
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][ATT_MAX_DIM];
    const int h = blockIdx.x, t = blockIdx.y, part = blockIdx.z, n_part = gridDim.z;
    const int lane = threadIdx.x % W, warp = threadIdx.x / W;
    const int g = h / (n_head / n_head_kv);
    const int s = q_seq[t], pos = q_pos[t];
    int lo = 0, hi = causal ? pos + 1 : seq_len[s];
    if (window > 0) {
        lo = max(0, pos + 1 - window);
        if (!causal) hi = min(hi, pos + window);
    }
    if (n_part > 1) {
        const int chunk = max((hi - lo + n_part - 1) / n_part, min_chunk);
        lo += part * chunk;
        hi = min(hi, lo + chunk);  // lo >= hi: an empty partition
    }
    const u32* bt = block_tables + bt_offset[s];
    // The CPU's kmul / vmul: qscale times this KV head's K scale, and its V scale.
    const float kmul = qscale * (k_scales ? k_scales[g] : k_scale);
    const float vmul = v_scales ? v_scales[g] : v_scale;
    const int rbk = KT == KV_F16 ? 2 * dk : KT == KV_Q8_0 ? dk / 32 * Q8_0_BYTES : dk;
    const int rbv = KT == KV_F16 ? 2 * dv : KT == KV_Q8_0 ? dv / 32 * Q8_0_BYTES : dv;

    // The query, in the form the K dot takes for this cache type.
    float qf[ATT_GROUPS][4];
    int qi[ATT_GROUPS];
    float qd[ATT_GROUPS];
    const float* qh = q + ((size_t)t * n_head + h) * dk;
#pragma unroll
    for (int i = 0; i < ATT_GROUPS; ++i) {
        const int e = 4 * (lane + W * i);
        float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (e < dk) {
            const float4 f = *(const float4*)(qh + e);
            x[0] = f.x;
            x[1] = f.y;
            x[2] = f.z;
            x[3] = f.w;
        }
        qi[i] = 0;
        qd[i] = 0.0f;
        if (KT == KV_Q8_0) {
            // The 8 lanes of a 32-value block (j / 8) agree on its amax; a block is wholly
            // inside or outside dk (dk % 32 == 0), and every lane joins the shuffles.
            float amax = fmaxf(fmaxf(fabsf(x[0]), fabsf(x[1])), fmaxf(fabsf(x[2]), fabsf(x[3])));
            amax = fmaxf(amax, rf_shfl_xor(amax, 4, W));
            amax = fmaxf(amax, rf_shfl_xor(amax, 2, W));
            amax = fmaxf(amax, rf_shfl_xor(amax, 1, W));
            const float d = amax / 127.0f;
            const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
            u32 p = 0;
#pragma unroll
            for (int k = 0; k < 4; ++k) p |= ((u32)(u8)(i8)(int)rintf(x[k] * id)) << (8 * k);
            qi[i] = (int)p;
            qd[i] = rf_h2f(rf_f2h(d));  // the kernel reads the f16 scale back
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) qf[i][k] = KT == KV_F16 ? rf_h2f(rf_f2h(x[k])) : x[k];
    }

    float m = -RF_INF, l = 0.0f;
    float acc[ATT_GROUPS][4];
#pragma unroll
    for (int i = 0; i < ATT_GROUPS; ++i) {
#pragma unroll
        for (int k = 0; k < 4; ++k) acc[i][k] = 0.0f;
    }

    for (int p = lo + warp; p < hi; p += ATT_WARPS) {
        const u32 blk = bt[p / block_size];
        if (blk == RF_NULL_BLOCK) continue;  // given back (see the header); warp-uniform: one p per warp
        const size_t row = ((size_t)blk * block_size + p % block_size) * n_head_kv + g;
        const u8* kr = k_cache + row * rbk;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_GROUPS; ++i) {
            const int j = lane + W * i, e = 4 * j;
            if (4 * W * i >= dk) break;  // the same for every lane: no lane leaves a shuffle
            if (KT == KV_Q8_0) {
                int sumi = 0;
                float dd = 0.0f;
                if (e < dk) {
                    const u16* blk = (const u16*)(kr + (j / 8) * Q8_0_BYTES);
                    const int w = j % 8;
                    const int kv = (int)((u32)blk[1 + 2 * w] | ((u32)blk[2 + 2 * w] << 16));
                    sumi = rf_dp4a(kv, qi[i], 0);
                    dd = rf_h2f(blk[0]) * qd[i];
                }
                sumi += rf_shfl_xor_int(sumi, 4, W);
                sumi += rf_shfl_xor_int(sumi, 2, W);
                sumi += rf_shfl_xor_int(sumi, 1, W);
                if ((lane & 7) == 0) dot += (float)sumi * dd;
            } else if (e < dk) {
                float kf[4];
                load4<KT>(kr, e, 1.0f, kf);
#pragma unroll
                for (int k = 0; k < 4; ++k) dot += qf[i][k] * kf[k];
            }
        }
        float x = warp_sum<W>(dot) * kmul;
        if (softcap > 0.0f) x = softcap * tanhf(x);
        const float m_new = fmaxf(m, x);
        const float corr = expf(m - m_new);  // m = -inf at the first key: exp(-inf) = 0
        const float pw = expf(x - m_new);
        l = l * corr + pw;
        const u8* vr = v_cache + row * rbv;
#pragma unroll
        for (int i = 0; i < ATT_GROUPS; ++i) {
            const int e = 4 * (lane + W * i);
            if (e < dv) {
                float vf[4];
                load4<KT>(vr, e, vmul, vf);
#pragma unroll
                for (int k = 0; k < 4; ++k) acc[i][k] = acc[i][k] * corr + pw * vf[k];
            }
        }
        m = m_new;
    }

    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_GROUPS; ++i) {
        const int e = 4 * (lane + W * i);
        if (e < dv) {
#pragma unroll
            for (int k = 0; k < 4; ++k) s_acc[warp][e + k] = acc[i][k];
        }
    }
    __syncthreads();
    float mm = -RF_INF;
#pragma unroll
    for (int w2 = 0; w2 < ATT_WARPS; ++w2) mm = fmaxf(mm, s_m[w2]);
    float ll = 0.0f, f[ATT_WARPS];
#pragma unroll
    for (int w2 = 0; w2 < ATT_WARPS; ++w2) {
        f[w2] = s_l[w2] > 0.0f ? expf(s_m[w2] - mm) : 0.0f;
        ll += s_l[w2] * f[w2];
    }
    const size_t orow = (size_t)t * n_head + h;
    if (n_part == 1) {
        const float inv = ll > 0.0f ? 1.0f / ll : 0.0f;  // no allowed key: zeros, as the CPU
        float* o = out + orow * dv;
        for (int d = threadIdx.x; d < dv; d += blockDim.x) {
            float v = 0.0f;
#pragma unroll
            for (int w2 = 0; w2 < ATT_WARPS; ++w2) v += s_acc[w2][d] * f[w2];
            o[d] = v * inv;
        }
    } else {
        const size_t pr = orow * n_part + part;
        if (threadIdx.x == 0) {
            ws_ml[2 * pr] = mm;
            ws_ml[2 * pr + 1] = ll;
        }
        float* o = ws_acc + pr * dv;
        for (int d = threadIdx.x; d < dv; d += blockDim.x) {
            float v = 0.0f;
#pragma unroll
            for (int w2 = 0; w2 < ATT_WARPS; ++w2) v += s_acc[w2][d] * f[w2];
            o[d] = v;
        }
    }
}

#define ATT_PARAMS                                                                                                              \
    const float *__restrict__ q, const u8 *__restrict__ k_cache, const u8 *__restrict__ v_cache, float *__restrict__ out,      \
        float *__restrict__ ws_ml, float *__restrict__ ws_acc, const int *__restrict__ q_seq, const int *__restrict__ q_pos,    \
        const int *__restrict__ seq_len, const int *__restrict__ bt_offset, const u32 *__restrict__ block_tables, int n_head,    \
        int n_head_kv, int dk, int dv, int block_size, float qscale, float softcap, int causal, int window, float k_scale,      \
        float v_scale, const float *__restrict__ k_scales, const float *__restrict__ v_scales, int min_chunk
#define ATT_ARGS                                                                                                                 \
    q, k_cache, v_cache, out, ws_ml, ws_acc, q_seq, q_pos, seq_len, bt_offset, block_tables, n_head, n_head_kv, dk, dv,         \
        block_size, qscale, softcap, causal, window, k_scale, v_scale, k_scales, v_scales, min_chunk

// grid (n_head, n_q, n_part), block ATT_WARPS * W threads.
extern "C" __global__ void paged_attention_f16(ATT_PARAMS) { attention_body<KV_F16>(ATT_ARGS); }
extern "C" __global__ void paged_attention_q8_0(ATT_PARAMS) { attention_body<KV_Q8_0>(ATT_ARGS); }
extern "C" __global__ void paged_attention_fp8(ATT_PARAMS) { attention_body<KV_FP8>(ATT_ARGS); }

// Merge the n_part partial states of each (head h = blockIdx.x, token t = blockIdx.y):
// M = max m_p over non-empty partitions, out = sum_p acc_p e^(m_p - M) / sum_p l_p e^(m_p - M)
// (zeros when every partition is empty). block: ATT_WARPS * W threads; n_part <= ATT_MAX_PARTS.
extern "C" __global__ void paged_attention_reduce(const float* __restrict__ ws_ml, const float* __restrict__ ws_acc,
                                                  float* __restrict__ out, int n_head, int dv, int n_part) {
    __shared__ float s_f[ATT_MAX_PARTS];
    __shared__ float s_inv;
    const size_t row = (size_t)blockIdx.y * n_head + blockIdx.x;
    const float* ml = ws_ml + row * n_part * 2;
    if (threadIdx.x < W) {
        float mx = -RF_INF;
        for (int p = threadIdx.x; p < n_part; p += W) {
            if (ml[2 * p + 1] > 0.0f) mx = fmaxf(mx, ml[2 * p]);
        }
        mx = warp_max<W>(mx);
        float sum = 0.0f;
        for (int p = threadIdx.x; p < n_part; p += W) {
            const float fp = ml[2 * p + 1] > 0.0f ? expf(ml[2 * p] - mx) : 0.0f;
            s_f[p] = fp;
            sum += ml[2 * p + 1] * fp;
        }
        sum = warp_sum<W>(sum);
        if (threadIdx.x == 0) s_inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    }
    __syncthreads();
    const float* acc = ws_acc + row * n_part * dv;
    for (int d = threadIdx.x; d < dv; d += blockDim.x) {
        float v = 0.0f;
        for (int p = 0; p < n_part; ++p) v += acc[(size_t)p * dv + d] * s_f[p];
        out[row * dv + d] = v * s_inv;
    }
}
