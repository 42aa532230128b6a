// llama-tq: stands for ggml-cuda's common.cuh when the CUDA decode kernel is compiled for the host emulation
// (tests/cuda_emu): the real src/ggml-tq/cuda/tq-fattn.cuh includes "common.cuh" and finds this one, which
// gives what the kernel takes from ggml-cuda (the emulated CUDA features, the primary template of the type
// traits, the declared host types) and then, as the patched common.cuh does, tq-cuda-common.cuh.
#pragma once

#include "cuda_emu.h"
#include "ggml.h"

template <ggml_type type>
struct ggml_cuda_type_traits;

typedef struct emu_stream * cudaStream_t;
struct ggml_backend_cuda_context;

// programmatic dependent launch: one grid at a time here, so nothing to wait for
#define GGML_CUDA_RESTRICT __restrict__
static inline void ggml_cuda_pdl_sync() {}
static inline void ggml_cuda_pdl_lc() {}

// division by a constant as a multiply-high and a shift (ggml-cuda's init_fastdiv_values / fastdiv / fastmodulo /
// fast_div_modulo, which tq-cuda-loc.cuh uses), written here from the method (Granlund and Montgomery): for a
// divisor d, L = ceil(log2 d) and mp = floor(2^32 (2^L - d) / d) + 1, n / d = (umulhi(n, mp) + n) >> L for
// n < 2^31; a value of <mp, L, d>
struct uint3 {
    uint32_t x, y, z;
};

static inline uint2 make_uint2(const uint32_t x, const uint32_t y) {
    return uint2{ x, y };
}

static inline uint32_t __umulhi(const uint32_t a, const uint32_t b) {
    return (uint32_t) (((uint64_t) a * b) >> 32);
}

static inline uint3 init_fastdiv_values(const uint64_t d) {
    if (d == 0 || d > (uint64_t{ 1 } << 31)) {
        fprintf(stderr, "init_fastdiv_values: divisor %llu out of range\n", (unsigned long long) d);
        abort();
    }
    uint32_t L = 0;
    while (L < 32 && (uint64_t{ 1 } << L) < d) {
        ++L;
    }
    const uint32_t mp = (uint32_t) (((uint64_t{ 1 } << 32) * ((uint64_t{ 1 } << L) - d)) / d + 1);
    return uint3{ mp, L, (uint32_t) d };
}

static inline uint32_t fastdiv(const uint32_t n, const uint3 v) {
    return (__umulhi(n, v.x) + n) >> v.y;
}

static inline uint32_t fastmodulo(const uint32_t n, const uint3 v) {
    return n - fastdiv(n, v) * v.z;
}

static inline uint2 fast_div_modulo(const uint32_t n, const uint3 v) {
    const uint32_t q = fastdiv(n, v);
    return make_uint2(q, n - q * v.z);
}

#include "tq-cuda-common.cuh"
