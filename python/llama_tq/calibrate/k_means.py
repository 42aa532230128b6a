"""K centering: the per-layer K means that ``LLAMA_TQ_K_MEANS`` subtracts before the cache stores K.

Attention is unchanged by any constant subtracted from all keys of a head (the softmax cancels q·c); a
good constant makes the quantized cache more accurate. The file holds each layer's *pre-RoPE* mean m
([n_head_kv, n_embd_head]); at context creation llama.cpp averages RoPE_p(m) over the cache's positions
(src/ggml-tq/tq-k-means.h). This module estimates m from the K rows a model writes into its cache: it
undoes upstream's Hadamard rotation and the RoPE of every row, then averages.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .calib_gguf import read_calib_gguf, write_calib_gguf
from .errors import CalibrationError

FILE_VERSION = 1  # TQ_K_MEANS_VERSION in tq-k-means.h
ENV = "LLAMA_TQ_K_MEANS"
ROPE_NONE, ROPE_NORM, ROPE_NEOX = -1, 0, 2


@dataclass(frozen=True)
class RopeParams:
    """RoPE as ggml applies it without YaRN: pairs (2i, 2i+1), or (i, i + n_rot/2) for neox, turned by
    position * freq_scale * freq_base^(-2i/n_rot)."""

    n_rot: int
    neox: bool
    freq_base: float
    freq_scale: float

    def angles(self, positions: NDArray[np.float64]) -> NDArray[np.float64]:
        i = np.arange(self.n_rot // 2, dtype=np.float64)
        theta = self.freq_scale * self.freq_base ** (-2.0 * i / self.n_rot)
        return positions[:, None] * theta[None, :]

    def pairs(self) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        half = self.n_rot // 2
        i = np.arange(half)
        return (i, i + half) if self.neox else (2 * i, 2 * i + 1)


def rope(
    x: NDArray[np.floating], positions: NDArray[np.floating], p: RopeParams, sign: float = 1.0
) -> NDArray[np.float64]:
    """x [n, ..., n_embd_head] turned by RoPE at positions [n] (sign -1: undone), float64."""
    y = np.array(x, dtype=np.float64, copy=True)
    a = sign * p.angles(np.asarray(positions, dtype=np.float64))
    a = a.reshape(a.shape[0], *([1] * (y.ndim - 2)), a.shape[1])
    i0, i1 = p.pairs()
    x0, x1 = y[..., i0].copy(), y[..., i1].copy()
    y[..., i0] = x0 * np.cos(a) - x1 * np.sin(a)
    y[..., i1] = x0 * np.sin(a) + x1 * np.cos(a)
    return y


def hadamard_rows(x: NDArray[np.floating], nrot: int) -> NDArray[np.float64]:
    """Every run of nrot values times the orthonormal Sylvester Hadamard matrix (its own inverse)."""
    from scipy.linalg import hadamard

    h = hadamard(nrot).astype(np.float64) / np.sqrt(nrot)
    shape = np.shape(x)
    return (np.asarray(x, dtype=np.float64).reshape(-1, nrot) @ h).reshape(shape)


def k_rotation_size(n_embd_head: int) -> int:
    """The K matrix size of upstream's attn_rot: the largest power of two >= 64 that divides the head size."""
    if n_embd_head % 64:
        raise CalibrationError(f"K heads of {n_embd_head} values: the ktq caches need a multiple of 64")
    n = 64
    while n_embd_head % (2 * n) == 0:
        n *= 2
    return n


def model_rope(model: object) -> tuple[str, RopeParams | None]:
    """(architecture, RoPE parameters or None for a model without RoPE) as llama.cpp reads them."""
    info = model.info  # type: ignore[attr-defined]
    arch = model.meta("general.architecture")  # type: ignore[attr-defined]
    if not arch:
        raise CalibrationError(f"{info['path']}: no general.architecture")
    if info["rope_type"] == ROPE_NONE:
        return arch, None
    if info["rope_type"] not in (ROPE_NORM, ROPE_NEOX):
        raise CalibrationError(f"{arch}: RoPE type {info['rope_type']} (multi-section) is not supported by k-means")
    n_embd_head = int(model.meta(f"{arch}.attention.key_length") or info["n_embd"] // info["n_head"])  # type: ignore[attr-defined]
    n_rot = int(model.meta(f"{arch}.rope.dimension_count") or n_embd_head)  # type: ignore[attr-defined]
    base = float(model.meta(f"{arch}.rope.freq_base") or 10000.0)  # type: ignore[attr-defined]
    return arch, RopeParams(n_rot=n_rot, neox=info["rope_type"] == ROPE_NEOX, freq_base=base,
                            freq_scale=float(info["rope_freq_scale_train"]))


def estimate_means(
    rows: Mapping[str, NDArray[np.floating]], n_ctx: int, n_head_kv: int, rope_params: RopeParams | None
) -> dict[int, NDArray[np.float32]]:
    """Pre-RoPE mean [n_head_kv, n_embd_head] per layer from cache rows ``k.<il>`` [n_windows * n_ctx, n_embd_k_gqa]
    as the cache receives them (rotated by attn_rot, RoPE at positions 0..n_ctx-1 of each window)."""
    means: dict[int, NDArray[np.float32]] = {}
    for key, x in rows.items():
        kind, _, layer = key.partition(".")
        if kind != "k":
            continue
        if x.shape[0] % n_ctx or x.shape[1] % n_head_kv:
            raise CalibrationError(f"{key}: {x.shape} rows do not split into windows of {n_ctx} x {n_head_kv} heads")
        n_embd_head = x.shape[1] // n_head_kv
        y = hadamard_rows(x, k_rotation_size(n_embd_head)).reshape(-1, n_head_kv, n_embd_head)
        if rope_params is not None:
            y = rope(y, np.tile(np.arange(n_ctx, dtype=np.float64), x.shape[0] // n_ctx), rope_params, sign=-1.0)
        means[int(layer)] = y.mean(axis=0).astype(np.float32)
    if not means:
        raise CalibrationError("no K rows")
    return means


def position_mean(mu: NDArray[np.floating], p: RopeParams, n_pos: int) -> NDArray[np.float64]:
    """The constant the runtime subtracts (before its Hadamard): the mean of RoPE_p(mu) over p = 0..n_pos-1."""
    mu = np.asarray(mu, dtype=np.float64)
    positions = np.arange(n_pos, dtype=np.float64)
    return rope(np.broadcast_to(mu, (n_pos, *mu.shape)), positions, p).mean(axis=0)


@contextlib.contextmanager
def env_without(name: str) -> Iterator[None]:
    """Run with an environment variable unset (the collection must see K as it is, not centered)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def write_means(path: str | os.PathLike[str], arch: str, means: Mapping[int, NDArray[np.floating]],
                source: str, n_tokens: int) -> None:
    """The k-means GGUF (format in tq-k-means.h), written atomically."""
    tensors = {f"k_mean.{il}": np.asarray(means[il], dtype=np.float32) for il in sorted(means)}
    write_calib_gguf(path, arch, "k_means", FILE_VERSION, source, n_tokens, tensors)


def read_means(path: str | os.PathLike[str]) -> tuple[str, dict[int, NDArray[np.float32]]]:
    """(architecture, {layer: mean [n_head_kv, n_embd_head]}) of a k-means file."""
    arch, tensors = read_calib_gguf(path, "k_means", FILE_VERSION)
    return arch, {int(name.split(".")[1]): t.astype(np.float32) for name, t in tensors.items()}
