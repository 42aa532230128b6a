"""Context.collect_kv(queries=True): the queries each layer's attention reads, beside the K/V rows its cache gets.

Layer 0's queries and keys do not depend on the cache type (they come from the embeddings), and a rotated
cache (ktq4) rotates both by the same Hadamard matrix, so the scores Q K^T of layer 0 must agree between an
f16 context (no rotation) and a ktq4 context, query by query and head by head (GQA: head h reads KV head
h / (n_head / n_head_kv)); a wrong row or head order, or queries taken before the rotation, would not.
"""

from __future__ import annotations

import numpy as np


def _scores(rows: dict, n_head: int, n_head_kv: int) -> np.ndarray:
    """Layer 0's causal scores [n_head, n, n] in float64 from the collected q.0 and k.0 rows."""
    q = rows["q.0"].astype(np.float64)
    k = rows["k.0"].astype(np.float64)
    n = q.shape[0]
    d = q.shape[1] // n_head
    q = q.reshape(n, n_head, d).transpose(1, 0, 2)
    k = np.repeat(k.reshape(n, n_head_kv, d).transpose(1, 0, 2), n_head // n_head_kv, axis=0)
    return np.tril(np.einsum("hqd,hkd->hqk", q, k))


def test_queries_match_between_rotated_and_plain_caches(core, model) -> None:
    toks = model.tokenize("The quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 4)[:80]
    n_head, n_head_kv = int(model.info["n_head"]), int(model.info["n_head_kv"])
    got = {}
    for type_k in ("f16", "ktq4"):
        # n_batch 32: three ubatches, whose rows must come back in token order
        ctx = core.Context(model, n_ctx=256, n_batch=32, n_ubatch=32, type_k=type_k, type_v="f16", flash_attn=True,
                           collect_kv=True)
        got[type_k] = ctx.collect_kv(toks, queries=True)
        ctx.reset()
        assert not any(key.startswith("q.") for key in ctx.collect_kv(toks)), "queries only when asked for"
    n_layer = int(model.info["n_layer"])
    for rows in got.values():
        assert sorted(k for k in rows if k.startswith("q.")) == sorted(f"q.{il}" for il in range(n_layer))
        assert rows["q.0"].shape[0] == len(toks)
        assert rows["q.0"].shape[1] == n_head * (rows["k.0"].shape[1] // n_head_kv)
    plain = _scores(got["f16"], n_head, n_head_kv)
    rotated = _scores(got["ktq4"], n_head, n_head_kv)
    assert np.abs(got["f16"]["q.0"] - got["ktq4"]["q.0"]).max() > 1e-3, "the ktq4 queries should come rotated"
    np.testing.assert_allclose(rotated, plain, atol=1e-4 * np.abs(plain).max())
