"""A candidate K format that a ggml type could carry: query-energy folding plus a table of bit profiles.

pair-N of k_weighted_proxy.py needs to know which layer and KV head a key belongs to (its bits and codebooks are
fitted per head); a ggml type sees only 64 values. This design moves what is per head out of the type:

- folding: each RoPE pair j of a head's keys is multiplied by a_j = sqrt(λ_j / mean λ), λ_j the queries' mean
  energy in the pair, and the queries by 1 / a_j (q·k unchanged; a scalar per pair commutes with RoPE, so a
  cache shift still works). After it the queries weigh every pair alike, and plain MSE on the folded keys is the
  logit error: the quantizer no longer needs to know the queries.
- a table of P profiles (bits and scale per pair) shared by every layer and head, fitted on calibration keys; a
  64-value block stores its profile's index (ceil(log2 P) bits) and codes; the encoder tries every profile and
  keeps the one with the least squared error, so a block finds a fitting profile without knowing its head.
- one shape codebook per bit count for all pairs (Lloyd on the folded keys' pair values at random angles,
  divided by their pair's RMS).

With P = the number of calibration heads, each head's own greedy allocation is a profile; with fewer, profiles are
the k-means centres of the heads' log pair RMS (scipy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from llama_tq.calibrate.k_means import RopeParams, rope
from llama_tq.calibrate.lloyd_max import dequantize, lloyd_max_empirical, quantize

F64 = NDArray[np.float64]
MAX_BITS = 6
SHAPE_SAMPLES = 2000  # per head, for the shape codebooks


def fold_scales(q: F64, rp: RopeParams) -> F64:
    """a [d] (equal within a pair) from queries q [n, d]: sqrt of the pair's mean query energy over the mean."""
    i0, i1 = rp.pairs()
    lam = (q[:, i0] ** 2 + q[:, i1] ** 2).mean(axis=0) / 2
    a_pair = np.sqrt(lam / lam.mean())
    a = np.ones(q.shape[1])
    a[i0], a[i1] = a_pair, a_pair
    return a


def pair_rms(y: F64, rp: RopeParams) -> F64:
    """RMS of each pair's two values (invariant under RoPE), [d / 2]."""
    i0, i1 = rp.pairs()
    return np.sqrt((y[:, i0] ** 2 + y[:, i1] ** 2).mean(axis=0) / 2)


def shape_sample(y: F64, rp: RopeParams, rng: np.random.Generator, n: int = SHAPE_SAMPLES) -> F64:
    """Folded keys y [n, d] turned by random angles, each pair divided by its RMS: samples of the pair shape."""
    turned = rope(y[:, None, :], rng.uniform(0.0, 2.0 * np.pi, len(y)) / rp.angles(np.ones(1))[0, -1], rp)[:, 0]
    i0, i1 = rp.pairs()
    s = pair_rms(y, rp)
    z = np.concatenate([turned[:, i0] / s, turned[:, i1] / s]).ravel()
    return rng.choice(z, min(n, z.size), replace=False)


@dataclass
class ProfileTable:
    bits: NDArray[np.intp]  # [P, d]
    scale: F64  # [P, d]
    levels: list[F64]  # shape codebook by bit count (index 0: nothing stored, value 0)

    @property
    def index_bits(self) -> int:
        return int(np.ceil(np.log2(len(self.bits)))) if len(self.bits) > 1 else 0

    def _quantize_with(self, y: F64, p: int) -> F64:
        out = np.zeros_like(y)
        for b in range(1, MAX_BITS + 1):
            m = self.bits[p] == b
            if m.any():
                out[:, m] = dequantize(quantize(y[:, m] / self.scale[p, m], self.levels[b]), self.levels[b]) \
                    * self.scale[p, m]
        return out

    def __call__(self, y: F64) -> tuple[F64, NDArray[np.intp]]:
        """Each row of y [n, d] through its best profile: (ŷ, profile index per row)."""
        best = self._quantize_with(y, 0)
        err = ((best - y) ** 2).sum(axis=1)
        idx = np.zeros(len(y), dtype=np.intp)
        for p in range(1, len(self.bits)):
            yq = self._quantize_with(y, p)
            e = ((yq - y) ** 2).sum(axis=1)
            better = e < err
            best[better], err[better], idx[better] = yq[better], e[better], p
        return best, idx


def shape_levels(samples: F64) -> tuple[list[F64], F64]:
    """Lloyd levels for 1..MAX_BITS bits on the pooled shape samples, and their MSE for 0..MAX_BITS bits."""
    levels: list[F64] = [np.zeros(1)]
    mse = [float(np.mean(samples**2))]
    for b in range(1, MAX_BITS + 1):
        lv = lloyd_max_empirical(samples, 2**b, symmetric=False, tol=1e-9, max_iter=300).levels
        levels.append(lv)
        mse.append(float(np.mean((dequantize(quantize(samples, lv), lv) - samples) ** 2)))
    return levels, np.asarray(mse)


def fit_tables(rms: list[F64], samples: list[F64], widths: tuple[int, ...], n_profiles: int, rp: RopeParams,
               seed: int = 0) -> dict[int, ProfileTable]:
    """One table per width (64·N + 16 bits per block, the index included) from every calibration head's pair RMS
    [d / 2] and shape samples; n_profiles 0 = one profile per head."""
    from k_weighted_proxy import allocate
    from scipy.cluster.vq import kmeans2

    levels, mse = shape_levels(np.concatenate(samples))
    heads = np.log(np.stack(rms))
    if n_profiles and n_profiles < len(heads):
        centres, _ = kmeans2(heads, n_profiles, minit="++", seed=seed)
    else:
        centres = heads
    sig = np.exp(centres)  # [P, d / 2]
    i0, i1 = rp.pairs()
    d = 2 * sig.shape[1]
    tables = {}
    for w in widths:
        table = ProfileTable(np.zeros((len(sig), d), dtype=np.intp), np.ones((len(sig), d)), levels)
        budget = d * w + 16 - table.index_bits
        for p, s in enumerate(sig):
            pb = allocate(np.repeat(mse[:, None], len(s), axis=1), s**2, budget, 2)
            table.bits[p, i0] = table.bits[p, i1] = pb
            table.scale[p, i0] = table.scale[p, i1] = s
        tables[w] = table
    return tables
