// llama-tq: CUDA converters, GET_ROWS, SET_ROWS and CPY of the ktq / vtq KV-cache types.
// See tq-cuda.cuh for where ggml-cuda calls in, docs/formats.md for the formats. Built with -fmad=false
// (ggml/src/ggml-cuda/CMakeLists.txt hook): the encoders mirror the CPU reference's float/double
// operations, and a fused multiply-add would round differently.

#include "tq-cuda-bits.cuh"
#include "tq-cuda-loc.cuh"
#include "tq-cuda.cuh"
#include "tq-dequant-impl.cuh"
#include "tq-encode-impl.cuh"
#include "tq-fattn.cuh"
#include "tq-kprof-cuda.cuh"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <type_traits>
#include <vector>

#define TQ_CUDA_BLOCK_SIZE 256

// element i of a row-major walk over extents [ne0, ne1, ne2, *]: its coordinates (x fastest)
struct tq_cuda_i4 {
    int64_t x, y, z, w;
};

static __device__ __forceinline__ tq_cuda_i4 tq_cuda_unravel(const int64_t i, const int64_t ne0, const int64_t ne1,
                                                             const int64_t ne2) {
    const int64_t r0 = i / ne0;
    const int64_t r1 = r0 / ne1;
    return { i % ne0, r0 % ne1, r1 % ne2, r1 / ne2 };
}

// ---- dequantize: contiguous, non-contiguous, get_rows -----------------------------------------------

template <ggml_type type, typename dst_t>
static __global__ void tq_k_dequant_cont(const uint8_t * __restrict__ x, dst_t * __restrict__ y, const int64_t k,
                                         const tq_cuda_tab<type> tab) {
    using F = tq_cuda_fmt<type>;
    __shared__ float s_tab[F::ntab];
    tq_cuda_load_tab<type>(s_tab, tab);
    __syncthreads();
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < k; i += (int64_t) gridDim.x * blockDim.x) {
        y[i] = ggml_cuda_cast<dst_t>(tq_cuda_dequant1<type>(x + (i / QK_TQ) * F::bs, (int) (i % QK_TQ), s_tab));
    }
}

// s01, s02, s03: strides in blocks; y is contiguous [ne03][ne02][ne01][ne00]
template <ggml_type type, typename dst_t>
static __global__ void tq_k_dequant_nc(const uint8_t * __restrict__ x, dst_t * __restrict__ y, const int64_t ne00,
                                       const int64_t ne01, const int64_t ne02, const int64_t n, const int64_t s01,
                                       const int64_t s02, const int64_t s03, const tq_cuda_tab<type> tab) {
    using F = tq_cuda_fmt<type>;
    __shared__ float s_tab[F::ntab];
    tq_cuda_load_tab<type>(s_tab, tab);
    __syncthreads();
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const tq_cuda_i4 c  = tq_cuda_unravel(i, ne00, ne01, ne02);
        const int64_t    ib = c.w * s03 + c.z * s02 + c.y * s01 + c.x / QK_TQ;
        y[i] = ggml_cuda_cast<dst_t>(tq_cuda_dequant1<type>(x + ib * F::bs, (int) (c.x % QK_TQ), s_tab));
    }
}

static int tq_cuda_grid(const int64_t n) {
    return (int) std::max<int64_t>(1, std::min<int64_t>((n + TQ_CUDA_BLOCK_SIZE - 1) / TQ_CUDA_BLOCK_SIZE, 8192));
}

// the eight-values-per-thread converter, unless LLAMA_TQ_CUDA_DEQUANT8=0 (for comparison)
static bool tq_cuda_dequant8_on() {
    static const char * env = getenv("LLAMA_TQ_CUDA_DEQUANT8");
    return !(env && strcmp(env, "0") == 0);
}

template <ggml_type type, typename dst_t>
static void tq_dequant_cont_cuda(const void * x, dst_t * y, const int64_t k, cudaStream_t stream) {
    if (k <= 0) {
        return;
    }
    // f16 / f32 into a 16-byte aligned destination (the pool buffers of the FA conversion): eight values per thread
    // (k is whole blocks: a row of a llama-tq type is); else (bf16, an unaligned view) one value per thread
    if constexpr (std::is_same<dst_t, half>::value || std::is_same<dst_t, float>::value) {
        if ((uintptr_t) y % 16 == 0 && tq_cuda_dequant8_on()) {
            const int64_t n8 = k / 8;
            tq_k_dequant8<type, dst_t><<<tq_cuda_grid(n8), TQ_DQ_THREADS, 0, stream>>>(
                (const uint8_t *) x, y, n8, tq_cuda_host_tab<type>());
            return;
        }
    }
    tq_k_dequant_cont<type, dst_t><<<tq_cuda_grid(k), TQ_CUDA_BLOCK_SIZE, 0, stream>>>(
        (const uint8_t *) x, y, k, tq_cuda_host_tab<type>());
}

template <ggml_type type, typename dst_t>
static void tq_dequant_nc_cuda(const void * x, dst_t * y, const int64_t ne00, const int64_t ne01, const int64_t ne02,
                               const int64_t ne03, const int64_t s01, const int64_t s02, const int64_t s03,
                               cudaStream_t stream) {
    const int64_t n = ne00 * ne01 * ne02 * ne03;
    if (n <= 0) {
        return;
    }
    GGML_ASSERT(ne00 % QK_TQ == 0);
    tq_k_dequant_nc<type, dst_t><<<tq_cuda_grid(n), TQ_CUDA_BLOCK_SIZE, 0, stream>>>(
        (const uint8_t *) x, y, ne00, ne01, ne02, n, s01, s02, s03, tq_cuda_host_tab<type>());
}

// ---- ktqp2 / ktqp3: the profile table on the device, converters ----------------------------------------------

// The device copy of ktqp<width>'s table (tq_kprof_active) on the current device, refreshed when the host's table
// changed (tq_kprof_active_generation). One buffer per device and width, sized for TQ_KPROF_MAX_PROFILES and kept
// for the process's life, so its pointers stay valid in captured CUDA graphs. A refresh happens at a context's
// first, uncaptured evaluation (ggml-cuda evaluates a graph directly before it captures one); a table that
// changed while a stream is being captured aborts with a message rather than using stale blocks.
static tq_cuda_kprof tq_cuda_kprof_table(const int width, cudaStream_t stream) {
    struct entry {
        uint32_t      generation = 0;  // of the table copied; 0: none yet (tq_kprof_active_generation starts at 1)
        char *        d = nullptr;
        tq_cuda_kprof T = {};
    };
    static std::mutex                             mutex;
    static std::map<std::pair<int, int>, entry>   tables;
    std::lock_guard<std::mutex>                   lock(mutex);
    entry &                                       e   = tables[{ ggml_cuda_get_device(), width }];
    const uint32_t                                gen = tq_kprof_active_generation(width);
    if (e.generation == gen) {
        return e.T;
    }
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
    if (status != cudaStreamCaptureStatusNone) {
        GGML_ABORT("ktqp%d: the profile table changed while a CUDA graph is being captured", width);
    }
    const tq_kprof_table * t = tq_kprof_active(width);
    std::vector<char>      h(tq_cuda_kprof_layout::bytes, 0);
    tq_cuda_kprof_flatten(t, h.data());
    if (e.d == nullptr) {
        CUDA_CHECK(cudaMalloc((void **) &e.d, h.size()));
    }
    CUDA_CHECK(cudaMemcpyAsync(e.d, h.data(), h.size(), cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));  // h is freed on return; every stream then sees the table
    e.T          = tq_cuda_kprof_view(e.d, t);
    e.generation = gen;
    return e.T;
}

// s01, s02, s03: strides in blocks; y is contiguous [ne03][ne02][ne01][ne00]
template <typename dst_t>
static __global__ void tq_k_kprof_dequant_nc(const uint8_t * __restrict__ x, dst_t * __restrict__ y,
                                             const int64_t ne00, const int64_t ne01, const int64_t ne02,
                                             const int64_t n, const int64_t s01, const int64_t s02, const int64_t s03,
                                             const tq_cuda_kprof T) {
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const tq_cuda_i4 c  = tq_cuda_unravel(i, ne00, ne01, ne02);
        const int64_t    ib = c.w * s03 + c.z * s02 + c.y * s01 + c.x / QK_TQ;
        y[i] = ggml_cuda_cast<dst_t>(tq_kprof_dequant1(x + ib * T.block_bytes, (int) (c.x % QK_TQ), T));
    }
}

template <int width, typename dst_t>
static void tq_kprof_dequant_nc_cuda(const void * x, dst_t * y, const int64_t ne00, const int64_t ne01,
                                     const int64_t ne02, const int64_t ne03, const int64_t s01, const int64_t s02,
                                     const int64_t s03, cudaStream_t stream) {
    const int64_t n = ne00 * ne01 * ne02 * ne03;
    if (n <= 0) {
        return;
    }
    GGML_ASSERT(ne00 % QK_TQ == 0);
    tq_k_kprof_dequant_nc<dst_t><<<tq_cuda_grid(n), TQ_CUDA_BLOCK_SIZE, 0, stream>>>(
        (const uint8_t *) x, y, ne00, ne01, ne02, n, s01, s02, s03, tq_cuda_kprof_table(width, stream));
}

// contiguous: one row of k values
template <int width, typename dst_t>
static void tq_kprof_dequant_cont_cuda(const void * x, dst_t * y, const int64_t k, cudaStream_t stream) {
    tq_kprof_dequant_nc_cuda<width, dst_t>(x, y, k, 1, 1, 1, k / QK_TQ, k / QK_TQ, k / QK_TQ, stream);
}

// dst[i10, i11, i12] = src0[src1[i10, i11, i12], i11, i12] (byte strides; src1 is I32)
template <typename dst_t>
static __global__ void tq_k_kprof_get_rows(const char * __restrict__ src0, const char * __restrict__ src1,
                                           char * __restrict__ dst, const int64_t ne00, const int64_t ne10,
                                           const int64_t ne11, const int64_t n, const size_t nb01, const size_t nb02,
                                           const size_t nb03, const size_t nb10, const size_t nb11, const size_t nb12,
                                           const size_t nb1, const size_t nb2, const size_t nb3, const tq_cuda_kprof T) {
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const tq_cuda_i4 c   = tq_cuda_unravel(i, ne00, ne10, ne11);  // i00, i10, i11, i12
        const int64_t    row = *(const int32_t *) (src1 + c.y * nb10 + c.z * nb11 + c.w * nb12);
        const uint8_t *  blk = (const uint8_t *) (src0 + row * nb01 + c.z * nb02 + c.w * nb03) + (c.x / QK_TQ) * T.block_bytes;
        ((dst_t *) (dst + c.y * nb1 + c.z * nb2 + c.w * nb3))[c.x] =
            ggml_cuda_cast<dst_t>(tq_kprof_dequant1(blk, (int) (c.x % QK_TQ), T));
    }
}

// type -> F32, one thread per element (any strides on both sides)
static __global__ void tq_k_kprof_cpy_to_f32(const char * __restrict__ src0, char * __restrict__ dst, const int64_t n,
                                             const int64_t ne00, const int64_t ne01, const int64_t ne02,
                                             const size_t nb00, const size_t nb01, const size_t nb02, const size_t nb03,
                                             const int64_t ne10, const int64_t ne11, const int64_t ne12,
                                             const size_t nb10, const size_t nb11, const size_t nb12, const size_t nb13,
                                             const tq_cuda_kprof T) {
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const tq_cuda_i4 a   = tq_cuda_unravel(i, ne00, ne01, ne02);
        const tq_cuda_i4 b   = tq_cuda_unravel(i, ne10, ne11, ne12);
        const uint8_t *  blk = (const uint8_t *) (src0 + (a.x / QK_TQ) * nb00 + a.y * nb01 + a.z * nb02 + a.w * nb03);
        *(float *) (dst + b.x * nb10 + b.y * nb11 + b.z * nb12 + b.w * nb13) = tq_kprof_dequant1(blk, (int) (a.x % QK_TQ), T);
    }
}

template <class Loc>
static void tq_kprof_encode_cuda(const ggml_type type, const Loc & loc, const int64_t nblocks, cudaStream_t stream) {
    if (nblocks <= 0) {
        return;
    }
    GGML_ASSERT(nblocks <= INT32_MAX);
    tq_k_encode_kprof<Loc><<<(unsigned) nblocks, TQ_KPROF_THREADS, 0, stream>>>(
        loc, tq_cuda_kprof_table(TQ_GGML_KP_WIDTH(type), stream), (int) nblocks);
    CUDA_CHECK(cudaGetLastError());
}

#define TQ_CUDA_KP_CASES(fn, dst_t)                            \
    case GGML_TYPE_KTQP2:                                      \
        return fn<2, dst_t>;                                   \
    case GGML_TYPE_KTQP3:                                      \
        return fn<3, dst_t>;

#define TQ_CUDA_CASE_RET(T, t, fn, ...) \
    case GGML_TYPE_##T:                 \
        return fn<GGML_TYPE_##T, __VA_ARGS__>;

to_fp16_cuda_t tq_cuda_get_to_fp16(ggml_type type) {
#define X(T, t) TQ_CUDA_CASE_RET(T, t, tq_dequant_cont_cuda, half)
    switch (type) {
        TQ_GGML_FOR_EACH(X)
        TQ_CUDA_KP_CASES(tq_kprof_dequant_cont_cuda, half)
        default: return nullptr;
    }
#undef X
}

to_fp32_cuda_t tq_cuda_get_to_fp32(ggml_type type) {
#define X(T, t) TQ_CUDA_CASE_RET(T, t, tq_dequant_cont_cuda, float)
    switch (type) {
        TQ_GGML_FOR_EACH(X)
        TQ_CUDA_KP_CASES(tq_kprof_dequant_cont_cuda, float)
        default: return nullptr;
    }
#undef X
}

to_bf16_cuda_t tq_cuda_get_to_bf16(ggml_type type) {
#define X(T, t) TQ_CUDA_CASE_RET(T, t, tq_dequant_cont_cuda, nv_bfloat16)
    switch (type) {
        TQ_GGML_FOR_EACH(X)
        TQ_CUDA_KP_CASES(tq_kprof_dequant_cont_cuda, nv_bfloat16)
        default: return nullptr;
    }
#undef X
}

to_fp16_nc_cuda_t tq_cuda_get_to_fp16_nc(ggml_type type) {
#define X(T, t) TQ_CUDA_CASE_RET(T, t, tq_dequant_nc_cuda, half)
    switch (type) {
        TQ_GGML_FOR_EACH(X)
        TQ_CUDA_KP_CASES(tq_kprof_dequant_nc_cuda, half)
        default: return nullptr;
    }
#undef X
}

to_fp32_nc_cuda_t tq_cuda_get_to_fp32_nc(ggml_type type) {
#define X(T, t) TQ_CUDA_CASE_RET(T, t, tq_dequant_nc_cuda, float)
    switch (type) {
        TQ_GGML_FOR_EACH(X)
        TQ_CUDA_KP_CASES(tq_kprof_dequant_nc_cuda, float)
        default: return nullptr;
    }
#undef X
}

to_bf16_nc_cuda_t tq_cuda_get_to_bf16_nc(ggml_type type) {
#define X(T, t) TQ_CUDA_CASE_RET(T, t, tq_dequant_nc_cuda, nv_bfloat16)
    switch (type) {
        TQ_GGML_FOR_EACH(X)
        TQ_CUDA_KP_CASES(tq_kprof_dequant_nc_cuda, nv_bfloat16)
        default: return nullptr;
    }
#undef X
}

// dst[i10, i11, i12] = src0[src1[i10, i11, i12], i11, i12] (byte strides; src1 is I32)
template <ggml_type type, typename dst_t>
static __global__ void tq_k_get_rows(const char * __restrict__ src0, const char * __restrict__ src1,
                                     char * __restrict__ dst, const int64_t ne00, const int64_t ne10,
                                     const int64_t ne11, const int64_t n, const size_t nb01, const size_t nb02,
                                     const size_t nb03, const size_t nb10, const size_t nb11, const size_t nb12,
                                     const size_t nb1, const size_t nb2, const size_t nb3, const tq_cuda_tab<type> tab) {
    using F = tq_cuda_fmt<type>;
    __shared__ float s_tab[F::ntab];
    tq_cuda_load_tab<type>(s_tab, tab);
    __syncthreads();
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const tq_cuda_i4 c   = tq_cuda_unravel(i, ne00, ne10, ne11);  // i00, i10, i11, i12
        const int64_t    row = *(const int32_t *) (src1 + c.y * nb10 + c.z * nb11 + c.w * nb12);
        const uint8_t *  blk = (const uint8_t *) (src0 + row * nb01 + c.z * nb02 + c.w * nb03) + (c.x / QK_TQ) * F::bs;
        ((dst_t *) (dst + c.y * nb1 + c.z * nb2 + c.w * nb3))[c.x] =
            ggml_cuda_cast<dst_t>(tq_cuda_dequant1<type>(blk, (int) (c.x % QK_TQ), s_tab));
    }
}

template <ggml_type type, typename dst_t>
static void tq_get_rows_cuda(const void * src0_d, const int32_t * src1_d, void * dst_d, int64_t ne00, size_t nb01,
                             size_t nb02, size_t nb03, int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10,
                             size_t nb11, size_t nb12, size_t nb1, size_t nb2, size_t nb3, cudaStream_t stream) {
    const int64_t n = ne00 * ne10 * ne11 * ne12;
    if (n <= 0) {
        return;
    }
    tq_k_get_rows<type, dst_t><<<tq_cuda_grid(n), TQ_CUDA_BLOCK_SIZE, 0, stream>>>(
        (const char *) src0_d, (const char *) src1_d, (char *) dst_d, ne00, ne10, ne11, n, nb01, nb02, nb03, nb10,
        nb11, nb12, nb1, nb2, nb3, tq_cuda_host_tab<type>());
}

template <ggml_type type>
static void tq_get_rows_cuda_dst(const void * src0_d, const int32_t * src1_d, void * dst_d, ggml_type dst_type,
                                 int64_t ne00, size_t nb01, size_t nb02, size_t nb03, int64_t ne10, int64_t ne11,
                                 int64_t ne12, size_t nb10, size_t nb11, size_t nb12, size_t nb1, size_t nb2, size_t nb3,
                                 cudaStream_t stream) {
    switch (dst_type) {
        case GGML_TYPE_F32:
            tq_get_rows_cuda<type, float>(src0_d, src1_d, dst_d, ne00, nb01, nb02, nb03, ne10, ne11, ne12, nb10, nb11,
                                          nb12, nb1, nb2, nb3, stream);
            break;
        case GGML_TYPE_F16:
            tq_get_rows_cuda<type, half>(src0_d, src1_d, dst_d, ne00, nb01, nb02, nb03, ne10, ne11, ne12, nb10, nb11,
                                         nb12, nb1, nb2, nb3, stream);
            break;
        case GGML_TYPE_BF16:
            tq_get_rows_cuda<type, nv_bfloat16>(src0_d, src1_d, dst_d, ne00, nb01, nb02, nb03, ne10, ne11, ne12, nb10,
                                                nb11, nb12, nb1, nb2, nb3, stream);
            break;
        default:
            GGML_ABORT("%s: unsupported dst type %s", __func__, ggml_type_name(dst_type));
    }
}

void tq_cuda_get_rows(const void * src0_d, ggml_type src0_type, const int32_t * src1_d, void * dst_d, ggml_type dst_type,
                      int64_t ne00, size_t nb01, size_t nb02, size_t nb03,
                      int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10, size_t nb11, size_t nb12,
                      size_t nb1, size_t nb2, size_t nb3, cudaStream_t stream) {
    GGML_ASSERT(ne00 % QK_TQ == 0);
    if (TQ_GGML_IS_KP(src0_type)) {
        const int64_t n = ne00 * ne10 * ne11 * ne12;
        if (n <= 0) {
            return;
        }
        const tq_cuda_kprof T = tq_cuda_kprof_table(TQ_GGML_KP_WIDTH(src0_type), stream);
#define TQ_KP_GET_ROWS(dst_t)                                                                                    \
    tq_k_kprof_get_rows<dst_t><<<tq_cuda_grid(n), TQ_CUDA_BLOCK_SIZE, 0, stream>>>(                              \
        (const char *) src0_d, (const char *) src1_d, (char *) dst_d, ne00, ne10, ne11, n, nb01, nb02, nb03, nb10, \
        nb11, nb12, nb1, nb2, nb3, T)
        switch (dst_type) {
            case GGML_TYPE_F32:  TQ_KP_GET_ROWS(float); break;
            case GGML_TYPE_F16:  TQ_KP_GET_ROWS(half); break;
            case GGML_TYPE_BF16: TQ_KP_GET_ROWS(nv_bfloat16); break;
            default: GGML_ABORT("%s: unsupported dst type %s", __func__, ggml_type_name(dst_type));
        }
#undef TQ_KP_GET_ROWS
        CUDA_CHECK(cudaGetLastError());
        return;
    }
    switch (src0_type) {
#define X(T, t)                                                                                                  \
    case GGML_TYPE_##T:                                                                                          \
        tq_get_rows_cuda_dst<GGML_TYPE_##T>(src0_d, src1_d, dst_d, dst_type, ne00, nb01, nb02, nb03, ne10, ne11, \
                                            ne12, nb10, nb11, nb12, nb1, nb2, nb3, stream);                      \
        break;
        TQ_GGML_FOR_EACH(X)
#undef X
        default:
            GGML_ABORT("%s: not a llama-tq type: %s", __func__, ggml_type_name(src0_type));
    }
}

// ---- encoders: locators and launches (the kernels are in tq-encode-impl.cuh) ---------------------------

// a launch of n_blocks trellis blocks takes the one-warp form (G = 2, prefill) rather than the two-warp form
// (G = 1: the shorter chain for a decode step's few blocks)
static bool tq_vit_use_g2(const int64_t n_blocks) {
    return n_blocks >= (int64_t) TQ_VIT_G2_MIN_PER_SM * ggml_cuda_info().devices[ggml_cuda_get_device()].nsm;
}

template <ggml_type type, class Loc>
static void tq_encode_cuda(const Loc & loc, const int64_t nblocks, cudaStream_t stream) {
    if (nblocks <= 0) {
        return;
    }
    using F = tq_cuda_fmt<type>;
    if constexpr (F::trellis) {
        const tq_cuda_tab<type> tab  = tq_cuda_host_tab<type>();
        const float             tmax = tq_cuda_tab_max(tab);
        GGML_ASSERT(nblocks <= INT32_MAX);
        // as many blocks per SM as the launch bounds allow: prefer shared memory to L1 (see tq_vit_min_blocks)
        static bool carveout_set[GGML_CUDA_MAX_DEVICES] = { false };
        const int   id                                  = ggml_cuda_get_device();
        if (!carveout_set[id]) {
            CUDA_CHECK(cudaFuncSetAttribute(tq_k_encode_trellis<type, Loc, 1>,
                                            cudaFuncAttributePreferredSharedMemoryCarveout,
                                            cudaSharedmemCarveoutMaxShared));
            CUDA_CHECK(cudaFuncSetAttribute(tq_k_encode_trellis<type, Loc, TQ_VIT_G2_BLOCKS>,
                                            cudaFuncAttributePreferredSharedMemoryCarveout,
                                            cudaSharedmemCarveoutMaxShared));
            carveout_set[id] = true;
        }
        if (tq_vit_use_g2(nblocks)) {
            const unsigned n_tb = (unsigned) ((nblocks + TQ_VIT_G2_BLOCKS - 1) / TQ_VIT_G2_BLOCKS);
            tq_k_encode_trellis<type, Loc, TQ_VIT_G2_BLOCKS>
                <<<n_tb, TQ_VIT_THREADS, 0, stream>>>(loc, tab, tmax, (int) nblocks);
        } else {
            tq_k_encode_trellis<type, Loc, 1>
                <<<(unsigned) nblocks, TQ_VIT_THREADS, 0, stream>>>(loc, tab, tmax, (int) nblocks);
        }
    } else {
        GGML_ASSERT(nblocks <= INT32_MAX);
        tq_k_encode_codebook<type, Loc><<<(unsigned) nblocks, 64, 0, stream>>>(loc, tq_cuda_host_cb_params<type>());
    }
    CUDA_CHECK(cudaGetLastError());
}

template <class Loc>
static void tq_encode_cuda_type(const ggml_type type, const Loc & loc, const int64_t nblocks, cudaStream_t stream) {
    switch (type) {
#define X(T, t)                                                \
    case GGML_TYPE_##T:                                        \
        tq_encode_cuda<GGML_TYPE_##T, Loc>(loc, nblocks, stream); \
        break;
        TQ_GGML_FOR_EACH(X)
#undef X
        case GGML_TYPE_KTQP2:
        case GGML_TYPE_KTQP3:
            tq_kprof_encode_cuda(type, loc, nblocks, stream);
            break;
        default:
            GGML_ABORT("%s: not a llama-tq type: %s", __func__, ggml_type_name(type));
    }
}

// the locator of a SET_ROWS into a llama-tq type (src0 F32, indices I32 or I64) and its number of blocks
static tq_cuda_loc_set_rows tq_cuda_set_rows_loc(const ggml_tensor * dst, int64_t * nblocks) {
    const ggml_tensor * src0 = dst->src[0];
    const ggml_tensor * src1 = dst->src[1];

    GGML_ASSERT(TQ_GGML_ON_CUDA(dst->type));
    GGML_ASSERT(src0->type == GGML_TYPE_F32);
    GGML_ASSERT(src1->type == GGML_TYPE_I64 || src1->type == GGML_TYPE_I32);
    GGML_ASSERT(src0->ne[0] % QK_TQ == 0);

    *nblocks = src0->ne[0] / QK_TQ * src0->ne[1] * src0->ne[2] * src0->ne[3];
    GGML_ASSERT(*nblocks <= INT32_MAX);  // the 32-bit splits of the locator
    return tq_cuda_make_loc_set_rows(src0->data, src0->ne, src0->nb, src1->data, src1->ne, src1->nb,
                                     src1->type == GGML_TYPE_I64, dst->data, dst->nb, (int) ggml_type_size(dst->type));
}

void tq_cuda_set_rows(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
    int64_t                    nblocks;
    const tq_cuda_loc_set_rows loc = tq_cuda_set_rows_loc(dst, &nblocks);
    tq_encode_cuda_type(dst->type, loc, nblocks, ctx.stream());
}

// ---- K and V cache writes of a decode step in one launch ------------------------------------------------

// The V blocks' two Viterbi passes side by side (tq_encode_trellis_spec) when all their thread blocks fit about one
// wave (8 per SM); LLAMA_TQ_CUDA_VIT_SPEC=0 runs them one after the other. On the H200 (hd64, depth 0, Nsight
// Compute) the fused write took 11.89 us per launch this way against 14.51 us (docs/results.md)
static int64_t tq_vit_spec_max_v() {
    return 8 * (int64_t) ggml_cuda_info().devices[ggml_cuda_get_device()].nsm / TQ_VIT_SPEC;
}

static bool tq_vit_use_spec(const int64_t n_v) {
    static const char * env = getenv("LLAMA_TQ_CUDA_VIT_SPEC");
    static const bool   on  = env == nullptr || atoi(env) != 0;
    return on && n_v <= tq_vit_spec_max_v();
}

// The side-by-side form's tickets (one per V block): zeroed here once, then again by the last thread block of each
// V block in every launch, so that a decode step needs no memset node. One array per device and stream (launches on
// a stream run in order; two streams never share one), allocated outside CUDA graph capture: while a stream is
// being captured and has none yet, nullptr (the passes then run one after the other). Kept for the process's life
// (a graph captured with an array may be replayed at any time).
static unsigned * tq_vit_tickets(const int device, cudaStream_t stream) {
    static std::mutex                                         mutex;
    static std::map<std::pair<int, cudaStream_t>, unsigned *> tickets;
    std::lock_guard<std::mutex>                               lock(mutex);
    const auto                                                it = tickets.find({ device, stream });
    if (it != tickets.end()) {
        return it->second;
    }
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
    if (status != cudaStreamCaptureStatusNone) {
        return nullptr;
    }
    const size_t bytes = (size_t) tq_vit_spec_max_v() * sizeof(unsigned);
    unsigned *   p     = nullptr;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
    tickets[{ device, stream }] = p;
    return p;
}

template <ggml_type type_k, ggml_type type_v>
static void tq_encode_kv_cuda(ggml_backend_cuda_context & ctx, const tq_cuda_loc_set_rows & loc_k, const int64_t n_k,
                              const tq_cuda_loc_set_rows & loc_v, const int64_t n_v) {
    cudaStream_t              stream = ctx.stream();
    const tq_cuda_tab<type_v> tab    = tq_cuda_host_tab<type_v>();
    tq_vit_spec_buf           sb     = {};
    int64_t                   n_tv   = n_v;  // thread blocks of V
    ggml_cuda_pool_alloc<uint8_t> scratch(ctx.pool());
    unsigned * const ticket = tq_vit_use_spec(n_v) ? tq_vit_tickets(ctx.device, stream) : nullptr;
    if (ticket) {
        constexpr size_t slot  = 2 + tq_cuda_fmt<type_v>::qs_bytes;
        const size_t     slots = GGML_PAD((size_t) n_v * 64 * slot, 16);
        scratch.alloc(slots + (size_t) n_v * sizeof(int));
        sb.slots  = scratch.ptr;
        sb.gfix   = (int *) (scratch.ptr + slots);
        sb.ticket = ticket;
        n_tv      = TQ_VIT_SPEC * n_v;
    }
    // with programmatic dependent launch where ggml-cuda uses it (tq_cuda_launch)
    const ggml_cuda_kernel_launch_params lp(dim3((unsigned) (n_tv + n_k)), dim3(TQ_VIT_THREADS), 0, stream);
    tq_cuda_launch(tq_k_encode_kv<type_k, type_v, tq_cuda_loc_set_rows>, lp, loc_k, tq_cuda_host_cb_params<type_k>(),
                   loc_v, tab, tq_cuda_tab_max(tab), (int) n_v, sb);
}

// K: ktq2/3/4, V: the trellis types (vtq*_2, vtq*_3); false for other pairs
static bool tq_encode_kv_cuda_pair(ggml_backend_cuda_context & ctx, const ggml_type type_k, const ggml_type type_v,
                                   const tq_cuda_loc_set_rows & loc_k, const int64_t n_k,
                                   const tq_cuda_loc_set_rows & loc_v, const int64_t n_v) {
#define TQ_KV_V(TK, TV, tv)                                                              \
    case GGML_TYPE_##TV:                                                                 \
        tq_encode_kv_cuda<GGML_TYPE_##TK, GGML_TYPE_##TV>(ctx, loc_k, n_k, loc_v, n_v); \
        return true;
#define TQ_KV_K(TK, tk)                                                   \
    case GGML_TYPE_##TK:                                                  \
        switch (type_v) {                                                 \
            TQ_KV_V(TK, VTQ2_2, vtq2_2) TQ_KV_V(TK, VTQ3_2, vtq3_2)       \
            TQ_KV_V(TK, VTQ4_2, vtq4_2) TQ_KV_V(TK, VTQ2_3, vtq2_3)       \
            TQ_KV_V(TK, VTQ3_3, vtq3_3) TQ_KV_V(TK, VTQ4_3, vtq4_3)       \
            default:                                                      \
                return false;                                             \
        }
    switch (type_k) {
        TQ_GGML_FOR_EACH_K(TQ_KV_K)
        default:
            return false;
    }
#undef TQ_KV_K
#undef TQ_KV_V
}

int tq_cuda_try_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * cgraph, const int i) {
    if (const int n = tq_cuda_try_fuse_fattn_rot(ctx, cgraph, i)) {
        return n;
    }
    static const char * no_fusion = getenv("LLAMA_TQ_CUDA_NO_KV_FUSION");
    static const bool   disabled  = no_fusion != nullptr && atoi(no_fusion) != 0;
    if (disabled || i + 2 >= cgraph->n_nodes) {
        return 0;
    }
    const ggml_tensor * k    = cgraph->nodes[i];
    const ggml_tensor * view = cgraph->nodes[i + 1];
    const ggml_tensor * v    = cgraph->nodes[i + 2];
    // llama_kv_cache::cpy_k, then cpy_v (FA: V not transposed): SET_ROWS(K), VIEW(v_cur), SET_ROWS(V)
    if (k->op != GGML_OP_SET_ROWS || view->op != GGML_OP_VIEW || v->op != GGML_OP_SET_ROWS ||
        (v->flags & GGML_TENSOR_FLAG_COMPUTE) == 0 || v->src[0] != view) {
        return 0;
    }
    // independent writes: V's values, indices and destination (src[2]) are not K's output nor views of what K
    // writes, and K and V write other tensors (in llama these are different caches and graph inputs)
    const ggml_tensor * k_root = k->view_src ? k->view_src : k->src[2];
    if (view->src[0] == k || v->src[1] == k || v->src[2] == k || view->view_src == k_root || v->src[2] == k_root ||
        (v->view_src && v->view_src == k_root) || k->data == v->data) {
        return 0;
    }
    // not while upstream's concurrent streams (GGML_CUDA_GRAPH_OPT) are in use: K and V may be on different streams
    if (!ctx.stream_context().concurrent_events.empty()) {
        return 0;
    }
    if (!TQ_GGML_IS_TQ(k->type) || !TQ_GGML_IS_TQ(v->type) || k->src[0]->type != GGML_TYPE_F32 ||
        v->src[0]->type != GGML_TYPE_F32 || k->src[0]->ne[0] % QK_TQ != 0 || v->src[0]->ne[0] % QK_TQ != 0) {
        return 0;
    }
    int64_t                    n_k, n_v;
    const tq_cuda_loc_set_rows loc_k = tq_cuda_set_rows_loc(k, &n_k);
    const tq_cuda_loc_set_rows loc_v = tq_cuda_set_rows_loc(v, &n_v);
    // only the few blocks of a decode step (the trellis encoder's G = 1 form)
    if (n_k <= 0 || n_v <= 0 || tq_vit_use_g2(n_v) || n_k + TQ_VIT_SPEC * n_v > INT32_MAX) {
        return 0;
    }
    return tq_encode_kv_cuda_pair(ctx, k->type, v->type, loc_k, n_k, loc_v, n_v) ? 2 : 0;
}

// type -> F32, one thread per element (any strides on both sides)
template <ggml_type type>
static __global__ void tq_k_cpy_to_f32(const char * __restrict__ src0, char * __restrict__ dst, const int64_t n,
                                       const int64_t ne00, const int64_t ne01, const int64_t ne02, const size_t nb00,
                                       const size_t nb01, const size_t nb02, const size_t nb03, const int64_t ne10,
                                       const int64_t ne11, const int64_t ne12, const size_t nb10, const size_t nb11,
                                       const size_t nb12, const size_t nb13, const tq_cuda_tab<type> tab) {
    using F = tq_cuda_fmt<type>;
    __shared__ float s_tab[F::ntab];
    tq_cuda_load_tab<type>(s_tab, tab);
    __syncthreads();
    for (int64_t i = (int64_t) blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t) gridDim.x * blockDim.x) {
        const tq_cuda_i4 a   = tq_cuda_unravel(i, ne00, ne01, ne02);
        const tq_cuda_i4 b   = tq_cuda_unravel(i, ne10, ne11, ne12);
        const uint8_t *  blk = (const uint8_t *) (src0 + (a.x / QK_TQ) * nb00 + a.y * nb01 + a.z * nb02 + a.w * nb03);
        *(float *) (dst + b.x * nb10 + b.y * nb11 + b.z * nb12 + b.w * nb13) =
            tq_cuda_dequant1<type>(blk, (int) (a.x % QK_TQ), s_tab);
    }
}

void tq_cuda_cpy(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, ggml_tensor * src1) {
    cudaStream_t stream = ctx.stream();
    const int64_t n = ggml_nelements(src0);
    GGML_ASSERT(n == ggml_nelements(src1));
    if (n == 0) {
        return;
    }

    if (src0->type == GGML_TYPE_F32 && TQ_GGML_ON_CUDA(src1->type)) {
        GGML_ASSERT(src0->ne[0] % QK_TQ == 0 && src1->ne[0] % QK_TQ == 0);
        GGML_ASSERT(n / QK_TQ <= INT32_MAX);  // the 32-bit splits of the locator
        const tq_cuda_loc_cpy loc = tq_cuda_make_loc_cpy(src0->data, src0->ne, src0->nb, src1->data, src1->ne, src1->nb,
                                                         (int) ggml_type_size(src1->type));
        tq_encode_cuda_type(src1->type, loc, n / QK_TQ, stream);
        return;
    }

    if (TQ_GGML_IS_KP(src0->type) && src1->type == GGML_TYPE_F32) {
        GGML_ASSERT(src0->ne[0] % QK_TQ == 0);
        tq_k_kprof_cpy_to_f32<<<tq_cuda_grid(n), TQ_CUDA_BLOCK_SIZE, 0, stream>>>(
            (const char *) src0->data, (char *) src1->data, n, src0->ne[0], src0->ne[1], src0->ne[2], src0->nb[0],
            src0->nb[1], src0->nb[2], src0->nb[3], src1->ne[0], src1->ne[1], src1->ne[2], src1->nb[0], src1->nb[1],
            src1->nb[2], src1->nb[3], tq_cuda_kprof_table(TQ_GGML_KP_WIDTH(src0->type), stream));
        CUDA_CHECK(cudaGetLastError());
        return;
    }

    if (TQ_GGML_IS_TQ(src0->type) && src1->type == GGML_TYPE_F32) {
        GGML_ASSERT(src0->ne[0] % QK_TQ == 0);
        switch (src0->type) {
#define X(T, t)                                                                                                       \
    case GGML_TYPE_##T:                                                                                               \
        tq_k_cpy_to_f32<GGML_TYPE_##T><<<tq_cuda_grid(n), TQ_CUDA_BLOCK_SIZE, 0, stream>>>(                           \
            (const char *) src0->data, (char *) src1->data, n, src0->ne[0], src0->ne[1], src0->ne[2], src0->nb[0],     \
            src0->nb[1], src0->nb[2], src0->nb[3], src1->ne[0], src1->ne[1], src1->ne[2], src1->nb[0], src1->nb[1], \
            src1->nb[2], src1->nb[3], tq_cuda_host_tab<GGML_TYPE_##T>());                                            \
        break;
            TQ_GGML_FOR_EACH(X)
#undef X
            default:
                break;
        }
        CUDA_CHECK(cudaGetLastError());
        return;
    }

    GGML_ABORT("%s: unsupported type combination (%s to %s)", __func__, ggml_type_name(src0->type),
               ggml_type_name(src1->type));
}

bool tq_cuda_supports_op(const ggml_tensor * op, bool * supported) {
    switch (op->op) {
        case GGML_OP_GET_ROWS:
            if (!TQ_GGML_ON_CUDA(op->src[0]->type)) {
                return false;
            }
            *supported = (op->type == GGML_TYPE_F32 || op->type == GGML_TYPE_F16 || op->type == GGML_TYPE_BF16) &&
                         op->src[1]->type == GGML_TYPE_I32 && op->src[0]->ne[0] % QK_TQ == 0;
            return true;
        case GGML_OP_SET_ROWS:
            if (!TQ_GGML_ON_CUDA(op->type)) {
                return false;
            }
            *supported = op->src[0]->type == GGML_TYPE_F32 &&
                         (op->src[1]->type == GGML_TYPE_I64 || op->src[1]->type == GGML_TYPE_I32) &&
                         op->src[0]->ne[0] % QK_TQ == 0;
            return true;
        case GGML_OP_CPY:
        case GGML_OP_DUP: {
            const ggml_tensor * a = op->src[0];
            const ggml_tensor * b = op->op == GGML_OP_CPY ? op->src[1] : op;
            if (!TQ_GGML_ON_CUDA(a->type) && !TQ_GGML_ON_CUDA(b->type)) {
                return false;
            }
            if (a->type == b->type) {
                *supported = ggml_is_contiguous(a) && ggml_is_contiguous(b);  // a plain memcpy
            } else if (a->type == GGML_TYPE_F32) {
                *supported = a->ne[0] % QK_TQ == 0 && b->ne[0] % QK_TQ == 0;
            } else if (b->type == GGML_TYPE_F32) {
                *supported = a->ne[0] % QK_TQ == 0;
            } else {
                *supported = false;
            }
            return true;
        }
        default:
            return false;
    }
}
