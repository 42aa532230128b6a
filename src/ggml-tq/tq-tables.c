// llama-tq: active codebook tables (built-in or LLAMA_TQ_CODEBOOK), type properties, row validation
// and the generic per-type dispatch.

#include "tq-impl.h"
#include "tq-kprof.h"

#include "tq-codebooks-default.h"

#if defined(_MSC_VER)
#include <windows.h>
#endif

struct tq_tables tq_g_tables;

// ---- one-time initialisation ------------------------------------------------------------------------

static void tq_finish_tables(struct tq_tables * t) {
    static const int nlev[6] = { 4, 8, 16, 4, 8, 16 };
    for (int cb = 0; cb < 6; ++cb) {
        float amax = 0.0f;
        for (int i = 0; i < nlev[cb]; ++i) {
            amax = fmaxf(amax, fabsf(t->levels[cb][i]));
            if (i + 1 < nlev[cb]) {
                t->mid[cb][i] = 0.5 * ((double) t->levels[cb][i] + (double) t->levels[cb][i + 1]);
            }
        }
        t->absmax[cb] = amax;
    }
    for (int k = 2; k <= 4; ++k) {
        const int K = 1 << k;
        const int G = 1 << TQ_L_EXTRA;
        const int Q = G / K;
        uint8_t * sigma = t->trellis_sigma[k - 2];
        for (int c = 0; c < K; ++c) {
            for (int q = 0; q < Q; ++q) {
                sigma[c * Q + q] = (uint8_t) (q * K + c);
            }
        }
        for (int h = 0; h < K; ++h) {
            for (int q = 0; q < Q; ++q) {
                t->trellis_midx[k - 2][h * Q + q] = sigma[q * K + h];
            }
        }
        t->trellis_absmax[k - 2] = 0.0f;
        for (int s = 0; s < K * G; ++s) {
            t->trellis_absmax[k - 2] = fmaxf(t->trellis_absmax[k - 2], fabsf(t->trellis[k - 2][s]));
        }
        for (int s = 0; s < K * G; ++s) {
            const int p = (s & (K - 1)) * G + sigma[s >> k];
            t->trellis_pos[k - 2][p]  = t->trellis[k - 2][s];
            t->trellis_spos[k - 2][p] = (uint16_t) s;
        }
    }
}

static void tq_do_init(void) {
    struct tq_tables * t = &tq_g_tables;
    memset(t, 0, sizeof(*t));
    memcpy(t->levels[0], tq_default_ktq2, sizeof(tq_default_ktq2));
    memcpy(t->levels[1], tq_default_ktq3, sizeof(tq_default_ktq3));
    memcpy(t->levels[2], tq_default_ktq4, sizeof(tq_default_ktq4));
    memcpy(t->levels[3], tq_default_vtq2_1, sizeof(tq_default_vtq2_1));
    memcpy(t->levels[4], tq_default_vtq3_1, sizeof(tq_default_vtq3_1));
    memcpy(t->levels[5], tq_default_vtq4_1, sizeof(tq_default_vtq4_1));
    memcpy(t->trellis[0], tq_default_trellis2, sizeof(tq_default_trellis2));
    memcpy(t->trellis[1], tq_default_trellis3, sizeof(tq_default_trellis3));
    memcpy(t->trellis[2], tq_default_trellis4, sizeof(tq_default_trellis4));
    snprintf(t->hash, sizeof(t->hash), "%s", TQ_CODEBOOK_HASH);
    snprintf(t->source, sizeof(t->source), "built-in");

    const char * path = getenv("LLAMA_TQ_CODEBOOK");
    if (path != NULL && path[0] != '\0') {
        tq_load_codebook_file(path, t);
    }
    tq_finish_tables(t);
    tq_trellis_init_dispatch();
    tq_kprof_init_defaults();
}

// 0 = not started, 1 = running, 2 = done
#if defined(_MSC_VER)
static volatile LONG tq_init_state = 0;
static int  tq_init_load(void) { return (int) InterlockedCompareExchange(&tq_init_state, 0, 0); }
static int  tq_init_claim(void) { return InterlockedCompareExchange(&tq_init_state, 1, 0) == 0; }
static void tq_init_done(void) { InterlockedExchange(&tq_init_state, 2); }
static void tq_init_yield(void) { SwitchToThread(); }
#else
static int  tq_init_state = 0;
static int  tq_init_load(void) { return __atomic_load_n(&tq_init_state, __ATOMIC_ACQUIRE); }
static int  tq_init_claim(void) {
    int expected = 0;
    return __atomic_compare_exchange_n(&tq_init_state, &expected, 1, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static void tq_init_done(void) { __atomic_store_n(&tq_init_state, 2, __ATOMIC_RELEASE); }
static void tq_init_yield(void) { }
#endif

void tq_init(void) {
    if (tq_init_load() == 2) {
        return;
    }
    if (tq_init_claim()) {
        tq_do_init();
        tq_init_done();
        return;
    }
    while (tq_init_load() != 2) {
        tq_init_yield();
    }
}

void tq_ensure_init(void) {
    tq_init();
}

const float * tq_trellis_table(int k) {
    if (k < 2 || k > 4) {
        return NULL;
    }
    tq_init();
    return tq_g_tables.trellis[k - 2];
}

const float * tq_levels(int type) {
    tq_init();
    if (type >= TQ_TYPE_KTQ2 && type <= TQ_TYPE_VTQ4_1) {
        return tq_g_tables.levels[type];
    }
    if (type >= TQ_TYPE_VTQ2_2 && type <= TQ_TYPE_VTQ4_3) {
        return tq_g_tables.trellis[(type - TQ_TYPE_VTQ2_2) % 3];
    }
    return NULL;
}

const char * tq_codebook_hash(void) {
    tq_init();
    return tq_g_tables.hash;
}

const char * tq_codebook_source(void) {
    tq_init();
    return tq_g_tables.source;
}

// ---- type properties ------------------------------------------------------------------------------

static const char * const tq_names[TQ_TYPE_COUNT] = {
    "ktq2", "ktq3", "ktq4", "vtq2_1", "vtq3_1", "vtq4_1", "vtq2_2", "vtq3_2", "vtq4_2", "vtq2_3", "vtq3_3", "vtq4_3",
    "ktqp2", "ktqp3",
};

const char * tq_type_name(int type) {
    return type >= 0 && type < TQ_TYPE_COUNT ? tq_names[type] : NULL;
}

int tq_type_bits(int type) {
    if (type >= TQ_TYPE_KTQP2 && type < TQ_TYPE_COUNT) {
        return 2 + (type - TQ_TYPE_KTQP2);
    }
    return type >= 0 && type < TQ_TYPE_COUNT ? 2 + type % 3 : 0;
}

bool tq_type_is_trellis(int type) {
    return type >= TQ_TYPE_VTQ2_2 && type <= TQ_TYPE_VTQ4_3;
}

static int tq_type_outliers(int type) {
    return type >= TQ_TYPE_VTQ2_3 && type <= TQ_TYPE_VTQ4_3 ? TQ_OUTLIERS : 0;
}

size_t tq_type_size(int type) {
    if (type < 0 || type >= TQ_TYPE_COUNT) {
        return 0;
    }
    return 2 + 3 * (size_t) tq_type_outliers(type) + QK_TQ * (size_t) tq_type_bits(type) / 8;
}

size_t tq_row_size(int type, int64_t n_per_row) {
    return tq_type_size(type) * (size_t) (n_per_row / QK_TQ);
}

static bool tq_fp16_is_finite(uint16_t h) {
    return (h & 0x7C00) != 0x7C00;
}

bool tq_validate_row(int type, const void * data, size_t nbytes) {
    const size_t bs = tq_type_size(type);
    if (bs == 0) {
        fprintf(stderr, "tq_validate_row: invalid type %d\n", type);
        return false;
    }
    if (nbytes % bs != 0) {
        fprintf(stderr, "tq_validate_row: invalid size %zu for type %s (type size = %zu)\n", nbytes,
                tq_names[type], bs);
        return false;
    }
    const int       n_out = tq_type_outliers(type);
    const uint8_t * p     = (const uint8_t *) data;
    if (type >= TQ_TYPE_KTQP2) {  // no scale; the profile index must name a profile of the table
        const tq_kprof_table * t = tq_kprof_active(tq_type_bits(type));
        for (size_t i = 0; i < nbytes / bs; ++i) {
            const uint8_t * blk = p + i * bs;
            const unsigned  idx = ((unsigned) blk[0] | (unsigned) blk[1] << 8) & ((1u << t->index_bits) - 1u);
            if ((int32_t) idx >= t->n_profiles) {
                fprintf(stderr, "tq_validate_row: profile %u at block %zu, the %s table has %d (%s)\n", idx, i,
                        tq_names[type], t->n_profiles, tq_kprof_active_source(tq_type_bits(type)));
                return false;
            }
        }
        return true;
    }
    for (size_t i = 0; i < nbytes / bs; ++i) {
        const uint8_t * blk = p + i * bs;
        uint16_t        d;
        memcpy(&d, blk, 2);
        if (!tq_fp16_is_finite(d)) {
            fprintf(stderr, "tq_validate_row: found %s value at block %zu\n", (d & 0x3FF) ? "nan" : "inf", i);
            return false;
        }
        for (int o = 0; o < n_out; ++o) {
            uint16_t v;
            memcpy(&v, blk + 2 + 2 * o, 2);
            if (!tq_fp16_is_finite(v)) {
                fprintf(stderr, "tq_validate_row: found %s outlier value at block %zu\n", (v & 0x3FF) ? "nan" : "inf", i);
                return false;
            }
            if (blk[2 + 2 * n_out + o] >= QK_TQ) {
                fprintf(stderr, "tq_validate_row: outlier position %d out of range at block %zu\n",
                        blk[2 + 2 * n_out + o], i);
                return false;
            }
        }
    }
    return true;
}

// ---- generic dispatch -----------------------------------------------------------------------------

typedef void (*tq_from_float_fn)(const float * x, void * y, int64_t k);
typedef void (*tq_to_float_fn)(const void * x, float * y, int64_t k);
typedef size_t (*tq_quantize_fn)(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

static const tq_from_float_fn tq_from_float_fns[TQ_TYPE_COUNT] = {
    quantize_row_ktq2_ref,   quantize_row_ktq3_ref,   quantize_row_ktq4_ref,
    quantize_row_vtq2_1_ref, quantize_row_vtq3_1_ref, quantize_row_vtq4_1_ref,
    quantize_row_vtq2_2_ref, quantize_row_vtq3_2_ref, quantize_row_vtq4_2_ref,
    quantize_row_vtq2_3_ref, quantize_row_vtq3_3_ref, quantize_row_vtq4_3_ref,
    quantize_row_ktqp2_ref,  quantize_row_ktqp3_ref,
};

static const tq_to_float_fn tq_to_float_fns[TQ_TYPE_COUNT] = {
    dequantize_row_ktq2,   dequantize_row_ktq3,   dequantize_row_ktq4,
    dequantize_row_vtq2_1, dequantize_row_vtq3_1, dequantize_row_vtq4_1,
    dequantize_row_vtq2_2, dequantize_row_vtq3_2, dequantize_row_vtq4_2,
    dequantize_row_vtq2_3, dequantize_row_vtq3_3, dequantize_row_vtq4_3,
    dequantize_row_ktqp2,  dequantize_row_ktqp3,
};

static const tq_quantize_fn tq_quantize_fns[TQ_TYPE_COUNT] = {
    quantize_ktq2,   quantize_ktq3,   quantize_ktq4,   quantize_vtq2_1, quantize_vtq3_1, quantize_vtq4_1,
    quantize_vtq2_2, quantize_vtq3_2, quantize_vtq4_2, quantize_vtq2_3, quantize_vtq3_3, quantize_vtq4_3,
    quantize_ktqp2,  quantize_ktqp3,
};

#define TQ_CHECK_TYPE(type)                                              \
    do {                                                                 \
        if ((type) < 0 || (type) >= TQ_TYPE_COUNT) {                     \
            TQ_ABORT("%s: invalid type %d", __func__, (int) (type));     \
        }                                                                \
    } while (0)

void tq_quantize_row_ref(int type, const float * x, void * y, int64_t k) {
    TQ_CHECK_TYPE(type);
    tq_from_float_fns[type](x, y, k);
}

void tq_dequantize_row(int type, const void * x, float * y, int64_t k) {
    TQ_CHECK_TYPE(type);
    tq_to_float_fns[type](x, y, k);
}

size_t tq_quantize(int type, const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix) {
    TQ_CHECK_TYPE(type);
    return tq_quantize_fns[type](src, dst, nrows, n_per_row, imatrix);
}
