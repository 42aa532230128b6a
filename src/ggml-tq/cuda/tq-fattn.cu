// llama-tq: host side of the flash-attention decode kernel over ktq / vtq caches (see tq-fattn.cuh):
// which nodes it takes, the KV split, the combine kernel.

#include "tq-cuda-bits.cuh"
#include "tq-fattn.cuh"
#include "fwht.cuh"

#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <cstring>

#define TQ_FA_MAX_COLS 8  // query columns (tokens x GQA heads) per block, at most (4 for head size 256: registers)
#define TQ_FA_MAX_TOK  8  // more tokens than this: upstream's tensor-core path (K/V converted to f16)

typedef void (*tq_fattn_launch_t)(const tq_fattn_params &, cudaStream_t);

// query columns per block, at most
static constexpr int tq_fattn_max_cols(const int D) {
    return D == 256 ? 4 : TQ_FA_MAX_COLS;
}

// query columns per block of the instance that serves n_col columns (2, 4 or 8)
static int tq_fattn_nc(const int n_col) {
    return n_col <= 2 ? 2 : n_col <= 4 ? 4 : TQ_FA_MAX_COLS;
}

template <int D, ggml_type type_K, ggml_type type_V>
static tq_fattn_launch_t tq_fattn_pick_nc(const int n_col) {
    switch (tq_fattn_nc(n_col)) {
        case 2:  return tq_fattn_launch<D, type_K, type_V, 2>;
        case 4:  return tq_fattn_launch<D, type_K, type_V, 4>;
        default: return tq_fattn_launch<D, type_K, type_V, tq_fattn_max_cols(D)>;  // D = 256: never picked
    }
}

template <ggml_type type_K, ggml_type type_V>
static tq_fattn_launch_t tq_fattn_pick_d(const int D, const int n_col) {
    switch (D) {
        case 64:  return tq_fattn_pick_nc<64, type_K, type_V>(n_col);
        case 128: return tq_fattn_pick_nc<128, type_K, type_V>(n_col);
        case 256: return tq_fattn_pick_nc<256, type_K, type_V>(n_col);
        default:  return nullptr;
    }
}

// nullptr: this (D, K, V) is not compiled
static tq_fattn_launch_t tq_fattn_pick(const int D, const ggml_type type_K, const ggml_type type_V, const int n_col) {
#define X(K, V)                                                          \
    if (type_K == GGML_TYPE_##K && type_V == GGML_TYPE_##V) {            \
        return tq_fattn_pick_d<GGML_TYPE_##K, GGML_TYPE_##V>(D, n_col);  \
    }
    TQ_FA_PAIRS(X)
#undef X
    return nullptr;
}

static int tq_fattn_n_col(const ggml_tensor * dst) {
    const ggml_tensor * Q = dst->src[0];
    const ggml_tensor * K = dst->src[1];
    return (int) (Q->ne[1] * (Q->ne[2] / K->ne[2]));
}

bool tq_cuda_fattn_applies(const ggml_tensor * dst) {
    const ggml_tensor * Q    = dst->src[0];
    const ggml_tensor * K    = dst->src[1];
    const ggml_tensor * V    = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    if (!TQ_GGML_IS_K(K->type) || !TQ_GGML_IS_TQ(V->type) || TQ_GGML_IS_K(V->type)) {
        return false;
    }
    const int64_t D = Q->ne[0];
    if (K->ne[0] != D || V->ne[0] != D || Q->type != GGML_TYPE_F32 || dst->type != GGML_TYPE_F32 ||
        Q->nb[0] != sizeof(float) || Q->ne[1] > TQ_FA_MAX_TOK || Q->ne[2] % K->ne[2] != 0 ||
        K->ne[2] != V->ne[2] || K->ne[3] != Q->ne[3] || V->ne[3] != Q->ne[3] || K->ne[1] != V->ne[1] ||
        K->ne[1] > INT32_MAX / 2 || Q->ne[3] > 65535 || K->nb[1] > INT32_MAX / 512 || V->nb[1] > INT32_MAX / 512) {
        return false;
    }
    // a head's blocks are contiguous, and the kernel reads them as 16-bit words (shape-only checks: the answer
    // must not change between graph allocation and compute, get_alloc_size depends on it)
    for (const ggml_tensor * t : {K, V}) {
        if (t->nb[0] != ggml_type_size(t->type) || (t->nb[1] | t->nb[2] | t->nb[3] | t->view_offs) % 2 != 0) {
            return false;
        }
    }
    if (mask && (mask->type != GGML_TYPE_F16 || mask->ne[2] != 1 || mask->ne[1] < Q->ne[1] ||
                 mask->ne[0] < K->ne[1])) {
        return false;
    }
    // a query column group must fit one block: GQA groups wider than the block are split over blocks
    return tq_fattn_pick((int) D, K->type, V->type, std::min(tq_fattn_n_col(dst), tq_fattn_max_cols((int) D))) != nullptr;
}

// the decode kernel's form for this node: 0 the vector form, 1 the tensor-core form (tq_k_fattn_mma), 2 the
// tensor-core form that stages each chunk's rows in shared memory first. The tensor-core form only for a V type
// without outlier slots, with sm_80 or later in the build and on the device. LLAMA_TQ_CUDA_FA_MMA=1 takes it
// wherever it can run, =0 never; by default it is taken where it measured faster than the vector form on the H200
// (docs/results.md): head sizes 64 and 128 with 4 or more query columns (depth 131072: hd64, GQA 4, tg 387.1 vs
// 359.6 t/s; hd128, GQA 4, tg 355.5 vs 299.6 t/s); at head size 128 with 2 columns (GQA 2) it was slower (tg 268.6
// vs 288.5 t/s): 6 of its 8 mma columns idle there. Head size 256 is unmeasured: the vector form.
// LLAMA_TQ_CUDA_FA_STAGE=1 picks the staging variant where the tensor-core form runs (for comparison: on the H200
// within the direct form's spread, tg 387.5 vs 386.5 t/s at 131072); LLAMA_TQ_CUDA_FA_VPAIR=0 its direct form with
// vtq2 decoded one value per lookup instead of from the pair table (for comparison).
static int tq_fattn_use_mma(const ggml_type type_V, const int device, const int D, const int NC) {
    if (TQ_GGML_TO_TQ(type_V) >= TQ_TYPE_VTQ2_3 || !ampere_mma_available(ggml_cuda_info().devices[device].cc)) {
        return 0;
    }
    static const char * env   = getenv("LLAMA_TQ_CUDA_FA_MMA");
    static const char * stage = getenv("LLAMA_TQ_CUDA_FA_STAGE");
    static const char * vpair = getenv("LLAMA_TQ_CUDA_FA_VPAIR");
    const int           form  = stage && strcmp(stage, "1") == 0 ? 2 : vpair && strcmp(vpair, "0") == 0 ? 3 : 1;
    if (env && strcmp(env, "0") == 0) {
        return 0;
    }
    if (env && strcmp(env, "1") == 0) {
        return form;
    }
    return D <= 128 && NC >= 4 ? form : 0;
}

#define TQ_FA_COMBINE_THREADS 256

// merges the n_split partial results of each output row: one block per row. The weights exp(m_s - m) of the
// splits are computed in parallel (one split per thread) into shared memory; then thread (g, e) sums the
// splits g, g + G, ... of the four elements 4 e .. 4 e + 3 with independent 16-byte loads (G = 4 * threads / D
// groups: 16 at head size 64, so a row of 256 splits is 16 loads per thread), and the G partial sums meet in
// shared memory.
static __global__ void __launch_bounds__(TQ_FA_COMBINE_THREADS)
tq_k_fattn_combine(const float * GGML_CUDA_RESTRICT part, const float2 * GGML_CUDA_RESTRICT part_ml,
                   const float * GGML_CUDA_RESTRICT sinks, float * GGML_CUDA_RESTRICT dst, const int D,
                   const int n_rows, const int n_split, const int n_head) {
    extern __shared__ __align__(16) float s_mem[];  // n_split weights (padded to 4), 4 * THREADS partial sums
    __shared__ float s_red[TQ_FA_COMBINE_THREADS / WARP_SIZE];
    __shared__ float s_m;
    ggml_cuda_pdl_lc();  // programmatic dependent launch (tq_fattn_cuda): every global read after the sync
    ggml_cuda_pdl_sync();
    __shared__ float s_l;
    float * s_w   = s_mem;
    float * s_acc = s_mem + (n_split + 3) / 4 * 4;  // 16-byte aligned

    const int64_t o    = blockIdx.x;
    const int     tid  = threadIdx.x;
    const int     lane = tid % WARP_SIZE;
    const int     warp = tid / WARP_SIZE;
    constexpr int NW   = TQ_FA_COMBINE_THREADS / WARP_SIZE;

    float m = -FLT_MAX / 2.0f;
    for (int s = tid; s < n_split; s += TQ_FA_COMBINE_THREADS) {
        m = fmaxf(m, part_ml[(int64_t) s * n_rows + o].x);
    }
    m = warp_reduce_max(m);
    if (lane == 0) {
        s_red[warp] = m;
    }
    __syncthreads();
    if (tid == 0) {
        float mm = s_red[0];
        for (int w = 1; w < NW; ++w) {
            mm = fmaxf(mm, s_red[w]);
        }
        if (sinks) {
            mm = fmaxf(mm, sinks[o % n_head]);
        }
        s_m = mm;
    }
    __syncthreads();
    m = s_m;

    float l = 0.0f;
    for (int s = tid; s < n_split; s += TQ_FA_COMBINE_THREADS) {
        const float2 ml = part_ml[(int64_t) s * n_rows + o];
        const float  f  = expf(ml.x - m);
        s_w[s] = f;
        l += f * ml.y;
    }
    l = warp_reduce_sum(l);
    __syncthreads();  // s_red is reused, s_w is complete
    if (lane == 0) {
        s_red[warp] = l;
    }
    __syncthreads();
    if (tid == 0) {
        float ll = sinks ? expf(sinks[o % n_head] - m) : 0.0f;
        for (int w = 0; w < NW; ++w) {
            ll += s_red[w];
        }
        s_l = ll;
    }

    const int DQ = D / 4;                       // 16-byte pieces of a row
    const int G  = TQ_FA_COMBINE_THREADS / DQ;  // D / 4 divides the block (D = 64, 128 or 256)
    const int g  = tid / DQ;
    const int e  = tid % DQ;
    float4    acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
    for (int s = g; s < n_split; s += G) {
        const float  w = s_w[s];
        const float4 v = ((const float4 *) (part + ((int64_t) s * n_rows + o) * D))[e];
        acc.x += w * v.x;
        acc.y += w * v.y;
        acc.z += w * v.z;
        acc.w += w * v.w;
    }
    *(float4 *) (s_acc + 4 * tid) = acc;  // element 4 e + c of group g at g D + 4 e + c
    __syncthreads();
    if (tid < D) {
        float sum = s_acc[tid];
        for (int gg = 1; gg < G; ++gg) {
            sum += s_acc[gg * D + tid];
        }
        dst[o * D + tid] = s_l > 0.0f ? sum / s_l : 0.0f;
    }
}

void tq_cuda_fattn(ggml_backend_cuda_context & ctx, ggml_tensor * dst, ggml_tensor * rot_dst) {
    const ggml_tensor * Q     = dst->src[0];
    const ggml_tensor * K     = dst->src[1];
    const ggml_tensor * V     = dst->src[2];
    const ggml_tensor * mask  = dst->src[3];
    const ggml_tensor * sinks = dst->src[4];
    GGML_ASSERT(tq_cuda_fattn_applies(dst));
    GGML_ASSERT(!sinks || sinks->type == GGML_TYPE_F32);

    tq_fattn_params p = {};
    p.Q     = (const char *) Q->data;
    p.K     = (const char *) K->data;
    p.V     = (const char *) V->data;
    p.mask  = mask ? (const char *) mask->data : nullptr;
    p.sinks = sinks ? (const float *) sinks->data : nullptr;
    p.dst   = (float *) (rot_dst ? rot_dst->data : dst->data);
    p.rot   = rot_dst != nullptr;

    memcpy(&p.scale, (const float *) dst->op_params + 0, sizeof(float));
    memcpy(&p.max_bias, (const float *) dst->op_params + 1, sizeof(float));
    memcpy(&p.logit_softcap, (const float *) dst->op_params + 2, sizeof(float));
    if (p.logit_softcap != 0.0f) {
        p.scale /= p.logit_softcap;
    }
    const uint32_t n_head = (uint32_t) Q->ne[2];
    p.n_head_log2 = 1u << (uint32_t) floorf(log2f((float) n_head));
    p.m0          = powf(2.0f, -(p.max_bias) / p.n_head_log2);
    p.m1          = powf(2.0f, -(p.max_bias / 2.0f) / p.n_head_log2);

    const int D   = (int) Q->ne[0];
    p.n_tok       = (int) Q->ne[1];
    p.n_head      = (int) Q->ne[2];
    p.n_seq       = (int) Q->ne[3];
    p.n_rows      = p.n_seq * p.n_tok * p.n_head;
    p.n_kv_head   = (int) K->ne[2];
    p.gqa         = p.n_head / p.n_kv_head;
    p.n_col       = tq_fattn_n_col(dst);
    const int nc  = std::min(p.n_col, tq_fattn_max_cols(D));
    const int NC  = tq_fattn_nc(nc);
    p.n_col_grp   = (p.n_col + NC - 1) / NC;
    p.n_kv        = (int) K->ne[1];
    p.ne33        = mask ? (int) mask->ne[3] : 1;
    p.nb01 = Q->nb[1];  p.nb02 = Q->nb[2];  p.nb03 = Q->nb[3];
    p.nb11 = K->nb[1];  p.nb12 = K->nb[2];  p.nb13 = K->nb[3];
    p.nb21 = V->nb[1];  p.nb22 = V->nb[2];  p.nb23 = V->nb[3];
    p.nb31 = mask ? mask->nb[1] : 0;
    p.nb33 = mask ? mask->nb[3] : 0;

    p.mma = tq_fattn_use_mma(V->type, ctx.device, D, NC);

    // the KV split for the kernel's launch bounds (blocks per SM); then, opt-in (LLAMA_TQ_CUDA_FA_XH=1), the
    // tensor-core form's cross-head variant wherever it fits. On the H200 (hd64, 8 KV heads, depth 131072) its kernel
    // is 2.4 % faster (49.66 vs 50.88 us), but its four times as many splits make the combine 1.9 us slower (6.15 vs
    // 4.23 us): tg 409.7 vs 424.4 t/s (docs/results.md)
    const int nsm = ggml_cuda_info().devices[ctx.device].nsm;
    tq_fattn_set_split(p, nsm, p.mma ? TQ_FA_MMA_BLOCKS_PER_SM : TQ_FA_VEC_BLOCKS_PER_SM);
    static const char * xh_env = getenv("LLAMA_TQ_CUDA_FA_XH");
    if (xh_env && strcmp(xh_env, "1") == 0 &&
        tq_fattn_xh_fits(p, D, (int64_t) ggml_row_size(K->type, D), (int64_t) ggml_row_size(V->type, D))) {
        p.mma = 4;
        tq_fattn_set_split(p, nsm, TQ_FA_MMA_BLOCKS_PER_SM);
    }

    cudaStream_t stream = ctx.stream();
    ggml_cuda_pool_alloc<float>  part(ctx.pool());
    ggml_cuda_pool_alloc<float2> part_ml(ctx.pool());
    if (p.n_split > 1) {
        part.alloc((size_t) p.n_split * p.n_rows * D);
        part_ml.alloc((size_t) p.n_split * p.n_rows);
        p.part    = part.ptr;
        p.part_ml = part_ml.ptr;
    }

    const tq_fattn_launch_t launch = tq_fattn_pick(D, K->type, V->type, nc);
    GGML_ASSERT(launch != nullptr);
    launch(p, stream);

    if (p.n_split > 1) {
        const size_t smem = (size_t) ((p.n_split + 3) / 4 * 4 + 4 * TQ_FA_COMBINE_THREADS) * sizeof(float);
        const ggml_cuda_kernel_launch_params lp(dim3(p.n_rows), dim3(TQ_FA_COMBINE_THREADS), smem, stream);
        tq_cuda_launch(tq_k_fattn_combine, lp, (const float *) p.part, (const float2 *) p.part_ml, p.sinks, p.dst, D,
                       p.n_rows, p.n_split, p.n_head);
    }
}

int tq_cuda_try_fuse_fattn_rot(ggml_backend_cuda_context & ctx, const ggml_cgraph * cgraph, const int i) {
    static const char * env = getenv("LLAMA_TQ_CUDA_FUSE_ROT");
    static const bool   on  = env != nullptr && atoi(env) != 0;
    ggml_tensor *       fa  = cgraph->nodes[i];
    if (!on || fa->op != GGML_OP_FLASH_ATTN_EXT || !ggml_is_contiguous(fa) || !tq_cuda_fattn_applies(fa) ||
        !ctx.stream_context().concurrent_events.empty()) {
        return 0;
    }
    // FA, RESHAPE..., MUL_MAT(rot, last reshape): each node before the MUL_MAT used once (by the next one) and
    // not a graph output, so nothing else reads the unrotated result that is never written
    const ggml_tensor * prev = fa;
    for (int j = i + 1; j < cgraph->n_nodes && j <= i + 4; ++j) {
        if (ggml_node_get_use_count(cgraph, j - 1) != 1 || (prev->flags & GGML_TENSOR_FLAG_OUTPUT)) {
            return 0;
        }
        ggml_tensor * node = cgraph->nodes[j];
        if (node->op == GGML_OP_RESHAPE && node->src[0] == prev) {
            prev = node;
            continue;
        }
        // ggml-cuda runs this MUL_MAT as its fast Walsh-Hadamard transform (the hint says src0 is the Hadamard
        // matrix): the same transform of size D on each row
        if (node->op != GGML_OP_MUL_MAT || node->src[1] != prev || (node->flags & GGML_TENSOR_FLAG_COMPUTE) == 0 ||
            !ggml_cuda_op_mul_mat_use_fwht(node) || node->src[0]->ne[0] != fa->ne[0] ||
            ggml_nelements(node) != ggml_nelements(fa)) {
            return 0;
        }
        tq_cuda_fattn(ctx, fa, node);
        static bool said = false;  // opt-in: say once that it took effect
        if (!said) {
            said = true;
            GGML_LOG_INFO("llama-tq: the attention output's Hadamard rotation runs inside the decode kernel "
                          "(LLAMA_TQ_CUDA_FUSE_ROT)\n");
        }
        return j - i;
    }
    return 0;
}
