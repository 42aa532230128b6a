"""PNG plots (matplotlib, Agg backend; written atomically).

* :func:`theory_figure`: the source density with the quantizer's cells, thresholds and levels, next to
  its Lloyd-Max MSE against bits and the Shannon bound 4^-b.
* :func:`mse_vs_bits_figure`: Gaussian Lloyd-Max MSE vs bits against the Shannon bound, with trellis
  (vtq_2) MSE points.
* :func:`samples_figure`: histograms of RMS-normalised K/V samples with their fitted levels.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .atomic import atomic_write_bytes
from .distributions import Distribution
from .lloyd_max import LloydMaxResult, shannon_bound
from .trellis import TrellisEvaluation

PANTER_DITE = math.sqrt(3.0) * math.pi / 2.0  #: high-rate Lloyd-Max MSE / 4^-b for a Gaussian (~2.72)
CELL_COLORS = ("#dbe8f5", "#f3f6fa")
LEVEL_COLOR = "#c0392b"
LINE_COLOR = "#1f4e79"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Render to memory, close the figure, then write the PNG atomically."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=130, metadata={"Software": None})
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _draw_cells(ax: Any, fit: LloydMaxResult, xs: NDArray[np.float64], ys: NDArray[np.float64]) -> None:
    edges = np.concatenate(([-np.inf], fit.thresholds, [np.inf]))
    for i in range(fit.n_levels):
        sel = (xs >= edges[i]) & (xs <= edges[i + 1])
        ax.fill_between(xs[sel], 0, ys[sel], color=CELL_COLORS[i % 2], linewidth=0)
    if fit.n_levels <= 32:
        for t in fit.thresholds:
            ax.axvline(t, color="0.45", linestyle="--", linewidth=0.7, zorder=1)


def _draw_levels(ax: Any, levels: NDArray[np.float64], heights: NDArray[np.float64]) -> None:
    if levels.size <= 32:
        ax.vlines(levels, 0, heights, color=LEVEL_COLOR, linewidth=1.2, zorder=3)
        ax.plot(levels, heights, "o", color=LEVEL_COLOR, markersize=3.5, zorder=4)
    ax.plot(
        levels,
        np.zeros_like(levels),
        "|",
        color=LEVEL_COLOR,
        markersize=10,
        markeredgewidth=1.2,
        zorder=4,
        clip_on=False,
    )


def _quantizer_title(fit: LloydMaxResult, label: str) -> str:
    unit = "bit" if fit.bits == 1 else "bits"
    return (
        f"{label}: {fit.n_levels} levels ({fit.bits:.3g} {unit}), MSE {fit.mse:.4g} "
        f"= {fit.ratio_to_bound:.2f} $\\times\\, 4^{{-b}}$"
    )


def _density_panel(ax: Any, dist: Distribution, fit: LloydMaxResult) -> None:
    lo_s, hi_s = dist.support
    tail = max(abs(float(dist.ppf(5e-4))), abs(float(dist.ppf(1 - 5e-4))))
    span = max(tail, 1.1 * float(np.max(np.abs(fit.levels))))
    lo, hi = max(lo_s, -span), min(hi_s, span)
    inside = fit.thresholds[(fit.thresholds > lo) & (fit.thresholds < hi)]
    xs = np.unique(np.concatenate((np.linspace(lo, hi, 1601), inside)))
    ys = dist.pdf(xs)
    _draw_cells(ax, fit, xs, ys)
    ax.plot(xs, ys, color=LINE_COLOR, linewidth=1.6, label="density", zorder=2)
    _draw_levels(ax, fit.levels, dist.pdf(fit.levels))
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, None)
    ax.set_title(_quantizer_title(fit, dist.name), fontsize=10)
    ax.set_xlabel("x (unit variance)" if abs(dist.variance - 1) < 1e-9 else "x")
    ax.set_ylabel("density")
    ax.plot([], [], "o-", color=LEVEL_COLOR, markersize=3.5, label="levels")
    ax.plot([], [], "--", color="0.45", linewidth=0.7, label="thresholds")
    ax.legend(loc="upper right", fontsize=8, frameon=True, framealpha=0.92, edgecolor="none")


def _mse_panel(
    ax: Any,
    scalar: Mapping[float, float],
    *,
    label: str,
    variance: float = 1.0,
    trellis: Mapping[int, TrellisEvaluation] | None = None,
    highlight: Sequence[float] = (),
) -> None:
    bits = np.array(sorted(scalar), dtype=np.float64)
    fine = np.linspace(min(bits.min(), 1.0), max(bits.max(), 4.0), 200)
    ax.semilogy(
        fine,
        [shannon_bound(b, variance) for b in fine],
        color="k",
        linewidth=1.2,
        label=r"Shannon bound $\sigma^2 4^{-b}$",
    )
    ax.semilogy(
        fine,
        [PANTER_DITE * shannon_bound(b, variance) for b in fine],
        color="0.6",
        linestyle=":",
        linewidth=1.0,
        label=r"Gaussian high-rate scalar limit $2.72\,\sigma^2 4^{-b}$",
    )
    mses = np.array([scalar[b] for b in sorted(scalar)])
    ax.semilogy(bits, mses, "o-", color=LINE_COLOR, markersize=5, label=f"Lloyd-Max ({label})")
    for b, m in zip(bits, mses, strict=True):
        if float(b) in {float(h) for h in highlight} or len(bits) <= 8:
            ratio = m / shannon_bound(b, variance)
            ax.annotate(
                f"{m:.4g}\n({ratio:.2f}x)",
                (b, m),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=7,
                color=LINE_COLOR,
            )
    if trellis:
        ks = sorted(trellis)
        refit = [trellis[k].mse_refit for k in ks]
        known = [trellis[k].mse_known_sigma for k in ks]
        ax.semilogy(
            ks,
            known,
            "s",
            color="#e67e22",
            markersize=6,
            markerfacecolor="none",
            label=r"trellis vtq_2, known $\sigma$",
        )
        ax.semilogy(ks, refit, "D", color="#27ae60", markersize=5, label="trellis vtq_2, block RMS + LS refit")
        for k, m in zip(ks, refit, strict=True):
            ax.annotate(
                f"{m:.4g}\n({m / shannon_bound(k):.2f}x)",
                (k, m),
                textcoords="offset points",
                xytext=(-8, -22),
                fontsize=7,
                color="#27ae60",
                ha="right",
            )
    ax.set_xlabel("bits per sample b")
    ax.set_ylabel("MSE")
    top = int(max(bits.max(), 4))
    ax.set_xticks(np.arange(1, top + 1))
    ax.set_xlim(0.7, top + 1.0)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="lower left", frameon=False)


def theory_figure(
    dist: Distribution,
    fits: Sequence[LloydMaxResult],
    curve: Mapping[float, float],
    path: str | os.PathLike[str],
) -> None:
    """Density panels (one per fit) on the left, MSE vs bits of ``dist`` (``curve``) on the right."""
    plt = _pyplot()
    n = len(fits)
    fig = plt.figure(figsize=(13, max(3.4 * n, 5.0)), layout="constrained")
    grid = fig.add_gridspec(n, 2, width_ratios=(1.35, 1))
    for i, fit in enumerate(fits):
        _density_panel(fig.add_subplot(grid[i, 0]), dist, fit)
    ax = fig.add_subplot(grid[:, 1])
    _mse_panel(ax, curve, label=dist.name, variance=dist.variance, highlight=[f.bits for f in fits])
    ax.set_title(f"Lloyd-Max MSE vs bits: {dist.name}", fontsize=10)
    save_figure(fig, path)


def mse_vs_bits_figure(
    scalar: Mapping[float, float],
    trellis: Mapping[int, TrellisEvaluation],
    path: str | os.PathLike[str],
    *,
    title: str = "N(0,1): scalar Lloyd-Max and trellis vs the Shannon bound",
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), layout="constrained")
    _mse_panel(ax, scalar, label="gaussian", trellis=trellis)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def samples_figure(
    samples: Mapping[str, NDArray[np.float64]],
    fits: Mapping[str, LloydMaxResult],
    path: str | os.PathLike[str],
) -> None:
    """One histogram panel per fitted global entry (e.g. ktq2 on the K samples), N(0,1) for reference."""
    plt = _pyplot()
    names = sorted(n for n in fits if "@" not in n)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 2.8 * len(names)), layout="constrained", squeeze=False)
    xs = np.linspace(-4.5, 4.5, 600)
    for ax, name in zip(axes[:, 0], names, strict=True):
        fit = fits[name]
        data = samples["k" if name.startswith("ktq") else "v"]
        ax.hist(np.clip(data.ravel(), -4.5, 4.5), bins=180, density=True, color="#c9d9ea", label="samples")
        ax.plot(xs, np.exp(-0.5 * xs * xs) / math.sqrt(2 * math.pi), color="0.4", linewidth=1, label="N(0,1)")
        for t in fit.thresholds:
            ax.axvline(t, color="0.45", linestyle="--", linewidth=0.6)
        _draw_levels(ax, fit.levels, np.full_like(fit.levels, 0.02))
        ax.set_xlim(-4.5, 4.5)
        ax.set_title(_quantizer_title(fit, name), fontsize=10)
        ax.legend(fontsize=8, frameon=False)
    save_figure(fig, path)
