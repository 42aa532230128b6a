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

The runtime form of this design is the ktqp cache type (llama_tq.calibrate.k_profiles, `tq-calibrate
k-profiles`); this file keeps the benchmark's own fitting (pair RMS per head, clustered tables). With P = the
number of calibration heads, each head's own greedy allocation is a profile; with fewer, profiles are
the k-means centres of the heads' log pair RMS (scipy).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from llama_tq.calibrate.k_means import RopeParams
from llama_tq.calibrate.k_profiles import (  # noqa: F401  (fold_scales, MAX_BITS: for the scripts that use this)
    MAX_BITS,
    ProfileTable,
    allocate,
    fit_levels,
    fold_scales,
    turn_randomly,
)

F64 = NDArray[np.float64]
SHAPE_SAMPLES = 2000  # per head, for the shape codebooks


def pair_rms(y: F64, rp: RopeParams) -> F64:
    """RMS of each pair's two values (invariant under RoPE), [d / 2]."""
    i0, i1 = rp.pairs()
    return np.sqrt((y[:, i0] ** 2 + y[:, i1] ** 2).mean(axis=0) / 2)


def shape_sample(y: F64, rp: RopeParams, rng: np.random.Generator, n: int = SHAPE_SAMPLES) -> F64:
    """Folded keys y [n, d] turned by random angles, each pair divided by its RMS: samples of the pair shape."""
    turned = turn_randomly(y, rp, rng)
    i0, i1 = rp.pairs()
    s = pair_rms(y, rp)
    z = np.concatenate([turned[:, i0] / s, turned[:, i1] / s]).ravel()
    return rng.choice(z, min(n, z.size), replace=False)


def fit_tables(rms: list[F64], samples: list[F64], widths: tuple[int, ...], n_profiles: int, rp: RopeParams,
               seed: int = 0) -> dict[int, ProfileTable]:
    """One table per width (64·N + 16 bits per block, the index included) from every calibration head's pair RMS
    [d / 2] and shape samples; n_profiles 0 = one profile per head."""
    from scipy.cluster.vq import kmeans2

    levels, mse = fit_levels(np.concatenate(samples), max_iter=300)
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
