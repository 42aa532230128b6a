// CPU speed of the ktq/vtq reference: encode/decode of 576-element rows (9 blocks, a SmolLM2 K/V row)
// per type, and the trellis Viterbi alone per mode. Single thread, best of 5 rounds.
//
//   cc -O2 -std=c11 -Isrc/ggml-tq benchmarks/tq_speed.c src/ggml-tq/*.c -lm -o tq_speed && ./tq_speed
//   (add -O3 -march=native to see the AVX2 Viterbi path; the codebook header must exist or be on -I)
#define _POSIX_C_SOURCE 199309L
#include "tq-quants.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double) t.tv_sec + (double) t.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double urand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double) (rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static float gauss(void) {
    const double u = fmax(urand(), 1e-300);
    return (float) (sqrt(-2.0 * log(u)) * cos(6.283185307179586 * urand()));
}

#define NROWS 64
#define NCOL  576

int main(void) {
    static float   x[NROWS * NCOL];
    static float   y[NCOL];
    static uint8_t q[NROWS * 9 * 40];
    for (int i = 0; i < NROWS * NCOL; ++i) {
        x[i] = gauss();
    }
    tq_init();
    printf("codebook %s (fnv1a64 %s), Viterbi SIMD: %s\n", tq_codebook_source(), tq_codebook_hash(), tq_simd());
    printf("%-8s %12s %9s %10s %12s\n", "type", "encode us", "ns/elem", "blocks/s", "decode us");
    for (int t = 0; t < TQ_TYPE_COUNT; ++t) {
        const size_t rs   = tq_row_size(t, NCOL);
        double       best = 1e9, bestd = 1e9;
        for (int round = 0; round < 5; ++round) {
            double t0 = now();
            for (int r = 0; r < NROWS; ++r) {
                tq_quantize_row_ref(t, x + r * NCOL, q + r * rs, NCOL);
            }
            best = fmin(best, (now() - t0) / NROWS);
            t0   = now();
            for (int rep = 0; rep < 20; ++rep) {
                for (int r = 0; r < NROWS; ++r) {
                    tq_dequantize_row(t, q + r * rs, y, NCOL);
                }
            }
            bestd = fmin(bestd, (now() - t0) / (20 * NROWS));
        }
        printf("%-8s %12.1f %9.1f %10.0f %12.2f\n", tq_type_name(t), best * 1e6, best * 1e9 / NCOL, 9.0 / best,
               bestd * 1e6);
    }

    printf("\nViterbi alone, one block of N(0,1) at unit scale\n");
    printf("%2s %-10s %10s %9s %8s %9s\n", "k", "mode", "us/block", "ns/elem", "passes", "excess");
    static const char * names[3] = { "two-pass", "exact B&B", "exhaustive" };
    for (int k = 2; k <= 4; ++k) {
        double cost[3] = { 0, 0, 0 };
        for (int mode = 0; mode < 3; ++mode) {
            const int nb     = mode == 2 ? 32 : 256;
            double    best   = 1e9;
            long      passes = 0;
            for (int round = 0; round < (mode == 2 ? 1 : 5); ++round) {
                double c = 0.0;
                passes   = 0;
                const double t0 = now();
                for (int b = 0; b < nb; ++b) {
                    uint8_t qs[32];
                    int     p;
                    c += tq_trellis_viterbi(k, x + b * QK_TQ, NULL, qs, mode, &p);
                    passes += p;
                }
                best = fmin(best, (now() - t0) / nb);
                if (mode < 2 || round == 0) {
                    cost[mode] = c;
                }
            }
            if (mode == 2) {
                // exhaustive ran on the first 32 blocks only: compare with two-pass on the same blocks
                double c2 = 0.0;
                for (int b = 0; b < nb; ++b) {
                    uint8_t qs[32];
                    c2 += tq_trellis_viterbi(k, x + b * QK_TQ, NULL, qs, 0, NULL);
                }
                printf("%2d %-10s %10.1f %9.1f %8.2f %8.3f%%\n", k, names[mode], best * 1e6, best * 1e9 / QK_TQ,
                       (double) passes / nb, 100.0 * (c2 / cost[2] - 1.0));
            } else {
                printf("%2d %-10s %10.1f %9.1f %8.2f %8s\n", k, names[mode], best * 1e6, best * 1e9 / QK_TQ,
                       (double) passes / nb, "");
            }
        }
        printf("   two-pass cost over exact on 256 blocks: +%.3f%%\n", 100.0 * (cost[0] / cost[1] - 1.0));
    }
    return 0;
}
