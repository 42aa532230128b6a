// llama-tq: CPU reference of a candidate K block format, "kprof": a table of bit profiles (docs/formats.md,
// "Candidate: K by bit profiles"; measured offline in benchmarks/k_profiles.py and docs/results.md).
//
// Not a cache type yet. The keys it codes are in the model's own basis (no Hadamard rotation) with every RoPE
// pair scaled by the calibrated folding factor, so plain squared error is the logit error. A table of
// n_profiles profiles gives, per coordinate, a bit count (0..TQ_KPROF_MAX_BITS) and a scale; one shape
// codebook per bit count serves every coordinate. A block of QK_TQ values stores the index of its profile
// (index_bits = ceil(log2 n_profiles)) then each coordinate's code, as one little-endian bit stream (bit i of
// the stream is bit i%8 of byte i/8). The encoder tries every profile and keeps the one with the least squared
// error (the lowest index on a tie); x̂_j = scale[p][j] * levels[b][code_j], and 0 where b = 0.
//
// Plain C11, libc + libm only; the table is the caller's (no global state).
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

#ifdef __cplusplus
}
#endif
