// llama-tq: the calibration file of the ktqp K cache types (LLAMA_TQ_K_PROFILES).
//
// ktqp codes keys folded by their queries: every RoPE pair j of a layer's KV head is multiplied by
// a_j = sqrt(λ_j / mean λ) (λ_j: the mean energy of the head's queries in the pair) and the queries by 1 / a_j,
// so q·k is unchanged and plain squared error on the folded keys is the logit error. A scale per pair commutes
// with RoPE, so the cache's K shift needs nothing. The folded keys are coded with a table of bit profiles
// (tq-kprof.h), one table per width, shared by all layers.
//
// The file (GGUF, written atomically by `tq-calibrate k-profiles`):
//   general.architecture          string  the model's architecture
//   llama_tq.k_profiles.version   u32     1
//   k_fold.<il>                   F32 [n_embd_head_k, n_head_kv]   a per coordinate (equal within a pair)
//   kprof.levels                  F32 [TQ_KPROF_N_LEVELS]          shape codebooks (tq_kprof_init's order)
//   kprof<b>.bits                 I8  [QK_TQ, n_profiles]          b = 2, 3 (either may be missing)
//   kprof<b>.scale                F32 [QK_TQ, n_profiles]
#pragma once

#include "tq-kprof.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TQ_K_PROFILES_VERSION 1

typedef struct tq_k_profiles tq_k_profiles;

// NULL on failure, with the reason (file, key or tensor named) in err
tq_k_profiles * tq_k_profiles_load(const char * path, char * err, size_t err_size);
void            tq_k_profiles_free(tq_k_profiles * p);

const char * tq_k_profiles_arch(const tq_k_profiles * p);

// the folding factors of layer il (n_embd_head * n_head floats, head-major, all finite and > 0), NULL if none
const float * tq_k_profiles_fold(const tq_k_profiles * p, int il, int64_t * n_embd_head, int64_t * n_head);

// the table of ktqp<width>, NULL if the file has none for that width
const tq_kprof_table * tq_k_profiles_table(const tq_k_profiles * p, int width);

#ifdef __cplusplus
}
#endif
