// llama-tq: reader of codebook files (.tqcb, docs/codebook-format.md) for LLAMA_TQ_CODEBOOK.
//
// Checks what the format requires of a reader (hash, version, line syntax, names, counts, finite float32
// values, ascending levels) and applies the base entries over the compiled-in defaults; entries absent
// from the file keep their defaults, per-layer entries (NAME@layer=N) are validated and skipped (the
// ggml types do not know the layer). Any problem is fatal: the user asked for this codebook, so the
// process prints "llama-tq: LLAMA_TQ_CODEBOOK=<path>: <problem>" and aborts instead of silently
// running with the defaults.

#include "tq-impl.h"

#include <ctype.h>
#include <errno.h>
#include <locale.h>
#include <stdarg.h>

#define TQCB_MAX_LINE  1024              // bytes per line including the newline
#define TQCB_MAX_BYTES (64 * 1024 * 1024)

struct tqcb_entry_spec {
    const char * name;
    int          count;
    int          is_levels;
    int          slot;  // levels index (ktq2..vtq4_1: 0..5) or trellis index (k - 2)
};

static const struct tqcb_entry_spec tqcb_specs[9] = {
    { "ktq2", 4, 1, 0 },      { "ktq3", 8, 1, 1 },      { "ktq4", 16, 1, 2 },
    { "vtq2_1", 4, 1, 3 },    { "vtq3_1", 8, 1, 4 },    { "vtq4_1", 16, 1, 5 },
    { "trellis2", 256, 0, 0 }, { "trellis3", 512, 0, 1 }, { "trellis4", 1024, 0, 2 },
};

struct tqcb_reader {
    const char * path;
    char *       buf;
    size_t       len;   // bytes before the hash line
    size_t       pos;
    int          lineno;
};

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 3, 4), noreturn))
#endif
static void tqcb_fail(const struct tqcb_reader * r, int lineno, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (lineno > 0) {
        fprintf(stderr, "llama-tq: LLAMA_TQ_CODEBOOK=%s:%d: ", r->path, lineno);
    } else {
        fprintf(stderr, "llama-tq: LLAMA_TQ_CODEBOOK=%s: ", r->path);
    }
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" -- refusing to run with a codebook other than the one requested\n", stderr);
    fflush(stderr);
    abort();
}

static uint64_t tqcb_fnv1a64(const char * p, size_t n) {
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < n; ++i) {
        h ^= (uint8_t) p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

// next line (without its newline) into line; returns 0 at the end
static int tqcb_next_line(struct tqcb_reader * r, char * line) {
    if (r->pos >= r->len) {
        return 0;
    }
    const char * start = r->buf + r->pos;
    const char * nl    = memchr(start, '\n', r->len - r->pos);
    const size_t n     = (size_t) (nl - start);  // the body ends with a newline (checked), so nl != NULL
    r->lineno++;
    if (n + 1 > TQCB_MAX_LINE) {
        tqcb_fail(r, r->lineno, "line longer than %d bytes", TQCB_MAX_LINE);
    }
    memcpy(line, start, n);
    line[n] = '\0';
    r->pos += n + 1;
    return 1;
}

static int tqcb_is_space(char c) {
    return c == ' ' || c == '\t';
}

// splits line into whitespace-separated tokens (in place); returns the count
static int tqcb_split(char * line, char ** tok, int max_tok) {
    int n = 0;
    for (char * p = line; *p;) {
        while (tqcb_is_space(*p)) {
            *p++ = '\0';
        }
        if (!*p) {
            break;
        }
        if (n < max_tok) {
            tok[n] = p;
        }
        ++n;
        while (*p && !tqcb_is_space(*p)) {
            ++p;
        }
    }
    return n;
}

// a decimal float as the format allows it, converted to float32 with the C locale's rules
static int tqcb_parse_float(const char * tok, float * out) {
    const char * p = tok;
    if (*p == '+' || *p == '-') {
        ++p;
    }
    int nd = 0;
    while (isdigit((unsigned char) *p)) {
        ++p;
        ++nd;
    }
    if (*p == '.') {
        ++p;
        while (isdigit((unsigned char) *p)) {
            ++p;
            ++nd;
        }
    }
    if (nd == 0) {
        return 0;
    }
    if (*p == 'e' || *p == 'E') {
        ++p;
        if (*p == '+' || *p == '-') {
            ++p;
        }
        if (!isdigit((unsigned char) *p)) {
            return 0;
        }
        while (isdigit((unsigned char) *p)) {
            ++p;
        }
    }
    if (*p != '\0' || (size_t) (p - tok) >= 64) {
        return 0;
    }
    // strtof honours LC_NUMERIC: use the locale's decimal point
    char         tmp[128];
    const char * dp = localeconv()->decimal_point;
    size_t       o  = 0;
    for (const char * q = tok; *q; ++q) {
        if (*q == '.' && dp != NULL && dp[0] != '\0' && strcmp(dp, ".") != 0) {
            for (const char * d = dp; *d && o + 1 < sizeof(tmp); ++d) {
                tmp[o++] = *d;
            }
        } else if (o + 1 < sizeof(tmp)) {
            tmp[o++] = *q;
        }
    }
    tmp[o] = '\0';
    char * end;
    errno         = 0;
    const float v = strtof(tmp, &end);
    if (*end != '\0' || !isfinite(v)) {
        return 0;
    }
    *out = v;
    return 1;
}

// "NAME" or "NAME@layer=N" (N: 0..65535, no leading zeros); returns the spec index, *layer = -1 for base
static int tqcb_parse_name(const char * name, long * layer) {
    const char * at   = strchr(name, '@');
    const size_t blen = at ? (size_t) (at - name) : strlen(name);
    int          idx  = -1;
    for (int i = 0; i < 9; ++i) {
        if (strlen(tqcb_specs[i].name) == blen && strncmp(tqcb_specs[i].name, name, blen) == 0) {
            idx = i;
        }
    }
    if (idx < 0) {
        return -1;
    }
    *layer = -1;
    if (at) {
        const char * n = at + 1;
        if (strncmp(n, "layer=", 6) != 0) {
            return -1;
        }
        n += 6;
        const size_t nd = strlen(n);
        if (nd == 0 || nd > 5 || (n[0] == '0' && nd > 1)) {
            return -1;
        }
        long v = 0;
        for (size_t i = 0; i < nd; ++i) {
            if (!isdigit((unsigned char) n[i])) {
                return -1;
            }
            v = v * 10 + (n[i] - '0');
        }
        if (v > 65535) {
            return -1;
        }
        *layer = v;
    }
    return idx;
}

void tq_load_codebook_file(const char * path, struct tq_tables * t) {
    struct tqcb_reader r;
    memset(&r, 0, sizeof(r));
    r.path = path;

    FILE * f = fopen(path, "rb");
    if (f == NULL) {
        tqcb_fail(&r, 0, "cannot open: %s", strerror(errno));
    }
    size_t cap = 1 << 16;
    r.buf      = (char *) malloc(cap);
    for (;;) {
        if (r.buf == NULL) {
            fclose(f);
            tqcb_fail(&r, 0, "out of memory");
        }
        r.len += fread(r.buf + r.len, 1, cap - r.len, f);
        if (r.len < cap) {
            break;
        }
        if (cap >= TQCB_MAX_BYTES) {
            fclose(f);
            tqcb_fail(&r, 0, "file larger than %d bytes, not a codebook", TQCB_MAX_BYTES);
        }
        cap *= 2;
        r.buf = (char *) realloc(r.buf, cap);
    }
    const int read_error = ferror(f);
    fclose(f);
    if (read_error) {
        tqcb_fail(&r, 0, "read error");
    }

    // 1. integrity: last line "fnv1a64 <16 hex>\n" over every byte before it
    static const char kw[] = "fnv1a64 ";
    const size_t      hl   = sizeof(kw) - 1 + 16 + 1;
    if (r.len == 0) {
        tqcb_fail(&r, 0, "empty file, not a codebook");
    }
    if (r.len < hl || r.buf[r.len - 1] != '\n' || memcmp(r.buf + r.len - hl, kw, sizeof(kw) - 1) != 0 ||
        (r.len > hl && r.buf[r.len - hl - 1] != '\n')) {
        tqcb_fail(&r, 0, "last line must be 'fnv1a64 <16 hex digits>' followed by a newline (truncated or not a codebook file)");
    }
    char file_hash[17];
    memcpy(file_hash, r.buf + r.len - 17, 16);
    file_hash[16] = '\0';
    for (int i = 0; i < 16; ++i) {
        if (!((file_hash[i] >= '0' && file_hash[i] <= '9') || (file_hash[i] >= 'a' && file_hash[i] <= 'f'))) {
            tqcb_fail(&r, 0, "last line must be 'fnv1a64 <16 lowercase hex digits>'");
        }
    }
    r.len -= hl;
    char got_hash[17];
    snprintf(got_hash, sizeof(got_hash), "%016llx", (unsigned long long) tqcb_fnv1a64(r.buf, r.len));
    if (strcmp(got_hash, file_hash) != 0) {
        tqcb_fail(&r, 0, "codebook hash mismatch: file says fnv1a64 %s, contents hash to %s (file corrupt or edited by hand)",
                  file_hash, got_hash);
    }
    if (memchr(r.buf, '\r', r.len) != NULL) {
        tqcb_fail(&r, 0, "CR characters found; the format uses LF line endings only");
    }
    if (memchr(r.buf, '\0', r.len) != NULL) {
        tqcb_fail(&r, 0, "NUL byte found, not a text codebook");
    }

    // 2. magic and version
    char   line[TQCB_MAX_LINE + 1];
    char * tok[TQCB_MAX_LINE / 2];
    if (!tqcb_next_line(&r, line) || strncmp(line, "TQCB ", 5) != 0) {
        tqcb_fail(&r, 1, "missing 'TQCB <version>' header line");
    }
    {
        const char * v = line + 5;
        if (!*v || strspn(v, "0123456789") != strlen(v)) {
            tqcb_fail(&r, 1, "bad format version '%s'", v);
        }
        if (strcmp(v, "1") != 0) {
            tqcb_fail(&r, 1, "unsupported codebook format version %s (this reader supports 1)", v);
        }
    }

    // 3. lines and entries
    int    seen_tool   = 0;
    int    seen_base   = 0;  // bit per spec
    int    n_applied   = 0;
    int    n_layer     = 0;
    long * layer_seen  = NULL;  // (spec << 17 | layer) of the per-layer entries, for duplicate detection
    size_t layer_count = 0;
    float  vals[1024];

    while (tqcb_next_line(&r, line)) {
        const int where = r.lineno;
        if (line[0] == '#') {
            continue;
        }
        const int nt = tqcb_split(line, tok, TQCB_MAX_LINE / 2);
        if (nt == 0) {
            continue;
        }
        if (strcmp(tok[0], "tool") == 0) {
            if (nt != 3 || seen_tool) {  // provenance only: token characters are the writer's business
                tqcb_fail(&r, where, "expected exactly one 'tool <name> <version>' line");
            }
            seen_tool = 1;
        } else if (strcmp(tok[0], "param") == 0) {
            if (nt != 3) {
                tqcb_fail(&r, where, "expected 'param <key> <value>'");
            }
        } else if (strcmp(tok[0], "entry") == 0) {
            if (nt < 3) {
                tqcb_fail(&r, where, "expected 'entry <name> <count> [key=value ...]'");
            }
            long      layer = -1;
            const int si    = tqcb_parse_name(tok[1], &layer);
            if (si < 0) {
                tqcb_fail(&r, where, "bad entry name '%s': expected ktq2..4, vtq2_1..vtq4_1 or trellis2..4, "
                          "optionally '@layer=N'", tok[1]);
            }
            const struct tqcb_entry_spec * sp = &tqcb_specs[si];
            char                           expect[16];
            snprintf(expect, sizeof(expect), "%d", sp->count);
            if (strcmp(tok[2], expect) != 0) {
                tqcb_fail(&r, where, "entry %s must have %d values, header says '%s'", tok[1], sp->count, tok[2]);
            }
            for (int i = 3; i < nt; ++i) {  // metadata: key=value (informational)
                const char * eq = strchr(tok[i], '=');
                if (eq == NULL || eq == tok[i]) {
                    tqcb_fail(&r, where, "bad entry metadata '%s' (expected key=value)", tok[i]);
                }
            }
            if (layer < 0) {
                if (seen_base & (1 << si)) {
                    tqcb_fail(&r, where, "duplicate entry %s", tok[1]);
                }
                seen_base |= 1 << si;
            } else {
                const long key = (long) si << 17 | layer;
                for (size_t i = 0; i < layer_count; ++i) {
                    if (layer_seen[i] == key) {
                        free(layer_seen);
                        tqcb_fail(&r, where, "duplicate entry %s", tok[1]);
                    }
                }
                long * grown = (long *) realloc(layer_seen, (layer_count + 1) * sizeof(long));
                if (grown == NULL) {
                    free(layer_seen);
                    tqcb_fail(&r, where, "out of memory");
                }
                layer_seen                = grown;
                layer_seen[layer_count++] = key;
            }
            char name[80];
            snprintf(name, sizeof(name), "%s", tok[1]);
            // values: on the following lines; the line holding the last value holds nothing else
            int got = 0;
            while (got < sp->count) {
                if (!tqcb_next_line(&r, line)) {
                    tqcb_fail(&r, where, "entry %s ends early: %d of %d values", name, got, sp->count);
                }
                char *    vt[TQCB_MAX_LINE / 2];
                const int nv = tqcb_split(line, vt, TQCB_MAX_LINE / 2);
                if (got + nv > sp->count) {
                    tqcb_fail(&r, r.lineno, "entry %s has more than the declared %d values", name, sp->count);
                }
                for (int i = 0; i < nv; ++i) {
                    if (!tqcb_parse_float(vt[i], &vals[got + i])) {
                        tqcb_fail(&r, r.lineno, "entry %s: '%s' is not a finite float32 number", name, vt[i]);
                    }
                }
                got += nv;
            }
            if (sp->is_levels) {
                for (int i = 0; i + 1 < sp->count; ++i) {
                    if (!(vals[i] < vals[i + 1])) {
                        tqcb_fail(&r, where, "entry %s: levels must be strictly ascending", name);
                    }
                }
            }
            if (layer >= 0) {
                ++n_layer;
                continue;
            }
            if (sp->is_levels) {
                memcpy(t->levels[sp->slot], vals, sizeof(float) * sp->count);
            } else {
                memcpy(t->trellis[sp->slot], vals, sizeof(float) * sp->count);
            }
            ++n_applied;
        } else {
            tqcb_fail(&r, where, "unknown line starting with '%.40s'", tok[0]);
        }
    }
    free(layer_seen);
    free(r.buf);
    if (!seen_tool) {
        tqcb_fail(&r, 0, "missing 'tool <name> <version>' line");
    }

    snprintf(t->hash, sizeof(t->hash), "%s", file_hash);
    snprintf(t->source, sizeof(t->source), "%s", path);
    fprintf(stderr, "llama-tq: codebook %s (fnv1a64 %s): %d of 9 tables from the file, %d built-in", path,
            file_hash, n_applied, 9 - n_applied);
    if (n_layer > 0) {
        fprintf(stderr, "; %d per-layer entries skipped (not applied by the ggml types)", n_layer);
    }
    fputc('\n', stderr);
}
