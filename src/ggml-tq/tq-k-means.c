// llama-tq: K centering, see tq-k-means.h.
#include "tq-k-means.h"

#include "tq-calib-file.h"

#include "ggml.h"
#include "gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tq_k_means {
    struct gguf_context * gguf;
    struct ggml_context * data;
    char                  arch[128];
};

void tq_k_means_free(tq_k_means * m) {
    if (!m) {
        return;
    }
    if (m->gguf) {
        gguf_free(m->gguf);
    }
    if (m->data) {
        ggml_free(m->data);
    }
    free(m);
}

tq_k_means * tq_k_means_load(const char * path, char * err, size_t err_size) {
    tq_k_means * m = (tq_k_means *) calloc(1, sizeof(tq_k_means));
    if (!m) {
        tq_calib_err(err, err_size, "out of memory");
        return NULL;
    }
    if (!tq_calib_open(path, "llama_tq.k_means.version", TQ_K_MEANS_VERSION, "k-means", &m->gguf, &m->data, m->arch,
                       sizeof(m->arch), err, err_size)) {
        goto fail;
    }

    for (int64_t i = 0; i < gguf_get_n_tensors(m->gguf); ++i) {
        const char *         name = gguf_get_tensor_name(m->gguf, i);
        struct ggml_tensor * t    = ggml_get_tensor(m->data, name);
        if (tq_calib_layer_of(name, "k_mean") < 0) {
            tq_calib_err(err, err_size, "%s: unexpected tensor '%s' (only k_mean.<layer>)", path, name);
            goto fail;
        }
        if (!t || t->type != GGML_TYPE_F32 || t->ne[2] != 1 || t->ne[3] != 1) {
            tq_calib_err(err, err_size, "%s: tensor '%s' must be F32 [n_embd_head_k, n_head_kv]", path, name);
            goto fail;
        }
        const float * x = (const float *) t->data;
        for (int64_t j = 0; j < ggml_nelements(t); ++j) {
            if (!isfinite(x[j])) {
                tq_calib_err(err, err_size, "%s: tensor '%s' holds a non-finite value at %lld", path, name,
                         (long long) j);
                goto fail;
            }
        }
    }
    return m;

fail:  // err says why
    tq_k_means_free(m);
    return NULL;
}

const char * tq_k_means_arch(const tq_k_means * m) {
    return m->arch;
}

const float * tq_k_means_layer(const tq_k_means * m, int il, int64_t * n_embd_head, int64_t * n_head) {
    char name[32];
    snprintf(name, sizeof(name), "k_mean.%d", il);
    const struct ggml_tensor * t = ggml_get_tensor(m->data, name);
    if (!t) {
        return NULL;
    }
    *n_embd_head = t->ne[0];
    *n_head      = t->ne[1];
    return (const float *) t->data;
}

// mean over p = 0 .. n-1 of (cos(p a), sin(p a)) in closed form: sum_p e^{i p a} = (1 - e^{i n a}) / (1 - e^{i a})
static void tq_mean_phasor(double a, int64_t n, double * c, double * s) {
    const double h = 0.5 * a;
    if (fabs(sin(h)) < 1e-12) {
        *c = 1.0;  // a is a multiple of 2 pi (0 included): every term is 1
        *s = 0.0;
        return;
    }
    // sum = sin(n h) / sin(h) * e^{i (n - 1) h}
    const double r = sin((double) n * h) / (sin(h) * (double) n);
    *c = r * cos((double) (n - 1) * h);
    *s = r * sin((double) (n - 1) * h);
}

void tq_rope_position_mean(float * dst, const float * mu, int64_t n_embd_head, int64_t n_head, int n_rot,
                           bool neox, float freq_base, float freq_scale, int64_t n_pos) {
    const int half = n_rot / 2;
    for (int64_t h = 0; h < n_head; ++h) {
        const float * x = mu + h * n_embd_head;
        float *       y = dst + h * n_embd_head;
        for (int i = 0; i < half; ++i) {
            const double theta = (double) freq_scale * pow((double) freq_base, -2.0 * i / (double) n_rot);
            double       c, s;
            tq_mean_phasor(theta, n_pos > 0 ? n_pos : 1, &c, &s);
            const int    i0 = neox ? i : 2 * i;
            const int    i1 = neox ? i + half : 2 * i + 1;
            const double x0 = x[i0];
            const double x1 = x[i1];
            y[i0]           = (float) (x0 * c - x1 * s);
            y[i1]           = (float) (x0 * s + x1 * c);
        }
        for (int64_t j = 2 * half; j < n_embd_head; ++j) {
            y[j] = x[j];
        }
    }
}

void tq_hadamard_blocks(float * x, int64_t n, int nrot) {
    const float scale = 1.0f / sqrtf((float) nrot);
    for (int64_t b = 0; b + nrot <= n; b += nrot) {
        float * v = x + b;
        for (int len = 1; len < nrot; len *= 2) {
            for (int i = 0; i < nrot; i += 2 * len) {
                for (int j = i; j < i + len; ++j) {
                    const float u = v[j];
                    const float w = v[j + len];
                    v[j]          = u + w;
                    v[j + len]    = u - w;
                }
            }
        }
        for (int i = 0; i < nrot; ++i) {
            v[i] *= scale;
        }
    }
}
