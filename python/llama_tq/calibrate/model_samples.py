"""K/V samples from a real model: the rows llama.cpp writes into a ktq/vtq cache, after its rotation.

The model runs through ``llama_tq._core`` with ktq/vtq cache types, so the Hadamard rotation that the
cache applies (upstream's attn_rot, forced on for these types) is exactly the one the samples went
through; ``_core`` observes the graph's SET_ROWS nodes into the cache and returns their source rows.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .atomic import atomic_write_bytes
from .errors import CalibrationError


def _chunks(tokens: list[int], n_ctx: int, n_chunks: int) -> Iterator[list[int]]:
    for i in range(min(n_chunks, len(tokens) // n_ctx)):
        yield tokens[i * n_ctx:(i + 1) * n_ctx]


def collect_model_samples(
    model_path: str | os.PathLike[str],
    text_path: str | os.PathLike[str],
    *,
    n_ctx: int = 512,
    n_chunks: int = 4,
    n_threads: int = 0,
    progress: bool = True,
    model: object | None = None,
    cache_types: tuple[str, str] = ("ktq4", "vtq4"),
    queries: bool = False,
) -> dict[str, NDArray[np.float32]]:
    """Rows keyed ``k.<layer>`` / ``v.<layer>`` (float32 [n_tokens, n_embd_gqa]) from ``n_chunks``
    windows of ``n_ctx`` tokens of the text, as a cache of ``cache_types`` receives them (f16: the model's own
    basis; a quantized type: after upstream's rotation); with ``queries``, also ``q.<layer>`` [n_tokens,
    n_embd], the queries attention reads."""
    from .. import _core

    try:
        text = Path(text_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationError(f"cannot read text file {text_path}: {e}") from e
    if model is None:  # a caller that already opened the model passes it
        try:
            model = _core.Model(str(model_path))
        except (ValueError, RuntimeError) as e:
            raise CalibrationError(str(e)) from e
    tokens = model.tokenize(text)
    if len(tokens) < n_ctx:
        raise CalibrationError(f"{text_path} has {len(tokens)} tokens, fewer than one window of {n_ctx}")
    ctx = _core.Context(model, n_ctx=n_ctx, n_batch=n_ctx, type_k=cache_types[0], type_v=cache_types[1],
                        flash_attn=True, n_threads=n_threads, collect_kv=True)
    windows = list(_chunks(tokens, n_ctx, n_chunks))
    parts: dict[str, list[np.ndarray]] = {}
    from tqdm import tqdm

    for window in tqdm(windows, desc="collecting K/V rows", unit="window", disable=not progress):
        ctx.reset()
        for key, rows in ctx.collect_kv(window, queries).items():
            parts.setdefault(key, []).append(rows)
    samples = {key: np.concatenate(arrays) for key, arrays in parts.items() if key[0] in ("kvq" if queries else "kv")}
    if not samples:
        raise CalibrationError(f"{model_path}: no K/V cache writes observed (a model without attention?)")
    return samples


def save_samples_npz(path: str | os.PathLike[str], samples: dict[str, NDArray[np.float32]]) -> None:
    """Write the samples as the .npz that ``from-samples`` reads (atomically)."""
    buffer = io.BytesIO()
    np.savez(buffer, **samples)
    atomic_write_bytes(path, buffer.getvalue())
