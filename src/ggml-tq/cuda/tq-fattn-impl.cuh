// llama-tq: the flash-attention decode kernel over ktq K / vtq V blocks (see tq-fattn.cuh). Included only
// by the instance files tq-fattn-d*.cu, so each head size compiles in its own translation unit.
#pragma once

#include "tq-fattn.cuh"

#include <cfloat>

#define TQ_FA_NWARPS (TQ_FA_NTHREADS / WARP_SIZE)

// 64 stream bits of a block starting at byte `byte` (circular over the qs_bytes of the stream: the
// trellis is tail-biting; for codebook types the wrapped bytes are never used). qs is 2-byte aligned.
template <int qs_bytes>
static __device__ __forceinline__ uint64_t tq_fa_bits64(const uint8_t * __restrict__ qs, const int byte) {
    constexpr int n16 = qs_bytes / 2;
    const uint16_t * q16 = (const uint16_t *) qs;
    const int        a   = byte >> 1;
    uint64_t         w   = 0;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        int idx = a + t;
        idx     = idx >= n16 ? idx - n16 : idx;
        w |= (uint64_t) q16[idx] << (16 * t);
    }
    return w >> (8 * (byte & 1));
}

// 32 stream bits of a block starting at byte `byte` (circular, as tq_fa_bits64); for even `byte` (types of
// 2 or 4 bits) the third word folds away
template <int qs_bytes>
static __device__ __forceinline__ uint32_t tq_fa_bits32(const uint8_t * __restrict__ qs, const int byte) {
    constexpr int    n16 = qs_bytes / 2;
    const uint16_t * q16 = (const uint16_t *) qs;
    const int        a   = byte >> 1;
    const int        a1  = a + 1 >= n16 ? a + 1 - n16 : a + 1;
    const uint32_t   lo  = (uint32_t) q16[a] | (uint32_t) q16[a1] << 16;
    if (byte & 1) {
        const int a2 = a1 + 1 >= n16 ? a1 + 1 - n16 : a1 + 1;
        return __funnelshift_r(lo, (uint32_t) q16[a2], 8);
    }
    return lo;
}

// The 8 values [i0, i0 + 8) of a V block (i0 a multiple of 8), decoded in registers.
template <ggml_type type_V>
static __device__ __forceinline__ void tq_fa_decode_v8(const uint8_t * __restrict__ blk, const int i0,
                                                       const float * __restrict__ s_vtab, float (&v)[8]) {
    using F = tq_cuda_fmt<type_V>;
    const float    d = __half2float(*(const half *) blk);
    constexpr int  width = F::trellis ? F::L : F::b;  // trellis: state window; codebook: the code
    if constexpr (7 * F::b + width <= 32) {              // the 8 windows fit one 32-bit word
        const uint32_t w = tq_fa_bits32<F::qs_bytes>(blk + F::qs_off, i0 * F::b / 8);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] = d * s_vtab[(w >> (F::b * i)) & ((1u << width) - 1u)];
        }
    } else {
        const uint64_t w = tq_fa_bits64<F::qs_bytes>(blk + F::qs_off, i0 * F::b / 8);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            v[i] = d * s_vtab[(unsigned) (w >> (F::b * i)) & ((1u << width) - 1u)];
        }
    }
    if constexpr (F::n_out > 0) {
        const half *    od = (const half *) (blk + 2);
        const uint8_t * op = blk + 2 + 2 * F::n_out;
#pragma unroll
        for (int s = 0; s < F::n_out; ++s) {  // in slot order: a later slot wins
            const int j = (op[s] & (QK_TQ - 1)) - i0;
            if (j >= 0 && j < 8) {
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    v[i] = i == j ? __half2float(od[s]) : v[i];
                }
            }
        }
    }
}

// copies the bytes of n_rows rows (R 16-bit words each, row stride `stride` bytes) into dst, rows past n_rows
// zeroed. Thread t always moves word t % R of rows t / R + RP * j: its source and destination advance by a
// fixed step per pass, so a word costs a load, a store and an add (per-element index arithmetic cost more than
// the loads themselves); loads are issued CH passes at a time before their stores so that many are in flight.
template <int R, int TILE>
static __device__ __forceinline__ void tq_fa_stage(uint16_t * __restrict__ dst, const char * __restrict__ src,
                                                   const int stride, const int n_rows, const int tid) {
    static_assert(R <= TQ_FA_NTHREADS, "a row must fit one pass");
    constexpr int RP = TQ_FA_NTHREADS / R;  // rows per pass
    constexpr int NP = (TILE + RP - 1) / RP;
    constexpr int CH = NP < 8 ? NP : 8;
    const int     r0 = tid / R;
    if (r0 >= RP) {
        return;
    }
    const int    w     = tid - r0 * R;
    const int    pstep = RP * stride;
    const char * s     = src + r0 * stride + 2 * w;
    uint16_t *   d     = dst + r0 * R + w;
#pragma unroll
    for (int p0 = 0; p0 < NP; p0 += CH) {
        uint16_t tmp[CH];
#pragma unroll
        for (int j = 0; j < CH; ++j) {
            const int r = r0 + RP * (p0 + j);
            tmp[j] = p0 + j < NP && r < n_rows ? *(const uint16_t *) (s + (p0 + j) * pstep) : (uint16_t) 0;
        }
#pragma unroll
        for (int j = 0; j < CH; ++j) {
            if (p0 + j < NP && r0 + RP * (p0 + j) < TILE) {
                d[(p0 + j) * RP * R] = tmp[j];
            }
        }
    }
}

template <int D, ggml_type type_K, ggml_type type_V, int NC>
__launch_bounds__(TQ_FA_NTHREADS)
static __global__ void tq_k_fattn_vec(const tq_fattn_params p, const tq_cuda_tab<type_K> ktab,
                                      const tq_cuda_tab<type_V> vtab) {
    using FK = tq_cuda_fmt<type_K>;
    using FV = tq_cuda_fmt<type_V>;
    static_assert(!FK::trellis && FK::n_out == 0, "K must be a scalar-codebook type");
    static_assert(D % QK_TQ == 0 && D <= 256, "unsupported head size");

    constexpr int NW   = TQ_FA_NWARPS;
    constexpr int TILE = tq_fa_tile(D);
    constexpr int RK   = D / QK_TQ * FK::bs / 2;  // 16-bit words per K row of this head
    constexpr int RV   = D / QK_TQ * FV::bs / 2;
    constexpr int KE   = 16;        // K: elements per lane (a quarter block)
    constexpr int KL   = D / KE;    //    lanes per row
    constexpr int KR   = 32 / KL;   //    rows per warp and step
    constexpr int VE   = 8;         // V: elements per lane
    constexpr int VL   = D / VE;    //    lanes per row
    constexpr int VR   = 32 / VL;   //    rows per warp and step

    __shared__ __align__(16) float s_q[NC * D];  // Q * scale; reused for the final reduction
    __shared__ float s_kq[NC][TILE];             // scores, then probabilities of the tile
    __shared__ uint16_t s_kraw[TILE * RK];       // the tile's K and V bytes
    __shared__ uint16_t s_vraw[TILE * RV];
    __shared__ float s_ktab[FK::ntab];
    __shared__ float s_vtab[FV::ntab];
    __shared__ float s_m[NC];
    __shared__ float s_l[NC];
    __shared__ float s_resc[NC];

    const int tid  = threadIdx.x;
    const int warp = tid / WARP_SIZE;
    const int lane = tid % WARP_SIZE;

    const int kvh   = blockIdx.x / p.n_col_grp;
    const int cg    = blockIdx.x % p.n_col_grp;
    const int seq   = blockIdx.y;
    const int split = blockIdx.z;

    const int kv_begin = split * p.kv_per_split;
    const int kv_end   = min(p.n_kv, kv_begin + p.kv_per_split);

    for (int i = tid; i < FK::ntab; i += TQ_FA_NTHREADS) {
        s_ktab[i] = ktab.v[i];
    }
    for (int i = tid; i < FV::ntab; i += TQ_FA_NTHREADS) {
        s_vtab[i] = vtab.v[i];
    }
    for (int i = tid; i < NC * D; i += TQ_FA_NTHREADS) {
        const int c  = i / D;
        const int gc = cg * NC + c;
        float     q  = 0.0f;
        if (gc < p.n_col) {
            const int t = gc / p.gqa;
            const int h = kvh * p.gqa + gc % p.gqa;
            q = p.scale * ((const float *) (p.Q + seq * p.nb03 + h * p.nb02 + t * p.nb01))[i % D];
        }
        s_q[i] = q;
    }
    if (tid < NC) {
        s_m[tid] = -FLT_MAX / 2.0f;
        s_l[tid] = 0.0f;
    }
    __syncthreads();

    const char * K = p.K + seq * p.nb13 + kvh * p.nb12;
    const char * V = p.V + seq * p.nb23 + kvh * p.nb22;

    // K lane mapping: row group, quarter-block chunk
    const int k_rg = lane / KL;
    const int k_ch = lane % KL;
    // V lane mapping
    const int v_rg = lane / VL;
    const int v_ch = lane % VL;

    float acc[NC][VE];
#pragma unroll
    for (int c = 0; c < NC; ++c) {
#pragma unroll
        for (int e = 0; e < VE; ++e) {
            acc[c][e] = 0.0f;
        }
    }

    for (int kv0 = kv_begin; kv0 < kv_end; kv0 += TILE) {
        const int n_rows = min(TILE, kv_end - kv0);
        tq_fa_stage<RK, TILE>(s_kraw, K + (int64_t) kv0 * p.nb11, (int) p.nb11, n_rows, tid);
        tq_fa_stage<RV, TILE>(s_vraw, V + (int64_t) kv0 * p.nb21, (int) p.nb21, n_rows, tid);
        __syncthreads();

        // ---- scores: Q·K from the codes ----
#pragma unroll 1
        for (int r0 = warp * KR; r0 < TILE; r0 += NW * KR) {
            const int r     = r0 + k_rg;
            const bool valid = r < n_rows;
            float      dot[NC];
#pragma unroll
            for (int c = 0; c < NC; ++c) {
                dot[c] = 0.0f;
            }
            if (valid) {
                const uint8_t * blk = (const uint8_t *) (s_kraw + r * RK) + (k_ch / 4) * FK::bs;
                const float     d   = __half2float(*(const half *) blk);
                const uint16_t * q16 = (const uint16_t *) (blk + FK::qs_off) + FK::b * (k_ch % 4);
                uint64_t w = 0;
#pragma unroll
                for (int t = 0; t < FK::b; ++t) {
                    w |= (uint64_t) q16[t] << (16 * t);
                }
#pragma unroll
                for (int e4 = 0; e4 < KE / 4; ++e4) {
                    float lv[4];
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        lv[i] = s_ktab[(unsigned) (w >> (FK::b * (4 * e4 + i))) & ((1u << FK::b) - 1u)];
                    }
#pragma unroll
                    for (int c = 0; c < NC; ++c) {
                        const float4 q = *(const float4 *) &s_q[c * D + k_ch * KE + 4 * e4];
                        dot[c] += q.x * lv[0] + q.y * lv[1] + q.z * lv[2] + q.w * lv[3];
                    }
                }
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    dot[c] *= d;
                }
            }
#pragma unroll
            for (int c = 0; c < NC; ++c) {
#pragma unroll
                for (int off = KL / 2; off > 0; off >>= 1) {
                    dot[c] += __shfl_xor_sync(0xffffffff, dot[c], off, WARP_SIZE);
                }
                if (c % KL == k_ch) {
                    s_kq[c][r] = dot[c];
                }
            }
        }
        __syncthreads();

        // ---- softmax step: one warp per column ----
        for (int c = warp; c < NC; c += NW) {
            const int gc  = cg * NC + c;
            const half * mk = nullptr;
            float slope = 1.0f;
            if (gc < p.n_col) {
                if (p.mask) {
                    mk = (const half *) (p.mask + (seq % p.ne33) * p.nb33 + (gc / p.gqa) * p.nb31) + kv0;
                }
                slope = get_alibi_slope(p.max_bias, kvh * p.gqa + gc % p.gqa, p.n_head_log2, p.m0, p.m1);
            }
            float s[TILE / WARP_SIZE];
            float mx = -FLT_MAX / 2.0f;
#pragma unroll
            for (int i = 0; i < TILE / WARP_SIZE; ++i) {
                const int r = lane + WARP_SIZE * i;
                float     v = -INFINITY;
                if (kv0 + r < kv_end) {
                    v = s_kq[c][r];
                    if (p.logit_softcap != 0.0f) {
                        v = p.logit_softcap * tanhf(v);
                    }
                    if (mk) {
                        const float mv = __half2float(mk[r]);
                        v = mv == -INFINITY ? -INFINITY : v + slope * mv;  // a masked cell counts for nothing
                    }
                }
                s[i] = v;
                mx   = fmaxf(mx, v);
            }
            mx = warp_reduce_max(mx);
            const float m_old = s_m[c];
            const float m_new = fmaxf(m_old, mx);
            float       sum   = 0.0f;
#pragma unroll
            for (int i = 0; i < TILE / WARP_SIZE; ++i) {
                const float e = __expf(s[i] - m_new);
                s_kq[c][lane + WARP_SIZE * i] = e;
                sum += e;
            }
            sum = warp_reduce_sum(sum);
            __syncwarp();  // every lane has read s_m[c] (m_old) before lane 0 replaces it
            if (lane == 0) {
                const float resc = __expf(m_old - m_new);
                s_m[c]    = m_new;
                s_l[c]    = s_l[c] * resc + sum;
                s_resc[c] = resc;
            }
        }
        __syncthreads();

        // ---- V: acc += p * v, values decoded in registers ----
#pragma unroll
        for (int c = 0; c < NC; ++c) {
            const float resc = s_resc[c];
#pragma unroll
            for (int e = 0; e < VE; ++e) {
                acc[c][e] *= resc;
            }
        }
#pragma unroll 1
        for (int r0 = warp * VR; r0 < n_rows; r0 += NW * VR) {
            const int r = r0 + v_rg;
            if (r < n_rows) {
                const uint8_t * blk = (const uint8_t *) (s_vraw + r * RV) + (v_ch / 8) * FV::bs;
                float v[VE];
                tq_fa_decode_v8<type_V>(blk, (v_ch % 8) * VE, s_vtab, v);
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    const float pc = s_kq[c][r];
#pragma unroll
                    for (int e = 0; e < VE; ++e) {
                        acc[c][e] += pc * v[e];
                    }
                }
            }
        }
        __syncthreads();
    }

    // ---- reduce the row groups of a warp, then the warps (s_q is free now) ----
#pragma unroll
    for (int c = 0; c < NC; ++c) {
#pragma unroll
        for (int e = 0; e < VE; ++e) {
#pragma unroll
            for (int off = VL; off < WARP_SIZE; off <<= 1) {
                acc[c][e] += __shfl_xor_sync(0xffffffff, acc[c][e], off, WARP_SIZE);
            }
        }
    }
    float * s_out = s_q;
#pragma unroll
    for (int w = 0; w < NW; ++w) {
        if (warp == w && v_rg == 0) {
#pragma unroll
            for (int c = 0; c < NC; ++c) {
#pragma unroll
                for (int e = 0; e < VE; ++e) {
                    const int i = c * D + v_ch * VE + e;
                    s_out[i]    = w == 0 ? acc[c][e] : s_out[i] + acc[c][e];
                }
            }
        }
        __syncthreads();
    }

    for (int i = tid; i < NC * D; i += TQ_FA_NTHREADS) {
        const int c  = i / D;
        const int gc = cg * NC + c;
        if (gc >= p.n_col) {
            continue;
        }
        const int     t = gc / p.gqa;
        const int     h = kvh * p.gqa + gc % p.gqa;
        const int64_t o = ((int64_t) seq * p.n_tok + t) * p.n_head + h;
        if (p.n_split == 1) {
            float m = s_m[c];
            float l = s_l[c];
            float f = 1.0f;
            if (p.sinks) {
                const float sink = p.sinks[h];
                const float mf   = fmaxf(m, sink);
                f = expf(m - mf);
                l = l * f + expf(sink - mf);
            }
            p.dst[o * D + i % D] = l > 0.0f ? s_out[i] * f / l : 0.0f;
        } else {
            const int64_t po = (int64_t) split * p.n_rows + o;
            p.part[po * D + i % D] = s_out[i];
            if (i % D == 0) {
                p.part_ml[po] = make_float2(s_m[c], s_l[c]);
            }
        }
    }
}

template <int D, ggml_type type_K, ggml_type type_V, int NC>
void tq_fattn_launch(const tq_fattn_params & p, cudaStream_t stream) {
    const dim3 grid(p.n_kv_head * p.n_col_grp, p.n_seq, p.n_split);
    tq_k_fattn_vec<D, type_K, type_V, NC>
        <<<grid, TQ_FA_NTHREADS, 0, stream>>>(p, tq_cuda_host_tab<type_K>(), tq_cuda_host_tab<type_V>());
    CUDA_CHECK(cudaGetLastError());
}

// instances of one head size D: NC = 2, 4, 8 query columns per block for every compiled pair
#define TQ_FA_INSTANCE_NC(D, K, V, NC) \
    template void tq_fattn_launch<D, GGML_TYPE_##K, GGML_TYPE_##V, NC>(const tq_fattn_params &, cudaStream_t);
