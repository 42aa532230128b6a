// llama-tq: per-layer KV-cache types (see tq-layer-types.h)

#include "tq-layer-types.h"

#include "tq-ggml.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const enum ggml_type tq_kv_plain_types[] = {
    GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0,
    GGML_TYPE_Q4_1, GGML_TYPE_IQ4_NL, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
};

enum ggml_type tq_kv_type_from_name(const char * name) {
    for (size_t i = 0; i < sizeof(tq_kv_plain_types) / sizeof(tq_kv_plain_types[0]); ++i) {
        if (strcmp(name, ggml_type_name(tq_kv_plain_types[i])) == 0) {
            return tq_kv_plain_types[i];
        }
    }
    return tq_ggml_type_from_name(name);  // ours, and the vtq2/vtq3/vtq4 aliases
}

// one layer index of a rule: a decimal integer, negative from the end; -1 if it is not one or out of range
static int tq_layer_index(const char * s, size_t len, int n_layer) {
    char buf[32];
    if (len == 0 || len >= sizeof(buf)) {
        return -1;
    }
    for (size_t i = 0; i < len; ++i) {  // digits and one leading '-' only (strtol would also take ' ' and '+')
        if (!(s[i] >= '0' && s[i] <= '9') && !(i == 0 && s[i] == '-' && len > 1)) {
            return -1;
        }
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    char * end = NULL;
    errno = 0;
    const long v = strtol(buf, &end, 10);
    if (errno != 0 || *end != '\0' || end == buf) {
        return -1;
    }
    const long il = v < 0 ? n_layer + v : v;
    return il >= 0 && il < n_layer ? (int) il : -1;
}

// the first '-' that separates A from B in "A-B" (a leading '-' is A's sign, "-3--1" works)
static const char * tq_range_dash(const char * s, size_t len) {
    for (size_t i = 1; i < len; ++i) {
        if (s[i] == '-') {
            return s + i;
        }
    }
    return NULL;
}

static int tq_fail(char * err, size_t err_size, const char * rule, size_t rule_len, const char * what) {
    if (err && err_size > 0) {
        snprintf(err, err_size, "rule '%.*s': %s", (int) rule_len, rule, what);
    }
    return -1;
}

int tq_layer_types_parse(const char * spec, const int n_layer, enum ggml_type * types, char * err,
                         const size_t err_size) {
    for (int il = 0; il < n_layer; ++il) {
        types[il] = GGML_TYPE_COUNT;
    }
    if (!spec) {
        return 0;
    }
    const char * rule = spec;
    while (*rule) {
        const char * rule_end = strchr(rule, ';');
        const size_t rule_len = rule_end ? (size_t) (rule_end - rule) : strlen(rule);
        if (rule_len > 0) {
            const char * eq = memchr(rule, '=', rule_len);
            if (!eq) {
                return tq_fail(err, err_size, rule, rule_len, "expected LAYERS=TYPE");
            }
            if (eq == rule) {
                return tq_fail(err, err_size, rule, rule_len, "no layers before '='");
            }
            char         tname[32];
            const size_t tlen = rule_len - (size_t) (eq + 1 - rule);
            if (tlen == 0 || tlen >= sizeof(tname)) {
                return tq_fail(err, err_size, rule, rule_len, "no cache type after '='");
            }
            memcpy(tname, eq + 1, tlen);
            tname[tlen] = '\0';
            const enum ggml_type type = tq_kv_type_from_name(tname);
            if (type == GGML_TYPE_COUNT) {
                return tq_fail(err, err_size, rule, rule_len,
                               "unknown cache type (valid: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1, "
                               "ktq2, ktq3, ktq4, vtq2, vtq3, vtq4 and vtq*_1, vtq*_2, vtq*_3)");
            }
            const char * item = rule;
            while (item < eq) {
                const char * item_end = memchr(item, ',', (size_t) (eq - item));
                if (!item_end) {
                    item_end = eq;
                }
                const size_t len  = (size_t) (item_end - item);
                const char * dash = tq_range_dash(item, len);
                int          a    = -1;
                int          b    = -1;
                if (dash) {
                    a = tq_layer_index(item, (size_t) (dash - item), n_layer);
                    b = tq_layer_index(dash + 1, (size_t) (item_end - dash - 1), n_layer);
                } else {
                    a = b = tq_layer_index(item, len, n_layer);
                }
                if (a < 0 || b < 0) {
                    char what[96];
                    snprintf(what, sizeof(what), "'%.*s' is not a layer or a range of layers of this model (0..%d)",
                             (int) len, item, n_layer - 1);
                    return tq_fail(err, err_size, rule, rule_len, what);
                }
                if (a > b) {
                    return tq_fail(err, err_size, rule, rule_len, "a range A-B needs A <= B");
                }
                for (int il = a; il <= b; ++il) {
                    types[il] = type;
                }
                if (item_end + 1 == eq) {  // "0,=TYPE"
                    return tq_fail(err, err_size, rule, rule_len, "'' is not a layer of this model");
                }
                item = item_end < eq ? item_end + 1 : eq;
            }
        }
        rule = rule_end ? rule_end + 1 : rule + rule_len;
    }
    return 0;
}

bool tq_layer_types_any_quantized(const char * spec, const int n_layer) {
    if (!spec || !*spec || n_layer <= 0) {
        return false;
    }
    enum ggml_type * types = malloc((size_t) n_layer * sizeof(*types));
    if (!types) {
        return false;
    }
    bool any = false;
    if (tq_layer_types_parse(spec, n_layer, types, NULL, 0) == 0) {
        for (int il = 0; il < n_layer && !any; ++il) {
            any = types[il] != GGML_TYPE_COUNT && ggml_is_quantized(types[il]);
        }
    }
    free(types);
    return any;
}
