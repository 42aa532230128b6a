"""Empirical calibration: fit codebooks to real K/V samples.

Input is plain arrays, one per layer (``{layer: ndarray}``), of *post-rotation* cache rows as the
ktq/vtq types see them. Each array is cut into blocks of QK_TQ = 64 consecutive values along its last
axis (a cache row holds whole heads and head dims are multiples of 64, so blocks never straddle heads),
and each block is divided by its RMS, exactly the normalisation the format's unit-variance codebooks
assume. All-zero blocks carry no information about the shape of the distribution and are dropped.

Hook for ``from-model``: a future CLI subcommand (and the lead's C++ module) only has to produce the same
``{layer: ndarray}`` dicts for K and V, then call :func:`calibrate_from_samples`; nothing here knows
where the arrays come from. ``from-samples`` reads them from an ``.npz`` file (:func:`load_samples_npz`).
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .codebook_file import Codebook, entry_name, format_float
from .errors import CalibrationError
from .lloyd_max import LloydMaxResult, check_samples, lloyd_max_empirical, shannon_bound
from .trellis import QK_TQ, TRELLIS_K, TrellisSpec, TrellisTrainResult, train_trellis

LayerSamples = Mapping[int, ArrayLike]
FORMAT_BITS = (2, 3, 4)
_KEY_RE = re.compile(r"^(?P<kind>[kv])\.(?P<layer>0|[1-9][0-9]*)$")


def normalize_blocks(samples: ArrayLike, what: str = "samples", block: int = QK_TQ) -> NDArray[np.float64]:
    """Cut into ``(n_blocks, block)`` along the last axis and divide each block by its RMS.

    Raises :class:`CalibrationError` for empty input, NaN/Inf, a last axis that is not a multiple of the
    block size, or input whose blocks are all zero.
    """
    arr = np.asarray(samples)
    if arr.ndim == 0:
        raise CalibrationError(f"{what}: expected an array of samples, got a scalar")
    flat = check_samples(arr, what)
    last = arr.shape[-1]
    if last % block:
        raise CalibrationError(
            f"{what}: last dimension {last} is not a multiple of the block size {block} (array shape {arr.shape})"
        )
    blocks = flat.reshape(-1, block)
    rms = np.sqrt(np.mean(blocks * blocks, axis=1))
    keep = rms > 0
    if not keep.any():
        raise CalibrationError(f"{what}: all {blocks.shape[0]} blocks are zero")
    return blocks[keep] / rms[keep, None]


def load_samples_npz(
    path: str | os.PathLike[str],
) -> tuple[dict[int, NDArray[np.float64]], dict[int, NDArray[np.float64]]]:
    """Read ``k.<layer>`` / ``v.<layer>`` arrays from an .npz file (no pickles)."""
    p = Path(path)
    k: dict[int, NDArray[np.float64]] = {}
    v: dict[int, NDArray[np.float64]] = {}
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = list(npz.files)
            if not keys:
                raise CalibrationError(f"{p}: no arrays (expected keys like k.0, v.0, ...)")
            for key in keys:
                m = _KEY_RE.match(key)
                if m is None:
                    raise CalibrationError(f"{p}: unexpected array {key!r}; keys must be k.<layer> or v.<layer>")
                arr = npz[key]
                if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
                    raise CalibrationError(f"{p}: array {key} has non-numeric dtype {arr.dtype}")
                (k if m.group("kind") == "k" else v)[int(m.group("layer"))] = arr.astype(np.float64)
    except CalibrationError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"cannot read samples from {p}: {exc}") from None
    return k, v


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SampleCalibration:
    """What :func:`calibrate_from_samples` fitted: the codebook plus the fits behind each entry."""

    codebook: Codebook
    fits: dict[str, LloydMaxResult] = field(default_factory=dict)
    trellis: dict[str, TrellisTrainResult] = field(default_factory=dict)
    n_blocks: dict[str, int] = field(default_factory=dict)  #: e.g. {"k": 1234, "v.3": 56}


def _check_bits(bits: Sequence[int]) -> tuple[int, ...]:
    if not bits:
        raise CalibrationError("no bit widths given")
    for b in bits:
        if b not in FORMAT_BITS:
            raise CalibrationError(f"bits must be among {FORMAT_BITS} (the ktq/vtq formats), got {b}")
    return tuple(sorted(set(bits)))


def _levels_meta(fit: LloydMaxResult, n_blocks: int) -> dict[str, str]:
    return {
        "source": "samples",
        "blocks": str(n_blocks),
        "mse": format_float(fit.mse),
        "bound": format_float(shannon_bound(fit.bits, fit.variance)),
    }


def calibrate_from_samples(
    k_samples: LayerSamples | None,
    v_samples: LayerSamples | None,
    *,
    bits: Sequence[int] = FORMAT_BITS,
    per_layer: bool = False,
    symmetric: bool | None = None,
    trellis: bool = False,
    trellis_iterations: int = 8,
    trellis_max_blocks: int = 4096,
    seed: int = 0,
    progress: bool = False,
) -> SampleCalibration:
    """Fit global (pooled over layers) and optionally per-layer codebooks to K/V samples.

    Entries: ``ktqB`` from K samples and ``vtqB_1`` from V samples for each B in ``bits`` (Lloyd-Max /
    1-D k-means on the RMS-normalised values), with ``@layer=N`` variants if ``per_layer``; with
    ``trellis``, ``trellisB`` tables trained on (at most ``trellis_max_blocks``, chosen with ``seed``)
    normalised V blocks, starting from the default initial table. ``symmetric``: see
    :func:`~llama_tq.calibrate.lloyd_max.lloyd_max_empirical` (None: symmetric only if the data is).
    """
    bits = _check_bits(bits)
    groups = {"k": dict(k_samples or {}), "v": dict(v_samples or {})}
    if not groups["k"] and not groups["v"]:
        raise CalibrationError("no samples: need at least one K or V layer")
    if trellis and not groups["v"]:
        raise CalibrationError("trellis training needs V samples")
    cb = Codebook()
    result = SampleCalibration(cb)
    normalized: dict[str, dict[int, NDArray[np.float64]]] = {"k": {}, "v": {}}
    for kind, layers in groups.items():
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or layer < 0:
                raise CalibrationError(f"{kind} samples: layer keys must be non-negative integers, got {layer!r}")
        for layer in sorted(layers):
            what = f"{kind} samples of layer {layer}"
            normalized[kind][int(layer)] = normalize_blocks(layers[layer], what)
    for kind, layers in normalized.items():
        if not layers:
            continue
        pooled = np.concatenate(list(layers.values()))
        result.n_blocks[kind] = pooled.shape[0]
        cb.set_param(f"samples.{kind}.layers", len(layers))
        cb.set_param(f"samples.{kind}.blocks", pooled.shape[0])
        for b in bits:
            base = f"ktq{b}" if kind == "k" else f"vtq{b}_1"
            targets: list[tuple[str, NDArray[np.float64]]] = [(base, pooled)]
            if per_layer:
                targets += [(entry_name(base, layer), blocks) for layer, blocks in layers.items()]
            for name, blocks in targets:
                fit = lloyd_max_empirical(
                    blocks,
                    1 << b,
                    symmetric=symmetric,
                    what=f"{name} samples",
                    progress=name if progress else False,
                )
                result.fits[name] = fit
                result.n_blocks.setdefault(name, blocks.shape[0])
                cb.add(name, fit.levels, _levels_meta(fit, blocks.shape[0]))
    if trellis:
        pooled_v = np.concatenate(list(normalized["v"].values()))
        if pooled_v.shape[0] > trellis_max_blocks:
            pick = np.sort(np.random.default_rng(seed).choice(pooled_v.shape[0], trellis_max_blocks, replace=False))
            pooled_v = pooled_v[pick]
        cb.set_param("samples.trellis.blocks", pooled_v.shape[0])
        cb.set_param("samples.trellis.iterations", trellis_iterations)
        cb.set_param("samples.trellis.seed", seed)
        for k in TRELLIS_K:
            if k not in bits:
                continue
            spec = TrellisSpec(k)
            res = train_trellis(
                spec,
                iterations=trellis_iterations,
                blocks=pooled_v,
                progress=f"trellis{k}" if progress else False,
            )
            result.trellis[f"trellis{k}"] = res
            meta = {"source": "samples", "train_mse": format_float(res.history.min())}
            cb.add(f"trellis{k}", res.table, meta)
    cb.set_param("samples.symmetric", "auto" if symmetric is None else str(bool(symmetric)).lower())
    cb.set_param("samples.per_layer", str(per_layer).lower())
    return result
