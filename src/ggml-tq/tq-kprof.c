// llama-tq: CPU reference of the candidate "kprof" K block format (tq-kprof.h, docs/formats.md).
#include "tq-kprof.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static unsigned kprof_get_bits(const uint8_t * s, int pos, int n) {
    unsigned v = 0;
    for (int i = 0; i < n; ++i) {
        v |= (unsigned) ((s[(pos + i) >> 3] >> ((pos + i) & 7)) & 1u) << i;
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

float tq_kprof_quantize_block(const tq_kprof_table * t, const float * x, uint8_t * block) {
    float xs[QK_TQ];
    for (int j = 0; j < QK_TQ; ++j) {
        xs[j] = isfinite(x[j]) ? x[j] : 0.0f;
    }
    int32_t best   = -1;
    float   best_e = INFINITY;
    for (int32_t p = 0; p < t->n_profiles; ++p) {
        float e = 0.0f;
        for (int j = 0; j < QK_TQ && e < best_e; ++j) {
            const int b = t->bits[p][j];
            float     d = xs[j];
            if (b) {
                const float s = t->scale[p][j];
                d -= s * t->levels[b][kprof_code(t, b, xs[j] / s)];
            }
            e += d * d;
        }
        if (e < best_e) {
            best   = p;
            best_e = e;
        }
    }
    if (best < 0) {  // every profile's error overflowed (values near float max): profile 0
        best = 0;
    }
    memset(block, 0, (size_t) t->block_bits / 8);
    kprof_put_bits(block, 0, t->index_bits, (unsigned) best);
    int pos = t->index_bits;
    for (int j = 0; j < QK_TQ; ++j) {
        const int b = t->bits[best][j];
        if (b) {
            kprof_put_bits(block, pos, b, kprof_code(t, b, xs[j] / t->scale[best][j]));
            pos += b;
        }
    }
    return best_e;
}

int32_t tq_kprof_block_profile(const tq_kprof_table * t, const uint8_t * block) {
    const int32_t p = (int32_t) kprof_get_bits(block, 0, t->index_bits);
    return p < t->n_profiles ? p : 0;
}

void tq_kprof_dequantize_block(const tq_kprof_table * t, const uint8_t * block, float * y) {
    const int32_t p   = tq_kprof_block_profile(t, block);
    int           pos = t->index_bits;
    for (int j = 0; j < QK_TQ; ++j) {
        const int b = t->bits[p][j];
        y[j] = 0.0f;
        if (b) {
            y[j] = t->scale[p][j] * t->levels[b][kprof_get_bits(block, pos, b)];
            pos += b;
        }
    }
}

float tq_kprof_dot_block(const tq_kprof_table * t, const uint8_t * block, const float * q) {
    float y[QK_TQ];
    tq_kprof_dequantize_block(t, block, y);
    float sum = 0.0f;
    for (int j = 0; j < QK_TQ; ++j) {
        sum += q[j] * y[j];
    }
    return sum;
}
