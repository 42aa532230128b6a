// llama-tq: the CUDA encoders (src/ggml-tq/cuda/tq-encode-impl.cuh: the scalar codebook fit and the two-pass
// tail-biting Viterbi) run on a CPU by the emulation of cuda_emu.h, block by block, and compared byte for byte
// with the CPU reference quantizer (tq_quantize_row_ref, src/ggml-tq) on the same blocks; and the f16 / f32
// converter (tq-dequant-impl.cuh) on the CPU's blocks, value for value against the CPU decoder. The same for the
// ktqp encoder and decoder (tq-kprof-cuda.cuh) against tq_kprof_quantize_block / tq_kprof_dequantize_block, with
// the built-in tables and with a calibration-like table of 200 profiles (bits 0..6, scales per coordinate).
//
// The GPU sums a block's squares and products by warp reductions (another order than the CPU's loop), so a
// block may legitimately come out different where two candidates are within rounding of each other; such a
// block passes if its squared reconstruction error is that of the CPU's encoding within a relative 1e-5. Any
// other difference is a failure, and so are more than --max-diff (default 1 %) differing blocks of a type.
//
//   encode_emu [--order forward|backward|shuffled] [--seed N] [--blocks N] [--max-diff F] [--verbose]
// prints one line per type, then "encode_emu: order=... types=... blocks=... differing=... failed=...".
#include "common.cuh"
#include "tq-dequant-impl.cuh"
#include "tq-encode-impl.cuh"
#include "tq-kprof-cuda.cuh"
#include "tq-kprof.h"
#include "tq-quants.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

// consecutive blocks of contiguous rows of 64 floats, written to consecutive blocks
struct emu_loc {
    const float * src;
    uint8_t *     dst;
    size_t        bs;
    size_t        nb00 = sizeof(float);

    const char * src_row(const int64_t ib) const { return (const char *) (src + ib * QK_TQ); }

    uint8_t * dst_blk(const int64_t ib) const { return dst + ib * bs; }
};

// the blocks a test encodes: kinds of data that reach different branches of the encoders
static std::vector<float> make_blocks(const int n_blocks, const uint64_t seed, const float * levels, const int n_levels) {
    std::mt19937_64                  rng(seed);
    std::normal_distribution<float>  gauss(0.0f, 1.0f);
    std::uniform_real_distribution<float> unif(-1.0f, 1.0f);
    std::student_t_distribution<float>    heavy(2.0f);
    std::vector<float>               x((size_t) n_blocks * QK_TQ);
    for (int ib = 0; ib < n_blocks; ++ib) {
        float *     b     = &x[(size_t) ib * QK_TQ];
        const int   kind  = ib % 12;
        const float scale = std::pow(10.0f, (float) (int) (rng() % 9) - 4.0f);  // 1e-4 .. 1e4
        for (int j = 0; j < QK_TQ; ++j) {
            float v = 0.0f;
            switch (kind) {
                case 0: case 1: case 2: v = scale * gauss(rng); break;             // plain
                case 3: v = scale * heavy(rng); break;                            // heavy tails: outliers
                case 4: v = scale * unif(rng); break;
                case 5: v = j == (int) (rng() % QK_TQ) ? scale : 0.0f; break;      // mostly zero
                case 6: v = scale; break;                                          // constant: ties everywhere
                case 7: v = scale * levels[rng() % n_levels]; break;               // exactly on levels
                case 8: v = scale * (float) ((int) (rng() % 5) - 2); break;        // few values: ties
                case 9: v = 1e-40f * (float) ((int) (rng() % 7) - 3); break;       // denormals
                case 10: v = 1e30f * gauss(rng); break;                            // huge: scale clamps
                case 11: {                                                         // non-finite entries
                    const int r = (int) (rng() % 8);
                    v = r == 0 ? NAN : r == 1 ? INFINITY : r == 2 ? -INFINITY : scale * gauss(rng);
                    break;
                }
            }
            b[j] = v;
        }
        if (ib % 37 == 0) {
            for (int j = 0; j < QK_TQ; ++j) {
                b[j] = 0.0f;  // all zero
            }
        }
    }
    return x;
}

// squared reconstruction error of one encoded block against its input (non-finite input counts as 0)
static double block_err(const int tq, const uint8_t * blk, const float * x) {
    float y[QK_TQ];
    tq_dequantize_row(tq, blk, y, QK_TQ);
    double e = 0.0;
    for (int j = 0; j < QK_TQ; ++j) {
        const double xv = std::isfinite(x[j]) ? x[j] : 0.0;
        const double d  = xv - (double) y[j];
        e += d * d;
    }
    return e;
}

struct type_result {
    int    differing = 0;
    int    failed    = 0;
    double worst     = 0.0;  // worst relative error difference of a differing block
};

template <ggml_type type>
static type_result run_type(const int n_blocks, const uint64_t seed, const double max_diff, const bool verbose,
                            const emu_order order) {
    using F            = tq_cuda_fmt<type>;
    const int     tq   = TQ_GGML_TO_TQ(type);
    const size_t  bs   = tq_type_size(tq);
    const float * lv   = tq_levels(tq);
    const int     n_lv = F::trellis ? F::ntab : 1 << F::b;

    const std::vector<float> x = make_blocks(n_blocks, seed + (uint64_t) tq, lv, n_lv);
    std::vector<uint8_t>     gpu((size_t) n_blocks * bs, 0xA5);
    std::vector<uint8_t>     gpu2((size_t) n_blocks * bs, 0xA5);
    std::vector<uint8_t>     gpu3((size_t) n_blocks * bs, 0xA5);  // trellis: V part of the fused K + V kernel
    std::vector<uint8_t>     gpu4((size_t) n_blocks * bs, 0xA5);  //   and of its form with the passes side by side
    int                      spec_tickets_left = 0;  // tickets not zeroed by the side-by-side form
    std::vector<uint8_t>     cpu((size_t) n_blocks * bs, 0x5A);
    tq_quantize_row_ref(tq, x.data(), cpu.data(), (int64_t) n_blocks * QK_TQ);

    // the kernel arguments tq_encode_cuda (tq-cuda.cu) passes
    const emu_loc           loc{ x.data(), gpu.data(), bs };
    const tq_cuda_tab<type> tab  = tq_cuda_host_tab<type>();
    const float             tmax = tq_cuda_tab_max(tab);
    const tq_cuda_cb_params P    = tq_cuda_host_cb_params<type>();
    if constexpr (F::trellis) {
        // both forms of the trellis encoder (tq_encode_cuda picks by the launch's size): G = 1 into gpu, G = 2
        // (TQ_VIT_G2_BLOCKS blocks per thread block, the last one part-full when n_blocks is odd) into gpu2
        for (int ib = 0; ib < n_blocks; ++ib) {
            blockIdx = emu_dim3{ (unsigned) ib, 0, 0 };
            emu_run_block(TQ_VIT_THREADS, [&]() { tq_k_encode_trellis<type, emu_loc, 1>(loc, tab, tmax, n_blocks); });
        }
        const emu_loc loc2{ x.data(), gpu2.data(), bs };
        for (int ibb = 0; ibb * TQ_VIT_G2_BLOCKS < n_blocks; ++ibb) {
            blockIdx = emu_dim3{ (unsigned) ibb, 0, 0 };
            emu_run_block(TQ_VIT_THREADS, [&]() {
                tq_k_encode_trellis<type, emu_loc, TQ_VIT_G2_BLOCKS>(loc2, tab, tmax, n_blocks);
            });
        }
    } else {
        for (int ib = 0; ib < n_blocks; ++ib) {
            blockIdx = emu_dim3{ (unsigned) ib, 0, 0 };
            emu_run_block(64, [&]() { tq_k_encode_codebook<type, emu_loc>(loc, P); });
        }
    }
    // the fused K + V kernel of a decode step (tq_cuda_try_fuse), V = this type, K = ktq2 of the same values:
    // thread blocks [0, n_blocks) encode V into gpu3, [n_blocks, 2 n_blocks) K into gpu_k
    constexpr ggml_type  type_k = GGML_TYPE_KTQ2;
    const int            tq_k   = TQ_GGML_TO_TQ(type_k);
    const size_t         bs_k   = tq_type_size(tq_k);
    std::vector<uint8_t> gpu_k((size_t) n_blocks * bs_k, 0xA5);
    std::vector<uint8_t> gpu_k4((size_t) n_blocks * bs_k, 0xA5);
    std::vector<uint8_t> cpu_k((size_t) n_blocks * bs_k, 0x5A);
    if constexpr (F::trellis) {
        tq_quantize_row_ref(tq_k, x.data(), cpu_k.data(), (int64_t) n_blocks * QK_TQ);
        const emu_loc           loc_k{ x.data(), gpu_k.data(), bs_k };
        const emu_loc           loc3{ x.data(), gpu3.data(), bs };
        const tq_cuda_cb_params P_k = tq_cuda_host_cb_params<type_k>();
        for (int tb = 0; tb < 2 * n_blocks; ++tb) {
            blockIdx = emu_dim3{ (unsigned) tb, 0, 0 };
            emu_run_block(TQ_VIT_THREADS, [&]() {
                tq_k_encode_kv<type_k, type, emu_loc>(loc_k, P_k, loc3, tab, tmax, n_blocks, tq_vit_spec_buf{});
            });
        }
        // and with the two Viterbi passes side by side (tq_encode_trellis_spec: TQ_VIT_SPEC thread blocks per
        // trellis block) on the first n_spec blocks (each kind twice), its thread blocks in the lane order's
        // direction (backward: the free pass is the last of a block's to finish, forward: a fixed pass; shuffled:
        // any), into gpu4 and gpu_k4
        const int             n_spec = std::min(n_blocks, 24);
        const int             slot   = 2 + F::qs_bytes;
        std::vector<uint8_t>  slots((size_t) n_spec * 64 * slot, 0xA5);
        std::vector<int>      gfix((size_t) n_spec, -1);
        std::vector<unsigned> ticket((size_t) n_spec, 0);
        const tq_vit_spec_buf sb{ slots.data(), gfix.data(), ticket.data() };
        const emu_loc         loc4{ x.data(), gpu4.data(), bs };
        const emu_loc         loc_k4{ x.data(), gpu_k4.data(), bs_k };
        std::vector<unsigned> tbs((size_t) (TQ_VIT_SPEC + 1) * n_spec);
        for (size_t i = 0; i < tbs.size(); ++i) {
            tbs[i] = (unsigned) i;
        }
        if (order == EMU_ORDER_BACKWARD) {
            std::reverse(tbs.begin(), tbs.end());
        } else if (order == EMU_ORDER_SHUFFLED) {
            std::shuffle(tbs.begin(), tbs.end(), std::mt19937_64(seed + 7));
        }
        // two launches on the same tickets (the last thread block of each trellis block zeroes its ticket, so the
        // host zeroes them once): the second launch's bytes are compared, and the tickets must be zero after it
        for (int launch = 0; launch < 2; ++launch) {
            std::fill(gpu4.begin(), gpu4.end(), (uint8_t) 0xA5);
            std::fill(gpu_k4.begin(), gpu_k4.end(), (uint8_t) 0xA5);
            for (const unsigned tb : tbs) {
                blockIdx = emu_dim3{ tb, 0, 0 };
                emu_run_block(TQ_VIT_THREADS, [&]() {
                    tq_k_encode_kv<type_k, type, emu_loc>(loc_k4, P_k, loc4, tab, tmax, n_spec, sb);
                });
            }
        }
        for (int ib = 0; ib < n_spec; ++ib) {
            if (ticket[(size_t) ib] != 0) {
                ++spec_tickets_left;
                printf("  %s block %d: ticket %u left after the launch (must be zero again)\n", tq_type_name(tq), ib,
                       ticket[(size_t) ib]);
            }
        }
    }

    type_result r;
    r.failed += spec_tickets_left;

    // the f16 / f32 converter (tq_k_dequant8) on the CPU's blocks: every value must be the CPU decoder's (f32) and
    // its round-to-nearest-even f16; three thread blocks, so that the grid-stride loop wraps. Outlier types: in
    // every third block the second slot names the first one's position, with a stray high bit (the later slot
    // wins; positions are taken mod 64)
    {
        const int64_t         n_val = (int64_t) n_blocks * QK_TQ;
        std::vector<uint8_t>  blocks = cpu;
        std::vector<float>    ref((size_t) n_val);
        std::vector<float>    yf((size_t) n_val, NAN);
        std::vector<uint16_t> yh((size_t) n_val, 0x7E00);
        if constexpr (F::n_out > 0) {
            for (int ib = 1; ib < n_blocks; ib += 3) {
                uint8_t * op = &blocks[(size_t) ib * bs] + 2 + 2 * F::n_out;
                op[1]        = (uint8_t) (op[0] | 0x40);
            }
        }
        tq_dequantize_row(tq, blocks.data(), ref.data(), n_val);
        gridDim = emu_dim3{ 3, 1, 1 };
        for (unsigned b = 0; b < gridDim.x; ++b) {
            blockIdx = emu_dim3{ b, 0, 0 };
            emu_run_block(TQ_DQ_THREADS, [&]() { tq_k_dequant8<type, half>(blocks.data(), (half *) yh.data(), n_val / 8, tab); });
            emu_run_block(TQ_DQ_THREADS, [&]() { tq_k_dequant8<type, float>(blocks.data(), yf.data(), n_val / 8, tab); });
        }
        gridDim = emu_dim3{ 1, 1, 1 };
        int bad = 0;
        for (int64_t i = 0; i < n_val; ++i) {
            const uint16_t h_ref = __half_as_ushort(__float2half_rn(ref[i]));
            if (memcmp(&yf[i], &ref[i], sizeof(float)) != 0 || yh[i] != h_ref) {
                if (bad++ < 5) {
                    printf("  %s value %lld (block %lld): converter f32 %.9g f16 0x%04x, CPU %.9g f16 0x%04x\n",
                           tq_type_name(tq), (long long) i, (long long) (i / QK_TQ), yf[i], yh[i], ref[i], h_ref);
                }
            }
        }
        r.failed += bad > 0 ? 1 : 0;
    }

    int n_cmp = 0;  // blocks compared
    // form: 1 the separate kernel (trellis: G = 1), 2 the trellis G = 2 form, 3 the fused kernel's V, 4 its K
    // (5: the fused kernel's V with the passes side by side, compared with form 1 below)
    auto check = [&](const int tq_t, const size_t bs_t, const std::vector<uint8_t> & out,
                     const std::vector<uint8_t> & ref, const int form) {
        for (int ib = 0; ib < n_blocks; ++ib) {
            ++n_cmp;
            const uint8_t * g = &out[(size_t) ib * bs_t];
            const uint8_t * c = &ref[(size_t) ib * bs_t];
            if (memcmp(g, c, bs_t) == 0) {
                continue;
            }
            ++r.differing;
            const float * xb  = &x[(size_t) ib * QK_TQ];
            const double  eg  = block_err(tq_t, g, xb);
            const double  ec  = block_err(tq_t, c, xb);
            const double  rel = std::fabs(eg - ec) / std::max(ec, 1e-30);
            r.worst           = std::max(r.worst, rel);
            const bool ok     = std::isfinite(eg) && rel <= 1e-5;
            r.failed += ok ? 0 : 1;
            if (!ok || verbose) {
                printf("  %s block %d (kind %d, form %d): %s, squared error GPU %.9g CPU %.9g\n", tq_type_name(tq_t),
                       ib, ib % 12, form, ok ? "differs (equal error)" : "DIFFERS", eg, ec);
            }
        }
    };
    check(tq, bs, gpu, cpu, 1);
    if constexpr (F::trellis) {
        check(tq, bs, gpu2, cpu, 2);
        check(tq, bs, gpu3, cpu, 3);
        check(tq_k, bs_k, gpu_k, cpu_k, 4);
        // the three trellis forms run the same arithmetic in the same order: byte for byte the same blocks, even
        // where they would differ from the CPU's
        for (int ib = 0; ib < n_blocks; ++ib) {
            const uint8_t * g1 = &gpu[(size_t) ib * bs];
            for (const std::vector<uint8_t> * other : { &gpu2, &gpu3, &gpu4 }) {
                if (other == &gpu4 && ib >= std::min(n_blocks, 24)) {
                    continue;  // (the side-by-side form ran on the first 24 blocks)
                }
                if (memcmp(g1, &(*other)[(size_t) ib * bs], bs) != 0) {
                    ++r.failed;
                    printf("  %s block %d: the trellis forms disagree (form %d)\n", tq_type_name(tq), ib,
                           other == &gpu2 ? 2 : other == &gpu3 ? 3 : 5);
                }
            }
            if (ib < std::min(n_blocks, 24) && memcmp(&gpu_k[(size_t) ib * bs_k], &gpu_k4[(size_t) ib * bs_k], bs_k)) {
                ++r.failed;
                printf("  %s block %d: the K part of the two fused forms disagree\n", tq_type_name(tq), ib);
            }
        }
    }
    const bool too_many = r.differing > max_diff * n_cmp;
    if (too_many) {
        ++r.failed;
    }
    printf("%-7s blocks=%d differing=%d%s failed=%d worst_rel_err_diff=%.3g\n", tq_type_name(tq), n_blocks,
           r.differing, too_many ? " (too many)" : "", r.failed, r.worst);
    return r;
}

// a table like tq-calibrate's: n profiles of width bits per coordinate on average (0..6 bits per coordinate, the
// index included in the budget), scales spread over 1e-3 .. 1e1
static bool make_kprof_table(tq_kprof_table * t, const int width, const int n, const uint64_t seed) {
    std::mt19937_64                       rng(seed);
    std::uniform_real_distribution<float> unif(0.0f, 1.0f);
    std::vector<uint8_t>                  bits((size_t) n * QK_TQ);
    std::vector<float>                    scale((size_t) n * QK_TQ);
    int                                   index_bits = 0;
    while ((1 << index_bits) < n) {
        index_bits++;
    }
    const int budget = QK_TQ * width + 16 - index_bits;
    for (int p = 0; p < n; ++p) {
        int left = budget;
        for (int j = 0; j < QK_TQ; ++j) {
            int b = (int) (rng() % (TQ_KPROF_MAX_BITS + 1));
            b     = std::min(b, std::min(left, TQ_KPROF_MAX_BITS));
            if (p % 5 == 0) {
                b = std::min(width, left);  // some flat profiles
            }
            bits[(size_t) p * QK_TQ + j]  = (uint8_t) b;
            scale[(size_t) p * QK_TQ + j] = std::pow(10.0f, -3.0f + 4.0f * unif(rng));
            left -= b;
        }
    }
    // exact ties between profiles: p + 1 (the next thread's), p + 32 (another warp's) and p + TQ_KPROF_THREADS (the
    // same thread's) copy p, for p = 0, 10, ...
    for (int p = 0; p + TQ_KPROF_THREADS < n; p += 10) {
        for (const int c : { p + 1, p + 32, p + TQ_KPROF_THREADS }) {
            memcpy(&bits[(size_t) c * QK_TQ], &bits[(size_t) p * QK_TQ], QK_TQ);
            memcpy(&scale[(size_t) c * QK_TQ], &scale[(size_t) p * QK_TQ], QK_TQ * sizeof(float));
        }
    }
    float levels[TQ_KPROF_N_LEVELS];
    tq_kprof_gaussian_levels(levels);
    return tq_kprof_init(t, n, QK_TQ * width + 16, bits.data(), scale.data(), levels);
}

// the ktqp encoder (tq_k_encode_kprof, a thread block per block) and the
// decoder (tq_kprof_dequant1) against the CPU reference with table t: byte for byte and value for value
static type_result run_kprof(const char * name, const tq_kprof_table * t, const int n_blocks, const uint64_t seed,
                             const bool verbose) {
    const size_t             bs   = (size_t) t->block_bits / 8;
    const float *            lv   = tq_kprof_active(2)->levels[2];
    const std::vector<float> x    = make_blocks(n_blocks, seed + 101, lv, 4);
    std::vector<char>        flat(tq_cuda_kprof_layout::bytes, 0);
    tq_cuda_kprof_flatten(t, flat.data());
    const tq_cuda_kprof      T = tq_cuda_kprof_view(flat.data(), t);
    std::vector<uint8_t>     gpu((size_t) n_blocks * bs, 0xA5);
    std::vector<uint8_t>     cpu((size_t) n_blocks * bs, 0x5A);
    for (int ib = 0; ib < n_blocks; ++ib) {
        tq_kprof_quantize_block(t, &x[(size_t) ib * QK_TQ], &cpu[(size_t) ib * bs]);
    }
    const emu_loc loc{ x.data(), gpu.data(), bs };
    for (int tb = 0; tb < n_blocks; ++tb) {
        blockIdx = emu_dim3{ (unsigned) tb, 0, 0 };
        emu_run_block(TQ_KPROF_THREADS, [&]() { tq_k_encode_kprof<emu_loc>(loc, T, n_blocks); });
    }
    type_result r;
    for (int ib = 0; ib < n_blocks; ++ib) {
        if (memcmp(&gpu[(size_t) ib * bs], &cpu[(size_t) ib * bs], bs) != 0) {
            ++r.differing;
            ++r.failed;
            if (r.failed <= 5 || verbose) {
                printf("  %s block %d (kind %d): DIFFERS, profile GPU %d CPU %d\n", name, ib, ib % 12,
                       tq_kprof_block_profile(t, &gpu[(size_t) ib * bs]), tq_kprof_block_profile(t, &cpu[(size_t) ib * bs]));
            }
        }
    }
    // the decoder on the CPU's blocks, with every 7th block's index past n_profiles where the index bits allow
    std::vector<uint8_t> blocks = cpu;
    for (int ib = 3; ib < n_blocks; ib += 7) {
        if ((1 << t->index_bits) > t->n_profiles) {
            uint8_t * b = &blocks[(size_t) ib * bs];
            b[0] |= (uint8_t) ((1 << t->index_bits) - 1);
            if (t->index_bits > 8) {
                b[1] |= (uint8_t) ((1 << (t->index_bits - 8)) - 1);
            }
        }
    }
    int bad = 0;
    for (int ib = 0; ib < n_blocks; ++ib) {
        float ref[QK_TQ];
        tq_kprof_dequantize_block(t, &blocks[(size_t) ib * bs], ref);
        float v[QK_TQ];  // thread j decodes value j
        emu_run_block(QK_TQ, [&]() { v[threadIdx.x] = tq_kprof_dequant1(&blocks[(size_t) ib * bs], (int) threadIdx.x, T); });
        for (int j = 0; j < QK_TQ; ++j) {
            if (memcmp(&v[j], &ref[j], sizeof(float)) != 0 && bad++ < 5) {
                printf("  %s block %d value %d: GPU decoder %.9g, CPU %.9g\n", name, ib, j, v[j], ref[j]);
            }
        }
    }
    r.failed += bad > 0 ? 1 : 0;
    printf("%-7s blocks=%d differing=%d failed=%d (%d profiles)\n", name, n_blocks, r.differing, r.failed,
           t->n_profiles);
    return r;
}

int main(int argc, char ** argv) {
    emu_order    order      = EMU_ORDER_FORWARD;
    const char * order_name = "forward";
    uint64_t     seed       = 1;
    int          n_blocks   = 240;
    double       max_diff   = 0.01;
    bool         verbose    = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a    = argv[i];
        auto              next = [&]() -> const char * {
            if (i + 1 >= argc) {
                fprintf(stderr, "encode_emu: %s needs a value\n", a.c_str());
                exit(2);
            }
            return argv[++i];
        };
        if (a == "--order") {
            order_name = next();
            if (!emu_order_from_name(order_name, &order)) {
                fprintf(stderr, "encode_emu: unknown order %s\n", order_name);
                return 2;
            }
        } else if (a == "--seed") {
            seed = strtoull(next(), nullptr, 10);
        } else if (a == "--blocks") {
            n_blocks = atoi(next());
        } else if (a == "--max-diff") {
            max_diff = atof(next());
        } else if (a == "--verbose") {
            verbose = true;
        } else {
            fprintf(stderr, "usage: encode_emu [--order forward|backward|shuffled] [--seed N] [--blocks N] "
                            "[--max-diff F] [--verbose]\n");
            return 2;
        }
    }
    emu_set_order(order, seed);

    int n_types = 0, n_all = 0, n_diff = 0, n_failed = 0;
#define X(T, t)                                                                              \
    {                                                                                        \
        const type_result r = run_type<GGML_TYPE_##T>(n_blocks, seed, max_diff, verbose, order); \
        ++n_types;                                                                           \
        n_all += n_blocks;                                                                   \
        n_diff += r.differing;                                                               \
        n_failed += r.failed;                                                                \
    }
    TQ_GGML_FOR_EACH(X)
#undef X
    static tq_kprof_table calibrated;  // (large: not on the stack)
    for (int width = 2; width <= 3; ++width) {
        const std::string name = "ktqp" + std::to_string(width);
        for (const bool builtin : { true, false }) {
            if (!builtin && !make_kprof_table(&calibrated, width, 200, seed + (uint64_t) width)) {
                printf("encode_emu: the test's ktqp%d table is invalid\n", width);
                return 1;
            }
            const type_result r = run_kprof((name + (builtin ? "" : "c")).c_str(),
                                            builtin ? tq_kprof_active(width) : &calibrated, n_blocks, seed, verbose);
            ++n_types;
            n_all += n_blocks;
            n_diff += r.differing;
            n_failed += r.failed;
        }
    }
    printf("encode_emu: order=%s types=%d blocks=%d differing=%d failed=%d\n", order_name, n_types, n_all, n_diff,
           n_failed);
    return n_failed == 0 ? 0 : 1;
}
