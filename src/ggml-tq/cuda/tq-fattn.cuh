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
                  // variant, 3: vtq2 without its pair table (one lookup per value, for comparison)
    int     rot;  // 1: the output goes through the Hadamard transform of size D (upstream's attn_rot of the
                  // attention output, fused: tq_cuda_try_fuse_fattn_rot); dst is then the rotation's output
    int64_t nb01, nb02, nb03;
    int64_t nb11, nb12, nb13;
    int64_t nb21, nb22, nb23;
    int64_t nb31, nb33;
};

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
