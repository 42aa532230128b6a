// llama-tq: CPU reference of the candidate "kprof" K block format (tq-kprof.h, docs/formats.md).
#include "tq-kprof.h"

#include "tq-impl.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static unsigned kprof_get_bits(const uint8_t * s, int pos, int n) {
    unsigned v   = 0;
    int      got = 0;
    while (got < n) {  // a byte at a time: never reads past the field's last byte
        const int p    = pos + got;
        const int sh   = p & 7;
        const int take = 8 - sh < n - got ? 8 - sh : n - got;
        v |= ((unsigned) (s[p >> 3] >> sh) & ((1u << take) - 1u)) << got;
        got += take;
    }
    return v;
}

static void kprof_put_bits(uint8_t * s, int pos, int n, unsigned v) {
    for (int i = 0; i < n; ++i) {
        s[(pos + i) >> 3] |= (uint8_t) (((v >> i) & 1u) << ((pos + i) & 7));
    }
}

static bool kprof_fail(const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "llama-tq: tq_kprof_init: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return false;
}

bool tq_kprof_init(tq_kprof_table * t, int32_t n_profiles, int32_t block_bits, const uint8_t * bits,
                   const float * scale, const float * levels) {
    if (n_profiles < 1 || n_profiles > TQ_KPROF_MAX_PROFILES) {
        return kprof_fail("%d profiles, the table holds 1 to %d", n_profiles, TQ_KPROF_MAX_PROFILES);
    }
    if (block_bits <= 0 || block_bits % 8 != 0) {
        return kprof_fail("a block of %d bits, a positive multiple of 8 expected", block_bits);
    }
    memset(t, 0, sizeof(*t));
    t->n_profiles = n_profiles;
    t->block_bits = block_bits;
    while ((1 << t->index_bits) < n_profiles) {
        t->index_bits++;
    }
    const float * lv     = levels;
    float         lv_max = 0.0f;  // the largest |level|, so that every decoded value stays finite
    for (int b = 1; b <= TQ_KPROF_MAX_BITS; ++b) {
        const int n = 1 << b;
        for (int i = 0; i < n; ++i) {
            if (!isfinite(lv[i]) || (i > 0 && !(lv[i] > lv[i - 1]))) {
                return kprof_fail("the %d-bit codebook is not finite and strictly ascending (level %d)", b, i);
            }
            t->levels[b][i] = lv[i];
            lv_max          = fmaxf(lv_max, fabsf(lv[i]));
        }
        for (int i = 0; i + 1 < n; ++i) {
            t->thresholds[b][i] = 0.5f * (lv[i] + lv[i + 1]);
        }
        lv += n;
    }
    for (int32_t p = 0; p < n_profiles; ++p) {
        int32_t used = t->index_bits;
        for (int j = 0; j < QK_TQ; ++j) {
            const uint8_t b = bits[p * QK_TQ + j];
            const float   s = scale[p * QK_TQ + j];
            if (b > TQ_KPROF_MAX_BITS) {
                return kprof_fail("profile %d, coordinate %d: %d bits, at most %d", p, j, b, TQ_KPROF_MAX_BITS);
            }
            if (!isfinite(s * lv_max) || !(s > 0.0f)) {
                return kprof_fail("profile %d, coordinate %d: scale %g (positive, and finite times every level)",
                                  p, j, (double) s);
            }
            t->bits[p][j]  = b;
            t->scale[p][j] = s;
            used += b;
        }
        if (used > block_bits) {
            return kprof_fail("profile %d needs %d bits (index and codes), the block has %d", p, used, block_bits);
        }
        int pos = t->index_bits;
        int n   = 0;
        for (int j = 0; j < QK_TQ; ++j) {
            if (t->bits[p][j]) {
                t->active[p][n]   = (uint8_t) j;
                t->code_pos[p][n] = (uint16_t) pos;
                pos += t->bits[p][j];
                n++;
            }
        }
        t->n_active[p] = (uint8_t) n;
        // expected squared error of coordinate j: scale^2 times about 4^-b (Lloyd on a unit-variance shape)
        float key[QK_TQ];
        for (int j = 0; j < QK_TQ; ++j) {
            key[j] = t->scale[p][j] * t->scale[p][j] * ldexpf(1.0f, -2 * t->bits[p][j]);
        }
        for (int j = 0; j < QK_TQ; ++j) {  // insertion sort, descending, stable
            int k = j;
            while (k > 0 && key[t->eval_order[p][k - 1]] < key[j]) {
                t->eval_order[p][k] = t->eval_order[p][k - 1];
                k--;
            }
            t->eval_order[p][k] = (uint8_t) j;
        }
    }
    return true;
}

// nearest level of v in the b-bit codebook: the number of midpoints at or below v
static unsigned kprof_code(const tq_kprof_table * t, int b, float v) {
    unsigned lo = 0;
    unsigned hi = (1u << b) - 1u;  // the answer lies in [lo, hi]
    while (lo < hi) {
        const unsigned mid = (lo + hi) >> 1;
        if (v >= t->thresholds[b][mid]) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// squared error of x under profile p, accumulated in eval_order; stops once it exceeds bound
static float kprof_error(const tq_kprof_table * t, const float * xs, int32_t p, float bound) {
    float e = 0.0f;
    for (int i = 0; i < QK_TQ && e <= bound; ++i) {
        const int j = t->eval_order[p][i];
        const int b = t->bits[p][j];
        float     d = xs[j];
        if (b) {
            const float s = t->scale[p][j];
            d -= s * t->levels[b][kprof_code(t, b, xs[j] / s)];
        }
        e += d * d;
    }
    return e;
}

// the encoder; hint: a profile likely to win (tried first, so that the others stop early), or -1
static float kprof_quantize(const tq_kprof_table * t, const float * x, uint8_t * block, int32_t hint,
                            int32_t * chosen) {
    float xs[QK_TQ];
    for (int j = 0; j < QK_TQ; ++j) {
        xs[j] = isfinite(x[j]) ? x[j] : 0.0f;
    }
    int32_t best   = -1;
    float   best_e = INFINITY;
    if (hint >= 0 && hint < t->n_profiles) {
        best_e = kprof_error(t, xs, hint, INFINITY);
        best   = isfinite(best_e) ? hint : -1;
    }
    for (int32_t p = 0; p < t->n_profiles; ++p) {
        if (p == best) {
            continue;
        }
        const float e = kprof_error(t, xs, p, best_e);
        if (e < best_e || (e == best_e && p < best)) {  // the lowest index on a tie
            best   = p;
            best_e = e;
        }
    }
    if (best < 0) {  // every profile's error overflowed (values near float max): profile 0
        best = 0;
    }
    memset(block, 0, (size_t) t->block_bits / 8);
    kprof_put_bits(block, 0, t->index_bits, (unsigned) best);
    for (int k = 0; k < t->n_active[best]; ++k) {
        const int j = t->active[best][k];
        const int b = t->bits[best][j];
        kprof_put_bits(block, t->code_pos[best][k], b, kprof_code(t, b, xs[j] / t->scale[best][j]));
    }
    *chosen = best;
    return best_e;
}

float tq_kprof_quantize_block(const tq_kprof_table * t, const float * x, uint8_t * block) {
    int32_t chosen = 0;
    return kprof_quantize(t, x, block, -1, &chosen);
}

int32_t tq_kprof_block_profile(const tq_kprof_table * t, const uint8_t * block) {
    const int32_t p = (int32_t) kprof_get_bits(block, 0, t->index_bits);
    return p < t->n_profiles ? p : 0;
}

// A code is one unaligned 64-bit load away: from the block itself where 8 bytes fit before its end, else from a
// zero-padded copy of its last bytes (never a read past the block).
typedef struct {
    const uint8_t * block;
    int             n;        // bytes of the block that hold the index and codes (at most 50)
    uint8_t         tail[16]; // the block's last min(n, 8) bytes, then zeros
    int             tail_at;  // the byte offset of tail[0]
} kprof_reader;

#define TQ_KPROF_USED_BYTES ((10 + QK_TQ * TQ_KPROF_MAX_BITS + 7) / 8)  // the most an index and codes can take

static void kprof_reader_init(kprof_reader * r, const tq_kprof_table * t, const uint8_t * block) {
    const int n = t->block_bits / 8 < TQ_KPROF_USED_BYTES ? t->block_bits / 8 : TQ_KPROF_USED_BYTES;
    r->block    = block;
    r->n        = n;
    r->tail_at  = n > 8 ? n - 8 : 0;
    memset(r->tail, 0, sizeof(r->tail));
    memcpy(r->tail, block + r->tail_at, (size_t) (n - r->tail_at));
}

static inline unsigned kprof_code_at(const kprof_reader * r, int pos, int b) {
    const int off = pos >> 3;
    uint64_t  w;
    memcpy(&w, off + 8 <= r->n ? r->block + off : r->tail + (off - r->tail_at), sizeof(w));
    // little-endian bit stream: byte i holds stream bits 8i .. 8i+7
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return (unsigned) (w >> (pos & 7)) & ((1u << b) - 1u);
}

void tq_kprof_dequantize_block(const tq_kprof_table * t, const uint8_t * block, float * y) {
    kprof_reader r;
    kprof_reader_init(&r, t, block);
    const int32_t p = tq_kprof_block_profile(t, block);
    memset(y, 0, QK_TQ * sizeof(float));
    for (int k = 0; k < t->n_active[p]; ++k) {
        const int j = t->active[p][k];
        const int b = t->bits[p][j];
        y[j]        = t->scale[p][j] * t->levels[b][kprof_code_at(&r, t->code_pos[p][k], b)];
    }
}

float tq_kprof_dot_block(const tq_kprof_table * t, const uint8_t * block, const float * q) {
    kprof_reader r;
    kprof_reader_init(&r, t, block);
    const int32_t p   = tq_kprof_block_profile(t, block);
    float         sum = 0.0f;
    for (int k = 0; k < t->n_active[p]; ++k) {
        const int j = t->active[p][k];
        const int b = t->bits[p][j];
        sum += q[j] * (t->scale[p][j] * t->levels[b][kprof_code_at(&r, t->code_pos[p][k], b)]);
    }
    return sum;
}

// ---- the ktqp cache types ---------------------------------------------------------------------------------

static tq_kprof_table g_kprof[2];         // ktqp2, ktqp3
static char           g_kprof_source[2][1024];
static int            g_kprof_holders[2];
static uint32_t       g_kprof_generation[2];

// Lloyd-Max for the unit Gaussian: centroids of the cells between midpoints, in closed form
static double kprof_phi(double x) {
    return isinf(x) ? 0.0 : exp(-0.5 * x * x) * 0.39894228040143267794;
}

static double kprof_cdf(double x) {
    return 0.5 * erfc(-x * 0.70710678118654752440);
}

void tq_kprof_gaussian_levels(float * levels) {
    for (int b = 1; b <= TQ_KPROF_MAX_BITS; ++b) {
        const int n = 1 << b;
        double    lv[1 << TQ_KPROF_MAX_BITS];
        for (int i = 0; i < n; ++i) {
            lv[i] = -3.0 + 6.0 * (i + 0.5) / n;
        }
        for (int it = 0; it < 2000; ++it) {
            double shift = 0.0;
            for (int i = 0; i < n; ++i) {
                const double lo   = i == 0 ? -HUGE_VAL : 0.5 * (lv[i - 1] + lv[i]);
                const double hi   = i == n - 1 ? HUGE_VAL : 0.5 * (lv[i] + lv[i + 1]);
                const double mass = kprof_cdf(hi) - kprof_cdf(lo);
                const double c    = (kprof_phi(lo) - kprof_phi(hi)) / mass;
                shift             = fmax(shift, fabs(c - lv[i]));
                lv[i]             = c;
            }
            if (shift < 1e-12) {
                break;
            }
        }
        for (int i = 0; i < n; ++i) {
            *levels++ = (float) lv[i];
        }
    }
}

static bool kprof_default(int width, tq_kprof_table * t) {
    static uint8_t bits[TQ_KPROF_DEFAULT_PROFILES * QK_TQ];
    static float   scale[TQ_KPROF_DEFAULT_PROFILES * QK_TQ];
    float          levels[TQ_KPROF_N_LEVELS];
    tq_kprof_gaussian_levels(levels);
    for (int p = 0; p < TQ_KPROF_DEFAULT_PROFILES; ++p) {
        for (int j = 0; j < QK_TQ; ++j) {
            bits[p * QK_TQ + j]  = (uint8_t) width;
            scale[p * QK_TQ + j] = TQ_KPROF_DEFAULT_SCALE0 * exp2f(0.5f * (float) p);
        }
    }
    return tq_kprof_init(t, TQ_KPROF_DEFAULT_PROFILES, QK_TQ * width + 16, bits, scale, levels);
}

// called once by tq_init()
void tq_kprof_init_defaults(void) {
    for (int w = 2; w <= 3; ++w) {
        if (!kprof_default(w, &g_kprof[w - 2])) {
            TQ_ABORT("the built-in ktqp%d table is invalid", w);
        }
        snprintf(g_kprof_source[w - 2], sizeof(g_kprof_source[w - 2]), "built-in");
        g_kprof_generation[w - 2]++;
    }
}

const tq_kprof_table * tq_kprof_active(int width) {
    tq_ensure_init();
    return width >= 2 && width <= 3 ? &g_kprof[width - 2] : NULL;
}

const char * tq_kprof_active_source(int width) {
    tq_ensure_init();
    return width >= 2 && width <= 3 ? g_kprof_source[width - 2] : NULL;
}

uint32_t tq_kprof_active_generation(int width) {
    tq_ensure_init();
    return width >= 2 && width <= 3 ? g_kprof_generation[width - 2] : 0;
}

// the built-in table of a width, or t: is it what the width holds now?
static bool kprof_same(int width, const tq_kprof_table * t) {
    static tq_kprof_table builtin;
    if (t == NULL) {
        if (!kprof_default(width, &builtin)) {
            TQ_ABORT("the built-in ktqp%d table is invalid", width);
        }
        t = &builtin;
    }
    return memcmp(t, &g_kprof[width - 2], sizeof(*t)) == 0;
}

bool tq_kprof_set_active(int width, const tq_kprof_table * t, const char * source) {
    tq_ensure_init();
    if (width < 2 || width > 3) {
        fprintf(stderr, "llama-tq: tq_kprof_set_active: width %d, ktqp has 2 and 3\n", width);
        return false;
    }
    if (t != NULL && t->block_bits != QK_TQ * width + 16) {
        fprintf(stderr, "llama-tq: tq_kprof_set_active: a table of %d-bit blocks, ktqp%d blocks have %d bits\n",
                t->block_bits, width, QK_TQ * width + 16);
        return false;
    }
    if (g_kprof_holders[width - 2] > 0 && !kprof_same(width, t)) {
        fprintf(stderr, "llama-tq: ktqp%d: %d live cache(s) hold the table of %s; a different table (%s) cannot "
                "replace it until they are freed\n", width, g_kprof_holders[width - 2], g_kprof_source[width - 2],
                t == NULL ? "built-in" : (source ? source : "(unnamed)"));
        return false;
    }
    if (t == NULL) {
        if (!kprof_default(width, &g_kprof[width - 2])) {
            TQ_ABORT("the built-in ktqp%d table is invalid", width);
        }
        snprintf(g_kprof_source[width - 2], sizeof(g_kprof_source[width - 2]), "built-in");
    } else {
        g_kprof[width - 2] = *t;
        snprintf(g_kprof_source[width - 2], sizeof(g_kprof_source[width - 2]), "%s", source ? source : "(unnamed)");
    }
    g_kprof_generation[width - 2]++;
    return true;
}

bool tq_kprof_hold(int width, const tq_kprof_table * t, const char * source) {
    if (!tq_kprof_set_active(width, t, source)) {
        return false;
    }
    g_kprof_holders[width - 2]++;
    return true;
}

void tq_kprof_release(int width) {
    if (width >= 2 && width <= 3 && g_kprof_holders[width - 2] > 0) {
        g_kprof_holders[width - 2]--;
    }
}

int tq_kprof_holders(int width) {
    return width >= 2 && width <= 3 ? g_kprof_holders[width - 2] : 0;
}

#if defined(_MSC_VER)
#define TQ_KPROF_TLS __declspec(thread)
#else
#define TQ_KPROF_TLS _Thread_local
#endif

// A row of a K cache is one token's KV heads, and the next row this thread encodes is most likely the next
// token of the same layer: each block position remembers its last winner, tried first (the result is the
// same profile either way: the best, the lowest index on a tie).
static void kprof_quantize_row(const tq_kprof_table * t, const float * x, uint8_t * y, int64_t k, size_t bs) {
    static TQ_KPROF_TLS int32_t hints[QK_TQ];
    static TQ_KPROF_TLS const tq_kprof_table * hints_table;
    if (hints_table != t) {
        for (int i = 0; i < QK_TQ; ++i) {
            hints[i] = -1;
        }
        hints_table = t;
    }
    for (int64_t i = 0; i < k / QK_TQ; ++i) {
        int32_t * hint = &hints[i % QK_TQ];
        kprof_quantize(t, x + i * QK_TQ, y + i * bs, *hint, hint);
    }
}

#define TQ_KPROF_TYPE(name, width)                                                                        \
    void quantize_row_##name##_ref(const float * x, void * y, int64_t k) {                                \
        TQ_CHECK_ROW(k);                                                                                  \
        kprof_quantize_row(tq_kprof_active(width), x, (uint8_t *) y, k, sizeof(block_##name));          \
    }                                                                                                     \
    void dequantize_row_##name(const void * x, float * y, int64_t k) {                                    \
        TQ_CHECK_ROW(k);                                                                                  \
        const tq_kprof_table * t = tq_kprof_active(width);                                                \
        for (int64_t i = 0; i < k / QK_TQ; ++i) {                                                         \
            tq_kprof_dequantize_block(t, ((const block_##name *) x)[i].qs, y + i * QK_TQ);                \
        }                                                                                                 \
    }                                                                                                     \
    size_t quantize_##name(const float * src, void * dst, int64_t nrows, int64_t n_per_row,               \
                           const float * imatrix) {                                                       \
        (void) imatrix;                                                                                   \
        TQ_CHECK_ROW(n_per_row);                                                                          \
        const size_t row_size = (size_t) (n_per_row / QK_TQ) * sizeof(block_##name);                      \
        for (int64_t r = 0; r < nrows; ++r) {                                                             \
            quantize_row_##name##_ref(src + r * n_per_row, (uint8_t *) dst + r * row_size, n_per_row);    \
        }                                                                                                 \
        return (size_t) nrows * row_size;                                                                 \
    }                                                                                                     \
    void ggml_vec_dot_##name##_f32(int n, float * s, size_t bs, const void * vx, size_t bx,               \
                                   const void * vy, size_t by, int nrc) {                                 \
        TQ_VEC_DOT_PROLOGUE(n, bs, bx, by, nrc);                                                          \
        const tq_kprof_table * t   = tq_kprof_active(width);                                              \
        const float *          q   = (const float *) vy;                                                  \
        float                  sum = 0.0f;                                                                \
        for (int i = 0; i < n / QK_TQ; ++i) {                                                             \
            sum += tq_kprof_dot_block(t, ((const block_##name *) vx)[i].qs, q + i * QK_TQ);               \
        }                                                                                                 \
        *s = sum;                                                                                         \
    }

TQ_KPROF_TYPE(ktqp2, 2)
TQ_KPROF_TYPE(ktqp3, 3)
