"""Lloyd-Max scalar quantizers: analytic sources (exact integrals) and empirical samples (1-D k-means).

The Lloyd iteration alternates the two optimality conditions of an MSE quantizer:

* thresholds are the midpoints of neighbouring levels (nearest-neighbour condition);
* each level is the conditional mean of its cell, ``E[X | t_j <= X < t_j+1] = M1 / M0`` (centroid).

Neither step can increase the MSE, so the MSE history recorded in :class:`LloydMaxResult` is
non-increasing (up to floating-point rounding). For symmetric sources the problem is folded onto
``[0, ∞)`` (density ``2 f``): an even number of levels ``±c_j`` has a threshold at 0, an odd number has a
level pinned at 0. The resulting levels are exactly antisymmetric by construction, and the folded
problem has the same MSE as the full one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize
from tqdm import tqdm

from .distributions import Distribution, FloatArray, Moments
from .errors import CalibrationError

MIN_LEVELS = 2
MAX_LEVELS = 256
DEFAULT_TOL = 1e-12
DEFAULT_MAX_ITER = 200_000

CellMoments = Callable[[FloatArray], Moments]


@dataclass(frozen=True)
class LloydMaxResult:
    """A fitted scalar quantizer and how it was obtained."""

    levels: FloatArray  #: ascending reconstruction levels
    mse: float  #: mean squared error of ``levels`` with nearest-neighbour thresholds (exact for analytic)
    variance: float  #: E[X^2] of the source (the distortion of the zero quantizer)
    history: FloatArray = field(repr=False)  #: MSE before each iteration; last entry == ``mse``
    iterations: int = 0
    converged: bool = True
    symmetric: bool = False
    source: str = ""  #: provenance description of the source

    @property
    def n_levels(self) -> int:
        return int(self.levels.size)

    @property
    def thresholds(self) -> FloatArray:
        return thresholds_of(self.levels)

    @property
    def bits(self) -> float:
        return math.log2(self.n_levels)

    @property
    def shannon_bound(self) -> float:
        return shannon_bound(self.bits, self.variance)

    @property
    def ratio_to_bound(self) -> float:
        return self.mse / self.shannon_bound


def shannon_bound(bits: float, variance: float = 1.0) -> float:
    """Distortion-rate bound ``σ² 4^-b`` (exact for a Gaussian source, an upper bound for others)."""
    return float(variance) * 4.0 ** (-float(bits))


def check_n_levels(n_levels: int) -> int:
    if isinstance(n_levels, bool) or not isinstance(n_levels, int | np.integer):
        raise CalibrationError(f"number of levels must be an integer, got {n_levels!r}")
    if not MIN_LEVELS <= n_levels <= MAX_LEVELS:
        raise CalibrationError(f"number of levels must be in [{MIN_LEVELS}, {MAX_LEVELS}], got {n_levels}")
    return int(n_levels)


def thresholds_of(levels: ArrayLike) -> FloatArray:
    """Nearest-neighbour decision thresholds: midpoints of consecutive (ascending) levels."""
    lv = np.asarray(levels, dtype=np.float64)
    return 0.5 * (lv[:-1] + lv[1:])


def quantize(x: ArrayLike, levels: ArrayLike) -> NDArray[np.intp]:
    """Index of the nearest level for each sample (a sample exactly on a threshold goes up)."""
    return np.searchsorted(thresholds_of(levels), np.asarray(x, dtype=np.float64), side="right")


def dequantize(codes: ArrayLike, levels: ArrayLike) -> FloatArray:
    return np.asarray(levels, dtype=np.float64)[np.asarray(codes)]


def _cell_mse(levels: FloatArray, m: Moments) -> float:
    m0, m1, m2 = m
    per_cell = m2 - 2.0 * levels * m1 + levels * levels * m0
    return float(np.sum(np.maximum(per_cell, 0.0)))


def _centroids(levels: FloatArray, m: Moments, pin_zero: bool) -> FloatArray:
    m0, m1, _ = m
    new = np.where(m0 > 0, m1 / np.where(m0 > 0, m0, 1.0), levels)
    if pin_zero:
        new[0] = 0.0
    return new


def _polish(
    cell_moments: CellMoments, levels: FloatArray, lo: float, hi: float, pin_zero: bool, tol: float
) -> FloatArray | None:
    """Solve the fixed-point equations ``centroid(levels) = levels`` with scipy's hybrid Powell method.

    Plain Lloyd converges linearly, with a rate that approaches 1 as the number of levels grows (~n²
    iterations); started from a Lloyd iterate, the root finder reaches the same fixed point quadratically.
    Returns None if it fails or leaves the levels unsorted.
    """
    free = slice(1, None) if pin_zero else slice(None)

    def residual(v: FloatArray) -> FloatArray:
        cand = levels.copy()
        cand[free] = v
        edges = np.concatenate(([lo], thresholds_of(cand), [hi]))
        return (_centroids(cand, cell_moments(edges), pin_zero) - cand)[free]

    sol = optimize.root(residual, levels[free], method="hybr", options={"xtol": tol})
    cand = levels.copy()
    cand[free] = sol.x
    if not (np.all(np.isfinite(cand)) and np.all(np.diff(cand) > 0)):
        return None
    return cand


def _lloyd(
    cell_moments: CellMoments,
    init: FloatArray,
    lo: float,
    hi: float,
    *,
    pin_zero: bool,
    tol: float,
    max_iter: int,
    progress: bool | str,
    polish_after: int | None = None,
) -> tuple[FloatArray, FloatArray, int, bool]:
    """Core Lloyd iteration on the cells [lo, t_1), ..., [t_n-1, hi]; returns levels, history, iters, ok.

    ``history[i]`` is the MSE of the i-th iterate (with its own nearest-neighbour thresholds); the last
    entry belongs to the returned levels. With ``polish_after``, a root-finder jump to the fixed point
    (:func:`_polish`) is tried once after that many iterations and kept only if it lowers the MSE, so the
    history stays non-increasing.
    """
    levels = np.array(init, dtype=np.float64)
    history: list[float] = []
    scale = max(1.0, float(np.max(np.abs(levels))))
    converged = False
    desc = progress if isinstance(progress, str) else "lloyd-max"
    bar = tqdm(total=max_iter, desc=desc, disable=not progress, leave=False, unit="it", miniters=100, delay=1.0)
    it = 0
    try:
        for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported after the loop
            edges = np.concatenate(([lo], thresholds_of(levels), [hi]))
            m = cell_moments(edges)
            history.append(_cell_mse(levels, m))
            new = _centroids(levels, m, pin_zero)
            step = float(np.max(np.abs(new - levels)))
            if polish_after is not None and it == polish_after and step > tol * scale:
                cand = _polish(cell_moments, new, lo, hi, pin_zero, tol * scale)
                if cand is not None:
                    edges = np.concatenate(([lo], thresholds_of(cand), [hi]))
                    if _cell_mse(cand, cell_moments(edges)) <= history[-1]:
                        new = cand
            levels = new
            if it % 100 == 0:
                bar.update(100)
                bar.set_postfix(mse=f"{history[-1]:.6g}", step=f"{step:.1e}")
            if step <= tol * scale:
                converged = True
                break
    finally:
        bar.close()
    edges = np.concatenate(([lo], thresholds_of(levels), [hi]))
    history.append(_cell_mse(levels, cell_moments(edges)))
    return levels, np.asarray(history), it, converged


def _initial_levels(ppf: Callable[[FloatArray], FloatArray], n_levels: int) -> FloatArray:
    return np.asarray(ppf((np.arange(n_levels) + 0.5) / n_levels), dtype=np.float64)


def _unfold(pos: FloatArray, n_levels: int) -> FloatArray:
    """Full antisymmetric level set from the non-negative half (which includes 0 for odd counts)."""
    if n_levels % 2:
        return np.concatenate((-pos[:0:-1], pos))
    return np.concatenate((-pos[::-1], pos))


def lloyd_max(
    dist: Distribution,
    n_levels: int,
    *,
    symmetric: bool | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    progress: bool | str = False,
    polish_after: int | None = 50,
) -> LloydMaxResult:
    """Lloyd-Max quantizer of an analytic source with exact centroid integrals.

    ``symmetric=None`` enforces symmetric levels exactly when the source is symmetric; ``False`` fits
    all levels freely (the result is then symmetric only up to rounding). Convergence: the largest level
    change of an iteration falls below ``tol`` (relative to the largest level, at least 1).
    After ``polish_after`` plain iterations a scipy root-finder jump to the fixed point is tried (kept only
    if it lowers the MSE); ``None`` runs plain Lloyd throughout.
    """
    n_levels = check_n_levels(n_levels)
    if symmetric is None:
        symmetric = dist.symmetric
    if symmetric and not dist.symmetric:
        raise CalibrationError(f"cannot enforce symmetric levels for the asymmetric source {dist.name}")
    lo, hi = dist.support
    init = _initial_levels(dist.ppf, n_levels)
    if symmetric:
        half = n_levels // 2
        pos = init[half:].copy()
        if n_levels % 2:
            pos[0] = 0.0

        def folded(edges: FloatArray) -> Moments:
            m0, m1, m2 = dist.partial_moments(edges[:-1], edges[1:])
            return 2.0 * m0, 2.0 * m1, 2.0 * m2

        pos, history, iters, ok = _lloyd(
            folded,
            pos,
            0.0,
            hi,
            pin_zero=bool(n_levels % 2),
            tol=tol,
            max_iter=max_iter,
            progress=progress,
            polish_after=polish_after,
        )
        levels = _unfold(pos, n_levels)
    else:

        def cells(edges: FloatArray) -> Moments:
            return dist.partial_moments(edges[:-1], edges[1:])

        levels, history, iters, ok = _lloyd(
            cells,
            init,
            lo,
            hi,
            pin_zero=False,
            tol=tol,
            max_iter=max_iter,
            progress=progress,
            polish_after=polish_after,
        )
    m0, m1, m2 = dist.partial_moments(np.array([lo]), np.array([hi]))
    return LloydMaxResult(
        levels=levels,
        mse=float(history[-1]),
        variance=float(m2[0]),
        history=history,
        iterations=iters,
        converged=ok,
        symmetric=bool(symmetric),
        source=dist.name,
    )


def mse_of_levels(dist: Distribution, levels: ArrayLike) -> float:
    """Exact MSE of arbitrary ascending ``levels`` (nearest-neighbour thresholds) on an analytic source."""
    lv = np.asarray(levels, dtype=np.float64)
    lo, hi = dist.support
    edges = np.concatenate(([lo], thresholds_of(lv), [hi]))
    return _cell_mse(lv, dist.partial_moments(edges[:-1], edges[1:]))


# --------------------------------------------------------------------------------------------------
# Empirical samples
# --------------------------------------------------------------------------------------------------


def check_samples(samples: ArrayLike, what: str = "samples") -> FloatArray:
    """Flatten to float64 and reject empty input or NaN/Inf with a clear message."""
    try:
        x = np.asarray(samples, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{what}: not a numeric array ({exc})") from None
    if x.size == 0:
        raise CalibrationError(f"{what}: empty")
    bad = ~np.isfinite(x)
    if bad.any():
        raise CalibrationError(f"{what}: {int(bad.sum())} of {x.size} values are NaN or Inf")
    return x


def _is_symmetric_sample(sorted_x: FloatArray) -> bool:
    return bool(np.array_equal(sorted_x, -sorted_x[::-1]))


def _kmeans_1d(
    x: FloatArray,
    init: FloatArray,
    *,
    pin_zero: bool,
    tol: float,
    max_iter: int,
    progress: bool | str,
) -> tuple[FloatArray, FloatArray, int, bool]:
    """Lloyd's algorithm on sorted samples ``x`` with exact per-cell sums (no prefix-sum cancellation).

    Cell j holds ``t_j <= x < t_j+1`` (the tie rule of :func:`quantize`). An emptied cell's level is
    re-seeded at the worst-quantized sample value that is not a level yet; that cannot raise the MSE (the
    level served no sample, and the next assignment can only lower the error), so ``history`` stays
    non-increasing and the levels stay strictly ascending. Converged when the partition is stable (no
    level moves beyond ``tol``).
    """
    n = x.size
    levels = np.array(init, dtype=np.float64)
    history: list[float] = []
    scale = max(1.0, float(np.max(np.abs(x))))
    converged = False
    desc = progress if isinstance(progress, str) else "k-means"
    bar = tqdm(total=max_iter, desc=desc, disable=not progress, leave=False, unit="it", delay=1.0)
    it = 0

    def assign(lv: FloatArray) -> tuple[NDArray[np.intp], FloatArray]:
        idx = np.concatenate(([0], np.searchsorted(x, thresholds_of(lv), side="left"), [n]))
        err = (x - np.repeat(lv, np.diff(idx))) ** 2
        return idx, err

    try:
        for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported after the loop
            idx, err = assign(levels)
            history.append(float(np.mean(err)))
            counts = np.diff(idx)
            nonempty = counts > 0
            new = levels.copy()
            new[nonempty] = np.add.reduceat(x, idx[:-1][nonempty]) / counts[nonempty]
            if pin_zero:
                new[0] = 0.0
            empty = np.flatnonzero(~nonempty)
            if pin_zero:
                empty = empty[empty != 0]
            if empty.size:
                # worst-quantized samples first, skipping values that already are levels
                worst = x[np.argsort(-err, kind="stable")]
                worst = worst[~np.isin(worst, np.delete(new, empty))]
                _, first = np.unique(worst, return_index=True)
                seeds = worst[np.sort(first)][: empty.size]
                new[empty[: seeds.size]] = seeds
                new = np.sort(new)
            step = float(np.max(np.abs(new - levels)))
            levels = new
            bar.update(1)
            if step <= tol * scale and not empty.size:
                converged = True
                break
    finally:
        bar.close()
    history.append(float(np.mean(assign(levels)[1])))
    return levels, np.asarray(history), it, converged


def _initial_levels_from_sample(sorted_x: FloatArray, n_levels: int) -> FloatArray:
    init = np.quantile(sorted_x, (np.arange(n_levels) + 0.5) / n_levels)
    if np.all(np.diff(init) > 0):
        return init
    uniq = np.unique(sorted_x)
    pos = np.minimum(((np.arange(n_levels) + 0.5) / n_levels * uniq.size).astype(np.intp), uniq.size - 1)
    return uniq[pos]


def lloyd_max_empirical(
    samples: ArrayLike,
    n_levels: int,
    *,
    symmetric: bool | None = None,
    tol: float = 1e-12,
    max_iter: int = 1000,
    progress: bool | str = False,
    what: str = "samples",
) -> LloydMaxResult:
    """1-D k-means (Lloyd) on samples, initialised deterministically from sample quantiles.

    ``symmetric=None`` enforces symmetric levels iff the sample is exactly symmetric (its sorted values
    equal their negated reverse); ``True`` fits the folded sample ``|x|`` (i.e. the symmetrised source).
    The reported MSE is the exact mean squared error on the given samples.
    """
    n_levels = check_n_levels(n_levels)
    x = np.sort(check_samples(samples, what))
    if symmetric is None:
        symmetric = _is_symmetric_sample(x)
    if symmetric:
        folded = np.sort(np.abs(x))
        n_pos = (n_levels + 1) // 2
        if np.unique(folded).size < n_pos:
            raise CalibrationError(
                f"{what}: {n_levels} symmetric levels need at least {n_pos} distinct |values|, "
                f"got {np.unique(folded).size}"
            )
        init = _initial_levels_from_sample(folded, n_pos)
        if n_levels % 2:
            init = np.concatenate(([0.0], _initial_levels_from_sample(folded[folded > 0], n_pos - 1)))
        pos, history, iters, ok = _kmeans_1d(
            folded, init, pin_zero=bool(n_levels % 2), tol=tol, max_iter=max_iter, progress=progress
        )
        levels = _unfold(pos, n_levels)
    else:
        if np.unique(x).size < n_levels:
            raise CalibrationError(
                f"{what}: {n_levels} levels need at least {n_levels} distinct values, got {np.unique(x).size}"
            )
        init = _initial_levels_from_sample(x, n_levels)
        levels, history, iters, ok = _kmeans_1d(x, init, pin_zero=False, tol=tol, max_iter=max_iter, progress=progress)
    if not np.all(np.diff(levels) > 0):
        raise CalibrationError(f"{what}: degenerate fit (coinciding levels); use fewer levels")
    codes = quantize(x, levels)
    mse = float(np.mean((x - levels[codes]) ** 2))
    return LloydMaxResult(
        levels=levels,
        mse=mse,
        variance=float(np.mean(x * x)),
        history=history,
        iterations=iters,
        converged=ok,
        symmetric=bool(symmetric),
        source=f"empirical(n={x.size})",
    )
