// llama-tq: a test of the CUDA flash-attention decode kernel (src/ggml-tq/cuda/tq-fattn-impl.cuh) that needs
// no GPU. The real kernel source runs on the CPU through the emulation of cuda_emu.h (lanes as coroutines,
// barriers as barriers); every output is compared with attention computed in double precision from the
// values that the CPU reference decoder (tq_dequantize_row, src/ggml-tq) gives for the same K/V blocks.
// test_fattn_emu.py builds and runs it (see there for the build).
//
// The cases cover every compiled (head size, K type, V type, NC) instance with random blocks (random codes and
// trellis streams, random fp16 scales and outliers, outlier positions with and without stray high bits):
// partial chunks, warps without a chunk, KV splits (the combine step is computed here in double, with the
// combine kernel's formula: it lives in tq-fattn.cu and is not run), several query-column groups and unused
// columns, GQA, two sequences (one mask for both or one each), Q in both layouts, masks (random -inf, a
// causal prefix, a masked window of more than a chunk, fully masked rows), softcap, ALiBi, attention sinks.
//
// A case passes when every output is finite and, for every output row, max |out - ref| / max(max |ref|, 1e-3)
// is below the tolerance (default 1e-4; the kernel's float32 arithmetic gives about 1e-6, a decoding or
// softmax error gives 1e-2 and more). Outputs start as NaN, so an output the kernel does not write fails.
//
// usage: fattn_emu [--order forward|backward|shuffled|warps] [--seed S] [--shard I N] [--no-long] [--case N]
//                  [--tol X] [--mma | --mma-stage | --mma-nopair | --mma-xh] [--cp-eager] [--verbose]
// prints a FAIL line per failing case and a summary line; exit status 0 if every case passed, 1 if not
// (2: an emulation error such as a barrier deadlock).
#include "fattn_emu.h"
#include "tq-quants.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>
#include <vector>

// ---- deterministic random numbers (splitmix64): the same data with every compiler and library ----

struct emu_rng {
    uint64_t state;

    uint64_t next() {
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z          = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z          = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }

    double uniform(const double a, const double b) { return a + (b - a) * (double) (next() >> 11) * 0x1p-53; }

    int below(const int n) { return (int) (next() % (uint64_t) n); }
};

// ---- a buffer that ends where an inaccessible page begins: an access past its end faults ----

struct guarded_buf {
    char * map      = nullptr;
    size_t map_size = 0;
    char * data     = nullptr;

    explicit guarded_buf(const size_t n) {
        const size_t page = 4096;
        const size_t body = (n + page - 1) / page * page;
        map_size          = body + page;
        map = (char *) mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (map == MAP_FAILED) {
            fprintf(stderr, "fattn_emu: out of memory\n");
            exit(2);
        }
        mprotect(map + body, page, PROT_NONE);
        data = map + body - n;
    }

    ~guarded_buf() { munmap(map, map_size); }

    guarded_buf(const guarded_buf &)             = delete;
    guarded_buf & operator=(const guarded_buf &) = delete;
};

// ---- cases ----

enum emu_mask {
    EMU_MASK_NONE,
    EMU_MASK_RANDOM,     // a fifth of the cells -inf, the others in [-3, 0]
    EMU_MASK_PREFIX,     // causal: each token sees the first 1..n_kv rows
    EMU_MASK_WINDOW,     // a window of 33..332 rows masked (whole chunks of a warp)
    EMU_MASK_FULL_ROWS,  // (sequence + token) odd: sees nothing; even: half of the rows
    EMU_MASK_COUNT,
};

static const char * emu_mask_name(const emu_mask m) {
    static const char * names[EMU_MASK_COUNT] = { "none", "random", "prefix", "window", "full-rows" };
    return names[m];
}

struct fa_case {
    int       D;
    ggml_type type_k;
    ggml_type type_v;
    int       n_tok;
    int       gqa;
    int       n_kv_head;
    int       n_seq;
    int       n_kv;
    emu_mask  mask;
    bool      mask_bcast;    // one mask row set for all sequences (ne33 = 1)
    bool      sinks;
    float     max_bias;      // ALiBi when > 0
    float     softcap;
    int       n_sm;          // the multiprocessors the split heuristic assumes (0: one split)
    bool      q_permuted;    // Q as the graph gives it: the heads of a token contiguous
    int       out_pos_mask;  // outlier position bytes: 63, or 255 (the kernel must use the low 6 bits)
    bool      rot;           // the output's Hadamard rotation fused in (p.rot: tq_cuda_try_fuse_fattn_rot)
};

struct fa_pair {
    ggml_type type_k;
    ggml_type type_v;
};

// --mma: the tensor-core form tq_k_fattn_mma where tq_cuda_fattn takes it (V without outlier slots); --mma-stage:
// its variant that stages a chunk's rows in shared memory (p.mma = 2); --mma-nopair: vtq2 without its pair table
// (p.mma = 3); --mma-xh: its cross-head variant (p.mma = 4) wherever tq_fattn_xh_fits (LLAMA_TQ_CUDA_FA_XH=1), with 8
// times the KV heads of every case (8 or 16: whole groups, and 16-byte row strides for every type)
static int g_mma = 0;
static int g_xh_cases = 0;  // cases that ran the cross-head variant

static int tq_of(const ggml_type t) {
    return TQ_GGML_TO_TQ(t);
}

static std::vector<fa_case> make_cases(const std::vector<fa_pair> & pairs, const bool long_cases) {
    // query shapes (tokens, GQA ratio): 1..12 columns per KV head, i.e. every NC (2, 4, 8; at head size 256
    // 2, 4), blocks with unused columns and KV heads with several column groups
    static const int shapes[8][2] = {
        { 1, 1 }, { 1, 2 }, { 1, 3 }, { 2, 2 }, { 5, 1 }, { 1, 6 }, { 2, 4 }, { 3, 4 },
    };
    // KV rows: one; partial chunks; chunks for some warps only; exactly one warp chunk; one step and a bit;
    // several steps and splits
    static const int n_kvs[8] = { 1, 17, 32, 40, 100, 129, 257, 600 };
    static const int n_sms[3] = { 0, 1, 132 };
    static const int Ds[3]    = { 64, 128, 256 };

    std::vector<fa_case> cases;
    for (int di = 0; di < 3; ++di) {
        for (size_t pi = 0; pi < pairs.size(); ++pi) {
            for (int s = 0; s < 8; ++s) {
                for (int r = 0; r < 2; ++r) {
                    const int i = (int) cases.size();
                    fa_case   c;
                    c.D            = Ds[di];
                    c.type_k       = pairs[pi].type_k;
                    c.type_v       = pairs[pi].type_v;
                    c.n_tok        = shapes[s][0];
                    c.gqa          = shapes[s][1];
                    c.n_kv_head    = (i % 2 ? 2 : 1) * (g_mma == 4 ? 8 : 1);
                    c.n_seq        = i % 5 == 0 ? 2 : 1;
                    c.n_kv         = n_kvs[(s + 3 * r + (int) pi + di) % 8];
                    c.mask         = (emu_mask) ((i / 2) % EMU_MASK_COUNT);
                    c.mask_bcast   = i % 3 == 0;
                    c.sinks        = i % 3 == 1;
                    c.max_bias     = i % 7 == 3 ? 8.0f : 0.0f;
                    c.softcap      = i % 4 == 2 ? 10.0f : 0.0f;
                    c.n_sm         = n_sms[(i / 3) % 3];
                    c.q_permuted   = (i / 4) % 2 == 0;
                    c.out_pos_mask = (i / 8) % 2 ? 255 : 63;
                    c.rot          = (i / 16) % 3 == 1;
                    cases.push_back(c);
                }
            }
        }
    }
    if (!long_cases) {
        return cases;
    }
    // long caches: per head size one pair of each V variant (codebook, trellis, trellis + outliers), the K type
    // and the V bits rotating; 17 splits of 256 rows, or one split of 2189 rows (18 chunks per warp)
    for (int di = 0; di < 3; ++di) {
        for (int j = 0; j < 3; ++j) {
            const int k = GGML_TYPE_KTQ2 + (di + j) % 3;
            const int v = GGML_TYPE_VTQ2_1 + 3 * j + (di + 2 * j) % 3;
            for (const fa_pair & pr : pairs) {
                if (pr.type_k != k || pr.type_v != v) {
                    continue;
                }
                for (const bool split : { true, false }) {
                    fa_case c;
                    c.D            = Ds[di];
                    c.type_k       = pr.type_k;
                    c.type_v       = pr.type_v;
                    c.n_tok        = split ? 1 : 2;
                    c.gqa          = split ? 4 : 3;
                    c.n_kv_head    = 2 * (g_mma == 4 ? 8 : 1);
                    c.n_seq        = 2;
                    c.n_kv         = split ? 4099 : 2189;
                    c.mask         = (emu_mask) (1 + (di + j + (split ? 0 : 2)) % 4);
                    c.mask_bcast   = !split;
                    c.sinks        = j != 1;
                    c.max_bias     = j == 1 ? 8.0f : 0.0f;
                    c.softcap      = j == 2 ? 10.0f : 0.0f;
                    c.n_sm         = split ? 132 : 0;
                    c.q_permuted   = split;
                    c.out_pos_mask = 255;
                    c.rot          = split;
                    cases.push_back(c);
                }
            }
        }
    }
    return cases;
}

// ---- the host side of the launch, as tq_cuda_fattn (tq-fattn.cu) computes it ----

static int host_max_cols(const int D) {
    return D == 256 ? 4 : 8;
}

static int host_nc(const int n_col) {
    return n_col <= 2 ? 2 : n_col <= 4 ? 4 : 8;
}

struct fa_result {
    bool   ok;
    bool   finite;
    double err;
    int    nc;
    int    n_split;
};

static fa_result run_case(const fa_case & c, const int index, const std::vector<emu_fattn_instance> & instances,
                          std::vector<int> & hits, const double tol) {
    emu_rng rng{ 0x7121ull + 0x100000001b3ull * (uint64_t) index };

    const int     D      = c.D;
    const int     tqk    = tq_of(c.type_k);
    const int     tqv    = tq_of(c.type_v);
    const int64_t bsk    = (int64_t) tq_type_size(tqk);
    const int64_t bsv    = (int64_t) tq_type_size(tqv);
    const int64_t row_k  = D / QK_TQ * bsk;
    const int64_t row_v  = D / QK_TQ * bsv;
    const int     n_head = c.n_kv_head * c.gqa;

    // K, V: [D / 64 blocks, n_kv_head, n_kv, n_seq]
    const int64_t nb11 = c.n_kv_head * row_k;
    const int64_t nb12 = row_k;
    const int64_t nb13 = c.n_kv * nb11;
    const int64_t nb21 = c.n_kv_head * row_v;
    const int64_t nb22 = row_v;
    const int64_t nb23 = c.n_kv * nb21;

    guarded_buf kbuf(nb13 * c.n_seq);
    guarded_buf vbuf(nb23 * c.n_seq);
    uint8_t *   kb = (uint8_t *) kbuf.data;
    uint8_t *   vb = (uint8_t *) vbuf.data;
    for (int64_t i = 0; i < nb13 * c.n_seq; ++i) {
        kb[i] = (uint8_t) rng.next();
    }
    for (int64_t i = 0; i < nb23 * c.n_seq; ++i) {
        vb[i] = (uint8_t) rng.next();
    }
    auto put_f16 = [](uint8_t * dst, const double x) {
        const uint16_t h = tq_fp32_to_fp16((float) x);
        memcpy(dst, &h, sizeof(h));
    };
    for (int64_t o = 0; o < nb13 * c.n_seq; o += bsk) {
        put_f16(kb + o, rng.uniform(0.05, 1.5) * (rng.next() & 1 ? 1 : -1));
    }
    const bool outliers = tqv >= TQ_TYPE_VTQ2_3;
    for (int64_t o = 0; o < nb23 * c.n_seq; o += bsv) {
        put_f16(vb + o, rng.uniform(0.05, 1.5) * (rng.next() & 1 ? 1 : -1));
        if (outliers) {  // d, od[2], op[2], qs: one block in four has both slots at one position
            put_f16(vb + o + 2, rng.uniform(-6.0, 6.0));
            put_f16(vb + o + 4, rng.uniform(-6.0, 6.0));
            vb[o + 6] = (uint8_t) (rng.next() & c.out_pos_mask);
            vb[o + 7] = rng.below(4) == 0 ? vb[o + 6] : (uint8_t) (rng.next() & c.out_pos_mask);
        }
    }

    // Q: f32 [D, n_tok, n_head, n_seq], or with the heads of a token contiguous
    const int64_t nb03 = (int64_t) D * sizeof(float) * n_head * c.n_tok;
    const int64_t nb01 = c.q_permuted ? (int64_t) D * sizeof(float) * n_head : (int64_t) D * sizeof(float);
    const int64_t nb02 = c.q_permuted ? (int64_t) D * sizeof(float) : (int64_t) D * sizeof(float) * c.n_tok;
    guarded_buf   qbuf(nb03 * c.n_seq);
    float *       qf = (float *) qbuf.data;
    for (int64_t i = 0; i < nb03 * c.n_seq / (int64_t) sizeof(float); ++i) {
        qf[i] = (float) rng.uniform(-2.0, 2.0);
    }

    // mask: f16 [n_kv, n_tok, 1, ne33]
    const bool     has_mask  = c.mask != EMU_MASK_NONE;
    const int      ne33      = c.mask_bcast ? 1 : c.n_seq;
    const size_t   n_mask    = (size_t) c.n_kv * c.n_tok * ne33;
    guarded_buf    mbuf(n_mask * sizeof(uint16_t));
    uint16_t *     mh        = (uint16_t *) mbuf.data;
    const uint16_t minus_inf = 0xFC00;
    for (int s = 0; s < ne33; ++s) {
        for (int t = 0; t < c.n_tok; ++t) {
            const int valid = 1 + rng.below(c.n_kv);
            const int w0    = rng.below(c.n_kv);
            const int w1    = std::min(c.n_kv, w0 + 33 + rng.below(300));
            for (int j = 0; j < c.n_kv; ++j) {
                bool inf = false;
                switch (c.mask) {
                    case EMU_MASK_RANDOM:    inf = rng.below(5) == 0; break;
                    case EMU_MASK_PREFIX:    inf = j >= valid; break;
                    case EMU_MASK_WINDOW:    inf = j >= w0 && j < w1; break;
                    case EMU_MASK_FULL_ROWS: inf = (s + t) % 2 == 1 || rng.below(2) == 0; break;
                    default:                 break;
                }
                const uint16_t v = tq_fp32_to_fp16((float) rng.uniform(-3.0, 0.0));
                mh[((size_t) s * c.n_tok + t) * c.n_kv + j] = inf ? minus_inf : v;
            }
        }
    }
    guarded_buf sbuf(n_head * sizeof(float));
    float *     sinks = (float *) sbuf.data;
    for (int h = 0; h < n_head; ++h) {
        sinks[h] = (float) rng.uniform(-3.0, 3.0);
    }

    // ---- the parameters, as tq_cuda_fattn sets them ----
    tq_fattn_params p = {};
    p.Q               = (const char *) qf;
    p.K               = (const char *) kb;
    p.V               = (const char *) vb;
    p.mask            = has_mask ? (const char *) mh : nullptr;
    p.sinks           = c.sinks ? sinks : nullptr;
    p.rot             = c.rot;
    const float scale = 1.0f / sqrtf((float) D);
    p.scale           = scale;
    p.max_bias        = c.max_bias;
    p.logit_softcap   = c.softcap;
    if (p.logit_softcap != 0.0f) {
        p.scale /= p.logit_softcap;
    }
    p.n_head_log2 = 1u << (uint32_t) floorf(log2f((float) n_head));
    p.m0          = powf(2.0f, -(p.max_bias) / p.n_head_log2);
    p.m1          = powf(2.0f, -(p.max_bias / 2.0f) / p.n_head_log2);
    p.n_tok       = c.n_tok;
    p.n_head      = n_head;
    p.n_seq       = c.n_seq;
    p.n_rows      = c.n_seq * c.n_tok * n_head;
    p.n_kv_head   = c.n_kv_head;
    p.gqa         = c.gqa;
    p.n_col       = c.n_tok * c.gqa;
    const int nc  = std::min(p.n_col, host_max_cols(D));
    const int NC  = host_nc(nc) == 8 && D == 256 ? 4 : host_nc(nc);
    p.n_col_grp   = (p.n_col + NC - 1) / NC;
    p.n_kv        = c.n_kv;
    p.ne33        = has_mask ? ne33 : 1;
    p.nb01 = nb01;  p.nb02 = nb02;  p.nb03 = nb03;
    p.nb11 = nb11;  p.nb12 = nb12;  p.nb13 = nb13;
    p.nb21 = nb21;  p.nb22 = nb22;  p.nb23 = nb23;
    p.nb31 = has_mask ? (int64_t) c.n_kv * sizeof(uint16_t) : 0;
    p.nb33 = has_mask ? (int64_t) c.n_kv * sizeof(uint16_t) * c.n_tok : 0;

    p.mma = tq_of(c.type_v) < TQ_TYPE_VTQ2_3 ? (g_mma == 4 ? 1 : g_mma) : 0;  // as tq_fattn_use_mma
    tq_fattn_set_split(p, c.n_sm, p.mma ? TQ_FA_MMA_BLOCKS_PER_SM : TQ_FA_VEC_BLOCKS_PER_SM);
    if (g_mma == 4 && tq_fattn_xh_fits(p, D, row_k, row_v)) {  // as tq_cuda_fattn with LLAMA_TQ_CUDA_FA_XH=1
        p.mma = 4;
        tq_fattn_set_split(p, c.n_sm, TQ_FA_MMA_BLOCKS_PER_SM);
    }
    g_xh_cases += p.mma == 4 ? 1 : 0;

    const size_t n_out = (size_t) p.n_rows * D;
    guarded_buf  obuf(n_out * sizeof(float));
    guarded_buf  pbuf(p.n_split > 1 ? (size_t) p.n_split * n_out * sizeof(float) : 1);
    guarded_buf  mlbuf(p.n_split > 1 ? (size_t) p.n_split * p.n_rows * sizeof(float2) : 1);
    float *      out = (float *) obuf.data;
    std::fill(out, out + n_out, NAN);
    if (p.n_split > 1) {
        p.part    = (float *) pbuf.data;
        p.part_ml = (float2 *) mlbuf.data;
        std::fill(p.part, p.part + (size_t) p.n_split * n_out, NAN);
        std::fill(p.part_ml, p.part_ml + (size_t) p.n_split * p.n_rows, float2{ NAN, NAN });
    } else {
        p.dst = out;
    }

    // ---- the kernel ----
    int inst = -1;
    for (size_t i = 0; i < instances.size(); ++i) {
        const emu_fattn_instance & e = instances[i];
        if (e.D == D && e.type_k == c.type_k && e.type_v == c.type_v && e.nc == NC) {
            inst = (int) i;
        }
    }
    if (inst < 0) {
        fprintf(stderr, "fattn_emu: no instance for case %d\n", index);
        exit(2);
    }
    ++hits[inst];
    instances[inst].launch(p);

    if (p.n_split > 1) {  // the combine kernel's formula (tq_k_fattn_combine), in double
        std::vector<double> acc(D);
        for (int o = 0; o < p.n_rows; ++o) {
            double m = -FLT_MAX / 2.0;
            for (int s = 0; s < p.n_split; ++s) {
                m = std::max(m, (double) p.part_ml[(size_t) s * p.n_rows + o].x);
            }
            if (p.sinks) {
                m = std::max(m, (double) p.sinks[o % n_head]);
            }
            double l = p.sinks ? exp(p.sinks[o % n_head] - m) : 0.0;
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int s = 0; s < p.n_split; ++s) {
                const float2 ml = p.part_ml[(size_t) s * p.n_rows + o];
                const double f  = exp(ml.x - m);
                l += f * ml.y;
                for (int e = 0; e < D; ++e) {
                    acc[e] += f * p.part[((size_t) s * p.n_rows + o) * D + e];
                }
            }
            for (int e = 0; e < D; ++e) {
                out[(size_t) o * D + e] = l > 0.0 ? (float) (acc[e] / l) : 0.0f;
            }
        }
    }

    // ---- the reference: K and V as the CPU decodes them, attention in double ----
    const size_t       n_kv_rows = (size_t) c.n_seq * c.n_kv * c.n_kv_head;
    std::vector<float> kd(n_kv_rows * D);
    std::vector<float> vd(n_kv_rows * D);
    for (int s = 0; s < c.n_seq; ++s) {
        for (int j = 0; j < c.n_kv; ++j) {
            for (int h = 0; h < c.n_kv_head; ++h) {
                const size_t r = ((size_t) s * c.n_kv + j) * c.n_kv_head + h;
                tq_dequantize_row(tqk, kb + s * nb13 + j * nb11 + h * nb12, &kd[r * D], D);
                tq_dequantize_row(tqv, vb + s * nb23 + j * nb21 + h * nb22, &vd[r * D], D);
            }
        }
    }
    double              worst  = 0.0;
    bool                finite = true;
    std::vector<double> score(c.n_kv);
    std::vector<double> acc(D);
    for (int s = 0; s < c.n_seq; ++s) {
        for (int t = 0; t < c.n_tok; ++t) {
            for (int h = 0; h < n_head; ++h) {
                const int     kvh = h / c.gqa;
                const float * q   = (const float *) ((const char *) qf + s * nb03 + h * nb02 + t * nb01);
                double        slope = 1.0;
                if (c.max_bias > 0.0f) {
                    const bool lo = h < (int) p.n_head_log2;
                    slope = pow(lo ? p.m0 : p.m1, lo ? h + 1 : 2 * (h - (int) p.n_head_log2) + 1);
                }
                double m = -INFINITY;
                for (int j = 0; j < c.n_kv; ++j) {
                    const float * k   = &kd[(((size_t) s * c.n_kv + j) * c.n_kv_head + kvh) * D];
                    double        dot = 0.0;
                    for (int e = 0; e < D; ++e) {
                        dot += (double) q[e] * k[e];
                    }
                    dot *= scale;
                    if (c.softcap != 0.0f) {
                        dot = c.softcap * tanh(dot / c.softcap);
                    }
                    if (has_mask) {
                        const float mv = tq_fp16_to_fp32(mh[((size_t) (s % ne33) * c.n_tok + t) * c.n_kv + j]);
                        dot            = std::isinf(mv) ? -INFINITY : dot + slope * mv;
                    }
                    score[j] = dot;
                    m        = std::max(m, dot);
                }
                if (c.sinks) {
                    m = std::max(m, (double) sinks[h]);
                }
                double l = c.sinks ? exp(sinks[h] - m) : 0.0;
                std::fill(acc.begin(), acc.end(), 0.0);
                for (int j = 0; j < c.n_kv; ++j) {
                    if (score[j] == -INFINITY) {
                        continue;
                    }
                    const double  w = exp(score[j] - m);
                    const float * v = &vd[(((size_t) s * c.n_kv + j) * c.n_kv_head + kvh) * D];
                    l += w;
                    for (int e = 0; e < D; ++e) {
                        acc[e] += w * v[e];
                    }
                }
                for (int e = 0; e < D; ++e) {
                    acc[e] = l > 0.0 ? acc[e] / l : 0.0;
                }
                if (c.rot) {  // the Hadamard matrix of size D (Sylvester order), times 1 / sqrt(D), in double
                    std::vector<double> r(D, 0.0);
                    const double        rs = 1.0 / sqrt((double) D);
                    for (int e = 0; e < D; ++e) {
                        for (int k = 0; k < D; ++k) {
                            r[e] += (__builtin_popcount(e & k) % 2 ? -acc[k] : acc[k]) * rs;
                        }
                    }
                    acc = r;
                }
                const float * o       = &out[(((size_t) s * c.n_tok + t) * n_head + h) * D];
                double        max_ref = 0.0;
                double        max_err = 0.0;
                for (int e = 0; e < D; ++e) {
                    const double ref = acc[e];
                    finite           = finite && std::isfinite(o[e]);
                    max_ref          = std::max(max_ref, fabs(ref));
                    max_err          = std::max(max_err, fabs(ref - o[e]));
                }
                worst = std::max(worst, max_err / std::max(max_ref, 1e-3));
            }
        }
    }
    fa_result res;
    res.finite  = finite;
    res.err     = finite ? worst : INFINITY;
    res.ok      = finite && worst < tol;
    res.nc      = NC;
    res.n_split = p.n_split;
    return res;
}

static void print_case(const char * tag, const int index, const fa_case & c, const fa_result & r) {
    printf("%s case %d: D=%d %s/%s tok=%d gqa=%d kv_heads=%d seq=%d n_kv=%d NC=%d split=%d mask=%s%s sinks=%d "
           "alibi=%g softcap=%g q=%s out_pos=%d rot=%d err=%.3g%s\n",
           tag, index, c.D, tq_type_name(tq_of(c.type_k)), tq_type_name(tq_of(c.type_v)), c.n_tok, c.gqa,
           c.n_kv_head, c.n_seq, c.n_kv, r.nc, r.n_split, emu_mask_name(c.mask),
           c.mask != EMU_MASK_NONE && c.mask_bcast ? "(ne33=1)" : "", c.sinks ? 1 : 0, c.max_bias, c.softcap,
           c.q_permuted ? "permuted" : "contiguous", c.out_pos_mask, c.rot ? 1 : 0, r.err,
           r.finite ? "" : " (non-finite output)");
}

// a fault (an access past the end of a guarded buffer, a lane's stack overflow) names the case before the
// process dies of it
static volatile sig_atomic_t g_case = -1;

static void on_fault(const int sig) {
    char      msg[96];
    const int n = snprintf(msg, sizeof(msg), "fattn_emu: fatal signal %d in case %d (rerun it with --case %d)\n", sig,
                           (int) g_case, (int) g_case);
    if (n > 0 && write(STDERR_FILENO, msg, (size_t) n) < 0) {
        // nothing more to do
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void on_exit_in_case() {  // an emulation error (emu_fatal) exits with status 2 in the middle of a case
    if (g_case >= 0) {
        fprintf(stderr, "fattn_emu: stopped in case %d (rerun it with --case %d)\n", (int) g_case, (int) g_case);
    }
}

static void usage() {
    fprintf(stderr, "usage: fattn_emu [--order forward|backward|shuffled|warps] [--seed S] [--shard I N] [--no-long] "
                    "[--case N] [--tol X] [--mma | --mma-stage | --mma-nopair | --mma-xh] [--cp-eager] [--verbose]\n");
    exit(2);
}

int main(int argc, char ** argv) {
    emu_order    order      = EMU_ORDER_FORWARD;
    const char * order_name = "forward";
    uint64_t     seed       = 1;
    int          shard      = 0;
    int          n_shards   = 1;
    bool         long_cases = true;
    int          only       = -1;
    double       tol        = 1e-4;
    bool         verbose    = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a    = argv[i];
        auto              next = [&]() -> const char * {
            if (i + 1 >= argc) {
                usage();
            }
            return argv[++i];
        };
        if (a == "--order") {
            order_name = next();
            if (!emu_order_from_name(order_name, &order)) {
                usage();
            }
        } else if (a == "--seed") {
            seed = strtoull(next(), nullptr, 10);
        } else if (a == "--shard") {
            shard    = atoi(next());
            n_shards = atoi(next());
            if (n_shards < 1 || shard < 0 || shard >= n_shards) {
                usage();
            }
        } else if (a == "--no-long") {
            long_cases = false;
        } else if (a == "--case") {
            only    = atoi(next());
            verbose = true;
        } else if (a == "--tol") {
            tol = atof(next());
        } else if (a == "--mma") {
            g_mma = 1;
        } else if (a == "--mma-stage") {
            g_mma = 2;
        } else if (a == "--mma-nopair") {
            g_mma = 3;
        } else if (a == "--mma-xh") {
            g_mma = 4;
        } else if (a == "--cp-eager") {
            emu_set_cp_eager(true);
        } else if (a == "--verbose") {
            verbose = true;
        } else {
            usage();
        }
    }
    emu_set_order(order, seed);
    signal(SIGSEGV, on_fault);
    signal(SIGBUS, on_fault);
    atexit(on_exit_in_case);

    std::vector<emu_fattn_instance> instances;
    emu_fattn_instances_d64(instances);
    emu_fattn_instances_d128(instances);
    emu_fattn_instances_d256(instances);
    std::vector<fa_pair> pairs;
    for (const emu_fattn_instance & e : instances) {
        bool seen = false;
        for (const fa_pair & pr : pairs) {
            seen = seen || (pr.type_k == e.type_k && pr.type_v == e.type_v);
        }
        if (!seen) {
            pairs.push_back({ e.type_k, e.type_v });
        }
    }

    const std::vector<fa_case> cases = make_cases(pairs, long_cases);
    std::vector<int>           hits(instances.size(), 0);
    int                        n_run    = 0;
    int                        n_failed = 0;
    double                     worst    = 0.0;
    for (int i = 0; i < (int) cases.size(); ++i) {
        if (only >= 0 ? i != only : i % n_shards != shard) {
            continue;
        }
        g_case            = i;
        const fa_result r = run_case(cases[i], i, instances, hits, tol);
        ++n_run;
        n_failed += r.ok ? 0 : 1;
        worst = std::max(worst, r.err);
        if (!r.ok || verbose) {
            print_case(r.ok ? "ok  " : "FAIL", i, cases[i], r);
            fflush(stdout);
        }
    }
    g_case    = -1;
    int n_hit = 0;
    for (const int h : hits) {
        n_hit += h > 0 ? 1 : 0;
    }
    static const char * kernel_names[5] = { "vec", "mma", "mma-stage", "mma-nopair", "mma-xh" };
    printf("fattn_emu: order=%s cases=%d failed=%d worst_rel_err=%.3g tol=%.3g instances=%d/%d kernel=%s xh_cases=%d\n",
           order_name, n_run, n_failed, worst, tol, n_hit, (int) instances.size(), kernel_names[g_mma], g_xh_cases);
    return n_failed == 0 ? 0 : 1;
}
