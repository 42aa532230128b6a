// llama-tq: the ktqp calibration file, see tq-k-profiles.h.
#include "tq-k-profiles.h"

#include "tq-calib-file.h"

#include "ggml.h"
#include "gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tq_k_profiles {
    struct gguf_context * gguf;
    struct ggml_context * data;
    char                  arch[128];
    tq_kprof_table *      tables[2];  // ktqp2, ktqp3; NULL if the file has none
};

void tq_k_profiles_free(tq_k_profiles * p) {
    if (!p) {
        return;
    }
    if (p->gguf) {
        gguf_free(p->gguf);
    }
    if (p->data) {
        ggml_free(p->data);
    }
    free(p->tables[0]);
    free(p->tables[1]);
    free(p);
}

static const struct ggml_tensor * k_profiles_tensor(const tq_k_profiles * p, const char * name) {
    return ggml_get_tensor(p->data, name);
}

static bool k_profiles_all_positive(const struct ggml_tensor * t) {
    const float * x = (const float *) t->data;
    for (int64_t j = 0; j < ggml_nelements(t); ++j) {
        if (!isfinite(x[j]) || !(x[j] > 0.0f)) {
            return false;
        }
    }
    return true;
}

// the table of one width from kprof<width>.bits / .scale and kprof.levels; true if the file has none
static bool k_profiles_table(tq_k_profiles * p, const char * path, int width, char * err, size_t err_size) {
    char bits_name[32];
    char scale_name[32];
    snprintf(bits_name, sizeof(bits_name), "kprof%d.bits", width);
    snprintf(scale_name, sizeof(scale_name), "kprof%d.scale", width);
    const struct ggml_tensor * bits   = k_profiles_tensor(p, bits_name);
    const struct ggml_tensor * scale  = k_profiles_tensor(p, scale_name);
    const struct ggml_tensor * levels = k_profiles_tensor(p, "kprof.levels");
    if (!bits && !scale) {
        return true;
    }
    if (!bits || !scale || !levels) {
        tq_calib_err(err, err_size, "%s: %s needs %s, %s and kprof.levels", path, bits ? bits_name : scale_name,
                     bits_name, scale_name);
        return false;
    }
    if (bits->type != GGML_TYPE_I8 || bits->ne[0] != 64 || bits->ne[2] != 1 || bits->ne[3] != 1 ||
        scale->type != GGML_TYPE_F32 || !ggml_are_same_shape(bits, scale) || levels->type != GGML_TYPE_F32 ||
        ggml_nelements(levels) != TQ_KPROF_N_LEVELS) {
        tq_calib_err(err, err_size, "%s: %s must be I8 [64, n_profiles], %s F32 of its shape and kprof.levels F32 "
                     "[%d]", path, bits_name, scale_name, TQ_KPROF_N_LEVELS);
        return false;
    }
    const int64_t   n  = ggml_nelements(bits);
    uint8_t *       b8 = (uint8_t *) malloc((size_t) n);
    tq_kprof_table * t = (tq_kprof_table *) malloc(sizeof(tq_kprof_table));
    if (!b8 || !t) {
        free(b8);
        free(t);
        tq_calib_err(err, err_size, "out of memory");
        return false;
    }
    const int8_t * src = (const int8_t *) bits->data;
    bool           ok  = true;
    for (int64_t i = 0; i < n; ++i) {
        ok = ok && src[i] >= 0;
        b8[i] = (uint8_t) (src[i] < 0 ? 0 : src[i]);
    }
    // tq_kprof_init prints what is wrong with the table
    ok = ok && tq_kprof_init(t, (int32_t) bits->ne[1], 64 * width + 16, b8, (const float *) scale->data,
                             (const float *) levels->data);
    free(b8);
    if (!ok) {
        free(t);
        tq_calib_err(err, err_size, "%s: the ktqp%d table (%s, %s, kprof.levels) is invalid: negative bits, or see "
                     "the tq_kprof_init message above", path, width, bits_name, scale_name);
        return false;
    }
    p->tables[width - 2] = t;
    return true;
}

tq_k_profiles * tq_k_profiles_load(const char * path, char * err, size_t err_size) {
    tq_k_profiles * p = (tq_k_profiles *) calloc(1, sizeof(tq_k_profiles));
    if (!p) {
        tq_calib_err(err, err_size, "out of memory");
        return NULL;
    }
    if (!tq_calib_open(path, "llama_tq.k_profiles.version", TQ_K_PROFILES_VERSION, "k-profiles", &p->gguf,
                       &p->data, p->arch, sizeof(p->arch), err, err_size)) {
        goto fail;
    }
    for (int64_t i = 0; i < gguf_get_n_tensors(p->gguf); ++i) {
        const char *               name = gguf_get_tensor_name(p->gguf, i);
        const struct ggml_tensor * t    = k_profiles_tensor(p, name);
        if (tq_calib_layer_of(name, "k_fold") >= 0) {
            if (!t || t->type != GGML_TYPE_F32 || t->ne[2] != 1 || t->ne[3] != 1) {
                tq_calib_err(err, err_size, "%s: tensor '%s' must be F32 [n_embd_head_k, n_head_kv]", path, name);
                goto fail;
            }
            if (!k_profiles_all_positive(t)) {
                tq_calib_err(err, err_size, "%s: tensor '%s' holds a value that is not finite and positive", path,
                             name);
                goto fail;
            }
        } else if (strcmp(name, "kprof.levels") != 0 && strcmp(name, "kprof2.bits") != 0 &&
                   strcmp(name, "kprof2.scale") != 0 && strcmp(name, "kprof3.bits") != 0 &&
                   strcmp(name, "kprof3.scale") != 0) {
            tq_calib_err(err, err_size, "%s: unexpected tensor '%s' (k_fold.<layer>, kprof.levels, kprof2.bits, "
                         "kprof2.scale, kprof3.bits, kprof3.scale)", path, name);
            goto fail;
        }
    }
    for (int w = 2; w <= 3; ++w) {
        if (!k_profiles_table(p, path, w, err, err_size)) {
            goto fail;
        }
    }
    if (!p->tables[0] && !p->tables[1]) {
        tq_calib_err(err, err_size, "%s: no profile table (kprof2.bits / kprof3.bits)", path);
        goto fail;
    }
    return p;

fail:  // err says why
    tq_k_profiles_free(p);
    return NULL;
}

const char * tq_k_profiles_arch(const tq_k_profiles * p) {
    return p->arch;
}

const float * tq_k_profiles_fold(const tq_k_profiles * p, int il, int64_t * n_embd_head, int64_t * n_head) {
    char name[32];
    snprintf(name, sizeof(name), "k_fold.%d", il);
    const struct ggml_tensor * t = k_profiles_tensor(p, name);
    if (!t) {
        return NULL;
    }
    *n_embd_head = t->ne[0];
    *n_head      = t->ne[1];
    return (const float *) t->data;
}

const tq_kprof_table * tq_k_profiles_table(const tq_k_profiles * p, int width) {
    return width >= 2 && width <= 3 ? p->tables[width - 2] : NULL;
}
