"""Harness for the CPU reference of the ktq/vtq formats: build src/ggml-tq/*.c into a shared library
once per session and call it through ctypes (until the C++ module wraps the patched ggml).

If the generated src/ggml-tq/tq-codebooks-default.h is absent, a stand-in with the same symbols
(Lloyd-Max levels, Gaussian-quantile trellis tables) is written next to the library.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SRC = ROOT / "src" / "ggml-tq"
sys.path.insert(0, str(HERE))

import reference as R  # noqa: E402

CC = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"
CFLAGS = ["-O2", "-std=c11", "-fPIC", "-Wall", "-Wextra", "-Wpedantic"]


# the KV-cache formats are plain C; tq-grad.c (fine-tuning backward passes) and the calibration files
# (tq-k-means.c, tq-k-profiles.c, tq-calib-file.c: they read GGUF) are built on ggml and tested through
# test-backend-ops (tests/finetune/test_grad_ops.py) and _core (tests/kvtypes/test_k_centering.py,
# test_ktqp.py) instead
NEEDS_GGML = {"tq-grad.c", "tq-k-means.c", "tq-layer-types.c", "tq-k-profiles.c", "tq-calib-file.c"}


def c_sources() -> list[Path]:
    return sorted(p for p in SRC.glob("*.c") if p.name not in NEEDS_GGML)


def write_standin_header(path: Path) -> None:
    """Same interface as the generated header; values: Lloyd-Max N(0,1) levels, trellis tables of
    Gaussian quantiles in a seeded random state order (unit RMS)."""
    from scipy import special, stats

    def lloyd_max(n: int) -> np.ndarray:
        lv = special.ndtri((np.arange(n) + 0.5) / n)
        for _ in range(500):
            t = np.concatenate([[-np.inf], (lv[1:] + lv[:-1]) / 2, [np.inf]])
            lv = (stats.norm.pdf(t[:-1]) - stats.norm.pdf(t[1:])) / (stats.norm.cdf(t[1:]) - stats.norm.cdf(t[:-1]))
        return lv

    def arr(name: str, v: np.ndarray) -> str:
        return f"static const float {name}[{v.size}] = {{" + ", ".join(f"{float(np.float32(x))!r}f" for x in v) + "};"

    lines = ["#pragma once", '#define TQ_CODEBOOK_HASH "0000000000000000"']
    for b in (2, 3, 4):
        lines.append(arr(f"tq_default_ktq{b}", lloyd_max(1 << b)))
        lines.append(arr(f"tq_default_vtq{b}_1", lloyd_max(1 << b)))
    rng = np.random.default_rng(1234)
    for k in (2, 3, 4):
        n = 1 << (k + 6)
        q = special.ndtri((rng.permutation(n) + 0.5) / n)
        lines.append(arr(f"tq_default_trellis{k}", q / np.sqrt(np.mean(q * q))))
    path.write_text("\n".join(lines) + "\n")


def build_library(outdir: Path, extra_flags: tuple[str, ...] = ()) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    incs = ["-I", str(SRC)]
    if not (SRC / "tq-codebooks-default.h").exists():
        write_standin_header(outdir / "tq-codebooks-default.h")
        incs += ["-I", str(outdir)]
    lib = outdir / "libtq.so"
    cmd = [
        CC,
        *CFLAGS,
        *extra_flags,
        "-shared",
        *incs,
        *map(str, c_sources()),
        str(HERE / "tq_test_shim.c"),
        "-o",
        str(lib),
        "-lm",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"building the CPU reference failed:\n{' '.join(cmd)}\n{res.stderr}")
    return lib


_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class TQLib:
    """ctypes view of the library: per-type functions by name, numpy in and out."""

    def __init__(self, path: Path):
        self.path = path
        self.lib = lib = ctypes.CDLL(str(path))
        for info in R.ALL_TYPES:
            t = info.name
            f = getattr(lib, f"quantize_row_{t}_ref")
            f.argtypes, f.restype = [_P, _P, _I64], None
            f = getattr(lib, f"dequantize_row_{t}")
            f.argtypes, f.restype = [_P, _P, _I64], None
            f = getattr(lib, f"quantize_{t}")
            f.argtypes, f.restype = [_P, _P, _I64, _I64, _P], ctypes.c_size_t
        for b in (2, 3, 4):
            f = getattr(lib, f"ggml_vec_dot_ktq{b}_f32")
            f.argtypes = [
                ctypes.c_int,
                _P,
                ctypes.c_size_t,
                _P,
                ctypes.c_size_t,
                _P,
                ctypes.c_size_t,
                ctypes.c_int,
            ]
            f.restype = None
        sig = {
            "tq_levels": ([ctypes.c_int], ctypes.POINTER(ctypes.c_float)),
            "tq_trellis_table": ([ctypes.c_int], ctypes.POINTER(ctypes.c_float)),
            "tq_codebook_hash": ([], ctypes.c_char_p),
            "tq_codebook_source": ([], ctypes.c_char_p),
            "tq_type_name": ([ctypes.c_int], ctypes.c_char_p),
            "tq_type_size": ([ctypes.c_int], ctypes.c_size_t),
            "tq_type_bits": ([ctypes.c_int], ctypes.c_int),
            "tq_row_size": ([ctypes.c_int, _I64], ctypes.c_size_t),
            "tq_validate_row": ([ctypes.c_int, _P, ctypes.c_size_t], ctypes.c_bool),
            "tq_trellis_viterbi": (
                [ctypes.c_int, _P, _P, _P, ctypes.c_int, ctypes.POINTER(ctypes.c_int)],
                ctypes.c_float,
            ),
            "tq_test_fp16_to_fp32": ([_P, _P, _I64], None),
            "tq_test_fp32_to_fp16": ([_P, _P, _I64], None),
            "tq_test_sizeof": ([ctypes.c_int], ctypes.c_size_t),
        }
        for name, (args, res) in sig.items():
            f = getattr(lib, name)
            f.argtypes, f.restype = args, res

    @staticmethod
    def _f32(x) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def quantize(self, t: str, x) -> bytes:
        x = self._f32(x)
        out = ctypes.create_string_buffer(R.type_info(t).block_bytes * (x.size // R.QK))
        getattr(self.lib, f"quantize_row_{t}_ref")(x.ctypes.data, out, x.size)
        return out.raw

    def quantize_rows(self, t: str, x) -> tuple[bytes, int]:
        """quantize_<t>(src, dst, nrows, n_per_row, NULL) on a 2-D array; returns (bytes, return value)."""
        x = self._f32(x)
        nrows, n = x.shape
        out = ctypes.create_string_buffer(R.type_info(t).block_bytes * (x.size // R.QK))
        ret = getattr(self.lib, f"quantize_{t}")(x.ctypes.data, out, nrows, n, None)
        return out.raw, ret

    def dequantize(self, t: str, data: bytes) -> np.ndarray:
        n = len(data) // R.type_info(t).block_bytes * R.QK
        y = np.empty(n, dtype=np.float32)
        getattr(self.lib, f"dequantize_row_{t}")(data, y.ctypes.data, n)
        return y

    def vec_dot(self, t: str, data: bytes, q) -> float:
        q = self._f32(q)
        s = ctypes.c_float()
        getattr(self.lib, f"ggml_vec_dot_{t}_f32")(q.size, ctypes.byref(s), 0, data, 0, q.ctypes.data, 0, 1)
        return s.value

    def validate(self, t: str, data: bytes) -> bool:
        return bool(self.lib.tq_validate_row(R.type_info(t).index, data, len(data)))

    def levels(self, t: str) -> np.ndarray:
        info = R.type_info(t)
        n = 1 << (info.bits if info.kind == "codebook" else info.state_bits)
        return np.ctypeslib.as_array(self.lib.tq_levels(info.index), shape=(n,)).copy()

    def trellis_table(self, k: int) -> np.ndarray:
        return np.ctypeslib.as_array(self.lib.tq_trellis_table(k), shape=(1 << (k + 6),)).copy()

    def viterbi(self, k: int, y, w=None, mode: int = 0) -> tuple[float, bytes, int]:
        y = self._f32(y)
        wp = None if w is None else self._f32(w)
        qs = ctypes.create_string_buffer(R.QK * k // 8)
        passes = ctypes.c_int()
        cost = self.lib.tq_trellis_viterbi(
            k, y.ctypes.data, None if wp is None else wp.ctypes.data, qs, mode, ctypes.byref(passes)
        )
        return cost, qs.raw, passes.value

    def fp16_to_fp32(self, h) -> np.ndarray:
        h = np.ascontiguousarray(h, dtype=np.uint16)
        f = np.empty(h.size, dtype=np.float32)
        self.lib.tq_test_fp16_to_fp32(h.ctypes.data, f.ctypes.data, h.size)
        return f

    def fp32_to_fp16(self, f) -> np.ndarray:
        f = self._f32(f)
        h = np.empty(f.size, dtype=np.uint16)
        self.lib.tq_test_fp32_to_fp16(f.ctypes.data, h.ctypes.data, f.size)
        return h

    def table(self, t: str) -> np.ndarray:
        """The decode table of a type (levels or trellis table)."""
        return self.levels(t)


@pytest.fixture(scope="session")
def libpath(tmp_path_factory) -> Path:
    os.environ.pop("LLAMA_TQ_CODEBOOK", None)  # the session library must use the built-in tables
    return build_library(tmp_path_factory.mktemp("tqlib"))


@pytest.fixture(scope="session")
def tq(libpath) -> TQLib:
    return TQLib(libpath)
