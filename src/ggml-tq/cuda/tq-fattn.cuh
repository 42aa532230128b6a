// llama-tq: flash-attention decode kernel that reads the ktq / vtq cache directly (no f16 copy).
//
// ggml-cuda's fattn.cu asks tq_cuda_fattn_applies() first; when it says yes, tq_cuda_fattn() runs the op:
//   - one thread block per (KV head, group of up to NC query columns, KV split): a query column is one
//     (token, query head) pair of that KV head's GQA group, so every K/V element is read once per group;
//   - K: Q·K from the codes, d * sum_j q_j * level[code_j] (Q is already in the rotated domain: upstream's
//     attn_rot rotates Q and K in the graph, the type never rotates again);
//   - V: each value decoded in registers from its code / trellis window (O(1) random access);
//   - each warp streams chunks of 32 rows with its own online softmax (no block barrier in the loop); the KV
//     rows are split over blocks when the GPU would idle, then a combine kernel;
//   - two forms of the kernel (tq-fattn-impl.cuh): tq_k_fattn_vec (float32 FMAs, every type) and
//     tq_k_fattn_mma (Q·K and P·V on the tensor cores with f16 inputs; V types without outlier slots, sm_80+),
//     chosen per node by tq_fattn_use_mma (tq-fattn.cu; LLAMA_TQ_CUDA_FA_MMA).
// Type pairs are compiled for the pairs in TQ_FA_PAIRS (CMake option LLAMA_TQ_CUDA_FA_PAIRS); others take
// upstream's path (K and V converted to f16).
#pragma once

#include "common.cuh"

#include <algorithm>
#include <cstdint>

// the compiled K/V pairs: X(K suffix, V suffix); the build writes tq-fattn-pairs.h (tq-cuda.cmake)
#if __has_include("tq-fattn-pairs.h")
#include "tq-fattn-pairs.h"
#else
#define TQ_FA_PAIRS(X) \
    X(KTQ2, VTQ2_2) X(KTQ3, VTQ3_2) X(KTQ4, VTQ4_2) X(KTQ4, VTQ3_2) X(KTQ4, VTQ2_2) X(KTQ3, VTQ2_2)
#endif

#define TQ_FA_NTHREADS 128  // 4 warps

// blocks per SM of the kernels' launch bounds (the vector form's 168 registers allow 3)
#define TQ_FA_VEC_BLOCKS_PER_SM 3
#define TQ_FA_MMA_BLOCKS_PER_SM 4

// KV rows a block takes per step (each of its 4 warps a chunk of 32); a KV split is whole steps
#define TQ_FA_STEP TQ_FA_NTHREADS

// the tensor-core form's cross-head variant (p.mma == 4, opt-in: LLAMA_TQ_CUDA_FA_XH=1): a block serves
// TQ_FA_XH_HEADS consecutive KV heads, one per warp, and copies each chunk of 32 rows of all of them (contiguous in
// the cache) into shared memory with 16-byte cp.async copies while the warps compute the chunk before (dense loads
// that bypass L1, where the direct form reads 2-byte pieces of rows 144 bytes apart); a KV split is whole chunks,
// at least two
#define TQ_FA_XH_HEADS 4
#define TQ_FA_XH_STEP  32

struct tq_fattn_params {
    const char *  Q;
    const char *  K;
    const char *  V;
    const char *  mask;   // f16 [n_kv, >= n_tok, 1, ne33] or nullptr
    const float * sinks;  // [n_head] or nullptr
    float *       dst;    // [n_seq][n_tok][n_head][D], written when n_split == 1
    float *       part;   // [n_split][n_seq * n_tok * n_head][D], unnormalized, when n_split > 1
    float2 *      part_ml;  // [n_split][n_seq * n_tok * n_head]: (running max, sum of exp)

    float    scale;  // already divided by logit_softcap when that is set (as upstream does)
    float    logit_softcap;
    float    max_bias;
    float    m0;
    float    m1;
    uint32_t n_head_log2;

    int     n_tok;      // Q->ne[1]
    int     n_seq;      // Q->ne[3]
    int     n_rows;     // n_seq * n_tok * n_head: output rows
    int     n_head;     // Q->ne[2]
    int     gqa;        // n_head / n_kv_head
    int     n_col;      // n_tok * gqa: query columns per KV head
    int     n_col_grp;  // ceil(n_col / NC)
    int     n_kv;       // K->ne[1]
    int     n_kv_head;  // K->ne[2]
    int     kv_per_split;
    int     n_split;
    int     ne33;
    int     mma;  // 1: the tensor-core form tq_k_fattn_mma (a V type without outlier slots, sm_80+), 2: its staging
                  // variant, 3: vtq2 without its pair table (one lookup per value, for comparison), 4: its
                  // cross-head variant (TQ_FA_XH_HEADS; where tq_fattn_xh_fits)
    int     rot;  // 1: the output goes through the Hadamard transform of size D (upstream's attn_rot of the
                  // attention output, fused: tq_cuda_try_fuse_fattn_rot); dst is then the rotation's output
    int64_t nb01, nb02, nb03;
    int64_t nb11, nb12, nb13;
    int64_t nb21, nb22, nb23;
    int64_t nb31, nb33;
};

// the cross-head variant can serve these parameters (the tensor-core form chosen, no fused rotation, head size up to
// 128): whole groups of TQ_FA_XH_HEADS KV heads, the heads of a row contiguous (rbk, rbv: bytes of a head's K, V
// row), 16-byte aligned data and row and sequence strides (its copies are 16-byte aligned pieces that cover a group's
// rows, at most 14 bytes more on each side, inside the row of all heads)
static inline bool tq_fattn_xh_fits(const tq_fattn_params & p, const int D, const int64_t rbk, const int64_t rbv) {
    return p.mma == 1 && !p.rot && D <= 128 && p.n_kv_head % TQ_FA_XH_HEADS == 0 && p.nb12 == rbk &&
           p.nb22 == rbv && (((uintptr_t) p.K | (uintptr_t) p.V) % 16 == 0) &&
           ((p.nb11 | p.nb13 | p.nb21 | p.nb23) % 16 == 0);
}

// the KV split (p.kv_per_split, p.n_split): over blocks until the GPU holds about one wave of per_sm blocks on each
// of nsm multiprocessors, a split being whole steps of a block (4 warps x 32 rows; the cross-head variant: 32
// rows of its 4 heads) and at least two of them: a short cache (decode at depth 0) is one split, with no combine
static inline void tq_fattn_set_split(tq_fattn_params & p, const int nsm, const int per_sm) {
    const bool xh        = p.mma == 4;
    const int step       = xh ? TQ_FA_XH_STEP : TQ_FA_STEP;
    const int base       = (xh ? p.n_kv_head / TQ_FA_XH_HEADS : p.n_kv_head) * p.n_col_grp * p.n_seq;
    const int want_split = std::max(1, (per_sm * nsm + base - 1) / base);
    const int n_steps    = (p.n_kv + step - 1) / step;
    p.kv_per_split       = std::max(2, (n_steps + want_split - 1) / want_split) * step;
    p.n_split            = std::max(1, (p.n_kv + p.kv_per_split - 1) / p.kv_per_split);
}

// launches the kernel of one (D, K type, V type, NC) instance; defined in tq-fattn-d*.cu
template <int D, ggml_type type_K, ggml_type type_V, int NC>
void tq_fattn_launch(const tq_fattn_params & p, cudaStream_t stream);

// true if tq_cuda_fattn runs this FLASH_ATTN_EXT node (a K/V pair of ours that is compiled, decode-sized)
bool tq_cuda_fattn_applies(const ggml_tensor * dst);

void tq_cuda_fattn(ggml_backend_cuda_context & ctx, ggml_tensor * dst, ggml_tensor * rot_dst = nullptr);

// LLAMA_TQ_CUDA_FUSE_ROT=1: when node i is a FLASH_ATTN_EXT that tq_cuda_fattn runs and the next nodes are
// reshapes of its output into the MUL_MAT of upstream's output rotation (llama_mul_mat_hadamard: a Hadamard
// matrix of size D, run by ggml-cuda's fwht), runs both as one launch (the decode kernel writes the rotated
// output) and returns the number of nodes after i it covered; else 0. Opt-in: on the H200 no faster at depth 0
// and 6 % slower at 131072, where every KV split rotates its partial rows (docs/results.md)
struct ggml_cgraph;
int tq_cuda_try_fuse_fattn_rot(ggml_backend_cuda_context & ctx, const ggml_cgraph * cgraph, int i);
