// llama-tq: scalar codebook types ktqb and vtqb_1 (b = 2, 3, 4): quantize, dequantize, K·q dot.
//
// Encoder (deterministic, mirrored exactly by tests/formats/reference.py):
//   x_j -> 0 if not finite; ss = sum x_j^2; if ss == 0: d = 0, codes 0.
//   For each start d0 in (sqrt(ss/64), max|x| / max|level|):
//     repeat up to TQ_CB_ITERS times: codes = nearest level at scale d, i.e. the number of scaled
//     thresholds mid_i * d below x (mid_i = (l_i + l_i+1) / 2; ties -> lower code); stop if the codes
//     did not change; d <- least-squares scale sum x·l / sum l^2 of these codes; keep the d of the
//     smallest error (strictly) along the way;
//     then d16 = fp16(float(min(d, 65504))), codes = nearest level at scale d16, error e16.
//   Store the start with the smallest e16 (strictly; first start on ties), or the all-zero block if
//   no e16 is at most ss (huge values whose error improvement is below double precision saturate at
//   the largest fp16 scale rather than vanish).
// All arithmetic in double; the levels and d16 are float32 values.

#include "tq-impl.h"

#define TQ_CB_ITERS 8

// code of the nearest level to x at scale d, given the scaled decision thresholds thr[i] = mid[i] * d:
// the number of thresholds below x (a value exactly on a threshold takes the lower code). Branch-free
// binary search over the n - 1 ascending thresholds.
static inline int tq_nearest(const double * thr, int n, double x) {
    int c = 0;
    for (int step = n >> 1; step > 0; step >>= 1) {
        c += x > thr[c + step - 1] ? step : 0;
    }
    return c;
}

static inline void tq_scale_thresholds(double * thr, const double * mid, int n, double d) {
    for (int i = 0; i < n - 1; ++i) {
        thr[i] = mid[i] * d;
    }
}

void tq_codebook_quantize_block(int cb, int b, const float * x, uint16_t * dout, uint8_t * qs) {
    const int      n    = 1 << b;
    const float *  lv   = tq_g_tables.levels[cb];
    const double * mid  = tq_g_tables.mid[cb];
    const double   lmax = tq_g_tables.absmax[cb];

    double xs[QK_TQ];
    double ss   = 0.0;
    double amax = 0.0;
    for (int j = 0; j < QK_TQ; ++j) {
        xs[j] = tq_sanitize(x[j]);
        ss += xs[j] * xs[j];
        amax = fmax(amax, fabs(xs[j]));
    }

    memset(qs, 0, QK_TQ * b / 8);
    *dout = 0;
    if (!(ss > 0.0) || !(lmax > 0.0)) {
        return;
    }

    const double starts[2] = { sqrt(ss / QK_TQ), amax / lmax };
    double       thr[TQ_MAX_LEVELS - 1];
    uint8_t      codes[QK_TQ];
    uint8_t      best_codes[QK_TQ];
    uint16_t     best_d16 = 0;
    double       best_e16 = ss;  // the all-zero block's error
    memset(codes, 0, sizeof(codes));

    for (int si = 0; si < 2; ++si) {
        // alternate nearest-level codes and least-squares scale from this start
        double d      = starts[si];
        double d_fit  = 0.0;
        double e_fit  = ss;
        for (int it = 0; it < TQ_CB_ITERS; ++it) {
            int    changed = it == 0;
            double num     = 0.0;
            double den     = 0.0;
            tq_scale_thresholds(thr, mid, n, d);
            for (int j = 0; j < QK_TQ; ++j) {
                const int c = tq_nearest(thr, n, xs[j]);
                changed |= c != codes[j];
                codes[j] = (uint8_t) c;
                num += xs[j] * lv[c];
                den += (double) lv[c] * lv[c];
            }
            if (!changed || !(num > 0.0) || !(den > 0.0)) {
                break;
            }
            const double dn  = num / den;
            double       err = 0.0;
            for (int j = 0; j < QK_TQ; ++j) {
                const double e = xs[j] - dn * lv[codes[j]];
                err += e * e;
            }
            if (err < e_fit) {
                e_fit = err;
                d_fit = dn;
            }
            d = dn;
        }
        if (!(d_fit > 0.0)) {
            continue;
        }
        // what this start's scale is worth once stored as fp16 (codes re-assigned for the stored scale)
        const uint16_t d16 = tq_fp32_to_fp16((float) fmin(d_fit, TQ_FP16_MAX));
        const double   dq  = tq_fp16_to_fp32(d16);
        if (!(dq > 0.0)) {
            continue;  // underflows fp16
        }
        double err = 0.0;
        tq_scale_thresholds(thr, mid, n, dq);
        for (int j = 0; j < QK_TQ; ++j) {
            const int    c = tq_nearest(thr, n, xs[j]);
            const double e = xs[j] - dq * lv[c];
            codes[j]       = (uint8_t) c;
            err += e * e;
        }
        if (err < best_e16 || (best_d16 == 0 && err <= best_e16)) {  // ties with zero: keep the scale
            best_e16 = err;
            best_d16 = d16;
            memcpy(best_codes, codes, sizeof(codes));
        }
    }

    if (best_d16 == 0) {
        return;  // nothing beats the all-zero block
    }
    *dout = best_d16;
    for (int j = 0; j < QK_TQ; ++j) {
        tq_put_code(qs, j, b, best_codes[j]);
    }
}

void tq_codebook_dequantize_block(int cb, int b, uint16_t d16, const uint8_t * qs, float * y) {
    const float * lv = tq_g_tables.levels[cb];
    const float   d  = tq_fp16_to_fp32(d16);
    switch (b) {
        case 2:
            for (int i = 0; i < QK_TQ / 4; ++i) {
                const unsigned q = qs[i];
                y[4 * i + 0]     = d * lv[q & 3];
                y[4 * i + 1]     = d * lv[(q >> 2) & 3];
                y[4 * i + 2]     = d * lv[(q >> 4) & 3];
                y[4 * i + 3]     = d * lv[q >> 6];
            }
            break;
        case 3:
            for (int g = 0; g < QK_TQ / 8; ++g) {
                const uint32_t q = (uint32_t) qs[3 * g] | (uint32_t) qs[3 * g + 1] << 8 | (uint32_t) qs[3 * g + 2] << 16;
                for (int j = 0; j < 8; ++j) {
                    y[8 * g + j] = d * lv[(q >> (3 * j)) & 7];
                }
            }
            break;
        default:
            for (int i = 0; i < QK_TQ / 2; ++i) {
                const unsigned q = qs[i];
                y[2 * i + 0]     = d * lv[q & 15];
                y[2 * i + 1]     = d * lv[q >> 4];
            }
            break;
    }
}

// ---- per-type wrappers ----------------------------------------------------------------------------

static void tq_cb_quantize_row(int cb, int b, const float * x, void * vy, int64_t k) {
    const size_t bs = 2 + QK_TQ * b / 8;
    uint8_t *    y  = (uint8_t *) vy;
    tq_ensure_init();
    for (int64_t i = 0; i < k / QK_TQ; ++i) {
        uint8_t * blk = y + i * bs;
        uint16_t  d;
        tq_codebook_quantize_block(cb, b, x + i * QK_TQ, &d, blk + 2);
        memcpy(blk, &d, 2);
    }
}

static void tq_cb_dequantize_row(int cb, int b, const void * vx, float * y, int64_t k) {
    const size_t    bs = 2 + QK_TQ * b / 8;
    const uint8_t * x  = (const uint8_t *) vx;
    tq_ensure_init();
    for (int64_t i = 0; i < k / QK_TQ; ++i) {
        const uint8_t * blk = x + i * bs;
        uint16_t        d;
        memcpy(&d, blk, 2);
        tq_codebook_dequantize_block(cb, b, d, blk + 2, y + i * QK_TQ);
    }
}

// sum_j q_j * level[code_j] over one block, 4 partial sums.
static inline float tq_cb_block_dot(int b, const float * lv, const uint8_t * qs, const float * q) {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    switch (b) {
        case 2:
            for (int i = 0; i < QK_TQ / 4; ++i) {
                const unsigned c = qs[i];
                a0 += q[4 * i + 0] * lv[c & 3];
                a1 += q[4 * i + 1] * lv[(c >> 2) & 3];
                a2 += q[4 * i + 2] * lv[(c >> 4) & 3];
                a3 += q[4 * i + 3] * lv[c >> 6];
            }
            break;
        case 3:
            for (int g = 0; g < QK_TQ / 8; ++g) {
                const uint32_t c = (uint32_t) qs[3 * g] | (uint32_t) qs[3 * g + 1] << 8 | (uint32_t) qs[3 * g + 2] << 16;
                a0 += q[8 * g + 0] * lv[c & 7] + q[8 * g + 4] * lv[(c >> 12) & 7];
                a1 += q[8 * g + 1] * lv[(c >> 3) & 7] + q[8 * g + 5] * lv[(c >> 15) & 7];
                a2 += q[8 * g + 2] * lv[(c >> 6) & 7] + q[8 * g + 6] * lv[(c >> 18) & 7];
                a3 += q[8 * g + 3] * lv[(c >> 9) & 7] + q[8 * g + 7] * lv[c >> 21];
            }
            break;
        default:
            for (int i = 0; i < QK_TQ / 4; ++i) {
                const unsigned c0 = qs[2 * i];
                const unsigned c1 = qs[2 * i + 1];
                a0 += q[4 * i + 0] * lv[c0 & 15];
                a1 += q[4 * i + 1] * lv[c0 >> 4];
                a2 += q[4 * i + 2] * lv[c1 & 15];
                a3 += q[4 * i + 3] * lv[c1 >> 4];
            }
            break;
    }
    return (a0 + a1) + (a2 + a3);
}

static void tq_cb_vec_dot(int cb, int b, int n, float * s, const void * vx, const float * q) {
    const size_t    bs  = 2 + QK_TQ * b / 8;
    const uint8_t * x   = (const uint8_t *) vx;
    const float *   lv  = tq_g_tables.levels[cb];
    float           sum = 0.0f;
    for (int i = 0; i < n / QK_TQ; ++i) {
        const uint8_t * blk = x + i * bs;
        uint16_t        d;
        memcpy(&d, blk, 2);
        sum += tq_fp16_to_fp32(d) * tq_cb_block_dot(b, lv, blk + 2, q + i * QK_TQ);
    }
    *s = sum;
}

#define TQ_CB_TYPE(name, cb, b)                                                                         \
    void quantize_row_##name##_ref(const float * x, void * y, int64_t k) {                              \
        TQ_CHECK_ROW(k);                                                                                \
        tq_cb_quantize_row(cb, b, x, y, k);                                                             \
    }                                                                                                   \
    void dequantize_row_##name(const void * x, float * y, int64_t k) {                                  \
        TQ_CHECK_ROW(k);                                                                                \
        tq_cb_dequantize_row(cb, b, x, y, k);                                                           \
    }                                                                                                   \
    size_t quantize_##name(const float * src, void * dst, int64_t nrows, int64_t n_per_row,             \
                           const float * imatrix) {                                                     \
        (void) imatrix;                                                                                 \
        TQ_CHECK_ROW(n_per_row);                                                                        \
        const size_t row_size = (size_t) (n_per_row / QK_TQ) * (2 + QK_TQ * (b) / 8);                   \
        for (int64_t r = 0; r < nrows; ++r) {                                                           \
            tq_cb_quantize_row(cb, b, src + r * n_per_row, (uint8_t *) dst + r * row_size, n_per_row);  \
        }                                                                                               \
        return (size_t) nrows * row_size;                                                               \
    }

TQ_CB_TYPE(ktq2, 0, 2)
TQ_CB_TYPE(ktq3, 1, 3)
TQ_CB_TYPE(ktq4, 2, 4)
TQ_CB_TYPE(vtq2_1, 3, 2)
TQ_CB_TYPE(vtq3_1, 4, 3)
TQ_CB_TYPE(vtq4_1, 5, 4)

#define TQ_CB_VEC_DOT(name, cb, b)                                                                      \
    void ggml_vec_dot_##name##_f32(int n, float * s, size_t bs, const void * vx, size_t bx,             \
                                   const void * vy, size_t by, int nrc) {                               \
        TQ_VEC_DOT_PROLOGUE(n, bs, bx, by, nrc);                                                        \
        tq_ensure_init();                                                                               \
        tq_cb_vec_dot(cb, b, n, s, vx, (const float *) vy);                                             \
    }

TQ_CB_VEC_DOT(ktq2, 0, 2)
TQ_CB_VEC_DOT(ktq3, 1, 3)
TQ_CB_VEC_DOT(ktq4, 2, 4)
