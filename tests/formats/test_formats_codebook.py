"""Scalar codebook types (ktqb, vtqb_1) against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import reference as R

CB_TYPES = [i for i in R.ALL_TYPES if i.kind == "codebook"]
K_TYPES = [i for i in CB_TYPES if i.name.startswith("ktq")]


def sample_rows(rng, n_blocks: int) -> np.ndarray:
    """Gaussian, heavy-tailed, uniform, sparse and constant blocks at scales 1e-4 .. 1e4."""
    kinds = [
        lambda: rng.standard_normal(R.QK),
        lambda: rng.standard_t(3, R.QK),
        lambda: rng.uniform(-1, 1, R.QK),
        lambda: rng.standard_normal(R.QK) * (rng.random(R.QK) < 0.1),
        lambda: np.full(R.QK, rng.standard_normal()),
    ]
    blocks = [kinds[i % len(kinds)]() * 10.0 ** rng.uniform(-4, 4) for i in range(n_blocks)]
    return np.concatenate(blocks).astype(np.float32)


@pytest.mark.parametrize("info", CB_TYPES, ids=lambda i: i.name)
def test_dequantize_matches_reference(tq, info):
    rng = np.random.default_rng(info.index)
    n = 64
    raw = bytearray(rng.integers(0, 256, n * info.block_bytes, dtype=np.uint8).tobytes())
    d = rng.standard_normal(n).astype(np.float16)
    d[d == 0] = 1
    d = np.where(np.isfinite(d), d, np.float16(1.0))
    for i in range(n):
        raw[i * info.block_bytes : i * info.block_bytes + 2] = d[i : i + 1].tobytes()
    data = bytes(raw)
    table = tq.table(info.name)
    got = tq.dequantize(info.name, data)
    want = R.dequantize_row(info, data, table)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("info", CB_TYPES, ids=lambda i: i.name)
def test_quantize_matches_reference_bytes(tq, info):
    rng = np.random.default_rng(100 + info.index)
    x = sample_rows(rng, 200)
    table = tq.table(info.name)
    got = tq.quantize(info.name, x)
    want = R.quantize_row(info, x, table)
    bs = info.block_bytes
    differ = [i for i in range(len(got) // bs) if got[i * bs : (i + 1) * bs] != want[i * bs : (i + 1) * bs]]
    # float ties (summation order) may flip a decision in rare blocks: those must still be as good
    assert len(differ) <= 2, differ
    for i in differ:
        xb = x[i * R.QK : (i + 1) * R.QK].astype(np.float64)
        e_got = np.sum((xb - tq.dequantize(info.name, got[i * bs : (i + 1) * bs])) ** 2)
        e_want = np.sum((xb - R.dequantize_row(info, want[i * bs : (i + 1) * bs], table)) ** 2)
        assert e_got <= e_want * (1 + 1e-6) + 1e-30


@pytest.mark.parametrize("info", CB_TYPES, ids=lambda i: i.name)
def test_quantize_rows_api(tq, info):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    data, ret = tq.quantize_rows(info.name, x)
    assert ret == 3 * 4 * info.block_bytes
    assert data == b"".join(tq.quantize(info.name, row) for row in x)


@pytest.mark.parametrize("info", K_TYPES, ids=lambda i: i.name)
def test_vec_dot_matches_float64(tq, info):
    rng = np.random.default_rng(200 + info.index)
    table = tq.table(info.name)
    for n in (64, 128, 576, 1024):
        k = rng.standard_normal(n).astype(np.float32) * rng.uniform(0.01, 100)
        q = rng.standard_normal(n).astype(np.float32) * rng.uniform(0.01, 100)
        data = tq.quantize(info.name, k)
        got = tq.vec_dot(info.name, data, q)
        kd = R.dequantize_row(info, data, table).astype(np.float64)
        want = float(np.dot(kd, q.astype(np.float64)))
        scale = float(np.sum(np.abs(kd * q)))
        assert abs(got - want) <= 1e-5 * scale, (n, got, want)
        # and it is the dot with the C dequantization
        assert abs(got - float(np.dot(tq.dequantize(info.name, data).astype(np.float64), q))) <= 1e-5 * scale


def test_levels_are_the_active_tables(tq):
    for info in CB_TYPES:
        lv = tq.levels(info.name)
        assert lv.size == 1 << info.bits
        assert np.all(np.diff(lv) > 0) and np.all(np.isfinite(lv))
        assert abs(np.mean(lv)) < 1e-3  # symmetric N(0,1) codebook
