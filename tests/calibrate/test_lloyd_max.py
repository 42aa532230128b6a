"""Lloyd-Max on analytic sources: reference values, convergence, cross-checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from llama_tq.calibrate.distributions import (
    Gaussian,
    Laplace,
    RotatedCoordinate,
    ScipyDistribution,
    make_distribution,
)
from llama_tq.calibrate.errors import CalibrationError
from llama_tq.calibrate.lloyd_max import (
    lloyd_max,
    lloyd_max_empirical,
    mse_of_levels,
    quantize,
    shannon_bound,
    thresholds_of,
)

# Max (1960), Table: minimum mean squared error of the optimum quantizer for N(0, 1).
MAX_1960 = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}


@pytest.mark.parametrize("bits", sorted(MAX_1960))
def test_gaussian_mse_reproduces_max_1960(bits: int) -> None:
    fit = lloyd_max(Gaussian(), 1 << bits)
    assert fit.converged
    assert fit.mse == pytest.approx(MAX_1960[bits], rel=1e-3)
    assert fit.shannon_bound == 4.0**-bits
    assert fit.ratio_to_bound == pytest.approx(fit.mse / 4.0**-bits)


def test_gaussian_levels_match_published_values() -> None:
    np.testing.assert_allclose(lloyd_max(Gaussian(), 2).levels, [-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)])
    np.testing.assert_allclose(lloyd_max(Gaussian(), 4).levels, [-1.510, -0.4528, 0.4528, 1.510], atol=5e-4)
    np.testing.assert_allclose(lloyd_max(Gaussian(), 8).levels[4:], [0.2451, 0.7560, 1.344, 2.152], atol=5e-4)


def test_beta_codebooks_converge_to_gaussian() -> None:
    dims = [32, 64, 128, 256]
    for bits in (2, 3, 4):
        gauss = lloyd_max(Gaussian(), 1 << bits)
        errors = []
        for d in dims:
            fit = lloyd_max(RotatedCoordinate(d), 1 << bits)
            assert fit.variance == pytest.approx(1.0, rel=1e-12)
            errors.append(float(np.max(np.abs(fit.levels - gauss.levels))))
            # the rescaled Beta is lighter-tailed than N(0,1), hence slightly easier to quantize
            assert fit.mse < gauss.mse
        assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
        assert errors[-1] < 0.01 * bits


def test_beta_unit_norm_is_the_unit_variance_codebook_scaled() -> None:
    d = 96
    unit = lloyd_max(RotatedCoordinate(d, unit_variance=True), 8)
    norm = lloyd_max(RotatedCoordinate(d, unit_variance=False), 8)
    np.testing.assert_allclose(norm.levels * math.sqrt(d), unit.levels, rtol=1e-9)
    assert norm.mse * d == pytest.approx(unit.mse, rel=1e-9)
    assert norm.variance == pytest.approx(1.0 / d, rel=1e-12)


def test_laplace_known_values() -> None:
    one = lloyd_max(Laplace(), 2)
    np.testing.assert_allclose(one.levels, [-1 / math.sqrt(2), 1 / math.sqrt(2)], rtol=1e-12)
    assert one.mse == pytest.approx(0.5, rel=1e-12)
    # Jayant & Noll (1984), Table 4.3: SNR of the Lloyd-Max quantizer for a Laplacian, in dB
    for bits, snr_db in ((2, 7.54), (3, 12.64), (4, 18.13)):
        assert -10 * math.log10(lloyd_max(Laplace(), 1 << bits).mse) == pytest.approx(snr_db, abs=0.01)


@pytest.mark.parametrize("dist", [Gaussian(), Laplace(), RotatedCoordinate(40), RotatedCoordinate(40, False)])
def test_closed_form_partial_moments_match_quadrature(dist) -> None:  # type: ignore[no-untyped-def]
    ref = ScipyDistribution(dist.frozen, "quad")
    s = math.sqrt(dist.variance)
    a = np.array([-np.inf, -3.0, -0.5, 0.0, 0.2, 1.0, -2.0]) * s
    b = np.array([-1.0, -2.0, 0.7, 0.3, 0.4, np.inf, 2.0]) * s
    for got, want in zip(dist.partial_moments(a, b), ref.partial_moments(a, b), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-13)


def test_asymmetric_source_via_quadrature() -> None:
    dist = ScipyDistribution(stats.skewnorm(4.0), "skewnorm(4)")
    fit = lloyd_max(dist, 3, polish_after=5)  # quadrature is slow: jump to the fixed point early
    assert not fit.symmetric and fit.converged
    assert np.all(np.diff(fit.levels) > 0)
    assert not np.allclose(fit.levels, -fit.levels[::-1], atol=1e-3)
    assert np.all(np.diff(fit.history) <= 1e-12)
    # centroid condition holds at the solution
    edges = np.concatenate(([-np.inf], fit.thresholds, [np.inf]))
    m0, m1, _ = dist.partial_moments(edges[:-1], edges[1:])
    np.testing.assert_allclose(m1 / m0, fit.levels, atol=1e-7)
    with pytest.raises(CalibrationError, match="asymmetric"):
        lloyd_max(dist, 3, symmetric=True)


@pytest.mark.parametrize("n", [2, 3, 5, 7, 16, 31])
def test_free_fit_of_symmetric_source_agrees_with_folded_fit(n: int) -> None:
    sym = lloyd_max(Gaussian(), n)
    free = lloyd_max(Gaussian(), n, symmetric=False)
    assert sym.symmetric and not free.symmetric
    np.testing.assert_array_equal(sym.levels, -sym.levels[::-1])
    np.testing.assert_allclose(free.levels, sym.levels, atol=1e-8)
    assert free.mse == pytest.approx(sym.mse, rel=1e-9)
    if n % 2:
        assert sym.levels[n // 2] == 0.0


def test_root_finder_polish_reaches_the_plain_lloyd_fixed_point() -> None:
    plain = lloyd_max(Gaussian(), 32, polish_after=None)
    polished = lloyd_max(Gaussian(), 32)
    assert plain.converged and polished.converged
    assert polished.iterations < plain.iterations
    np.testing.assert_allclose(polished.levels, plain.levels, atol=1e-9)


def test_many_levels_fast_and_near_panter_dite() -> None:
    fit = lloyd_max(Gaussian(), 256)
    assert fit.converged
    assert fit.ratio_to_bound == pytest.approx(math.sqrt(3) * math.pi / 2, rel=0.02)


def test_history_is_non_increasing_and_ends_at_reported_mse() -> None:
    fit = lloyd_max(Laplace(), 12, polish_after=None, max_iter=500)
    assert np.all(np.diff(fit.history) <= 1e-15)
    assert fit.history[-1] == fit.mse
    assert fit.mse == pytest.approx(mse_of_levels(Laplace(), fit.levels), rel=1e-12)


@pytest.mark.parametrize("bad", [1, 257, 0, -4, 2.5, True, "4"])
def test_bad_level_counts_are_rejected(bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CalibrationError, match="levels"):
        lloyd_max(Gaussian(), bad)


def test_bad_distribution_parameters() -> None:
    with pytest.raises(CalibrationError):
        make_distribution("cauchy")
    with pytest.raises(CalibrationError):
        make_distribution("beta")
    with pytest.raises(CalibrationError):
        RotatedCoordinate(1)
    with pytest.raises(CalibrationError):
        Gaussian(float("nan"))


def test_shannon_bound() -> None:
    assert shannon_bound(2) == 0.0625
    assert shannon_bound(3, 4.0) == 4.0 * 4.0**-3


def test_quantize_is_nearest_level() -> None:
    levels = np.array([-1.5, -0.5, 0.5, 1.5])
    x = np.linspace(-3, 3, 1001)
    codes = quantize(x, levels)
    nearest = np.argmin(np.abs(x[:, None] - levels[None]), axis=1)
    ties = np.isin(x, thresholds_of(levels))
    np.testing.assert_array_equal(codes[~ties], nearest[~ties])


def test_empirical_fit_approaches_the_analytic_one() -> None:
    x = np.random.default_rng(1).standard_normal(200_000)
    emp = lloyd_max_empirical(x, 4)
    ref = lloyd_max(Gaussian(), 4)
    assert not emp.symmetric
    np.testing.assert_allclose(emp.levels, ref.levels, atol=0.03)
    assert emp.mse == pytest.approx(ref.mse, rel=0.03)
    sym = lloyd_max_empirical(x, 4, symmetric=True)
    np.testing.assert_array_equal(sym.levels, -sym.levels[::-1])


def test_empirical_bad_input() -> None:
    with pytest.raises(CalibrationError, match="empty"):
        lloyd_max_empirical(np.array([]), 4)
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        lloyd_max_empirical(np.array([0.0, 1.0, np.nan, 2.0, 3.0]), 2)
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        lloyd_max_empirical(np.array([0.0, 1.0, np.inf, 2.0, 3.0]), 2)
    with pytest.raises(CalibrationError, match="distinct"):
        lloyd_max_empirical(np.array([1.0, 1.0, 2.0, 2.0]), 4)
    with pytest.raises(CalibrationError, match="numeric"):
        lloyd_max_empirical(np.array(["a", "b"]), 2)
