// llama-tq: CPU reference of the ktq / vtq KV-cache block formats (see docs/formats.md, the contract).
//
//   ktq2/3/4     K cache: Lloyd-Max scalar codebook, Q·K straight from codes (ggml_vec_dot_ktq*_f32)
//   vtqb_1       V cache: the same scalar codebook layout with the vtqb_1 levels
//   vtqb_2       V cache: tail-biting bitshift trellis, k = b bits/sample, L = k + 6 state bits (default V)
//   vtqb_3       V cache: vtqb_2 plus TQ_OUTLIERS exact fp16 outlier slots per block
//   ktqp2/3      K cache by bit profiles (tq-kprof.h): keys folded by per-pair query energy, no rotation, a
//                calibrated table of profiles shared by all blocks (LLAMA_TQ_K_PROFILES)
//
// Plain C11, libc + libm only. The functions have ggml's signatures so that ggml's type_traits
// (to_float, from_float_ref, vec_dot) and ggml_quantize_chunk can point at them directly; scales are
// stored as IEEE fp16 bits (uint16_t, the same representation as ggml_half).
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QK_TQ       64  // elements per block (all 14 types)
#define TQ_OUTLIERS 2   // outlier slots per vtqb_3 block

#ifdef __cplusplus
#define TQ_STATIC_ASSERT(c, msg) static_assert(c, msg)
#else
#define TQ_STATIC_ASSERT(c, msg) _Static_assert(c, msg)
#endif

// ---- type ids (local to this library; the ggml hook maps GGML_TYPE_* to these) -------------------

enum tq_type {
    TQ_TYPE_KTQ2   = 0,
    TQ_TYPE_KTQ3   = 1,
    TQ_TYPE_KTQ4   = 2,
    TQ_TYPE_VTQ2_1 = 3,
    TQ_TYPE_VTQ3_1 = 4,
    TQ_TYPE_VTQ4_1 = 5,
    TQ_TYPE_VTQ2_2 = 6,
    TQ_TYPE_VTQ3_2 = 7,
    TQ_TYPE_VTQ4_2 = 8,
    TQ_TYPE_VTQ2_3 = 9,
    TQ_TYPE_VTQ3_3 = 10,
    TQ_TYPE_VTQ4_3 = 11,
    TQ_TYPE_KTQP2  = 12,
    TQ_TYPE_KTQP3  = 13,
    TQ_TYPE_COUNT  = 14,
};

// ---- blocks ---------------------------------------------------------------------------------------
// d: fp16 scale. qs: little-endian bit-stream of QK_TQ*b bits (bit j of the stream is bit j%8 of qs[j/8]).
// Scalar codebook types: code j = stream bits [j*b, j*b+b), x̂_j = d * level[code_j].
// Trellis types: state_i = stream bits [i*k, i*k+L) mod QK_TQ*k, x̂_i = d * table[state_i].

typedef struct { uint16_t d; uint8_t qs[QK_TQ * 2 / 8]; } block_ktq2;   // 18 B, 2.25 bit/elem
typedef struct { uint16_t d; uint8_t qs[QK_TQ * 3 / 8]; } block_ktq3;   // 26 B, 3.25 bit/elem
typedef struct { uint16_t d; uint8_t qs[QK_TQ * 4 / 8]; } block_ktq4;   // 34 B, 4.25 bit/elem

typedef struct { uint16_t d; uint8_t qs[QK_TQ * 2 / 8]; } block_vtq2_1; // 18 B, 2.25 bit/elem
typedef struct { uint16_t d; uint8_t qs[QK_TQ * 3 / 8]; } block_vtq3_1; // 26 B, 3.25 bit/elem
typedef struct { uint16_t d; uint8_t qs[QK_TQ * 4 / 8]; } block_vtq4_1; // 34 B, 4.25 bit/elem

typedef struct { uint16_t d; uint8_t qs[QK_TQ * 2 / 8]; } block_vtq2_2; // 18 B, 2.25 bit/elem
typedef struct { uint16_t d; uint8_t qs[QK_TQ * 3 / 8]; } block_vtq3_2; // 26 B, 3.25 bit/elem
typedef struct { uint16_t d; uint8_t qs[QK_TQ * 4 / 8]; } block_vtq4_2; // 34 B, 4.25 bit/elem

// vtqb_3: od[i] is the exact value (fp16, not scaled by d) of sample op[i] (0..63, upper 2 bits zero);
// it replaces the trellis value there. Slots are applied in order (a repeated position: the last wins).
typedef struct {
    uint16_t d;
    uint16_t od[TQ_OUTLIERS];
    uint8_t  op[TQ_OUTLIERS];
    uint8_t  qs[QK_TQ * 2 / 8];
} block_vtq2_3;                                                          // 24 B, 3.00 bit/elem
typedef struct {
    uint16_t d;
    uint16_t od[TQ_OUTLIERS];
    uint8_t  op[TQ_OUTLIERS];
    uint8_t  qs[QK_TQ * 3 / 8];
} block_vtq3_3;                                                          // 32 B, 4.00 bit/elem
typedef struct {
    uint16_t d;
    uint16_t od[TQ_OUTLIERS];
    uint8_t  op[TQ_OUTLIERS];
    uint8_t  qs[QK_TQ * 4 / 8];
} block_vtq4_3;                                                          // 40 B, 5.00 bit/elem

// ktqp: one bit stream of QK_TQ*b + 16 bits: the profile index, then each coordinate's code (tq-kprof.h); the
// same size as ktqb so that the two compare at equal bits
typedef struct { uint8_t qs[2 + QK_TQ * 2 / 8]; } block_ktqp2;          // 18 B, 2.25 bit/elem
typedef struct { uint8_t qs[2 + QK_TQ * 3 / 8]; } block_ktqp3;          // 26 B, 3.25 bit/elem

TQ_STATIC_ASSERT(sizeof(block_ktq2)   == 2 + QK_TQ * 2 / 8, "wrong ktq2 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_ktq3)   == 2 + QK_TQ * 3 / 8, "wrong ktq3 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_ktq4)   == 2 + QK_TQ * 4 / 8, "wrong ktq4 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_vtq2_1) == 2 + QK_TQ * 2 / 8, "wrong vtq2_1 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_vtq3_1) == 2 + QK_TQ * 3 / 8, "wrong vtq3_1 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_vtq4_1) == 2 + QK_TQ * 4 / 8, "wrong vtq4_1 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_vtq2_2) == 2 + QK_TQ * 2 / 8, "wrong vtq2_2 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_vtq3_2) == 2 + QK_TQ * 3 / 8, "wrong vtq3_2 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_vtq4_2) == 2 + QK_TQ * 4 / 8, "wrong vtq4_2 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_vtq2_3) == 2 + 3 * TQ_OUTLIERS + QK_TQ * 2 / 8, "wrong vtq2_3 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_vtq3_3) == 2 + 3 * TQ_OUTLIERS + QK_TQ * 3 / 8, "wrong vtq3_3 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_vtq4_3) == 2 + 3 * TQ_OUTLIERS + QK_TQ * 4 / 8, "wrong vtq4_3 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_ktqp2)  == 2 + QK_TQ * 2 / 8, "wrong ktqp2 block size/padding");
TQ_STATIC_ASSERT(sizeof(block_ktqp3)  == 2 + QK_TQ * 3 / 8, "wrong ktqp3 block size/padding");

// ---- fp16 <-> fp32, bit-exact IEEE round-to-nearest-even (same algorithm as ggml's) ---------------

static inline float tq_fp32_from_bits(uint32_t w) {
    float f;
    memcpy(&f, &w, sizeof(f));
    return f;
}

static inline uint32_t tq_fp32_to_bits(float f) {
    uint32_t w;
    memcpy(&w, &f, sizeof(w));
    return w;
}

static inline float tq_fp16_to_fp32(uint16_t h) {
    const uint32_t w     = (uint32_t) h << 16;
    const uint32_t sign  = w & UINT32_C(0x80000000);
    const uint32_t two_w = w + w;

    const uint32_t exp_offset       = UINT32_C(0xE0) << 23;
    const float    exp_scale        = tq_fp32_from_bits(UINT32_C(0x07800000)); // 2^-112
    const float    normalized_value = tq_fp32_from_bits((two_w >> 4) + exp_offset) * exp_scale;

    const uint32_t magic_mask         = UINT32_C(126) << 23;
    const float    magic_bias         = 0.5f;
    const float    denormalized_value = tq_fp32_from_bits((two_w >> 17) | magic_mask) - magic_bias;

    const uint32_t denormalized_cutoff = UINT32_C(1) << 27;
    const uint32_t result = sign | (two_w < denormalized_cutoff ? tq_fp32_to_bits(denormalized_value)
                                                                : tq_fp32_to_bits(normalized_value));
    return tq_fp32_from_bits(result);
}

static inline uint16_t tq_fp32_to_fp16(float f) {
    const float scale_to_inf  = tq_fp32_from_bits(UINT32_C(0x77800000)); // 2^112
    const float scale_to_zero = tq_fp32_from_bits(UINT32_C(0x08800000)); // 2^-110
    float base = (((f < 0.0f) ? -f : f) * scale_to_inf) * scale_to_zero;

    const uint32_t w      = tq_fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign   = w & UINT32_C(0x80000000);
    uint32_t       bias   = shl1_w & UINT32_C(0xFF000000);
    if (bias < UINT32_C(0x71000000)) {
        bias = UINT32_C(0x71000000);
    }

    base = tq_fp32_from_bits((bias >> 1) + UINT32_C(0x07800000)) + base;
    const uint32_t bits          = tq_fp32_to_bits(base);
    const uint32_t exp_bits      = (bits >> 13) & UINT32_C(0x00007C00);
    const uint32_t mantissa_bits = bits & UINT32_C(0x00000FFF);
    const uint32_t nonsign       = exp_bits + mantissa_bits;
    return (uint16_t) ((sign >> 16) | (shl1_w > UINT32_C(0xFF000000) ? UINT32_C(0x7E00) : nonsign));
}

// ---- tables ---------------------------------------------------------------------------------------

// Loads the active codebook once: the compiled-in defaults (tq-codebooks-default.h), or the file named
// by the environment variable LLAMA_TQ_CODEBOOK (docs/codebook-format.md). A bad file is fatal: the
// process prints the file and the problem to stderr and aborts. Thread-safe; every entry point below
// calls it lazily, the ggml hook should call it from ggml_quantize_init / backend init.
void tq_init(void);

const float * tq_levels(int type);          // decode table of a type: 2^b levels (scalar) or 2^(b+6) (trellis);
                                            // NULL for ktqp (its table: tq_kprof_active)
const float * tq_trellis_table(int k);      // k = 2, 3, 4: 2^(k+6) floats
const char *  tq_codebook_hash(void);       // FNV-1a-64 hash (16 hex digits) of the active codebook
const char *  tq_codebook_source(void);     // "built-in" or the path of the loaded file
const char *  tq_simd(void);                // Viterbi variant in use: "avx2", "avx2 (runtime)", "sse2", "neon", "scalar"

// ---- type properties ------------------------------------------------------------------------------

const char * tq_type_name(int type);        // "ktq2", ..., "vtq2_1", ..., "vtq4_3", "ktqp2", "ktqp3"; NULL if out of range
size_t       tq_type_size(int type);        // bytes per block
int          tq_type_bits(int type);        // b (bits per code / per trellis sample)
bool         tq_type_is_trellis(int type);  // vtqb_2, vtqb_3
size_t       tq_row_size(int type, int64_t n_per_row);

// Checks a row of blocks: nbytes is a whole number of blocks, every fp16 scale (and outlier value)
// is finite, outlier positions < 64; a ktqp block's profile index is in its table. Prints the first
// problem to stderr (like ggml_validate_row_data).
bool tq_validate_row(int type, const void * data, size_t nbytes);

// Generic entry points (type = enum tq_type). k / n_per_row must be multiples of QK_TQ (else abort).
void   tq_quantize_row_ref(int type, const float * x, void * y, int64_t k);
void   tq_dequantize_row(int type, const void * x, float * y, int64_t k);
size_t tq_quantize(int type, const float * src, void * dst, int64_t nrows, int64_t n_per_row,
                   const float * imatrix);

// Trellis encoder core (exposed for tests and benchmarks): tail-biting Viterbi of one block of
// QK_TQ samples y (already divided by the scale) against the unit table of k, with per-sample weights
// w (NULL = all 1; weight-0 samples are free). Writes the QK_TQ*k/8 stream bytes to qs and returns the
// path's cost sum_i w_i (y_i - table[state_i])^2. *passes (optional) receives the number of 64-step
// Viterbi passes run. Modes:
//   TQ_VITERBI_TWO_PASS    (the encoder of the quantize functions) a free pass over the block rotated by
//                          32 samples fixes the tail-biting overlap, a constrained pass encodes: 2 passes;
//   TQ_VITERBI_EXACT       optimal tail-biting path by branch and bound (1 + about 12 passes on average);
//   TQ_VITERBI_EXHAUSTIVE  optimal by trying all 2^(L-k) = 64 overlaps (64 passes; for cross-checks).
enum tq_viterbi_mode {
    TQ_VITERBI_TWO_PASS   = 0,
    TQ_VITERBI_EXACT      = 1,
    TQ_VITERBI_EXHAUSTIVE = 2,
};
float tq_trellis_viterbi(int k, const float * y, const float * w, uint8_t * qs, int mode, int * passes);

// ---- per-type functions with ggml's signatures ---------------------------------------------------

void quantize_row_ktq2_ref(const float * x, void * y, int64_t k);
void quantize_row_ktq3_ref(const float * x, void * y, int64_t k);
void quantize_row_ktq4_ref(const float * x, void * y, int64_t k);
void quantize_row_vtq2_1_ref(const float * x, void * y, int64_t k);
void quantize_row_vtq3_1_ref(const float * x, void * y, int64_t k);
void quantize_row_vtq4_1_ref(const float * x, void * y, int64_t k);
void quantize_row_vtq2_2_ref(const float * x, void * y, int64_t k);
void quantize_row_vtq3_2_ref(const float * x, void * y, int64_t k);
void quantize_row_vtq4_2_ref(const float * x, void * y, int64_t k);
void quantize_row_vtq2_3_ref(const float * x, void * y, int64_t k);
void quantize_row_vtq3_3_ref(const float * x, void * y, int64_t k);
void quantize_row_vtq4_3_ref(const float * x, void * y, int64_t k);
void quantize_row_ktqp2_ref(const float * x, void * y, int64_t k);
void quantize_row_ktqp3_ref(const float * x, void * y, int64_t k);

void dequantize_row_ktq2(const void * x, float * y, int64_t k);
void dequantize_row_ktq3(const void * x, float * y, int64_t k);
void dequantize_row_ktq4(const void * x, float * y, int64_t k);
void dequantize_row_vtq2_1(const void * x, float * y, int64_t k);
void dequantize_row_vtq3_1(const void * x, float * y, int64_t k);
void dequantize_row_vtq4_1(const void * x, float * y, int64_t k);
void dequantize_row_vtq2_2(const void * x, float * y, int64_t k);
void dequantize_row_vtq3_2(const void * x, float * y, int64_t k);
void dequantize_row_vtq4_2(const void * x, float * y, int64_t k);
void dequantize_row_vtq2_3(const void * x, float * y, int64_t k);
void dequantize_row_vtq3_3(const void * x, float * y, int64_t k);
void dequantize_row_vtq4_3(const void * x, float * y, int64_t k);
void dequantize_row_ktqp2(const void * x, float * y, int64_t k);
void dequantize_row_ktqp3(const void * x, float * y, int64_t k);

// imatrix is accepted and ignored. Returns nrows * row size in bytes.
size_t quantize_ktq2(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_ktq3(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_ktq4(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_vtq2_1(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_vtq3_1(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_vtq4_1(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_vtq2_2(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_vtq3_2(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_vtq4_2(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_vtq2_3(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_vtq3_3(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_vtq4_3(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_ktqp2(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);
size_t quantize_ktqp3(const float * src, void * dst, int64_t nrows, int64_t n_per_row, const float * imatrix);

// K-side dot products, vec_dot_type = GGML_TYPE_F32: *s = sum_j x̂_j * y_j over n elements, computed as
// d * sum q_j * level[code_j] per block (K is never dequantized to a buffer). nrc must be 1.
void ggml_vec_dot_ktq2_f32(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_ktq3_f32(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_ktq4_f32(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_ktqp2_f32(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);
void ggml_vec_dot_ktqp3_f32(int n, float * s, size_t bs, const void * vx, size_t bx, const void * vy, size_t by, int nrc);

#ifdef __cplusplus
}
#endif
