"""Block sizes, bits per element, fp16 conversion and clean compilation of the CPU reference."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import reference as R

from conftest import CC, SRC, c_sources

EXPECTED_BITS = {
    "ktq2": 2.25,
    "ktq3": 3.25,
    "ktq4": 4.25,
    "vtq2_1": 2.25,
    "vtq3_1": 3.25,
    "vtq4_1": 4.25,
    "vtq2_2": 2.25,
    "vtq3_2": 3.25,
    "vtq4_2": 4.25,
    "vtq2_3": 3.0,
    "vtq3_3": 4.0,
    "vtq4_3": 5.0,
}


@pytest.mark.parametrize("info", R.ALL_TYPES, ids=lambda i: i.name)
def test_block_size_and_bits(tq, info):
    assert tq.lib.tq_type_name(info.index).decode() == info.name
    assert tq.lib.tq_type_bits(info.index) == info.bits
    assert tq.lib.tq_type_size(info.index) == info.block_bytes
    assert tq.lib.tq_test_sizeof(info.index) == info.block_bytes
    assert tq.lib.tq_row_size(info.index, 576) == 9 * info.block_bytes
    assert info.bits_per_element == EXPECTED_BITS[info.name]
    assert tq.lib.tq_type_size(R.QK) == 0 and tq.lib.tq_type_name(-1) is None


def test_fp16_to_fp32_all_halves(tq):
    h = np.arange(1 << 16, dtype=np.uint16)
    got = tq.fp16_to_fp32(h)
    want = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # signed zeros too


def test_fp32_to_fp16_round_to_nearest_even(tq):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint64).astype(np.uint32)
    edge = np.array(
        [
            0.0,
            -0.0,
            65504.0,
            65519.996,
            65520.0,
            -65520.0,
            1e-8,
            2.9802322e-08,
            2.9802326e-08,
            5.9604645e-08,
            6.1035156e-05,
            6.1035152e-05,
            1.0 + 2**-11,
            1.0 + 3 * 2**-11,
            np.inf,
            -np.inf,
            3.4e38,
            1e-45,
        ],
        dtype=np.float32,
    )
    f = np.concatenate(
        [
            bits.view(np.float32),
            edge,
            h_all := np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32),
        ]
    )
    f = f[~np.isnan(f)]
    got = tq.fp32_to_fp16(f)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16).view(np.uint16)
    assert np.array_equal(got, want)
    assert np.array_equal(
        tq.fp32_to_fp16(h_all[~np.isnan(h_all)]), h_all[~np.isnan(h_all)].astype(np.float16).view(np.uint16)
    )
    nan_out = tq.fp32_to_fp16(np.array([np.nan, -np.nan], dtype=np.float32)).view(np.float16)
    assert np.all(np.isnan(nan_out))


def _compile(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), f"{' '.join(map(str, cmd))}\n{res.stderr}"


def test_compiles_cleanly_as_c(libpath):
    inc = ["-I", str(SRC), "-I", str(libpath.parent)]
    for src in c_sources():
        _compile(
            [
                CC,
                "-std=c11",
                "-O2",
                "-Wall",
                "-Wextra",
                "-Wpedantic",
                "-Werror",
                *inc,
                "-c",
                str(src),
                "-o",
                "/dev/null",
            ]
        )


@pytest.mark.parametrize("std", ["c++11", "c++17"])
def test_header_includable_from_cxx(tmp_path, std):
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = tmp_path / "use.cpp"
    src.write_text(
        '#include "tq-quants.h"\n'
        'static_assert(sizeof(block_vtq2_3) == 24, "size");\n'
        "float f(const void * x, float * y) {\n"
        "    dequantize_row_vtq2_2(x, y, QK_TQ);\n"
        "    return tq_fp16_to_fp32(0x3c00);\n"
        "}\n"
    )
    _compile(
        [
            cxx,
            f"-std={std}",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-I",
            str(SRC),
            "-c",
            str(src),
            "-o",
            "/dev/null",
        ]
    )
