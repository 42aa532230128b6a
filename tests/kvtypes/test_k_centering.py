"""K centering (LLAMA_TQ_K_MEANS): the math against float64 numpy, the file, and what the cache stores.

The runtime subtracts c = mean over the cache's positions of RoPE_p(m) (then attn_rot's Hadamard when the
cache is rotated) from every K row; attention is unchanged because the softmax cancels q·c. The checks:
the C closed form of c and the Hadamard against numpy; the estimator recovers a planted mean; the rows the
cache receives are exactly K - c; the logits do not move (f16 cache, also across a context shift, where
the mean must be added back around the RoPE); a ktq2 cache gets closer to the f16 logits; bad files are
refused at context creation with a message that names the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_tq.calibrate.k_means import (
    ENV,
    RopeParams,
    estimate_means,
    hadamard_rows,
    model_rope,
    position_mean,
    read_means,
    rope,
    write_means,
)

from .logits import kld

N_CTX = 512
TEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "brown.txt"


def _text(start: int, n_chars: int) -> str:
    if TEXT.exists():
        return TEXT.read_text(encoding="utf-8")[start:start + n_chars]
    rng = np.random.default_rng(start)
    words = ["the", "of", "and", "a", "in", "was", "he", "that", "it", "his", "for", "on", "with", "as"]
    return " ".join(rng.choice(words, n_chars // 4))


@pytest.fixture
def env_k_means():
    """Set LLAMA_TQ_K_MEANS for the contexts created inside the test, restore it after."""
    saved = os.environ.get(ENV)

    def set_(path: Path | None) -> None:
        if path is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = str(path)

    yield set_
    set_(None if saved is None else Path(saved))


@pytest.fixture(scope="module")
def tokens(model) -> list[int]:
    return model.tokenize(_text(200_000, 12_000))


@pytest.fixture(scope="module")
def k_means_file(core, model, model_path, tmp_path_factory) -> Path:
    """Means of the test model from one window of 256 tokens (calibration text apart from the test text)."""
    from llama_tq.calibrate.k_means import env_without

    toks = model.tokenize(_text(0, 8_000))[:256]
    with env_without(ENV):
        ctx = core.Context(model, n_ctx=256, n_batch=256, type_k="ktq4", type_v="vtq4", flash_attn=True,
                           collect_kv=True)
        rows = ctx.collect_kv(toks)
    arch, rp = model_rope(model)
    path = tmp_path_factory.mktemp("k_means") / "smol.kmeans.gguf"
    write_means(path, arch, estimate_means(rows, 256, model.info["n_head_kv"], rp), Path(model_path).name, 256)
    return path


# ---- the math against float64 numpy -----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n_embd=st.sampled_from([64, 128]),
    partial=st.booleans(),
    neox=st.booleans(),
    base=st.floats(100.0, 1e6),
    scale=st.sampled_from([1.0, 0.5, 0.25]),
    n_pos=st.integers(1, 2500),
    seed=st.integers(0, 2**31),
)
def test_rope_position_mean_matches_numpy(core, n_embd, partial, neox, base, scale, n_pos, seed) -> None:
    mu = np.random.default_rng(seed).normal(0, 3, (2, n_embd)).astype(np.float32)
    p = RopeParams(n_rot=n_embd // 2 if partial else n_embd, neox=neox, freq_base=base, freq_scale=scale)
    got = core.rope_position_mean(mu, p.n_rot, neox, base, scale, n_pos)
    want = position_mean(mu, p, n_pos)  # brute force: the average of n_pos RoPE turns
    np.testing.assert_allclose(got, want, atol=2e-5 * float(np.abs(mu).max()) + 1e-6)
    if partial:  # values past n_rot are not turned
        np.testing.assert_array_equal(got[:, p.n_rot:], mu[:, p.n_rot:])


@pytest.mark.parametrize("nrot", [64, 128])
def test_hadamard_blocks_matches_scipy(core, nrot: int) -> None:
    x = np.random.default_rng(nrot).normal(size=(3, 256)).astype(np.float32)
    np.testing.assert_allclose(core.hadamard_blocks(x, nrot), hadamard_rows(x, nrot), atol=1e-5)
    np.testing.assert_allclose(hadamard_rows(hadamard_rows(x, nrot), nrot), x, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(neox=st.booleans(), n_rot=st.sampled_from([32, 64]), seed=st.integers(0, 2**31))
def test_rope_undo_inverts_rope(neox: bool, n_rot: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(50, 2, 64))
    pos = rng.integers(0, 100_000, 50).astype(np.float64)
    p = RopeParams(n_rot=n_rot, neox=neox, freq_base=10_000.0, freq_scale=1.0)
    np.testing.assert_allclose(rope(rope(x, pos, p), pos, p, sign=-1.0), x, atol=1e-9)


def test_estimate_recovers_a_planted_mean() -> None:
    """Keys = m + noise, RoPE'd at window positions and rotated as the cache receives them -> m back."""
    rng = np.random.default_rng(7)
    n_ctx, n_win, n_head, hd = 128, 8, 2, 64
    m = rng.normal(0, 4, (n_head, hd))
    p = RopeParams(n_rot=hd, neox=False, freq_base=10_000.0, freq_scale=1.0)
    pre = m + rng.normal(0, 1, (n_ctx * n_win, n_head, hd))
    post = rope(pre, np.tile(np.arange(n_ctx, dtype=np.float64), n_win), p)
    rows = hadamard_rows(post.reshape(n_ctx * n_win, -1), 64)
    est = estimate_means({"k.3": rows, "v.3": rows}, n_ctx, n_head, p)
    assert set(est) == {3}
    np.testing.assert_allclose(est[3], m, atol=5.0 / np.sqrt(n_ctx * n_win))


def test_file_round_trip(tmp_path: Path) -> None:
    means = {0: np.arange(6, dtype=np.float32).reshape(2, 3), 5: -np.ones((2, 3), np.float32)}
    write_means(tmp_path / "m.gguf", "llama", means, "test", 10)
    arch, back = read_means(tmp_path / "m.gguf")
    assert arch == "llama" and set(back) == {0, 5}
    for il in means:
        np.testing.assert_array_equal(back[il], means[il])
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary left behind


# ---- the runtime ------------------------------------------------------------------------------------


def test_cache_receives_k_minus_c(core, model, tokens, k_means_file, env_k_means) -> None:
    """Rows into a ktq4 cache (rotated) and an f16 cache (not rotated) are K minus the expected constant."""
    arch, means = read_means(k_means_file)
    _, rp = model_rope(model)
    for type_k, rotated in (("ktq4", True), ("f16", False)):
        got = {}
        for on in (False, True):
            env_k_means(k_means_file if on else None)
            ctx = core.Context(model, n_ctx=N_CTX, n_batch=64, type_k=type_k, type_v="f16", flash_attn=True,
                               collect_kv=True)
            got[on] = ctx.collect_kv(tokens[:64])
            if on:  # a cleared cache (llama-perplexity clears it per chunk) keeps its means
                ctx.reset()
                again = ctx.collect_kv(tokens[:64])
                for key in ("k.0", "k.29"):
                    np.testing.assert_array_equal(again[key], got[on][key])
        for il in (0, 7, 29):
            c = position_mean(means[il], rp, N_CTX).reshape(-1)
            if rotated:
                c = hadamard_rows(c, 64)
            # layer 0's K does not depend on attention: every row; deeper layers: the first token (attention over
            # one key is exact; later tokens pass through the weights' 8-bit activation rounding, which turns the
            # rounding differences of attention into small jumps)
            n = 64 if il == 0 else 1
            diff = got[False][f"k.{il}"][:n].astype(np.float64) - got[True][f"k.{il}"][:n]
            np.testing.assert_allclose(diff, np.broadcast_to(c, diff.shape), atol=1e-4 * np.abs(c).max() + 1e-5)
        np.testing.assert_array_equal(got[False]["v.0"], got[True]["v.0"])


def _logits(core, model, tokens, type_k: str, shift: bool) -> np.ndarray:
    ctx = core.Context(model, n_ctx=N_CTX, n_batch=N_CTX, type_k=type_k, type_v="f16", flash_attn=True)
    ctx.decode(tokens[:8])
    ctx.reset()  # what llama-perplexity does between chunks
    out = ctx.decode(tokens[:200])
    if not shift:
        return out
    ctx.context_shift(4, 120)  # positions 124..199 move to 4..79: the K shift re-ropes them
    return ctx.decode(tokens[200:260])


@pytest.mark.parametrize("shift", [False, True], ids=["decode", "after-context-shift"])
def test_attention_does_not_move(core, model, tokens, k_means_file, env_k_means, shift: bool) -> None:
    """f16 cache: centering changes only rounding, which this model amplifies (the weights' 8-bit activation
    rounding turns tiny differences into jumps): KLD ~0.005 here, f16 vs f32 KV gives ~0.004. A K shift that
    does not add the mean back around its RoPE gave 0.043 (measured with that step switched off); the bound
    sits between, with room for other SIMD paths."""
    env_k_means(None)
    off = _logits(core, model, tokens, "f16", shift)
    env_k_means(k_means_file)
    on = _logits(core, model, tokens, "f16", shift)
    assert kld(off, on) < 0.02


def test_ktq2_gets_closer_to_f16(core, model, tokens, k_means_file, env_k_means) -> None:
    env_k_means(None)
    ref = _logits(core, model, tokens, "f16", False)
    plain = kld(ref, _logits(core, model, tokens, "ktq2", False))
    env_k_means(k_means_file)
    centered = kld(ref, _logits(core, model, tokens, "ktq2", False))
    assert centered < 0.85 * plain, (plain, centered)


def _refused(core, model, path: Path, env_k_means) -> str:
    env_k_means(path)
    with pytest.raises(RuntimeError) as e:
        core.Context(model, n_ctx=256, type_k="ktq2", type_v="vtq2", flash_attn=True)
    return str(e.value)


def test_bad_files_are_refused(core, model, k_means_file, env_k_means, tmp_path: Path) -> None:
    arch, means = read_means(k_means_file)
    write_means(tmp_path / "arch.gguf", "gpt2", means, "t", 1)
    assert "architecture 'gpt2'" in _refused(core, model, tmp_path / "arch.gguf", env_k_means)

    write_means(tmp_path / "missing.gguf", arch, {k: v for k, v in means.items() if k != 3}, "t", 1)
    assert "no k_mean.3" in _refused(core, model, tmp_path / "missing.gguf", env_k_means)

    write_means(tmp_path / "shape.gguf", arch, {k: v[:, :32] for k, v in means.items()}, "t", 1)
    assert "k_mean.0 is [32, 3]" in _refused(core, model, tmp_path / "shape.gguf", env_k_means)

    bad = {k: v.copy() for k, v in means.items()}
    bad[2][1, 5] = np.nan
    write_means(tmp_path / "nan.gguf", arch, bad, "t", 1)
    assert "non-finite" in _refused(core, model, tmp_path / "nan.gguf", env_k_means)

    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all" * 10)
    assert "not a readable GGUF" in _refused(core, model, tmp_path / "junk.gguf", env_k_means)

    assert "absent.gguf: not a readable GGUF" in _refused(core, model, tmp_path / "absent.gguf", env_k_means)


# ---- tq-calibrate k-means ---------------------------------------------------------------------------


def test_calibrate_k_means_command(core, model_path, tmp_path: Path, capsys, env_k_means) -> None:
    from llama_tq.calibrate.cli import main

    text = tmp_path / "text.txt"
    text.write_text(_text(0, 4_000), encoding="utf-8")
    out = tmp_path / "smol.kmeans.gguf"
    env_k_means(out)  # a stale setting must not center the rows being measured (the file does not exist yet)
    assert main(["-q", "k-means", model_path, str(text), "-o", str(out), "-c", "128", "--chunks", "2"]) == 0
    arch, means = read_means(out)
    assert arch == "llama" and sorted(means) == list(range(30))
    assert all(m.shape == (3, 64) and np.isfinite(m).all() for m in means.values())
    assert "LLAMA_TQ_K_MEANS=" in capsys.readouterr().out

    assert main(["-q", "k-means", model_path, str(text), "-o", str(tmp_path / "x.npz")]) == 2
    assert "should end in .gguf" in capsys.readouterr().err
    assert main(["-q", "k-means", model_path, str(tmp_path / "none.txt"), "-o", str(out)]) == 2
    assert "cannot read text file" in capsys.readouterr().err


@pytest.mark.parametrize("head_dim", [128, 256])
def test_larger_heads_use_the_larger_rotation(core, model_path, tmp_path: Path, env_k_means, head_dim: int) -> None:
    """Heads of 128/256: attn_rot's K matrix is 128/256 wide, and so is the rotation of the constant."""
    from ..tiny_models import write_tiny_llama

    tiny = core.Model(str(write_tiny_llama(tmp_path / "tiny.gguf", model_path, head_dim=head_dim)))
    means = {il: np.random.default_rng(il).normal(0, 1, (1, head_dim)).astype(np.float32) for il in range(2)}
    write_means(tmp_path / "tiny.kmeans.gguf", "llama", means, "t", 1)
    toks = tiny.tokenize("The quick brown fox jumps over the lazy dog. " * 3)
    got = {}
    for on in (False, True):
        env_k_means(tmp_path / "tiny.kmeans.gguf" if on else None)
        ctx = core.Context(tiny, n_ctx=256, n_batch=64, type_k="ktq3", type_v="f16", flash_attn=True, collect_kv=True)
        got[on] = ctx.collect_kv(toks)
    _, rp = model_rope(tiny)
    c = hadamard_rows(position_mean(means[0], rp, 256).reshape(-1), head_dim)
    diff = got[False]["k.0"].astype(np.float64) - got[True]["k.0"]
    np.testing.assert_allclose(diff, np.broadcast_to(c, diff.shape), atol=1e-4 * np.abs(c).max() + 1e-5)


def test_context_shift_of_a_rotated_cache(core, model, tokens, k_means_file, env_k_means) -> None:
    """ktq4 (rotated) cache: the shift adds the mean back in the rotated domain; with centering the shifted
    cache stays closer to f16 than without (a wrong add-back would put a position-dependent offset on K)."""
    env_k_means(None)
    ref = _logits(core, model, tokens, "f16", True)
    plain = kld(ref, _logits(core, model, tokens, "ktq4", True))
    env_k_means(k_means_file)
    centered = kld(ref, _logits(core, model, tokens, "ktq4", True))
    assert centered < plain, (plain, centered)


def test_tensor_names_must_be_canonical(core, model, k_means_file, env_k_means, tmp_path: Path) -> None:
    import gguf

    arch, means = read_means(k_means_file)
    w = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), arch)
    w.add_uint32("llama_tq.k_means.version", 1)
    for il, m in means.items():
        w.add_tensor(f"k_mean.{il:02d}", m)  # k_mean.03 would never be found as k_mean.3
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert "unexpected tensor 'k_mean.00'" in _refused(core, model, tmp_path / "odd.gguf", env_k_means)
