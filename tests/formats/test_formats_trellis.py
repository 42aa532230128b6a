"""Trellis types (vtqb_2, vtqb_3) and the Viterbi encoder against the float64 reference."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import reference as R

TR_TYPES = [i for i in R.ALL_TYPES if i.kind == "trellis"]
EXACT, EXHAUSTIVE, TWO_PASS = 1, 2, 0


def random_blocks_bytes(rng, info, n: int) -> bytes:
    raw = bytearray(rng.integers(0, 256, n * info.block_bytes, dtype=np.uint8).tobytes())
    vals = rng.standard_normal(n * (1 + info.outliers)).astype(np.float16)
    vals = np.where(np.isfinite(vals), vals, np.float16(1.0)).reshape(n, 1 + info.outliers)
    for i in range(n):
        o = i * info.block_bytes
        raw[o : o + 2 + 2 * info.outliers] = vals[i].tobytes()
    return bytes(raw)


@pytest.mark.parametrize("info", TR_TYPES, ids=lambda i: i.name)
def test_dequantize_matches_reference(tq, info):
    rng = np.random.default_rng(info.index)
    data = random_blocks_bytes(rng, info, 64)  # outlier positions: arbitrary bytes, decoded & 63
    table = tq.table(info.name)
    assert np.array_equal(tq.dequantize(info.name, data), R.dequantize_row(info, data, table))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_viterbi_exact_matches_reference(tq, k):
    rng = np.random.default_rng(k)
    table = tq.trellis_table(k)
    for trial in range(4):
        y = (rng.standard_normal(R.QK) if trial % 2 == 0 else rng.standard_t(3, R.QK)).astype(np.float32)
        w = np.ones(R.QK, np.float32)
        if trial == 3:
            w[rng.choice(R.QK, 2, replace=False)] = 0  # outlier slots: free samples
        want, ref_states = R.viterbi_tail_biting(y, w, table, k, "exact")
        assert R.is_tail_biting(ref_states, k)
        for mode in (EXACT, EXHAUSTIVE):
            cost, qs, passes = tq.viterbi(k, y, w, mode)
            assert cost == pytest.approx(want, rel=2e-5, abs=1e-6)
            states = R.trellis_states(qs, k)
            # the stream encodes a tail-biting path whose float64 cost is the optimum
            recomputed = float(np.sum(w * (y.astype(np.float64) - table[states].astype(np.float64)) ** 2))
            assert recomputed == pytest.approx(want, rel=2e-5, abs=1e-6)
            assert passes == 64 if mode == EXHAUSTIVE else 1 <= passes <= 65


@pytest.mark.parametrize("k", [2, 3, 4])
def test_viterbi_two_pass_near_optimal(tq, k):
    rng = np.random.default_rng(10 + k)
    table = tq.trellis_table(k)
    tot2 = tot_exact = tot_ref2 = 0.0
    for _ in range(24):
        y = rng.standard_normal(R.QK).astype(np.float32)
        c2, qs, passes = tq.viterbi(k, y, None, TWO_PASS)
        ce, _, _ = tq.viterbi(k, y, None, EXACT)
        assert passes == 2
        assert c2 >= ce * (1 - 1e-6)
        states = R.trellis_states(qs, k)
        assert float(np.sum((y - table[states].astype(np.float64)) ** 2)) == pytest.approx(c2, rel=2e-5)
        tot2 += c2
        tot_exact += ce
        tot_ref2 += R.viterbi_tail_biting(y, np.ones(R.QK), table, k, "two-pass")[0]
    assert tot2 <= tot_exact * 1.01  # measured: +0.06..0.1 % on N(0,1) blocks
    assert tot2 == pytest.approx(tot_ref2, rel=2e-3)  # same algorithm in float64


@pytest.mark.parametrize("info", TR_TYPES, ids=lambda i: i.name)
def test_quantize_matches_reference(tq, info):
    """C quantize: outlier slots and target as the reference prepares them, a tail-biting path that is
    two-pass-optimal, and d = the least-squares scale of that path."""
    rng = np.random.default_rng(300 + info.index)
    table = tq.table(info.name)
    k = info.bits
    mse_c = mse_ref = 0.0
    for trial in range(12):
        x = (rng.standard_normal(R.QK) if trial % 2 else rng.standard_t(2, R.QK)).astype(np.float32)
        x *= np.float32(10.0 ** rng.uniform(-3, 3))
        got = R.parse_block(info, tq.quantize(info.name, x))
        xs, w, y, od, op = R.trellis_target(info, x, table)
        assert (got.od, got.op) == (od, op)
        states = R.trellis_states(got.qs, k)
        assert R.is_tail_biting(states, k)
        # the C path's cost (on the C target) is the two-pass result
        cost_c = float(np.sum(w * (y - table[states].astype(np.float64)) ** 2))
        c2, _, _ = tq.viterbi(k, y, w, TWO_PASS)
        assert cost_c == pytest.approx(c2, rel=2e-5, abs=1e-6)
        # d is the fp16 least-squares scale of the path (1 fp16 ulp for summation order)
        assert abs(got.d - R.trellis_scale(xs, w, states, table)) <= 1
        want = R.trellis_quantize_block(info, x, table, "two-pass")
        norm = float(np.sum(xs * xs))
        mse_c += np.sum((xs - R.decode_block(info, got, table)) ** 2) / norm
        mse_ref += np.sum((xs - R.decode_block(info, want, table)) ** 2) / norm
    assert mse_c == pytest.approx(mse_ref, rel=0.02)


@pytest.mark.parametrize("info", TR_TYPES, ids=lambda i: i.name)
def test_quantize_rows_api(tq, info):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 192)).astype(np.float32)
    data, ret = tq.quantize_rows(info.name, x)
    assert ret == 2 * 3 * info.block_bytes
    assert data == b"".join(tq.quantize(info.name, row) for row in x)


def test_outlier_slots_hold_the_largest_values(tq):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(R.QK).astype(np.float32)
    x[[7, 50]] = [40.0, -90.0]
    for t in ("vtq2_3", "vtq3_3", "vtq4_3"):
        info = R.type_info(t)
        blk = R.parse_block(info, tq.quantize(t, x))
        assert blk.op == (50, 7)
        y = tq.dequantize(t, blk.to_bytes())
        assert y[50] == -90.0 and y[7] == 40.0
        base = R.type_info(t.replace("_3", "_2"))
        e3 = np.sum((x - y) ** 2)
        e2 = np.sum((x - tq.dequantize(base.name, tq.quantize(base.name, x))) ** 2)
        assert e3 < 0.5 * e2


def test_trellis_tables_are_active_tables(tq):
    for k in (2, 3, 4):
        t = tq.trellis_table(k)
        assert t.size == 1 << (k + 6) and np.all(np.isfinite(t))
        assert np.array_equal(t, tq.levels(f"vtq{k}_2")) and np.array_equal(t, tq.levels(f"vtq{k}_3"))


def test_matches_calibration_trellis_module(tq):
    """Second reference: python/llama_tq/calibrate/trellis.py (same state convention, numpy)."""
    try:
        from llama_tq.calibrate import trellis as T
    except ImportError:
        pytest.skip("llama_tq.calibrate.trellis not importable")
    rng = np.random.default_rng(11)
    for k in (2, 3, 4):
        spec = T.TrellisSpec(k)
        table = tq.trellis_table(k).astype(np.float64)
        info = R.type_info(f"vtq{k}_2")
        data = random_blocks_bytes(rng, info, 16)
        blocks = np.frombuffer(data, np.uint8).reshape(16, info.block_bytes)
        d = blocks[:, :2].copy().view(np.float16)[:, 0].astype(np.float32).astype(np.float64)
        want = T.decode_blocks(blocks[:, 2:], d, table, spec).astype(np.float32)
        assert np.array_equal(tq.dequantize(info.name, data).reshape(16, R.QK), want)
        y = rng.standard_normal((3, R.QK)).astype(np.float32)
        _, cost = T.viterbi_tail_biting(y.astype(np.float64), table, spec, "exact")
        for i in range(3):
            assert tq.viterbi(k, y[i], None, EXACT)[0] == pytest.approx(cost[i], rel=2e-5)


def test_simd_variants_agree(tq, libpath):
    """The runtime-dispatched AVX2 Viterbi and the baseline build give the same bytes."""
    tq.lib.tq_simd.restype = ctypes.c_char_p
    simd = tq.lib.tq_simd().decode()
    rng = np.random.default_rng(21)
    x = np.concatenate([rng.standard_normal(8 * R.QK), rng.standard_t(3, 8 * R.QK)]).astype(np.float32)
    names = [i.name for i in TR_TYPES]
    want = {t: tq.quantize(t, x).hex() for t in names}
    code = (
        "import ctypes, json, sys\nimport numpy as np\nlib = ctypes.CDLL(sys.argv[1])\n"
        "lib.tq_simd.restype = ctypes.c_char_p\nx = np.frombuffer(bytes.fromhex(sys.argv[2]), np.float32)\n"
        "out = {'simd': lib.tq_simd().decode()}\n"
        "for t, bs in json.loads(sys.argv[3]).items():\n"
        "    y = ctypes.create_string_buffer(bs * x.size // 64)\n"
        "    f = getattr(lib, f'quantize_row_{t}_ref')\n"
        "    f(ctypes.c_void_p(x.ctypes.data), y, ctypes.c_int64(x.size))\n"
        "    out[t] = y.raw.hex()\n"
        "print(json.dumps(out))\n"
    )
    sizes = json.dumps({t: R.type_info(t).block_bytes for t in names})
    env = {**os.environ, "LLAMA_TQ_DISABLE_AVX2": "1"}
    env.pop("LLAMA_TQ_CODEBOOK", None)
    res = subprocess.run(
        [sys.executable, "-c", code, str(libpath), x.tobytes().hex(), sizes],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    if simd == got["simd"]:
        pytest.skip(f"only one Viterbi variant in this build ({simd})")
    for t in names:
        assert got[t] == want[t], t


def test_plain_c_variant_agrees(tq, tmp_path):
    """-DTQ_NO_SIMD (the plain C Viterbi used where no SIMD is available) gives the same bytes."""
    from conftest import TQLib, build_library

    plain = TQLib(build_library(tmp_path, ("-DTQ_NO_SIMD",)))
    plain.lib.tq_simd.restype = ctypes.c_char_p
    assert plain.lib.tq_simd().decode() == "scalar"
    rng = np.random.default_rng(22)
    x = np.concatenate([rng.standard_normal(6 * R.QK), rng.standard_t(3, 6 * R.QK)]).astype(np.float32)
    for info in TR_TYPES:
        assert plain.quantize(info.name, x) == tq.quantize(info.name, x), info.name
