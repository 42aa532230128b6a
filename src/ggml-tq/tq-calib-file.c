// llama-tq: calibration files, see tq-calib-file.h.
#include "tq-calib-file.h"

#include "ggml.h"
#include "gguf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void tq_calib_err(char * err, size_t err_size, const char * fmt, ...) {
    if (!err || err_size == 0) {
        return;
    }
    va_list args;
    va_start(args, fmt);
    vsnprintf(err, err_size, fmt, args);
    va_end(args);
}

bool tq_calib_open(const char * path, const char * version_key, uint32_t version, const char * producer,
                   struct gguf_context ** gguf, struct ggml_context ** data, char * arch, size_t arch_size,
                   char * err, size_t err_size) {
    *data = NULL;
    struct gguf_init_params params = { /*.no_alloc =*/ false, /*.ctx =*/ data };
    *gguf = gguf_init_from_file(path, params);
    if (!*gguf) {
        tq_calib_err(err, err_size, "%s: not a readable GGUF file", path);
        goto fail;
    }
    const int64_t kv = gguf_find_key(*gguf, version_key);
    if (kv < 0 || gguf_get_kv_type(*gguf, kv) != GGUF_TYPE_UINT32) {
        tq_calib_err(err, err_size, "%s: no %s (not a file from `tq-calibrate %s`)", path, version_key, producer);
        goto fail;
    }
    if (gguf_get_val_u32(*gguf, kv) != version) {
        tq_calib_err(err, err_size, "%s: %s file version %u, this build reads version %u", path, producer,
                     gguf_get_val_u32(*gguf, kv), version);
        goto fail;
    }
    const int64_t ka = gguf_find_key(*gguf, "general.architecture");
    if (ka < 0 || gguf_get_kv_type(*gguf, ka) != GGUF_TYPE_STRING) {
        tq_calib_err(err, err_size, "%s: no general.architecture", path);
        goto fail;
    }
    snprintf(arch, arch_size, "%s", gguf_get_val_str(*gguf, ka));
    return true;

fail:  // err says why
    if (*gguf) {
        gguf_free(*gguf);
        *gguf = NULL;
    }
    if (*data) {
        ggml_free(*data);
        *data = NULL;
    }
    return false;
}

int tq_calib_layer_of(const char * name, const char * prefix) {
    const size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0 || name[n] != '.') {
        return -1;
    }
    int          il   = -1;
    char         tail = 0;
    char         canon[128];
    const char * num  = name + n + 1;
    if (sscanf(num, "%9d%c", &il, &tail) != 1 || il < 0) {
        return -1;
    }
    snprintf(canon, sizeof(canon), "%d", il);
    return strcmp(canon, num) == 0 ? il : -1;
}
