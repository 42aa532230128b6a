"""The vtq_2 bitshift trellis: bit packing, state convention, encoder/decoder agreement, training."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_tq.calibrate.bitstream import bits_to_codes, codes_to_bits, pack_bits, unpack_bits
from llama_tq.calibrate.errors import CalibrationError
from llama_tq.calibrate.trellis import (
    TrellisSpec,
    decode_block,
    decode_blocks,
    encode_blocks,
    evaluate_trellis,
    initial_table,
    is_consistent,
    state_of_sample,
    states_of_streams,
    stream_of_states,
    train_trellis,
    viterbi,
    viterbi_tail_biting,
)

SCALAR_LLOYD_MAX_2BIT = 0.1175


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n_bytes=st.integers(1, 24), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(bits: int, n_bytes: int, seed: int) -> None:
    unit = 8 // int(np.gcd(bits, 8))  # this many codes fill whole bytes
    n = max(unit, (n_bytes * 8 // bits) // unit * unit)
    codes = np.random.default_rng(seed).integers(0, 1 << bits, size=(3, n))
    packed = pack_bits(codes, bits)
    assert packed.shape == (3, n * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits), codes)
    np.testing.assert_array_equal(bits_to_codes(codes_to_bits(codes, bits), bits), codes)


def test_packing_is_little_endian() -> None:
    # code i occupies bits [2i, 2i+2): 1 -> bit 0, 2 -> bit 3, 3 -> bits 4, 5
    assert pack_bits(np.array([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert pack_bits(np.array([5, 3]), 4).tolist() == [0x35]
    with pytest.raises(ValueError):
        pack_bits(np.array([4]), 2)


def _stream_from_bits(bits: list[int]) -> bytes:
    return bytes(np.packbits(np.array(bits, dtype=np.uint8), bitorder="little"))


def test_state_of_sample_follows_formats_md_including_the_wrap() -> None:
    spec = TrellisSpec(2)  # L = 8, 128 stream bits
    assert (spec.L, spec.n_states, spec.stream_bits, spec.stream_bytes) == (8, 256, 128, 16)
    bits = [0] * 128
    bits[0] = bits[5] = 1  # stream bits 0 and 5
    bits[126] = 1  # bit 126 is bit 0 of state 63's window [126, 134) mod 128
    stream = _stream_from_bits(bits)
    assert state_of_sample(stream, 0, spec) == 0b100001
    assert state_of_sample(stream, 1, spec) == 0b1000  # window [2, 10): bit 5 -> position 3
    # sample 63 reads bits 126, 127, 0, 1, ..., 5 -> positions 0 and 2 and 7
    assert state_of_sample(stream, 63, spec) == 0b1 | (1 << 2) | (1 << 7)
    # consecutive states overlap: state[i+1] = (state[i] >> k) | (next k bits << (L - k))
    rng = np.random.default_rng(0)
    for k in (2, 3, 4):
        sp = TrellisSpec(k)
        s = rng.integers(0, 256, sp.stream_bytes, dtype=np.uint8).tobytes()
        states = [state_of_sample(s, i, sp) for i in range(sp.T)]
        for i in range(sp.T):
            nxt = states[(i + 1) % sp.T]
            assert nxt & (sp.n_overlap - 1) == states[i] >> k


@pytest.mark.parametrize("k", [2, 3, 4])
def test_vectorised_states_match_reference_and_streams_round_trip(k: int) -> None:
    spec = TrellisSpec(k)
    packed = np.random.default_rng(k).integers(0, 256, (5, spec.stream_bytes), dtype=np.uint8)
    states = states_of_streams(packed, spec)
    for b in range(5):
        assert states[b].tolist() == [state_of_sample(packed[b], i, spec) for i in range(spec.T)]
    assert is_consistent(states, spec).all()  # every decoded stream is a valid tail-biting path
    np.testing.assert_array_equal(stream_of_states(states, spec), packed)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_decode_of_encode_equals_the_encoders_reconstruction(k: int) -> None:
    spec = TrellisSpec(k)
    table = initial_table(spec)
    rng = np.random.default_rng(10 + k)
    x = rng.standard_normal((12, spec.T)) * rng.uniform(0.1, 3.0, (12, 1))
    x[3] = 0.0  # all-zero block
    for scale in ("refit", "rms", 1.0):
        enc = encode_blocks(x, table, spec, scale=scale)
        assert enc.packed.shape == (12, spec.stream_bytes) and enc.packed.dtype == np.uint8
        assert is_consistent(enc.states, spec).all()
        np.testing.assert_array_equal(states_of_streams(enc.packed, spec), enc.states)
        np.testing.assert_array_equal(decode_blocks(enc.packed, enc.d, table, spec), enc.recon)
        for b in (0, 3, 7):
            np.testing.assert_array_equal(decode_block(enc.packed[b].tobytes(), enc.d[b], table, spec), enc.recon[b])
    enc = encode_blocks(x, table, spec)
    assert enc.d[3] == 0.0 and not enc.packed[3].any() and not enc.recon[3].any()
    # least-squares refit: the residual is orthogonal to the reconstruction direction
    t = table[enc.states]
    np.testing.assert_allclose(np.sum((x - enc.recon) * t, axis=1), 0.0, atol=1e-9)
    # fp16 scale, as ggml_half stores it
    enc16 = encode_blocks(x, table, spec, fp16_scale=True)
    np.testing.assert_array_equal(enc16.d, enc16.d.astype(np.float16).astype(np.float64))
    np.testing.assert_array_equal(decode_blocks(enc16.packed, enc16.d, table, spec), enc16.recon)


def _brute_force_tail_biting(x: np.ndarray, table: np.ndarray, spec: TrellisSpec) -> float:
    best = np.inf
    for bits in itertools.product((0, 1), repeat=spec.stream_bits):
        states = states_of_streams(np.packbits(np.array(bits, dtype=np.uint8), bitorder="little"), spec)
        best = min(best, float(np.sum((x - table[states]) ** 2)))
    return best


@pytest.mark.parametrize(("k", "L", "T"), [(1, 3, 8), (2, 4, 4), (1, 4, 8)])
def test_exact_tail_biting_viterbi_is_optimal(k: int, L: int, T: int) -> None:
    spec = TrellisSpec(k, L, T)
    rng = np.random.default_rng(L * 10 + k)
    table = rng.standard_normal(spec.n_states)
    x = rng.standard_normal((6, T))
    free_states, free_cost = viterbi(x, table, spec)
    exact_states, exact_cost = viterbi_tail_biting(x, table, spec, "exact")
    two_states, two_cost = viterbi_tail_biting(x, table, spec, "two-pass")
    assert is_consistent(exact_states, spec).all() and is_consistent(two_states, spec).all()
    for b in range(x.shape[0]):
        brute = _brute_force_tail_biting(x[b], table, spec)
        assert exact_cost[b] == pytest.approx(brute, rel=1e-12)
        assert free_cost[b] <= brute + 1e-12 <= two_cost[b] + 2e-12
    np.testing.assert_allclose(exact_cost, np.sum((x - table[exact_states]) ** 2, axis=1), rtol=1e-12)
    np.testing.assert_allclose(free_cost, np.sum((x - table[free_states]) ** 2, axis=1), rtol=1e-12)


def test_two_pass_tail_biting_is_close_to_exact() -> None:
    spec = TrellisSpec(2)
    table = initial_table(spec)
    x = np.random.default_rng(5).standard_normal((24, spec.T))
    _, exact = viterbi_tail_biting(x, table, spec, "exact")
    _, two = viterbi_tail_biting(x, table, spec, "two-pass")
    assert np.all(two >= exact - 1e-9)
    assert two.sum() <= 1.01 * exact.sum()


def test_initial_table_is_seeded_permuted_unit_gaussian_quantiles() -> None:
    spec = TrellisSpec(3)
    a, b, c = initial_table(spec, 1), initial_table(spec, 1), initial_table(spec, 2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.sort(a), np.sort(c))
    assert abs(a.mean()) < 1e-12 and a.var() == pytest.approx(1.0, rel=1e-12)


def test_training_improves_and_beats_scalar_lloyd_max() -> None:
    spec = TrellisSpec(2)
    res = train_trellis(spec, iterations=3, n_blocks=384, seed=1)
    assert res.history.shape == (4,)
    assert res.history[res.best_iteration] == res.history.min()
    assert res.history.min() < res.history[0]
    assert abs(res.table.mean()) < 1e-9
    ev = evaluate_trellis(res.table, spec, n_blocks=128, seed=99)
    assert ev.mse_refit < 0.8 * SCALAR_LLOYD_MAX_2BIT
    assert ev.mse_known_sigma < 0.8 * SCALAR_LLOYD_MAX_2BIT


def test_training_on_given_blocks_and_bad_input() -> None:
    spec = TrellisSpec(2)
    blocks = np.random.default_rng(2).laplace(size=(64, spec.T))
    res = train_trellis(spec, iterations=1, blocks=blocks)
    assert res.n_blocks == 64 and res.params["seed"] == "samples"
    with pytest.raises(CalibrationError):
        train_trellis(spec, iterations=1, blocks=np.zeros((4, spec.T)))
    with pytest.raises(CalibrationError):
        train_trellis(spec, iterations=1, blocks=np.ones((4, 32)))
    with pytest.raises(CalibrationError):
        TrellisSpec(2, 2)
    with pytest.raises(CalibrationError):
        encode_blocks(np.zeros((1, 64)), np.zeros(10), spec)
