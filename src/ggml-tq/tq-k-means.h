// llama-tq: K centering. A per-layer constant subtracted from every K row before the cache stores it.
//
// Attention is softmax(q·k): subtracting one vector c from every key of a layer's head shifts all the logits
// of a query by the same q·c, which the softmax cancels. Models' keys carry a large mean (on SmolLM2 its
// energy is 2-4x the keys' variance), so quantizing k - c instead of k spends the codes on what varies.
//
// RoPE turns the constant pre-RoPE mean m into R_p m, which depends on the key's position p; the best
// constant for positions 0..n_pos-1 is the average of R_p m over them (tq_rope_position_mean). Any c keeps
// attention exact; a good c only lowers the quantization error (docs/formats.md, "K centering").
//
// A k-means file (GGUF, written by `tq-calibrate k-means`) holds m per layer, pre-RoPE and unrotated:
//   general.architecture   string  the model's architecture
//   llama_tq.k_means.version  u32  1
//   k_mean.<il>            F32 [n_embd_head_k, n_head_kv]
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TQ_K_MEANS_VERSION 1

typedef struct tq_k_means tq_k_means;

// NULL on failure, with the reason (file, key or tensor named) in err
tq_k_means * tq_k_means_load(const char * path, char * err, size_t err_size);
void         tq_k_means_free(tq_k_means * m);

const char * tq_k_means_arch(const tq_k_means * m);

// the pre-RoPE mean of layer il (n_embd_head * n_head floats, head-major), NULL if the file has none
const float * tq_k_means_layer(const tq_k_means * m, int il, int64_t * n_embd_head, int64_t * n_head);

// dst = mean over p = 0 .. n_pos-1 of RoPE_p(mu), per head of n_embd_head values. RoPE as ggml applies it
// with freq_scale and no YaRN: pairs (2i, 2i+1) (neox: (i, i + n_rot/2)) turned by p * freq_scale *
// freq_base^(-2i/n_rot); values from n_rot on are not turned. dst and mu may be the same array.
void tq_rope_position_mean(float * dst, const float * mu, int64_t n_embd_head, int64_t n_head, int n_rot,
                           bool neox, float freq_base, float freq_scale, int64_t n_pos);

// in place: every run of nrot values (nrot a power of two dividing n) times the orthonormal Walsh-Hadamard
// matrix that llama.cpp's attn_rot uses (Sylvester order, 1/sqrt(nrot))
void tq_hadamard_blocks(float * x, int64_t n, int nrot);

#ifdef __cplusplus
}
#endif
