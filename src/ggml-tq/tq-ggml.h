// llama-tq: how ggml sees the ktq / vtq KV-cache types.
//
// The patched ggml sources include this header and expand the macros below at the few places where
// ggml enumerates its types (type traits, CPU traits, quantize_chunk, validate_row_data, get_rows).
// The formats themselves live in tq-quants.h / tq-*.c; docs/formats.md is their contract.
//
// The GGML_TYPE_KTQ2 ... GGML_TYPE_KTQP3 enum values are contiguous and in enum tq_type order, so
// a ggml type maps to a tq type by subtraction. TQ_GGML_FIRST .. TQ_GGML_LAST (ktq, vtq) are the types
// of tq_cuda_fmt and the compiled decode kernels; the profile K types ktqp2/3 that follow (TQ_GGML_IS_KP)
// have their own CUDA kernels (tq-kprof-cuda.cuh: encoder and converters, attention through f16).
// TQ_GGML_ON_CUDA: the types whose ops ggml-cuda's hooks hand to llama-tq (tq-cuda.cuh).
#pragma once

#include "ggml.h"
#include "tq-quants.h"

#define TQ_GGML_FIRST GGML_TYPE_KTQ2
#define TQ_GGML_LAST  GGML_TYPE_VTQ4_3

#define TQ_GGML_IS_TQ(t)   ((int) (t) >= (int) TQ_GGML_FIRST && (int) (t) <= (int) TQ_GGML_LAST)
#define TQ_GGML_TO_TQ(t)   ((int) (t) - (int) TQ_GGML_FIRST)
#define TQ_GGML_IS_K(t)    ((int) (t) >= (int) GGML_TYPE_KTQ2 && (int) (t) <= (int) GGML_TYPE_KTQ4)
#define TQ_GGML_IS_KP(t)   ((int) (t) == (int) GGML_TYPE_KTQP2 || (int) (t) == (int) GGML_TYPE_KTQP3)
#define TQ_GGML_ON_CUDA(t) (TQ_GGML_IS_TQ(t) || TQ_GGML_IS_KP(t))
#define TQ_GGML_KP_WIDTH(t) ((int) (t) == (int) GGML_TYPE_KTQP2 ? 2 : 3)

// X(GGML suffix, name) for every type, K types first.
#define TQ_GGML_FOR_EACH_K(X) X(KTQ2, ktq2) X(KTQ3, ktq3) X(KTQ4, ktq4)
#define TQ_GGML_FOR_EACH_V(X)                                                                              \
    X(VTQ2_1, vtq2_1) X(VTQ3_1, vtq3_1) X(VTQ4_1, vtq4_1)                                                  \
    X(VTQ2_2, vtq2_2) X(VTQ3_2, vtq3_2) X(VTQ4_2, vtq4_2)                                                  \
    X(VTQ2_3, vtq2_3) X(VTQ3_3, vtq3_3) X(VTQ4_3, vtq4_3)
#define TQ_GGML_FOR_EACH(X) TQ_GGML_FOR_EACH_K(X) TQ_GGML_FOR_EACH_V(X)
#define TQ_GGML_FOR_EACH_KP(X) X(KTQP2, ktqp2) X(KTQP3, ktqp3)

// ggml.c: type_traits[] entries
#define TQ_GGML_TRAITS_ENTRY(T, t)                                   \
    [GGML_TYPE_##T] = {                                              \
        .type_name      = #t,                                        \
        .blck_size      = QK_TQ,                                     \
        .type_size      = sizeof(block_##t),                         \
        .is_quantized   = true,                                      \
        .to_float       = (ggml_to_float_t) dequantize_row_##t,      \
        .from_float_ref = (ggml_from_float_t) quantize_row_##t##_ref, \
    },
#define TQ_GGML_TYPE_TRAITS TQ_GGML_FOR_EACH(TQ_GGML_TRAITS_ENTRY) TQ_GGML_FOR_EACH_KP(TQ_GGML_TRAITS_ENTRY)

// ggml-cpu.c: type_traits_cpu[] entries. K types dot Q (kept in F32) straight from their codes; V types
// only need from_float (SET_ROWS, CPY): flash attention reads them through to_float.
#define TQ_GGML_CPU_K_ENTRY(T, t)                         \
    [GGML_TYPE_##T] = {                                   \
        .from_float   = quantize_row_##t##_ref,           \
        .vec_dot      = ggml_vec_dot_##t##_f32,           \
        .vec_dot_type = GGML_TYPE_F32,                    \
        .nrows        = 1,                                \
    },
#define TQ_GGML_CPU_V_ENTRY(T, t)                \
    [GGML_TYPE_##T] = {                          \
        .from_float = quantize_row_##t##_ref,    \
    },
#define TQ_GGML_CPU_TRAITS                                                                                 \
    TQ_GGML_FOR_EACH_K(TQ_GGML_CPU_K_ENTRY) TQ_GGML_FOR_EACH_V(TQ_GGML_CPU_V_ENTRY)                         \
    TQ_GGML_FOR_EACH_KP(TQ_GGML_CPU_K_ENTRY)

// `case` labels for switches over types; with TQ_GGML_TO_TQ(type) the generic tq_quantize(),
// tq_validate_row() ... of tq-quants.h serve every type in one case
#define TQ_GGML_CASE_LABEL(T, t) case GGML_TYPE_##T:
#define TQ_GGML_CASES TQ_GGML_FOR_EACH(TQ_GGML_CASE_LABEL) TQ_GGML_FOR_EACH_KP(TQ_GGML_CASE_LABEL)

// The cache-type names the tools accept: every ktq/vtq type name, plus "vtq2", "vtq3", "vtq4" for the
// default V variant (the trellis, vtqb_2). GGML_TYPE_COUNT if the name is none of these.
static inline enum ggml_type tq_ggml_type_from_name(const char * name) {
    static const struct { const char * alias; enum ggml_type type; } aliases[] = {
        { "vtq2", GGML_TYPE_VTQ2_2 }, { "vtq3", GGML_TYPE_VTQ3_2 }, { "vtq4", GGML_TYPE_VTQ4_2 },
    };
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); ++i) {
        if (strcmp(name, aliases[i].alias) == 0) {
            return aliases[i].type;
        }
    }
    for (int t = TQ_GGML_FIRST; t <= GGML_TYPE_KTQP3; ++t) {
        if (strcmp(name, ggml_type_name((enum ggml_type) t)) == 0) {
            return (enum ggml_type) t;
        }
    }
    return GGML_TYPE_COUNT;
}
