// llama-tq: bitshift-trellis types vtqb_2 and vtqb_3 (k = b = 2, 3, 4 bits per sample, L = k + 6).
//
// Decode (docs/formats.md): state_i = stream bits [i*k, i*k + L) mod 64*k, x̂_i = d * table[state_i];
// vtqb_3 then overwrites sample op[o] with the fp16 value od[o], o = 0, 1.
//
// Encode:
//   x_j -> 0 if not finite. vtqb_3 first takes the TQ_OUTLIERS largest |x_j| (ties: lower index) as
//   exact fp16 slots (clamped to ±65504) and gives them weight 0 in the trellis search.
//   ss = sum of w_j x_j^2, rms = sqrt(ss / n_weighted); if ss == 0: d = 0, stream 0.
//   d0 = max(rms, max_j w_j|x_j| / max|table|); y_j = float(x_j / d0) (0 where w_j = 0);
//   tail-biting Viterbi path of y against the unit table (two-pass, see below; minimises
//   sum w_j (y_j - table[state_j])^2 over the streams of 64*k bits with the chosen overlap);
//   d = least-squares scale sum w x t / sum w t^2 of that path, clamped to ±65504, stored as fp16.
//
// Viterbi. K = 2^k codes per step, G = 2^(L-k) = 64 groups, Q = G/K, S = K*G states. A transition
// appends k bits at the top, state' = (state >> k) | (c << (L-k)), so the predecessors of state' are the
// K states g*K + h (h = 0..K-1) of group g = state' mod G, and the K successors of a group all share the
// plane h' = g mod K. Storage order of the costs (and of the table, tq_tables.trellis_pos):
//   state s = g*K + h  ->  position h*G + sigma(g),  sigma(c*Q + q) = q*K + c,
// which makes both halves of a step contiguous: the add-compare-select is an element-wise min over the K
// planes (rows of G floats), and the K successors of a group are K adjacent positions of one plane, so
// one broadcast min feeds K/VL vector adds. Every step's cost vector is kept (64*S floats, thread-local)
// and back-pointers are recomputed for the single surviving group per step during the trace-back, which
// keeps compare/select work out of the inner loop. Cost of a sample: w (y - t)^2 evaluated as (w*e)*e.
//
// Tail-biting: the stream's first L-k bits are also the last L-k bits read, so state_0 mod G must equal
// state_63 >> k (=: the overlap). Encoders (tq_trellis_viterbi modes):
//   two-pass (the quantize functions): a free pass over the block rotated by 32 samples puts the wrap
//     point mid-path, where survivors have merged; its state at sample 0 fixes the overlap; a second
//     pass is constrained to it. Measured: 0.04-0.3 % above the optimal cost on N(0,1) blocks (mean).
//   exact: branch and bound. A free pass gives for each overlap g the bound LB_g = min over end states
//     with state >> k == g (start constraint relaxed); if the free optimum already tail-bites it is
//     optimal, else constrained passes run for g in increasing LB_g until the next bound is not below the
//     best cost. Float min/+ are monotone, so the bound holds in the arithmetic used: exact.
//   exhaustive: all 64 overlaps.

#include "tq-impl.h"

#define TQ_G   64  // 2^(L-k), groups / overlap values
#define TQ_INF 3.0e38f

#if defined(_MSC_VER)
#define TQ_FORCE_INLINE __forceinline
#define TQ_THREAD_LOCAL __declspec(thread)
#elif defined(__GNUC__) || defined(__clang__)
#define TQ_FORCE_INLINE inline __attribute__((always_inline))
#define TQ_THREAD_LOCAL _Thread_local
#else
#define TQ_FORCE_INLINE inline
#define TQ_THREAD_LOCAL _Thread_local
#endif

// ---- SIMD variants of the Viterbi pass -------------------------------------------------------------
// Compilers do not vectorise a float min at -O2 without -ffast-math, hence intrinsics. The baseline
// variant uses what the compile flags allow (AVX2, SSE2, NEON, or plain C); on x86-64 with GCC/Clang
// and no -mavx2 (ggml-base is built without -march flags) an AVX2 variant is compiled as well, with a
// target attribute, and chosen at init when the CPU has AVX2 (LLAMA_TQ_DISABLE_AVX2=1 keeps the baseline,
// for testing). -DTQ_NO_SIMD builds the plain C variant only. All variants give identical results.

// every step's costs of the current pass (trace-back recomputes the winning predecessors from them)
static TQ_THREAD_LOCAL float tq_viterbi_buf[QK_TQ * TQ_MAX_STATES];

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#include <immintrin.h>
#endif

#if defined(TQ_NO_SIMD)
// plain C only (portability check; see the #else branch)
#elif defined(__AVX2__)
#include "tq-simd-avx2.inc"
#define TQ_VIT_BASELINE "avx2"
#elif defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#define TQ_VL 4
#define TQ_FV __m128
#define TQ_LD(p)     _mm_loadu_ps(p)
#define TQ_ST(p, v)  _mm_storeu_ps(p, v)
#define TQ_SET1(x)   _mm_set1_ps(x)
#define TQ_ADD(a, b) _mm_add_ps(a, b)
#define TQ_SUB(a, b) _mm_sub_ps(a, b)
#define TQ_MUL(a, b) _mm_mul_ps(a, b)
#define TQ_MIN(a, b) _mm_min_ps(a, b)
#define TQ_VIT_BASELINE "sse2"
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#define TQ_VL 4
#define TQ_FV float32x4_t
#define TQ_LD(p)     vld1q_f32(p)
#define TQ_ST(p, v)  vst1q_f32(p, v)
#define TQ_SET1(x)   vdupq_n_f32(x)
#define TQ_ADD(a, b) vaddq_f32(a, b)
#define TQ_SUB(a, b) vsubq_f32(a, b)
#define TQ_MUL(a, b) vmulq_f32(a, b)
#define TQ_MIN(a, b) vminq_f32(a, b)
#define TQ_VIT_BASELINE "neon"
#endif
#if !defined(TQ_VL)
typedef struct { float v[4]; } tq_f4;
static TQ_FORCE_INLINE tq_f4 tq_f4_ld(const float * p) { tq_f4 r; memcpy(r.v, p, sizeof(r.v)); return r; }
static TQ_FORCE_INLINE void  tq_f4_st(float * p, tq_f4 v) { memcpy(p, v.v, sizeof(v.v)); }
static TQ_FORCE_INLINE tq_f4 tq_f4_set1(float x) { tq_f4 r = { { x, x, x, x } }; return r; }
#define TQ_F4_OP(name, expr)                                                                           \
    static TQ_FORCE_INLINE tq_f4 name(tq_f4 a, tq_f4 b) {                                              \
        tq_f4 r;                                                                                       \
        for (int l = 0; l < 4; ++l) {                                                                  \
            r.v[l] = (expr);                                                                           \
        }                                                                                              \
        return r;                                                                                      \
    }
TQ_F4_OP(tq_f4_add, a.v[l] + b.v[l])
TQ_F4_OP(tq_f4_sub, a.v[l] - b.v[l])
TQ_F4_OP(tq_f4_mul, a.v[l] * b.v[l])
TQ_F4_OP(tq_f4_min, a.v[l] < b.v[l] ? a.v[l] : b.v[l])
#define TQ_VL 4
#define TQ_FV tq_f4
#define TQ_LD(p)     tq_f4_ld(p)
#define TQ_ST(p, v)  tq_f4_st(p, v)
#define TQ_SET1(x)   tq_f4_set1(x)
#define TQ_ADD(a, b) tq_f4_add(a, b)
#define TQ_SUB(a, b) tq_f4_sub(a, b)
#define TQ_MUL(a, b) tq_f4_mul(a, b)
#define TQ_MIN(a, b) tq_f4_min(a, b)
#define TQ_VIT_BASELINE "scalar"
#endif

#define TQ_VIT(name) name##_base
#include "tq-viterbi.inc"
#undef TQ_VIT
#undef TQ_VL
#undef TQ_FV
#undef TQ_LD
#undef TQ_ST
#undef TQ_SET1
#undef TQ_ADD
#undef TQ_SUB
#undef TQ_MUL
#undef TQ_MIN
#undef TQ_SET_HALVES

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(__AVX2__) && !defined(TQ_NO_SIMD) && \
    (defined(__GNUC__) || defined(__clang__))
#define TQ_VIT_AVX2_DISPATCH 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#include "tq-simd-avx2.inc"
#define TQ_VIT(name) name##_avx2
#include "tq-viterbi.inc"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

typedef float (*tq_viterbi_pass_fn)(const float * y, const float * w, int g, uint16_t * st, float * lb);

static tq_viterbi_pass_fn tq_pass_fns[3] = { tq_viterbi_pass2_base, tq_viterbi_pass3_base, tq_viterbi_pass4_base };
static const char *       tq_simd_name   = TQ_VIT_BASELINE;

// called once from tq_init()
void tq_trellis_init_dispatch(void) {
#if defined(TQ_VIT_AVX2_DISPATCH)
    const char * off = getenv("LLAMA_TQ_DISABLE_AVX2");
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && !(off != NULL && off[0] != '\0' && strcmp(off, "0") != 0)) {
        tq_pass_fns[0] = tq_viterbi_pass2_avx2;
        tq_pass_fns[1] = tq_viterbi_pass3_avx2;
        tq_pass_fns[2] = tq_viterbi_pass4_avx2;
        tq_simd_name   = "avx2 (runtime)";
    }
#endif
}

const char * tq_simd(void) {
    tq_ensure_init();
    return tq_simd_name;
}

struct tq_trellis_ctx {
    int                k;
    tq_viterbi_pass_fn pass;
};

static float tq_viterbi_pass(const struct tq_trellis_ctx * c, const float * y, const float * w, int g_fix,
                             uint16_t * states, float * lb) {
    return c->pass(y, w, g_fix, states, lb);
}

float tq_trellis_viterbi(int k, const float * y_in, const float * w_in, uint8_t * qs, int mode, int * passes) {
    if (k < 2 || k > 4) {
        TQ_ABORT("%s: k = %d, must be 2, 3 or 4", __func__, k);
    }
    tq_ensure_init();

    struct tq_trellis_ctx c;
    c.k    = k;
    c.pass = tq_pass_fns[k - 2];

    float y[QK_TQ];
    float w[QK_TQ];
    for (int j = 0; j < QK_TQ; ++j) {
        w[j] = w_in ? w_in[j] : 1.0f;
        if (!isfinite(w[j]) || w[j] < 0.0f) {
            w[j] = 0.0f;
        }
        y[j] = (w[j] > 0.0f && isfinite(y_in[j])) ? y_in[j] : 0.0f;
    }

    uint16_t st[QK_TQ];
    uint16_t best_st[QK_TQ];
    float    best  = TQ_INF;
    int      npass = 0;

    if (mode == TQ_VITERBI_EXHAUSTIVE) {
        for (int g = 0; g < TQ_G; ++g) {
            const float cost = tq_viterbi_pass(&c, y, w, g, st, NULL);
            ++npass;
            if (cost < best || g == 0) {
                best = cost;
                memcpy(best_st, st, sizeof(st));
            }
        }
    } else if (mode == TQ_VITERBI_EXACT) {
        float lb[TQ_G];
        best = tq_viterbi_pass(&c, y, w, -1, best_st, lb);
        ++npass;
        if ((best_st[0] & (TQ_G - 1)) != (best_st[QK_TQ - 1] >> k)) {
            // not tail-biting: constrained passes in increasing order of the bound (stable)
            int order[TQ_G];
            for (int g = 0; g < TQ_G; ++g) {
                int pos = g;
                while (pos > 0 && lb[order[pos - 1]] > lb[g]) {
                    order[pos] = order[pos - 1];
                    --pos;
                }
                order[pos] = g;
            }
            best = TQ_INF;
            for (int o = 0; o < TQ_G; ++o) {
                const int g = order[o];
                if (!(lb[g] < best)) {
                    break;
                }
                const float cost = tq_viterbi_pass(&c, y, w, g, st, NULL);
                ++npass;
                if (cost < best) {
                    best = cost;
                    memcpy(best_st, st, sizeof(st));
                }
            }
        }
    } else {
        // two passes: a free pass over the block rotated by T/2 puts the wrap point mid-path, where the
        // survivor has converged; its state at sample 0 fixes the overlap for a constrained pass
        float yr[QK_TQ];
        float wr[QK_TQ];
        for (int j = 0; j < QK_TQ; ++j) {
            yr[j] = y[(j + QK_TQ / 2) % QK_TQ];
            wr[j] = w[(j + QK_TQ / 2) % QK_TQ];
        }
        tq_viterbi_pass(&c, yr, wr, -1, st, NULL);
        const int g = st[QK_TQ / 2] & (TQ_G - 1);
        best  = tq_viterbi_pass(&c, y, w, g, best_st, NULL);
        npass = 2;
    }

    memset(qs, 0, QK_TQ * k / 8);
    for (int i = 0; i < QK_TQ; ++i) {
        tq_put_code(qs, i, k, best_st[i] & ((1u << k) - 1u));
    }
    if (passes) {
        *passes = npass;
    }
    return best;
}

// state of sample i: L bits from stream bit i*k, wrapping around the block's 64*k bits
static inline unsigned tq_trellis_state(const uint8_t * qs, int nbytes, int i, int k, unsigned mask) {
    const int      bit = i * k;
    const int      byt = bit >> 3;
    const int      nxt = byt + 1 == nbytes ? 0 : byt + 1;
    const unsigned w   = (unsigned) qs[byt] | (unsigned) qs[nxt] << 8;
    return (w >> (bit & 7)) & mask;
}

void tq_trellis_dequantize_block(int k, int n_out, uint16_t d16, const uint16_t * od, const uint8_t * op,
                                 const uint8_t * qs, float * y) {
    const float *  t      = tq_g_tables.trellis[k - 2];
    const float    d      = tq_fp16_to_fp32(d16);
    const int      nbytes = QK_TQ * k / 8;
    const unsigned mask   = (1u << (k + TQ_L_EXTRA)) - 1u;
    for (int i = 0; i < QK_TQ; ++i) {
        y[i] = d * t[tq_trellis_state(qs, nbytes, i, k, mask)];
    }
    for (int o = 0; o < n_out; ++o) {
        y[op[o] & (QK_TQ - 1)] = tq_fp16_to_fp32(od[o]);
    }
}

void tq_trellis_quantize_block(int k, int n_out, const float * x, uint16_t * dout, uint16_t * od, uint8_t * op,
                               uint8_t * qs) {
    const float * t      = tq_g_tables.trellis[k - 2];
    const int     nbytes = QK_TQ * k / 8;

    double xs[QK_TQ];
    float  w[QK_TQ];
    for (int j = 0; j < QK_TQ; ++j) {
        xs[j] = tq_sanitize(x[j]);
        w[j]  = 1.0f;
    }
    for (int o = 0; o < n_out; ++o) {
        int    jbest = -1;
        double vbest = -1.0;
        for (int j = 0; j < QK_TQ; ++j) {
            if (w[j] > 0.0f && fabs(xs[j]) > vbest) {
                vbest = fabs(xs[j]);
                jbest = j;
            }
        }
        w[jbest] = 0.0f;
        op[o]    = (uint8_t) jbest;
        od[o]    = tq_fp32_to_fp16((float) fmax(-TQ_FP16_MAX, fmin(TQ_FP16_MAX, xs[jbest])));
    }

    double ss = 0.0;
    for (int j = 0; j < QK_TQ; ++j) {
        ss += w[j] * xs[j] * xs[j];
    }
    memset(qs, 0, nbytes);
    *dout = 0;
    if (!(ss > 0.0)) {
        return;
    }
    // Viterbi target scale d0: the RMS, or max|x| / max|table| when the largest sample would lie beyond
    // the table's reach at the RMS (heavy-tailed blocks; 4-5x lower MSE on Student-t(3) blocks, same
    // cost, no change on Gaussian blocks). The stored scale is then refit by least squares.
    const double rms = sqrt(ss / (QK_TQ - n_out));
    double amax = 0.0;
    for (int j = 0; j < QK_TQ; ++j) {
        if (w[j] > 0.0f) {
            amax = fmax(amax, fabs(xs[j]));
        }
    }
    const double tmax = tq_g_tables.trellis_absmax[k - 2];
    const double d0   = tmax > 0.0 && amax / tmax > rms ? amax / tmax : rms;
    float        y[QK_TQ];
    for (int j = 0; j < QK_TQ; ++j) {
        y[j] = w[j] > 0.0f ? (float) (xs[j] / d0) : 0.0f;
    }
    tq_trellis_viterbi(k, y, w, qs, TQ_VITERBI_TWO_PASS, NULL);

    const unsigned mask = (1u << (k + TQ_L_EXTRA)) - 1u;
    double         num  = 0.0;
    double         den  = 0.0;
    for (int j = 0; j < QK_TQ; ++j) {
        if (w[j] > 0.0f) {
            const double tv = t[tq_trellis_state(qs, nbytes, j, k, mask)];
            num += xs[j] * tv;
            den += tv * tv;
        }
    }
    if (!(den > 0.0)) {
        memset(qs, 0, nbytes);
        return;
    }
    *dout = tq_fp32_to_fp16((float) fmax(-TQ_FP16_MAX, fmin(TQ_FP16_MAX, num / den)));
}

// ---- per-type wrappers ----------------------------------------------------------------------------

static void tq_tr_quantize_row(int k, int n_out, const float * x, void * vy, int64_t n) {
    const size_t bs = 2 + 3 * (size_t) n_out + QK_TQ * k / 8;
    uint8_t *    y  = (uint8_t *) vy;
    tq_ensure_init();
    for (int64_t i = 0; i < n / QK_TQ; ++i) {
        uint8_t * blk = y + i * bs;
        uint16_t  d;
        uint16_t  od[TQ_OUTLIERS];
        uint8_t   op[TQ_OUTLIERS];
        tq_trellis_quantize_block(k, n_out, x + i * QK_TQ, &d, od, op, blk + 2 + 3 * n_out);
        memcpy(blk, &d, 2);
        if (n_out > 0) {
            memcpy(blk + 2, od, 2 * (size_t) n_out);
            memcpy(blk + 2 + 2 * n_out, op, (size_t) n_out);
        }
    }
}

static void tq_tr_dequantize_row(int k, int n_out, const void * vx, float * y, int64_t n) {
    const size_t    bs = 2 + 3 * (size_t) n_out + QK_TQ * k / 8;
    const uint8_t * x  = (const uint8_t *) vx;
    tq_ensure_init();
    for (int64_t i = 0; i < n / QK_TQ; ++i) {
        const uint8_t * blk = x + i * bs;
        uint16_t        d;
        uint16_t        od[TQ_OUTLIERS] = { 0 };
        memcpy(&d, blk, 2);
        if (n_out > 0) {
            memcpy(od, blk + 2, 2 * (size_t) n_out);
        }
        tq_trellis_dequantize_block(k, n_out, d, od, blk + 2 + 2 * n_out, blk + 2 + 3 * n_out, y + i * QK_TQ);
    }
}

#define TQ_TR_TYPE(name, k, n_out)                                                                      \
    void quantize_row_##name##_ref(const float * x, void * y, int64_t n) {                              \
        TQ_CHECK_ROW(n);                                                                                \
        tq_tr_quantize_row(k, n_out, x, y, n);                                                          \
    }                                                                                                   \
    void dequantize_row_##name(const void * x, float * y, int64_t n) {                                  \
        TQ_CHECK_ROW(n);                                                                                \
        tq_tr_dequantize_row(k, n_out, x, y, n);                                                        \
    }                                                                                                   \
    size_t quantize_##name(const float * src, void * dst, int64_t nrows, int64_t n_per_row,             \
                           const float * imatrix) {                                                     \
        (void) imatrix;                                                                                 \
        TQ_CHECK_ROW(n_per_row);                                                                        \
        const size_t row_size = (size_t) (n_per_row / QK_TQ) * (2 + 3 * (n_out) + QK_TQ * (k) / 8);     \
        for (int64_t r = 0; r < nrows; ++r) {                                                           \
            tq_tr_quantize_row(k, n_out, src + r * n_per_row, (uint8_t *) dst + r * row_size, n_per_row); \
        }                                                                                               \
        return (size_t) nrows * row_size;                                                               \
    }

TQ_TR_TYPE(vtq2_2, 2, 0)
TQ_TR_TYPE(vtq3_2, 3, 0)
TQ_TR_TYPE(vtq4_2, 4, 0)
TQ_TR_TYPE(vtq2_3, 2, TQ_OUTLIERS)
TQ_TR_TYPE(vtq3_3, 3, TQ_OUTLIERS)
TQ_TR_TYPE(vtq4_3, 4, TQ_OUTLIERS)
