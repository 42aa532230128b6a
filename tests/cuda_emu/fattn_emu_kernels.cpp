// llama-tq: the instances of the real decode kernel for one head size, EMU_HEAD_SIZE, and their emulated
// launch (what tq_fattn_launch does on the GPU). "tq-fattn-impl-emu.cuh" is src/ggml-tq/cuda/tq-fattn-impl.cuh
// as test_fattn_emu.py copies it into the build folder: unchanged but for the host launcher tq_fattn_launch (its
// <<<...>>> launch is not C++), which emu_fattn_launch below replaces.
#include "fattn_emu.h"
#include "tq-fattn-impl-emu.cuh"

#ifndef EMU_HEAD_SIZE
#error "compile with -DEMU_HEAD_SIZE=64, 128 or 256"
#endif

// the grid of tq_fattn_launch, one block after another: (KV head x column group, sequence, KV split); p.mma picks
// the tensor-core form (2: its staging variant, 3: vtq2 without its pair table, 4: its cross-head variant, a block
// per group of TQ_FA_XH_HEADS KV heads) for a V type without outlier slots, as tq_fattn_launch does
template <int D, ggml_type type_k, ggml_type type_v, int NC>
static void emu_fattn_launch(const tq_fattn_params & p) {
    const tq_cuda_tab<type_k> ktab = tq_cuda_host_tab<type_k>();
    const tq_cuda_tab<type_v> vtab = tq_cuda_host_tab<type_v>();
    const int n_x = (p.mma == 4 ? p.n_kv_head / TQ_FA_XH_HEADS : p.n_kv_head) * p.n_col_grp;
    for (int z = 0; z < p.n_split; ++z) {
        for (int y = 0; y < p.n_seq; ++y) {
            for (int x = 0; x < n_x; ++x) {
                blockIdx = emu_dim3{ (unsigned) x, (unsigned) y, (unsigned) z };
                emu_run_block(TQ_FA_NTHREADS, [&]() {
                    if constexpr (tq_cuda_fmt<type_v>::n_out == 0) {
                        if (p.mma) {
                            if (p.mma == 2) {
                                tq_k_fattn_mma<D, type_k, type_v, NC, true, true, false>(p, ktab, vtab);
                            } else if (p.mma == 3) {
                                tq_k_fattn_mma<D, type_k, type_v, NC, false, false, false>(p, ktab, vtab);
                            } else if (p.mma == 4) {
                                tq_k_fattn_mma<D, type_k, type_v, NC, false, true, true>(p, ktab, vtab);
                            } else {
                                tq_k_fattn_mma<D, type_k, type_v, NC, false, true, false>(p, ktab, vtab);
                            }
                            return;
                        }
                    }
                    tq_k_fattn_vec<D, type_k, type_v, NC>(p, ktab, vtab);
                });
            }
        }
    }
}

// NC = 2, 4, 8 query columns per block as tq-fattn-d*.cu instantiates them (head size 256: 2 and 4, as the
// dispatch in tq-fattn.cu never picks 8 there)
template <int D, ggml_type type_k, ggml_type type_v>
static void emu_fattn_add(std::vector<emu_fattn_instance> & out) {
    out.push_back({ D, type_k, type_v, 2, emu_fattn_launch<D, type_k, type_v, 2> });
    out.push_back({ D, type_k, type_v, 4, emu_fattn_launch<D, type_k, type_v, 4> });
    if constexpr (D != 256) {
        out.push_back({ D, type_k, type_v, 8, emu_fattn_launch<D, type_k, type_v, 8> });
    }
}

#define EMU_CONCAT_(a, b) a##b
#define EMU_CONCAT(a, b)  EMU_CONCAT_(a, b)

void EMU_CONCAT(emu_fattn_instances_d, EMU_HEAD_SIZE)(std::vector<emu_fattn_instance> & out) {
#define X(K, V) emu_fattn_add<EMU_HEAD_SIZE, GGML_TYPE_##K, GGML_TYPE_##V>(out);
    EMU_PAIRS(X)
#undef X
}
