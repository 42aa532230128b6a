// llama-tq: backward passes that upstream ggml lacks, composed of existing ggml ops (see tq-grad.h).

#include "tq-grad.h"

// c [d_conv, d_inner] with its first axis reversed: c_rev[j, i] = c[d_conv - 1 - j, i]
static struct ggml_tensor * tq_reverse_rows(struct ggml_context * ctx, struct ggml_tensor * c) {
    const int64_t d_conv = c->ne[0];
    struct ggml_tensor * out = NULL;
    for (int64_t k = d_conv - 1; k >= 0; --k) {
        struct ggml_tensor * col = ggml_cont(ctx, ggml_view_2d(ctx, c, 1, c->ne[1], c->nb[1], k*c->nb[0]));
        out = out ? ggml_concat(ctx, out, col, 0) : col;
    }
    return out;
}

struct ggml_tensor * tq_ssm_conv_back_sx(struct ggml_context * ctx, struct ggml_tensor * sx, struct ggml_tensor * c,
                                         struct ggml_tensor * grad) {
    const int d_conv = (int) c->ne[0];
    // grad [d_inner, n_t, n_s] -> time first [n_t, d_inner, n_s], zero-padded by d_conv - 1 on both sides:
    // dsx[tau, i, s] = sum_k grad[i, tau - k, s] * c[k, i] = ssm_conv(padded, c reversed)[i, tau, s]
    struct ggml_tensor * g_t = ggml_cont(ctx, ggml_transpose(ctx, grad));
    struct ggml_tensor * pad = ggml_pad_ext(ctx, g_t, d_conv - 1, d_conv - 1, 0, 0, 0, 0, 0, 0);
    struct ggml_tensor * conv = ggml_ssm_conv(ctx, pad, tq_reverse_rows(ctx, c)); // [d_inner, n_t + d_conv - 1, n_s]
    struct ggml_tensor * dsx = ggml_cont(ctx, ggml_transpose(ctx, conv));
    GGML_ASSERT(ggml_are_same_shape(dsx, sx));
    return dsx;
}

struct ggml_tensor * tq_ssm_conv_back_c(struct ggml_context * ctx, struct ggml_tensor * sx, struct ggml_tensor * c,
                                        struct ggml_tensor * grad) {
    const int64_t d_conv  = c->ne[0];
    const int64_t d_inner = c->ne[1];
    const int64_t n_t     = grad->ne[1];
    const int64_t n_s     = grad->ne[2];
    struct ggml_tensor * g_t = ggml_cont(ctx, ggml_transpose(ctx, grad)); // [n_t, d_inner, n_s]
    struct ggml_tensor * dc = NULL;
    for (int64_t k = 0; k < d_conv; ++k) {
        // dc[k, i] = sum_{t, s} grad[i, t, s] * sx[t + k, i, s]
        struct ggml_tensor * sx_k = ggml_view_3d(ctx, sx, n_t, d_inner, n_s, sx->nb[1], sx->nb[2], k*sx->nb[0]);
        struct ggml_tensor * prod = ggml_mul(ctx, ggml_cont(ctx, sx_k), g_t);
        struct ggml_tensor * over_t = ggml_reshape_2d(ctx, ggml_sum_rows(ctx, prod), d_inner, n_s); // [d_inner, n_s]
        struct ggml_tensor * col = ggml_sum_rows(ctx, ggml_cont(ctx, ggml_transpose(ctx, over_t)));  // [1, d_inner]
        dc = dc ? ggml_concat(ctx, dc, col, 0) : col;
    }
    GGML_ASSERT(ggml_are_same_shape(dc, c));
    return dc;
}

struct ggml_tensor * tq_concat_back(struct ggml_context * ctx, struct ggml_tensor * grad, struct ggml_tensor * src,
                                    int dim, int64_t offset) {
    GGML_ASSERT(dim >= 0 && dim < GGML_MAX_DIMS);
    struct ggml_tensor * part = ggml_view_4d(ctx, grad, src->ne[0], src->ne[1], src->ne[2], src->ne[3],
                                             grad->nb[1], grad->nb[2], grad->nb[3], offset*grad->nb[dim]);
    return ggml_cont(ctx, part);
}
