"""Quantize and decode numpy rows with the KV-cache formats, through ggml's own type traits (via _core).

Any ggml type name works (``q8_0``, ``ktq2``, ``vtq3_2``, the alias ``vtq2`` ...); rows must be a
multiple of the type's block size long.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _core():
    from . import _core

    return _core


def quantize(type_name: str, rows: ArrayLike) -> np.ndarray:
    """float rows [n_rows, n] -> uint8 [n_rows, row_size] in the type's block format."""
    return _core().quantize(type_name, np.atleast_2d(np.asarray(rows, dtype=np.float32)))


def dequantize(type_name: str, data: np.ndarray, n_per_row: int) -> np.ndarray:
    """uint8 [n_rows, row_size] -> float32 [n_rows, n_per_row]."""
    return _core().dequantize(type_name, np.atleast_2d(data), n_per_row)


def round_trip(type_name: str, rows: ArrayLike) -> np.ndarray:
    """What the cache gives back for these rows: dequantize(quantize(rows))."""
    x = np.atleast_2d(np.asarray(rows, dtype=np.float32))
    return dequantize(type_name, quantize(type_name, x), x.shape[1])


def vec_dot(type_name: str, data: np.ndarray, y: ArrayLike) -> np.ndarray:
    """ggml's CPU dot product of each quantized row with y (K types: straight from the codes)."""
    return _core().vec_dot(type_name, np.atleast_2d(data), np.asarray(y, dtype=np.float32))


def bits_per_element(type_name: str) -> float:
    return float(_core().type_info(type_name)["bits_per_element"])


def cache_types() -> list[str]:
    """The names accepted for -ctk/-ctv (plus the aliases vtq2, vtq3, vtq4)."""
    return list(_core().cache_types())
