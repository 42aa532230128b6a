// llama-tq: the flash-attention decode kernel over ktq K / vtq V blocks (see tq-fattn.cuh). Included only
// by the instance files tq-fattn-d*.cu, so each head size compiles in its own translation unit.
#pragma once

#include "tq-cuda-bits.cuh"
#include "tq-fattn.cuh"

#include <cfloat>
#include <type_traits>

#define TQ_FA_NWARPS (TQ_FA_NTHREADS / WARP_SIZE)

// K: the codes of KE consecutive values of a block, read as whole 16-bit words (when a lane's codes can
// start at an odd byte, one more word, shifted out)
template <ggml_type type_K, int KE>
struct tq_fa_kcodes {
    using F = tq_cuda_fmt<type_K>;
    static constexpr int  bytes = KE * F::b / 8;                    // code bytes of a lane
    static constexpr bool odd   = bytes % 2 != 0;                   // its offset can be odd
    static constexpr int  n16   = (bytes + (odd ? 1 : 0) + 1) / 2;  // words to read
    using word_t = typename std::conditional<16 * n16 <= 32, uint32_t, uint64_t>::type;

    // byte: offset of the codes from the row (a 2-byte aligned row)
    static __device__ __forceinline__ word_t load(const uint8_t * GGML_CUDA_RESTRICT row, const int byte) {
        const word_t w = tq_fa_ld16<n16, word_t>(row + (byte & ~1));
        return odd ? w >> (8 * (byte & 1)) : w;
    }
};

// Sums the NC partial dot products v[] over the KL lanes of a row (KL >= NC; the lanes of a row are an
// aligned group of KL): halving exchanges (a lane keeps half of its columns and sends the other half to its
// partner), then plain butterflies over the remaining lane bits. Returns the whole sum of column
// tq_fa_rs_col(lane).
template <int NC, int KL>
static __device__ __forceinline__ float tq_fa_reduce_scatter(float (&v)[NC], const int lane) {
    static_assert(NC <= KL, "more columns than lanes per row");
#pragma unroll
    for (int n = NC, o = KL / 2; n > 1; n /= 2, o /= 2) {
        const bool hi = lane & o;
#pragma unroll
        for (int i = 0; i < n / 2; ++i) {
            const float send = hi ? v[i] : v[i + n / 2];
            const float keep = hi ? v[i + n / 2] : v[i];
            v[i]             = keep + __shfl_xor_sync(0xffffffff, send, o, WARP_SIZE);
        }
    }
#pragma unroll
    for (int o = KL / NC / 2; o > 0; o >>= 1) {
        v[0] += __shfl_xor_sync(0xffffffff, v[0], o, WARP_SIZE);
    }
    return v[0];
}

template <int NC, int KL>
static __device__ __forceinline__ int tq_fa_rs_col(const int lane) {
    int c = 0;
#pragma unroll
    for (int n = NC, o = KL / 2; n > 1; n /= 2, o /= 2) {
        c += (lane & o) ? n / 2 : 0;
    }
    return c;
}

// where a block of either kernel form works: KV head, query-column group, sequence, KV split and its rows
struct tq_fa_pos {
    int kvh;
    int cg;
    int seq;
    int split;
    int kv_begin;
    int kv_end;
};

static __device__ __forceinline__ tq_fa_pos tq_fa_block_pos(const tq_fattn_params & p) {
    tq_fa_pos b;
    b.kvh      = blockIdx.x / p.n_col_grp;
    b.cg       = blockIdx.x % p.n_col_grp;
    b.seq      = blockIdx.y;
    b.split    = blockIdx.z;
    b.kv_begin = b.split * p.kv_per_split;
    b.kv_end   = min(p.n_kv, b.kv_begin + p.kv_per_split);
    return b;
}

// calls chunk(kv0, full) for each of a warp's chunks of 32 rows in the block's rows (the warps take turns);
// full: std::true_type when all 32 rows are below kv_end
template <class chunk_t>
static __device__ __forceinline__ void tq_fa_for_chunks(const tq_fa_pos & bp, const int warp, chunk_t & chunk) {
#pragma unroll 1
    for (int kv0 = bp.kv_begin + warp * WARP_SIZE; kv0 < bp.kv_end; kv0 += TQ_FA_NWARPS * WARP_SIZE) {
        if (kv0 + WARP_SIZE <= bp.kv_end) {
            chunk(kv0, std::true_type());
        } else {
            chunk(kv0, std::false_type());
        }
    }
}

// a block's result, in shared memory: the unnormalized output of each column, each warp's running max and sum
template <int D, int NC>
struct tq_fa_result {
    float out[NC * D];
    float wm[TQ_FA_NWARPS][NC];
    float wl[TQ_FA_NWARPS][NC];
};

// the block's running max mb and sum of exp lb of each column, from its warps' (after a block barrier)
template <int NC>
static __device__ __forceinline__ void tq_fa_block_ml(const float (&s_wm)[TQ_FA_NWARPS][NC],
                                                      const float (&s_wl)[TQ_FA_NWARPS][NC], float (&mb)[NC],
                                                      float (&lb)[NC]) {
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        mb[c] = s_wm[0][c];
#pragma unroll
        for (int w = 1; w < TQ_FA_NWARPS; ++w) {
            mb[c] = fmaxf(mb[c], s_wm[w][c]);
        }
        lb[c] = 0.0f;
#pragma unroll
        for (int w = 0; w < TQ_FA_NWARPS; ++w) {
            lb[c] += s_wl[w][c] * __expf(s_wm[w][c] - mb[c]);
        }
    }
}

// the output row of query column gc of KV head kvh in sequence seq (rows [seq][token][head]), and its query head h
static __device__ __forceinline__ int64_t tq_fa_out_row(const tq_fattn_params & p, const int kvh, const int seq,
                                                        const int gc, int & h) {
    h = kvh * p.gqa + gc % p.gqa;
    return ((int64_t) seq * p.n_tok + gc / p.gqa) * p.n_head + h;
}

// a column's attention sink when the KV rows are not split: returns the factor of its output (running max m) and
// counts the sink of head h into its sum of exp l; 1 and l unchanged without sinks
static __device__ __forceinline__ float tq_fa_sink(const tq_fattn_params & p, const int h, const float m, float & l) {
    if (!p.sinks) {
        return 1.0f;
    }
    const float sink = p.sinks[h];
    const float mf   = fmaxf(m, sink);
    l                = l * expf(m - mf) + expf(sink - mf);
    return expf(m - mf);
}

// writes the block's result s_out[NC][D] (unnormalized, with the columns' mb and lb): normalized into dst when
// the KV rows are not split, else into the split's partial rows for the combine kernel. With p.rot each column
// first goes through the Hadamard transform of size D in place (the butterflies of ggml-cuda's fwht, Sylvester
// order), its 1/sqrt(D) applied in the write; the transform is linear, so the combine of rotated partial rows is
// the rotated result. All threads of the block call it, after a barrier that completes s_out.
template <int D, int NC>
static __device__ __forceinline__ void tq_fa_write_out(const tq_fattn_params & p, float * s_out,
                                                       const float (&mb)[NC], const float (&lb)[NC], const int kvh,
                                                       const int cg, const int seq, const int split) {
    float rs = 1.0f;
    if (p.rot) {
#pragma unroll 1
        for (int h = 1; h < D; h *= 2) {
            for (int i = threadIdx.x; i < NC * D / 2; i += TQ_FA_NTHREADS) {
                const int   j  = i % (D / 2);
                const int   lo = (i / (D / 2)) * D + (j / h) * 2 * h + j % h;
                const float a  = s_out[lo];
                const float b  = s_out[lo + h];
                s_out[lo]      = a + b;
                s_out[lo + h]  = a - b;
            }
            __syncthreads();
        }
        rs = 1.0f / sqrtf((float) D);
    }
    for (int i = threadIdx.x; i < NC * D; i += TQ_FA_NTHREADS) {
        const int c  = i / D;
        const int gc = cg * NC + c;
        if (gc >= p.n_col) {
            continue;
        }
        int           h;
        const int64_t o  = tq_fa_out_row(p, kvh, seq, gc, h);
        float         mc = 0.0f;
        float         lc = 0.0f;
#pragma unroll
        for (int cc = 0; cc < NC; ++cc) {  // registers: constant indices only
            mc = cc == c ? mb[cc] : mc;
            lc = cc == c ? lb[cc] : lc;
        }
        if (p.n_split == 1) {
            const float f = tq_fa_sink(p, h, mc, lc);
            p.dst[o * D + i % D] = lc > 0.0f ? s_out[i] * rs * f / lc : 0.0f;
        } else {
            const int64_t po = (int64_t) split * p.n_rows + o;
            p.part[po * D + i % D] = s_out[i] * rs;
            if (i % D == 0) {
                p.part_ml[po] = make_float2(mc, lc);
            }
        }
    }
}

// One block per (KV head, group of NC query columns, KV split); each warp streams its own chunks of 32 KV
// rows (kv_begin + 32 * (warp + NW * i)) with its own online softmax, and the warps meet once at the end.
// Nothing is staged in shared memory: a lane loads the bytes it decodes straight into registers.
//   K: KE values per lane, KL = D / KE lanes per row, KR = 32 / KL rows per pass; Q of the lane's KE values
//      in registers (NC columns); the KL partial dots are summed by tq_fa_reduce_scatter, after which a lane
//      holds one column's score of its row.
//   softmax: lane = row of the chunk; softcap, mask and ALiBi here (a coalesced mask load per column); per
//      column the warp's running max and per-lane partial sums.
//   V: VE values per lane, VL = D / VE lanes per row, VR = 32 / VL rows per pass, decoded in registers from
//      the bank-spread copies of the table; the block scale goes into the probability.
// Registers bound the shape: Q (NC * KE) and the accumulators (NC * VE) are 64 + 32 for NC = 4 at head size 64,
// under a cap of 168 (3 blocks per SM). With nvcc 13 (sm_90) the hd64 NC <= 4 instances spill at most 24 bytes
// (reloaded once per chunk); NC = 8, head size 128 with NC = 4 and head size 256 spill 100-550 bytes (speed,
// not correctness; not timed: the benchmarked shapes are NC = 4 at hd64 and NC = 2 at hd128).
template <int D, ggml_type type_K, ggml_type type_V, int NC>
__launch_bounds__(TQ_FA_NTHREADS, TQ_FA_VEC_BLOCKS_PER_SM)
static __global__ void tq_k_fattn_vec(const tq_fattn_params p, const tq_cuda_tab<type_K> ktab,
                                      const tq_cuda_tab<type_V> vtab) {
    using FK = tq_cuda_fmt<type_K>;
    using FV = tq_cuda_fmt<type_V>;
    static_assert(!FK::trellis && FK::n_out == 0, "K must be a scalar-codebook type");
    static_assert(D % QK_TQ == 0 && D <= 256, "unsupported head size");

    constexpr int  NW    = TQ_FA_NWARPS;
    constexpr int  RW    = WARP_SIZE;                                       // rows per warp chunk
    constexpr int  KE0   = NC <= 4 ? 16 : 8;                                // K: values per lane,
    constexpr int  KE    = KE0 > D / 32 ? KE0 : D / 32;                     //    at least D / 32
    constexpr int  KL    = D / KE;                                          //    lanes per row
    constexpr int  KR    = WARP_SIZE / KL;                                  //    rows per pass
    constexpr int  KP    = RW / KR;                                         //    passes per chunk
    constexpr int  LG    = D == 64 && NC <= 4 ? 8 : D == 256 && NC == 8 ? 2 : 4;  // passes loaded together
    constexpr int  KG    = KP < LG ? KP : LG;
    constexpr int  KSUB  = QK_TQ / KE;                                      //    lanes per block
    constexpr int  VE    = (32 / NC) > D / 32 ? 32 / NC : D / 32;           // V: values per lane
    constexpr int  VS    = VE < 8 ? VE : 8;                                 //    values per stream read
    constexpr int  VL    = D / VE;                                          //    lanes per row
    constexpr int  VR    = WARP_SIZE / VL;                                  //    rows per pass
    constexpr int  VP    = RW / VR;                                         //    passes per chunk
    constexpr int  VG    = VP < LG ? VP : LG;
    constexpr int  VREP  = tq_fa_vrep<type_V>();
    constexpr bool KPAIR = FK::b == 2;              // 2-bit K: one lookup gives two levels
    // head size 64: a row is one block, so its K scale multiplies the summed score (not each lane's part) and
    // its V scale goes into the probability in the softmax step (outlier V types keep the scale per value)
    constexpr bool K1    = D == QK_TQ;
    constexpr bool V1    = D == QK_TQ && FV::n_out == 0;
    using KC = tq_fa_kcodes<type_K, KE>;
    using VC = tq_fa_vcodes<type_V, VS>;
    static_assert(KL <= WARP_SIZE && VL <= WARP_SIZE && KP % KG == 0 && VP % VG == 0, "lane mapping");

    __shared__ __align__(16) float s_vtab[FV::ntab * VREP];
    __shared__ __align__(8) float s_ktab[KPAIR ? 2 * 16 : FK::ntab];
    __shared__ float s_p[NW][NC][RW];  // a warp's scores, then probabilities, of its chunk
    __shared__ tq_fa_result<D, NC> s_res;

    const int tid  = threadIdx.x;
    const int warp = tid / WARP_SIZE;
    const int lane = tid % WARP_SIZE;

    const tq_fa_pos bp = tq_fa_block_pos(p);

    // programmatic dependent launch (sm_90, tq_fattn_launch): the next kernel may be scheduled now, and this one
    // builds its tables from kernel arguments while the previous one finishes; global memory only after the sync
    ggml_cuda_pdl_lc();
    tq_fa_fill_vtab<type_V, TQ_FA_NTHREADS>(s_vtab, vtab);
    if constexpr (KPAIR) {
        if (tid < 16) {
            s_ktab[2 * tid]     = ktab.v[tid & 3];
            s_ktab[2 * tid + 1] = ktab.v[tid >> 2];
        }
    } else {
        for (int i = tid; i < FK::ntab; i += TQ_FA_NTHREADS) {
            s_ktab[i] = ktab.v[i];
        }
    }
    ggml_cuda_pdl_sync();

    // K lane mapping: row in the pass, chunk of KE values
    const int k_rg  = lane / KL;
    const int k_ch  = lane % KL;
    const int k_dof = (k_ch / KSUB) * FK::bs;                        // the block's scale
    const int k_cof = k_dof + 2 + (k_ch % KSUB) * (KE * FK::b / 8);  // the lane's codes

    float        q[NC][KE];
    const half * mrow[NC];   // the mask row of each column's token, or nullptr
    float        slope[NC];  // ALiBi
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        const int gc = bp.cg * NC + c;
        mrow[c]  = nullptr;
        slope[c] = 1.0f;
        if (gc < p.n_col) {
            const int     t  = gc / p.gqa;
            const int     h  = bp.kvh * p.gqa + gc % p.gqa;
            const float * qp = (const float *) (p.Q + bp.seq * p.nb03 + h * p.nb02 + t * p.nb01) + k_ch * KE;
#pragma unroll
            for (int e = 0; e < KE; ++e) {
                q[c][e] = p.scale * qp[e];
            }
            if (p.mask) {
                mrow[c] = (const half *) (p.mask + (bp.seq % p.ne33) * p.nb33 + t * p.nb31);
            }
            slope[c] = get_alibi_slope(p.max_bias, h, p.n_head_log2, p.m0, p.m1);
        } else {
#pragma unroll
            for (int e = 0; e < KE; ++e) {
                q[c][e] = 0.0f;
            }
        }
    }

    // after the reduction this lane holds column w_c of its row; it writes it if w_wr
    const int  w_c  = tq_fa_rs_col<NC, KL>(lane);
    const bool w_wr = lane % (KL / NC) == 0;
    float *    w_sp = &s_p[warp][w_c][k_rg];

    // V lane mapping
    const int      v_rg  = lane / VL;
    const int      v_ch  = lane % VL;
    const int      v_bof = (v_ch * VE / QK_TQ) * FV::bs;
    const int      v_i0  = (v_ch * VE) % QK_TQ;
    const uint32_t v_rep = (uint32_t) (lane % VREP) * 4;
    const float *  v_sp  = &s_p[warp][0][v_rg];

    float m[NC];
    float l[NC];
    float acc[NC][VE];
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        m[c] = -FLT_MAX / 2.0f;
        l[c] = 0.0f;
#pragma unroll
        for (int e = 0; e < VE; ++e) {
            acc[c][e] = 0.0f;
        }
    }
    __syncthreads();

    const uint8_t * K  = (const uint8_t *) (p.K + bp.seq * p.nb13 + bp.kvh * p.nb12);
    const uint8_t * V  = (const uint8_t *) (p.V + bp.seq * p.nb23 + bp.kvh * p.nb22);
    const int64_t   sK = KR * p.nb11;  // from one pass to the next
    const int64_t   sV = VR * p.nb21;

    // one chunk of 32 rows from kv0; FULL: all of them are below kv_end (no bound checks)
    auto chunk = [&](const int kv0, auto full) {
        constexpr bool FULL = decltype(full)::value;

        // the V bytes of a group of passes, in registers; the first group is loaded before the scores, so
        // that its loads are in flight during Q·K
        typename VC::word_t vw[VG][VE / VS];
        uint32_t            vd[VG];
        [[maybe_unused]] uint32_t vo[VG][2];  // outlier types: the two fp16 values; the two positions
        const uint8_t *     vp     = V + (int64_t) (kv0 + v_rg) * p.nb21 + v_bof;
        auto                load_v = [&](const int g0) {
#pragma unroll
            for (int i = 0; i < VG; ++i) {
                const bool ok = FULL || kv0 + (g0 + i) * VR + v_rg < bp.kv_end;
#pragma unroll
                for (int u = 0; u < VE / VS; ++u) {
                    vw[i][u] = ok ? VC::load(vp, v_i0 + u * VS) : 0;
                }
                if constexpr (!V1) {
                    vd[i] = ok ? *(const uint16_t *) vp : 0;
                }
                if constexpr (FV::n_out > 0) {
                    static_assert(FV::n_out == 2 && FV::qs_off == 8, "two outlier slots");
                    vo[i][0] = ok ? tq_fa_ld16<2, uint32_t>(vp + 2) : 0;
                    vo[i][1] = ok ? *(const uint16_t *) (vp + 6) : 0;
                }
                vp += sV;
            }
        };
        load_v(0);

        // V1: the V scale of this lane's row, for the softmax below
        float dv_row = 1.0f;
        if constexpr (V1) {
            const bool ok = FULL || kv0 + lane < bp.kv_end;
            dv_row = ok ? __half2float(*(const half *) (V + (int64_t) (kv0 + lane) * p.nb21)) : 0.0f;
        }

        // the mask of each column at this lane's row (coalesced), for the softmax below
        float mv[NC];
#pragma unroll
        for (int c = 0; c < NC; ++c) {
            mv[c] = mrow[c] && (FULL || kv0 + lane < bp.kv_end) ? __half2float(mrow[c][kv0 + lane]) : 0.0f;
        }

        // ---- scores: Q·K from the codes ----
        const uint8_t * kp = K + (int64_t) (kv0 + k_rg) * p.nb11;
#pragma unroll
        for (int g0 = 0; g0 < KP; g0 += KG) {
            typename KC::word_t kw[KG];
            uint32_t            kd[KG];
#pragma unroll
            for (int i = 0; i < KG; ++i) {
                const bool ok = FULL || kv0 + (g0 + i) * KR + k_rg < bp.kv_end;
                kw[i] = ok ? KC::load(kp, k_cof) : 0;
                kd[i] = ok ? *(const uint16_t *) (kp + k_dof) : 0;
                kp += sK;
            }
#pragma unroll
            for (int i = 0; i < KG; ++i) {
                float dot[NC];
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    dot[c] = 0.0f;
                }
                if constexpr (KPAIR) {
#pragma unroll
                    for (int j = 0; j < KE / 2; ++j) {
                        const float2 lv = ((const float2 *) s_ktab)[(unsigned) (kw[i] >> (4 * j)) & 15u];
#pragma unroll
                        for (int c = 0; c < NC; ++c) {
                            dot[c] = fmaf(q[c][2 * j], lv.x, dot[c]);
                            dot[c] = fmaf(q[c][2 * j + 1], lv.y, dot[c]);
                        }
                    }
                } else {
#pragma unroll
                    for (int e = 0; e < KE; ++e) {
                        const float lv = s_ktab[(unsigned) (kw[i] >> (FK::b * e)) & ((1u << FK::b) - 1u)];
#pragma unroll
                        for (int c = 0; c < NC; ++c) {
                            dot[c] = fmaf(q[c][e], lv, dot[c]);
                        }
                    }
                }
                const float d = __half2float(__ushort_as_half((unsigned short) kd[i]));
                if constexpr (!K1) {
#pragma unroll
                    for (int c = 0; c < NC; ++c) {
                        dot[c] *= d;
                    }
                }
                float s = tq_fa_reduce_scatter<NC, KL>(dot, lane);
                if constexpr (K1) {
                    s *= d;
                }
                if (KL == NC || w_wr) {
                    w_sp[(g0 + i) * KR] = s;
                }
            }
        }
        __syncwarp();

        // ---- online softmax of the chunk: lane = row ----
        float resc[NC];
        bool  grew = false;  // a column's running max changed (else every resc is exactly 1)
#pragma unroll
        for (int c = 0; c < NC; ++c) {
            float s = s_p[warp][c][lane];
            if (p.logit_softcap != 0.0f) {
                s = p.logit_softcap * tanhf(s);
            }
            s = mv[c] == -INFINITY ? -INFINITY : s + slope[c] * mv[c];  // a masked cell counts for nothing
            if (!FULL && kv0 + lane >= bp.kv_end) {
                s = -INFINITY;
            }
            const float m_new  = fmaxf(m[c], warp_reduce_max(s));
            const float e      = __expf(s - m_new);
            resc[c]            = __expf(m[c] - m_new);
            grew               = grew || m_new != m[c];
            m[c]               = m_new;
            l[c]               = l[c] * resc[c] + e;
            s_p[warp][c][lane] = V1 ? e * dv_row : e;
        }
        __syncwarp();

        // ---- V: acc += p * v, values decoded in registers ----
        if (grew) {  // warp-uniform: m is the warp's maximum
#pragma unroll
            for (int c = 0; c < NC; ++c) {
#pragma unroll
                for (int e = 0; e < VE; ++e) {
                    acc[c][e] *= resc[c];
                }
            }
        }
#pragma unroll
        for (int g0 = 0; g0 < VP; g0 += VG) {
            if (g0 > 0) {
                load_v(g0);
            }
#pragma unroll
            for (int i = 0; i < VG; ++i) {
                const float d = V1 ? 1.0f : __half2float(__ushort_as_half((unsigned short) vd[i]));
                float       v[VE];
#pragma unroll
                for (int e = 0; e < VE; ++e) {
                    v[e] = tq_fa_vtab_at<type_V>(s_vtab, (uint32_t) (vw[i][e / VS] >> (FV::b * (e % VS))), v_rep);
                }
                if constexpr (FV::n_out > 0) {
#pragma unroll
                    for (int e = 0; e < VE; ++e) {
                        v[e] *= d;
                    }
#pragma unroll
                    for (int s = 0; s < FV::n_out; ++s) {  // in slot order: a later slot wins
                        const int   j  = (int) ((vo[i][1] >> (8 * s)) & (QK_TQ - 1)) - v_i0;
                        const float ov = __half2float(__ushort_as_half((unsigned short) (vo[i][0] >> (16 * s))));
#pragma unroll
                        for (int e = 0; e < VE; ++e) {
                            v[e] = e == j ? ov : v[e];
                        }
                    }
                }
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    const float pr = v_sp[c * RW + (g0 + i) * VR];
                    const float pc = FV::n_out > 0 || V1 ? pr : pr * d;
#pragma unroll
                    for (int e = 0; e < VE; ++e) {
                        acc[c][e] = fmaf(pc, v[e], acc[c][e]);
                    }
                }
            }
        }
        __syncwarp();  // s_p is rewritten by the next chunk
    };

    tq_fa_for_chunks(bp, warp, chunk);

    // ---- the warp's row groups, then the warps ----
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        l[c] = warp_reduce_sum(l[c]);
#pragma unroll
        for (int e = 0; e < VE; ++e) {
#pragma unroll
            for (int off = VL; off < WARP_SIZE; off <<= 1) {
                acc[c][e] += __shfl_xor_sync(0xffffffff, acc[c][e], off, WARP_SIZE);
            }
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int c = 0; c < NC; ++c) {
            s_res.wm[warp][c] = m[c];
            s_res.wl[warp][c] = l[c];
        }
    }
    __syncthreads();
    float mb[NC];  // the block's max and sum of exp of each column
    float lb[NC];
    tq_fa_block_ml<NC>(s_res.wm, s_res.wl, mb, lb);
    float fw[NC];  // this warp's factor
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        fw[c] = __expf(m[c] - mb[c]);
    }
#pragma unroll
    for (int w = 0; w < NW; ++w) {
        if (warp == w && v_rg == 0) {
#pragma unroll
            for (int c = 0; c < NC; ++c) {
#pragma unroll
                for (int e = 0; e < VE; ++e) {
                    const int i = c * D + v_ch * VE + e;
                    s_res.out[i] = (w == 0 ? 0.0f : s_res.out[i]) + acc[c][e] * fw[c];
                }
            }
        }
        __syncthreads();
    }

    tq_fa_write_out<D, NC>(p, s_res.out, mb, lb, bp.kvh, bp.cg, bp.seq, bp.split);
}

// ---- tensor-core form (tq_k_fattn_mma) ----------------------------------------------------------------------

// c (16 x 8, f32) += A (16 x 16, f16) * B (16 x 8, f16): PTX mma.m16n8k16.row.col with its register fragments;
// lane = 4 g + t holds a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8, 2t+9], a3 = A[g+8][2t+8, 2t+9],
// b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g] (the lower index in the low half) and c0 = C[g][2t], c1 = C[g][2t+1],
// c2 = C[g+8][2t], c3 = C[g+8][2t+1]. The emulation (tests/cuda_emu) gathers the fragments by shuffles.
static __device__ __forceinline__ void tq_fa_mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(TQ_CUDA_EMU)
    const int lane = threadIdx.x % WARP_SIZE;
    const int g    = lane / 4;
    const int t    = lane % 4;
    auto      half_of = [](const uint32_t r, const int h) {
        return __half2float(__ushort_as_half((unsigned short) (r >> (16 * h))));
    };
    for (int tt = 0; tt < 4; ++tt) {  // k = 2 tt + h and 2 tt + 8 + h come from the lanes with t = tt
        uint32_t ar[4];
        uint32_t br[2][2];
        for (int r = 0; r < 4; ++r) {
            ar[r] = __shfl_sync(0xffffffffu, a[r], 4 * g + tt);
        }
        for (int u = 0; u < 2; ++u) {
            for (int r = 0; r < 2; ++r) {
                br[u][r] = __shfl_sync(0xffffffffu, b[r], 4 * (2 * t + u) + tt);
            }
        }
        for (int hk = 0; hk < 2; ++hk) {
            for (int h = 0; h < 2; ++h) {
                const float a_g  = half_of(ar[2 * hk], h);
                const float a_g8 = half_of(ar[2 * hk + 1], h);
                const float b_c0 = half_of(br[0][hk], h);
                const float b_c1 = half_of(br[1][hk], h);
                c[0] += a_g * b_c0;
                c[1] += a_g * b_c1;
                c[2] += a_g8 * b_c0;
                c[3] += a_g8 * b_c1;
            }
        }
    }
#elif defined(AMPERE_MMA_AVAILABLE)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    GGML_UNUSED(c);
    GGML_UNUSED(a);
    GGML_UNUSED(b);
    NO_DEVICE_CODE;
#endif
}

// A warp copies the K and V rows of its chunk (n_rows of RW, the rest as zeros) into its shared-memory slots by
// whole-warp 16-bit copies: lane l moves words l, l + 32, ... of the chunk's WK words of K rows (WK / RW per row)
// and then of V, up to TQ_FA_STAGE_BATCH loads in flight per lane before their stores. A row lands at byte 2 of a
// slot of SK (SV) bytes, a multiple of 4, so that the first block's codes are 4-byte aligned.
#define TQ_FA_STAGE_BATCH 12

template <int WK, int WV, int SK, int SV>
static __device__ __forceinline__ void tq_fa_stage_rows(uint8_t * sk, uint8_t * sv, const uint16_t * k16,
                                                        const uint16_t * v16, const int k_stride16,
                                                        const int v_stride16, const int n_rows, const int lane) {
    constexpr int NK = WK;       // per-lane copies of K (RW rows of WK / RW words: RW == WARP_SIZE)
    constexpr int NT = WK + WV;  // and of K then V
    static_assert(WARP_SIZE == 32, "one word per lane and row step");
#pragma unroll
    for (int b0 = 0; b0 < NT; b0 += TQ_FA_STAGE_BATCH) {
        uint16_t tmp[TQ_FA_STAGE_BATCH];
#pragma unroll
        for (int j = 0; j < TQ_FA_STAGE_BATCH; ++j) {
            const int it = b0 + j;
            if (it < NT) {
                const bool isk = it < NK;
                const int  W   = isk ? WK : WV;         // words per row
                const int  i   = lane + WARP_SIZE * (isk ? it : it - NK);
                const int  r   = i / W;
                const int  w   = i - r * W;
                tmp[j] = r < n_rows ? (isk ? k16[r * k_stride16 + w] : v16[r * v_stride16 + w]) : (uint16_t) 0;
            }
        }
#pragma unroll
        for (int j = 0; j < TQ_FA_STAGE_BATCH; ++j) {
            const int it = b0 + j;
            if (it < NT) {
                const bool isk = it < NK;
                const int  W   = isk ? WK : WV;
                const int  i   = lane + WARP_SIZE * (isk ? it : it - NK);
                const int  r   = i / W;
                const int  w   = i - r * W;
                *(uint16_t *) ((isk ? sk + r * SK : sv + r * SV) + 2 + 2 * w) = tmp[j];
            }
        }
    }
}

// the smallest odd multiple of 16 at least n (tq_k_fattn_mma's cross-head slots)
static constexpr __host__ __device__ int tq_fa_odd16(const int n) {
    return (n + 15) / 16 % 2 ? (n + 15) / 16 * 16 : (n + 15) / 16 * 16 + 16;
}

// tq_k_fattn_mma's cross-head variant: a warp writes its head's columns from its registers (acc in the C layout:
// columns 2 t + r % 2, dims g D / 8 + 2 i + r / 2; m, l of the lane's columns 2 t, 2 t + 1, l summed over the
// lanes of a t), normalized when the KV rows are not split (sinks as in tq_fa_write_out), else as the split's
// partial rows with their (max, sum of exp) for the combine kernel
template <int D, int NC>
static __device__ __forceinline__ void tq_fa_write_warp(const tq_fattn_params & p, const float (&acc)[D / 16][4],
                                                        const float (&m)[2], const float (&l)[2],
                                                        const tq_fa_pos & bp, const int g, const int t) {
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        const int c  = 2 * t + u;
        const int gc = bp.cg * NC + c;
        if (c >= NC || gc >= p.n_col) {
            continue;
        }
        int           h;
        const int64_t o = tq_fa_out_row(p, bp.kvh, bp.seq, gc, h);
        float *       out;
        float         f;
        if (p.n_split == 1) {
            float       lc = l[u];
            const float fs = tq_fa_sink(p, h, m[u], lc);
            out = p.dst + o * D;
            f   = lc > 0.0f ? fs / lc : 0.0f;
        } else {
            const int64_t po = (int64_t) bp.split * p.n_rows + o;
            out = p.part + po * D;
            f   = 1.0f;
            if (g == 0) {
                p.part_ml[po] = make_float2(m[u], l[u]);
            }
        }
#pragma unroll
        for (int i = 0; i < D / 16; ++i) {
            out[g * (D / 8) + 2 * i]     = acc[i][u] * f;
            out[g * (D / 8) + 2 * i + 1] = acc[i][u + 2] * f;
        }
    }
}

// tq_k_fattn_mma's cross-head variant: the block's threads copy rows kv0 .. kv0 + R - 1 of a group's heads, the
// first n bytes of each from src (16-byte pieces; rows n_rows and later as zeros), into slots of S bytes at dst
template <int R, int NP, int S>
static __device__ __forceinline__ void tq_fa_xh_copy(uint8_t * dst, const uint8_t * src, const int n,
                                                     const int64_t stride, const int n_rows, const int kv0,
                                                     const int tid) {
    for (int i = tid; i < R * NP; i += TQ_FA_NTHREADS) {
        const int r = i / NP;
        const int c = i - r * NP;
        if (16 * c < n) {
            const bool ok = r < n_rows;
            tq_cp_async16(dst + r * S + 16 * c, src + (ok ? (int64_t) (kv0 + r) * stride + 16 * c : 0), ok);
        }
    }
}

#define TQ_FA_MMA_P_PAD 8  // f16 values after each column of s_p in tq_k_fattn_mma (a row stays 16-byte aligned)

// The same blocks, splits and warp chunks as tq_k_fattn_vec, with Q·K and P·V on the tensor cores (mma.m16n8k16,
// f16 inputs, f32 sums; sm_80 and later). Lane = 4 g + t; a chunk is two tiles of 16 rows.
//   S = K Q^T per row tile and K block: A = the block's K levels of rows g, g + 8 (a lane reads 16 consecutive
//      codes of each row, 2b bits per pair of values, looked up as f16 pairs), B = Q of column g (loaded once);
//      the k index of tile j of a block is mapped to the dims 16 t + 4 j + (0..3) of the block, the same for A
//      and B. The block's K scale multiplies its partial scores (f32).
//   softmax per column in the C layout (rows g, g + 8 of each tile, columns 2t, 2t + 1): lane-local over 4 rows,
//      then over the 8 lanes of a t; the probabilities go to shared memory as f16 (the V scale folded in when a
//      row is one block) and come back as the B fragments of P·V.
//   O^T += V^T P: A = V of 4 rows (16 kt + 4 t + 0..3) at the lane's D / 8 consecutive dims g D / 8 + (0..),
//      decoded in registers from the bank-spread table; m-tile m holds the dims g D / 8 + 2 m and + 2 m + 1.
// Registers: Q D / 8, accumulators D / 4, a row tile's 8 scores: no Q copy per lane as in tq_k_fattn_vec.
// Variants: STAGE (a warp copies its chunk's rows into shared memory first), VPAIR false (vtq2 one value per lookup),
// XH (a block per TQ_FA_XH_HEADS KV heads, a warp per head, the chunks copied by cp.async: see TQ_FA_XH_HEADS; each
// warp then writes its own head's result, with no merge of the warps).
template <int D, ggml_type type_K, ggml_type type_V, int NC, bool STAGE, bool VPAIR, bool XH>
__launch_bounds__(TQ_FA_NTHREADS, TQ_FA_MMA_BLOCKS_PER_SM)
static __global__ void tq_k_fattn_mma(const tq_fattn_params p, const tq_cuda_tab<type_K> ktab,
                                      const tq_cuda_tab<type_V> vtab) {
    using FK = tq_cuda_fmt<type_K>;
    using FV = tq_cuda_fmt<type_V>;
    static_assert(!FK::trellis && FK::n_out == 0, "K must be a scalar-codebook type");
    static_assert(FV::n_out == 0, "outlier V types take tq_k_fattn_vec");
    static_assert(D % QK_TQ == 0 && D <= 256 && NC <= 8, "unsupported head size or column count");

    constexpr int  NW   = TQ_FA_NWARPS;
    constexpr int  RW   = WARP_SIZE;           // rows per warp chunk: two tiles of 16
    constexpr int  NB   = D / QK_TQ;           // blocks per row
    constexpr int  KB   = FK::b;
    constexpr int  KPB  = 2 * KB;              // bits of a pair of K codes
    constexpr int  NKP  = 1 << KPB;            // pair table entries
    constexpr int  DV   = D / 8;               // V: dims per lane and row
    constexpr int  VS   = 8;                   //    values per stream read
    constexpr int  NMT  = D / 16;              //    m-tiles (two dims of each lane)
    constexpr int  VREP = tq_fa_vrep<type_V>();
    constexpr bool VPR  = VPAIR && tq_fa_vpair<type_V>();  // vtq2: two values per table lookup (tq_fa_vpair_at)
    constexpr bool V1   = D == QK_TQ;          // a row is one block: its V scale goes into the probability
    using kword_t = typename std::conditional<KB == 2, uint32_t, uint64_t>::type;  // 16 codes of a lane
    using VC      = tq_fa_vcodes<type_V, VS>;
    constexpr int  RBK  = NB * FK::bs;                  // bytes of a K row (a head's blocks), of a V row
    constexpr int  RBV  = NB * FV::bs;
    constexpr int  SK   = (RBK + 2 + 3) / 4 * 4;        // their slots in shared memory (tq_fa_stage_rows)
    constexpr int  SV   = (RBV + 2 + 3) / 4 * 4;
    // one block per row and codes of a lane a multiple of 4 bytes: a lane's K codes are 4-byte aligned words
    constexpr bool K32  = NB == 1 && (FK::qs_off + 2) % 4 == 0 && (2 * KB) % 4 == 0;
    // the staging variant up to head size 128 (at 256 the slots would pass 48 KiB of static shared memory)
    constexpr bool ST   = STAGE && D <= 128;
    static_assert(!(STAGE && XH), "one variant at a time");
    // the cross-head variant (XH: warp w serves KV head NW hg + w of the block's group hg over all the split's rows):
    // a token's K (V) rows of the group, as the XPK (XPV) 16-byte pieces from the aligned one below the group's first
    // row (which starts at an even offset), in slots of XSK (XSV) bytes, an odd multiple of 16 (the 8 rows g of a lane
    // group then start 4 banks apart), two chunks of 32 rows: one being copied while the warps compute the other.
    // Where those slots would pass the 48 KiB of static shared memory (head size 256; at 128 the pairs with 4-bit K),
    // the warps read the cache directly (XS false)
    constexpr int  XPK  = (NW * RBK + 14 + 15) / 16;
    constexpr int  XPV  = (NW * RBV + 14 + 15) / 16;
    constexpr int  XSK  = tq_fa_odd16(16 * XPK);
    constexpr int  XSV  = tq_fa_odd16(16 * XPV);
    constexpr int  VTB  = 4 * (VPR ? tq_fa_vpair_ntab<type_V>() * TQ_FA_VPREP + FV::ntab : FV::ntab * VREP + 1);
    constexpr int  SMB  = VTB + 4 * NKP + 2 * NW * 8 * (RW + TQ_FA_MMA_P_PAD) + (int) sizeof(tq_fa_result<D, NC>);
    constexpr bool XS   = XH && D <= 128 && SMB + 2 * RW * (XSK + XSV) <= 48 * 1024;
    constexpr bool ZR   = ST || XS;  // rows past kv_end read as zeros (scale 0) from shared memory

    __shared__ __align__(16) float    s_vtab[VPR ? tq_fa_vpair_ntab<type_V>() * TQ_FA_VPREP : FV::ntab * VREP];
    __shared__ float                  s_vlv[VPR ? FV::ntab : 1];  // VPR: the levels, staged to build s_vtab
    __shared__ uint32_t               s_kpair[NKP];  // f16 pair (level[c & (2^b - 1)], level[c >> b])
    // a warp's probabilities (f16): [column][row]; the 4 lanes of a g store to columns 2 t + u, 32 words apart
    // unpadded (one bank: 4-way conflicts, Nsight Compute), 40 words apart padded (4 banks)
    __shared__ __align__(16) uint16_t s_p[NW][8][RW + TQ_FA_MMA_P_PAD];
    __shared__ __align__(16) uint8_t  s_kv[NW][ST ? RW * (SK + SV) : 4];  // ST: a warp's K rows, V rows
    __shared__ __align__(16) uint8_t  s_x[XS ? 2 : 1][XS ? RW * (XSK + XSV) : 16];  // XS: two chunks of the group
    __shared__ tq_fa_result<D, NC>    s_res;

    const int tid  = threadIdx.x;
    const int warp = tid / WARP_SIZE;
    const int lane = tid % WARP_SIZE;
    const int g    = lane / 4;
    const int t    = lane % 4;

    tq_fa_pos bp = tq_fa_block_pos(p);
    const int kvh0 = bp.kvh * NW;  // XH: the group's first KV head
    if constexpr (XH) {
        bp.kvh = kvh0 + warp;
    }

    // programmatic dependent launch, as in tq_k_fattn_vec: the tables before the sync, global memory after it
    ggml_cuda_pdl_lc();
    if constexpr (VPR) {
        tq_fa_fill_vpair<type_V, TQ_FA_NTHREADS>((uint32_t *) s_vtab, s_vlv, vtab);
    } else {
        tq_fa_fill_vtab<type_V, TQ_FA_NTHREADS>(s_vtab, vtab);
    }
    for (int i = tid; i < NKP; i += TQ_FA_NTHREADS) {
        s_kpair[i] = tq_fa_h2(ktab.v[i & ((1 << KB) - 1)], ktab.v[i >> KB]);
    }
    ggml_cuda_pdl_sync();

    // B fragments of Q (column g): tile j of block bk holds the dims 64 bk + 16 t + 4 j + (0, 1) and + (2, 3)
    uint32_t qf[NB * 4][2];
    {
        const int gc = bp.cg * NC + g;
        const float * qp = nullptr;
        if (g < NC && gc < p.n_col) {
            const int h = bp.kvh * p.gqa + gc % p.gqa;
            qp = (const float *) (p.Q + bp.seq * p.nb03 + h * p.nb02 + (gc / p.gqa) * p.nb01);
        }
#pragma unroll
        for (int j = 0; j < NB * 4; ++j) {
            const int d0 = (j / 4) * QK_TQ + 16 * t + 4 * (j % 4);
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                qf[j][r] = qp ? tq_fa_h2(p.scale * qp[d0 + 2 * r], p.scale * qp[d0 + 2 * r + 1]) : 0u;
            }
        }
    }

    // this lane's columns 2 t + u of the C layout: mask row, ALiBi slope
    const half * mrow[2];
    float        slope[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        const int c  = 2 * t + u;
        const int gc = bp.cg * NC + c;
        mrow[u]  = nullptr;
        slope[u] = 1.0f;
        if (c < NC && gc < p.n_col) {
            const int tk = gc / p.gqa;
            if (p.mask) {
                mrow[u] = (const half *) (p.mask + (bp.seq % p.ne33) * p.nb33 + tk * p.nb31);
            }
            slope[u] = get_alibi_slope(p.max_bias, bp.kvh * p.gqa + gc % p.gqa, p.n_head_log2, p.m0, p.m1);
        }
    }

    // V lane mapping: dims g DV .. g DV + DV - 1 of a row lie in one block
    const int      v_bof = (g * DV / QK_TQ) * FV::bs;
    const int      v_i0  = (g * DV) % QK_TQ;
    const uint32_t v_rep = (uint32_t) (lane % (VPR ? TQ_FA_VPREP : VREP)) * 4;

    float m[2];
    float l[2];
    float acc[NMT][4];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
        m[u] = -FLT_MAX / 2.0f;
        l[u] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < NMT; ++i) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            acc[i][r] = 0.0f;
        }
    }
    __syncthreads();

    const uint8_t * K = (const uint8_t *) (p.K + bp.seq * p.nb13 + bp.kvh * p.nb12);
    const uint8_t * V = (const uint8_t *) (p.V + bp.seq * p.nb23 + bp.kvh * p.nb22);

    // row strides as 32-bit offsets within a chunk (tq_cuda_fattn_applies: even, and below INT32_MAX / 512)
    const int nb11 = (int) p.nb11;
    const int nb21 = (int) p.nb21;
    uint8_t * sk   = s_kv[warp];
    uint8_t * sv   = sk + RW * SK;

    // XS: the group's rows in the cache from their aligned 16-byte piece (xk, xv), this warp's row in a slot (xk0, xv0),
    // the bytes of a token's pieces (xnk, xnv), the chunk being read (xbuf)
    const int64_t   xok = (int64_t) kvh0 * p.nb12;
    const int64_t   xov = (int64_t) kvh0 * p.nb22;
    const uint8_t * xk  = (const uint8_t *) p.K + bp.seq * p.nb13 + (xok & ~(int64_t) 15);
    const uint8_t * xv  = (const uint8_t *) p.V + bp.seq * p.nb23 + (xov & ~(int64_t) 15);
    const int       xk0 = (int) (xok & 15) + warp * RBK;
    const int       xv0 = (int) (xov & 15) + warp * RBV;
    const int       xnk = (int) (xok & 15) + NW * RBK;
    const int       xnv = (int) (xov & 15) + NW * RBV;
    int             xbuf = 0;

    auto chunk = [&](const int kv0, auto full) {
        constexpr bool FULL = decltype(full)::value;

        // where the chunk's rows are read: ST, from this warp's slots, copied there first (rows past kv_end as
        // zeros: scale 0, so their K scores and V values are 0, and the softmax gives those rows no weight); else
        // from the cache, rows past kv_end skipped
        const uint8_t * kb;
        const uint8_t * vb;
        int             kst;
        int             vst;
        if constexpr (XS) {
            kb  = s_x[xbuf] + xk0;
            kst = XSK;
            vb  = s_x[xbuf] + RW * XSK + xv0;
            vst = XSV;
        } else if constexpr (ST) {
            tq_fa_stage_rows<RBK / 2, RBV / 2, SK, SV>(sk, sv, (const uint16_t *) (K + (int64_t) kv0 * p.nb11),
                                                       (const uint16_t *) (V + (int64_t) kv0 * p.nb21), nb11 / 2,
                                                       nb21 / 2, FULL ? RW : bp.kv_end - kv0, lane);
            __syncwarp();
            kb  = sk + 2;
            kst = SK;
            vb  = sv + 2;
            vst = SV;
        } else {
            kb  = K + (int64_t) kv0 * p.nb11;
            kst = nb11;
            vb  = V + (int64_t) kv0 * p.nb21;
            vst = nb21;
        }

        // ---- scores: S[q] = row kv0 + 16 (q / 2) + g + 8 (q % 2), columns 2t, 2t + 1 ----
        float s[4][2];
#pragma unroll
        for (int rt = 0; rt < 2; ++rt) {
            const bool      ok0 = ZR || FULL || kv0 + 16 * rt + g < bp.kv_end;
            const bool      ok1 = ZR || FULL || kv0 + 16 * rt + g + 8 < bp.kv_end;
            const uint8_t * k0  = kb + (16 * rt + g) * kst;
            const uint8_t * k1  = k0 + 8 * kst;
            float sc[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
#pragma unroll
            for (int bk = 0; bk < NB; ++bk) {
                const int cof = bk * FK::bs + FK::qs_off + 2 * KB * t;
                kword_t   w0  = 0;
                kword_t   w1  = 0;
                if constexpr (ST && K32) {
                    w0 = tq_fa_ld32<KB / 2, kword_t>(k0 + cof);
                    w1 = tq_fa_ld32<KB / 2, kword_t>(k1 + cof);
                } else {
                    w0 = ok0 ? tq_fa_ld16<KB, kword_t>(k0 + cof) : 0;
                    w1 = ok1 ? tq_fa_ld16<KB, kword_t>(k1 + cof) : 0;
                }
                const float d0 = ok0 ? __half2float(*(const half *) (k0 + bk * FK::bs)) : 0.0f;
                const float d1 = ok1 ? __half2float(*(const half *) (k1 + bk * FK::bs)) : 0.0f;
                float         cb[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const uint32_t a[4] = {
                        s_kpair[(unsigned) (w0 >> (KPB * 2 * j)) & (NKP - 1)],
                        s_kpair[(unsigned) (w1 >> (KPB * 2 * j)) & (NKP - 1)],
                        s_kpair[(unsigned) (w0 >> (KPB * (2 * j + 1))) & (NKP - 1)],
                        s_kpair[(unsigned) (w1 >> (KPB * (2 * j + 1))) & (NKP - 1)],
                    };
                    tq_fa_mma(cb, a, qf[bk * 4 + j]);
                }
                sc[0] += d0 * cb[0];
                sc[1] += d0 * cb[1];
                sc[2] += d1 * cb[2];
                sc[3] += d1 * cb[3];
            }
            s[2 * rt][0]     = sc[0];
            s[2 * rt][1]     = sc[1];
            s[2 * rt + 1][0] = sc[2];
            s[2 * rt + 1][1] = sc[3];
        }

        // ---- online softmax per column: the lane's 4 rows, then the 8 lanes of its t ----
        float dv[4];  // V1: the V scales of the lane's rows
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int  row = kv0 + 16 * (q / 2) + g + 8 * (q % 2);
            const bool ok  = FULL || row < bp.kv_end;
            dv[q] = V1 && ok ? __half2float(*(const half *) (vb + (row - kv0) * vst)) : 0.0f;
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                float x = s[q][u];
                if (p.logit_softcap != 0.0f) {
                    x = p.logit_softcap * tanhf(x);
                }
                const float mv = mrow[u] && ok ? __half2float(mrow[u][row]) : 0.0f;
                x       = mv == -INFINITY ? -INFINITY : x + slope[u] * mv;  // a masked cell counts for nothing
                s[q][u] = ok ? x : -INFINITY;
            }
        }
        float resc[2];
        bool  grew = false;  // this lane's running max changed (else every resc is exactly 1)
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            float mx = fmaxf(fmaxf(s[0][u], s[1][u]), fmaxf(s[2][u], s[3][u]));
#pragma unroll
            for (int off = 4; off < WARP_SIZE; off <<= 1) {
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, off, WARP_SIZE));
            }
            const float m_new = fmaxf(m[u], mx);
            resc[u]           = __expf(m[u] - m_new);
            grew              = grew || m_new != m[u];
            m[u]              = m_new;
            float ls          = 0.0f;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                const float e = __expf(s[q][u] - m_new);
                ls += e;
                const float pv = V1 ? e * dv[q] : e;
                s_p[warp][2 * t + u][16 * (q / 2) + g + 8 * (q % 2)] = __half_as_ushort(__float2half_rn(pv));
            }
            l[u] = l[u] * resc[u] + ls;
        }
        if (grew) {
#pragma unroll
            for (int i = 0; i < NMT; ++i) {
                acc[i][0] *= resc[0];
                acc[i][1] *= resc[1];
                acc[i][2] *= resc[0];
                acc[i][3] *= resc[1];
            }
        }
        __syncwarp();

        // ---- O^T += V^T P: k-tile kt = rows 16 kt + 4 t + (0..3) ----
#pragma unroll
        for (int kt = 0; kt < 2; ++kt) {
            const uint2    pw   = *(const uint2 *) &s_p[warp][g][16 * kt + 4 * t];
            const uint32_t b[2] = { pw.x, pw.y };
            const uint8_t * vp  = vb + (16 * kt + 4 * t) * vst + v_bof;
            bool  ok[4];
            float dr[4];  // V scales (a row of several blocks)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                ok[i] = ZR || FULL || kv0 + 16 * kt + 4 * t + i < bp.kv_end;
                dr[i] = !V1 && ok[i] ? __half2float(*(const half *) (vp + i * vst)) : 1.0f;
            }
#pragma unroll
            for (int sl = 0; sl < DV / VS; ++sl) {  // VS dims of the 4 rows at a time: m-tiles 4 sl .. 4 sl + 3
                if constexpr (VPR) {
                    // pr[i][mm]: row i's f16 pair of dims 2 mm, 2 mm + 1 (scaled: several blocks per row); an A
                    // register pairs two rows of one dim, so the pairs of rows 0 and 1 (2 and 3) are interleaved
                    uint32_t pr[4][VS / 2];
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const typename VC::word_t w = ok[i] ? VC::load(vp + i * vst, v_i0 + sl * VS) : 0;
#pragma unroll
                        for (int mm = 0; mm < VS / 2; ++mm) {
                            const uint32_t h = tq_fa_vpair_at<type_V>((const uint32_t *) s_vtab,
                                                                      (uint32_t) (w >> (2 * FV::b * mm)), v_rep);
                            pr[i][mm] = V1 ? h : tq_fa_h2_scale(h, dr[i]);
                        }
                    }
#pragma unroll
                    for (int mm = 0; mm < VS / 2; ++mm) {
                        const uint32_t a[4] = {
                            __byte_perm(pr[0][mm], pr[1][mm], 0x5410),  // dim 2 mm of rows 0, 1
                            __byte_perm(pr[0][mm], pr[1][mm], 0x7632),  // dim 2 mm + 1
                            __byte_perm(pr[2][mm], pr[3][mm], 0x5410),
                            __byte_perm(pr[2][mm], pr[3][mm], 0x7632),
                        };
                        tq_fa_mma(acc[sl * (VS / 2) + mm], a, b);
                    }
                } else {
                    float v[4][VS];
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const typename VC::word_t w = ok[i] ? VC::load(vp + i * vst, v_i0 + sl * VS) : 0;
#pragma unroll
                        for (int e = 0; e < VS; ++e) {
                            const float tv = tq_fa_vtab_at<type_V>(s_vtab, (uint32_t) (w >> (FV::b * e)), v_rep);
                            // several blocks per row: the scale is applied here, within the f16 range (a
                            // value beyond it would be infinite, and 0 * inf a NaN for a row of probability 0)
                            v[i][e] = V1 ? tv : fminf(fmaxf(tv * dr[i], -TQ_FA_F16_MAX), TQ_FA_F16_MAX);
                        }
                    }
#pragma unroll
                    for (int mm = 0; mm < VS / 2; ++mm) {
                        const uint32_t a[4] = {
                            tq_fa_h2(v[0][2 * mm], v[1][2 * mm]),
                            tq_fa_h2(v[0][2 * mm + 1], v[1][2 * mm + 1]),
                            tq_fa_h2(v[2][2 * mm], v[3][2 * mm]),
                            tq_fa_h2(v[2][2 * mm + 1], v[3][2 * mm + 1]),
                        };
                        tq_fa_mma(acc[sl * (VS / 2) + mm], a, b);
                    }
                }
            }
        }
        __syncwarp();  // s_p is rewritten by the next chunk
    };

    if constexpr (XS) {
        // chunk ci + 1 is copied (its own commit group) while the warps compute chunk ci; a barrier before the
        // warps read a chunk (every thread's copies waited for), one after (its slots are copied into next)
        const int n_ch  = (bp.kv_end - bp.kv_begin + RW - 1) / RW;
        auto      issue = [&](const int ci) {
            const int kv0 = bp.kv_begin + ci * RW;
            uint8_t * dk  = s_x[ci & 1];
            uint8_t * dv  = dk + RW * XSK;
            tq_fa_xh_copy<RW, XPK, XSK>(dk, xk, xnk, p.nb11, bp.kv_end - kv0, kv0, tid);
            tq_fa_xh_copy<RW, XPV, XSV>(dv, xv, xnv, p.nb21, bp.kv_end - kv0, kv0, tid);
            tq_cp_async_commit();
        };
        if (n_ch > 0) {
            issue(0);
        }
#pragma unroll 1
        for (int ci = 0; ci < n_ch; ++ci) {
            if (ci + 1 < n_ch) {
                issue(ci + 1);
                tq_cp_async_wait<1>();
            } else {
                tq_cp_async_wait<0>();
            }
            __syncthreads();
            xbuf          = ci & 1;
            const int kv0 = bp.kv_begin + ci * RW;
            if (kv0 + RW <= bp.kv_end) {
                chunk(kv0, std::true_type());
            } else {
                chunk(kv0, std::false_type());
            }
            __syncthreads();
        }
    } else if constexpr (XH) {
#pragma unroll 1
        for (int kv0 = bp.kv_begin; kv0 < bp.kv_end; kv0 += RW) {
            if (kv0 + RW <= bp.kv_end) {
                chunk(kv0, std::true_type());
            } else {
                chunk(kv0, std::false_type());
            }
        }
    } else {
        tq_fa_for_chunks(bp, warp, chunk);
    }

    // ---- the warp's 8 lanes of a column, then (one head per block) the warps ----
#pragma unroll
    for (int u = 0; u < 2; ++u) {
#pragma unroll
        for (int off = 4; off < WARP_SIZE; off <<= 1) {
            l[u] += __shfl_xor_sync(0xffffffff, l[u], off, WARP_SIZE);
        }
    }
    if constexpr (XH) {
        tq_fa_write_warp<D, NC>(p, acc, m, l, bp, g, t);
    } else {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            if (g == 0 && 2 * t + u < NC) {
                s_res.wm[warp][2 * t + u] = m[u];
                s_res.wl[warp][2 * t + u] = l[u];
            }
        }
        __syncthreads();
        float mb[NC];
        float lb[NC];
        tq_fa_block_ml<NC>(s_res.wm, s_res.wl, mb, lb);
        float fw[2];  // this warp's factor of the lane's columns
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            float mc = 0.0f;
#pragma unroll
            for (int c = 0; c < NC; ++c) {  // registers: constant indices only
                mc = c == 2 * t + u ? mb[c] : mc;
            }
            fw[u] = __expf(m[u] - mc);
        }
#pragma unroll
        for (int w = 0; w < NW; ++w) {
            if (warp == w) {
#pragma unroll
                for (int i = 0; i < NMT; ++i) {
#pragma unroll
                    for (int r = 0; r < 4; ++r) {
                        const int c = 2 * t + r % 2;  // c0, c1: dim slot g; c2, c3: slot g + 8
                        if (c < NC) {
                            const int o = c * D + g * DV + 2 * i + r / 2;
                            s_res.out[o] = (w == 0 ? 0.0f : s_res.out[o]) + acc[i][r] * fw[r % 2];
                        }
                    }
                }
            }
            __syncthreads();
        }

        tq_fa_write_out<D, NC>(p, s_res.out, mb, lb, bp.kvh, bp.cg, bp.seq, bp.split);
    }
}

template <int D, ggml_type type_K, ggml_type type_V, int NC>
void tq_fattn_launch(const tq_fattn_params & p, cudaStream_t stream) {
    // with programmatic dependent launch where ggml-cuda uses it (tq_cuda_launch)
    const ggml_cuda_kernel_launch_params lp(dim3(p.n_kv_head * p.n_col_grp, p.n_seq, p.n_split), dim3(TQ_FA_NTHREADS),
                                            0, stream);
    const tq_cuda_tab<type_K>            kt = tq_cuda_host_tab<type_K>();
    const tq_cuda_tab<type_V>            vt = tq_cuda_host_tab<type_V>();
    if constexpr (tq_cuda_fmt<type_V>::n_out == 0) {
        if constexpr (tq_fa_vpair<type_V>()) {
            if (p.mma == 3) {
                tq_cuda_launch(tq_k_fattn_mma<D, type_K, type_V, NC, false, false, false>, lp, p, kt, vt);
                return;
            }
        }
        if (p.mma == 2) {
            tq_cuda_launch(tq_k_fattn_mma<D, type_K, type_V, NC, true, true, false>, lp, p, kt, vt);
            return;
        }
        if (p.mma == 4) {  // a block per group of TQ_FA_XH_HEADS KV heads
            const ggml_cuda_kernel_launch_params lx(dim3(p.n_kv_head / TQ_FA_XH_HEADS * p.n_col_grp, p.n_seq,
                                                         p.n_split), dim3(TQ_FA_NTHREADS), 0, stream);
            tq_cuda_launch(tq_k_fattn_mma<D, type_K, type_V, NC, false, true, true>, lx, p, kt, vt);
            return;
        }
        if (p.mma != 0) {
            tq_cuda_launch(tq_k_fattn_mma<D, type_K, type_V, NC, false, true, false>, lp, p, kt, vt);
            return;
        }
    }
    tq_cuda_launch(tq_k_fattn_vec<D, type_K, type_V, NC>, lp, p, kt, vt);
}

// instances of one head size D: NC = 2, 4, 8 query columns per block for every compiled pair
#define TQ_FA_INSTANCE_NC(D, K, V, NC) \
    template void tq_fattn_launch<D, GGML_TYPE_##K, GGML_TYPE_##V, NC>(const tq_fattn_params &, cudaStream_t);
