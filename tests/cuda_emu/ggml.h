// llama-tq: the part of ggml.h that src/ggml-tq/tq-ggml.h needs, for the host emulation of the CUDA decode
// kernel (tests/cuda_emu). The enum values are those of the patched ggml.h (patches/0003, 0025): the llama-tq
// types are contiguous and in enum tq_type order, which is all that tq-ggml.h relies on.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ggml_type {
    GGML_TYPE_F32     = 0,
    GGML_TYPE_F16     = 1,
    GGML_TYPE_KTQ2    = 43,
    GGML_TYPE_KTQ3    = 44,
    GGML_TYPE_KTQ4    = 45,
    GGML_TYPE_VTQ2_1  = 46,
    GGML_TYPE_VTQ3_1  = 47,
    GGML_TYPE_VTQ4_1  = 48,
    GGML_TYPE_VTQ2_2  = 49,
    GGML_TYPE_VTQ3_2  = 50,
    GGML_TYPE_VTQ4_2  = 51,
    GGML_TYPE_VTQ2_3  = 52,
    GGML_TYPE_VTQ3_3  = 53,
    GGML_TYPE_VTQ4_3  = 54,
    GGML_TYPE_KTQP2   = 55,
    GGML_TYPE_KTQP3   = 56,
    GGML_TYPE_COUNT   = 57,
};

struct ggml_tensor;

const char * ggml_type_name(enum ggml_type type);  // declared only: tq-ggml.h names it in an unused inline

#ifdef __cplusplus
}
#endif
