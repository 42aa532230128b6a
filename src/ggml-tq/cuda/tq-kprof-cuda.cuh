// llama-tq: the ktqp2 / ktqp3 K cache types on CUDA (format: src/ggml-tq/tq-kprof.h, docs/formats.md "K: ktqp2 /
// ktqp3"). The kernels' device code and the host-side layout of the table's copy: included by tq-cuda.cu (the
// launches and the upload) and by tests/cuda_emu/encode_emu.cpp, which runs them on a CPU against the CPU reference.
//
// A block's meaning depends on the process-wide profile table of its width (tq_kprof_active), which llama sets
// from LLAMA_TQ_K_PROFILES at context creation. tq-cuda.cu keeps a copy of it in device memory per device and
// width (tq_cuda_kprof_table), refreshed when tq_kprof_active_generation changes, and passes the pointers below.
//
// The encoder follows tq_kprof_quantize_block: non-finite inputs as 0, every profile's squared error summed in
// the profile's eval_order with the same float operations (tq-cuda.cu is built with -fmad=false; the division is
// IEEE's, __fdiv_rn), the least error wins, the lowest index on a tie, an infinite error never (all infinite:
// profile 0). One thread block of TQ_KPROF_THREADS per block: each thread scores whole profiles (so every sum
// keeps the CPU's order), shuffles and shared memory pick the winner.
#pragma once

#include "tq-kprof.h"

#include <cstdint>
#include <cstring>

// the device copy of a tq_kprof_table: [n_profiles][QK_TQ] arrays, levels / thresholds [bits][64]
struct tq_cuda_kprof {
    const uint8_t *  bits;
    const float *    scale;
    const uint16_t * pos;    // bit position of coordinate j's code in the block (where bits > 0)
    const uint8_t *  order;  // eval_order
    const float *    levels;
    const float *    thr;
    int              n_profiles;
    int              index_bits;
    int              block_bytes;
};

#define TQ_KPROF_THREADS 128  // threads per thread block of the encoder (one block each)

// host: the copy's layout (room for TQ_KPROF_MAX_PROFILES profiles, so that its size never changes)
struct tq_cuda_kprof_layout {
    static constexpr size_t P        = TQ_KPROF_MAX_PROFILES;
    static constexpr size_t NB       = TQ_KPROF_MAX_BITS + 1;
    static constexpr size_t o_bits   = 0;
    static constexpr size_t o_scale  = o_bits + P * QK_TQ;
    static constexpr size_t o_pos    = o_scale + P * QK_TQ * sizeof(float);
    static constexpr size_t o_order  = o_pos + P * QK_TQ * sizeof(uint16_t);
    static constexpr size_t o_levels = o_order + P * QK_TQ;
    static constexpr size_t o_thr    = o_levels + NB * 64 * sizeof(float);
    static constexpr size_t bytes    = o_thr + NB * 64 * sizeof(float);
};

// host: t flattened into h (tq_cuda_kprof_layout::bytes, zeroed by the caller)
static inline void tq_cuda_kprof_flatten(const tq_kprof_table * t, char * h) {
    using L = tq_cuda_kprof_layout;
    for (int p = 0; p < t->n_profiles; ++p) {
        memcpy(h + L::o_bits + p * QK_TQ, t->bits[p], QK_TQ);
        memcpy(h + L::o_scale + p * QK_TQ * sizeof(float), t->scale[p], QK_TQ * sizeof(float));
        memcpy(h + L::o_order + p * QK_TQ, t->eval_order[p], QK_TQ);
        uint16_t * pos = (uint16_t *) (h + L::o_pos) + p * QK_TQ;
        for (int k = 0; k < t->n_active[p]; ++k) {
            pos[t->active[p][k]] = t->code_pos[p][k];
        }
    }
    for (size_t b = 0; b < L::NB; ++b) {
        memcpy(h + L::o_levels + b * 64 * sizeof(float), t->levels[b], 64 * sizeof(float));
        memcpy(h + L::o_thr + b * 64 * sizeof(float), t->thresholds[b], 64 * sizeof(float));
    }
}

// host: the kernel argument for a flattened copy of t at base (device memory, or host memory in the emulation)
static inline tq_cuda_kprof tq_cuda_kprof_view(const char * base, const tq_kprof_table * t) {
    using L = tq_cuda_kprof_layout;
    return { (const uint8_t *) (base + L::o_bits),   (const float *) (base + L::o_scale),
             (const uint16_t *) (base + L::o_pos),   (const uint8_t *) (base + L::o_order),
             (const float *) (base + L::o_levels),   (const float *) (base + L::o_thr),
             t->n_profiles, t->index_bits, t->block_bits / 8 };
}

// nearest level of v in the b-bit codebook: the number of midpoints at or below v (tq-kprof.c's kprof_code)
static __device__ __forceinline__ unsigned tq_kprof_code(const tq_cuda_kprof & T, const int b, const float v) {
    const float * thr = T.thr + b * 64;
    unsigned      lo  = 0;
    unsigned      hi  = (1u << b) - 1u;
    while (lo < hi) {
        const unsigned mid = (lo + hi) >> 1;
        if (v >= thr[mid]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// the squared error of the block xs under profile p, in eval_order (tq-kprof.c's kprof_error without the early stop)
static __device__ __forceinline__ float tq_kprof_error(const tq_cuda_kprof & T, const float * xs, const int p) {
    const uint8_t * order = T.order + p * QK_TQ;
    const uint8_t * bits  = T.bits + p * QK_TQ;
    const float *   scale = T.scale + p * QK_TQ;
    float           e     = 0.0f;
    for (int i = 0; i < QK_TQ; ++i) {
        const int j = order[i];
        const int b = bits[j];
        float     d = xs[j];
        if (b) {
            const float s = scale[j];
            d -= s * T.levels[b * 64 + tq_kprof_code(T, b, __fdiv_rn(xs[j], s))];
        }
        e += d * d;
    }
    return e;
}

// (e, p) better than (best_e, best): less error, the lower index on a tie (an infinite error is never better)
static __device__ __forceinline__ void tq_kprof_better(float & best_e, int & best, const float e, const int p) {
    if (e < best_e || (e == best_e && p < best)) {
        best_e = e;
        best   = p;
    }
}

// block ib of the locator, by the TQ_KPROF_THREADS threads of the thread block: thread t scores profiles t,
// t + TQ_KPROF_THREADS, ..., then the warps' and the block's reductions pick the winner and threads 0..63 OR its
// codes into the block's words in shared memory
template <class Loc>
static __device__ __forceinline__ void tq_kprof_encode_block(const Loc & loc, const tq_cuda_kprof & T,
                                                             const int64_t ib) {
    __shared__ float    s_x[QK_TQ];
    __shared__ uint32_t s_w[8];
    __shared__ float    s_e[TQ_KPROF_THREADS / 32];
    __shared__ int      s_p[TQ_KPROF_THREADS / 32];
    const int           tid  = threadIdx.x;
    const int           lane = tid % 32;
    if (tid < QK_TQ) {
        const float v = *(const float *) (loc.src_row(ib) + tid * loc.nb00);
        s_x[tid]      = isfinite(v) ? v : 0.0f;
    }
    if (tid < 8) {
        s_w[tid] = 0;
    }
    __syncthreads();

    float best_e = INFINITY;
    int   best   = INT32_MAX;
    for (int p = tid; p < T.n_profiles; p += TQ_KPROF_THREADS) {  // ascending p: a tie keeps the lower index
        const float e = tq_kprof_error(T, s_x, p);
        if (e < best_e) {
            best_e = e;
            best   = p;
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        tq_kprof_better(best_e, best, __shfl_xor_sync(0xffffffff, best_e, off), __shfl_xor_sync(0xffffffff, best, off));
    }
    if (lane == 0) {
        s_e[tid / 32] = best_e;
        s_p[tid / 32] = best;
    }
    __syncthreads();
    for (int w = 0; w < TQ_KPROF_THREADS / 32; ++w) {  // every thread, the same order: the same winner
        tq_kprof_better(best_e, best, s_e[w], s_p[w]);
    }
    if (best == INT32_MAX) {  // every error infinite (values near float max)
        best = 0;
    }

    if (tid == 0) {
        atomicOr(&s_w[0], (uint32_t) best);  // the index: bits 0 .. index_bits - 1
    }
    if (tid < QK_TQ) {
        const int b = T.bits[best * QK_TQ + tid];
        if (b) {
            const uint32_t code = tq_kprof_code(T, b, __fdiv_rn(s_x[tid], T.scale[best * QK_TQ + tid]));
            const int      pos  = T.pos[best * QK_TQ + tid];
            atomicOr(&s_w[pos >> 5], code << (pos & 31));
            if ((pos & 31) + b > 32) {
                atomicOr(&s_w[(pos >> 5) + 1], code >> (32 - (pos & 31)));
            }
        }
    }
    __syncthreads();
    uint8_t * dst = loc.dst_blk(ib);
    if (tid < T.block_bytes) {  // the stream is little-endian: byte i = bits 8i .. 8i + 7
        dst[tid] = (uint8_t) (s_w[tid >> 2] >> (8 * (tid & 3)));
    }
}

// one block per thread block (a decode step's few blocks then spread their profiles over 128 threads each)
template <class Loc>
static __global__ void __launch_bounds__(TQ_KPROF_THREADS)
    tq_k_encode_kprof(const Loc loc, const tq_cuda_kprof T, const int nblocks) {
    if ((int64_t) blockIdx.x < nblocks) {
        tq_kprof_encode_block(loc, T, blockIdx.x);
    }
}

// value j (0..63) of the ktqp block at blk (tq_kprof_dequantize_block: an index past n_profiles is profile 0)
static __device__ __forceinline__ float tq_kprof_dequant1(const uint8_t * __restrict__ blk, const int j,
                                                          const tq_cuda_kprof & T) {
    const unsigned idx = ((unsigned) blk[0] | (unsigned) blk[1] << 8) & ((1u << T.index_bits) - 1u);
    const int      p   = (int) idx < T.n_profiles ? (int) idx : 0;
    const int      b   = T.bits[p * QK_TQ + j];
    if (!b) {
        return 0.0f;
    }
    const int pos = T.pos[p * QK_TQ + j];
    const int byt = pos >> 3;
    unsigned  w   = blk[byt];
    if (byt + 1 < T.block_bytes) {
        w |= (unsigned) blk[byt + 1] << 8;
    }
    return T.scale[p * QK_TQ + j] * T.levels[b * 64 + ((w >> (pos & 7)) & ((1u << b) - 1u))];
}
