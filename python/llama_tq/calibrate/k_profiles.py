"""ktqp: keys folded by their queries and coded with a table of bit profiles (``LLAMA_TQ_K_PROFILES``).

A K error e moves a logit by q·e, so the error that matters is eᵀ Σ_q e, and the queries put most of their
energy in a few RoPE pairs. The runtime multiplies every RoPE pair j of a layer's KV head by
a_j = sqrt(λ_j / mean λ) (λ_j: the queries' mean energy in the pair) and the queries by 1 / a_j; plain squared
error on the folded keys is then the logit error. The folded keys are coded by a table of profiles (bits and
scale per coordinate of a 64-value block) shared by every layer; a block stores the index of the profile that
codes it best (src/ggml-tq/tq-kprof.h). Each calibration head (layer, KV head, 64-value block) contributes its
own profile: bits allocated greedily by its pairs' energies, scales = its pairs' RMS. One shape codebook per bit
count (Lloyd on the folded keys' pair values at random angles over their pair's RMS) serves every coordinate.

This module fits the factors and tables from the queries and keys a model's attention reads (f16 cache, so in
the model's own basis) and writes the GGUF that src/ggml-tq/tq-k-profiles.h reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .calib_gguf import read_calib_gguf, write_calib_gguf
from .errors import CalibrationError
from .k_means import RopeParams, rope
from .lloyd_max import dequantize, lloyd_max_empirical, quantize

F64 = NDArray[np.float64]
FILE_VERSION = 1  # TQ_K_PROFILES_VERSION in tq-k-profiles.h
ENV = "LLAMA_TQ_K_PROFILES"
WIDTHS = (2, 3)
BLOCK = 64  # QK_TQ
MAX_BITS = 6  # TQ_KPROF_MAX_BITS
MAX_PROFILES = 1024  # TQ_KPROF_MAX_PROFILES
SHAPE_SAMPLES = 2000  # per calibration head, for the shape codebooks


def fit_levels(x: F64, max_iter: int = 200) -> tuple[list[F64], F64]:
    """Lloyd levels for 1..MAX_BITS bits on samples x, and the MSE for 0..MAX_BITS bits (0 bits: x̂ = 0)."""
    levels: list[F64] = [np.zeros(1)]
    mse = [float(np.mean(x * x))]
    for b in range(1, MAX_BITS + 1):
        r = lloyd_max_empirical(x, 2**b, symmetric=False, tol=1e-9, max_iter=max_iter)
        levels.append(r.levels)
        mse.append(float(np.mean((dequantize(quantize(x, r.levels), r.levels) - x) ** 2)))
    return levels, np.asarray(mse)


def allocate_units(mse: F64, weight: F64, cost: NDArray[np.intp], budget: int) -> NDArray[np.intp]:
    """Greedy bit allocation over units (a unit: coordinates that share their bits): mse [MAX_BITS + 1, n] per
    unit and bit count, weight [n], cost [n] budget bits per added bit. Each step adds a bit to the unit with the
    largest weighted MSE drop per budget bit that still fits; optimal when every unit's MSE is convex in its bits
    (Lloyd codebooks nearly are)."""
    n = mse.shape[1]
    bits = np.zeros(n, dtype=np.intp)
    left = budget
    while True:
        nxt = np.minimum(bits + 1, MAX_BITS)
        ok = (bits < MAX_BITS) & (cost <= left)
        if not ok.any():
            return bits
        gain = np.where(ok, weight * (mse[bits, np.arange(n)] - mse[nxt, np.arange(n)]) / cost, -np.inf)
        j = int(np.argmax(gain))
        bits[j] += 1
        left -= int(cost[j])


def allocate(mse: F64, weight: F64, budget: int, cost: int) -> NDArray[np.intp]:
    """allocate_units with the same cost for every unit."""
    return allocate_units(mse, weight, np.full(mse.shape[1], cost, dtype=np.intp), budget)


def turn_randomly(x: F64, rp: RopeParams, rng: np.random.Generator) -> F64:
    """Rows x [n, d] turned by RoPE at random positions (the lowest-frequency pair by a uniform angle)."""
    return rope(x[:, None, :], rng.uniform(0.0, 2.0 * np.pi, len(x)) / rp.angles(np.ones(1))[0, -1], rp)[:, 0]


def pair_energy(x: F64, rp: RopeParams) -> F64:
    """Mean energy per coordinate [d], averaged within each RoPE pair (invariant under RoPE)."""
    e = (x * x).mean(axis=0)
    i0, i1 = rp.pairs()
    e[i0] = e[i1] = (e[i0] + e[i1]) / 2
    return e


def fold_scales(q: F64, rp: RopeParams) -> F64:
    """a [d] (equal within a pair) from queries q [n, d]: sqrt of the pair's mean query energy over the mean."""
    lam = pair_energy(q, rp)
    return np.sqrt(lam / lam.mean())


def pair_rms(y: F64, rp: RopeParams) -> F64:
    """RMS of each pair's two values (invariant under RoPE), [d / 2]."""
    i0, i1 = rp.pairs()
    return np.sqrt((y[:, i0] ** 2 + y[:, i1] ** 2).mean(axis=0) / 2)


def shape_sample(y: F64, rp: RopeParams, rng: np.random.Generator, n: int = SHAPE_SAMPLES) -> F64:
    """Folded keys y [n, d] turned by random angles, each coordinate over its pair's RMS: samples of the shape."""
    z = (turn_randomly(y, rp, rng) / np.sqrt(pair_energy(y, rp))).ravel()
    return rng.choice(z, min(n, z.size), replace=False)


@dataclass
class ProfileTable:
    bits: NDArray[np.intp]  # [P, 64]
    scale: F64  # [P, 64]
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
        """Each row of y [n, 64] through its best profile: (ŷ, profile index per row)."""
        best = self._quantize_with(y, 0)
        err = ((best - y) ** 2).sum(axis=1)
        idx = np.zeros(len(y), dtype=np.intp)
        for p in range(1, len(self.bits)):
            yq = self._quantize_with(y, p)
            e = ((yq - y) ** 2).sum(axis=1)
            better = e < err
            best[better], err[better], idx[better] = yq[better], e[better], p
        return best, idx

    def flat_levels(self) -> NDArray[np.float32]:
        """The shape codebooks in tq_kprof_init's order (1 bit, 2 bits, ...), TQ_KPROF_N_LEVELS floats."""
        return np.concatenate([self.levels[b] for b in range(1, MAX_BITS + 1)]).astype(np.float32)


def block_units(d: int, rp: RopeParams) -> list[list[NDArray[np.intp]]]:
    """Per 64-value block of a head of d values: its units (coordinates sharing bits), a RoPE pair where both of
    its values lie in the block, else a single coordinate."""
    partner = np.arange(d)
    i0, i1 = rp.pairs()
    partner[i0], partner[i1] = i1, i0
    out = []
    for start in range(0, d, BLOCK):
        units, seen = [], set()
        for j in range(start, start + BLOCK):
            if j in seen:
                continue
            p = int(partner[j])
            unit = [j, p] if p != j and start <= p < start + BLOCK else [j]
            seen.update(unit)
            units.append(np.asarray(unit) - start)
        out.append(units)
    return out


def fit_tables(rms: list[F64], units: list[list[NDArray[np.intp]]], levels: list[F64], mse: F64,
               widths: tuple[int, ...], n_profiles: int = 0, seed: int = 0) -> dict[int, ProfileTable]:
    """One table per width (64·N + 16 bits per block, the index included) from every calibration block's
    coordinate RMS [64] and units; n_profiles 0 = one profile per block (else k-means of the log RMS, scipy)."""
    from scipy.cluster.vq import kmeans2

    heads = np.log(np.stack(rms))
    unit_sets = units
    if n_profiles and n_profiles < len(heads):
        centres, label = kmeans2(heads, n_profiles, minit="++", seed=seed)
        unit_sets = [units[int(np.flatnonzero(label == c)[0])] if (label == c).any() else units[0]
                     for c in range(n_profiles)]
    else:
        centres = heads
    sig = np.exp(centres)  # [P, 64]
    tables = {}
    for w in widths:
        table = ProfileTable(np.zeros((len(sig), BLOCK), dtype=np.intp), np.ones((len(sig), BLOCK)), levels)
        budget = BLOCK * w + 16 - table.index_bits
        for p, (s, us) in enumerate(zip(sig, unit_sets, strict=True)):
            cost = np.asarray([len(u) for u in us], dtype=np.intp)
            energy = np.asarray([float(np.mean(s[u] ** 2)) for u in us])
            ub = allocate_units(np.repeat(mse[:, None], len(us), axis=1), energy * cost, cost, budget)
            for u, b in zip(us, ub, strict=True):
                table.bits[p, u] = b
            table.scale[p] = s
        tables[w] = table
    return tables


@dataclass
class KProfiles:
    folds: dict[int, F64]  # layer -> a [n_head_kv, d]
    tables: dict[int, ProfileTable]  # width -> table


def fit_k_profiles(rows: Mapping[str, NDArray[np.floating]], n_head: int, n_head_kv: int, rp: RopeParams,
                   widths: tuple[int, ...] = WIDTHS, n_profiles: int = 0, seed: int = 0) -> KProfiles:
    """Factors and tables from rows ``q.<il>`` [n, n_head * d] and ``k.<il>`` [n, n_head_kv * d] as attention
    reads them (model basis, RoPE applied). More calibration blocks than MAX_PROFILES: n_profiles = MAX_PROFILES."""
    rng = np.random.default_rng(seed)
    layers = sorted(int(k.split(".")[1]) for k in rows if k.startswith("k."))
    if not layers:
        raise CalibrationError("no K rows")
    group = n_head // n_head_kv
    folds: dict[int, F64] = {}
    rms: list[F64] = []
    units: list[list[NDArray[np.intp]]] = []
    samples: list[F64] = []
    for il in layers:
        if f"q.{il}" not in rows:
            raise CalibrationError(f"layer {il}: keys without queries")
        k = np.asarray(rows[f"k.{il}"], dtype=np.float64)
        q = np.asarray(rows[f"q.{il}"], dtype=np.float64)
        d = k.shape[1] // n_head_kv
        if d % BLOCK or k.shape[1] != n_head_kv * d or q.shape[1] != n_head * d:
            raise CalibrationError(f"layer {il}: K rows of {k.shape[1]} and Q rows of {q.shape[1]} values do not "
                                   f"split into heads of a multiple of {BLOCK} ({n_head} Q / {n_head_kv} KV heads)")
        k = k.reshape(len(k), n_head_kv, d)
        q = q.reshape(len(q), n_head, d)
        per_block = block_units(d, rp)
        a_layer = np.zeros((n_head_kv, d))
        for h in range(n_head_kv):
            a = fold_scales(q[:, h * group:(h + 1) * group].reshape(-1, d), rp)
            a_layer[h] = a
            y = k[:, h] * a
            e = pair_energy(y, rp)
            samples.append(shape_sample(y, rp, rng))
            for b, us in enumerate(per_block):
                rms.append(np.sqrt(np.maximum(e[b * BLOCK:(b + 1) * BLOCK], 1e-30)))
                units.append(us)
        folds[il] = a_layer
    levels, mse = fit_levels(np.concatenate(samples), max_iter=300)
    if not n_profiles and len(rms) > MAX_PROFILES:
        n_profiles = MAX_PROFILES
    return KProfiles(folds, fit_tables(rms, units, levels, mse, widths, n_profiles, seed))


def write_k_profiles(path: str | os.PathLike[str], arch: str, kp: KProfiles, source: str, n_tokens: int) -> None:
    """The k-profiles GGUF (format in tq-k-profiles.h), written atomically."""
    tensors: dict[str, NDArray[np.generic]] = {f"k_fold.{il}": kp.folds[il].astype(np.float32)
                                               for il in sorted(kp.folds)}
    tensors["kprof.levels"] = next(iter(kp.tables.values())).flat_levels()
    for width, t in sorted(kp.tables.items()):
        tensors[f"kprof{width}.bits"] = t.bits.astype(np.int8)
        tensors[f"kprof{width}.scale"] = t.scale.astype(np.float32)
    write_calib_gguf(path, arch, "k_profiles", FILE_VERSION, source, n_tokens, tensors)


def read_k_profiles(path: str | os.PathLike[str]) -> tuple[str, KProfiles]:
    """(architecture, factors and tables) of a k-profiles file."""
    arch, t = read_calib_gguf(path, "k_profiles", FILE_VERSION)
    flat = t["kprof.levels"].astype(np.float64).ravel()
    levels: list[F64] = [np.zeros(1)]
    at = 0
    for b in range(1, MAX_BITS + 1):
        levels.append(flat[at:at + 2**b])
        at += 2**b
    folds = {int(n.split(".")[1]): v.astype(np.float64) for n, v in t.items() if n.startswith("k_fold.")}
    tables = {w: ProfileTable(t[f"kprof{w}.bits"].astype(np.intp), t[f"kprof{w}.scale"].astype(np.float64), levels)
              for w in WIDTHS if f"kprof{w}.bits" in t}
    return arch, KProfiles(folds, tables)
