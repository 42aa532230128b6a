// llama-tq: reading ktq / vtq block bits on CUDA, shared by the decode kernel (tq-fattn-impl.cuh) and the f16 / f32
// converter (tq-dequant-impl.cuh): 16-bit-aligned stream reads (a block is 2-byte aligned), the window of several
// consecutive values, and the bank-spread copies of a decode table in shared memory.
#pragma once

#include "common.cuh"

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#if !defined(TQ_CUDA_EMU)
// launches a decode-step kernel (the fused K + V write, the decode kernel, its combine) through ggml-cuda's
// launcher, so with programmatic dependent launch where ggml-cuda uses it (sm_90; GGML_CUDA_PDL=0 turns it off
// for every kernel); LLAMA_TQ_CUDA_PDL=0 launches only these plainly (for comparison). The kernels call
// ggml_cuda_pdl_lc() first and ggml_cuda_pdl_sync() before their first global read; as ggml-cuda does, their
// pointers are not __restrict__ there (GGML_CUDA_RESTRICT)
template <typename Kernel, typename... Args>
static void tq_cuda_launch(Kernel kernel, const ggml_cuda_kernel_launch_params & lp, Args &&... args) {
    static const bool pdl = [] {
        const char * env = getenv("LLAMA_TQ_CUDA_PDL");
        return env == nullptr || atoi(env) != 0;
    }();
    if (pdl) {
        ggml_cuda_kernel_launch(kernel, lp, std::forward<Args>(args)...);
        return;
    }
    kernel<<<lp.block_nums, lp.block_dims, lp.shmem, lp.stream>>>(std::forward<Args>(args)...);
    CUDA_CHECK(cudaGetLastError());
}
#endif

// cp.async (sm_80 and later): a 16-byte copy from global to shared memory that bypasses L1 and the registers; with
// ok false, 16 zero bytes (src-size 0: src is not read). tq_cp_async_commit closes the group of copies this thread
// issued since the last one; tq_cp_async_wait<N> waits until at most N of its groups are in flight (the copies of
// other threads are visible after a barrier that follows). Both addresses 16-byte aligned. Without cp.async (and in
// the emulation, which completes a group only at the wait, as late as the hardware may) the same semantics
static __device__ __forceinline__ void tq_cp_async16(void * dst, const void * src, const bool ok) {
#if defined(TQ_CUDA_EMU)
    emu_cp_async(dst, src, 16, ok);
#elif defined(CP_ASYNC_AVAILABLE)
    const unsigned int s = (unsigned int) __cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" : : "r"(s), "l"(src), "r"(ok ? 16 : 0) : "memory");
#else
    *(uint4 *) dst = ok ? *(const uint4 *) src : make_uint4(0, 0, 0, 0);
#endif
}

static __device__ __forceinline__ void tq_cp_async_commit() {
#if defined(TQ_CUDA_EMU)
    emu_cp_async_commit();
#elif defined(CP_ASYNC_AVAILABLE)
    asm volatile("cp.async.commit_group;" : : : "memory");
#endif
}

template <int N>
static __device__ __forceinline__ void tq_cp_async_wait() {
#if defined(TQ_CUDA_EMU)
    emu_cp_async_wait(N);
#elif defined(CP_ASYNC_AVAILABLE)
    asm volatile("cp.async.wait_group %0;" : : "n"(N) : "memory");
#endif
}

// 64 stream bits of a block starting at byte `byte` (circular over the qs_bytes of the stream: the
// trellis is tail-biting; for codebook types the wrapped bytes are never used). qs is 2-byte aligned.
template <int qs_bytes>
static __device__ __forceinline__ uint64_t tq_fa_bits64(const uint8_t * GGML_CUDA_RESTRICT qs, const int byte) {
    constexpr int n16 = qs_bytes / 2;
    const uint16_t * q16 = (const uint16_t *) qs;
    const int        a   = byte >> 1;
    uint64_t         w   = 0;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        int idx = a + t;
        idx     = idx >= n16 ? idx - n16 : idx;
        w |= (uint64_t) q16[idx] << (16 * t);
    }
    return w >> (8 * (byte & 1));
}

// 32 stream bits of a block starting at byte `byte` (circular, as tq_fa_bits64); for even `byte` (types of
// 2 or 4 bits) the third word folds away
template <int qs_bytes>
static __device__ __forceinline__ uint32_t tq_fa_bits32(const uint8_t * GGML_CUDA_RESTRICT qs, const int byte) {
    constexpr int    n16 = qs_bytes / 2;
    const uint16_t * q16 = (const uint16_t *) qs;
    const int        a   = byte >> 1;
    const int        a1  = a + 1 >= n16 ? a + 1 - n16 : a + 1;
    const uint32_t   lo  = (uint32_t) q16[a] | (uint32_t) q16[a1] << 16;
    if (byte & 1) {
        const int a2 = a1 + 1 >= n16 ? a1 + 1 - n16 : a1 + 1;
        return __funnelshift_r(lo, (uint32_t) q16[a2], 8);
    }
    return lo;
}

// the n words of type W at p (aligned for W) as one integer, the first in the low bits
template <typename W, int n, typename T>
static __device__ __forceinline__ T tq_fa_ldw(const uint8_t * GGML_CUDA_RESTRICT p) {
    const W * q = (const W *) p;
    T         w = 0;
#pragma unroll
    for (int i = 0; i < n; ++i) {
        w |= (T) q[i] << (8 * sizeof(W) * i);
    }
    return w;
}

// n 16-bit words (p 2-byte aligned) / n 32-bit words (p 4-byte aligned)
template <int n, typename T>
static __device__ __forceinline__ T tq_fa_ld16(const uint8_t * GGML_CUDA_RESTRICT p) {
    return tq_fa_ldw<uint16_t, n, T>(p);
}

template <int n, typename T>
static __device__ __forceinline__ T tq_fa_ld32(const uint8_t * GGML_CUDA_RESTRICT p) {
    return tq_fa_ldw<uint32_t, n, T>(p);
}

// V: the stream bits that decode VS (4 or 8) consecutive values of a block (a trellis window is L bits, a
// code b); circular over the block's stream
template <ggml_type type_V, int VS>
struct tq_fa_vcodes {
    using F = tq_cuda_fmt<type_V>;
    static constexpr int  width = F::trellis ? F::L : F::b;
    static constexpr bool frac  = VS * F::b % 8 != 0;  // 4 values of 3 bits: the start can be mid-byte
    static constexpr bool w64   = (VS - 1) * F::b + width + (frac ? 4 : 0) > 32;
    using word_t = typename std::conditional<w64, uint64_t, uint32_t>::type;

    // blk: the block; i0: its first value (a multiple of VS)
    static __device__ __forceinline__ word_t load(const uint8_t * GGML_CUDA_RESTRICT blk, const int i0) {
        const int bit = i0 * F::b;
        word_t    w;
        if constexpr (w64) {
            w = tq_fa_bits64<F::qs_bytes>(blk + F::qs_off, bit / 8);
        } else {
            w = tq_fa_bits32<F::qs_bytes>(blk + F::qs_off, bit / 8);
        }
        return frac ? w >> (bit % 8) : w;
    }
};

// copies of the V decode table in shared memory: lane l reads copy l % VREP (a 256..1024-entry table read
// at random indices would otherwise conflict across banks); 8 KiB for a trellis, one copy for a codebook
template <ggml_type type_V>
static constexpr __host__ __device__ int tq_fa_vrep() {
    return tq_cuda_fmt<type_V>::ntab <= 16 ? 1 : 2048 / tq_cuda_fmt<type_V>::ntab;
}

template <int n>
static constexpr __host__ __device__ int tq_fa_log2() {
    return n <= 1 ? 0 : 1 + tq_fa_log2<n / 2>();
}

// the decode table of a type in shared memory, tq_fa_vrep copies of each entry side by side (every thread of the
// block of NT threads calls it, then a barrier)
template <ggml_type type, int NT>
static __device__ __forceinline__ void tq_fa_fill_vtab(float * s_tab, const tq_cuda_tab<type> & tab) {
    constexpr int REP = tq_fa_vrep<type>();
    for (int i = threadIdx.x; i < tq_cuda_fmt<type>::ntab * REP; i += NT) {
        s_tab[i] = tab.v[i / REP];
    }
}

// the table value of the window (trellis) or code in the low bits of x, read from the copy at byte offset rep
// ((lane % tq_fa_vrep) * 4) of a table filled by tq_fa_fill_vtab
template <ggml_type type>
static __device__ __forceinline__ float tq_fa_vtab_at(const float * s_tab, const uint32_t x, const uint32_t rep) {
    using F            = tq_cuda_fmt<type>;
    constexpr int  SH  = tq_fa_log2<tq_fa_vrep<type>()>() + 2;  // byte shift of an entry
    constexpr auto MSK = (1u << (F::trellis ? F::L : F::b)) - 1u;
    return *(const float *) ((const char *) s_tab + (((x & MSK) << SH) | rep));
}

// two floats as the f16 pair of one register (lo in the low half), rounded to nearest even
static __device__ __forceinline__ uint32_t tq_fa_h2(const float lo, const float hi) {
#if defined(TQ_CUDA_EMU)
    return (uint32_t) __half_as_ushort(__float2half_rn(lo)) | (uint32_t) __half_as_ushort(__float2half_rn(hi)) << 16;
#else
    const half2 h = __floats2half2_rn(lo, hi);
    return *(const uint32_t *) &h;
#endif
}

// V pair table of a 2-bit trellis type (vtq2): entry x (a window of L + 2 stream bits) holds the f16 levels of two
// consecutive values, level[x & (2^L - 1)] in the low half and level[x >> 2] in the high half; TQ_FA_VPREP copies
// side by side (16 KiB), lane l reads copy l % TQ_FA_VPREP. One lookup gives two values, already in f16: for the
// tensor-core form, whose V enters the mma as f16 (the vector form keeps its f32 table, tq_fa_vtab_at)
#define TQ_FA_VPREP 4

template <ggml_type type_V>
static constexpr __host__ __device__ bool tq_fa_vpair() {
    return tq_cuda_fmt<type_V>::trellis && tq_cuda_fmt<type_V>::b == 2;
}

template <ggml_type type_V>
static constexpr __host__ __device__ int tq_fa_vpair_ntab() {
    return 1 << (tq_cuda_fmt<type_V>::L + tq_cuda_fmt<type_V>::b);
}

// the pair of the window in the low L + 2 bits of x, from the copy at byte offset rep ((lane % TQ_FA_VPREP) * 4)
template <ggml_type type>
static __device__ __forceinline__ uint32_t tq_fa_vpair_at(const uint32_t * s_tab, const uint32_t x,
                                                          const uint32_t rep) {
    constexpr int  SH  = tq_fa_log2<TQ_FA_VPREP>() + 2;
    constexpr auto MSK = (uint32_t) tq_fa_vpair_ntab<type>() - 1u;
    return *(const uint32_t *) ((const char *) s_tab + (((x & MSK) << SH) | rep));
}

// fills the pair table, each entry's TQ_FA_VPREP copies with one 16-byte store, from the levels staged in s_lv
// (ntab floats: the kernel argument's table is read once, at consecutive indices); every thread of the block of NT
// threads calls it (a barrier inside), then a barrier
template <ggml_type type, int NT>
static __device__ __forceinline__ void tq_fa_fill_vpair(uint32_t * s_tab, float * s_lv, const tq_cuda_tab<type> & tab) {
    using F           = tq_cuda_fmt<type>;
    constexpr int MSK = (1 << F::L) - 1;
    static_assert(TQ_FA_VPREP == 4, "one uint4 per entry");
    for (int i = threadIdx.x; i < F::ntab; i += NT) {
        s_lv[i] = tab.v[i];
    }
    __syncthreads();
    for (int x = threadIdx.x; x < tq_fa_vpair_ntab<type>(); x += NT) {
        const uint32_t h = tq_fa_h2(s_lv[x & MSK], s_lv[x >> F::b]);
        *(uint4 *) (s_tab + x * TQ_FA_VPREP) = make_uint4(h, h, h, h);
    }
}

// the f16 pair h times d (an f16 value, as a float), each half rounded once to nearest even and clamped to the f16
// range (a value beyond it would be infinite, and 0 * inf a NaN for a row of probability 0). The product of two
// f16 values is exact in f32, so the emulation's f32 product, clamp and rounding give what __hmul2 and the clamp do
#define TQ_FA_F16_MAX 65504.0f

static __device__ __forceinline__ uint32_t tq_fa_h2_scale(const uint32_t h, const float d) {
#if defined(TQ_CUDA_EMU)
    const float lo = __half2float(__ushort_as_half((unsigned short) (h & 0xffffu))) * d;
    const float hi = __half2float(__ushort_as_half((unsigned short) (h >> 16))) * d;
    return tq_fa_h2(fminf(fmaxf(lo, -TQ_FA_F16_MAX), TQ_FA_F16_MAX),
                    fminf(fmaxf(hi, -TQ_FA_F16_MAX), TQ_FA_F16_MAX));
#else
    const half2 m = __float2half2_rn(TQ_FA_F16_MAX);
    const half2 x = __hmul2(*(const half2 *) &h, __float2half2_rn(d));
    const half2 r = __hmax2(__hmin2(x, m), __hneg2(m));
    return *(const uint32_t *) &r;
#endif
}
