// llama-tq: what the two parts of the decode-kernel emulation share: fattn_emu_kernels.cpp (compiled once per
// head size, it instantiates the real kernel) and fattn_emu.cpp (the cases and the reference).
#pragma once

#include "tq-fattn.cuh"  // the real header: its includes resolve to the shims common.cuh and ggml.h

#include <vector>

// the K/V pairs compiled: every K type with every V type (the build compiles a subset, TQ_FA_PAIRS); a build
// may pass a shorter list, -D'EMU_PAIRS(X)=X(KTQ3, VTQ3_3)'
#ifndef EMU_PAIRS
#define EMU_PAIRS(X)                                                                                       \
    X(KTQ2, VTQ2_1) X(KTQ2, VTQ3_1) X(KTQ2, VTQ4_1) X(KTQ2, VTQ2_2) X(KTQ2, VTQ3_2) X(KTQ2, VTQ4_2)         \
    X(KTQ2, VTQ2_3) X(KTQ2, VTQ3_3) X(KTQ2, VTQ4_3)                                                        \
    X(KTQ3, VTQ2_1) X(KTQ3, VTQ3_1) X(KTQ3, VTQ4_1) X(KTQ3, VTQ2_2) X(KTQ3, VTQ3_2) X(KTQ3, VTQ4_2)         \
    X(KTQ3, VTQ2_3) X(KTQ3, VTQ3_3) X(KTQ3, VTQ4_3)                                                        \
    X(KTQ4, VTQ2_1) X(KTQ4, VTQ3_1) X(KTQ4, VTQ4_1) X(KTQ4, VTQ2_2) X(KTQ4, VTQ3_2) X(KTQ4, VTQ4_2)         \
    X(KTQ4, VTQ2_3) X(KTQ4, VTQ3_3) X(KTQ4, VTQ4_3)
#endif

typedef void (*emu_fattn_launch_t)(const tq_fattn_params & p);

// one compiled instance of the kernel, tq_k_fattn_vec<D, type_k, type_v, nc>, and its emulated launch
struct emu_fattn_instance {
    int                D;
    ggml_type          type_k;
    ggml_type          type_v;
    int                nc;
    emu_fattn_launch_t launch;
};

// the instances of one head size (fattn_emu_kernels.cpp, compiled with -DEMU_HEAD_SIZE=64, 128, 256)
void emu_fattn_instances_d64(std::vector<emu_fattn_instance> & out);
void emu_fattn_instances_d128(std::vector<emu_fattn_instance> & out);
void emu_fattn_instances_d256(std::vector<emu_fattn_instance> & out);
