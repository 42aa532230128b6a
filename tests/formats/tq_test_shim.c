// Test-only exports of the header's inline helpers and struct sizes (built with the library by conftest.py).
#include "tq-kprof.h"
#include "tq-quants.h"

void   tq_test_fp16_to_fp32(const uint16_t * h, float * f, int64_t n);
void   tq_test_fp32_to_fp16(const float * f, uint16_t * h, int64_t n);
size_t tq_test_sizeof(int type);
size_t tq_test_kprof_table_size(void);

void tq_test_fp16_to_fp32(const uint16_t * h, float * f, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        f[i] = tq_fp16_to_fp32(h[i]);
    }
}

void tq_test_fp32_to_fp16(const float * f, uint16_t * h, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        h[i] = tq_fp32_to_fp16(f[i]);
    }
}

size_t tq_test_sizeof(int type) {
    switch (type) {
        case TQ_TYPE_KTQ2:   return sizeof(block_ktq2);
        case TQ_TYPE_KTQ3:   return sizeof(block_ktq3);
        case TQ_TYPE_KTQ4:   return sizeof(block_ktq4);
        case TQ_TYPE_VTQ2_1: return sizeof(block_vtq2_1);
        case TQ_TYPE_VTQ3_1: return sizeof(block_vtq3_1);
        case TQ_TYPE_VTQ4_1: return sizeof(block_vtq4_1);
        case TQ_TYPE_VTQ2_2: return sizeof(block_vtq2_2);
        case TQ_TYPE_VTQ3_2: return sizeof(block_vtq3_2);
        case TQ_TYPE_VTQ4_2: return sizeof(block_vtq4_2);
        case TQ_TYPE_VTQ2_3: return sizeof(block_vtq2_3);
        case TQ_TYPE_VTQ3_3: return sizeof(block_vtq3_3);
        case TQ_TYPE_VTQ4_3: return sizeof(block_vtq4_3);
        case TQ_TYPE_KTQP2:  return sizeof(block_ktqp2);
        case TQ_TYPE_KTQP3:  return sizeof(block_ktqp3);
        default:             return 0;
    }
}

size_t tq_test_kprof_table_size(void) {
    return sizeof(tq_kprof_table);
}
