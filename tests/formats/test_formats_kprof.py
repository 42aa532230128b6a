"""The candidate K format "kprof" (src/ggml-tq/tq-kprof.c) against a float64 numpy reference.

A table of bit profiles (bits and a scale per coordinate) and one shape codebook per bit count; a block stores
its profile's index and codes in one little-endian bit stream, the encoder keeps the profile with the least
squared error (docs/formats.md, "Candidate: K by bit profiles"). Checked: the C encoder's choice is the
reference's best profile (its error no larger, the same index where the best is clear), its codes are the
nearest levels, the decoder reproduces scale × level exactly, the dot product matches the decoded values, bad
tables are refused with a message, and non-finite or huge input never decodes to NaN/Inf.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

QK = 64
MAX_BITS = 6


def shape_levels(rng: np.random.Generator) -> list[np.ndarray]:
    """Codebooks for 1..6 bits: sorted normal quantiles with a little jitter (strictly ascending)."""
    from scipy.special import ndtri

    out = [np.zeros(1)]
    for b in range(1, MAX_BITS + 1):
        n = 1 << b
        lv = ndtri((np.arange(n) + 0.5) / n) + rng.uniform(-0.01, 0.01, n) / n
        out.append(np.sort(lv).astype(np.float32))
    return out


class KProf:
    def __init__(self, tq, bits: np.ndarray, scale: np.ndarray, levels: list[np.ndarray], block_bits: int):
        lib = tq.lib
        lib.tq_test_kprof_table_size.restype = ctypes.c_size_t
        lib.tq_kprof_init.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_void_p]
        lib.tq_kprof_init.restype = ctypes.c_bool
        lib.tq_kprof_quantize_block.argtypes = [ctypes.c_void_p] * 3
        lib.tq_kprof_quantize_block.restype = ctypes.c_float
        lib.tq_kprof_dequantize_block.argtypes = [ctypes.c_void_p] * 3
        lib.tq_kprof_dot_block.argtypes = [ctypes.c_void_p] * 3
        lib.tq_kprof_dot_block.restype = ctypes.c_float
        lib.tq_kprof_block_profile.argtypes = [ctypes.c_void_p] * 2
        lib.tq_kprof_block_profile.restype = ctypes.c_int32
        self.lib = lib
        self.buf = ctypes.create_string_buffer(lib.tq_test_kprof_table_size())
        self.bits = np.ascontiguousarray(bits, dtype=np.uint8)
        self.scale = np.ascontiguousarray(scale, dtype=np.float32)
        self.levels = levels
        self.block_bits = block_bits
        flat = np.ascontiguousarray(np.concatenate(levels[1:]), dtype=np.float32)
        self.ok = lib.tq_kprof_init(self.buf, len(self.bits), block_bits, self.bits.ctypes.data,
                                    self.scale.ctypes.data, flat.ctypes.data)

    @property
    def index_bits(self) -> int:
        return int(np.ceil(np.log2(len(self.bits)))) if len(self.bits) > 1 else 0

    def quantize(self, x: np.ndarray) -> tuple[bytes, float]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = ctypes.create_string_buffer(self.block_bits // 8)
        err = self.lib.tq_kprof_quantize_block(self.buf, x.ctypes.data, out)
        return out.raw, float(err)

    def dequantize(self, block: bytes) -> np.ndarray:
        y = np.empty(QK, dtype=np.float32)
        self.lib.tq_kprof_dequantize_block(self.buf, block, y.ctypes.data)
        return y

    def dot(self, block: bytes, q: np.ndarray) -> float:
        q = np.ascontiguousarray(q, dtype=np.float32)
        return float(self.lib.tq_kprof_dot_block(self.buf, block, q.ctypes.data))

    def profile(self, block: bytes) -> int:
        return int(self.lib.tq_kprof_block_profile(self.buf, block))


# ---- the float64 reference ------------------------------------------------------------------------

def read_bits(block: bytes, pos: int, n: int) -> int:
    stream = np.unpackbits(np.frombuffer(block, dtype=np.uint8), bitorder="little")
    return int(sum(int(stream[pos + i]) << i for i in range(n)))


def ref_decode(k: KProf, block: bytes) -> tuple[int, np.ndarray, np.ndarray]:
    """(profile, codes, values as float32 scale × level) parsed from the bit stream."""
    p = read_bits(block, 0, k.index_bits)
    p = p if p < len(k.bits) else 0
    codes = np.zeros(QK, dtype=np.int64)
    y = np.zeros(QK, dtype=np.float32)
    pos = k.index_bits
    for j, b in enumerate(k.bits[p]):
        if b:
            codes[j] = read_bits(block, pos, int(b))
            y[j] = np.float32(k.scale[p, j]) * np.float32(k.levels[b][codes[j]])
            pos += int(b)
    return p, codes, y


def ref_errors(k: KProf, x: np.ndarray) -> np.ndarray:
    """Squared error of each profile in float64, every coordinate at its nearest level."""
    x = np.where(np.isfinite(x), x, 0.0).astype(np.float64)
    errs = np.zeros(len(k.bits))
    for p in range(len(k.bits)):
        e = 0.0
        for j, b in enumerate(k.bits[p]):
            if b:
                vals = np.float64(k.scale[p, j]) * k.levels[b].astype(np.float64)
                e += float(np.min((x[j] - vals) ** 2))
            else:
                e += float(x[j] ** 2)
        errs[p] = e
    return errs


def random_table(rng: np.random.Generator, n_profiles: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    block_bits = QK * width + 16
    idx = int(np.ceil(np.log2(n_profiles))) if n_profiles > 1 else 0
    bits = np.zeros((n_profiles, QK), dtype=np.uint8)
    for p in range(n_profiles):
        for _ in range(block_bits - idx):  # one bit at a time to random coordinates below the cap
            free = np.flatnonzero(bits[p] < MAX_BITS)
            bits[p, rng.choice(free)] += 1
    scale = np.exp(rng.normal(0.0, 1.0, (n_profiles, QK))).astype(np.float32)
    return bits, scale, block_bits


@pytest.fixture(scope="module")
def levels() -> list[np.ndarray]:
    return shape_levels(np.random.default_rng(0))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), n_profiles=st.sampled_from([1, 2, 3, 17, 90]), width=st.sampled_from([2, 3]))
def test_encoder_keeps_the_best_profile_and_the_nearest_levels(tq, levels, seed, n_profiles, width) -> None:
    rng = np.random.default_rng(seed)
    bits, scale, block_bits = random_table(rng, n_profiles, width)
    k = KProf(tq, bits, scale, levels, block_bits)
    assert k.ok
    for _ in range(8):
        # rows drawn from one of the profiles' scales, so that the best profile is usually clear
        src = rng.integers(n_profiles)
        x = (rng.standard_normal(QK) * scale[src]).astype(np.float32)
        block, err = k.quantize(x)
        assert len(block) == block_bits // 8
        p, codes, y_ref = ref_decode(k, block)
        errs = ref_errors(k, x)
        got = float(((x.astype(np.float64) - y_ref) ** 2).sum())
        assert got <= errs.min() * (1 + 1e-5) + 1e-30
        assert err == pytest.approx(got, rel=1e-4, abs=1e-30)
        order = np.sort(errs)
        if len(order) == 1 or order[1] > order[0] * (1 + 1e-4):
            assert p == int(np.argmin(errs))
        assert k.profile(block) == p
        np.testing.assert_array_equal(k.dequantize(block), y_ref)
        q = rng.standard_normal(QK).astype(np.float32)
        assert k.dot(block, q) == pytest.approx(float(q.astype(np.float64) @ y_ref), rel=1e-4, abs=1e-4)


def test_index_and_code_bits_fill_the_stream(tq, levels) -> None:
    rng = np.random.default_rng(5)
    for n_profiles, index_bits in ((1, 0), (2, 1), (90, 7), (1024, 10)):
        bits, scale, block_bits = random_table(rng, n_profiles, 2)
        k = KProf(tq, bits, scale, levels, block_bits)
        assert k.ok and k.index_bits == index_bits
        x = (rng.standard_normal(QK) * scale[n_profiles - 1]).astype(np.float32)
        block, _ = k.quantize(x)
        p, codes, _ = ref_decode(k, block)
        # the stream is exactly index + codes, nothing after them
        used = index_bits + int(bits[p].sum())
        stream = np.unpackbits(np.frombuffer(block, dtype=np.uint8), bitorder="little")
        assert not stream[used:].any()


def test_a_profiles_own_values_come_back_exactly(tq, levels) -> None:
    rng = np.random.default_rng(7)
    bits, scale, block_bits = random_table(rng, 5, 3)
    bits[2] = 0
    bits[2, :] = 2  # 128 bits for profile 2, every coordinate coded
    k = KProf(tq, bits, scale, levels, block_bits)
    assert k.ok
    x = scale[2] * levels[2][rng.integers(0, 4, QK)]
    block, err = k.quantize(x.astype(np.float32))
    assert err == 0.0
    np.testing.assert_array_equal(k.dequantize(block), x.astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e38, -3e38])
def test_non_finite_and_huge_input_decodes_finite(tq, levels, bad) -> None:
    rng = np.random.default_rng(11)
    bits, scale, block_bits = random_table(rng, 4, 2)
    k = KProf(tq, bits, scale, levels, block_bits)
    x = rng.standard_normal(QK).astype(np.float32)
    x[rng.integers(QK, size=5)] = bad
    block, _ = k.quantize(x)
    assert np.isfinite(k.dequantize(block)).all()
    if not np.isfinite(bad):  # coded as 0: the error is that of the finite values only
        p, _, y = ref_decode(k, block)
        assert p == int(np.argmin(ref_errors(k, x)))


def test_zero_filled_block_decodes_finite(tq, levels) -> None:
    rng = np.random.default_rng(13)
    bits, scale, block_bits = random_table(rng, 3, 2)
    k = KProf(tq, bits, scale, levels, block_bits)
    y = k.dequantize(bytes(block_bits // 8))
    assert np.isfinite(y).all() and k.profile(bytes(block_bits // 8)) == 0


def _bad_tables(levels):
    rng = np.random.default_rng(17)
    bits, scale, block_bits = random_table(rng, 3, 2)
    over = bits.copy()
    over[1, np.flatnonzero(over[1] < MAX_BITS)[0]] += 1  # one bit past the budget
    seven = bits.copy()
    seven[0, 0] = 7
    zero_scale = scale.copy()
    zero_scale[2, 5] = 0.0
    nan_scale = scale.copy()
    nan_scale[0, 0] = np.nan
    huge_scale = scale.copy()
    huge_scale[0, 0] = 3e38
    flat_levels = [lv.copy() for lv in levels]
    flat_levels[3][4] = flat_levels[3][3]
    return [
        ("profile 1 needs 145 bits", over, scale, levels, block_bits),
        ("7 bits, at most 6", seven, scale, levels, block_bits),
        ("scale 0", bits, zero_scale, levels, block_bits),
        ("scale nan", bits, nan_scale, levels, block_bits),
        ("scale 3e+38", bits, huge_scale, levels, block_bits),
        ("3-bit codebook is not finite and strictly ascending", bits, scale, flat_levels, block_bits),
        ("a block of 100 bits", bits, scale, levels, 100),
        ("0 profiles", bits[:0], scale[:0], levels, block_bits),
        ("1025 profiles", np.repeat(bits[:1], 1025, axis=0), np.repeat(scale[:1], 1025, axis=0), levels, block_bits),
    ]


def test_bad_tables_are_refused_with_the_reason(tq, levels, capfd) -> None:
    for message, bits, scale, lv, block_bits in _bad_tables(levels):
        k = KProf(tq, bits, scale, lv, block_bits)
        assert not k.ok, message
        assert message in capfd.readouterr().err, message


def test_generation_changes_with_every_table_set_and_not_with_a_refused_one(tq, levels, capfd) -> None:
    """tq_kprof_active_generation tells a copy elsewhere (the CUDA backend's device tables) that it is stale."""
    lib = tq.lib
    lib.tq_kprof_active_generation.restype = ctypes.c_uint32
    lib.tq_kprof_active_generation.argtypes = [ctypes.c_int]
    for fn in (lib.tq_kprof_set_active, lib.tq_kprof_hold):
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p]
        fn.restype = ctypes.c_bool
    lib.tq_kprof_release.argtypes = [ctypes.c_int]
    a = KProf(tq, np.full((2, QK), 2), np.ones((2, QK)), levels, QK * 2 + 16)
    b = KProf(tq, np.full((2, QK), 2), np.full((2, QK), 2.0), levels, QK * 2 + 16)
    assert a.ok and b.ok
    g2, g3 = lib.tq_kprof_active_generation(2), lib.tq_kprof_active_generation(3)
    try:
        assert lib.tq_kprof_hold(2, a.buf, b"a")
        held = lib.tq_kprof_active_generation(2)
        assert held != g2 and lib.tq_kprof_active_generation(3) == g3
        assert not lib.tq_kprof_set_active(2, b.buf, b"b")  # refused while held: the table and its generation stay
        assert "cannot replace it" in capfd.readouterr().err
        assert lib.tq_kprof_active_generation(2) == held
    finally:
        lib.tq_kprof_release(2)
    assert lib.tq_kprof_set_active(2, b.buf, b"b")
    assert lib.tq_kprof_active_generation(2) not in (g2, held)
    assert lib.tq_kprof_set_active(2, None, None)  # back to the built-in table: the shared library's state as found
    assert lib.tq_kprof_active_generation(2) not in (g2, held)
