// attention.cu: paged attention over the f16 KV cache, for decode (one query token per
// sequence, many sequences) and prefill chunks (many query tokens of one or more sequences) in
// one kernel: every query token carries its sequence and its position.
//
// Cache layout of one layer (the host passes the layer's base pointers), as rocmforge_cpu::KvCache:
//   k[block][slot][head_kv][dk], v[block][slot][head_kv][dv]   (f16 bits)
// Position p of sequence s lives in block block_tables[bt_offset[s] + p / block_size], slot
// p % block_size.
//
// For query token t (sequence q_seq[t], position q_pos[t]) and head h (KV head h / (n_head /
// n_head_kv)): keys lo..hi with hi = q_pos + 1 (causal) or seq_len[s] (not causal), lo = 0 or, with
// a sliding window w, q_pos + 1 - w (and hi <= q_pos + w when not causal); logits
// scale * q.k, then softcap * tanh(logit / softcap) when softcap > 0; softmax; sum of p * v.
// q is rounded to f16 first, as llama.cpp (and the CPU backend) do with an f16 cache.
//
// One block of 4 warps per (head, query token); warp w takes keys lo + w, lo + w + 4, ... with an
// online softmax (running max m, sum l, accumulator over v); lanes split the head dimension
// (lane + W * i); the four partial states are merged through shared memory at the end.
// Split-KV ("flash decoding") for long contexts is not done yet.
#include "compat.h"

#define W RF_WARP_SIZE
#define ATT_WARPS 4
// Head dimensions up to MAX_PER_LANE * W (256 on NVIDIA and RDNA, 512 on CDNA).
#define MAX_PER_LANE 8

extern "C" __global__ void paged_attention_f16(const float* __restrict__ q, const u16* __restrict__ k_cache, const u16* __restrict__ v_cache,
                        float* __restrict__ out, const int* __restrict__ q_seq, const int* __restrict__ q_pos,
                        const int* __restrict__ seq_len, const int* __restrict__ bt_offset, const u32* __restrict__ block_tables,
                        int n_head, int n_head_kv, int dk, int dv, int block_size, float scale, float softcap, int causal,
                        int window) {
    __shared__ float s_m[ATT_WARPS], s_l[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][MAX_PER_LANE * W];
    const int h = blockIdx.x, t = blockIdx.y;
    const int lane = threadIdx.x % W, warp = threadIdx.x / W;
    const int g = h / (n_head / n_head_kv);
    const int s = q_seq[t], pos = q_pos[t];
    int lo = 0, hi = causal ? pos + 1 : seq_len[s];
    if (window > 0) {
        lo = max(0, pos + 1 - window);
        if (!causal) hi = min(hi, pos + window);
    }
    const u32* bt = block_tables + bt_offset[s];

    float qr[MAX_PER_LANE];
    const float* qh = q + ((size_t)t * n_head + h) * dk;
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i) {
        const int d = lane + W * i;
        qr[i] = d < dk ? rf_h2f(rf_f2h(qh[d])) : 0.0f;
    }
    float m = -RF_INF, l = 0.0f;
    float acc[MAX_PER_LANE];
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i) acc[i] = 0.0f;

    for (int p = lo + warp; p < hi; p += ATT_WARPS) {
        const size_t slot = (size_t)bt[p / block_size] * block_size + p % block_size;
        const u16* kr = k_cache + (slot * n_head_kv + g) * dk;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < MAX_PER_LANE; ++i) {
            const int d = lane + W * i;
            if (d < dk) dot += qr[i] * rf_h2f(kr[d]);
        }
        float x = warp_sum<W>(dot) * scale;
        if (softcap > 0.0f) x = softcap * tanhf(x / softcap);
        const float m_new = fmaxf(m, x);
        const float corr = expf(m - m_new);  // m = -inf at the first key: exp(-inf) = 0
        const float pw = expf(x - m_new);
        l = l * corr + pw;
        const u16* vr = v_cache + (slot * n_head_kv + g) * dv;
#pragma unroll
        for (int i = 0; i < MAX_PER_LANE; ++i) {
            const int d = lane + W * i;
            if (d < dv) acc[i] = acc[i] * corr + pw * rf_h2f(vr[d]);
        }
        m = m_new;
    }

    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < MAX_PER_LANE; ++i) {
        const int d = lane + W * i;
        if (d < dv) s_acc[warp][d] = acc[i];
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
    const float inv = ll > 0.0f ? 1.0f / ll : 0.0f;  // no allowed key: zeros, as the CPU
    float* o = out + ((size_t)t * n_head + h) * dv;
    for (int d = threadIdx.x; d < dv; d += blockDim.x) {
        float v = 0.0f;
#pragma unroll
        for (int w2 = 0; w2 < ATT_WARPS; ++w2) v += s_acc[w2][d] * f[w2];
        o[d] = v * inv;
    }
}
