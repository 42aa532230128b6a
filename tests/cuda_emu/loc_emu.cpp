// llama-tq: the locators of the CUDA encoders (src/ggml-tq/cuda/tq-cuda-loc.cuh: the host setup and the device
// src_row / dst_blk of a SET_ROWS or CPY into a llama-tq type) on a CPU, against nested loops over the tensors'
// coordinates: random shapes, strides with padding, int32 and int64 indices broadcast over dims 2 and 3, a CPY
// into a tensor of another shape (the same element order), and block indices near 2^31 (sampled).
//
//   loc_emu [--seed N] [--cases N]
// prints "loc_emu: cases=... blocks=... failed=..." and exits 1 if any block is located wrongly.
#include "common.cuh"
#include "tq-cuda-loc.cuh"

#include <cinttypes>
#include <random>
#include <string>
#include <vector>

static int64_t g_blocks = 0;
static int64_t g_failed = 0;

static void check(const bool ok, const char * what, const int64_t ib, const int64_t got, const int64_t want) {
    ++g_blocks;
    if (!ok) {
        if (g_failed < 10) {
            fprintf(stderr, "  %s: block %" PRId64 ": offset %" PRId64 ", expected %" PRId64 "\n", what, ib, got, want);
        }
        ++g_failed;
    }
}

// a uniform integer in [lo, hi]
static int64_t rnd(std::mt19937_64 & rng, const int lo, const int hi) {
    return lo + (int64_t) (rng() % (uint64_t) (hi - lo + 1));
}

// a SET_ROWS of src0 [ne00, ne01, ne02, ne03] (F32, padded strides) at the rows named by src1 [ne01, ne11, ne12]
static void case_set_rows(std::mt19937_64 & rng) {
    auto r = [&](int lo, int hi) { return rnd(rng, lo, hi); };
    const int64_t nblk = r(1, 4), ne01 = r(1, 9), ne02 = r(1, 6), ne03 = r(1, 3);
    const int64_t ne00 = nblk * QK_TQ;
    int64_t       ne11 = r(1, (int) ne02), ne12 = r(1, (int) ne03);
    while (ne02 % ne11) {
        --ne11;  // the indices broadcast over dims 2 and 3
    }
    while (ne03 % ne12) {
        --ne12;
    }
    const bool    idx64 = rng() % 2;
    const size_t  isz   = idx64 ? 8 : 4;
    const size_t  s01   = (size_t) (4 * ne00 + 4 * r(0, 3));
    const size_t  s02   = s01 * ne01 + 4 * r(0, 3);
    const size_t  s0[4] = { 4, s01, s02, s02 * ne02 + 4 * r(0, 3) };
    const int64_t ne0[4] = { ne00, ne01, ne02, ne03 };
    const int64_t ne1[4] = { ne01, ne11, ne12, 1 };
    const size_t  s1_1   = isz * ne01 + isz * r(0, 2);
    const size_t  s1[4]  = { isz, s1_1, s1_1 * ne11, s1_1 * ne11 * ne12 };
    const int     bs     = (int) r(1, 40);
    const int64_t rows   = r(1, 50);
    const size_t  nd1    = (size_t) (nblk * bs + r(0, 7));
    const size_t  sd[4]  = { (size_t) bs, nd1, nd1 * rows, nd1 * rows * ne02 };

    std::vector<char>    src0(s0[3] * ne03);
    std::vector<char>    dst(sd[3] * ne03);
    std::vector<int64_t> rowid(ne01 * ne11 * ne12);  // the row each index names
    std::vector<char>    src1(s1[3]);
    for (int64_t i12 = 0; i12 < ne12; ++i12) {
        for (int64_t i11 = 0; i11 < ne11; ++i11) {
            for (int64_t i10 = 0; i10 < ne01; ++i10) {
                const int64_t v = r(0, (int) rows - 1);
                rowid[(i12 * ne11 + i11) * ne01 + i10] = v;
                char * p = src1.data() + i10 * s1[0] + i11 * s1[1] + i12 * s1[2];
                if (idx64) {
                    memcpy(p, &v, 8);
                } else {
                    const int32_t v32 = (int32_t) v;
                    memcpy(p, &v32, 4);
                }
            }
        }
    }
    const tq_cuda_loc_set_rows loc =
        tq_cuda_make_loc_set_rows(src0.data(), ne0, s0, src1.data(), ne1, s1, idx64, dst.data(), sd, bs);
    int64_t ib = 0;
    for (int64_t i03 = 0; i03 < ne03; ++i03) {
        for (int64_t i02 = 0; i02 < ne02; ++i02) {
            for (int64_t i01 = 0; i01 < ne01; ++i01) {
                for (int64_t b = 0; b < nblk; ++b, ++ib) {
                    const int64_t so = b * QK_TQ * s0[0] + i01 * s0[1] + i02 * s0[2] + i03 * s0[3];
                    const int64_t row = rowid[((i03 % ne12) * ne11 + i02 % ne11) * ne01 + i01];
                    const int64_t dof = row * sd[1] + i02 * sd[2] + i03 * sd[3] + b * bs;
                    const int64_t gs  = loc.src_row(ib) - src0.data();
                    const int64_t gd  = (const char *) loc.dst_blk(ib) - dst.data();
                    check(gs == so, "set_rows src", ib, gs, so);
                    check(gd == dof, "set_rows dst", ib, gd, dof);
                }
            }
        }
    }
}

// a CPY of src0 [ne0] (padded strides) into dst [ned] of the same element count, blocks of bs bytes
static void case_cpy(std::mt19937_64 & rng) {
    auto r = [&](int lo, int hi) { return rnd(rng, lo, hi); };
    const int64_t ne0[4] = { QK_TQ * r(1, 4), r(1, 6), r(1, 4), r(1, 3) };
    const int64_t n      = ne0[0] * ne0[1] * ne0[2] * ne0[3];
    // dst: another split of the same elements into rows of whole blocks
    int64_t ned[4] = { QK_TQ, 1, 1, 1 };
    {
        int64_t nb = n / QK_TQ;  // blocks
        const int64_t f0 = r(1, 4);
        ned[0]           = nb % f0 == 0 ? QK_TQ * f0 : QK_TQ;
        nb /= ned[0] / QK_TQ;
        const int64_t f1 = r(1, 6);
        ned[1]           = nb % f1 == 0 ? f1 : 1;
        nb /= ned[1];
        const int64_t f2 = r(1, 3);
        ned[2]           = nb % f2 == 0 ? f2 : 1;
        ned[3]           = nb / ned[2];
    }
    const int     bs     = (int) r(1, 40);
    const size_t  s01    = (size_t) (4 * ne0[0] + 4 * r(0, 3));
    const size_t  s02    = s01 * ne0[1] + 4 * r(0, 3);
    const size_t  s0[4]  = { 4, s01, s02, s02 * ne0[2] + 4 * r(0, 3) };
    const size_t  sd1    = (size_t) (ned[0] / QK_TQ * bs + r(0, 5));
    const size_t  sd2    = sd1 * ned[1] + r(0, 5);
    const size_t  sd[4]  = { (size_t) bs, sd1, sd2, sd2 * ned[2] + r(0, 5) };
    std::vector<char> src0(s0[3] * ne0[3]);
    std::vector<char> dst(sd[3] * ned[3]);
    const tq_cuda_loc_cpy loc = tq_cuda_make_loc_cpy(src0.data(), ne0, s0, dst.data(), ned, sd, bs);
    int64_t ib = 0;
    for (int64_t i3 = 0; i3 < ne0[3]; ++i3) {
        for (int64_t i2 = 0; i2 < ne0[2]; ++i2) {
            for (int64_t i1 = 0; i1 < ne0[1]; ++i1) {
                for (int64_t i0 = 0; i0 < ne0[0]; i0 += QK_TQ, ++ib) {
                    const int64_t so = i0 * s0[0] + i1 * s0[1] + i2 * s0[2] + i3 * s0[3];
                    // the block's first element in dst's coordinates
                    int64_t       e  = ib * QK_TQ;
                    const int64_t d0 = e % ned[0];
                    e /= ned[0];
                    const int64_t d1 = e % ned[1];
                    e /= ned[1];
                    const int64_t d2 = e % ned[2];
                    const int64_t d3 = e / ned[2];
                    const int64_t dof = d0 / QK_TQ * bs + d1 * sd[1] + d2 * sd[2] + d3 * sd[3];
                    const int64_t gs  = loc.src_row(ib) - src0.data();
                    const int64_t gd  = (const char *) loc.dst_blk(ib) - dst.data();
                    check(gs == so, "cpy src", ib, gs, so);
                    check(gd == dof, "cpy dst", ib, gd, dof);
                }
            }
        }
    }
}

// block indices up to 2^31 - 1 of a large SET_ROWS (sampled; offsets only, src0 and dst never read): the 32-bit
// splits must hold over the whole range tq_encode_cuda allows
static void case_large(std::mt19937_64 & rng) {
    const int64_t nblk = 4096, ne01 = 4096, ne02 = 127, ne03 = 1;  // 2130706432 blocks
    const int64_t ne0[4] = { nblk * QK_TQ, ne01, ne02, ne03 };
    const int64_t ne1[4] = { ne01, 1, 1, 1 };
    const size_t  s0[4]  = { 4, (size_t) (4 * ne0[0]), (size_t) (4 * ne0[0] * ne01), (size_t) (4 * ne0[0] * ne01 * ne02) };
    const size_t  s1[4]  = { 4, (size_t) (4 * ne01), (size_t) (4 * ne01), (size_t) (4 * ne01) };
    const size_t  sd[4]  = { 18, (size_t) (18 * nblk), (size_t) (18 * nblk * ne01), (size_t) (18 * nblk * ne01 * ne02) };
    std::vector<int32_t> idx(ne01);
    for (int64_t i = 0; i < ne01; ++i) {
        idx[i] = (int32_t) ((i * 7919) % ne01);
    }
    static char base_src, base_dst;  // offsets from these only
    const tq_cuda_loc_set_rows loc =
        tq_cuda_make_loc_set_rows(&base_src, ne0, s0, idx.data(), ne1, s1, false, &base_dst, sd, 18);
    const int64_t nblocks = nblk * ne01 * ne02 * ne03;
    for (int k = 0; k < 200000; ++k) {
        const int64_t ib  = k < 4 ? nblocks - 1 - k : (int64_t) (rng() % (uint64_t) nblocks);
        const int64_t b   = ib % nblk;
        const int64_t i01 = ib / nblk % ne01;
        const int64_t i02 = ib / nblk / ne01;
        const int64_t so  = b * QK_TQ * 4 + i01 * (int64_t) s0[1] + i02 * (int64_t) s0[2];
        const int64_t dof = (int64_t) idx[i01] * (int64_t) sd[1] + i02 * (int64_t) sd[2] + b * 18;
        const int64_t gs  = (int64_t) ((uintptr_t) loc.src_row(ib) - (uintptr_t) &base_src);
        const int64_t gd  = (int64_t) ((uintptr_t) loc.dst_blk(ib) - (uintptr_t) &base_dst);
        check(gs == so, "large src", ib, gs, so);
        check(gd == dof, "large dst", ib, gd, dof);
    }
}

int main(int argc, char ** argv) {
    uint64_t seed  = 1;
    int      cases = 300;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--seed") {
            seed = strtoull(argv[i + 1], nullptr, 10);
        } else if (a == "--cases") {
            cases = atoi(argv[i + 1]);
        } else {
            fprintf(stderr, "usage: loc_emu [--seed N] [--cases N]\n");
            return 2;
        }
    }
    std::mt19937_64 rng(seed);
    for (int c = 0; c < cases; ++c) {
        case_set_rows(rng);
        case_cpy(rng);
    }
    case_large(rng);
    printf("loc_emu: cases=%d blocks=%" PRId64 " failed=%" PRId64 "\n", 2 * cases + 1, g_blocks, g_failed);
    return g_failed ? 1 : 0;
}
