// llama-tq: device-side view of the ktq / vtq KV-cache block formats (docs/formats.md is the contract).
//
// Included by ggml-cuda's common.cuh (hook), after the primary template ggml_cuda_type_traits<type>, so
// every ggml-cuda translation unit sees:
//   - ggml_cuda_type_traits<GGML_TYPE_KTQ2 ... VTQ4_3>  (qk = 64; the types have no MMQ/MMVQ path, qr/qi
//     only describe the code bytes);
//   - tq_cuda_fmt<type>: compile-time layout of a block (bits, trellis or codebook, outlier slots, offsets);
//   - tq_cuda_tab<type>: the decode table of a type, passed to kernels by value (it comes from the host's
//     active codebook, tq_levels(), so LLAMA_TQ_CODEBOOK applies on CUDA exactly as on the CPU);
//   - tq_cuda_dequant1<type>(): O(1) random-access decode of one value of a block.
#pragma once

#include "ggml.h"
#include "tq-ggml.h"

#include <cstdint>
#include <cstring>

#define TQ_CUDA_TYPE_TRAITS(T, t)                                   \
    template <> struct ggml_cuda_type_traits<GGML_TYPE_##T> {       \
        static constexpr int qk = QK_TQ;                            \
        static constexpr int qr = 1;                                \
        static constexpr int qi = sizeof(block_##t::qs) / 4;       \
        static constexpr int bs = sizeof(block_##t);                \
    };
TQ_GGML_FOR_EACH(TQ_CUDA_TYPE_TRAITS)
#undef TQ_CUDA_TYPE_TRAITS

template <ggml_type type>
struct tq_cuda_fmt {
    static_assert(TQ_GGML_IS_TQ(type), "not a llama-tq type");
    static constexpr int  tq       = TQ_GGML_TO_TQ(type);
    static constexpr int  b        = 2 + tq % 3;                  // bits per code / per trellis sample
    static constexpr bool trellis  = tq >= TQ_TYPE_VTQ2_2;
    static constexpr int  n_out    = tq >= TQ_TYPE_VTQ2_3 ? TQ_OUTLIERS : 0;
    static constexpr int  L        = b + 6;                       // trellis state bits
    static constexpr int  qs_off   = 2 + 3 * n_out;               // d, od[n_out], op[n_out], qs
    static constexpr int  qs_bytes = QK_TQ * b / 8;
    static constexpr int  bs       = qs_off + qs_bytes;
    static constexpr int  ntab     = trellis ? 1 << L : 1 << b;   // decode table entries
};

template <ggml_type type>
struct tq_cuda_tab {
    float v[tq_cuda_fmt<type>::ntab];
};

// the decode table of a type from the host's active codebook (tq_levels: built-in or LLAMA_TQ_CODEBOOK)
template <ggml_type type>
static tq_cuda_tab<type> tq_cuda_host_tab() {
    tq_cuda_tab<type> t;
    memcpy(t.v, tq_levels(TQ_GGML_TO_TQ(type)), sizeof(t.v));
    return t;
}

// value j (0..63) of the block at blk; tab = the type's decode table (shared or global memory)
template <ggml_type type>
static __device__ __forceinline__ float tq_cuda_dequant1(const uint8_t * __restrict__ blk, const int j,
                                                         const float * __restrict__ tab) {
    using F = tq_cuda_fmt<type>;
    if constexpr (F::n_out > 0) {
        const uint8_t * op = blk + 2 + 2 * F::n_out;
        if ((op[1] & (QK_TQ - 1)) == j) {  // slots apply in order: slot 1 wins
            return __half2float(((const __half *) (blk + 2))[1]);
        }
        if ((op[0] & (QK_TQ - 1)) == j) {
            return __half2float(((const __half *) (blk + 2))[0]);
        }
    }
    const float     d   = __half2float(*(const __half *) blk);
    const uint8_t * qs  = blk + F::qs_off;
    const int       bit = j * F::b;
    const int       byt = bit >> 3;
    if constexpr (F::trellis) {
        // state_j = stream bits [j*k, j*k + L) modulo 64*k (tail-biting); L + 7 <= 16 for k = 2, 3, 4
        const int      nxt = byt + 1 == F::qs_bytes ? 0 : byt + 1;
        const unsigned w   = (unsigned) qs[byt] | (unsigned) qs[nxt] << 8;
        return d * tab[(w >> (bit & 7)) & ((1u << F::L) - 1u)];
    } else {
        unsigned w = qs[byt];
        if (F::b == 3 && (bit & 7) > 5) {
            w |= (unsigned) qs[byt + 1] << 8;
        }
        return d * tab[(w >> (bit & 7)) & ((1u << F::b) - 1u)];
    }
}
