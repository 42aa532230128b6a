// llama-tq: backward passes that upstream ggml lacks, built from existing ggml ops (so every backend that runs
// those ops runs the backward pass too). Called from ggml_compute_backward (ggml/src/ggml.c, llama-tq patch).
#pragma once

#include "ggml.h"

#ifdef __cplusplus
extern "C" {
#endif

// y = ggml_ssm_conv(sx, c): y[i, t, s] = sum_k sx[t + k, i, s] * c[k, i]
//   sx [d_conv - 1 + n_t, d_inner, n_s], c [d_conv, d_inner], y [d_inner, n_t, n_s]; grad = dL/dy.
// dL/dsx is a full convolution of grad with c reversed in time; dL/dc sums grad * shifted sx over t and s.
struct ggml_tensor * tq_ssm_conv_back_sx(struct ggml_context * ctx, struct ggml_tensor * sx, struct ggml_tensor * c,
                                         struct ggml_tensor * grad);
struct ggml_tensor * tq_ssm_conv_back_c(struct ggml_context * ctx, struct ggml_tensor * sx, struct ggml_tensor * c,
                                        struct ggml_tensor * grad);

// y = ggml_concat(a, b, dim): the gradient of src (a or b) is the slice of grad that src filled, starting at
// element `offset` along dim (0 for a, a->ne[dim] for b).
struct ggml_tensor * tq_concat_back(struct ggml_context * ctx, struct ggml_tensor * grad, struct ggml_tensor * src,
                                    int dim, int64_t offset);

#ifdef __cplusplus
}
#endif
