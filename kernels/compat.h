// compat.h: the one header every kernel includes. It lets the CUDA-dialect sources of kernels/
// compile unchanged with NVRTC / nvcc (NVIDIA) and hipRTC / hipcc (AMD), with no other header:
// NVRTC is given no include path, so fixed-width types, f16 conversion, warp shuffles and the
// 4-way int8 dot product are all defined here, per vendor.
//
// Invariants:
// - RF_WARP_SIZE is the hardware warp (wavefront) size. The host passes it (-DRF_WARP_SIZE=..)
//   from the device's warp-size attribute: 64 on CDNA (gfx9), 32 on RDNA and NVIDIA. Kernels
//   use it as a template argument (warp_sum<RF_WARP_SIZE>), never a literal 32.
// - Shuffles use the full-warp mask on CUDA; HIP's __shfl_xor has no mask (and its *_sync
//   variants do not exist before ROCm 6.2).
// Modelled on the idea of llama.cpp's ggml-cuda/vendors/hip.h (a header that maps one dialect
// onto the other); written for ROCmForge.
#pragma once

#if defined(__HIPCC__) || defined(__HIPCC_RTC__) || defined(__HIP_DEVICE_COMPILE__) || defined(__HIP_PLATFORM_AMD__)
#define RF_HIP 1
#endif

#ifndef RF_WARP_SIZE
#if defined(RF_HIP) && defined(__AMDGCN_WAVEFRONT_SIZE)
#define RF_WARP_SIZE __AMDGCN_WAVEFRONT_SIZE
#else
#define RF_WARP_SIZE 32
#endif
#endif

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

#define RF_INLINE __device__ __forceinline__
// Neither compiler defines INFINITY without <math.h>, which NVRTC cannot include.
#define RF_INF __int_as_float(0x7f800000)

// ---------------------------------------------------------------------------- warp primitives

RF_INLINE float rf_shfl_xor(float v, int lane_mask, int width) {
#ifdef RF_HIP
    return __shfl_xor(v, lane_mask, width);
#else
    return __shfl_xor_sync(0xffffffffu, v, lane_mask, width);
#endif
}

RF_INLINE int rf_shfl_xor_int(int v, int lane_mask, int width) {
#ifdef RF_HIP
    return __shfl_xor(v, lane_mask, width);
#else
    return __shfl_xor_sync(0xffffffffu, v, lane_mask, width);
#endif
}

template <int W> RF_INLINE float warp_sum(float v) {
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) v += rf_shfl_xor(v, o, W);
    return v;
}

template <int W> RF_INLINE float warp_max(float v) {
#pragma unroll
    for (int o = W / 2; o > 0; o >>= 1) v = fmaxf(v, rf_shfl_xor(v, o, W));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of W, at most 1024 threads); every thread gets
// the result. `scratch` holds at least 1024 / W floats.
template <int W> __device__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % W, warp = threadIdx.x / W, n_warps = blockDim.x / W;
    v = warp_sum<W>(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum<W>(t);
}

// ---------------------------------------------------------------------------- f16 bits

#ifdef RF_HIP
RF_INLINE float rf_h2f(u16 h) {
    _Float16 x;
    __builtin_memcpy(&x, &h, 2);
    return (float)x;
}
RF_INLINE u16 rf_f2h(float f) {
    _Float16 x = (_Float16)f;  // round to nearest even
    u16 h;
    __builtin_memcpy(&h, &x, 2);
    return h;
}
#else
RF_INLINE float rf_h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
RF_INLINE u16 rf_f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

// ---------------------------------------------------------------------------- int8 dot

// c + sum of the four signed byte products of a and b.
RF_INLINE int rf_dp4a(int a, int b, int c) {
#ifdef RF_HIP
#if defined(__gfx906__) || defined(__gfx908__) || defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || \
    defined(__gfx942__) || defined(__gfx950__) || defined(__gfx1011__) || defined(__gfx1012__) || defined(__gfx1030__) ||  \
    defined(__gfx1031__) || defined(__gfx1032__) || defined(__gfx1034__) || defined(__gfx1035__) || defined(__gfx1036__)
    return __builtin_amdgcn_sdot4(a, b, c, false);
#elif defined(__gfx1100__) || defined(__gfx1101__) || defined(__gfx1102__) || defined(__gfx1103__) || defined(__gfx1150__) || \
    defined(__gfx1151__) || defined(__gfx1200__) || defined(__gfx1201__)
    return __builtin_amdgcn_sudot4(true, a, true, b, c, false);
#else
    const i8* x = (const i8*)&a;
    const i8* y = (const i8*)&b;
    return c + x[0] * y[0] + x[1] * y[1] + x[2] * y[2] + x[3] * y[3];
#endif
#else
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
#endif
}

// IQ4_NL / IQ4_XS: the 16 int8 values a 4-bit code stands for (GGUF's kvalues_iq4nl), packed
// little-endian four to a word for rf_lut16. host/gpu/src/repack.rs checks these four lines
// against rocmforge_quant::KVALUES_IQ4NL.
#define RF_IQ4NL_T0 0xBFAD9881u
#define RF_IQ4NL_T1 0xF6EADDCFu
#define RF_IQ4NL_T2 0x26190D01u
#define RF_IQ4NL_T3 0x71594535u

// Four lookups in a 16-byte table at once: byte i of the result is table byte (byte i of idx),
// for indices 0..15 in every byte of idx, the table in four words t0..t3 (bytes 0-3, 4-7, 8-11,
// 12-15). Two byte permutes pick from the low and the high half; the index's bit 3 chooses
// between them per byte. (CUDA's prmt takes four 4-bit selectors; AMD's v_perm_b32 one byte
// per selector and numbers the bytes of its second operand first.)
RF_INLINE int rf_lut16(u32 idx, u32 t0, u32 t1, u32 t2, u32 t3) {
    const u32 hi = ((idx >> 3) & 0x01010101u) * 0xFFu;  // 0xFF in the bytes whose index is >= 8
#ifdef RF_HIP
#if __has_builtin(__builtin_amdgcn_perm)
    const u32 sel = idx & 0x07070707u;
    const u32 lo8 = __builtin_amdgcn_perm(t1, t0, sel), hi8 = __builtin_amdgcn_perm(t3, t2, sel);
#else
    u32 lo8 = 0, hi8 = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 j = (idx >> (8 * i)) & 7u, sh = 8 * (j & 3u);
        lo8 |= (((j < 4 ? t0 : t1) >> sh) & 0xFFu) << (8 * i);
        hi8 |= (((j < 4 ? t2 : t3) >> sh) & 0xFFu) << (8 * i);
    }
#endif
#else
    const u32 sel = (idx & 0x7u) | ((idx >> 4) & 0x70u) | ((idx >> 8) & 0x700u) | ((idx >> 12) & 0x7000u);
    const u32 lo8 = __byte_perm(t0, t1, sel), hi8 = __byte_perm(t2, t3, sel);
#endif
    return (int)((lo8 & ~hi) | (hi8 & hi));
}

// IQ4_NL values of the four 4-bit codes in the bytes of idx (each 0..15), as four int8 bytes.
RF_INLINE int rf_iq4nl4(u32 idx) { return rf_lut16(idx, RF_IQ4NL_T0, RF_IQ4NL_T1, RF_IQ4NL_T2, RF_IQ4NL_T3); }

// bf16 bits to f32 (exact: bf16 is the top half of an f32).
RF_INLINE float rf_bf2f(u32 h) { return __int_as_float((int)(h << 16)); }

// Bytewise a - 32 for bytes in 0..63 (no borrow crosses a byte: see mmv.cu, Q6_K).
RF_INLINE int rf_sub32_bytes(int a) { return (int)((((u32)a | 0x80808080u) - 0x20202020u) ^ 0x80808080u); }

// Spread the low 4 bits of `bits` into bit 0 of each of the 4 bytes.
RF_INLINE int rf_spread4(u32 bits) { return (int)(((bits & 0xFu) * 0x00204081u) & 0x01010101u); }

// ---------------------------------------------------------------------------- weight loads

// One 16-byte load of weights that are read once per step (matrix-vector products). The knob
// RF_MMV_WLOAD picks the cache policy, so the GEMV benchmark can measure each on the card:
//   0: plain load (default);
//   1: streaming (`ld.global.cs`: evict first), leaving L1/L2 to the activations every row reads;
//   2: read-only path without L1 allocation (`ld.global.nc.L1::no_allocate`).
// HIP takes the plain load for every value (its nontemporal builtins differ across ROCm versions).
#ifndef RF_MMV_WLOAD
#define RF_MMV_WLOAD 0
#endif
RF_INLINE uint4 rf_ldw16(const uint4* p) {
#if defined(RF_HIP) || RF_MMV_WLOAD == 0
    return *p;
#elif RF_MMV_WLOAD == 1
    uint4 v;
    asm("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
#else
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
#endif
}
