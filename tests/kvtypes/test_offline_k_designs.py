"""The offline tools behind benchmarks/k_weighted_*.py: the numpy forward pass and the bit allocation.

The numpy forward pass (benchmarks/np_llama.py) is what scores candidate K formats end to end, so it must be the
model llama.cpp runs: its logits are compared with the runtime's on the test model (F16 cache), and a forward
pass whose attention reads zero keys must land far off, so that the comparison can fail. RoPE is relative: a
common position offset must leave its logits unchanged. The greedy allocation must find the optimum of a
separable problem with convex distortion curves (brute force over every allocation). The profile-table design
(benchmarks/k_profiles.py): folding equalises the queries' pair energies, a table keeps each row's best profile,
and a fitted table spends its bits pair by pair within the block's budget.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import k_profiles as kp  # noqa: E402
import k_weighted_proxy as kw  # noqa: E402
import np_llama  # noqa: E402

TEXT = ("The committee met on Tuesday to weigh the proposal, and after a long debate the members agreed that "
        "the town would build a new bridge over the river before the spring floods. ")


@pytest.fixture(scope="module")
def np_model(model_path: str) -> np_llama.Llama:
    return np_llama.Llama.load(Path(model_path))


@pytest.fixture(scope="module")
def tokens(model) -> list[int]:
    return model.tokenize(TEXT * 3)[:96]


def test_numpy_forward_matches_llama_cpp(core, model, np_model, tokens) -> None:
    ctx = core.Context(model, n_ctx=128, n_batch=128, type_k="f16", type_v="f16", flash_attn=True, n_threads=2)
    runtime = np.asarray(ctx.decode(tokens), dtype=np.float64)
    ours = np_model.logits(tokens)
    kl = np_llama.kld_rows(runtime, ours)
    # Q4_1 weights: llama.cpp rounds activations to 8 bits for its matrix products, numpy does not
    assert kl.mean() < 5e-3, kl.mean()
    assert (runtime.argmax(-1) == ours.argmax(-1)).mean() >= 0.9
    blind = np_model.logits(tokens, key_hook=lambda il, q, k: np.zeros_like(k))
    assert np_llama.kld_rows(runtime, blind).mean() > 20 * kl.mean()


def test_position_offset_leaves_logits_unchanged(np_model, tokens) -> None:
    a = np_model.logits(tokens[:48])
    b = np_model.logits(tokens[:48], offset=131072)
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()
    assert np_llama.kld_rows(a, b).max() < 1e-7


def test_the_key_hook_sees_rope_turned_keys_and_queries(np_model, tokens) -> None:
    seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def grab(il: int, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        seen[il] = (q, k)
        return k

    np_model.logits(tokens[:16], key_hook=grab)
    assert sorted(seen) == list(range(np_model.n_layer))
    q, k = seen[0]
    assert q.shape == (16, np_model.n_head, 64) and k.shape == (16, np_model.n_head_kv, 64)
    # position 0 is not turned: its key is the projection of the normed embedding
    t = np_model.tensors
    h = np_model._norm(t["token_embd.weight"][tokens[:1]], t["blk.0.attn_norm.weight"])
    np.testing.assert_allclose(k[0].ravel(), (h @ t["blk.0.attn_k.weight"].T).ravel(), rtol=1e-4, atol=1e-5)


@st.composite
def convex_problem(draw):  # noqa: ANN201
    n = draw(st.integers(1, 3))
    mse = []
    for _ in range(n):
        steps = sorted(draw(st.lists(st.floats(0.01, 10.0), min_size=kw.MAX_BITS, max_size=kw.MAX_BITS)),
                       reverse=True)  # decreasing gains: a convex curve
        top = sum(steps) + draw(st.floats(0.0, 1.0))
        mse.append(top - np.concatenate(([0.0], np.cumsum(steps))))
    weight = np.array(draw(st.lists(st.floats(0.1, 10.0), min_size=n, max_size=n)))
    cost = draw(st.sampled_from([1, 2]))
    budget = draw(st.integers(0, n * kw.MAX_BITS * cost))
    return np.stack(mse, axis=1), weight, budget, cost


@settings(max_examples=60, deadline=None)
@given(convex_problem())
def test_greedy_allocation_is_optimal(problem) -> None:
    mse, weight, budget, cost = problem
    n = mse.shape[1]
    bits = kw.allocate(mse, weight, budget, cost)
    assert bits.sum() == min(budget // cost, n * kw.MAX_BITS)
    got = float((weight * mse[bits, np.arange(n)]).sum())
    best = min(float((weight * mse[list(b), np.arange(n)]).sum())
               for b in itertools.product(range(kw.MAX_BITS + 1), repeat=n) if sum(b) == bits.sum())
    assert got <= best + 1e-9 * max(1.0, abs(best))


def _rope64() -> kp.RopeParams:
    return kp.RopeParams(n_rot=64, neox=False, freq_base=10000.0, freq_scale=1.0)


def test_folding_makes_the_queries_weigh_every_pair_alike() -> None:
    rng = np.random.default_rng(1)
    q = rng.standard_normal((500, 64)) * rng.uniform(0.1, 5.0, 64)
    a = kp.fold_scales(q, _rope64())
    i0, i1 = _rope64().pairs()
    np.testing.assert_array_equal(a[i0], a[i1])
    folded = q / a
    lam = (folded[:, i0] ** 2 + folded[:, i1] ** 2).mean(axis=0)
    np.testing.assert_allclose(lam, lam.mean(), rtol=1e-10)


def test_a_profile_table_keeps_the_best_profile_of_each_row() -> None:
    rng = np.random.default_rng(2)
    levels, _ = kp.fit_levels(rng.standard_normal(4000), max_iter=300)
    bits = rng.integers(0, kp.MAX_BITS + 1, (5, 64))
    table = kp.ProfileTable(bits, rng.uniform(0.2, 3.0, (5, 64)), levels)
    y = rng.standard_normal((200, 64)) * rng.uniform(0.1, 3.0, 64)
    got, idx = table(y)
    each = np.stack([((table._quantize_with(y, p) - y) ** 2).sum(axis=1) for p in range(5)])
    np.testing.assert_allclose(((got - y) ** 2).sum(axis=1), each.min(axis=0))
    np.testing.assert_array_equal(idx, each.argmin(axis=0))
    assert table.index_bits == 3


def test_profile_tables_spend_the_budget_pair_by_pair() -> None:
    rng = np.random.default_rng(3)
    rp = _rope64()
    rms = [np.exp(rng.normal(0.0, 1.0, 32)) for _ in range(6)]
    samples = [rng.standard_normal(500) for _ in range(6)]
    i0, i1 = rp.pairs()
    for n_profiles in (0, 3):
        for w, t in kp.fit_tables(rms, samples, (2, 3), n_profiles, rp).items():
            assert len(t.bits) == (n_profiles or 6) and t.index_bits == (3 if not n_profiles else 2)
            budget = 64 * w + 16 - t.index_bits
            assert np.all(t.bits.sum(axis=1) <= budget) and np.all(t.bits.sum(axis=1) > budget - 2)
            np.testing.assert_array_equal(t.bits[:, i0], t.bits[:, i1])
