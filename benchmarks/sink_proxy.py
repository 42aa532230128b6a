#!/usr/bin/env python3
"""The attention sink and low-bit K: how much of the attention error is the first key's?

k_centering_positions.py found that the BOS key, which most heads use as an attention sink, is quantized no
worse than the others (its relative error is like theirs), and left open whether its error still matters more,
since nearly all of a query's attention mass can rest on it. This script measures that on real attention: for
windows as llama-perplexity sees them (BOS first, then held-out Brown text) it collects every layer's queries,
keys and values of the SmolLM2 test model as attention reads them (after the Hadamard rotation that quantized
cache types get; `Context.collect_kv(queries=True)`), then computes each layer's causal attention in float64
with the keys quantized by the CPU reference: all of them, or all but the first 1 or 4 kept exact. V stays
exact, so what is measured is K's share. Printed per K type: K's own relative error, the attention output's
relative error sum |o - ô|² / sum |o|², the mean KL divergence of the attention weights, and how much of them the
exact first key(s) remove; also the mean attention weight on the first key. --types may name V formats too
(e.g. vtq2, trellis-coded): K rows through them show what such a coding would do for K (an experiment: the
cache stores K only as ktq).

    python benchmarks/sink_proxy.py [--windows 4] [--types ktq2,ktq3,ktq4,vtq2]

Writes sink_proxy.md, .json and .png to --out (default benchmarks/out/sink_proxy). 2 threads: about 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kv_quality  # noqa: E402  (the held-out text and the F16 test model are kv_quality's)

from llama_tq import codecs  # noqa: E402

EXACT_FIRST = (0, 1, 4)  # keys kept exact at the start of the window


def softmax_rows(s: np.ndarray) -> np.ndarray:
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal attention of q [n, H, d] over k, v [n, Hkv, d] (GQA: head h reads KV head h // (H / Hkv));
    returns the weights [H, n, n] and the output [H, n, d], float64."""
    n, n_head, d = q.shape
    group = n_head // k.shape[1]
    kh = np.repeat(k.transpose(1, 0, 2), group, axis=0)  # [H, n, d]
    vh = np.repeat(v.transpose(1, 0, 2), group, axis=0)
    s = np.einsum("hqd,hkd->hqk", q.transpose(1, 0, 2), kh) / np.sqrt(d)
    s = np.where(np.tril(np.ones((n, n), dtype=bool)), s, -np.inf)
    p = softmax_rows(s)
    return p, np.einsum("hqk,hkd->hqd", p, vh)


def kl_rows(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """KL(p || r) of each row (last axis); 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * (np.log(p) - np.log(r)), 0.0)
    return t.sum(axis=-1)


def quantize_keys(t: str, k: np.ndarray) -> np.ndarray:
    """k [n, Hkv, d] through the CPU reference of type t (64-value blocks)."""
    return codecs.round_trip(t, k.reshape(-1, 64).astype(np.float32)).astype(np.float64).reshape(k.shape)


def measure_window(rows: dict, n_layer: int, n_head: int, n_head_kv: int, types: list[str], acc: dict) -> None:
    """Adds one window's sums over its layers to acc: per (type, exact_first) the squared output error and the KL
    sum, and "energy" (of the output), "rows" (query rows) and "sink_mass" (attention weight on the first key)."""
    for il in range(n_layer):
        q = rows[f"q.{il}"].astype(np.float64)
        k = rows[f"k.{il}"].astype(np.float64)
        v = rows[f"v.{il}"].astype(np.float64)
        n = q.shape[0]
        d = q.shape[1] // n_head
        q, k, v = q.reshape(n, n_head, d), k.reshape(n, n_head_kv, d), v.reshape(n, n_head_kv, d)
        p, o = attention(q, k, v)
        acc["energy"] += float((o**2).sum())
        acc["rows"] += n_head * n
        acc["sink_mass"] += float(p[:, :, 0].sum())
        for t in types:
            k_all = quantize_keys(t, k)
            for ef in EXACT_FIRST:
                kq = k_all.copy()
                kq[:ef] = k[:ef]  # the first ef keys exact
                pq, oq = attention(q, kq, v)
                key = (t, ef)
                err, kl = acc.get(key, (0.0, 0.0))
                acc[key] = (err + float(((oq - o) ** 2).sum()), kl + float(kl_rows(p, pq).sum()))
                if ef == 0:
                    kerr, kenergy = acc.get(("k", t), (0.0, 0.0))
                    acc[("k", t)] = (kerr + float(((kq - k) ** 2).sum()), kenergy + float((k**2).sum()))


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(dict.fromkeys(r["type"] for r in results))
    width = 0.8 / len(EXACT_FIRST)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, title in ((axes[0], "rel_err", "attention output: relative error"),
                              (axes[1], "kl", "attention weights: mean KL vs exact K")):
        for i, ef in enumerate(EXACT_FIRST):
            sel = [next(r for r in results if r["type"] == t and r["exact_first"] == ef) for t in types]
            ax.bar([j + (i - (len(EXACT_FIRST) - 1) / 2) * width for j in range(len(types))], [r[metric] for r in sel],
                   width, label="all keys quantized" if ef == 0 else f"first {ef} key{'s' if ef > 1 else ''} exact")
        ax.set_xticks(range(len(types)), types)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("K quantization and the attention sink (SmolLM2-135M, real windows, V exact)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="GGUF (default: the SmolLM2-135M test model, as F16 weights)")
    p.add_argument("--text", type=Path, default=kv_quality.DEFAULT_TEXT)
    p.add_argument("--ctx", type=int, default=512, help="tokens per window (BOS first)")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--types", default="ktq2,ktq3,ktq4")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=kv_quality.REPO / "benchmarks" / "out" / "sink_proxy")
    args = p.parse_args()
    if args.windows < 1 or args.ctx < 8:
        p.error("--windows must be >= 1 and --ctx >= 8")
    types = args.types.split(",")
    valid = [t for t in codecs.cache_types() if "tq" in t or t.startswith(("q", "iq"))] + ["vtq2", "vtq3", "vtq4"]
    for t in types:
        if t not in valid:
            p.error(f"--types: unknown or unquantized type {t!r}; valid: {', '.join(valid)}")

    from tqdm import tqdm

    from llama_tq import _core

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.model or kv_quality.f16_model(args.out, args.threads)
    model = _core.Model(str(model_path))
    n_layer, n_head, n_head_kv = (int(model.info[k]) for k in ("n_layer", "n_head", "n_head_kv"))
    text = kv_quality.held_out_text(args.text, args.out, n_bytes=args.ctx * args.windows * 8).read_text("utf-8")
    tokens = model.tokenize(text)
    body = args.ctx - 1  # each window: BOS, then the next ctx - 1 tokens of the text
    if len(tokens) < 1 + body * args.windows:
        raise SystemExit(f"the held-out text gives {len(tokens)} tokens, fewer than {1 + body * args.windows}")
    bos, text_tokens = tokens[0], tokens[1:]
    # a ktq4 cache so that the rows come rotated, as every ktq type's cache receives them; V at f16
    ctx = _core.Context(model, n_ctx=args.ctx, n_batch=args.ctx, type_k="ktq4", type_v="f16", flash_attn=True,
                        n_threads=args.threads, collect_kv=True)
    total: dict = {"energy": 0.0, "rows": 0, "sink_mass": 0.0}
    for w in tqdm(range(args.windows), desc="windows", unit="window"):
        ctx.reset()
        rows = ctx.collect_kv([bos, *text_tokens[w * body:(w + 1) * body]], queries=True)
        measure_window(rows, n_layer, n_head, n_head_kv, types, total)

    results = []
    for t in types:
        base = total[(t, 0)]
        for ef in EXACT_FIRST:
            err, kl = total[(t, ef)]
            kerr, kenergy = total[("k", t)]
            results.append({"type": t, "bits": codecs.bits_per_element(t), "exact_first": ef,
                            "k_rel_err": kerr / kenergy, "rel_err": err / total["energy"], "kl": kl / total["rows"],
                            "rel_err_vs_all": err / base[0], "kl_vs_all": kl / base[1]})
    lines = [f"mean attention weight on the first key: {total['sink_mass'] / total['rows']:.3f} "
             f"({args.windows} windows of {args.ctx} tokens, {n_layer} layers x {n_head} heads)", "",
             "| K type | bits | exact first keys | K rel. error | output rel. error | vs all quantized "
             "| mean KL of weights | vs all quantized |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['type']} | {r['bits']:.2f} | {r['exact_first']} | {r['k_rel_err']:.4f} | "
                     f"{r['rel_err']:.5f} | {r['rel_err_vs_all']:.3f} | {r['kl']:.5f} | {r['kl_vs_all']:.3f} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "sink_proxy.md").write_text(table + "\n")
    (args.out / "sink_proxy.json").write_text(json.dumps(
        {"sink_mass": total["sink_mass"] / total["rows"], "results": results}, indent=1))
    plot(results, args.out / "sink_proxy.png")
    print(f"wrote {args.out / 'sink_proxy'}.md, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
