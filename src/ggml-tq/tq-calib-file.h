// llama-tq: what the calibration files of `tq-calibrate` (k-means, k-profiles) share: a GGUF with a version
// key and general.architecture, read whole (internal to src/ggml-tq).
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct gguf_context;
struct ggml_context;

// printf into err (err_size bytes; nothing if err is NULL)
void tq_calib_err(char * err, size_t err_size, const char * fmt, ...);

// Opens path with its tensor data, checks that the u32 key version_key is version and copies
// general.architecture into arch. On failure returns false with err naming the file and the problem (a file
// without version_key is "not a file from `tq-calibrate <producer>`"); *gguf and *data are then NULL.
bool tq_calib_open(const char * path, const char * version_key, uint32_t version, const char * producer,
                   struct gguf_context ** gguf, struct ggml_context ** data, char * arch, size_t arch_size,
                   char * err, size_t err_size);

// Layer index of a tensor named "<prefix>.<il>" exactly (no sign, no leading zeros, nothing after), or -1.
int tq_calib_layer_of(const char * name, const char * prefix);

#ifdef __cplusplus
}
#endif
