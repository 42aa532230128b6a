// llama-tq: CUDA kernels of the ktq / vtq KV-cache types, as seen by ggml-cuda's hooks.
//
// The upstream files only branch here when a tensor has one of our types (TQ_GGML_ON_CUDA: ktq, vtq, ktqp):
//   convert.cu      ggml_get_to_{fp16,fp32,bf16}[_nc]_cuda  -> tq_cuda_get_to_*   (FA prefill, K-shift cast)
//   getrows.cu      get_rows_cuda                            -> tq_cuda_get_rows
//   set-rows.cu     ggml_cuda_op_set_rows                    -> tq_cuda_set_rows   (the KV-cache write)
//   cpy.cu          ggml_cuda_cpy                            -> tq_cuda_cpy        (F32 <-> type)
//   ggml-cuda.cu    supports_op                              -> tq_cuda_supports_op
//                   graph evaluation, before upstream's fusions  -> tq_cuda_try_fuse   (K + V writes, one launch)
//   fattn.cu        ggml_cuda_fattn_kv_type_supported        (all types allowed: prefill and pairs
//                                                              without a decode kernel convert K/V to f16)
//                   tq_cuda_fattn_applies / tq_cuda_fattn    -> decode of compiled pairs (tq-fattn.cuh)
// Encoders run on the GPU and follow the CPU reference (src/ggml-tq) step for step, one warp per block:
// the scalar codebook quantizer with warp-reduced sums, the tail-biting two-pass Viterbi of the trellis
// types over all 2^L states (same tie rules). Sums over a block are taken in another order than on the
// CPU, so an encoding can differ where two candidates are within rounding of each other (test-backend-ops
// allows the difference of two good encodings). tq-cuda.cu is built with -fmad=false.
#pragma once

#include "common.cuh"
#include "convert.cuh"

to_fp16_cuda_t    tq_cuda_get_to_fp16(ggml_type type);
to_fp32_cuda_t    tq_cuda_get_to_fp32(ggml_type type);
to_bf16_cuda_t    tq_cuda_get_to_bf16(ggml_type type);
to_fp16_nc_cuda_t tq_cuda_get_to_fp16_nc(ggml_type type);
to_fp32_nc_cuda_t tq_cuda_get_to_fp32_nc(ggml_type type);
to_bf16_nc_cuda_t tq_cuda_get_to_bf16_nc(ggml_type type);

// same arguments as get_rows_cuda (getrows.cu); src0_type is a llama-tq type
void tq_cuda_get_rows(const void * src0_d, ggml_type src0_type, const int32_t * src1_d, void * dst_d, ggml_type dst_type,
                      int64_t ne00, size_t nb01, size_t nb02, size_t nb03,
                      int64_t ne10, int64_t ne11, int64_t ne12, size_t nb10, size_t nb11, size_t nb12,
                      size_t nb1, size_t nb2, size_t nb3, cudaStream_t stream);

// SET_ROWS into a llama-tq type (src0 F32, indices I32 or I64)
void tq_cuda_set_rows(ggml_backend_cuda_context & ctx, ggml_tensor * dst);

// If nodes i .. i + 2 of cgraph are a decode step's K and V cache writes (SET_ROWS into ktq*, VIEW, SET_ROWS into
// a trellis vtq*), encodes both in one launch and returns 2 (the nodes to skip); else 0.
// LLAMA_TQ_CUDA_NO_KV_FUSION=1 (or GGML_CUDA_DISABLE_FUSION=1) turns it off.
int tq_cuda_try_fuse(ggml_backend_cuda_context & ctx, const ggml_cgraph * cgraph, int i);

// CPY F32 -> type, type -> F32 (other pairs: GGML_ABORT)
void tq_cuda_cpy(ggml_backend_cuda_context & ctx, const ggml_tensor * src0, ggml_tensor * src1);

// true if op involves a llama-tq type in an op that this file implements (GET_ROWS, SET_ROWS, CPY, DUP);
// *supported then says whether this op's shapes/types are supported. false: not ours, upstream decides.
bool tq_cuda_supports_op(const ggml_tensor * op, bool * supported);
