"""Properties of every type (hypothesis): bounded round-trip error, determinism, non-finite and extreme
input, zero blocks, row validation, the row-length error path."""

from __future__ import annotations

import signal
import subprocess
import sys

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import reference as R
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NAMES = [i.name for i in R.ALL_TYPES]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# mean relative MSE on N(0,1) blocks must stay below these (Lloyd-Max N(0,1): 0.1175 / 0.03454 / 0.009497;
# per-block scale fitting costs a little, trellis coding gains more)
GAUSS_BOUND = {2: 0.125, 3: 0.037, 4: 0.0102}

finite_rows = hnp.arrays(
    np.float32,
    st.sampled_from([64, 128]),
    elements=st.floats(
        float(np.float32(-3e38)), float(np.float32(3e38)), allow_nan=False, allow_infinity=False, width=32
    ),
)
any_rows = hnp.arrays(np.float32, 64, elements=st.floats(width=32, allow_nan=True, allow_infinity=True))


def rel_err(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64)
    ss = float(np.sum(x * x))
    return float(np.sum((x - y.astype(np.float64)) ** 2)) / ss if ss > 0 else float(np.sum(y.astype(np.float64) ** 2))


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(x=finite_rows)
def test_round_trip_never_worse_than_zero(tq, name, x):
    """Any finite block: finite output, error at most the block's energy (the all-zero block's error),
    per block; deterministic."""
    data = tq.quantize(name, x)
    assert tq.validate(name, data)
    y = tq.dequantize(name, data)
    assert np.all(np.isfinite(y))
    for i in range(0, x.size, R.QK):
        assert rel_err(x[i : i + R.QK], y[i : i + R.QK]) <= 1.0 + 1e-6
    assert tq.quantize(name, x) == data


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), log_sigma=st.floats(-4, 4))  # fp16 scale: normal range
def test_gaussian_blocks_error_bound(tq, name, seed, log_sigma):
    info = R.type_info(name)
    x = (np.random.default_rng(seed).standard_normal(16 * R.QK) * 10.0**log_sigma).astype(np.float32)
    y = tq.dequantize(name, tq.quantize(name, x))
    rel = [rel_err(x[i : i + R.QK], y[i : i + R.QK]) for i in range(0, x.size, R.QK)]
    assert max(rel) < 4 * GAUSS_BOUND[info.bits]
    assert np.mean(rel) < 1.4 * GAUSS_BOUND[info.bits]


@pytest.mark.parametrize("name", NAMES)
def test_gaussian_mse_per_type(tq, name):
    info = R.type_info(name)
    x = np.random.default_rng(42).standard_normal(400 * R.QK).astype(np.float32)
    y = tq.dequantize(name, tq.quantize(name, x))
    mse = float(np.mean((x.astype(np.float64) - y) ** 2))
    assert mse < GAUSS_BOUND[info.bits]
    if info.outliers:
        base = tq.dequantize(name.replace("_3", "_2"), tq.quantize(name.replace("_3", "_2"), x))
        assert mse < float(np.mean((x.astype(np.float64) - base) ** 2))


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(x=any_rows)
def test_non_finite_input_is_zero(tq, name, x):
    """NaN/Inf never crash and never leak: they encode exactly as zeros would."""
    data = tq.quantize(name, x)
    y = tq.dequantize(name, data)
    assert np.all(np.isfinite(y))
    assert data == tq.quantize(name, np.where(np.isfinite(x), x, np.float32(0)))


@pytest.mark.parametrize("name", NAMES)
def test_extreme_values(tq, name):
    rng = np.random.default_rng(1)
    f32 = np.finfo(np.float32)
    cases = [
        np.full(R.QK, f32.max, np.float32),
        np.where(rng.random(R.QK) < 0.5, f32.max, -f32.max).astype(np.float32),
        (rng.standard_normal(R.QK) * 1e37).astype(np.float32),
        np.concatenate([[3e38], rng.standard_normal(R.QK - 1)]).astype(np.float32),
        (rng.standard_normal(R.QK) * 1e-40).astype(np.float32),  # float32 denormals
        (rng.standard_normal(R.QK) * 1e-6).astype(np.float32),  # fp16-subnormal scales
        np.full(R.QK, f32.smallest_subnormal, np.float32),
        np.array([np.nan] * 32 + [np.inf] * 16 + [-np.inf] * 16, np.float32),
    ]
    for x in cases:
        data = tq.quantize(name, x)
        assert tq.validate(name, data)
        y = tq.dequantize(name, data)
        assert np.all(np.isfinite(y))
        xs = np.where(np.isfinite(x), x, 0).astype(np.float64)
        if np.sum(xs * xs) > 0 and np.all(np.abs(xs) < 65504):
            assert rel_err(xs, y) <= 1.0 + 1e-6
    # huge values saturate at the largest fp16 scale
    y = tq.dequantize(name, tq.quantize(name, np.full(R.QK, 1e30, np.float32)))
    assert np.all(y > 1e4) and np.all(np.isfinite(y))


@pytest.mark.parametrize("name", NAMES)
def test_zero_blocks(tq, name):
    info = R.type_info(name)
    zeros = np.zeros(3 * R.QK, np.float32)
    data = tq.quantize(name, zeros)
    assert np.array_equal(tq.dequantize(name, data), zeros)
    for blk in R.split_row(info, data):
        assert blk.d == 0 and blk.qs == bytes(info.qs_bytes) and all(v == 0 for v in blk.od)
    # the zero-filled cache buffer (every byte 0) decodes to zeros too
    assert np.array_equal(tq.dequantize(name, bytes(3 * info.block_bytes)), zeros)
    # d = 0 with arbitrary codes decodes to (signed) zeros
    rng = np.random.default_rng(0)
    raw = bytearray(rng.integers(0, 256, info.block_bytes, dtype=np.uint8).tobytes())
    raw[0:2] = b"\0\0"
    for o in range(info.outliers):
        raw[2 + 2 * o : 4 + 2 * o] = b"\0\0"
    assert np.all(tq.dequantize(name, bytes(raw)) == 0)


@pytest.mark.parametrize("name", NAMES)
def test_validate_row(tq, name):
    info = R.type_info(name)
    x = np.random.default_rng(3).standard_normal(2 * R.QK).astype(np.float32)
    data = bytearray(tq.quantize(name, x))
    assert tq.validate(name, bytes(data))
    assert not tq.validate(name, bytes(data[:-1]))
    for bad in (b"\x00\x7c", b"\x00\xfc", b"\x01\x7e"):  # +inf, -inf, nan
        corrupt = bytearray(data)
        corrupt[info.block_bytes : info.block_bytes + 2] = bad
        assert not tq.validate(name, bytes(corrupt))
        if info.outliers:
            corrupt = bytearray(data)
            corrupt[2:4] = bad
            assert not tq.validate(name, bytes(corrupt))
    if info.outliers:
        corrupt = bytearray(data)
        corrupt[2 + 2 * info.outliers] = 64
        assert not tq.validate(name, bytes(corrupt))


@pytest.mark.parametrize(
    "call",
    [
        "lib.quantize_row_ktq2_ref(x, y, ctypes.c_int64(100))",
        "lib.dequantize_row_vtq3_2(y, x, ctypes.c_int64(65))",
        "lib.quantize_vtq2_3(x, y, ctypes.c_int64(1), ctypes.c_int64(96), None)",
        "lib.ggml_vec_dot_ktq4_f32(96, ctypes.byref(ctypes.c_float()), 0, y, 0, x, 0, 1)",
        "lib.ggml_vec_dot_ktq4_f32(64, ctypes.byref(ctypes.c_float()), 0, y, 0, x, 0, 2)",
    ],
)
def test_bad_row_length_aborts(libpath, call):
    code = (
        "import ctypes, sys\nlib = ctypes.CDLL(sys.argv[1])\n"
        "x = (ctypes.c_float * 256)()\ny = (ctypes.c_uint8 * 1024)()\n" + call + "\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(libpath)], capture_output=True, text=True, timeout=60)
    assert res.returncode == -signal.SIGABRT
    assert "llama-tq" in res.stderr and ("multiple of the block size 64" in res.stderr or "nrc" in res.stderr)


def test_multithreaded_quantize_is_deterministic(tq):
    """Lazy init and the thread-local Viterbi buffer under concurrency (ctypes releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    x = np.random.default_rng(9).standard_normal((8, 576)).astype(np.float32)
    want = [tq.quantize("vtq3_2", row) for row in x]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda row: tq.quantize("vtq3_2", row), x))
    assert got == want


@pytest.mark.parametrize("b", [2, 3, 4])
def test_trellis_scale_handles_heavy_tails(tq, b):
    """Student-t(3) blocks: the trellis target scale max(rms, max|x|/max|table|) keeps vtqb_2 ahead of
    the scalar codebook (with the RMS alone it fell behind ktq4 by 2x)."""
    x = np.random.default_rng(b).standard_t(3, 300 * R.QK).astype(np.float32)

    def mse(name):
        y = tq.dequantize(name, tq.quantize(name, x)).astype(np.float64)
        return float(np.sum((x - y) ** 2) / np.sum(x.astype(np.float64) ** 2))

    assert mse(f"vtq{b}_2") < 0.7 * mse(f"ktq{b}")
    assert mse(f"vtq{b}_3") < mse(f"vtq{b}_2")
