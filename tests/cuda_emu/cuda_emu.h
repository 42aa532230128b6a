// llama-tq: host emulation of the CUDA features that the flash-attention decode kernel
// (src/ggml-tq/cuda/tq-fattn-impl.cuh) and the encoders (tq-encode-impl.cuh) use, so that their real source
// compiles with a C++ compiler and runs on an x86-64 CPU (tests/cuda_emu/test_fattn_emu.py and
// test_encode_emu.py build it; fattn_emu.cpp and encode_emu.cpp are the tests).
//
// What is emulated:
//   - a thread block of up to EMU_MAX_THREADS threads: every thread (a "lane") is a coroutine with its own
//     stack, run one at a time on one CPU thread; the blocks of a grid run one after another;
//   - __syncwarp() and __syncthreads() as real barriers: a lane stops there until every lane of its warp (of
//     its block) has arrived. A barrier that cannot complete (a lane finished, or waits at another barrier)
//     is reported as an error: CUDA leaves it undefined;
//   - __shfl_xor_sync() and __shfl_sync() as an exchange through a buffer between two warp barriers, with
//     CUDA's rule for a width below 32 (a lane of a later group gives the caller its own value);
//   - __shared__ variables as function-local statics: one copy, shared by the lanes of the running block;
//   - __any_sync() as a vote through the same buffer;
//   - cp.async (copies to shared memory, in commit groups): landing when the lane waits for the group, or eagerly
//     when issued (emu_set_cp_eager);
//   - the tensor-core mma of the decode kernel's second form: its own shuffle-based path (TQ_CUDA_EMU);
//   - __half, float2, uint2, uint4, float4 and the few intrinsics the kernels call (__expf is expf,
//     __funnelshift_r, __byte_perm, __float2half_rn rounds to nearest even, __fmul_rn / __fadd_rn are plain
//     float operations: the build does not contract).
// Lanes switch only at barriers, in an order the caller picks (forward, backward, or shuffled in every
// round): a missing barrier shows up as a lane reading shared memory that another lane has not written yet,
// or has already overwritten. Forward and backward order together expose any such pair of lanes.
//
// What it cannot show: real warp scheduling and timing; the GPU memory model beyond barriers (fences,
// visibility without a barrier, atomics, caching); in particular a shuffle synchronizes the lanes here, so a
// missing __syncwarp goes unseen when a shuffle stands between the accesses it should order (CUDA does not
// promise that a shuffle orders shared memory); bank conflicts, register spills, occupancy, launch bounds;
// misaligned accesses (x86 forgives them) and out-of-bounds reads other than past the end of a buffer that
// the harness guards with a page; the accuracy of fast-math intrinsics (__expf is computed as expf) and of
// nvcc's contraction of a * b + c into one fma.
#pragma once

#if !defined(__x86_64__)
#error "cuda_emu: the lane coroutines switch stacks with x86-64 assembly"
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline
#define __restrict__    __restrict
#define __shared__      static
#define __align__(n)    __attribute__((aligned(n)))
#define __launch_bounds__(...)

#define WARP_SIZE       32
#define TQ_CUDA_EMU     1  // the kernels' own emulated paths (tq_fa_mma, tq_fa_h2)
#define EMU_MAX_THREADS 256

struct emu_dim3 {
    unsigned x, y, z;
};

extern emu_dim3 threadIdx;
extern emu_dim3 blockIdx;
extern emu_dim3 blockDim;  // set by emu_run_block
extern emu_dim3 gridDim;   // set by the caller (grid-stride loops)

enum emu_order {
    EMU_ORDER_FORWARD,   // lane 0 first in every round
    EMU_ORDER_BACKWARD,  // the last lane first
    EMU_ORDER_SHUFFLED,  // a new random permutation in every round
    EMU_ORDER_WARPS,     // only the last warp with a lane that can run, in every round: warps drift apart (a warp
                         // runs ahead until a block barrier or a lane of another warp stops it)
};

// the order in which lanes run between barriers (seed: for EMU_ORDER_SHUFFLED)
void emu_set_order(emu_order order, uint64_t seed);

// "forward", "backward" or "shuffled" -> *order; false for any other name
bool emu_order_from_name(const char * name, emu_order * order);

// runs body() as n_threads lanes (a multiple of 32, at most EMU_MAX_THREADS) until all of them return;
// threadIdx.x is the running lane, blockIdx is left as the caller set it
void emu_run_block(int n_threads, const std::function<void()> & body);

void     emu_warp_sync();
void     emu_block_sync();
uint64_t emu_shfl(uint64_t bits, int src_lane);  // the bits that lane src_lane of the warp passes
bool     emu_any(bool pred);                     // some lane of the warp passes true
void     emu_fatal(const char * msg);
// cp.async: a copy of n bytes (n zeros if !ok) that lands only when the lane waits for its group (a missing wait or
// commit shows up as stale shared memory) or, eager, as soon as it is issued (a copy into memory that other lanes
// still read, without a barrier in between, shows up): the two ends of what the hardware may do
void     emu_set_cp_eager(bool eager);
void     emu_cp_async(void * dst, const void * src, int n, bool ok);
void     emu_cp_async_commit();
void     emu_cp_async_wait(int n_in_flight);

static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) {
        emu_fatal("__syncwarp: only the full mask is emulated");
    }
    emu_warp_sync();
}

static inline void __syncthreads() {
    emu_block_sync();
}

template <typename T>
static inline T __shfl_sync(unsigned mask, T var, int src_lane) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of more than 8 bytes");
    if (mask != 0xffffffffu) {
        emu_fatal("__shfl_sync: only the full mask is emulated");
    }
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof(T));
    bits = emu_shfl(bits, src_lane & (WARP_SIZE - 1));
    T res;
    memcpy(&res, &bits, sizeof(T));
    return res;
}

template <typename T>
static inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = WARP_SIZE) {
    const int lane = (int) threadIdx.x % WARP_SIZE;
    int       src  = lane ^ lane_mask;
    if (src >= (lane / width + 1) * width) {
        src = lane;
    }
    return __shfl_sync(mask, var, src);
}

static inline bool __any_sync(unsigned mask, bool pred) {
    if (mask != 0xffffffffu) {
        emu_fatal("__any_sync: only the full mask is emulated");
    }
    return emu_any(pred);
}

// as ggml-cuda's common.cuh
template <int width = WARP_SIZE>
static inline float warp_reduce_sum(float x) {
    for (int offset = width / 2; offset > 0; offset >>= 1) {
        x += __shfl_xor_sync(0xffffffffu, x, offset, width);
    }
    return x;
}

template <int width = WARP_SIZE>
static inline float warp_reduce_max(float x) {
    for (int offset = width / 2; offset > 0; offset >>= 1) {
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset, width));
    }
    return x;
}

static inline float get_alibi_slope(const float max_bias, const uint32_t h, const uint32_t n_head_log2,
                                    const float m0, const float m1) {
    if (max_bias <= 0.0f) {
        return 1.0f;
    }
    const float base = h < n_head_log2 ? m0 : m1;
    const int   exph = h < n_head_log2 ? h + 1 : 2 * (h - n_head_log2) + 1;
    return powf(base, exph);
}

// ---- types and intrinsics ----

struct __half {
    uint16_t x;
};
typedef __half half;

static inline float __half2float(const __half h) {
    const uint32_t sign = h.x >> 15;
    const int      exp  = (h.x >> 10) & 31;
    const uint32_t man  = h.x & 1023;
    float          f;
    if (exp == 0) {
        f = ldexpf((float) man, -24);
    } else if (exp == 31) {
        f = man ? NAN : INFINITY;
    } else {
        f = ldexpf((float) (man | 1024), exp - 25);
    }
    return sign ? -f : f;
}

static inline __half __ushort_as_half(const unsigned short u) {
    return __half{ u };
}

static inline unsigned short __half_as_ushort(const __half h) {
    return h.x;
}

// float -> half, round to nearest even (CUDA's __float2half_rn): NaN stays NaN, >= 65520 in magnitude is Inf
static inline __half __float2half_rn(const float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    const uint16_t sign = (uint16_t) ((x >> 16) & 0x8000u);
    const uint32_t ax   = x & 0x7fffffffu;
    if (ax > 0x7f800000u) {
        return __half{ (uint16_t) (sign | 0x7e00u) };
    }
    if (ax >= 0x477ff000u) {  // 65520: the tie between 65504 and 65536 goes to even, i.e. overflows
        return __half{ (uint16_t) (sign | 0x7c00u) };
    }
    if (ax < 0x38800000u) {  // below 2^-14: a subnormal half (or zero), in steps of 2^-24; the scaling is exact
        return __half{ (uint16_t) (sign | (uint16_t) nearbyintf(fabsf(f) * 16777216.0f)) };
    }
    uint32_t       h   = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) {
        ++h;  // a carry out of the mantissa moves the exponent up, as it should
    }
    return __half{ (uint16_t) (sign | h) };
}

// float products and sums rounded once each (the host build never contracts them: -ffp-contract=off)
static inline float __fmul_rn(const float a, const float b) {
    return a * b;
}

static inline float __fadd_rn(const float a, const float b) {
    return a + b;
}

struct alignas(8) float2 {
    float x, y;
};

static inline float2 make_float2(const float x, const float y) {
    return float2{ x, y };
}

struct alignas(8) uint2 {
    uint32_t x, y;
};

struct alignas(16) uint4 {
    uint32_t x, y, z, w;
};

static inline uint4 make_uint4(const uint32_t x, const uint32_t y, const uint32_t z, const uint32_t w) {
    return uint4{ x, y, z, w };
}

struct alignas(16) float4 {
    float x, y, z, w;
};

static inline float4 make_float4(const float x, const float y, const float z, const float w) {
    return float4{ x, y, z, w };
}

#define __expf(x) expf(x)  // a macro: glibc declares a __expf of its own

static inline uint32_t __funnelshift_r(const uint32_t lo, const uint32_t hi, const uint32_t shift) {
    return (uint32_t) ((((uint64_t) hi << 32) | lo) >> (shift & 31));
}

// byte s of the result = byte (selector nibble s of sel, low 3 bits) of the 8 bytes y:x (CUDA's __byte_perm
// without the sign-replicate mode, which the kernels never ask for)
static inline uint32_t __byte_perm(const uint32_t x, const uint32_t y, const uint32_t sel) {
    const uint64_t b = ((uint64_t) y << 32) | x;
    uint32_t       r = 0;
    for (int i = 0; i < 4; ++i) {
        r |= (uint32_t) ((b >> (8 * ((sel >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    }
    return r;
}

// thread blocks run one after the other and lanes switch only at barriers: an atomic is a plain read-modify-write,
// a fence orders nothing that is not already in order
static inline unsigned atomicAdd(unsigned * p, const unsigned v) {
    const unsigned old = *p;
    *p                 = old + v;
    return old;
}

static inline unsigned atomicOr(unsigned * p, const unsigned v) {
    const unsigned old = *p;
    *p                 = old | v;
    return old;
}

static inline void __threadfence() {}

// IEEE round-to-nearest division (what nvcc's __fdiv_rn gives whatever -prec-div says)
static inline float __fdiv_rn(const float a, const float b) {
    return a / b;
}

using std::isfinite;
using std::max;
using std::min;
