// llama-tq: the locators of the CUDA encoders (tq-cuda.cu): where the blocks of a SET_ROWS / CPY into a llama-tq
// type come from and go to, and their host setup; tests/cuda_emu/loc_emu.cpp checks both on a CPU against nested
// loops over the tensors' coordinates.
#pragma once

#include "common.cuh"

// Where the blocks of a SET_ROWS / CPY come from and go to: value j of block ib is the float at
// src_row(ib) + j * nb00, dst_blk(ib) is the destination block. A launch has fewer than 2^31 blocks
// (tq_encode_cuda), so a block's index splits into its coordinates by 32-bit divisions by constants
// (ggml-cuda's fastdiv: a multiply-high and a shift). The 64-bit divisions they replace were calls of ~100
// instructions each, ~17 % of the stall samples of a decode step's fused K + V write (Nsight Compute's source
// page); on the H200 that write went from 12.00 to 11.35 us per launch (hd64, depth 0; docs/results.md).

// a block index split into (block in row, row index 1, 2, 3) of a tensor of whole 64-value blocks: x, y, z, w
struct tq_cuda_blk_split {
    uint3 nblk, ne1, ne2;  // fastdiv values of blocks per row (ne[0] / 64), ne[1], ne[2]

    __device__ uint4 operator()(const int64_t ib) const {
        const uint2 a = fast_div_modulo((uint32_t) ib, nblk);
        const uint2 b = fast_div_modulo(a.x, ne1);
        const uint2 c = fast_div_modulo(b.x, ne2);
        return make_uint4(a.y, b.y, c.y, c.x);
    }
};

// the F32 source of a SET_ROWS / CPY (both locators): block ib's 64 values are src_row(ib)[j * nb00] (ne[0] % 64 == 0,
// supports_op: a block's values lie in one row)
struct tq_cuda_loc_src {
    const char *      src0;
    tq_cuda_blk_split split;
    size_t            nb00, nb01, nb02, nb03;

    __device__ const char * src_row(const int64_t ib) const {
        const uint4 c = split(ib);
        return src0 + (size_t) c.x * QK_TQ * nb00 + c.y * nb01 + c.z * nb02 + c.w * nb03;
    }
};

struct tq_cuda_loc_set_rows : tq_cuda_loc_src {
    const char * src1;  // row indices [ne01, ne11, ne12], broadcast over dims 2 and 3
    char *       dst;
    uint3        ne11, ne12;  // fastdiv values
    size_t       nb10, nb11, nb12, nb1, nb2, nb3;
    int          bs;
    bool         idx64;

    __device__ uint8_t * dst_blk(const int64_t ib) const {
        const uint4   c   = split(ib);
        const char *  pi  = src1 + c.y * nb10 + fastmodulo(c.z, ne11) * nb11 + fastmodulo(c.w, ne12) * nb12;
        const int64_t row = idx64 ? *(const int64_t *) pi : (int64_t) *(const int32_t *) pi;
        return (uint8_t *) (dst + row * nb1 + c.z * nb2 + c.w * nb3) + (size_t) c.x * bs;
    }
};

// CPY F32 -> type: the flattened element order of src0 and dst agree; dst rows hold whole blocks
struct tq_cuda_loc_cpy : tq_cuda_loc_src {
    char *            dst;
    tq_cuda_blk_split dsplit;
    size_t            nb11, nb12, nb13;
    int               bs;

    __device__ uint8_t * dst_blk(const int64_t ib) const {
        const uint4 c = dsplit(ib);
        return (uint8_t *) (dst + c.y * nb11 + c.z * nb12 + c.w * nb13) + (size_t) c.x * bs;
    }
};

// host: the block split of a tensor of extents ne (ne[0] % 64 == 0)
static tq_cuda_blk_split tq_cuda_make_blk_split(const int64_t * ne) {
    return { init_fastdiv_values(ne[0] / QK_TQ), init_fastdiv_values(ne[1]), init_fastdiv_values(ne[2]) };
}

// host: the F32 source src0 (ne0, nb0)
static tq_cuda_loc_src tq_cuda_make_loc_src(const void * src0, const int64_t * ne0, const size_t * nb0) {
    return { (const char *) src0, tq_cuda_make_blk_split(ne0), nb0[0], nb0[1], nb0[2], nb0[3] };
}

// host: the locator of a SET_ROWS of F32 rows src0 (ne0, nb0) into dst (row strides nbd) at the rows that the
// indices src1 (ne1, nb1; int64 if idx64, else int32) name, blocks of bs bytes; ne0[0] % 64 == 0
static tq_cuda_loc_set_rows tq_cuda_make_loc_set_rows(const void * src0, const int64_t * ne0, const size_t * nb0,
                                                      const void * src1, const int64_t * ne1, const size_t * nb1,
                                                      const bool idx64, void * dst, const size_t * nbd, const int bs) {
    tq_cuda_loc_set_rows loc;
    static_cast<tq_cuda_loc_src &>(loc) = tq_cuda_make_loc_src(src0, ne0, nb0);
    loc.src1  = (const char *) src1;
    loc.dst   = (char *) dst;
    loc.ne11  = init_fastdiv_values(ne1[1]);
    loc.ne12  = init_fastdiv_values(ne1[2]);
    loc.nb10  = nb1[0];
    loc.nb11  = nb1[1];
    loc.nb12  = nb1[2];
    loc.nb1   = nbd[1];
    loc.nb2   = nbd[2];
    loc.nb3   = nbd[3];
    loc.bs    = bs;
    loc.idx64 = idx64;
    return loc;
}

// host: the locator of a CPY of F32 src0 (ne0, nb0) into dst (ned, nbd; blocks of bs bytes), the same element order;
// ne0[0] % 64 == 0 and ned[0] % 64 == 0
static tq_cuda_loc_cpy tq_cuda_make_loc_cpy(const void * src0, const int64_t * ne0, const size_t * nb0, void * dst,
                                            const int64_t * ned, const size_t * nbd, const int bs) {
    tq_cuda_loc_cpy loc;
    static_cast<tq_cuda_loc_src &>(loc) = tq_cuda_make_loc_src(src0, ne0, nb0);
    loc.dst    = (char *) dst;
    loc.dsplit = tq_cuda_make_blk_split(ned);
    loc.nb11   = nbd[1];
    loc.nb12   = nbd[2];
    loc.nb13   = nbd[3];
    loc.bs     = bs;
    return loc;
}
