// llama-tq: per-layer KV-cache types. Low-bit K (and V) errors are not spread evenly over a model's layers;
// keeping a few layers at a higher precision (community finding: the first and the last ones) costs few bits
// on average. LLAMA_TQ_K_LAYERS / LLAMA_TQ_V_LAYERS give the cache type of chosen layers; every other layer
// keeps the type of -ctk / -ctv.
//
// Syntax: RULE[;RULE...], RULE = LAYERS=TYPE, LAYERS = a comma-separated list of layer indices or ranges A-B
// (inclusive); a negative index counts from the end (-1 is the last layer, so "0,-1=q8_0" keeps the first and
// the last layer at q8_0; layers of a model's multi-token-prediction head are not counted). A later rule
// overrides an earlier one. TYPE is a KV-cache type name as -ctk takes it.
#pragma once

#include "ggml.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Fills types[il] for il < n_layer: the rule's type, or GGML_TYPE_COUNT where no rule names the layer.
// Returns 0, or -1 with the reason (the rule and what is wrong with it) in err.
int tq_layer_types_parse(const char * spec, int n_layer, enum ggml_type * types, char * err, size_t err_size);

// true if spec parses and gives some layer a quantized type (llama.cpp asks this of LLAMA_TQ_V_LAYERS: a
// quantized V cache needs flash attention); a spec that does not parse gives false (the cache reports it)
bool tq_layer_types_any_quantized(const char * spec, int n_layer);

// the KV-cache type called `name` (f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1, ktq*, vtq*), or
// GGML_TYPE_COUNT
enum ggml_type tq_kv_type_from_name(const char * name);

#ifdef __cplusplus
}
#endif
