// llama-tq: ktq / vtq blocks to f16 or f32, eight consecutive values per thread: the conversion of K and V that
// upstream's tensor-core flash attention reads in a prefill (the whole cache, every ubatch and layer), and the
// contiguous to-f16 / to-f32 converters. Device code only: included by tq-cuda.cu (the launch) and by
// tests/cuda_emu/encode_emu.cpp, which runs it on a CPU and compares every value with the CPU reference decoder.
//
// A thread reads its values' stream bits once (tq_fa_vcodes: whole 16-bit words), decodes them from a
// bank-spread copy of the table in shared memory and writes them with one 16-byte store (f16) or two (f32); the
// values are those of tq_cuda_dequant1 (d * table[window], outlier slots in slot order, the later one winning),
// rounded to f16 by the same conversion.
#pragma once

#include "common.cuh"
#include "tq-cuda-bits.cuh"

#include <cstdint>

#define TQ_DQ_THREADS 256

static __device__ __forceinline__ void tq_dq_store8(half * y, const float (&v)[8]) {
    *(uint4 *) y = make_uint4(tq_fa_h2(v[0], v[1]), tq_fa_h2(v[2], v[3]), tq_fa_h2(v[4], v[5]), tq_fa_h2(v[6], v[7]));
}

static __device__ __forceinline__ void tq_dq_store8(float * y, const float (&v)[8]) {
    ((float4 *) y)[0] = make_float4(v[0], v[1], v[2], v[3]);
    ((float4 *) y)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// n8 groups of 8 values: group i8 is values 8 (i8 % 8) .. + 7 of block i8 / 8 of x (contiguous blocks); y: 8 n8
// values, 16-byte aligned
template <ggml_type type, typename dst_t>
static __global__ void __launch_bounds__(TQ_DQ_THREADS) tq_k_dequant8(const uint8_t * __restrict__ x,
                                                                       dst_t * __restrict__ y, const int64_t n8,
                                                                       const tq_cuda_tab<type> tab) {
    using F           = tq_cuda_fmt<type>;
    using VC          = tq_fa_vcodes<type, 8>;
    constexpr int REP = tq_fa_vrep<type>();

    __shared__ __align__(16) float s_tab[F::ntab * REP];
    tq_fa_fill_vtab<type, TQ_DQ_THREADS>(s_tab, tab);
    __syncthreads();
    const uint32_t rep = (uint32_t) (threadIdx.x % REP) * 4;

    const int64_t stride = (int64_t) gridDim.x * blockDim.x;
    for (int64_t i8 = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i8 < n8; i8 += stride) {
        const uint8_t * blk = x + (i8 >> 3) * F::bs;
        const int       j0  = (int) (i8 & 7) * 8;
        const float     d   = __half2float(*(const half *) blk);
        const typename VC::word_t w = VC::load(blk, j0);
        float v[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            v[e] = d * tq_fa_vtab_at<type>(s_tab, (uint32_t) (w >> (F::b * e)), rep);
        }
        if constexpr (F::n_out > 0) {
            const uint8_t * op = blk + 2 + 2 * F::n_out;
#pragma unroll
            for (int s = 0; s < F::n_out; ++s) {  // in slot order: a later slot wins
                const int   j  = (op[s] & (QK_TQ - 1)) - j0;
                const float ov = __half2float(((const half *) (blk + 2))[s]);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    v[e] = e == j ? ov : v[e];
                }
            }
        }
        tq_dq_store8(y + 8 * i8, v);
    }
}
