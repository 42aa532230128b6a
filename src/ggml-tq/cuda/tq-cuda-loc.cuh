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
struct tq_cuda_loc_set_rows {
    const char * src0;
    const char * src1;
    char *       dst;
    uint3        nblk, ne01, ne02, ne11, ne12;  // fastdiv values of blocks per row (ne00 / 64), ne01, ...
    size_t       nb00, nb01, nb02, nb03, nb10, nb11, nb12, nb1, nb2, nb3;
    int          bs;
    bool         idx64;

    __device__ void split(const int64_t ib, uint32_t & i00, uint32_t & i01, uint32_t & i02, uint32_t & i03) const {
        const uint2 a = fast_div_modulo((uint32_t) ib, nblk);
        const uint2 b = fast_div_modulo(a.x, ne01);
        const uint2 c = fast_div_modulo(b.x, ne02);
        i00 = a.y * QK_TQ;
        i01 = b.y;
        i02 = c.y;
        i03 = c.x;
    }

    // the block's 64 source values are src_row(ib)[j * nb00]
    __device__ const char * src_row(const int64_t ib) const {
        uint32_t i00, i01, i02, i03;
        split(ib, i00, i01, i02, i03);
        return src0 + i00 * nb00 + i01 * nb01 + i02 * nb02 + i03 * nb03;
    }

    __device__ uint8_t * dst_blk(const int64_t ib) const {
        uint32_t i00, i01, i02, i03;
        split(ib, i00, i01, i02, i03);
        const char *  pi  = src1 + i01 * nb10 + fastmodulo(i02, ne11) * nb11 + fastmodulo(i03, ne12) * nb12;
        const int64_t row = idx64 ? *(const int64_t *) pi : (int64_t) *(const int32_t *) pi;
        return (uint8_t *) (dst + row * nb1 + i02 * nb2 + i03 * nb3) + (i00 / QK_TQ) * bs;
    }
};

// CPY F32 -> type: the flattened element order of src0 and dst agree; dst rows hold whole blocks
struct tq_cuda_loc_cpy {
    const char * src0;
    char *       dst;
    uint3        nblk0, ne01, ne02;  // fastdiv values of src0's blocks per row (ne00 / 64), ne01, ne02
    size_t       nb00, nb01, nb02, nb03;
    uint3        nblk1, ne11, ne12;  // dst: blocks per row, ne11, ne12
    size_t       nb11, nb12, nb13;
    int          bs;

    // src0->ne[0] % 64 == 0 (supports_op), so a block's values lie in one source row
    __device__ const char * src_row(const int64_t ib) const {
        const uint2 a = fast_div_modulo((uint32_t) ib, nblk0);
        const uint2 b = fast_div_modulo(a.x, ne01);
        const uint2 c = fast_div_modulo(b.x, ne02);
        return src0 + (size_t) a.y * QK_TQ * nb00 + b.y * nb01 + c.y * nb02 + c.x * nb03;
    }

    __device__ uint8_t * dst_blk(const int64_t ib) const {
        const uint2 a = fast_div_modulo((uint32_t) ib, nblk1);
        const uint2 b = fast_div_modulo(a.x, ne11);
        const uint2 c = fast_div_modulo(b.x, ne12);
        return (uint8_t *) (dst + b.y * nb11 + c.y * nb12 + c.x * nb13) + (size_t) a.y * bs;
    }
};

// host: the locator of a SET_ROWS of F32 rows src0 (ne0, nb0) into dst (row strides nbd) at the rows that the
// indices src1 (ne1, nb1; int64 if idx64, else int32) name, blocks of bs bytes; ne0[0] % 64 == 0
static tq_cuda_loc_set_rows tq_cuda_make_loc_set_rows(const void * src0, const int64_t * ne0, const size_t * nb0,
                                                      const void * src1, const int64_t * ne1, const size_t * nb1,
                                                      const bool idx64, void * dst, const size_t * nbd, const int bs) {
    tq_cuda_loc_set_rows loc;
    loc.src0  = (const char *) src0;
    loc.src1  = (const char *) src1;
    loc.dst   = (char *) dst;
    loc.nblk  = init_fastdiv_values(ne0[0] / QK_TQ);
    loc.ne01  = init_fastdiv_values(ne0[1]);
    loc.ne02  = init_fastdiv_values(ne0[2]);
    loc.ne11  = init_fastdiv_values(ne1[1]);
    loc.ne12  = init_fastdiv_values(ne1[2]);
    loc.nb00  = nb0[0];
    loc.nb01  = nb0[1];
    loc.nb02  = nb0[2];
    loc.nb03  = nb0[3];
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
    loc.src0  = (const char *) src0;
    loc.dst   = (char *) dst;
    loc.nblk0 = init_fastdiv_values(ne0[0] / QK_TQ);
    loc.ne01  = init_fastdiv_values(ne0[1]);
    loc.ne02  = init_fastdiv_values(ne0[2]);
    loc.nb00  = nb0[0];
    loc.nb01  = nb0[1];
    loc.nb02  = nb0[2];
    loc.nb03  = nb0[3];
    loc.nblk1 = init_fastdiv_values(ned[0] / QK_TQ);
    loc.ne11  = init_fastdiv_values(ned[1]);
    loc.ne12  = init_fastdiv_values(ned[2]);
    loc.nb11  = nbd[1];
    loc.nb12  = nbd[2];
    loc.nb13  = nbd[3];
    loc.bs    = bs;
    return loc;
}
