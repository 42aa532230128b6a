"""Source distributions for scalar quantizer design.

Each distribution exposes *partial moments* ``M_n(a, b) = ∫_a^b x^n f(x) dx`` for n = 0, 1, 2, which is
all Lloyd-Max needs: the centroid of a cell is ``M_1 / M_0`` and its squared error about a level ``c``
is ``M_2 - 2 c M_1 + c^2 M_0``. For the analytic distributions these are closed forms in terms of
scipy.special (exact integration, no quadrature error); :class:`ScipyDistribution` wraps any frozen
``scipy.stats`` continuous distribution and integrates with ``scipy.integrate.quad``.

Symmetric distributions are described by their upper-tail moments ``H_n(t) = ∫_t^∞ x^n f(x) dx``
(t >= 0), from which partial moments over any interval follow by symmetry without cancellation near 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import integrate, special, stats

from .errors import CalibrationError

FloatArray = NDArray[np.float64]
Moments = tuple[FloatArray, FloatArray, FloatArray]

#: Dimensions for which the rotated-coordinate (Beta) marginal is offered; head dims in practice.
BETA_DIM_RANGE = (2, 65536)


class Distribution(ABC):
    """A 1-D source distribution with exact partial moments."""

    #: short machine-readable description, used in provenance lines (no spaces).
    name: str
    #: True if f(x) = f(-x); Lloyd-Max then enforces symmetric levels by default.
    symmetric: bool

    @property
    @abstractmethod
    def frozen(self) -> Any:
        """The equivalent frozen ``scipy.stats`` distribution (pdf, cdf, ppf, rvs)."""

    @property
    def support(self) -> tuple[float, float]:
        lo, hi = self.frozen.support()
        return float(lo), float(hi)

    @property
    def variance(self) -> float:
        return float(self.frozen.var())

    def pdf(self, x: ArrayLike) -> FloatArray:
        return np.asarray(self.frozen.pdf(x), dtype=np.float64)

    def ppf(self, q: ArrayLike) -> FloatArray:
        return np.asarray(self.frozen.ppf(q), dtype=np.float64)

    def sample(self, n: int, rng: np.random.Generator) -> FloatArray:
        return np.asarray(self.frozen.rvs(size=n, random_state=rng), dtype=np.float64)

    @abstractmethod
    def partial_moments(self, a: ArrayLike, b: ArrayLike) -> Moments:
        """``(M0, M1, M2)`` with ``M_n = ∫_a^b x^n f(x) dx``, elementwise over broadcast ``a <= b``."""


class SymmetricDistribution(Distribution):
    """A distribution symmetric about 0, defined through its upper-tail moments."""

    symmetric = True

    @abstractmethod
    def upper_tail_moments(self, t: FloatArray) -> Moments:
        """``(H0, H1, H2)`` with ``H_n(t) = ∫_t^∞ x^n f(x) dx`` for ``t >= 0`` (elementwise)."""

    def partial_moments(self, a: ArrayLike, b: ArrayLike) -> Moments:
        a_arr, b_arr = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        # Split [a, b] into a negative part [a, min(b, 0)] and a positive part [max(a, 0), b]; the
        # negative part is the mirror image of [-min(b, 0), -a].
        pos_lo = np.maximum(a_arr, 0.0)
        pos_hi = np.maximum(b_arr, 0.0)
        neg_lo = np.maximum(-b_arr, 0.0)  # mirror of the negative part: [neg_lo, neg_hi] on t >= 0
        neg_hi = np.maximum(-a_arr, 0.0)
        hp_lo, hp_hi = self.upper_tail_moments(pos_lo), self.upper_tail_moments(pos_hi)
        hn_lo, hn_hi = self.upper_tail_moments(neg_lo), self.upper_tail_moments(neg_hi)
        out = []
        for n in range(3):
            pos = hp_lo[n] - hp_hi[n]
            neg = hn_lo[n] - hn_hi[n]
            out.append(pos + (-1.0) ** n * neg)
        return out[0], out[1], out[2]


@dataclass(frozen=True)
class Gaussian(SymmetricDistribution):
    """N(0, sigma^2)."""

    sigma: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise CalibrationError(f"gaussian sigma must be a positive finite number, got {self.sigma}")

    @property
    def name(self) -> str:  # type: ignore[override]
        return "gaussian" if self.sigma == 1.0 else f"gaussian(sigma={self.sigma:.9g})"

    @property
    def frozen(self) -> Any:
        return stats.norm(scale=self.sigma)

    def upper_tail_moments(self, t: FloatArray) -> Moments:
        s = self.sigma
        z = np.asarray(t, dtype=np.float64) / s
        h0 = special.ndtr(-z)
        phi = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        z_phi = np.where(np.isinf(z), 0.0, z) * phi
        return h0, s * phi, s * s * (h0 + z_phi)


@dataclass(frozen=True)
class Laplace(SymmetricDistribution):
    """Laplace distribution with the given variance (scale b = sqrt(variance / 2))."""

    var: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.var) and self.var > 0):
            raise CalibrationError(f"laplace variance must be a positive finite number, got {self.var}")

    @property
    def scale(self) -> float:
        return math.sqrt(self.var / 2.0)

    @property
    def name(self) -> str:  # type: ignore[override]
        return "laplace" if self.var == 1.0 else f"laplace(var={self.var:.9g})"

    @property
    def frozen(self) -> Any:
        return stats.laplace(scale=self.scale)

    def upper_tail_moments(self, t: FloatArray) -> Moments:
        # ∫_t^∞ x^n e^{-x/b} / (2b) dx = b^n n! Q(n+1, t/b) / 2, Q the regularized upper gamma.
        b = self.scale
        u = np.asarray(t, dtype=np.float64) / b
        return (
            0.5 * special.gammaincc(1.0, u),
            0.5 * b * special.gammaincc(2.0, u),
            0.5 * 2.0 * b * b * special.gammaincc(3.0, u),
        )


@dataclass(frozen=True)
class RotatedCoordinate(SymmetricDistribution):
    """One coordinate of a uniformly random unit vector in R^d.

    Its exact marginal is Beta((d-1)/2, (d-1)/2) rescaled from [0, 1] to [-1, 1] (variance 1/d); with
    ``unit_variance`` it is further multiplied by sqrt(d), which converges to N(0, 1) as d grows.
    Density of the unscaled coordinate: f(x) = (1 - x^2)^(alpha - 1) / B(1/2, alpha), alpha = (d-1)/2.
    """

    d: int
    unit_variance: bool = True
    _alpha: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lo, hi = BETA_DIM_RANGE
        if not (isinstance(self.d, int | np.integer) and lo <= self.d <= hi):
            raise CalibrationError(f"dimension d must be an integer in [{lo}, {hi}], got {self.d!r}")
        object.__setattr__(self, "_alpha", (self.d - 1) / 2.0)

    @property
    def scale(self) -> float:
        return math.sqrt(self.d) if self.unit_variance else 1.0

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"beta(d={self.d},{'unit-variance' if self.unit_variance else 'unit-norm'})"

    @property
    def frozen(self) -> Any:
        a = self._alpha
        return stats.beta(a, a, loc=-self.scale, scale=2.0 * self.scale)

    def upper_tail_moments(self, t: FloatArray) -> Moments:
        # With w = x^2: ∫_u^1 x^n (1-x^2)^(a-1) dx = B((n+1)/2, a) I_{1-u^2}(a, (n+1)/2) / 2.
        a = self._alpha
        s = self.scale
        u = np.clip(np.asarray(t, dtype=np.float64) / s, 0.0, 1.0)
        one_minus_u2 = (1.0 - u) * (1.0 + u)
        log_norm = special.betaln(0.5, a)
        out = []
        for n in range(3):
            h = 0.5 * special.betainc(a, (n + 1) / 2.0, one_minus_u2)
            h = h * math.exp(special.betaln((n + 1) / 2.0, a) - log_norm)
            out.append(h * s**n)
        return out[0], out[1], out[2]


class ScipyDistribution(Distribution):
    """Any frozen ``scipy.stats`` continuous distribution; partial moments by ``scipy.integrate.quad``.

    Slower than the closed forms (one quadrature per cell and moment), meant for asymmetric or unusual
    sources and as a cross-check of the closed forms.
    """

    def __init__(self, frozen: Any, name: str, *, symmetric: bool = False) -> None:
        self._frozen = frozen
        self.name = name
        self.symmetric = symmetric

    @property
    def frozen(self) -> Any:
        return self._frozen

    def partial_moments(self, a: ArrayLike, b: ArrayLike) -> Moments:
        a_arr, b_arr = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        lo_s, hi_s = self.support
        out = np.zeros((3, *a_arr.shape))
        pdf = self._frozen.pdf

        def integrand(x: float) -> FloatArray:
            return np.array([1.0, x, x * x]) * pdf(x)

        for idx in np.ndindex(a_arr.shape):
            lo, hi = max(float(a_arr[idx]), lo_s), min(float(b_arr[idx]), hi_s)
            if lo < hi:
                val, _err = integrate.quad_vec(integrand, lo, hi, epsabs=1e-14, epsrel=1e-12)
                out[(slice(None), *idx)] = val
        return out[0], out[1], out[2]


#: Distribution names accepted by :func:`make_distribution` and the CLI.
DISTRIBUTION_NAMES = ("gaussian", "beta", "laplace")


def make_distribution(name: str, *, d: int | None = None, unit_variance: bool = True) -> Distribution:
    """Build a unit-variance (or, for ``beta`` without ``unit_variance``, unit-norm) source by name."""
    if name == "gaussian":
        return Gaussian()
    if name == "laplace":
        return Laplace()
    if name == "beta":
        if d is None:
            raise CalibrationError("distribution 'beta' needs the vector dimension d")
        return RotatedCoordinate(int(d), unit_variance=unit_variance)
    raise CalibrationError(f"unknown distribution {name!r}; choose one of {', '.join(DISTRIBUTION_NAMES)}")
