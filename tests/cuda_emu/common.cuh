// llama-tq: stands for ggml-cuda's common.cuh when the CUDA decode kernel is compiled for the host emulation
// (tests/cuda_emu): the real src/ggml-tq/cuda/tq-fattn.cuh includes "common.cuh" and finds this one, which
// gives what the kernel takes from ggml-cuda (the emulated CUDA features, the primary template of the type
// traits, the declared host types) and then, as the patched common.cuh does, tq-cuda-common.cuh.
#pragma once

#include "cuda_emu.h"
#include "ggml.h"

template <ggml_type type>
struct ggml_cuda_type_traits;

typedef struct emu_stream * cudaStream_t;
struct ggml_backend_cuda_context;

// programmatic dependent launch: one grid at a time here, so nothing to wait for
#define GGML_CUDA_RESTRICT __restrict__
static inline void ggml_cuda_pdl_sync() {}
static inline void ggml_cuda_pdl_lc() {}

#include "tq-cuda-common.cuh"
