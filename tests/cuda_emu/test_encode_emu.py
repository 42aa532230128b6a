"""The CUDA encoders (src/ggml-tq/cuda/tq-encode-impl.cuh) on a CPU, byte for byte against the CPU reference.

encode_emu.cpp runs the real kernels, tq_k_encode_codebook, tq_k_encode_trellis in both its forms (G = 1: two
warps per trellis block; G = 2: one warp, two blocks per thread block, an odd block count leaving the last one
half-empty) and the fused K + V kernel of a decode step (tq_k_encode_kv, ktq2 as K; also with its V blocks' two
Viterbi passes side by side, on the first 24 blocks of a type, its thread blocks in the lane order's direction or
shuffled, launched twice on the same tickets, which must be zero again after it), through the CUDA emulation
of this folder (64 lanes as coroutines, __syncthreads / __syncwarp / shuffles / __any_sync as real barriers)
block by block for every llama-tq type, and compares each encoded block with tq_quantize_row_ref of the CPU
reference (src/ggml-tq, built by tests/formats/conftest.py's build_library). The blocks cover plain, heavy-tailed
and uniform data, mostly-zero, constant and few-valued blocks (ties in the Viterbi minimum and the nearest level),
values exactly on the levels, denormals, huge values (clamped scales), NaN/Inf entries and all-zero blocks,
at scales 1e-4 to 1e4.

A block may differ only where the GPU's warp-reduced sums (another order than the CPU's loop) tip a choice
between two candidates within rounding; it then passes if its squared reconstruction error equals the CPU
encoding's within 1e-5 relative, and at most 1 % of a type's blocks may differ. So far none differs. The trellis
forms must agree with each other byte for byte.

The ktqp encoder and decoder (tq-kprof-cuda.cuh: a thread block per block, each thread scoring whole profiles,
then shuffle and shared-memory reductions) run on the same kinds of blocks with the built-in tables of ktqp2 /
ktqp3 and with a calibration-like table of 200 profiles (0..6 bits per coordinate, exact copies of some profiles
so that ties arise within a thread, a warp and a block), against tq_kprof_quantize_block byte for byte (the same
float operations in the same order: no block may differ) and tq_kprof_dequantize_block value for value (also on
blocks whose index lies past the table).

The same program runs the f16 / f32 converter (tq-dequant-impl.cuh, eight values per thread) on the CPU's
blocks of every type (three thread blocks: the grid-stride loop wraps) and requires every value to equal the CPU
decoder's (f32) and its round-to-nearest-even f16.

Mutated encoders (ties in the Viterbi minimum going to the higher state, the two-step trace-back reading the
wrong half of its pointer, the barrier of a Viterbi step removed in both forms or only in the one-warp form,
weight-0 samples not skipped, a back-pointer read from the wrong ring row or the wrong lane half, the fused
kernel's V arguments, in its side-by-side form another g_fix's slot copied, a slot holding another g_fix's
pass or a ticket not zeroed by the last thread block, a value on a decision threshold taking the upper level,
the fit's error sums left per lane), converters (outlier slots in the wrong order, a window read at the wrong
offset) and ktqp kernels (a tie between threads or within a thread going to the higher profile, the barrier before the
block's reduction removed, a code straddling
two words cut, NaN not coded as 0, an index past the table not read as profile 0) must fail.

Not covered (see cuda_emu.h): timing, the memory model beyond barriers, the launches of tq-cuda.cu
(test-backend-ops covers those on a GPU; the locators of SET_ROWS/CPY: test_loc_emu.py), nvcc's arithmetic (the
emulation computes in the host's IEEE float/double with no contraction, as nvcc -fmad=false should).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cuda_emu.test_fattn_emu import (
    CUDA,
    CXX,
    CXXFLAGS,
    HERE,
    SRC,
    TIMEOUT_S,
    compile_all,
    link_with_reference,
    replace_once,
    tail,
)

KERNELS = CUDA / "tq-encode-impl.cuh"
KPROF = CUDA / "tq-kprof-cuda.cuh"  # the ktqp encoder and decoder
DEQUANT = CUDA / "tq-dequant-impl.cuh"  # the f16 / f32 converter, checked on the CPU's blocks by the same program
ORDERS = ("forward", "backward", "shuffled")
N_TYPES = 16  # the 12 ktq/vtq types, ktqp2 and ktqp3 each with the built-in and a calibration-like table
N_BLOCKS = 241  # per type and run (odd: the last trellis thread block has a warp without a block)

SUMMARY = r"encode_emu: order=(\w+) types=(\d+) blocks=(\d+) differing=(\d+) failed=(\d+)"


@dataclass(frozen=True)
class Mutation:
    name: str
    old: str  # must occur exactly once in the file
    new: str
    file: Path = KERNELS


MUTATIONS = [
    Mutation("viterbi-tie", "const bool r = c[h + w] < c[h];", "const bool r = c[h + w] <= c[h];"),
    Mutation(
        "traceback-pointer",
        "            s            = (s1 & 63) * K + (jj >> k);",
        "            s            = (s1 & 63) * K + (jj & (K - 1));",
    ),
    Mutation(
        "hb-ring-row",
        "p_hbp = &ws.hb[(i - 1) % TQ_VIT_HB_RING]",
        "p_hbp = &ws.hb[(i + 1) % TQ_VIT_HB_RING]",
    ),
    Mutation(
        "viterbi-step-barrier-g2",
        "        tq_vit_sync<G>();\n    };\n",
        "        if constexpr (G == 1) {\n            tq_vit_sync<G>();\n        }\n    };\n",
    ),
    Mutation(
        "fused-kv-v-scale",
        "tq_encode_trellis_blocks<type_v, Loc, 1>(loc_v, tab, tmax_v, n_v, blockIdx.x);",
        "tq_encode_trellis_blocks<type_v, Loc, 1>(loc_v, tab, 2.0f * tmax_v, n_v, blockIdx.x);",
    ),
    Mutation(
        "j2-neighbour-half",
        "((hv >> (8 * (g1 >> 5))) & 0xFF) << k",
        "(hv & 0xFF) << k",
    ),
    Mutation(
        "viterbi-step-barrier",
        "        tq_vit_sync<G>();\n    };\n",
        "    };\n",
    ),
    Mutation(
        "viterbi-weight-zero",
        "        c[h]          = z ? mv[h] : __fadd_rn(mv[h], __fmul_rn(e, e));",
        "        c[h]          = __fadd_rn(mv[h], __fmul_rn(e, e));",
    ),
    Mutation("nearest-tie", "        c += x > thr[i] ? 1 : 0;", "        c += x >= thr[i] ? 1 : 0;"),
    Mutation(
        "fit-error-sum",
        "            errs[it] = it < n_it ? tq_cuda_warp_sum(errp[it]) : 0.0;",
        "            errs[it] = it < n_it ? errp[it] : 0.0;",
    ),
    # the fused kernel with the Viterbi passes side by side: the last thread block copies another g_fix's slot
    Mutation(
        "spec-slot-copy",
        "const volatile uint8_t * src = sb.slots + (ib * 64 + g) * SLOT;",
        "const volatile uint8_t * src = sb.slots + (ib * 64 + (g ^ 1)) * SLOT;",
    ),
    # ... or slot g holds the fixed pass of another g_fix
    Mutation(
        "spec-fixed-pass",
        "tq_vit_pass<type, 1, (F::n_out > 0)>(ws, tab, t_pred, w0, 0, r - 1, t);",
        "tq_vit_pass<type, 1, (F::n_out > 0)>(ws, tab, t_pred, w0, 0, r % 64, t);",
    ),
    # ... or the last thread block leaves its ticket taken (the next launch would copy no slot)
    Mutation(
        "spec-ticket-reset",
        "        sb.ticket[ib] = 0;  // every thread block",
        "        (void) sb;  // every thread block",
    ),
    # the converter: the second outlier slot must win when both name the same position
    Mutation(
        "dequant-outlier-order",
        "            for (int s = 0; s < F::n_out; ++s) {  // in slot order: a later slot wins\n",
        "            for (int s = F::n_out - 1; s >= 0; --s) {  // in slot order: a later slot wins\n",
        DEQUANT,
    ),
    # the converter: the window of value e starts e codes into the read
    Mutation("dequant-window", "(uint32_t) (w >> (F::b * e)), rep)", "(uint32_t) (w >> (F::L * e)), rep)", DEQUANT),
    # ktqp: a tie between lanes' best profiles must go to the lower index (all-zero and constant blocks tie)
    Mutation("kprof-tie", "(e == best_e && p < best)", "(e == best_e && p > best)", KPROF),
    # ... and within a thread's profiles (p, p + 128, ...)
    Mutation("kprof-lane-tie", "        if (e < best_e) {", "        if (e <= best_e) {", KPROF),
    # ... and the barrier between the warps' winners and the block's reduction
    Mutation("kprof-barrier", "        s_p[tid / 32] = best;\n    }\n    __syncthreads();",
             "        s_p[tid / 32] = best;\n    }", KPROF),
    # ktqp: a code that straddles two 32-bit words of the block
    Mutation("kprof-straddle", "                atomicOr(&s_w[(pos >> 5) + 1], code >> (32 - (pos & 31)));\n",
             "", KPROF),
    # ktqp: non-finite inputs are coded as 0
    Mutation("kprof-nonfinite", "s_x[tid]      = isfinite(v) ? v : 0.0f;", "s_x[tid]      = v;", KPROF),
    # ktqp: an index past the table decodes with profile 0
    Mutation("kprof-index-past", "(int) idx < T.n_profiles ? (int) idx : 0", "(int) idx", KPROF),
]


def apply_mutation(m: Mutation) -> dict[str, str]:
    """The mutated file's name and text."""
    return {m.file.name: replace_once(m.file.read_text(), m.old, m.new, m.name, m.file, Path(__file__).name)}


def build(out: Path, ref_lib: Path, overrides: dict[str, str] | None = None) -> Path:
    """Compiles encode_emu (with overrides: file name -> text, placed first on the include path) and links it
    with the CPU reference."""
    assert CXX is not None
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (overrides or {}).items():
        (out / name).write_text(text)
    flags = [*CXXFLAGS, "-O1", "-I", str(out), "-I", str(HERE), "-I", str(CUDA), "-I", str(SRC)]
    units = ("encode_emu", "cuda_emu")
    objs = [str(out / f"{u}.o") for u in units]
    compile_all([[CXX, *flags, "-c", str(HERE / f"{u}.cpp"), "-o", o] for u, o in zip(units, objs, strict=True)])
    return link_with_reference(objs, out / "encode_emu", ref_lib)


@dataclass
class Run:
    order: str
    returncode: int
    output: str
    types: int = -1
    blocks: int = -1
    differing: int = -1
    failed: int = -1


def run(exe: Path, order: str) -> Run:
    res = subprocess.run(
        [str(exe), "--order", order, "--seed", "3", "--blocks", str(N_BLOCKS)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    r = Run(order, res.returncode, res.stdout + res.stderr)
    m = re.search(SUMMARY, r.output)
    if m:
        r.types, r.blocks, r.differing, r.failed = (int(m[i]) for i in range(2, 6))
    return r


@pytest.fixture(scope="module")
def emulator(ref_lib: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("encode_emu"), ref_lib)


def test_mutation_anchors_exist() -> None:
    """Runs everywhere (no compiler needed): a renamed line must not silently disable a mutation test."""
    for m in MUTATIONS:
        apply_mutation(m)


@pytest.mark.parametrize("order", ORDERS)
def test_encoders_match_cpu_reference(order: str, emulator: Path) -> None:
    r = run(emulator, order)
    print(tail(r.output, N_TYPES + 1))
    what = f"encode_emu --order {order} (exit status {r.returncode}):\n{tail(r.output)}"
    assert r.returncode == 0, what
    assert (r.types, r.blocks) == (N_TYPES, N_TYPES * N_BLOCKS), what
    assert r.failed == 0, what


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutated_encoder_fails(mutation: Mutation, ref_lib: Path, tmp_path: Path) -> None:
    exe = build(tmp_path / "build", ref_lib, apply_mutation(mutation))
    r = run(exe, "backward")
    print(tail(r.output, N_TYPES + 1))
    assert r.returncode in (0, 1), f"the harness crashed instead of reporting failures:\n{tail(r.output)}"
    assert r.types == N_TYPES, tail(r.output)
    assert r.failed > 0 and r.returncode == 1, f"mutation {mutation.name!r} went unnoticed:\n{tail(r.output)}"
