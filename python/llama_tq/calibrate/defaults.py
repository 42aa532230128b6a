"""The default codebook compiled into the build (src/ggml-tq/tq-codebooks-default.{tqcb,h}).

* ``ktqB`` and ``vtqB_1`` (B = 2, 3, 4): Lloyd-Max levels of N(0, 1) (exact integrals, symmetric).
* ``trellisK`` (K = 2, 3, 4): Gaussian-quantile tables on a seeded permutation, refined by
  trellis-coded-quantisation training on N(0, 1) blocks (:func:`~.trellis.train_trellis`).

Everything is seeded, so the same tool version reproduces the same file and header.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .codebook_file import Codebook, format_float
from .distributions import Gaussian
from .lloyd_max import DEFAULT_TOL, LloydMaxResult, lloyd_max
from .trellis import (
    DEFAULT_EVAL_SEED,
    DEFAULT_TABLE_SEED,
    DEFAULT_TRAIN_SEED,
    TRELLIS_K,
    TrellisEvaluation,
    TrellisSpec,
    TrellisTrainResult,
    evaluate_trellis,
    train_trellis,
)

DEFAULT_BASENAME = "tq-codebooks-default"
LEVEL_BITS = (2, 3, 4)
DEFAULT_TRELLIS_ITERATIONS = 10
DEFAULT_TRELLIS_BLOCKS = 2048
DEFAULT_EVAL_BLOCKS = 512
REGENERATE_HINT = "tq-calibrate default -o src/ggml-tq"


@dataclass
class DefaultBuild:
    codebook: Codebook
    levels: dict[int, LloydMaxResult] = field(default_factory=dict)
    trellis: dict[int, TrellisTrainResult] = field(default_factory=dict)
    evaluations: dict[int, TrellisEvaluation] = field(default_factory=dict)


def add_gaussian_levels(cb: Codebook, bits: Sequence[int] = LEVEL_BITS) -> dict[int, LloydMaxResult]:
    """Add ``ktqB`` and ``vtqB_1`` = Lloyd-Max levels of N(0, 1) for each B."""
    cb.set_param("levels.source", "gaussian")
    cb.set_param("levels.method", "lloyd-max-exact")
    cb.set_param("levels.tol", f"{DEFAULT_TOL:g}")
    fits = {}
    for b in bits:
        fit = lloyd_max(Gaussian(), 1 << b)
        fits[b] = fit
        meta = {"source": "gaussian", "mse": format_float(fit.mse), "bound": format_float(fit.shannon_bound)}
        cb.add(f"ktq{b}", fit.levels, meta)
        cb.add(f"vtq{b}_1", fit.levels, meta)
    return fits


def set_trellis_params(
    cb: Codebook, *, iterations: int, n_blocks: int, seed: int, table_seed: int, eval_blocks: int
) -> None:
    cb.set_param("trellis.init", "gaussian-quantiles-permuted")
    cb.set_param("trellis.table_seed", table_seed)
    cb.set_param("trellis.train_seed", seed)
    cb.set_param("trellis.train_blocks", n_blocks)
    cb.set_param("trellis.iterations", iterations)
    cb.set_param("trellis.tail_biting", "two-pass")
    cb.set_param("trellis.eval_seed", DEFAULT_EVAL_SEED)
    cb.set_param("trellis.eval_blocks", eval_blocks)


def add_trellis_entry(cb: Codebook, res: TrellisTrainResult, ev: TrellisEvaluation) -> None:
    """Add ``trellisK`` with its training and held-out MSE as metadata."""
    k = res.spec.k
    cb.add(
        f"trellis{k}",
        res.table,
        {
            "L": str(res.spec.L),
            "train_mse": format_float(float(res.history[res.best_iteration])),
            "mse_refit": format_float(ev.mse_refit),
            "mse_known_sigma": format_float(ev.mse_known_sigma),
            "bound": format_float(4.0**-k),
        },
    )


def train_and_evaluate(
    spec: TrellisSpec,
    *,
    iterations: int = DEFAULT_TRELLIS_ITERATIONS,
    n_blocks: int = DEFAULT_TRELLIS_BLOCKS,
    seed: int = DEFAULT_TRAIN_SEED,
    table_seed: int = DEFAULT_TABLE_SEED,
    eval_blocks: int = DEFAULT_EVAL_BLOCKS,
    progress: bool = False,
) -> tuple[TrellisTrainResult, TrellisEvaluation]:
    """Train a table on N(0, 1) blocks, then measure it on ``eval_blocks`` fresh ones."""
    res = train_trellis(
        spec,
        iterations=iterations,
        n_blocks=n_blocks,
        seed=seed,
        table_seed=table_seed,
        progress=f"trellis{spec.k}" if progress else False,
    )
    return res, evaluate_trellis(res.table, spec, n_blocks=eval_blocks)


def build_default(
    *,
    iterations: int = DEFAULT_TRELLIS_ITERATIONS,
    n_blocks: int = DEFAULT_TRELLIS_BLOCKS,
    seed: int = DEFAULT_TRAIN_SEED,
    table_seed: int = DEFAULT_TABLE_SEED,
    eval_blocks: int = DEFAULT_EVAL_BLOCKS,
    progress: bool = False,
) -> DefaultBuild:
    cb = Codebook()
    out = DefaultBuild(cb)
    out.levels = add_gaussian_levels(cb)
    set_trellis_params(
        cb,
        iterations=iterations,
        n_blocks=n_blocks,
        seed=seed,
        table_seed=table_seed,
        eval_blocks=eval_blocks,
    )
    for k in TRELLIS_K:
        res, ev = train_and_evaluate(
            TrellisSpec(k),
            iterations=iterations,
            n_blocks=n_blocks,
            seed=seed,
            table_seed=table_seed,
            eval_blocks=eval_blocks,
            progress=progress,
        )
        add_trellis_entry(cb, res, ev)
        out.trellis[k], out.evaluations[k] = res, ev
    return out
