"""Per-layer cache types (LLAMA_TQ_K_LAYERS / LLAMA_TQ_V_LAYERS, src/ggml-tq/tq-layer-types.h).

The checks: the rule parser against an independent reference (and any string: a result or a reason); the
cache allocates each layer at its own type (bytes counted from the types' block sizes);
attention reads each layer at its own type (every layer overridden gives the other type's logits, the
first and last layer at f16 move a ktq2 cache towards f16); an f16 cache with ktq2 layers turns on the
rotation those need; bad rules are refused at context creation with a message that names the problem.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .logits import kld

K_VAR = "LLAMA_TQ_K_LAYERS"
V_VAR = "LLAMA_TQ_V_LAYERS"
N_CTX = 256


@pytest.fixture
def layer_env():
    """Set the two variables for the contexts created inside a test, restore them after."""
    saved = {v: os.environ.get(v) for v in (K_VAR, V_VAR)}

    def set_(k: str | None = None, v: str | None = None) -> None:
        for var, val in ((K_VAR, k), (V_VAR, v)):
            if val is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = val

    yield set_
    for var, val in saved.items():
        if val is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = val


@pytest.fixture(scope="module")
def tokens(model) -> list[int]:
    words = "the jury said it did find that many of the reports were not true and the city was in good order"
    return model.tokenize(" ".join([words] * 12))[:160]


def _row_bytes(core, type_name: str, n: int) -> int:
    info = core.type_info(type_name)
    return n // info["block_size"] * info["type_size"]


def _kv_bytes(core, model, types_k: list[str], types_v: list[str], n_ctx: int) -> int:
    n = model.info["n_head_kv"] * (model.info["n_embd"] // model.info["n_head"])  # head size: 576 / 9 = 64
    return n_ctx * sum(_row_bytes(core, k, n) + _row_bytes(core, v, n) for k, v in zip(types_k, types_v, strict=True))


def _logits(core, model, tokens, type_k: str, type_v: str) -> np.ndarray:
    ctx = core.Context(model, n_ctx=N_CTX, n_batch=N_CTX, type_k=type_k, type_v=type_v, flash_attn=True)
    return ctx.decode(tokens)


def _reference_layer_types(rules: list[tuple[list[tuple[int, int]], str]], n_layer: int) -> list[str | None]:
    """Independent reference of the rule semantics: ranges inclusive, negative from the end, later rules win."""
    out: list[str | None] = [None] * n_layer
    for ranges, type_name in rules:
        for a, b in ranges:
            lo, hi = (x + n_layer if x < 0 else x for x in (a, b))
            for il in range(lo, hi + 1):
                out[il] = type_name
    return out


def _as_text(rules: list[tuple[list[tuple[int, int]], str]]) -> str:
    return ";".join(",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges) + "=" + t for ranges, t in rules)


_LAYER = st.integers(-30, 29)
_RANGE = st.tuples(_LAYER, _LAYER).filter(lambda r: (r[0] % 30) <= (r[1] % 30))
_TYPE = st.sampled_from(["q8_0", "f16", "ktq4", "vtq2_1"])
_RULES = st.lists(st.tuples(st.lists(_RANGE, min_size=1, max_size=3), _TYPE), max_size=4)


@settings(max_examples=200, deadline=None)
@given(rules=_RULES)
def test_parser_matches_the_reference(core, rules) -> None:
    assert core.layer_types(_as_text(rules), 30) == _reference_layer_types(rules, 30)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="0123456789-,;=+ qfktv_8", max_size=24))
def test_parser_never_crashes(core, text) -> None:
    """Any string gives a list of 30 layers or a ValueError with a reason."""
    try:
        types = core.layer_types(text, 30)
    except ValueError as e:
        assert str(e)
    else:
        assert len(types) == 30


# every example sets both variables, so the function-scoped fixture needs no reset between examples
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    k_layers=st.lists(st.integers(-30, 29), min_size=1, max_size=4),
    k_type=st.sampled_from(["q8_0", "f16", "ktq4"]),
    v_layers=st.lists(st.integers(0, 29), max_size=3),
)
def test_each_layer_is_allocated_at_its_type(core, model, layer_env, k_layers, k_type, v_layers) -> None:
    n_layer = model.info["n_layer"]
    types_k = ["ktq2"] * n_layer
    types_v = ["vtq2"] * n_layer
    for il in k_layers:
        types_k[il % n_layer] = k_type
    for il in v_layers:
        types_v[il] = "q8_0"
    layer_env(",".join(map(str, k_layers)) + "=" + k_type,
              ",".join(map(str, v_layers)) + "=q8_0" if v_layers else None)
    ctx = core.Context(model, n_ctx=N_CTX, type_k="ktq2", type_v="vtq2", flash_attn=True)
    assert ctx.memory_bytes() == _kv_bytes(core, model, types_k, types_v, ctx.n_ctx)


def test_ranges_and_later_rules(core, model, layer_env) -> None:
    n_layer = model.info["n_layer"]
    types_k = ["ktq2"] * n_layer
    for il in [0, 1, 2, n_layer - 2, n_layer - 1]:
        types_k[il] = "q8_0"
    types_k[1] = "ktq3"  # the later rule wins
    layer_env("0-2,-2--1=q8_0;1=ktq3")
    ctx = core.Context(model, n_ctx=N_CTX, type_k="ktq2", type_v="vtq2", flash_attn=True)
    assert ctx.memory_bytes() == _kv_bytes(core, model, types_k, ["vtq2"] * n_layer, ctx.n_ctx)


def test_every_layer_overridden_reads_as_that_type(core, model, tokens, layer_env) -> None:
    """A ktq2 cache with all of its layers at ktq4 is a ktq4 cache; an f16 cache with all of its layers at
    ktq2 (the override turns the rotation on) is a ktq2 cache."""
    layer_env(None, None)
    ktq4 = _logits(core, model, tokens, "ktq4", "vtq2")
    ktq2 = _logits(core, model, tokens, "ktq2", "vtq2")
    f16 = _logits(core, model, tokens, "f16", "f16")
    layer_env("0--1=ktq4")
    np.testing.assert_array_equal(_logits(core, model, tokens, "ktq2", "vtq2"), ktq4)
    layer_env("0--1=ktq2", "0--1=vtq2")
    np.testing.assert_array_equal(_logits(core, model, tokens, "f16", "f16"), ktq2)
    assert kld(f16, ktq2) > 0.1  # so the two checks above compare different things


def test_protected_layers_move_towards_f16(core, model, tokens, layer_env) -> None:
    layer_env(None, None)
    f16 = _logits(core, model, tokens, "f16", "f16")
    plain = kld(f16, _logits(core, model, tokens, "ktq2", "f16"))
    layer_env("0,-1=f16")
    protected = kld(f16, _logits(core, model, tokens, "ktq2", "f16"))
    assert protected < plain, (plain, protected)


@pytest.mark.parametrize(
    ("k_spec", "v_spec", "message"),
    [
        ("5=q9_9", None, "unknown cache type (valid: f32, f16"),
        ("30=q8_0", None, "'30' is not a layer or a range of layers of this model (0..29)"),
        ("-31=q8_0", None, "'-31' is not a layer"),
        ("3-1=q8_0", None, "a range A-B needs A <= B"),
        ("0-=q8_0", None, "'0-' is not a layer"),
        ("1,,2=q8_0", None, "'' is not a layer"),
        ("q8_0", None, "rule 'q8_0': expected LAYERS=TYPE"),
        ("=q8_0", None, "rule '=q8_0': no layers before '='"),
        ("4=", None, "no cache type after '='"),
        ("0,=q8_0", None, "'' is not a layer"),
        ("+1=q8_0", None, "'+1' is not a layer"),
        (" 1=q8_0", None, "' 1' is not a layer"),
        ("0=vtq2", None, "layer 0: vtq2_2 is a V-cache type"),
    ],
)
def test_bad_rules_are_refused(core, model, layer_env, k_spec, v_spec, message) -> None:
    layer_env(k_spec, v_spec)
    with pytest.raises(RuntimeError) as e:
        core.Context(model, n_ctx=N_CTX, type_k="ktq2", type_v="vtq2", flash_attn=True)
    assert message in str(e.value)
    assert (K_VAR if k_spec else V_VAR) in str(e.value)


def test_quantized_v_layer_needs_flash_attention(core, model, layer_env) -> None:
    """As a quantized -ctv does: flash attention 'auto' turns on, 'off' is refused."""
    layer_env(None, "0=q8_0")
    with pytest.raises(RuntimeError) as e:
        core.Context(model, n_ctx=N_CTX, type_k="f16", type_v="f16", flash_attn=False)
    assert "quantized V cache requires flash_attn" in str(e.value)
    ctx = core.Context(model, n_ctx=N_CTX, type_k="f16", type_v="f16", flash_attn="auto")
    n_layer = model.info["n_layer"]
    assert ctx.memory_bytes() == _kv_bytes(core, model, ["f16"] * n_layer, ["q8_0"] + ["f16"] * (n_layer - 1),
                                           ctx.n_ctx)


def test_head_size_must_hold_whole_blocks(core, model_path, tmp_path, layer_env) -> None:
    """A block type whose block does not divide a layer's head size is refused for that layer (any quantized
    type, not only ours): a tiny llama with heads of 48 values and q8_0 (blocks of 32) on layer 1."""
    from ..tiny_models import write_tiny_llama

    path = tmp_path / "hd48.gguf"
    write_tiny_llama(path, model_path, head_dim=48)
    tiny = core.Model(str(path))
    layer_env("1=q8_0")
    with pytest.raises(RuntimeError) as e:
        core.Context(tiny, n_ctx=N_CTX, type_k="f16", type_v="f16", flash_attn=True)
    assert "layer 1: q8_0 needs a head size that is a multiple of 32, this layer's is 48" in str(e.value)
