// llama-tq: CPU reference of the K block format "kprof": a table of bit profiles (docs/formats.md, "K by bit
// profiles"; measured offline in benchmarks/k_profiles.py and docs/results.md). The cache types ktqp2 / ktqp3
// use it with block_bits = 64 * b + 16.
//
// The keys it codes are in the model's own basis (no Hadamard rotation) with every RoPE pair scaled by the calibrated folding factor, so plain squared error is the logit error. A table of
// n_profiles profiles gives, per coordinate, a bit count (0..TQ_KPROF_MAX_BITS) and a scale; one shape
// codebook per bit count serves every coordinate. A block of QK_TQ values stores the index of its profile
// (index_bits = ceil(log2 n_profiles)) then each coordinate's code, as one little-endian bit stream (bit i of
// the stream is bit i%8 of byte i/8). The encoder tries every profile and keeps the one with the least squared
// error (the lowest index on a tie; the sum is float32, taken in an order that lets a clearly worse profile stop
// early); x̂_j = scale[p][j] * levels[b][code_j], and 0 where b = 0.
//
// Plain C11, libc + libm only. The tq_kprof_* block functions take the caller's table; the ktqp types read
// the process-wide table of their width (tq_kprof_active), which llama sets from LLAMA_TQ_K_PROFILES.
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "tq-quants.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TQ_KPROF_MAX_BITS     6     // bits per coordinate
#define TQ_KPROF_MAX_PROFILES 1024  // index of at most 10 bits
#define TQ_KPROF_N_LEVELS     126   // levels of all shape codebooks: 2 + 4 + ... + 64

typedef struct {
    int32_t  n_profiles;
    int32_t  index_bits;
    int32_t  block_bits;                                       // bits per block: a multiple of 8
    uint8_t  bits[TQ_KPROF_MAX_PROFILES][QK_TQ];
    float    scale[TQ_KPROF_MAX_PROFILES][QK_TQ];
    float    levels[TQ_KPROF_MAX_BITS + 1][1 << TQ_KPROF_MAX_BITS];      // levels[b][0 .. 2^b)
    float    thresholds[TQ_KPROF_MAX_BITS + 1][1 << TQ_KPROF_MAX_BITS];  // midpoints, [b][0 .. 2^b - 1)
    // derived by tq_kprof_init: each profile's coordinates with b > 0 in order, and where their codes start
    uint8_t  n_active[TQ_KPROF_MAX_PROFILES];
    uint8_t  active[TQ_KPROF_MAX_PROFILES][QK_TQ];
    uint16_t code_pos[TQ_KPROF_MAX_PROFILES][QK_TQ];                  // bit position in the stream
    uint8_t  eval_order[TQ_KPROF_MAX_PROFILES][QK_TQ];  // the encoder's order: largest expected error first
} tq_kprof_table;

// Fills t from bits [n_profiles * QK_TQ], scale [n_profiles * QK_TQ] and levels [TQ_KPROF_N_LEVELS] (the
// 2-level codebook, then the 4-level one, ...). Returns false, with the first problem printed to stderr, if
// n_profiles is not in 1..TQ_KPROF_MAX_PROFILES, block_bits not a positive multiple of 8, a bit count above
// TQ_KPROF_MAX_BITS, a profile's index and codes past block_bits, a scale not finite and positive, or a
// codebook not finite and strictly ascending.
bool tq_kprof_init(tq_kprof_table * t, int32_t n_profiles, int32_t block_bits, const uint8_t * bits,
                   const float * scale, const float * levels);

// x [QK_TQ] -> block [block_bits / 8]; returns the squared error of the chosen profile. Non-finite values are
// coded as 0.
float tq_kprof_quantize_block(const tq_kprof_table * t, const float * x, uint8_t * block);

// block -> y [QK_TQ]. An index past n_profiles decodes with profile 0.
void tq_kprof_dequantize_block(const tq_kprof_table * t, const uint8_t * block, float * y);

// Σ_j q[j] * x̂_j straight from the codes.
float tq_kprof_dot_block(const tq_kprof_table * t, const uint8_t * block, const float * q);

// The profile index stored in a block.
int32_t tq_kprof_block_profile(const tq_kprof_table * t, const uint8_t * block);

// ---- the tables of the ktqp cache types -------------------------------------------------------------------
// width 2 or 3. Until a table is set, the built-in one: TQ_KPROF_DEFAULT_PROFILES profiles of width bits on
// every coordinate with the unit-Gaussian Lloyd-Max levels, at scales TQ_KPROF_DEFAULT_SCALE0 * 2^(p/2) (a
// per-block scale choice in disguise; what test-backend-ops and the codecs see without a calibration).
#define TQ_KPROF_DEFAULT_PROFILES 16
#define TQ_KPROF_DEFAULT_SCALE0   (1.0f / 64.0f)

const tq_kprof_table * tq_kprof_active(int width);
const char *           tq_kprof_active_source(int width);  // "built-in" or what tq_kprof_set_active named
// Changes whenever the table of a width is set (a copy elsewhere, e.g. on a GPU, is stale when it differs).
uint32_t               tq_kprof_active_generation(int width);

// Copies t as the table of ktqp<width> (NULL: back to the built-in one). Returns false, with a message on
// stderr, if the width is not 2 or 3, t's blocks are not 64 * width + 16 bits, or the table would change while
// a holder uses it (below). Not thread-safe: call it before any graph that reads or writes a ktqp tensor runs
// (llama does, at context creation).
bool tq_kprof_set_active(int width, const tq_kprof_table * t, const char * source);

// A cache that stores ktqp<width> blocks holds the table while it lives (its blocks mean nothing with another):
// hold = tq_kprof_set_active + one more holder (false, with a message, if another holder has a different table);
// release drops one. While any holder lives, tq_kprof_set_active with a different table is refused.
bool tq_kprof_hold(int width, const tq_kprof_table * t, const char * source);
void tq_kprof_release(int width);
int  tq_kprof_holders(int width);

// The unit-Gaussian Lloyd-Max levels for 1 .. TQ_KPROF_MAX_BITS bits, TQ_KPROF_N_LEVELS floats in
// tq_kprof_init's order (the built-in table's shape codebooks).
void tq_kprof_gaussian_levels(float * levels);

#ifdef __cplusplus
}
#endif
