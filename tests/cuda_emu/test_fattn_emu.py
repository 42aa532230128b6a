"""The CUDA decode kernel (src/ggml-tq/cuda/tq-fattn-impl.cuh) on a CPU: no GPU and no nvcc needed.

The real kernel source is compiled with the system C++ compiler against the CUDA emulation of this folder
(cuda_emu.h: 128 lanes as coroutines, __syncwarp / __syncthreads / shuffles as real barriers) and run by
fattn_emu.cpp, which compares every output with attention computed in float64 from the CPU reference decoder
(src/ggml-tq, built by tests/formats/conftest.py's build_library). Tolerance: per output row,
max |out - ref| / max(max |ref|, 1e-3) < 1e-4 (float32 gives about 1e-6).

The kernel file is copied into the build folder at test time, minus its host launcher (the `<<<...>>>` launch
is not C++); the shims common.cuh and ggml.h stand for ggml-cuda's common.cuh and the patched ggml.h.

Covered: every K type with every V type (codebook, trellis, trellis + outliers) for every compiled head size
and NC (216 instances), partial chunks, warps without rows, KV splits, several column groups and unused
columns, GQA, two sequences, both Q layouts, masks (random, causal, window, fully masked rows), softcap,
ALiBi, sinks; each in forward, backward and shuffled lane order. The same cases again through the tensor-core
form tq_k_fattn_mma (`--mma`: its mma.m16n8k16 emulated by shuffles; every V type without outlier slots; f16
inputs, so a tolerance of 4e-3, MMA_TOL), in forward and backward order, and the short cases through its
variant that stages each chunk's rows in shared memory (`--mma-stage`) and its form without vtq2's pair table
(`--mma-nopair`, forward order), and its cross-head variant (`--mma-xh`, LLAMA_TQ_CUDA_FA_XH=1: a block per 4 KV
heads, each chunk's rows copied into shared memory by cp.async while the one before is computed; the short cases
with 8 or 16 KV heads, half of them with the copies landing as late as the hardware may, at the wait, and half with
them landing as soon as issued while one warp at a time runs ahead, `--order warps --cp-eager`). Mutated copies of
the kernel (a barrier
removed in either form or after the staging copy, the outlier slot order swapped, the 3-bit K code alignment
dropped, the P fragment's row pairs swapped, the V block scale dropped, in vtq2's pair-table path the scale
dropped or two rows of an A register swapped, in the fused output rotation a butterfly stage's barrier or the
1 / sqrt(D) dropped; in the cross-head variant a wait for the copies, the barrier after it or the barrier
before the next copies dropped) must fail. A third of the short cases and the split long cases rotate the output by the
Hadamard transform (upstream's attn_rot on the attention output, fused into the kernel: p.rot); the reference
multiplies by the Hadamard matrix in float64.

Not covered (see cuda_emu.h): timing, the memory model beyond barriers (a shuffle synchronizes the lanes
here, so the __syncwarp at the end of a chunk, whose accesses a shuffle also separates, can be removed
unseen), registers and occupancy, the accuracy of fast-math intrinsics, the combine kernel of tq-fattn.cu
(its formula is applied in float64).

Run one case by hand: build as build_emulator() does, then `fattn_emu --case N --order backward`.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SRC = ROOT / "src" / "ggml-tq"
CUDA = SRC / "cuda"
KERNEL = CUDA / "tq-fattn-impl.cuh"
HOST_KERNEL = "tq-fattn-impl-emu.cuh"  # the name fattn_emu_kernels.cpp includes

CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
CXXFLAGS = [
    "-std=c++17",
    "-fno-strict-aliasing",  # the kernel reads byte buffers through wider pointers, as CUDA code does
    "-fcf-protection=none",  # no shadow stack: the lanes switch stacks
    "-ffp-contract=off",  # a * b + c rounded twice, as nvcc -fmad=false (the encoders) and the CPU reference
    "-Wall",
    "-Wextra",
    "-Wno-unknown-pragmas",  # #pragma unroll
]
# the kernel units (216 instances) take most of the build: -Og compiles them in a third of -O1's time and runs
# them nearly as fast; the scheduler and the reference get -O1
OPT_KERNELS = "-Og"
OPT_OTHERS = "-O1"
HEAD_SIZES = (64, 128, 256)
ORDERS = ("forward", "backward", "shuffled")

# fattn_emu's case list: 3 head sizes x 27 pairs x 16 short cases, then 18 long ones; 27 pairs x (3 + 3 + 2) NC
EXPECTED_SHORT = 3 * 27 * 16
EXPECTED_CASES = EXPECTED_SHORT + 18
EXPECTED_INSTANCES = 27 * 8
TIMEOUT_S = 600

SUMMARY = re.compile(
    r"fattn_emu: order=(\w+) cases=(\d+) failed=(\d+) worst_rel_err=(\S+) tol=(\S+) instances=(\d+)/(\d+)"
    r" kernel=(\S+) xh_cases=(\d+)"
)


def skip_reason() -> str | None:
    if platform.machine().lower() not in ("x86_64", "amd64") or not sys.platform.startswith("linux"):
        here = f"{sys.platform}/{platform.machine()}"
        return f"the CUDA emulation switches stacks with x86-64 ELF assembly (this machine: {here})"
    if CXX is None:
        return "no C++ compiler found (c++, g++, clang++ or $CXX)"
    return None


def formats_harness() -> ModuleType:
    """tests/formats/conftest.py as a module: its build_library() builds the CPU reference (libtq.so)."""
    path = ROOT / "tests" / "formats" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tq_formats_harness", path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def host_kernel(text: str) -> str:
    """The kernel file without its host launcher tq_fattn_launch (a <<<...>>> launch; the emulator has its own)."""
    launcher = re.compile(r"template <[^\n]*>\nvoid tq_fattn_launch\([^)]*\) \{\n.*?\n\}\n", re.S)
    out, n = launcher.subn("", text)
    assert n == 1, f"{KERNEL.name}: expected one definition of tq_fattn_launch to remove, found {n}"
    assert "<<<" not in out, f"{KERNEL.name}: a <<<...>>> launch other than tq_fattn_launch's"
    return out


@dataclass(frozen=True)
class Mutation:
    name: str
    old: str  # must occur exactly once in the kernel
    new: str
    pairs: str  # the EMU_PAIRS list of the mutated build
    cases: int  # short cases of that build: 3 head sizes x 16 per pair
    args: tuple[str, ...] = ()  # more fattn_emu arguments (the tensor-core form: MMA_ARGS)
    runs: tuple[tuple[str, ...], ...] = (("--order", "forward"), ("--order", "backward"))  # one run each


# the tensor-core form tq_k_fattn_mma (fattn_emu --mma; V types with outlier slots keep the vector form, as on the
# GPU): Q, the K levels, the probabilities and the V values enter its mma as f16 (2^-11 relative rounding each),
# so it is held to 4e-3 instead of 1e-4 (measured worst over all cases and lane orders: 1.6e-3); a wrong row,
# column or dim mapping gives 1e-1 and more
MMA_TOL = 4e-3
MMA_ARGS = ("--mma", "--tol", str(MMA_TOL))
# its variant that stages each chunk's K and V rows in shared memory (LLAMA_TQ_CUDA_FA_STAGE=1): same arithmetic
MMA_STAGE_ARGS = ("--mma-stage", "--tol", str(MMA_TOL))
# and its form without vtq2's pair table (LLAMA_TQ_CUDA_FA_VPAIR=0): vtq2 one value per lookup, as other V types
MMA_NOPAIR_ARGS = ("--mma-nopair", "--tol", str(MMA_TOL))
# and its cross-head variant (LLAMA_TQ_CUDA_FA_XH=1), with the two ends of when cp.async copies land: at the wait
# (a missing wait or barrier after it shows), or at once while one warp runs ahead of the others (a copy into a
# chunk that another warp still reads shows)
MMA_XH_ARGS = ("--mma-xh", "--tol", str(MMA_TOL))
XH_RUNS = (("--order", "forward"), ("--order", "warps", "--cp-eager"))

MUTATIONS = [
    # the scores of a chunk are read back by other lanes (lane = row) without a barrier
    Mutation(
        "score-syncwarp",
        "        __syncwarp();\n\n        // ---- online softmax of the chunk: lane = row ----\n",
        "\n        // ---- online softmax of the chunk: lane = row ----\n",
        "X(KTQ3, VTQ2_2)",
        48,
    ),
    # vtqb_3: the second outlier slot must win when both name the same position
    Mutation(
        "outlier-slot-order",
        "for (int s = 0; s < FV::n_out; ++s) {  // in slot order: a later slot wins\n",
        "for (int s = FV::n_out - 1; s >= 0; --s) {  // in slot order: a later slot wins\n",
        "X(KTQ2, VTQ4_3)",
        48,
    ),
    # ktq3: a lane's 3-bit codes can start at an odd byte
    Mutation(
        "k-odd-byte",
        "        return odd ? w >> (8 * (byte & 1)) : w;\n",
        "        return w;\n",
        "X(KTQ3, VTQ3_1)",
        48,
    ),
    # tensor-core form: the probabilities are read back as other lanes' B fragments without a barrier
    Mutation(
        "mma-p-syncwarp",
        "        __syncwarp();\n\n        // ---- O^T += V^T P: k-tile kt = rows 16 kt + 4 t + (0..3) ----\n",
        "\n        // ---- O^T += V^T P: k-tile kt = rows 16 kt + 4 t + (0..3) ----\n",
        "X(KTQ2, VTQ2_2)",
        48,
        MMA_ARGS,
    ),
    # tensor-core form: the two row pairs of a P fragment swapped
    Mutation(
        "mma-p-rows",
        "            const uint32_t b[2] = { pw.x, pw.y };\n",
        "            const uint32_t b[2] = { pw.y, pw.x };\n",
        "X(KTQ3, VTQ3_2)",
        48,
        MMA_ARGS,
    ),
    # tensor-core form, staging variant: the rows are read by other lanes than those that copied them
    Mutation(
        "mma-stage-syncwarp",
        "            __syncwarp();\n            kb  = sk + 2;\n",
        "            kb  = sk + 2;\n",
        "X(KTQ2, VTQ2_2)",
        48,
        MMA_STAGE_ARGS,
    ),
    # tensor-core form: rows of several V blocks (head size 128, 256) need each block's scale
    Mutation(
        "mma-v-scale",
        "                            v[i][e] = V1 ? tv : fminf(fmaxf(tv * dr[i], -TQ_FA_F16_MAX), TQ_FA_F16_MAX);\n",
        "                            v[i][e] = tv;\n",
        "X(KTQ4, VTQ2_1)",
        48,
        MMA_ARGS,
    ),
    # tensor-core form, vtq2's pair table: the same scale, on a pair of f16 values
    Mutation(
        "mma-vpair-scale",
        "                            pr[i][mm] = V1 ? h : tq_fa_h2_scale(h, dr[i]);\n",
        "                            pr[i][mm] = h;\n",
        "X(KTQ4, VTQ2_2)",
        48,
        MMA_ARGS,
    ),
    # tensor-core form, vtq2's pair table: the two rows of an A register swapped (rows 0 and 1 of a dim)
    Mutation(
        "mma-vpair-rows",
        "                            __byte_perm(pr[0][mm], pr[1][mm], 0x5410),  // dim 2 mm of rows 0, 1\n",
        "                            __byte_perm(pr[0][mm], pr[1][mm], 0x1054),  // dim 2 mm of rows 0, 1\n",
        "X(KTQ2, VTQ2_2)",
        48,
        MMA_ARGS,
    ),
    # the output's fused Hadamard rotation: a butterfly stage reads values another thread has not written yet
    Mutation(
        "rot-stage-barrier",
        "                s_out[lo + h]  = a - b;\n            }\n            __syncthreads();\n",
        "                s_out[lo + h]  = a - b;\n            }\n",
        "X(KTQ2, VTQ2_2)",
        48,
        MMA_ARGS,
    ),
    # ... or its 1 / sqrt(D) left out
    Mutation(
        "rot-scale",
        "        rs = 1.0f / sqrtf((float) D);\n",
        "        rs = 1.0f;\n",
        "X(KTQ3, VTQ3_3)",
        48,
    ),
    # cross-head variant: the warps compute a chunk whose copies may still be in flight
    Mutation(
        "mma-xh-wait",
        "                tq_cp_async_wait<1>();\n",
        "                tq_cp_async_wait<2>();\n",
        "X(KTQ2, VTQ2_2)",
        48,
        MMA_XH_ARGS,
        XH_RUNS,
    ),
    # ... or read rows that other threads copied, without a barrier after their wait
    Mutation(
        "mma-xh-barrier-before",
        "            __syncthreads();\n            xbuf          = ci & 1;\n",
        "            xbuf          = ci & 1;\n",
        "X(KTQ4, VTQ3_2)",
        48,
        MMA_XH_ARGS,
        XH_RUNS,
    ),
    # ... or copy the chunk after next into the slots of a chunk that another warp still reads
    Mutation(
        "mma-xh-barrier-after",
        "                chunk(kv0, std::false_type());\n            }\n"
        "            __syncthreads();\n        }\n    } else if",
        "                chunk(kv0, std::false_type());\n            }\n        }\n    } else if",
        "X(KTQ2, VTQ2_2)",
        48,
        MMA_XH_ARGS,
        XH_RUNS,
    ),
]


def replace_once(text: str, old: str, new: str, name: str, source: Path, test_file: str) -> str:
    """text with old (which must occur exactly once) replaced: a mutation of a kernel source."""
    n = text.count(old)
    if n != 1:
        pytest.fail(
            f"mutation {name!r}: the text it replaces occurs {n} times in {source} (expected once); "
            f"update MUTATIONS in {test_file} to the current source:\n{old}"
        )
    return text.replace(old, new)


def apply_mutation(text: str, m: Mutation) -> str:
    return replace_once(text, m.old, m.new, m.name, KERNEL, Path(__file__).name)


def compile_all(jobs: list[list[str]]) -> None:
    def run(cmd: list[str]) -> tuple[list[str], subprocess.CompletedProcess]:
        return cmd, subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    with ThreadPoolExecutor(max_workers=max(2, cores)) as pool:
        for cmd, res in pool.map(run, jobs):
            if res.returncode != 0:
                raise RuntimeError(f"build failed:\n{' '.join(cmd)}\n{res.stderr[-8000:]}")


def build_emulator(out: Path, kernel_text: str, ref_lib: Path, pairs: str | None = None) -> Path:
    """Compiles fattn_emu against kernel_text (the kernel file's content) and links it with the CPU reference."""
    assert CXX is not None
    out.mkdir(parents=True, exist_ok=True)
    (out / HOST_KERNEL).write_text(host_kernel(kernel_text))
    flags = [*CXXFLAGS, "-I", str(out), "-I", str(HERE), "-I", str(CUDA), "-I", str(SRC)]
    if pairs is not None:
        flags.append(f"-DEMU_PAIRS(X)={pairs}")
    jobs, objs = [], []
    units = [("fattn_emu_kernels.cpp", [OPT_KERNELS, f"-DEMU_HEAD_SIZE={d}"], f"kernels_d{d}.o") for d in HEAD_SIZES]
    units += [("fattn_emu.cpp", [OPT_OTHERS], "fattn_emu.o"), ("cuda_emu.cpp", [OPT_OTHERS], "cuda_emu.o")]
    for src, extra, obj in units:  # the kernel units first: they take most of the time
        jobs.append([CXX, *flags, *extra, "-c", str(HERE / src), "-o", str(out / obj)])
        objs.append(str(out / obj))
    compile_all(jobs)
    return link_with_reference(objs, out / "fattn_emu", ref_lib)


def link_with_reference(objs: list[str], exe: Path, ref_lib: Path) -> Path:
    """Links the objects with the CPU reference library (libtq.so, found at run time through an rpath)."""
    assert CXX is not None
    lib_dir = str(ref_lib.parent)
    link = [CXX, *objs, "-L", lib_dir, "-ltq", f"-Wl,-rpath,{lib_dir}", "-lm", "-o", str(exe)]
    res = subprocess.run(link, capture_output=True, text=True, timeout=TIMEOUT_S)
    if res.returncode != 0:
        raise RuntimeError(f"link failed:\n{' '.join(link)}\n{res.stderr[-8000:]}")
    return exe


@dataclass
class RunResult:
    args: list[str]
    returncode: int
    output: str
    cases: int = -1
    failed: int = -1
    worst: float = float("nan")
    instances: tuple[int, int] = (-1, -1)
    xh_cases: int = -1  # cases that ran the cross-head variant


def run_emulator(exe: Path, arg_sets: list[list[str]]) -> list[RunResult]:
    """Runs fattn_emu once per argument list, all at once (one process per core is the intent)."""
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_TQ_CODEBOOK"}  # the built-in tables
    procs = []
    for args in arg_sets:
        cmd = [str(exe), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        procs.append((args, proc))
    results = []
    for args, proc in procs:
        try:
            output, _ = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            output += f"\n(killed after {TIMEOUT_S} s)"
        r = RunResult(args, proc.returncode, output)
        m = SUMMARY.search(output)
        if m:
            r.cases, r.failed, r.worst = int(m[2]), int(m[3]), float(m[4])
            r.instances = (int(m[6]), int(m[7]))
            r.xh_cases = int(m[9])
        results.append(r)
    return results


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


@pytest.fixture(scope="module")
def emulator(ref_lib: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_emulator(tmp_path_factory.mktemp("fattn_emu"), KERNEL.read_text(), ref_lib)


def test_mutation_anchors_exist() -> None:
    """Runs everywhere (no compiler needed): a renamed line must not silently disable a mutation test."""
    text = KERNEL.read_text()
    host_kernel(text)
    for m in MUTATIONS:
        apply_mutation(text, m)


def test_kernel_matches_float64_reference(emulator: Path) -> None:
    vec = [["--order", order, "--seed", "7"] for order in ORDERS]
    mma = [["--order", order, "--seed", "7", *MMA_ARGS] for order in ("forward", "backward")]
    stage = [["--order", order, "--seed", "7", "--no-long", *MMA_STAGE_ARGS] for order in ("forward", "backward")]
    nopair = [["--order", "forward", "--seed", "7", "--no-long", *MMA_NOPAIR_ARGS]]
    # the cross-head variant: 8 times the KV heads, so half of the short cases under each end of cp.async
    xh = [[*run, "--seed", "7", "--no-long", "--shard", str(i), "2", *MMA_XH_ARGS] for i, run in enumerate(XH_RUNS)]
    results = run_emulator(emulator, vec + mma + stage + nopair + xh)
    for r in results:
        print(tail(r.output, 5))
        what = f"fattn_emu {' '.join(r.args)} (exit status {r.returncode}):\n{tail(r.output)}"
        assert r.returncode == 0, what
        shards = 2 if "--shard" in r.args else 1
        assert r.cases == (EXPECTED_SHORT // shards if "--no-long" in r.args else EXPECTED_CASES), what
        assert r.failed == 0, what
        if "--mma-xh" in r.args:  # head sizes 64 and 128, V without outliers, output not rotated: about a quarter
            assert r.xh_cases >= r.cases // 5, what
        assert r.worst < (MMA_TOL if any(a.startswith("--mma") for a in r.args) else 1e-4), what
        assert r.instances == (EXPECTED_INSTANCES, EXPECTED_INSTANCES), what


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutated_kernel_fails(mutation: Mutation, ref_lib: Path, tmp_path: Path) -> None:
    text = apply_mutation(KERNEL.read_text(), mutation)
    exe = build_emulator(tmp_path / "build", text, ref_lib, pairs=mutation.pairs)
    results = run_emulator(exe, [[*run, "--no-long", *mutation.args] for run in mutation.runs])
    report = "\n".join(
        f"fattn_emu {' '.join(r.args)}: exit status {r.returncode}\n{tail(r.output, 8)}" for r in results
    )
    print(report)
    for r in results:
        assert r.returncode in (0, 1), f"the harness crashed instead of reporting failures:\n{report}"
        assert r.cases == mutation.cases, report
    assert sum(r.failed for r in results) > 0, f"mutation {mutation.name!r} went unnoticed:\n{report}"
    assert any(r.returncode == 1 for r in results), report
