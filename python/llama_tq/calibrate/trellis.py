"""Bitshift trellis (QTIP-style) for the vtq_2 V-cache format: reference codec and table training.

State convention (docs/formats.md, "vtqb_2"): a block of T = 64 samples at k bits per sample has a
bitstream of exactly T*k bits (bit j of the stream is bit j % 8 of byte j // 8). The state of sample i is
the L-bit little-endian integer formed by stream bits ``[i*k, i*k + L)`` taken modulo T*k (tail-biting),
with L = k + 6. Consecutive states overlap in L - k bits::

    state[i+1] = (state[i] >> k) | (next k bits << (L - k))

so a state's low k bits are stream bits ``[i*k, i*k + k)``: the stream is the concatenation of the
low k bits of the states, and a valid state sequence must also satisfy the wrap-around condition
``state[T-1] >> k == state[0] & (2^(L-k) - 1)`` (both are stream bits [0, L-k)). A sample decodes in
O(1) as ``x̂_i = d * table[state_i]``.

The pure-numpy functions here are the float64 reference for the C/CUDA code: :func:`state_of_sample`
and :func:`decode_block` are written for clarity, :func:`states_of_streams` / :func:`decode_blocks`
are their vectorised equivalents, :func:`viterbi` is a batched Viterbi encoder (O(T * 2^L) per block).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from tqdm import tqdm

from .bitstream import bytes_to_bits, pack_bits
from .errors import CalibrationError

QK_TQ = 64  #: samples per block (formats.md)
TRELLIS_K = (2, 3, 4)  #: bits per sample of the vtq2/3/4 trellis formats
STATE_OVERLAP_BITS = 6  #: L - k in the format

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
TailBiting = Literal["two-pass", "exact"]
Scale = Literal["refit", "rms"] | float


def default_state_bits(k: int) -> int:
    """L = k + 6 state bits (256 / 512 / 1024 states for k = 2 / 3 / 4)."""
    return k + STATE_OVERLAP_BITS


@dataclass(frozen=True)
class TrellisSpec:
    """Shape of a tail-biting bitshift trellis: k bits per sample, L state bits, T samples per block."""

    k: int
    L: int = -1  #: -1 means the format's default k + 6
    T: int = QK_TQ

    def __post_init__(self) -> None:
        if self.L == -1:
            object.__setattr__(self, "L", default_state_bits(self.k))
        if not 1 <= self.k <= 8:
            raise CalibrationError(f"trellis bits per sample k must be in [1, 8], got {self.k}")
        if not self.k < self.L <= 16:
            raise CalibrationError(f"trellis state bits L must satisfy k < L <= 16, got k={self.k}, L={self.L}")
        if self.T < 2 or (self.T * self.k) % 8 or self.L - self.k > self.T * self.k:
            raise CalibrationError(f"block length T={self.T} unusable with k={self.k}, L={self.L}")

    @property
    def n_states(self) -> int:
        return 1 << self.L

    @property
    def n_overlap(self) -> int:
        """Number of values of the L - k bits shared by consecutive states."""
        return 1 << (self.L - self.k)

    @property
    def n_branch(self) -> int:
        return 1 << self.k

    @property
    def stream_bits(self) -> int:
        return self.T * self.k

    @property
    def stream_bytes(self) -> int:
        return self.stream_bits // 8


def check_table(table: ArrayLike, spec: TrellisSpec) -> FloatArray:
    tab = np.asarray(table, dtype=np.float64)
    if tab.shape != (spec.n_states,):
        raise CalibrationError(f"trellis table for L={spec.L} must have {spec.n_states} entries, got shape {tab.shape}")
    if not np.all(np.isfinite(tab)):
        raise CalibrationError("trellis table contains NaN or Inf")
    return tab


# --------------------------------------------------------------------------------------------------
# Decoder (reference)
# --------------------------------------------------------------------------------------------------


def state_of_sample(stream: bytes | ArrayLike, i: int, spec: TrellisSpec) -> int:
    """State of sample ``i`` of one packed block: stream bits ``[i*k, i*k + L)`` mod T*k, LSB first.

    ``stream`` holds the block's T*k/8 bytes; bit j of the stream is bit ``j % 8`` of byte ``j // 8``.
    """
    data = (
        np.frombuffer(bytes(stream), dtype=np.uint8)
        if isinstance(stream, bytes | bytearray)
        else np.asarray(stream, dtype=np.uint8)
    )
    if data.shape != (spec.stream_bytes,):
        raise ValueError(f"a block's stream has {spec.stream_bytes} bytes, got shape {data.shape}")
    if not 0 <= i < spec.T:
        raise ValueError(f"sample index {i} outside [0, {spec.T})")
    state = 0
    for j in range(spec.L):
        pos = (i * spec.k + j) % spec.stream_bits
        bit = (int(data[pos >> 3]) >> (pos & 7)) & 1
        state |= bit << j
    return state


def decode_block(stream: bytes | ArrayLike, d: float, table: ArrayLike, spec: TrellisSpec) -> FloatArray:
    """Reconstruct one block: ``x̂_i = d * table[state_of_sample(stream, i)]`` for i in [0, T).

    A block with d == 0 decodes to zeros whatever its stream holds.
    """
    tab = check_table(table, spec)
    states = [state_of_sample(stream, i, spec) for i in range(spec.T)]
    return float(d) * tab[states]


def _state_window(spec: TrellisSpec) -> IntArray:
    """``idx[i, j] = (i*k + j) mod T*k``: the stream bit that is bit j of state i."""
    i = np.arange(spec.T)[:, None]
    j = np.arange(spec.L)[None, :]
    return (i * spec.k + j) % spec.stream_bits


def states_of_streams(packed: ArrayLike, spec: TrellisSpec) -> IntArray:
    """Vectorised :func:`state_of_sample`: ``(B, T*k/8)`` bytes -> ``(B, T)`` states."""
    data = np.asarray(packed, dtype=np.uint8)
    if data.shape[-1] != spec.stream_bytes:
        raise ValueError(f"a block's stream has {spec.stream_bytes} bytes, got shape {data.shape}")
    bits = bytes_to_bits(data).astype(np.int64)
    return (bits[..., _state_window(spec)] << np.arange(spec.L)).sum(axis=-1)


def decode_blocks(packed: ArrayLike, d: ArrayLike, table: ArrayLike, spec: TrellisSpec) -> FloatArray:
    """Vectorised :func:`decode_block`: ``(B, T*k/8)`` bytes and ``(B,)`` scales -> ``(B, T)`` values."""
    tab = check_table(table, spec)
    return np.asarray(d, dtype=np.float64)[..., None] * tab[states_of_streams(packed, spec)]


def stream_of_states(states: ArrayLike, spec: TrellisSpec) -> NDArray[np.uint8]:
    """Pack a valid state sequence ``(B, T)``: stream bits [i*k, i*k+k) are the low k bits of state i."""
    s = np.asarray(states, dtype=np.int64)
    return pack_bits(s & (spec.n_branch - 1), spec.k)


def is_consistent(states: ArrayLike, spec: TrellisSpec) -> NDArray[np.bool_]:
    """Per block: does the state sequence satisfy every overlap, including the tail-biting wrap?"""
    s = np.asarray(states, dtype=np.int64)
    nxt = np.roll(s, -1, axis=-1)
    return np.all((s >> spec.k) == (nxt & (spec.n_overlap - 1)), axis=-1)


# --------------------------------------------------------------------------------------------------
# Encoder: batched Viterbi
# --------------------------------------------------------------------------------------------------


def viterbi(
    target: ArrayLike,
    table: ArrayLike,
    spec: TrellisSpec,
    start_overlap: ArrayLike | None = None,
    dtype: type[np.floating] = np.float64,
) -> tuple[IntArray, FloatArray]:
    """Minimum squared-error state path for each row of ``target`` (shape ``(B, T)``).

    Without ``start_overlap`` the path is unconstrained at both ends. With ``start_overlap`` (one value
    in [0, 2^(L-k)) per row) the path must start in a state whose low L-k bits equal it and end in a state
    whose high L-k bits equal it, which is exactly the tail-biting condition for that choice of the
    stream's first L-k bits. Returns ``(states (B, T), cost (B,))``. Path costs accumulate in ``dtype``
    (float32 is ~1.5x faster and only matters for near-ties).

    Layout: the predecessors of state ``s'`` are ``o*2^k + j`` (j = 0 .. 2^k-1) with ``o = s' & (2^(L-k)-1)``.
    Viewing the cost vector as ``(2^(L-k), 2^k)`` and minimising over the last axis therefore gives the
    best predecessor of every group ``o``; the successor ``s' = new*2^(L-k) + o`` is then built in a
    ``(2^k, 2^(L-k))`` view of the next cost vector, with no copies. Ties go to the smallest j.
    """
    tab = check_table(table, spec)
    x = np.asarray(target, dtype=dtype)
    if x.ndim != 2 or x.shape[1] != spec.T:
        raise ValueError(f"target must have shape (B, {spec.T}), got {x.shape}")
    n_blocks = x.shape[0]
    n_s, n_o, n_k = spec.n_states, spec.n_overlap, spec.n_branch
    tab = tab.astype(dtype)
    tab_ko = tab.reshape(n_k, n_o)  # [new, o] -> table[new*n_o + o]
    state_ids = np.arange(n_s)
    cost = (x[:, :1] - tab[None, :]) ** 2
    if start_overlap is not None:
        v = np.asarray(start_overlap, dtype=np.int64).reshape(n_blocks, 1)
        cost[(state_ids[None, :] & (n_o - 1)) != v] = np.inf
    backptr = np.empty((spec.T - 1, n_blocks, n_o), dtype=np.uint8)
    buf = np.empty((n_blocks, n_k, n_o), dtype=dtype)
    for t in range(1, spec.T):
        grouped = cost.reshape(n_blocks, n_o, n_k)  # [o, j] <-> state o*n_k + j
        j = grouped.argmin(axis=2)
        best = np.take_along_axis(grouped, j[:, :, None], axis=2)[:, :, 0]  # best predecessor per group o
        backptr[t - 1] = j
        np.subtract(x[:, t, None, None], tab_ko[None], out=buf)  # [new, o] <-> state new*n_o + o
        np.square(buf, out=buf)
        buf += best[:, None, :]
        cost, buf = buf.reshape(n_blocks, n_s), grouped.reshape(n_blocks, n_k, n_o)
    if start_overlap is not None:
        cost[(state_ids[None, :] >> spec.k) != v] = np.inf
    states = np.empty((n_blocks, spec.T), dtype=np.int64)
    last = cost.argmin(axis=1)
    total = cost[np.arange(n_blocks), last].astype(np.float64)
    states[:, -1] = last
    rows = np.arange(n_blocks)
    for t in range(spec.T - 1, 0, -1):
        o = states[:, t] & (n_o - 1)
        states[:, t - 1] = o * n_k + backptr[t - 1][rows, o]
    return states, total


def viterbi_tail_biting(
    target: ArrayLike,
    table: ArrayLike,
    spec: TrellisSpec,
    method: TailBiting = "two-pass",
    dtype: type[np.floating] = np.float64,
) -> tuple[IntArray, FloatArray]:
    """Viterbi under the tail-biting constraint; every returned path satisfies :func:`is_consistent`.

    ``two-pass`` (default, 2 Viterbi runs): an unconstrained run on the block rotated by T/2 samples puts
    the wrap point in the middle of the path, where the survivor is reliable; the stream's first L-k bits
    are read off that path's state for sample 0, and a second run is constrained to them.
    ``exact`` (2^(L-k) = 64 runs): tries every value of those bits and keeps the best, i.e. the optimal
    tail-biting path; meant for testing how far two-pass is from it.
    """
    x = np.asarray(target, dtype=np.float64)
    n_blocks = x.shape[0]
    if method == "exact":
        n_o = spec.n_overlap
        rep = np.repeat(x, n_o, axis=0)
        v = np.tile(np.arange(n_o), n_blocks)
        states, cost = viterbi(rep, table, spec, start_overlap=v, dtype=dtype)
        best = cost.reshape(n_blocks, n_o).argmin(axis=1)
        pick = np.arange(n_blocks) * n_o + best
        return states[pick], cost[pick]
    if method != "two-pass":
        raise ValueError(f"unknown tail-biting method {method!r}")
    half = spec.T // 2
    rotated_states, _ = viterbi(np.roll(x, -half, axis=1), table, spec, dtype=dtype)
    v = rotated_states[:, (spec.T - half) % spec.T] & (spec.n_overlap - 1)
    return viterbi(x, table, spec, start_overlap=v, dtype=dtype)


@dataclass(frozen=True)
class EncodedBlocks:
    """Result of :func:`encode_blocks`: what the format stores, and the reconstruction it implies."""

    packed: NDArray[np.uint8]  #: (B, T*k/8) bitstreams
    d: FloatArray  #: (B,) block scales
    states: IntArray  #: (B, T) states (== states_of_streams(packed))
    recon: FloatArray  #: (B, T) reconstruction d * table[states]


def encode_blocks(
    x: ArrayLike,
    table: ArrayLike,
    spec: TrellisSpec,
    *,
    scale: Scale = "refit",
    tail_biting: TailBiting = "two-pass",
    fp16_scale: bool = False,
    chunk: int = 1024,
) -> EncodedBlocks:
    """Encode blocks ``(B, T)`` as the format does.

    The Viterbi target is the block divided by a first scale d0 (the block RMS, or the given known σ);
    the stored scale is then ``refit`` (least squares: d = <x, t> / <t, t> with t = table[states], as
    formats.md requires), ``rms`` (d = d0), or the known σ. All-zero blocks (d0 = 0) get d = 0 and an
    all-zero stream, and decode to zeros. ``fp16_scale`` rounds d to IEEE half as ``ggml_half`` stores it.
    """
    tab = check_table(table, spec)
    xb = np.asarray(x, dtype=np.float64)
    if xb.ndim != 2 or xb.shape[1] != spec.T:
        raise ValueError(f"blocks must have shape (B, {spec.T}), got {xb.shape}")
    if isinstance(scale, str):
        if scale not in ("refit", "rms"):
            raise ValueError(f"unknown scale mode {scale!r}")
        d0 = np.sqrt(np.mean(xb * xb, axis=1))
    else:
        d0 = np.full(xb.shape[0], float(scale))
    nonzero = d0 > 0
    target = np.where(nonzero[:, None], xb / np.where(nonzero, d0, 1.0)[:, None], 0.0)
    states = np.zeros(xb.shape, dtype=np.int64)
    for lo in range(0, xb.shape[0], chunk):
        sel = slice(lo, lo + chunk)
        states[sel], _ = viterbi_tail_biting(target[sel], tab, spec, tail_biting)
    states[~nonzero] = 0
    t = tab[states]
    if scale == "refit":
        tt = np.sum(t * t, axis=1)
        d = np.where(tt > 0, np.sum(xb * t, axis=1) / np.where(tt > 0, tt, 1.0), 0.0)
    else:
        d = d0
    d = np.where(nonzero, d, 0.0)
    if fp16_scale:
        d = d.astype(np.float16).astype(np.float64)
    return EncodedBlocks(packed=stream_of_states(states, spec), d=d, states=states, recon=d[:, None] * t)


# --------------------------------------------------------------------------------------------------
# Tables and training
# --------------------------------------------------------------------------------------------------

DEFAULT_TABLE_SEED = 0x7C0DE
DEFAULT_TRAIN_SEED = 20240611
DEFAULT_EVAL_SEED = 31337


def initial_table(spec: TrellisSpec, seed: int = DEFAULT_TABLE_SEED) -> FloatArray:
    """Gaussian quantiles Φ⁻¹((i + 0.5) / 2^L), assigned to states by a seeded random permutation.

    Rescaled to exactly zero mean and unit variance.
    """
    q = special.ndtri((np.arange(spec.n_states) + 0.5) / spec.n_states)
    q = q / np.sqrt(np.mean(q * q))
    perm = np.random.default_rng(seed).permutation(spec.n_states)
    return q[perm]


def normalize_rows(x: ArrayLike) -> FloatArray:
    """Divide each row by its RMS (all-zero rows are dropped): the encoder's Viterbi target."""
    xb = np.asarray(x, dtype=np.float64)
    rms = np.sqrt(np.mean(xb * xb, axis=1))
    keep = rms > 0
    return xb[keep] / rms[keep, None]


@dataclass(frozen=True)
class TrellisTrainResult:
    spec: TrellisSpec
    table: FloatArray  #: the best table found (lowest training MSE)
    history: FloatArray  #: training MSE (unit-RMS blocks, known scale) of the table of each iteration
    best_iteration: int  #: index into history of the returned table (0 = the initial table)
    n_blocks: int
    seconds: float
    params: dict[str, int | str] = field(default_factory=dict)


def train_trellis(
    spec: TrellisSpec,
    *,
    iterations: int = 8,
    n_blocks: int = 2048,
    seed: int = DEFAULT_TRAIN_SEED,
    table_seed: int = DEFAULT_TABLE_SEED,
    blocks: ArrayLike | None = None,
    init: ArrayLike | None = None,
    progress: bool | str = False,
    chunk: int = 1024,
    dtype: type[np.floating] = np.float32,
) -> TrellisTrainResult:
    """Trellis-coded-quantisation training of a table (generalised Lloyd over state paths).

    Each iteration Viterbi-encodes the training blocks (rows scaled to unit RMS, as the encoder does) with
    the current table, then sets each visited state's entry to the mean of the samples encoded with it
    (unvisited entries keep their value) and re-centres the table to mean 0. Its variance then settles
    near 1 - MSE, like Lloyd-Max levels (the codebooks are for unit-*variance input*). The tail-biting
    encoder is not exactly optimal, so the MSE is not guaranteed monotone: the best table seen is returned.

    Training data: ``blocks`` (any ``(B, T)`` array, e.g. real V samples) or ``n_blocks`` of N(0, 1) from
    ``np.random.default_rng(seed)``. ``init`` overrides :func:`initial_table`. The training Viterbi runs in
    ``dtype`` (float32 by default, for speed); table updates are float64.
    """
    if iterations < 0:
        raise CalibrationError(f"training iterations must be >= 0, got {iterations}")
    started = time.perf_counter()
    if blocks is None:
        if n_blocks < 1:
            raise CalibrationError(f"training needs at least one block, got {n_blocks}")
        raw = np.random.default_rng(seed).standard_normal((n_blocks, spec.T))
    else:
        raw = np.asarray(blocks, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != spec.T or raw.shape[0] == 0:
            raise CalibrationError(f"training blocks must have shape (B>0, {spec.T}), got {raw.shape}")
    target = normalize_rows(raw)
    if target.shape[0] == 0:
        raise CalibrationError("training blocks are all zero")
    table = check_table(initial_table(spec, table_seed) if init is None else init, spec).copy()
    history: list[float] = []
    best_mse, best_table, best_it = math.inf, table, 0
    desc = progress if isinstance(progress, str) else f"trellis k={spec.k} L={spec.L}"
    n_rows = target.shape[0]
    total_work = (iterations + 1) * n_rows
    with tqdm(total=total_work, desc=desc, disable=not progress, unit="blk", leave=False) as bar:
        for it in range(iterations + 1):
            states = np.empty(target.shape, dtype=np.int64)
            for lo in range(0, n_rows, chunk):
                sel = slice(lo, lo + chunk)
                states[sel], _ = viterbi_tail_biting(target[sel], table, spec, dtype=dtype)
                bar.update(min(chunk, n_rows - lo))
            mse = float(np.mean((target - table[states]) ** 2))
            history.append(mse)
            bar.set_postfix(mse=f"{mse:.5f}")
            if mse < best_mse:
                best_mse, best_table, best_it = mse, table, it
            if it == iterations:
                break
            counts = np.bincount(states.ravel(), minlength=spec.n_states)
            sums = np.bincount(states.ravel(), weights=target.ravel(), minlength=spec.n_states)
            table = np.where(counts > 0, sums / np.maximum(counts, 1), table)
            table = table - table.mean()
    return TrellisTrainResult(
        spec=spec,
        table=best_table,
        history=np.asarray(history),
        best_iteration=best_it,
        n_blocks=n_rows,
        seconds=time.perf_counter() - started,
        params={
            "k": spec.k,
            "L": spec.L,
            "T": spec.T,
            "iterations": iterations,
            "blocks": n_rows,
            "seed": seed if blocks is None else "samples",
            "table_seed": table_seed,
        },
    )


@dataclass(frozen=True)
class TrellisEvaluation:
    k: int
    n_blocks: int
    mse_known_sigma: float  #: d fixed to the true σ = 1
    mse_refit: float  #: d0 = block RMS, least-squares refit (the format's encoder), float64 d
    mse_refit_fp16: float  #: as above with d rounded to fp16


def evaluate_trellis(
    table: ArrayLike,
    spec: TrellisSpec,
    *,
    n_blocks: int = 1024,
    seed: int = DEFAULT_EVAL_SEED,
    progress: Callable[[], None] | None = None,
) -> TrellisEvaluation:
    """MSE on fresh N(0, 1) blocks (σ = 1, so the Shannon bound is 4^-k)."""
    x = np.random.default_rng(seed).standard_normal((n_blocks, spec.T))
    known = encode_blocks(x, table, spec, scale=1.0)
    refit = encode_blocks(x, table, spec, scale="refit")
    d16 = refit.d.astype(np.float16).astype(np.float64)
    recon16 = d16[:, None] * (refit.recon / np.where(refit.d == 0, 1.0, refit.d)[:, None])
    if progress is not None:
        progress()
    return TrellisEvaluation(
        k=spec.k,
        n_blocks=n_blocks,
        mse_known_sigma=float(np.mean((x - known.recon) ** 2)),
        mse_refit=float(np.mean((x - refit.recon) ** 2)),
        mse_refit_fp16=float(np.mean((x - recon16) ** 2)),
    )
