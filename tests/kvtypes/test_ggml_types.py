"""The ktq/vtq types as llama.cpp sees them: ggml's type traits, the cache, and context creation.

The formats' own tests (tests/formats) check the C reference against a float64 numpy reference; these
check that the patched ggml reaches exactly that code, and that llama.cpp uses the types as a KV cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from llama_tq import codecs

from ..tiny_models import write_tiny_llama
from .logits import kld

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "formats"))
import reference as R  # noqa: E402  (the independent float64 numpy reference of the formats)

from llama_tq.calibrate.codebook_file import read_codebook  # noqa: E402

TQ_TYPES = [t.name for t in R.ALL_TYPES]
K_TYPES = ["ktq2", "ktq3", "ktq4"]
V_TYPES = [t for t in TQ_TYPES if t.startswith("vtq")]


@pytest.fixture(scope="module")
def default_tables() -> dict[str, np.ndarray]:
    cb = read_codebook(REPO / "src" / "ggml-tq" / "tq-codebooks-default.tqcb")
    tables = {}
    for t in R.ALL_TYPES:
        if t.kind == "codebook":
            tables[t.name] = np.asarray(cb[t.name if t.name.startswith("ktq") else t.name], dtype=np.float64)
        else:
            tables[t.name] = np.asarray(cb[f"trellis{t.bits}"], dtype=np.float64)
    return tables


def test_every_type_is_a_cache_type_with_its_size():
    names = codecs.cache_types()
    for t in R.ALL_TYPES:
        assert t.name in names
        assert codecs.bits_per_element(t.name) == pytest.approx(t.bits_per_element)
    for alias, real in (("vtq2", "vtq2_2"), ("vtq3", "vtq3_2"), ("vtq4", "vtq4_2")):
        from llama_tq import _core

        assert _core.type_info(alias)["name"] == real


@pytest.mark.parametrize("name", TQ_TYPES)
def test_ggml_decodes_as_the_reference(name, default_tables):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 256)).astype(np.float32) * rng.uniform(0.01, 10, size=(6, 1)).astype(np.float32)
    data = codecs.quantize(name, x)
    info = R.type_info(name)
    assert data.shape == (6, 256 // 64 * info.block_bytes)
    ours = codecs.dequantize(name, data, 256)
    for row in range(6):
        ref = R.dequantize_row(info, data[row].tobytes(), default_tables[name])
        np.testing.assert_allclose(ours[row], ref, rtol=1e-6, atol=1e-6)
    # and the round trip is a sensible approximation of the input
    rel = np.sum((ours - x) ** 2, axis=1) / np.sum(x**2, axis=1)
    assert np.all(rel < 0.2)


@pytest.mark.parametrize("name", TQ_TYPES)
def test_ggml_encodes_as_the_reference_for_codebook_types(name, default_tables):
    info = R.type_info(name)
    if info.kind != "codebook":
        pytest.skip("trellis encoders are compared by cost in tests/formats")
    x = np.random.default_rng(3).standard_normal((4, 128)).astype(np.float32)
    data = codecs.quantize(name, x)
    for row in range(4):
        assert data[row].tobytes() == R.quantize_row(info, x[row].astype(np.float64), default_tables[name])


@pytest.mark.parametrize("name", K_TYPES)
def test_ggml_k_dot_product_matches_float64(name, default_tables):
    rng = np.random.default_rng(11)
    k = rng.standard_normal((5, 128)).astype(np.float32)
    q = rng.standard_normal(128).astype(np.float32)
    data = codecs.quantize(name, k)
    ours = codecs.vec_dot(name, data, q)
    ref = [R.vec_dot(R.type_info(name), data[r].tobytes(), q.astype(np.float64), default_tables[name])
           for r in range(5)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(TQ_TYPES),
       x=arrays(np.float32, (2, 64), elements=st.floats(width=32, allow_nan=True, allow_infinity=True)))
def test_ggml_never_turns_rows_into_nan(name, x):
    out = codecs.round_trip(name, x)
    assert np.all(np.isfinite(out))


def test_zero_filled_cache_blocks_decode_to_zero():
    for name in TQ_TYPES:
        size = codecs.quantize(name, np.ones((1, 64), np.float32)).shape[1]
        assert np.all(codecs.dequantize(name, np.zeros((1, size), np.uint8), 64) == 0)


def test_bad_rows_are_python_errors():
    with pytest.raises(ValueError, match="multiple of 64"):
        codecs.quantize("ktq2", np.zeros((1, 96), np.float32))
    with pytest.raises(ValueError, match="unknown ggml type"):
        codecs.quantize("ktq5", np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError, match="no CPU dot product"):
        codecs.vec_dot("vtq2", codecs.quantize("vtq2", np.zeros((1, 64), np.float32)), np.zeros(64))


# ---- as a KV cache --------------------------------------------------------------------------------


@pytest.mark.parametrize("type_k,type_v", [("ktq2", "vtq2"), ("ktq3", "vtq3_1"), ("ktq4", "vtq4_3"),
                                           ("q8_0", "vtq2"), ("ktq4", "f16")])
def test_cache_bytes(core, model, type_k, type_v):
    info = model.info
    n_embd_kv = info["n_embd"] // info["n_head"] * info["n_head_kv"]
    ctx = core.Context(model, n_ctx=1024, n_batch=256, type_k=type_k, type_v=type_v, flash_attn=True)
    row = {name: codecs.quantize(name, np.zeros((1, n_embd_kv), np.float32)).shape[1] for name in (type_k, type_v)}
    assert ctx.memory_bytes() == info["n_layer"] * ctx.n_ctx * (row[type_k] + row[type_v])


def test_v_types_are_refused_as_k(core, model):
    with pytest.raises(RuntimeError, match="vtq2_2 is a V-cache type"):
        core.Context(model, n_ctx=256, type_k="vtq2", type_v="vtq2")


def test_head_size_the_types_cannot_serve_is_a_clear_error(core, model_path, tmp_path):
    path = write_tiny_llama(tmp_path / "hd96.gguf", model_path, head_dim=96)
    tiny = core.Model(str(path))
    core.Context(tiny, n_ctx=256, type_k="q8_0", type_v="q8_0", flash_attn=True)  # upstream types: fine
    with pytest.raises(RuntimeError, match="multiple of 64, but layer 0 has 96"):
        core.Context(tiny, n_ctx=256, type_k="ktq2", type_v="f16", flash_attn=True)
    with pytest.raises(RuntimeError, match="multiple of 64"):
        core.Context(tiny, n_ctx=256, type_k="f16", type_v="vtq2", flash_attn=True)


@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_head_dims_64_128_256_run(core, model_path, tmp_path, head_dim):
    path = write_tiny_llama(tmp_path / f"hd{head_dim}.gguf", model_path, head_dim=head_dim)
    tiny = core.Model(str(path))
    tokens = tiny.tokenize("The quick brown fox jumps over the lazy dog. " * 4)
    ref = core.Context(tiny, n_ctx=256, flash_attn=True).decode(tokens)
    for type_k, type_v in (("ktq4", "vtq4"), ("ktq2", "vtq2_3")):
        out = core.Context(tiny, n_ctx=256, type_k=type_k, type_v=type_v, flash_attn=True).decode(tokens)
        assert np.all(np.isfinite(out))
        assert np.abs(out - ref).max() < 0.5 * np.abs(ref).max()


@pytest.fixture(scope="module")
def text_tokens(model):
    text = (REPO.parent / "shared" / "data" / "brown.txt").read_text(encoding="utf-8")[-3000:]
    return model.tokenize(text)[:192]


def test_more_bits_give_logits_closer_to_f16(core, model, text_tokens):
    ref = core.Context(model, n_ctx=256, flash_attn=True, n_threads=2).decode(text_tokens)
    div = {}
    for pair in ("q8_0/q8_0", "ktq4/vtq4", "ktq3/vtq3", "ktq2/vtq2"):
        type_k, type_v = pair.split("/")
        out = core.Context(model, n_ctx=256, type_k=type_k, type_v=type_v, flash_attn=True, n_threads=2)
        div[pair] = kld(ref, out.decode(text_tokens))
    assert div["q8_0/q8_0"] < div["ktq4/vtq4"] < div["ktq3/vtq3"] < div["ktq2/vtq2"] < 1.5, div


def test_prefill_reads_the_quantized_cache(core, model, text_tokens):
    """One 192-token batch and 192 single-token steps must agree: both read K/V back from the compressed
    cache, so there is no f16 staging that would make prefill look better than decoding."""
    batch = core.Context(model, n_ctx=256, n_batch=256, type_k="ktq2", type_v="vtq2", flash_attn=True, n_threads=2)
    whole = batch.decode(text_tokens)
    step = core.Context(model, n_ctx=256, n_batch=1, type_k="ktq2", type_v="vtq2", flash_attn=True, n_threads=2)
    for i, tok in enumerate(text_tokens[:48]):
        np.testing.assert_allclose(step.decode([tok])[0], whole[i], atol=2e-3 * np.abs(whole[i]).max())
