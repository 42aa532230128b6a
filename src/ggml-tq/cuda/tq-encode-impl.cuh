// llama-tq: the CUDA encoders of the ktq / vtq blocks (SET_ROWS and CPY to our types), device code only.
// Included by tq-cuda.cu, which supplies the locators (where the blocks of an op come from and go to: a class
// Loc with src_row(ib), nb00 and dst_blk(ib)) and the launches; tests/cuda_emu runs these kernels on a CPU
// and compares their bytes with the CPU reference's. Built with -fmad=false (see tq-cuda.cu).
#pragma once

#include "common.cuh"

#include <cmath>
#include <cstdint>
#include <type_traits>

#define TQ_CUDA_INF        3.0e38f  // TQ_INF of tq-trellis.c
#define TQ_CUDA_FP16_MAX   65504.0

// ---- tables -------------------------------------------------------------------------------------------

// copy the by-value table of a kernel argument into shared memory (call from all threads, then sync)
template <ggml_type type>
static __device__ __forceinline__ void tq_cuda_load_tab(float * s_tab, const tq_cuda_tab<type> & tab) {
    for (int i = threadIdx.x; i < tq_cuda_fmt<type>::ntab; i += blockDim.x) {
        s_tab[i] = tab.v[i];
    }
}

// ---- encoders -------------------------------------------------------------------------------------

static __device__ __forceinline__ double tq_cuda_sanitize(const float v) {
    return isfinite(v) ? (double) v : 0.0;
}

static __device__ __forceinline__ uint16_t tq_cuda_fp16_bits(const float v) {
    return __half_as_ushort(__float2half_rn(v));
}

static __device__ __forceinline__ float tq_cuda_fp16_val(const uint16_t h) {
    return __half2float(__ushort_as_half(h));
}

// ---- scalar codebook encoder (ktqb, vtqb_1): tq_codebook_quantize_block of tq-codebook.c, one warp per block and
// starting scale (see tq_k_encode_codebook)

#define TQ_CB_ITERS 8

struct tq_cuda_cb_params {
    float  lv[16];
    double mid[15];
    double lmax;
};

template <ggml_type type>
static tq_cuda_cb_params tq_cuda_host_cb_params() {
    constexpr int     n  = 1 << tq_cuda_fmt<type>::b;
    const float *     lv = tq_levels(TQ_GGML_TO_TQ(type));
    tq_cuda_cb_params p  = {};
    float             am = 0.0f;
    for (int i = 0; i < n; ++i) {
        p.lv[i] = lv[i];
        am      = fmaxf(am, fabsf(lv[i]));
        if (i + 1 < n) {
            p.mid[i] = 0.5 * ((double) lv[i] + (double) lv[i + 1]);
        }
    }
    p.lmax = am;
    return p;
}

// the nearest of n sorted levels, given the n - 1 ascending mid-points thr: the count of thresholds below x (the
// index a binary search finds; counted with constant indices so that thr stays in registers, not local memory)
template <int n>
static __device__ __forceinline__ int tq_cuda_nearest(const double (&thr)[n - 1], const double x) {
    int c = 0;
#pragma unroll
    for (int i = 0; i < n - 1; ++i) {
        c += x > thr[i] ? 1 : 0;
    }
    return c;
}

// warp-wide sum / max of a double: every lane ends with the same value (xor butterfly: each pairwise sum
// sees its two operands in the same order on both lanes)
static __device__ __forceinline__ double tq_cuda_warp_sum(double v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_xor_sync(0xFFFFFFFF, v, off);
    }
    return v;
}

static __device__ __forceinline__ double tq_cuda_warp_max(double v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v = fmax(v, __shfl_xor_sync(0xFFFFFFFF, v, off));
    }
    return v;
}

// the codes of a warp's block (code of sample j = lane j and lane j - 32, in s_codes) as the b-bit stream:
// lane i < 8 * b writes byte i
template <int b>
static __device__ __forceinline__ void tq_cuda_pack_codes(const uint8_t * s_codes, uint8_t * qs, const int lane) {
    if (lane < QK_TQ * b / 8) {
        unsigned byte = 0;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            const int bit = 8 * lane + t;
            byte |= ((s_codes[bit / b] >> (bit % b)) & 1u) << t;
        }
        qs[lane] = (uint8_t) byte;
    }
}

// Two warps (one thread block) per block, one per starting scale (the CPU tries them one after the other; here they run side
// by side and the first warp then applies the CPU's rule for keeping a candidate, in the CPU's order). Lane l
// holds samples l and l + 32: the same iterations as the CPU reference, with the sums over the block taken
// by warp reductions (so a different summation order: the stored scale can differ from the CPU's in its last
// bit where two candidates are within rounding of each other).
// block ib of a 64-thread thread block (the body of tq_k_encode_codebook and of the K part of tq_k_encode_kv)
template <ggml_type type, class Loc>
static __device__ __forceinline__ void tq_encode_codebook_block(const Loc & loc, const tq_cuda_cb_params & P,
                                                                const int64_t ib) {
    using F        = tq_cuda_fmt<type>;
    constexpr int b = F::b;
    constexpr int n = 1 << b;

    __shared__ float    s_lv[16];
    __shared__ double   s_mid[15];
    __shared__ uint8_t  s_codes[2][QK_TQ];
    __shared__ double   s_err[2];
    __shared__ uint16_t s_d16[2];
    if (threadIdx.x < n) {
        s_lv[threadIdx.x] = P.lv[threadIdx.x];
    }
    if (threadIdx.x < n - 1) {
        s_mid[threadIdx.x] = P.mid[threadIdx.x];
    }
    __syncthreads();

    const int    si   = threadIdx.x / 32;  // the starting scale this warp tries
    const int    lane = threadIdx.x % 32;
    const double lmax = P.lmax;

    const char * xrow = loc.src_row(ib);
    const double x0   = tq_cuda_sanitize(*(const float *) (xrow + lane * loc.nb00));
    const double x1   = tq_cuda_sanitize(*(const float *) (xrow + (lane + 32) * loc.nb00));
    const double ss   = tq_cuda_warp_sum(x0 * x0 + x1 * x1);
    const double amax = tq_cuda_warp_max(fmax(fabs(x0), fabs(x1)));

    int      c0 = 0, c1 = 0;  // current codes
    uint16_t cand_d16 = 0;    // this start's candidate (0: none)
    double   cand_err = ss;

    if (ss > 0.0 && lmax > 0.0) {
        double thr[n - 1];
        double d     = si == 0 ? sqrt(ss / QK_TQ) : amax / lmax;
        double d_fit = 0.0;
        double e_fit = ss;
        // the error of each iteration's scale does not steer the iterations: its warp sums are taken after the
        // loop, side by side, instead of one chain of shuffles per iteration
        double dns[TQ_CB_ITERS];
        double errp[TQ_CB_ITERS];  // this lane's part of the iteration's squared error
        int    n_it = 0;
#pragma unroll
        for (int it = 0; it < TQ_CB_ITERS; ++it) {
#pragma unroll
            for (int i = 0; i < n - 1; ++i) {
                thr[i] = s_mid[i] * d;
            }
            const int n0 = tq_cuda_nearest<n>(thr, x0);
            const int n1 = tq_cuda_nearest<n>(thr, x1);
            const bool changed = __any_sync(0xFFFFFFFF, it == 0 || n0 != c0 || n1 != c1);
            c0 = n0;
            c1 = n1;
            const double num = tq_cuda_warp_sum(x0 * s_lv[c0] + x1 * s_lv[c1]);
            const double den = tq_cuda_warp_sum((double) s_lv[c0] * s_lv[c0] + (double) s_lv[c1] * s_lv[c1]);
            if (!changed || !(num > 0.0) || !(den > 0.0)) {
                break;
            }
            const double dn = num / den;
            const double e0 = x0 - dn * s_lv[c0];
            const double e1 = x1 - dn * s_lv[c1];
            dns[it]         = dn;
            errp[it]        = e0 * e0 + e1 * e1;
            n_it            = it + 1;
            d               = dn;
        }
        double errs[TQ_CB_ITERS];
#pragma unroll
        for (int it = 0; it < TQ_CB_ITERS; ++it) {
            errs[it] = it < n_it ? tq_cuda_warp_sum(errp[it]) : 0.0;
        }
#pragma unroll
        for (int it = 0; it < TQ_CB_ITERS; ++it) {
            if (it < n_it && errs[it] < e_fit) {
                e_fit = errs[it];
                d_fit = dns[it];
            }
        }
        if (d_fit > 0.0) {
            const uint16_t d16 = tq_cuda_fp16_bits((float) fmin(d_fit, TQ_CUDA_FP16_MAX));
            const double   dq  = tq_cuda_fp16_val(d16);
            if (dq > 0.0) {
#pragma unroll
                for (int i = 0; i < n - 1; ++i) {
                    thr[i] = s_mid[i] * dq;
                }
                c0 = tq_cuda_nearest<n>(thr, x0);
                c1 = tq_cuda_nearest<n>(thr, x1);
                const double e0 = x0 - dq * s_lv[c0];
                const double e1 = x1 - dq * s_lv[c1];
                cand_err = tq_cuda_warp_sum(e0 * e0 + e1 * e1);
                cand_d16 = d16;
            }
        }
    }
    s_codes[si][lane]      = (uint8_t) c0;
    s_codes[si][lane + 32] = (uint8_t) c1;
    if (lane == 0) {
        s_err[si] = cand_err;
        s_d16[si] = cand_d16;
    }
    __syncthreads();
    if (si != 0) {
        return;
    }

    // the CPU's rule, start 0 then start 1: keep a candidate that lowers the error (the first one also on a tie
    // with the all-zero block's error)
    double   best_e16 = ss;
    uint16_t best_d16 = 0;
    int      best     = -1;
    for (int k = 0; k < 2; ++k) {
        const uint16_t d16 = s_d16[k];
        const double   err = s_err[k];
        if (d16 != 0 && (err < best_e16 || (best_d16 == 0 && err <= best_e16))) {
            best_e16 = err;
            best_d16 = d16;
            best     = k;
        }
    }
    uint8_t * codes = s_codes[best < 0 ? 0 : best];
    if (best < 0) {
        codes[lane]      = 0;
        codes[lane + 32] = 0;
    }
    __syncwarp();
    uint8_t * blk = loc.dst_blk(ib);
    if (lane == 0) {
        blk[0] = (uint8_t) (best_d16 & 0xFF);
        blk[1] = (uint8_t) (best_d16 >> 8);
    }
    tq_cuda_pack_codes<b>(codes, blk + F::qs_off, lane);
}

template <ggml_type type, class Loc>
static __global__ void __launch_bounds__(64) tq_k_encode_codebook(const Loc loc, const tq_cuda_cb_params P) {
    tq_encode_codebook_block<type, Loc>(loc, P, blockIdx.x);
}

// ---- trellis encoder (vtqb_2, vtqb_3): tq_trellis_quantize_block + two-pass tail-biting Viterbi.
// The cost of state s after step i is m_i[s mod 64] + (y_i - t[s])^2 (weight-0 samples: m_i), where m_i[g] is
// the minimum over the K = 2^k predecessors g*K + h of the costs after step i - 1 (ties: lowest h, remembered
// for the trace-back). So a step exchanges only the 64 minima m (double-buffered in shared memory). A thread
// owns G groups g = t + (64 / G) a, a < G, whose predecessors have the same K consecutive minima
// m_{i-1}[(t*K + h) mod 64] (16-byte loads serve all G), adds the squared errors of its G*K predecessor states
// (table values in registers) and writes m_i of its groups. Two forms, one source:
//   G = 1: 64 threads (two warps) per trellis block, a block barrier per step: the shorter chain, for a decode
//          step's few blocks;
//   G = 2: one warp per trellis block (TQ_VIT_G2_BLOCKS of them per thread block), warp barriers only and half
//          the loads per group: more blocks per SM and fewer stalls, for a prefill's thousands of blocks.
// Arithmetic, order and tie rules are those of tq-viterbi.inc (a cost is the same m + e^2, rounded once each),
// so the chosen path is the CPU's in both forms.
// Tried and measured slower (session of 2026-12-04, eleventh): vtq2's G = 1 form with two steps per barrier (each
// thread also computing the minima of its predecessors' 4 groups from 16 minima and 16 table values): the fused
// K + V write of a decode step took 17.84 us per launch against 11.35 (H200, Nsight Compute; docs/results.md).

// the largest |value| of a trellis table (the tmax argument of tq_k_encode_trellis), on the host
template <ggml_type type>
static float tq_cuda_tab_max(const tq_cuda_tab<type> & tab) {
    float tmax = 0.0f;
    for (int i = 0; i < tq_cuda_fmt<type>::ntab; ++i) {
        tmax = fmaxf(tmax, fabsf(tab.v[i]));
    }
    return tmax;
}

#define TQ_VIT_THREADS    64  // threads per thread block, both forms
#define TQ_VIT_G2_BLOCKS  2   // trellis blocks per thread block of the G = 2 form
// launches of at least this many trellis blocks per SM take the G = 2 form (a 512-token prefill of 8 KV heads
// of 64: 4096 blocks, ~31 per SM on an H100/H200; a decode step: 8 to 64 blocks)
#define TQ_VIT_G2_MIN_PER_SM 4
// rows of hb kept by the G = 1 form: an odd step reads the row two steps back while it writes its own
#define TQ_VIT_HB_RING 4

// the working memory of one trellis block
template <int k>
struct tq_vit_smem {
    float4   m[2][64 / 4];               // [step % 2]: the minima m_i[g] of a step, four groups per float4
    float4   y4[QK_TQ / 4];              // Viterbi target (four samples per float4)
    uint8_t  j2[QK_TQ / 2][64];          // [even step i / 2][group]: h of step i | h of step i - 1 on that path << k
    uint8_t  hb[TQ_VIT_HB_RING][64];     // G = 1: [step % TQ_VIT_HB_RING][group]: h of the step
    uint8_t  h_last[64];                 // [group]: h of the last step
    float    xv[QK_TQ];                  // input block
    uint16_t st[QK_TQ];                  // path of the last pass
    uint8_t  code[QK_TQ];                // its k-bit codes
    uint64_t w0;                         // bit j set: sample j has weight 0 (an outlier slot)
    float    bc[2];                      // G = 1, end of a free pass: each warp's best cost,
    int      bp[2];                      //   its storage position in tq-viterbi.inc
    int      bs[2];                      //   and its state
    int      zero;                       // the block is all zero (after the outliers)
};

// storage position of state s in tq-viterbi.inc (used for its tie rule at the end of a free pass)
template <int k>
static __device__ __forceinline__ int tq_vit_cpu_pos(const int s) {
    constexpr int K = 1 << k;
    constexpr int Q = 64 / K;
    const int     g = s >> k;
    return (s & (K - 1)) * 64 + (g % Q) * K + g / Q;
}

// the minimum of c as a tree of pairs (log2 K levels instead of K - 1 in a chain); the right one of a pair wins
// only if strictly smaller, so the index is the lowest h of the minimum, as the CPU's scan. Returns c's minimum,
// its index in *h_min.
template <int K>
static __device__ __forceinline__ float tq_vit_min(float (&c)[K], int * h_min) {
    int hi[K];
#pragma unroll
    for (int h = 0; h < K; ++h) {
        hi[h] = h;
    }
#pragma unroll
    for (int w = 1; w < K; w *= 2) {
#pragma unroll
        for (int h = 0; h < K; h += 2 * w) {
            const bool r = c[h + w] < c[h];
            c[h]         = r ? c[h + w] : c[h];
            hi[h]        = r ? hi[h + w] : hi[h];
        }
    }
    *h_min = hi[0];
    return c[0];
}

// the minimum of the costs after a step of a group's K predecessors: the step's minima mv plus the squared
// errors of the predecessor states for sample yp (weight-0 sample, z: no error); its index in *h_min
template <int K>
static __device__ __forceinline__ float tq_vit_pred_min(const float (&mv)[K], const float (&t_pred)[K], const float yp,
                                                        const bool z, int * h_min) {
    float c[K];
#pragma unroll
    for (int h = 0; h < K; ++h) {
        const float e = yp - t_pred[h];
        c[h]          = z ? mv[h] : __fadd_rn(mv[h], __fmul_rn(e, e));
    }
    return tq_vit_min<K>(c, h_min);
}

// m[(t*K + h) mod 64], h = 0 .. K - 1: the minima of the predecessors of thread t's groups (16-byte aligned)
template <int K>
static __device__ __forceinline__ void tq_vit_load_m(const float4 * m, const int t, float (&mv)[K]) {
    const float4 * mp = m + (((t * K) & 63) >> 2);
#pragma unroll
    for (int q = 0; q < K / 4; ++q) {
        const float4 v = mp[q];
        mv[4 * q + 0]  = v.x;
        mv[4 * q + 1]  = v.y;
        mv[4 * q + 2]  = v.z;
        mv[4 * q + 3]  = v.w;
    }
}

// the barrier between the steps of a trellis block: its two warps (G = 1) or its warp (G = 2)
template <int G>
static __device__ __forceinline__ void tq_vit_sync() {
    if constexpr (G == 1) {
        __syncthreads();
    } else {
        __syncwarp();
    }
}

// One pass over the 64 samples y[(i + rot) % 64] (weight 0 where bit of w0 is set; W0: the type has outlier
// slots, else w0 is 0) by the 64 / G threads t of a trellis block. g_fix < 0: free; else state_0 mod 64 == g_fix
// and state_63 >> k == g_fix. Leaves the best path in ws.st (a free pass only ws.st[32 .. 63]).
// t_pred[a][h]: the table values of the predecessor states (t + 64 a / G)*K + h of the thread's groups.
template <ggml_type type, int G, bool W0>
static __device__ __forceinline__ void tq_vit_pass(tq_vit_smem<tq_cuda_fmt<type>::b> & ws,
                                                   const tq_cuda_tab<type> & tab,
                                                   const float (&t_pred)[G][1 << tq_cuda_fmt<type>::b],
                                                   const uint64_t w0, const int rot, const int g_fix, const int t) {
    constexpr int k  = tq_cuda_fmt<type>::b;
    constexpr int K  = 1 << k;
    constexpr int NT = 64 / G;  // threads per trellis block
    const float * y  = (const float *) ws.y4;

    // step 0: no predecessor, m_0 = 0 (fixed pass: the other groups at infinity; infinity + e^2 is infinity)
#pragma unroll
    for (int a = 0; a < G; ++a) {
        const int g            = t + NT * a;
        ((float *) ws.m[0])[g] = g_fix < 0 || g == g_fix ? 0.0f : TQ_CUDA_INF;
    }
    if constexpr (G == 1) {
        ws.hb[0][t] = 0;  // what the first odd step's dummy read finds
    }
    tq_vit_sync<G>();

    // bit i: sample (i + rot) % 64 has weight 0
    const uint64_t wz = W0 ? (rot == 0 ? w0 : (w0 >> rot) | (w0 << (QK_TQ - rot))) : 0;

    // step i (1 .. 63): m_i[g] = the minimum of the costs after step i - 1 of g's predecessors, from the minima
    // of step i - 1 (src) and the sample yp of step i - 1.
    // Two-step back-pointers for the trace-back: j2[i / 2][g] of an even step i holds g's h and the h of step
    // i - 1 of the group g1 = (g*K + h) mod 64 that g's best predecessor belongs to. G = 2: g1's lane passes it
    // (h_prev: step i - 1's h of the lane's groups) by a shuffle; G = 1: the next (odd) step reads it from the
    // ring hb beside the minima (so that the read is not on the even step's path to the barrier).
    float           v[G];        // m_i of the thread's groups, last step
    int             hm[G];       // their h, last step
    unsigned        h_prev = 0;  // G = 2
    int             p_h    = 0;  // G = 1: pending h of the last even step,
    const uint8_t * p_hbp  = &ws.hb[0][t];  //   the hb of the step before it that completes it (a dummy at first)
    auto step = [&](const int i, const float4 * src, float4 * dst, const float yp, auto odd) {
        constexpr bool ODD = decltype(odd)::value;  // i % 2 == 1
        const bool     zp  = W0 && ((wz >> (i - 1)) & 1);
        float          mv[K];
        tq_vit_load_m<K>(src, t, mv);
        int hb_prev = 0;
        if constexpr (G == 1 && ODD) {
            hb_prev = *p_hbp;  // (at i = 1 a dummy, stored in j2[0], which the trace-back never reads)
        }
#pragma unroll
        for (int a = 0; a < G; ++a) {
            v[a]                        = tq_vit_pred_min<K>(mv, t_pred[a], yp, zp, &hm[a]);
            ((float *) dst)[t + NT * a] = v[a];
        }
        if constexpr (G == 1) {
            ws.hb[i % TQ_VIT_HB_RING][t] = (uint8_t) hm[0];
            if (!ODD) {
                p_h   = hm[0];
                p_hbp = &ws.hb[(i - 1) % TQ_VIT_HB_RING][((t << k) | hm[0]) & 63];
            } else {
                ws.j2[i / 2][t] = (uint8_t) (p_h | hb_prev << k);
            }
        } else {
            if (!ODD) {
#pragma unroll
                for (int a = 0; a < G; ++a) {
                    const int      g1 = ((t << k) | hm[a]) & 63;
                    const unsigned hv = __shfl_sync(0xFFFFFFFF, h_prev, g1 & 31);
                    ws.j2[i / 2][t + NT * a] = (uint8_t) (hm[a] | ((hv >> (8 * (g1 >> 5))) & 0xFF) << k);
                }
            }
            h_prev = (unsigned) hm[0] | (unsigned) hm[G - 1] << 8;
        }
        tq_vit_sync<G>();
    };
    // four steps per iteration (the hb rows i % 4 are constants), with the samples of steps i - 1 .. i + 2 in one
    // load: steps 1 .. 60, then 61, 62, 63
    static_assert(QK_TQ % 4 == 0 && TQ_VIT_HB_RING == 4, "steps 1 + 4 n .. 4 + 4 n, then the last three");
#pragma unroll 1
    for (int i = 1; i + 3 < QK_TQ; i += 4) {
        const float4 yq = ws.y4[((i - 1 + rot) & (QK_TQ - 1)) / 4];
        step(i, ws.m[0], ws.m[1], yq.x, std::true_type());
        step(i + 1, ws.m[1], ws.m[0], yq.y, std::false_type());
        step(i + 2, ws.m[0], ws.m[1], yq.z, std::true_type());
        step(i + 3, ws.m[1], ws.m[0], yq.w, std::false_type());
    }
    {
        const float4 yq = ws.y4[((QK_TQ - 4 + rot) & (QK_TQ - 1)) / 4];
        step(QK_TQ - 3, ws.m[0], ws.m[1], yq.x, std::true_type());
        step(QK_TQ - 2, ws.m[1], ws.m[0], yq.y, std::false_type());
        step(QK_TQ - 1, ws.m[0], ws.m[1], yq.z, std::true_type());  // the last step is odd and writes buffer 1
    }
#pragma unroll
    for (int a = 0; a < G; ++a) {
        ws.h_last[t + NT * a] = (uint8_t) hm[a];
    }
    const bool  z_last = W0 && ((wz >> (QK_TQ - 1)) & 1);
    const float y_last = y[(QK_TQ - 1 + rot) & (QK_TQ - 1)];
    tq_vit_sync<G>();

    int       sbest = 0;                          // the end state (thread tb's)
    const int tb    = g_fix < 0 ? 0 : g_fix % NT;  // the thread that traces back
    if (g_fix < 0) {
        // min cost over all states (thread t: the states g + 64 j of its groups g, cost m_63[g] + e^2), ties:
        // lowest storage position of tq-viterbi.inc
        float bc = TQ_CUDA_INF;
        int   bp = 1 << 30;
        int   bs = 0;
#pragma unroll
        for (int a = 0; a < G; ++a) {
#pragma unroll
            for (int j = 0; j < K; ++j) {
                const int   s = t + NT * a + 64 * j;
                const float e = y_last - tab.v[s];
                const float c = z_last ? v[a] : __fadd_rn(v[a], __fmul_rn(e, e));
                const int   p = tq_vit_cpu_pos<k>(s);
                if (c < bc || (c == bc && p < bp)) {
                    bc = c;
                    bp = p;
                    bs = s;
                }
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float oc = __shfl_xor_sync(0xFFFFFFFF, bc, off);
            const int   op = __shfl_xor_sync(0xFFFFFFFF, bp, off);
            const int   os = __shfl_xor_sync(0xFFFFFFFF, bs, off);
            if (oc < bc || (oc == bc && op < bp)) {
                bc = oc;
                bp = op;
                bs = os;
            }
        }
        sbest = bs;
        if constexpr (G == 1) {
            // and across the two warps
            if (t % 32 == 0) {
                ws.bc[t / 32] = bc;
                ws.bp[t / 32] = bp;
                ws.bs[t / 32] = bs;
            }
            __syncthreads();
            const bool second = ws.bc[1] < ws.bc[0] || (ws.bc[1] == ws.bc[0] && ws.bp[1] < ws.bp[0]);
            sbest             = ws.bs[second ? 1 : 0];
        }
    } else if (t == tb) {
        // the end state's group is g_fix: the lowest-cost of its K predecessor states (ties: lowest h), which are
        // this thread's (group g_fix = t + NT a)
        float mv[K];
        float tp[K];  // t_pred of group g_fix (selected with constant indices: t_pred stays in registers)
        tq_vit_load_m<K>(ws.m[(QK_TQ - 1) & 1], t, mv);
#pragma unroll
        for (int h = 0; h < K; ++h) {
            tp[h] = t_pred[0][h];
#pragma unroll
            for (int a = 1; a < G; ++a) {
                tp[h] = g_fix >= NT * a ? t_pred[a][h] : tp[h];
            }
        }
        int h_min;
        tq_vit_pred_min<K>(mv, tp, y_last, z_last, &h_min);
        sbest = g_fix * K + h_min;
    }

    if (t == tb) {
        // one step back from 63, then two steps per back-pointer j2; a free pass is read at position 32 only
        // (g_fix of the second pass): trace back that far
        int s            = sbest;
        ws.st[QK_TQ - 1] = (uint16_t) s;
        s                = (s & 63) * K + ws.h_last[s & 63];
        ws.st[QK_TQ - 2] = (uint16_t) s;
        const int stop   = g_fix < 0 ? QK_TQ / 2 : 0;
        for (int i = QK_TQ - 2; i > stop; i -= 2) {
            const int gg = s & 63;
            const int jj = ws.j2[i / 2][gg];
            const int s1 = gg * K + (jj & (K - 1));
            s            = (s1 & 63) * K + (jj >> k);
            ws.st[i - 1] = (uint16_t) s1;
            ws.st[i - 2] = (uint16_t) s;
        }
    }
    tq_vit_sync<G>();
}

// preparation as in tq_trellis_quantize_block, by the first warp of a trellis block with warp reductions:
// lane l holds samples l, l + 32. Writes the outlier slots (and a zero block's scale and stream), ws.w0,
// ws.zero and the Viterbi target ws.y4.
template <ggml_type type>
static __device__ __forceinline__ void tq_vit_prepare(tq_vit_smem<tq_cuda_fmt<type>::b> & ws, uint8_t * blk,
                                                      const float tmax_f, const int lane) {
    using F             = tq_cuda_fmt<type>;
    constexpr int n_out = F::n_out;
    if (lane == 0) {
        ws.zero = 0;
    }
    const double x0 = tq_cuda_sanitize(ws.xv[lane]);
    const double x1 = tq_cuda_sanitize(ws.xv[lane + 32]);
    uint64_t w0 = 0;
#pragma unroll
    for (int o = 0; o < n_out; ++o) {
        // largest |x| not yet taken, ties: the lowest position
        double v = -1.0;
        int    j = QK_TQ;
        if (!((w0 >> lane) & 1)) {
            v = fabs(x0);
            j = lane;
        }
        if (!((w0 >> (lane + 32)) & 1) && fabs(x1) > v) {
            v = fabs(x1);
            j = lane + 32;
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const double ov = __shfl_xor_sync(0xFFFFFFFF, v, off);
            const int    oj = __shfl_xor_sync(0xFFFFFFFF, j, off);
            if (ov > v || (ov == v && oj < j)) {
                v = ov;
                j = oj;
            }
        }
        w0 |= (uint64_t) 1 << j;
        if (lane == 0) {
            const double   xo  = tq_cuda_sanitize(ws.xv[j]);
            const uint16_t od  = tq_cuda_fp16_bits((float) fmax(-TQ_CUDA_FP16_MAX, fmin(TQ_CUDA_FP16_MAX, xo)));
            blk[2 + 2 * o]     = (uint8_t) (od & 0xFF);
            blk[2 + 2 * o + 1] = (uint8_t) (od >> 8);
            blk[2 + 2 * n_out + o] = (uint8_t) j;
        }
    }
    const bool   in0  = !((w0 >> lane) & 1);
    const bool   in1  = !((w0 >> (lane + 32)) & 1);
    const double ss   = tq_cuda_warp_sum((in0 ? x0 * x0 : 0.0) + (in1 ? x1 * x1 : 0.0));
    const double amax = tq_cuda_warp_max(fmax(in0 ? fabs(x0) : 0.0, in1 ? fabs(x1) : 0.0));

    if (!(ss > 0.0)) {
        // zero block: scale 0 and an all-zero stream (outlier slots, if any, are written above)
        if (lane < 2) {
            blk[lane] = 0;
        }
        if (lane < F::qs_bytes) {
            blk[F::qs_off + lane] = 0;
        }
        if (lane == 0) {
            ws.zero = 1;
            ws.w0   = w0;
        }
        return;
    }
    {
        const double rms  = sqrt(ss / (QK_TQ - n_out));
        const double tmax = tmax_f;
        const double d0   = tmax > 0.0 && amax / tmax > rms ? amax / tmax : rms;
        float * y         = (float *) ws.y4;
        y[lane]           = in0 ? (float) (x0 / d0) : 0.0f;
        y[lane + 32]      = in1 ? (float) (x1 / d0) : 0.0f;
    }

    if (lane == 0) {
        ws.w0 = w0;
    }
}

// blocks per SM the trellis encoder is compiled for (capped at the architecture's resident blocks per SM: 16 on
// sm_75/86/87, 24 on sm_89, else 32). G = 1 runs launches of under TQ_VIT_G2_MIN_PER_SM blocks per SM: 8 leaves
// it all the registers it wants (no spill); G = 2 (prefill) as many as fit (2-bit: 40 registers at 24 blocks).
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 750 || __CUDA_ARCH__ == 860 || __CUDA_ARCH__ == 870)
#define TQ_VIT_MAX_BLOCKS_SM 16
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 890
#define TQ_VIT_MAX_BLOCKS_SM 24
#else
#define TQ_VIT_MAX_BLOCKS_SM 32
#endif
static constexpr __host__ __device__ int tq_vit_min_blocks(const int k, const int G) {
    const int want = G == 1 ? 8 : (k == 2 ? 24 : k == 3 ? 16 : 12);
    return want < TQ_VIT_MAX_BLOCKS_SM ? want : TQ_VIT_MAX_BLOCKS_SM;
}

// the start of a trellis block's encoding by its 64 / G threads t: the table values of the predecessor states of
// the thread's groups into t_pred, the input into ws.xv, the preparation (outlier slots and a zero block's bytes to
// blk). Returns false for a zero block (then done).
template <ggml_type type, class Loc, int G>
static __device__ __forceinline__ bool tq_vit_setup(tq_vit_smem<tq_cuda_fmt<type>::b> & ws, const Loc & loc,
                                                    const tq_cuda_tab<type> & tab, const float tmax_f,
                                                    const int64_t ib, uint8_t * blk, const int t,
                                                    float (&t_pred)[G][1 << tq_cuda_fmt<type>::b]) {
    constexpr int K  = 1 << tq_cuda_fmt<type>::b;
    constexpr int NT = TQ_VIT_THREADS / G;  // threads per trellis block
#pragma unroll
    for (int a = 0; a < G; ++a) {
#pragma unroll
        for (int h = 0; h < K; ++h) {
            t_pred[a][h] = tab.v[(t + NT * a) * K + h];
        }
    }
    const char * xrow = loc.src_row(ib);
#pragma unroll
    for (int a = 0; a < G; ++a) {
        ws.xv[t + NT * a] = *(const float *) (xrow + (t + NT * a) * loc.nb00);
    }
    tq_vit_sync<G>();
    if (t < 32) {
        tq_vit_prepare<type>(ws, blk, tmax_f, t);
    }
    tq_vit_sync<G>();
    return !ws.zero;
}

// the end of a trellis block's encoding by its first warp, from the path of a fixed pass in ws.st: the stream to
// qs, then the least-squares scale of the path (the states decoded from the stream as the CPU does: state_j =
// stream bits [j*k, j*k + L), circular) to d (2 bytes)
template <ggml_type type>
static __device__ __forceinline__ void tq_vit_finish(tq_vit_smem<tq_cuda_fmt<type>::b> & ws,
                                                     const tq_cuda_tab<type> & tab, const uint64_t w0, uint8_t * d,
                                                     uint8_t * qs, const int lane) {
    using F          = tq_cuda_fmt<type>;
    constexpr int k  = F::b;
    constexpr int K  = 1 << k;
    constexpr int NS = F::ntab;
    const bool    in0 = !((w0 >> lane) & 1);
    const bool    in1 = !((w0 >> (lane + 32)) & 1);
    const double  x0  = tq_cuda_sanitize(ws.xv[lane]);
    const double  x1  = tq_cuda_sanitize(ws.xv[lane + 32]);

    ws.code[lane]      = (uint8_t) (ws.st[lane] & (K - 1));
    ws.code[lane + 32] = (uint8_t) (ws.st[lane + 32] & (K - 1));
    __syncwarp();
    tq_cuda_pack_codes<k>(ws.code, qs, lane);
    double num = 0.0;
    double den = 0.0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int j = lane + 32 * h;
        unsigned  st = 0;
#pragma unroll
        for (int u = 0; u * k < F::L; ++u) {
            st |= (unsigned) ws.code[(j + u) & (QK_TQ - 1)] << (u * k);
        }
        const double tv = tab.v[st & (NS - 1)];
        if (h == 0 ? in0 : in1) {
            num += (h == 0 ? x0 : x1) * tv;
            den += tv * tv;
        }
    }
    num = tq_cuda_warp_sum(num);
    den = tq_cuda_warp_sum(den);
    uint16_t d16 = 0;
    if (den > 0.0) {
        d16 = tq_cuda_fp16_bits((float) fmax(-TQ_CUDA_FP16_MAX, fmin(TQ_CUDA_FP16_MAX, num / den)));
    } else if (lane < F::qs_bytes) {
        qs[lane] = 0;
    }
    if (lane == 0) {
        d[0] = (uint8_t) (d16 & 0xFF);
        d[1] = (uint8_t) (d16 >> 8);
    }
}

// thread block tblk of 64 threads: trellis block ib = tblk * G + threadIdx.x / (64 / G), ib < n_blocks; G: see the
// top of this section (the body of tq_k_encode_trellis and of the V part of tq_k_encode_kv)
template <ggml_type type, class Loc, int G>
static __device__ __forceinline__ void tq_encode_trellis_blocks(const Loc & loc, const tq_cuda_tab<type> & tab,
                                                                const float tmax_f, const int n_blocks,
                                                                const int64_t tblk) {
    using F             = tq_cuda_fmt<type>;
    constexpr int k     = F::b;
    constexpr int K     = 1 << k;
    constexpr int NT    = TQ_VIT_THREADS / G;  // threads per trellis block
    static_assert(F::ntab == 64 * K, "a trellis state is a group and a k-bit code");
    static_assert(G == 1 || G == TQ_VIT_G2_BLOCKS, "two warps per trellis block, or one");

    // the table is read from the kernel argument (constant bank), not shared memory
    __shared__ tq_vit_smem<k> ws_all[G];

    const int     t  = threadIdx.x % NT;
    const int64_t ib = tblk * G + threadIdx.x / NT;
    if (G > 1 && ib >= n_blocks) {
        return;  // (G > 1: only warp barriers below)
    }
    tq_vit_smem<k> & ws = ws_all[threadIdx.x / NT];

    float     t_pred[G][K];  // table values of the predecessor states (t + NT a)*K + h of the thread's groups
    uint8_t * blk = loc.dst_blk(ib);
    if (!tq_vit_setup<type, Loc, G>(ws, loc, tab, tmax_f, ib, blk, t, t_pred)) {
        return;
    }
    const uint64_t w0 = ws.w0;

    // two-pass tail-biting Viterbi: a free pass over the block rotated by 32 fixes the overlap
    tq_vit_pass<type, G, (F::n_out > 0)>(ws, tab, t_pred, w0, QK_TQ / 2, -1, t);
    const int g_fix = ws.st[QK_TQ / 2] & 63;
    tq_vit_pass<type, G, (F::n_out > 0)>(ws, tab, t_pred, w0, 0, g_fix, t);
    if (t < 32) {
        tq_vit_finish<type>(ws, tab, w0, blk, blk + F::qs_off, t);
    }
}

// ---- the two passes side by side (a decode step's V writes: few trellis blocks, the GPU mostly idle) ----------
// The fixed pass depends on the free pass only through g_fix (0 .. 63), so for few blocks it runs for every g_fix
// at once beside the free pass: of the TQ_VIT_SPEC thread blocks (G = 1) of trellis block ib, r = 0 takes the free
// pass (and writes the outlier slots; it publishes g_fix), r = 1 + g the fixed pass for g_fix = g, whose scale and
// stream go to scratch slot g. The last of the TQ_VIT_SPEC to finish (a ticket per trellis block, zeroed before the
// launch) copies the chosen slot into the cache. The bytes of tq_encode_trellis_blocks, after one chain of 64 steps
// instead of two. Zero blocks: r = 0 writes them, no ticket is taken.
#define TQ_VIT_SPEC 65

// scratch of a launch: slots[ib][g] (2 + qs_bytes each), gfix[ib], ticket[ib] (zeroed before the launch)
struct tq_vit_spec_buf {
    uint8_t *  slots;
    int *      gfix;
    unsigned * ticket;
};

template <ggml_type type, class Loc>
static __device__ __forceinline__ void tq_encode_trellis_spec(const Loc & loc, const tq_cuda_tab<type> & tab,
                                                              const float tmax_f, const tq_vit_spec_buf sb,
                                                              const int64_t tblk) {
    using F             = tq_cuda_fmt<type>;
    constexpr int k     = F::b;
    constexpr int K     = 1 << k;
    constexpr int SLOT  = 2 + F::qs_bytes;
    static_assert(TQ_VIT_SPEC == 1 + 64, "the free pass and one fixed pass per g_fix");

    __shared__ tq_vit_smem<k> ws;
    __shared__ uint8_t        s_blk[F::bs];  // r > 0: where the preparation's writes go instead of the cache
    __shared__ unsigned       s_ticket;

    const int     t  = threadIdx.x;
    const int64_t ib = tblk / TQ_VIT_SPEC;
    const int     r  = (int) (tblk % TQ_VIT_SPEC);

    float     t_pred[1][K];
    uint8_t * blk = loc.dst_blk(ib);
    if (!tq_vit_setup<type, Loc, 1>(ws, loc, tab, tmax_f, ib, r == 0 ? blk : s_blk, t, t_pred)) {
        return;
    }
    const uint64_t w0   = ws.w0;
    uint8_t *      slot = sb.slots + (ib * 64 + (r > 0 ? r - 1 : 0)) * SLOT;
    if (r == 0) {
        tq_vit_pass<type, 1, (F::n_out > 0)>(ws, tab, t_pred, w0, QK_TQ / 2, -1, t);
        if (t == 0) {
            sb.gfix[ib] = ws.st[QK_TQ / 2] & 63;
        }
    } else {
        tq_vit_pass<type, 1, (F::n_out > 0)>(ws, tab, t_pred, w0, 0, r - 1, t);
        if (t < 32) {
            tq_vit_finish<type>(ws, tab, w0, slot, slot + 2, t);
        }
    }
    // every thread's global writes before the ticket; the last thread block to take one copies the chosen slot
    __threadfence();
    __syncthreads();
    if (t == 0) {
        s_ticket = atomicAdd(&sb.ticket[ib], 1u);
    }
    __syncthreads();
    if (s_ticket != TQ_VIT_SPEC - 1) {
        return;
    }
    __threadfence();
    if (t == 0) {
        sb.ticket[ib] = 0;  // every thread block of ib has taken its ticket: zero again for the next launch
    }
    const int               g   = *(const volatile int *) &sb.gfix[ib];
    const volatile uint8_t * src = sb.slots + (ib * 64 + g) * SLOT;
    if (t < SLOT) {
        const uint8_t v = src[t];
        if (t < 2) {
            blk[t] = v;
        } else {
            blk[F::qs_off + t - 2] = v;
        }
    }
}

template <ggml_type type, class Loc, int G>
static __global__ void __launch_bounds__(TQ_VIT_THREADS, tq_vit_min_blocks(tq_cuda_fmt<type>::b, G))
tq_k_encode_trellis(const Loc loc, const tq_cuda_tab<type> tab, const float tmax_f, const int n_blocks) {
    tq_encode_trellis_blocks<type, Loc, G>(loc, tab, tmax_f, n_blocks, blockIdx.x);
}

// ---- a decode step's K and V cache writes in one launch (tq_cuda_try_fuse): thread blocks [0, n_v) encode the
// V blocks (trellis, the G = 1 form: two warps per block), [n_v, n_v + n_k) the K blocks (codebook), side by side
// instead of one launch after the other. The same block functions as the separate kernels, so the same bytes.
// With sb.slots set, the V blocks take the speculative form (tq_encode_trellis_spec): thread blocks [0, TQ_VIT_SPEC
// n_v) for V.
template <ggml_type type_k, ggml_type type_v, class Loc>
static __global__ void __launch_bounds__(TQ_VIT_THREADS, tq_vit_min_blocks(tq_cuda_fmt<type_v>::b, 1))
tq_k_encode_kv(const Loc loc_k, const tq_cuda_cb_params P, const Loc loc_v, const tq_cuda_tab<type_v> tab,
               const float tmax_v, const int n_v, const tq_vit_spec_buf sb) {
    static_assert(!tq_cuda_fmt<type_k>::trellis && tq_cuda_fmt<type_v>::trellis, "K: codebook, V: trellis");
    // programmatic dependent launch (tq_encode_kv_cuda): launched while the previous kernel finishes, it waits
    // for that kernel's writes before its first global read; the next kernel may be scheduled at once
    ggml_cuda_pdl_lc();
    ggml_cuda_pdl_sync();
    const int n_tv = sb.slots ? TQ_VIT_SPEC * n_v : n_v;  // thread blocks of V
    if ((int) blockIdx.x < n_tv) {
        if (sb.slots) {
            tq_encode_trellis_spec<type_v, Loc>(loc_v, tab, tmax_v, sb, blockIdx.x);
        } else {
            tq_encode_trellis_blocks<type_v, Loc, 1>(loc_v, tab, tmax_v, n_v, blockIdx.x);
        }
    } else {
        tq_encode_codebook_block<type_k, Loc>(loc_k, P, (int64_t) blockIdx.x - n_tv);
    }
}
