"""ktqp2/3 (LLAMA_TQ_K_PROFILES): keys folded by their queries, coded by a table of bit profiles.

The checks: the ggml types with the built-in table decode as a float64 reference of that table (best profile,
nearest levels) and dot from their codes; `tq-calibrate k-profiles` writes factors that are equal within every
RoPE pair and tables within the block's bits; with the file the cache beats ktqN at the same size on the test
model, survives a context shift (a factor per pair commutes with RoPE), and every misuse is refused at context
creation with a message that names it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from llama_tq import codecs
from llama_tq.calibrate.k_means import ENV as K_MEANS_ENV
from llama_tq.calibrate.k_means import model_rope
from llama_tq.calibrate.k_profiles import (
    ENV,
    KProfiles,
    allocate,
    allocate_units,
    fit_levels,
    read_k_profiles,
    write_k_profiles,
)

from .logits import kld
from .test_k_centering import N_CTX, _text

DEFAULT_PROFILES = 16  # TQ_KPROF_DEFAULT_PROFILES
DEFAULT_SCALE0 = 1.0 / 64.0  # TQ_KPROF_DEFAULT_SCALE0


@pytest.fixture
def env_k_profiles():
    """Set LLAMA_TQ_K_PROFILES for the contexts created inside the test; after it, unset it and put the
    built-in tables back (a context that read a file left its tables active, process-wide)."""
    saved = {name: os.environ.get(name) for name in (ENV, K_MEANS_ENV)}

    def set_(path: Path | None, name: str = ENV) -> None:
        if path is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(path)

    yield set_
    import gc

    from llama_tq import _core

    for name, value in saved.items():
        set_(None if value is None else Path(value), name)
    gc.collect()  # contexts a failed test's traceback kept
    for w in (2, 3):
        if _core.kprof_source(w) != "built-in":
            _core.kprof_use_builtin(w)


# ---- the built-in table against float64 -------------------------------------------------------------


def gaussian_levels(n: int) -> np.ndarray:
    """Lloyd-Max levels of the unit Gaussian (scipy), float64."""
    lv = np.linspace(-3, 3, n + 2)[1:-1]
    for _ in range(5000):
        edges = np.concatenate([[-np.inf], (lv[1:] + lv[:-1]) / 2, [np.inf]])
        mass = np.diff(stats.norm.cdf(edges))
        new = -np.diff(stats.norm.pdf(edges)) / mass
        if np.max(np.abs(new - lv)) < 1e-13:
            break
        lv = new
    return new


def reference_decode(x: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of x [n, 64] through the built-in table: (decoded [n, 64], squared error of the best profile)."""
    lv = gaussian_levels(2**width)
    best = np.full(len(x), np.inf)
    out = np.zeros_like(x)
    for p in range(DEFAULT_PROFILES):
        s = DEFAULT_SCALE0 * 2.0 ** (p / 2)
        y = lv[np.abs(x[..., None] / s - lv).argmin(axis=-1)] * s
        e = ((y - x) ** 2).sum(axis=1)
        better = e < best
        best[better], out[better] = e[better], y[better]
    return out, best


@pytest.mark.parametrize("width", [2, 3])
def test_builtin_table_decodes_as_the_reference(core, width: int) -> None:
    core.kprof_use_builtin(width)
    assert core.kprof_source(width) == "built-in"
    rng = np.random.default_rng(width)
    x = (rng.standard_normal((400, 64)) * rng.uniform(0.005, 3.0, (400, 1))).astype(np.float32)
    got = codecs.round_trip(f"ktqp{width}", x).astype(np.float64)
    ref, ref_err = reference_decode(x.astype(np.float64), width)
    err = ((got - x) ** 2).sum(axis=1)
    # float32 arithmetic may pick another profile on a near tie, never a clearly worse one
    assert np.all(err <= ref_err * (1 + 1e-4) + 1e-9)
    same = np.all(np.isclose(got, ref, rtol=1e-5, atol=1e-7), axis=1)
    assert same.mean() > 0.98, same.mean()
    assert codecs.bits_per_element(f"ktqp{width}") == pytest.approx(width + 0.25)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-3, 1e3), width=st.sampled_from([2, 3]))
def test_dot_from_codes_equals_the_decoded_dot(core, seed: int, scale: float, width: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 128)) * scale).astype(np.float32)
    y = rng.standard_normal(128).astype(np.float32)
    data = codecs.quantize(f"ktqp{width}", x)
    dec = codecs.dequantize(f"ktqp{width}", data, 128).astype(np.float64)
    got = codecs.vec_dot(f"ktqp{width}", data, y)
    np.testing.assert_allclose(got, dec @ y.astype(np.float64), rtol=1e-4, atol=1e-4 * np.abs(dec).sum(axis=1).max())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e38])
def test_non_finite_input_decodes_finite(core, bad: float) -> None:
    x = np.ones((2, 64), dtype=np.float32)
    x[0, 5] = bad
    got = codecs.round_trip("ktqp2", x)
    assert np.isfinite(got).all()


# ---- the allocation ---------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), budget=st.integers(0, 40))
def test_unit_allocation_keeps_the_budget_and_matches_the_uniform_one(seed: int, budget: int) -> None:
    rng = np.random.default_rng(seed)
    mse = np.sort(rng.uniform(0, 1, (7, 6)), axis=0)[::-1]  # decreasing in bits
    w = rng.uniform(0.1, 2, 6)
    cost = rng.integers(1, 3, 6)
    bits = allocate_units(mse, w, cost, budget)
    assert int((bits * cost).sum()) <= budget and bits.max() <= 6
    # nothing left that would still fit
    assert not np.any((bits < 6) & (cost <= budget - int((bits * cost).sum())))
    np.testing.assert_array_equal(allocate(mse, w, budget, 2), allocate_units(mse, w, np.full(6, 2), budget))


# ---- the calibration file ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k_profiles_file(core, model_path, tmp_path_factory) -> Path:
    """tq-calibrate k-profiles on 2 windows of 256 tokens from the start of the text."""
    from llama_tq.calibrate.cli import main

    d = tmp_path_factory.mktemp("k_profiles")
    text = d / "cal.txt"
    text.write_text(_text(0, 8_000), encoding="utf-8")
    out = d / "smol.kprof.gguf"
    assert main(["-q", "k-profiles", model_path, str(text), "-o", str(out), "-c", "256", "--chunks", "2"]) == 0
    return out


def test_calibration_file(model, k_profiles_file) -> None:
    arch, kp = read_k_profiles(k_profiles_file)
    _, rp = model_rope(model)
    assert arch == "llama" and sorted(kp.folds) == list(range(30)) and sorted(kp.tables) == [2, 3]
    i0, i1 = rp.pairs()
    for a in kp.folds.values():
        assert a.shape == (3, 64) and np.all(a > 0)
        np.testing.assert_array_equal(a[:, i0], a[:, i1])
        np.testing.assert_allclose((a**2).mean(axis=1), 1.0, rtol=1e-5)  # λ_j / mean λ
    for w, t in kp.tables.items():
        assert len(t.bits) == 30 * 3  # one profile per layer, KV head and block
        assert np.all(t.bits.sum(axis=1) + t.index_bits <= 64 * w + 16)
        assert np.all(t.bits.sum(axis=1) + t.index_bits >= 64 * w + 15)  # pairs: at most one bit unspent
        np.testing.assert_array_equal(t.bits[:, i0], t.bits[:, i1])


def test_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    levels, _ = fit_levels(rng.standard_normal(4000))
    from llama_tq.calibrate.k_profiles import ProfileTable

    t = ProfileTable(rng.integers(0, 4, (5, 64)), rng.uniform(0.5, 2, (5, 64)), levels)
    kp = KProfiles({0: rng.uniform(0.5, 2, (2, 64)), 1: rng.uniform(0.5, 2, (2, 64))}, {2: t})
    write_k_profiles(tmp_path / "k.gguf", "llama", kp, "t", 7)
    arch, back = read_k_profiles(tmp_path / "k.gguf")
    assert arch == "llama" and sorted(back.tables) == [2]
    np.testing.assert_allclose(back.folds[1], kp.folds[1], rtol=1e-6)
    np.testing.assert_array_equal(back.tables[2].bits, t.bits)
    np.testing.assert_allclose(back.tables[2].scale, t.scale, rtol=1e-6)
    for b in range(1, 7):
        np.testing.assert_allclose(back.tables[2].levels[b], levels[b], rtol=1e-6)


# ---- the cache ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(model) -> list[int]:
    return model.tokenize(_text(200_000, 12_000))


def _logits(core, model, tokens, type_k: str, shift: bool = False) -> np.ndarray:
    ctx = core.Context(model, n_ctx=N_CTX, n_batch=N_CTX, type_k=type_k, type_v="f16", flash_attn=True)
    out = ctx.decode(tokens[:200])
    if not shift:
        return out
    ctx.context_shift(4, 120)
    return ctx.decode(tokens[200:260])


@pytest.mark.parametrize("width", [2, 3])
def test_ktqp_beats_ktq_at_the_same_size(core, model, tokens, k_profiles_file, env_k_profiles, width: int) -> None:
    env_k_profiles(None)
    ref = _logits(core, model, tokens, "f16")
    plain = kld(ref, _logits(core, model, tokens, f"ktq{width}"))
    env_k_profiles(k_profiles_file)
    folded = kld(ref, _logits(core, model, tokens, f"ktqp{width}"))
    assert core.kprof_source(width) == str(k_profiles_file)
    assert folded < 0.6 * plain, (plain, folded)


def test_context_shift(core, model, tokens, k_profiles_file, env_k_profiles) -> None:
    """The K shift re-ropes the folded keys as they are: right only because a factor per pair commutes with
    RoPE. ktqp3 after the shift stays as close to f16 as ktq3 does, far from what a broken shift gives."""
    env_k_profiles(None)
    ref = _logits(core, model, tokens, "f16", shift=True)
    plain = kld(ref, _logits(core, model, tokens, "ktq3", shift=True))
    env_k_profiles(k_profiles_file)
    folded = kld(ref, _logits(core, model, tokens, "ktqp3", shift=True))
    assert folded < plain, (plain, folded)


def _refused(core, model, type_k: str = "ktqp2", type_v: str = "vtq2") -> str:
    with pytest.raises(RuntimeError) as e:
        core.Context(model, n_ctx=256, type_k=type_k, type_v=type_v, flash_attn=True)
    return str(e.value)


def test_misuse_is_refused(core, model, k_profiles_file, env_k_profiles, tmp_path: Path) -> None:
    env_k_profiles(None)
    assert "LLAMA_TQ_K_PROFILES=<file from `tq-calibrate k-profiles" in _refused(core, model)
    env_k_profiles(k_profiles_file)
    assert "is a K-cache type" in _refused(core, model, "f16", "ktqp2")

    arch, kp = read_k_profiles(k_profiles_file)
    write_k_profiles(tmp_path / "arch.gguf", "gpt2", kp, "t", 1)
    env_k_profiles(tmp_path / "arch.gguf")
    assert "architecture 'gpt2'" in _refused(core, model)

    pair = KProfiles({k: v.copy() for k, v in kp.folds.items()}, kp.tables)
    pair.folds[4][1, 0] *= 1.5  # one value of the RoPE pair (0, 1)
    write_k_profiles(tmp_path / "pair.gguf", arch, pair, "t", 1)
    env_k_profiles(tmp_path / "pair.gguf")
    assert "k_fold.4, head 1: values 0 and 1 differ" in _refused(core, model)

    write_k_profiles(tmp_path / "w2.gguf", arch, KProfiles(kp.folds, {2: kp.tables[2]}), "t", 1)
    env_k_profiles(tmp_path / "w2.gguf")
    assert "has no ktqp3 table" in _refused(core, model, "ktqp3")

    write_k_profiles(tmp_path / "missing.gguf", arch, KProfiles({k: v for k, v in kp.folds.items() if k != 7},
                                                                kp.tables), "t", 1)
    env_k_profiles(tmp_path / "missing.gguf")
    assert "no k_fold.7" in _refused(core, model)

    (tmp_path / "junk.gguf").write_bytes(b"junk" * 40)
    env_k_profiles(tmp_path / "junk.gguf")
    assert "not a readable GGUF" in _refused(core, model)

    from llama_tq.calibrate.k_means import write_means

    write_means(tmp_path / "means.gguf", arch, {il: np.zeros((3, 64)) for il in range(30)}, "t", 1)
    env_k_profiles(k_profiles_file)
    env_k_profiles(tmp_path / "means.gguf", K_MEANS_ENV)
    assert "ktqp2: not with K centering (LLAMA_TQ_K_MEANS)" in _refused(core, model)


def test_a_live_cache_keeps_its_table(core, model, k_profiles_file, env_k_profiles, tmp_path: Path) -> None:
    """The tables are process-wide; a cache's blocks decode with the table it was written with, so while a ktqp
    cache lives no other context may bring a different table (the same one is fine)."""
    arch, kp = read_k_profiles(k_profiles_file)
    other = {w: type(t)(t.bits, t.scale * 1.5, t.levels) for w, t in kp.tables.items()}
    write_k_profiles(tmp_path / "other.gguf", arch, KProfiles(kp.folds, other), "t", 1)
    env_k_profiles(k_profiles_file)
    first = core.Context(model, n_ctx=256, type_k="ktqp2", type_v="f16", flash_attn=True)
    second = core.Context(model, n_ctx=256, type_k="ktqp2", type_v="f16", flash_attn=True)  # the same file
    env_k_profiles(tmp_path / "other.gguf")
    assert "another live context's cache holds a different one" in _refused(core, model)
    with pytest.raises(RuntimeError, match="live cache"):
        core.kprof_use_builtin(2)
    assert core.kprof_source(2) == str(k_profiles_file)
    del first, second
    import gc

    gc.collect()
    core.Context(model, n_ctx=256, type_k="ktqp2", type_v="f16", flash_attn=True)
    assert core.kprof_source(2) == str(tmp_path / "other.gguf")


@pytest.mark.parametrize("head_dim", [128, 256])
def test_larger_heads(core, model_path, tmp_path: Path, env_k_profiles, head_dim: int) -> None:
    """Heads of 128/256 values: a profile per 64-value block of every head, and the cache receives K times the
    factors exactly (no rotation), which the folded queries undo: logits stay close to f16's."""
    from llama_tq.calibrate.cli import main

    from ..tiny_models import write_tiny_llama

    tiny_path = write_tiny_llama(tmp_path / "tiny.gguf", model_path, head_dim=head_dim)
    text = tmp_path / "cal.txt"
    text.write_text(_text(0, 6_000), encoding="utf-8")
    out = tmp_path / "tiny.kprof.gguf"
    assert main(["-q", "k-profiles", str(tiny_path), str(text), "-o", str(out), "-c", "128", "--chunks", "2"]) == 0
    _, kp = read_k_profiles(out)
    assert {w: len(t.bits) for w, t in kp.tables.items()} == {2: 2 * head_dim // 64, 3: 2 * head_dim // 64}
    tiny = core.Model(str(tiny_path))
    toks = tiny.tokenize("The quick brown fox jumps over the lazy dog. " * 3)
    env_k_profiles(None)
    ref = core.Context(tiny, n_ctx=256, n_batch=64, type_k="f16", type_v="f16", flash_attn=True, collect_kv=True)
    plain = ref.collect_kv(toks)
    env_k_profiles(out)
    ctx = core.Context(tiny, n_ctx=256, n_batch=64, type_k="ktqp3", type_v="f16", flash_attn=True, collect_kv=True)
    folded = ctx.collect_kv(toks)
    # layer 0 only: the keys of layer 1 already depend on layer 0's attention over the quantized cache
    np.testing.assert_allclose(folded["k.0"], plain["k.0"] * kp.folds[0].reshape(1, -1).astype(np.float32),
                               rtol=1e-5, atol=1e-6)
    ref.reset()
    ctx.reset()
    assert kld(ref.decode(toks), ctx.decode(toks)) < 0.05
