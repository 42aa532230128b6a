"""Property-based tests (hypothesis) of the Lloyd-Max quantizers."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_tq.calibrate.distributions import Distribution, Gaussian, Laplace, RotatedCoordinate
from llama_tq.calibrate.lloyd_max import lloyd_max, lloyd_max_empirical, quantize

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

distributions = st.one_of(
    st.just(Gaussian()),
    st.just(Laplace()),
    st.integers(32, 256).map(RotatedCoordinate),
    st.floats(0.2, 5.0).map(Gaussian),
    st.floats(0.2, 5.0).map(Laplace),
)
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=64)
samples = st.lists(finite, min_size=8, max_size=300).map(np.array)


@SETTINGS
@given(dist=distributions, n=st.integers(2, 64), symmetric=st.sampled_from([None, False]))
def test_analytic_levels_sorted_and_history_monotone(dist: Distribution, n: int, symmetric: bool | None) -> None:
    fit = lloyd_max(dist, n, symmetric=symmetric, polish_after=None, max_iter=300)
    assert fit.levels.shape == (n,)
    assert np.all(np.diff(fit.levels) > 0)
    tol = 1e-12 * dist.variance
    assert np.all(np.diff(fit.history) <= tol), np.diff(fit.history).max()
    assert fit.history[-1] == fit.mse
    if symmetric is None:  # symmetric source: symmetric levels, exactly
        np.testing.assert_array_equal(fit.levels, -fit.levels[::-1])


@SETTINGS
@given(data=samples, n=st.integers(2, 8), mirror=st.booleans())
def test_empirical_sorted_monotone_and_symmetric_for_symmetric_input(data: np.ndarray, n: int, mirror: bool) -> None:
    x = np.concatenate((data, -data)) if mirror else data
    distinct = np.unique(np.abs(x)).size if mirror else np.unique(x).size
    if distinct < n:
        return
    fit = lloyd_max_empirical(x, n, max_iter=300)
    assert np.all(np.diff(fit.levels) > 0)
    scale = 1.0 + float(np.mean(x * x))
    assert np.all(np.diff(fit.history) <= 1e-10 * scale), np.diff(fit.history).max()
    # reported MSE is the exact MSE on the data, and agrees with the iteration's bookkeeping
    assert math.isclose(fit.mse, float(np.mean((x - fit.levels[quantize(x, fit.levels)]) ** 2)), rel_tol=1e-12)
    assert math.isclose(fit.history[-1], fit.mse, rel_tol=1e-7, abs_tol=1e-9 * scale)
    if mirror:
        assert fit.symmetric
        np.testing.assert_array_equal(fit.levels, -fit.levels[::-1])


@SETTINGS
@given(dist=distributions, n=st.integers(2, 32), seed=st.integers(0, 2**32 - 1))
def test_mse_on_fresh_samples_matches_computed_mse(dist: Distribution, n: int, seed: int) -> None:
    fit = lloyd_max(dist, n)
    x = dist.sample(100_000, np.random.default_rng(seed))
    err2 = (x - fit.levels[quantize(x, fit.levels)]) ** 2
    stderr = float(np.std(err2)) / math.sqrt(x.size)
    assert abs(float(np.mean(err2)) - fit.mse) <= 5.0 * stderr + 1e-12
