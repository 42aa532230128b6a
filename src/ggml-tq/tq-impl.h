// llama-tq: internals shared by the tq-*.c files (not part of the public interface).
#pragma once

#include "tq-quants.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define TQ_MAX_LEVELS  16    // 2^4
#define TQ_MAX_STATES  1024  // 2^(4+6)
#define TQ_L_EXTRA     6     // L = k + 6
#define TQ_FP16_MAX    65504.0

// GGML_ABORT-like: the message, then abort(). Used for API misuse (a row length that is not a
// multiple of QK_TQ, an unknown type) and for a bad LLAMA_TQ_CODEBOOK file.
#define TQ_ABORT(...)                                                        \
    do {                                                                     \
        fprintf(stderr, "%s:%d: llama-tq: ", __FILE__, __LINE__);            \
        fprintf(stderr, __VA_ARGS__);                                        \
        fputc('\n', stderr);                                                 \
        fflush(stderr);                                                      \
        abort();                                                             \
    } while (0)

#define TQ_CHECK_ROW(k)                                                                          \
    do {                                                                                         \
        if ((k) < 0 || (k) % QK_TQ != 0) {                                                       \
            TQ_ABORT("%s: row length %lld is not a multiple of the block size %d", __func__,   \
                     (long long) (k), QK_TQ);                                                    \
        }                                                                                        \
    } while (0)

// The start of every K-side ggml_vec_dot_*_f32: ggml's unused strides, one row at a time, whole blocks.
#define TQ_VEC_DOT_PROLOGUE(n, bs, bx, by, nrc)                                 \
    do {                                                                          \
        (void) (bs);                                                              \
        (void) (bx);                                                              \
        (void) (by);                                                              \
        if ((nrc) != 1) {                                                         \
            TQ_ABORT("%s: nrc = %d, only 1 is supported", __func__, (int) (nrc)); \
        }                                                                         \
        TQ_CHECK_ROW(n);                                                          \
    } while (0)

// Active tables, filled once by tq_init() (tq-tables.c).
struct tq_tables {
    // scalar codebooks, index: b - 2 (ktq) / 3 + b - 2 (vtqb_1)
    float  levels[6][TQ_MAX_LEVELS];
    double mid[6][TQ_MAX_LEVELS - 1];   // decision thresholds (level[i] + level[i+1]) / 2 in double
    float  absmax[6];                   // max |level|
    // trellis tables, index k - 2: natural order (decode) and the Viterbi storage order (tq-trellis.c):
    // state s = g*K + h (K = 2^k, G = 64, Q = G/K) is stored at h*G + sigma(g), sigma(c*Q + q) = q*K + c
    float    trellis[3][TQ_MAX_STATES];
    float    trellis_pos[3][TQ_MAX_STATES];   // table[s] at the position of s
    uint16_t trellis_spos[3][TQ_MAX_STATES];  // s at each position
    uint8_t  trellis_sigma[3][64];            // sigma(g)
    uint8_t  trellis_midx[3][64];             // [h*Q + q] = sigma(q*K + h): slot of the predecessor group
    float    trellis_absmax[3];               // max |table|
    char   hash[17];
    char   source[1024];
};

extern struct tq_tables tq_g_tables;

void tq_ensure_init(void);

// the built-in tables of the ktqp types (tq-kprof.c), filled by tq_init()
void tq_kprof_init_defaults(void);

// LLAMA_TQ_CODEBOOK loader (tq-codebook-file.c): replaces levels / trellis / hash / source of t with the
// file's, or aborts with a message naming the file and the problem.
void tq_load_codebook_file(const char * path, struct tq_tables * t);

// Sample value as the encoders see it: non-finite -> 0.
static inline double tq_sanitize(float v) {
    return isfinite(v) ? (double) v : 0.0;
}

// Little-endian bit-stream helpers on one block's code bytes.
static inline unsigned tq_get_code(const uint8_t * qs, int j, int b) {
    const int      bit = j * b;
    const int      byt = bit >> 3;
    const unsigned w   = (unsigned) qs[byt] | ((b == 3 && (bit & 7) > 5) ? (unsigned) qs[byt + 1] << 8 : 0u);
    return (w >> (bit & 7)) & ((1u << b) - 1u);
}

static inline void tq_put_code(uint8_t * qs, int j, int b, unsigned c) {
    const int bit = j * b;
    const int byt = bit >> 3;
    const int sh  = bit & 7;
    qs[byt] |= (uint8_t) (c << sh);
    if (sh + b > 8) {
        qs[byt + 1] |= (uint8_t) (c >> (8 - sh));
    }
}

// Scalar codebook core (tq-codebook.c): one block of QK_TQ samples.
void tq_codebook_quantize_block(int cb, int b, const float * x, uint16_t * d, uint8_t * qs);
void tq_codebook_dequantize_block(int cb, int b, uint16_t d, const uint8_t * qs, float * y);

// Trellis core (tq-trellis.c). tq_trellis_init_dispatch: picks the Viterbi SIMD variant (from tq_init).
void tq_trellis_init_dispatch(void);
void tq_trellis_quantize_block(int k, int n_out, const float * x, uint16_t * d, uint16_t * od, uint8_t * op, uint8_t * qs);
void tq_trellis_dequantize_block(int k, int n_out, uint16_t d, const uint16_t * od, const uint8_t * op,
                                 const uint8_t * qs, float * y);
