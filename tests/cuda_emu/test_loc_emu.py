"""The CUDA encoders' locators (src/ggml-tq/cuda/tq-cuda-loc.cuh) on a CPU against nested loops.

loc_emu.cpp builds each locator with the host setup the CUDA backend uses (tq_cuda_make_loc_set_rows /
tq_cuda_make_loc_cpy) and asks its device functions src_row / dst_blk where every block of a SET_ROWS or CPY
comes from and goes to: random shapes with padded strides, int32 and int64 row indices broadcast over dims 2
and 3, CPYs into another shape with the same element order, and sampled block indices up to 2^31 - 1 (the
32-bit divisions by constants must hold over the whole range a launch allows). The reference walks the
tensors' coordinates in nested loops, so it shares no index arithmetic with the locators. The emulator's
common.cuh gives the division by constants (ggml-cuda's fastdiv), written there from the method.

Mutated locators (the index broadcast over dim 2 taken modulo the wrong extent, a CPY's destination split as its
source, a block's row taken from the wrong quotient) must fail.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.cuda_emu.test_encode_emu import Mutation
from tests.cuda_emu.test_fattn_emu import CUDA, CXX, CXXFLAGS, HERE, SRC, TIMEOUT_S, replace_once, skip_reason

LOC = CUDA / "tq-cuda-loc.cuh"
SUMMARY = r"loc_emu: cases=(\d+) blocks=(\d+) failed=(\d+)"

MUTATIONS = [
    Mutation("loc-broadcast", "fastmodulo(c.z, ne11)", "fastmodulo(c.z, ne12)", LOC),
    Mutation("loc-cpy-dst-split", "const uint4 c = dsplit(ib);", "const uint4 c = split(ib);", LOC),
    Mutation("loc-row-quotient", "make_uint4(a.y, b.y, c.y, c.x)", "make_uint4(a.y, a.x, c.y, c.x)", LOC),
]

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


def build(out: Path, overrides: dict[str, str] | None = None) -> Path:
    """Compiles and links loc_emu (overrides: file name -> text, placed first on the include path)."""
    assert CXX is not None
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (overrides or {}).items():
        (out / name).write_text(text)
    exe = out / "loc_emu"
    cmd = [CXX, *CXXFLAGS, "-O1", "-I", str(out), "-I", str(HERE), "-I", str(CUDA), "-I", str(SRC),
           str(HERE / "loc_emu.cpp"), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if res.returncode != 0:
        raise RuntimeError(f"build failed:\n{' '.join(cmd)}\n{res.stderr[-8000:]}")
    return exe


def run(exe: Path, seed: int) -> tuple[int, int, int, str]:
    """returncode, blocks checked, blocks failed, output"""
    res = subprocess.run([str(exe), "--seed", str(seed), "--cases", "300"], capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    out = res.stdout + res.stderr
    m = re.search(SUMMARY, out)
    return res.returncode, int(m[2]) if m else -1, int(m[3]) if m else -1, out


def test_mutation_anchors_exist() -> None:
    for m in MUTATIONS:
        replace_once(m.file.read_text(), m.old, m.new, m.name, m.file, Path(__file__).name)


@pytest.mark.parametrize("seed", [1, 2])
def test_locators_match_nested_loops(seed: int, tmp_path: Path) -> None:
    rc, blocks, failed, out = run(build(tmp_path), seed)
    assert rc == 0 and failed == 0, out
    assert blocks > 400_000, out  # 601 random cases and 200 000 sampled large indices, two checks each


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_mutated_locator_fails(mutation: Mutation, tmp_path: Path) -> None:
    text = replace_once(mutation.file.read_text(), mutation.old, mutation.new, mutation.name, mutation.file,
                        Path(__file__).name)
    rc, _, failed, out = run(build(tmp_path, {mutation.file.name: text}), 1)
    # wrong blocks counted (rc 1), or a wrong row index read past the index tensor (a signal: rc < 0)
    assert (rc == 1 and failed > 0) or rc < 0, f"mutation {mutation.name} was not caught:\n{out}"
