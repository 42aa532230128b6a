#!/usr/bin/env python3
"""Query-weighted K quantization, measured offline on real attention.

A K error e moves a logit by q·e, so what K quantization should make small is E[(q·e)²] = e^T Σ_q e, not |e|².
ktq spreads every K vector over all channels (upstream's Walsh-Hadamard rotation) and gives every channel the
same bits, which is right only if Σ_q is isotropic; in real models a few RoPE pairs carry most of the queries'
energy. This script measures what a bit allocation that follows the queries would buy, with two designs fitted
per (layer, KV head) on calibration windows from the start of brown.txt and tested on held-out windows:

- ``klt-N``: the transform coder that is optimal for that objective on the calibration data: K multiplied by
  Σ_q^½, then by the eigenvectors of Σ_q^½ Σ_k Σ_q^½ (Q by the inverse transposed, so q·k is unchanged), a
  Lloyd codebook per coordinate and a greedy allocation of the bits. Fitted at positions 0..ctx-1, it is not
  RoPE-equivariant: past those positions its statistics no longer hold.
- ``pair-N``: in the model's own basis (no rotation), one codebook per RoPE pair fitted to that pair's values
  turned by random angles (so it serves any position), and the bits given greedily to the pairs by the
  queries' energy in the pair times the distortion. Every step commutes with RoPE: it is position-proof.

Both spend 64·N + 16 bits per 64-value vector (ktqN's size: no per-vector norm, the 16 bits go to codes).
Each layer's causal attention is computed in float64 with the quantized keys (V exact), at the windows' own
positions and shifted by --offsets (queries and keys turned together: exact attention is unchanged, the
position-bound designs are not). Printed: K's relative error, the attention output's relative error and the
mean KL divergence of the attention weights, per design, width and offset.

    python benchmarks/k_weighted_proxy.py [--windows 4] [--cal-windows 3] [--offsets 0,131072]

Writes k_weighted.md, .json and .png to --out (default benchmarks/out/k_weighted). 2 threads: about 8 min.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kv_quality  # noqa: E402  (the held-out text and the F16 test model are kv_quality's)
from sink_proxy import attention, kl_rows  # noqa: E402

from llama_tq import codecs  # noqa: E402
from llama_tq.calibrate.k_means import RopeParams, hadamard_rows, rope  # noqa: E402
from llama_tq.calibrate.k_profiles import MAX_BITS, allocate, fit_levels, turn_randomly  # noqa: E402, F401
from llama_tq.calibrate.lloyd_max import dequantize, quantize  # noqa: E402

F64 = NDArray[np.float64]
WIDTHS = (2, 3, 4)
HEAD = 64


@dataclass
class Coder:
    """y = k @ fwd.T is quantized coordinate by coordinate (levels[j] of bits[j]; 0 bits: level 0), then
    k̂ = ŷ @ inv.T."""

    fwd: F64
    inv: F64
    bits: NDArray[np.intp]
    levels: list[list[F64]]  # [coordinate][bits] -> levels

    def __call__(self, k: F64) -> F64:
        y = k @ self.fwd.T
        yq = np.zeros_like(y)
        for j, b in enumerate(self.bits):
            if b:
                lv = self.levels[j][b]
                yq[:, j] = dequantize(quantize(y[:, j], lv), lv)
        return yq @ self.inv.T


def klt_coders(q: F64, k: F64, budgets: dict[int, int]) -> dict[int, Coder]:
    """The weighted transform coder of klt-N for each width, fitted on queries q [n, d] and keys k [n, d]."""
    sq, sk = q.T @ q / len(q), k.T @ k / len(k)
    ev, u = np.linalg.eigh(sq)
    ev = np.maximum(ev, 1e-6 * ev.max())
    r, ri = (u * np.sqrt(ev)) @ u.T, (u / np.sqrt(ev)) @ u.T
    _, v = np.linalg.eigh(r @ sk @ r)
    fwd, inv = v.T @ r, ri @ v
    y = k @ fwd.T
    fits = [fit_levels(y[:, j]) for j in range(y.shape[1])]
    mse = np.stack([m for _, m in fits], axis=1)
    levels = [lv for lv, _ in fits]
    return {w: Coder(fwd, inv, allocate(mse, np.ones(y.shape[1]), b, 1), levels) for w, b in budgets.items()}


def pair_coders(q: F64, k: F64, budgets: dict[int, int], rp: RopeParams, rng: np.random.Generator
                ) -> dict[int, Coder]:
    """The RoPE-equivariant coder of pair-N for each width: per pair, a codebook for the pair's values at random
    angles (both members of the pair use it) and bits by the queries' energy in the pair."""
    turned = turn_randomly(k, rp, rng)
    i0, i1 = rp.pairs()
    fits = [fit_levels(np.concatenate([turned[:, a], turned[:, b]])) for a, b in zip(i0, i1, strict=True)]
    mse = np.stack([m for _, m in fits], axis=1)
    q_energy = (q[:, i0] ** 2 + q[:, i1] ** 2).mean(axis=0)
    d = k.shape[1]
    eye = np.eye(d)
    coders = {}
    for w, b in budgets.items():
        pair_bits = allocate(mse, q_energy, b, 2)
        bits = np.zeros(d, dtype=np.intp)
        levels: list[list[F64]] = [[np.zeros(1)]] * d
        for j, (a, c) in enumerate(zip(i0, i1, strict=True)):
            bits[a] = bits[c] = pair_bits[j]
            levels[a] = levels[c] = fits[j][0]
        coders[w] = Coder(eye, eye, bits, levels)
    return coders


def fit_head(q: F64, k: F64, widths: tuple[int, ...], rp: RopeParams, rng: np.random.Generator
             ) -> dict[tuple[str, int], Coder]:
    """Both designs for one KV head at each width (64·N + 16 bits per vector), keyed ("klt" | "pair", N)."""
    budgets = {w: k.shape[1] * w + 16 for w in widths}
    made = {"klt": klt_coders(q, k, budgets), "pair": pair_coders(q, k, budgets, rp, rng)}
    return {(name, w): c for name, cs in made.items() for w, c in cs.items()}


def ktq_keys(width: int) -> Callable[[F64], F64]:
    """Keys [n, d] through the shipped ktqN: upstream's rotation, the CPU reference, the rotation undone."""
    def run(k: F64) -> F64:
        kr = hadamard_rows(k, HEAD).astype(np.float32)
        kq = codecs.round_trip(f"ktq{width}", kr.reshape(-1, HEAD)).astype(np.float64).reshape(k.shape)
        return hadamard_rows(kq, HEAD)
    return run


def collect(ctx: object, bos: int, tokens: list[int], n_ctx: int, n_windows: int) -> list[dict]:
    body = n_ctx - 1
    if len(tokens) < body * n_windows:
        raise SystemExit(f"the text gives {len(tokens)} tokens, fewer than {body * n_windows}")
    out = []
    for w in range(n_windows):
        ctx.reset()  # type: ignore[attr-defined]
        out.append(ctx.collect_kv([bos, *tokens[w * body:(w + 1) * body]], queries=True))  # type: ignore[attr-defined]
    return out


def split_heads(rows: dict, il: int, n_head: int, n_head_kv: int) -> tuple[F64, F64, F64]:
    q = rows[f"q.{il}"].astype(np.float64)
    n, d = q.shape[0], q.shape[1] // n_head
    return (q.reshape(n, n_head, d), rows[f"k.{il}"].astype(np.float64).reshape(n, n_head_kv, d),
            rows[f"v.{il}"].astype(np.float64).reshape(n, n_head_kv, d))


def measure(cal: list[dict], test: list[dict], dims: tuple[int, int, int], rp: RopeParams, offsets: list[int],
            seed: int) -> dict:
    from tqdm import tqdm

    n_layer, n_head, n_head_kv = dims
    group = n_head // n_head_kv
    rng = np.random.default_rng(seed)
    acc: dict = {}
    for il in tqdm(range(n_layer), desc="layers", unit="layer"):
        coders: dict[tuple[str, int], list[Coder]] = {}
        for h in range(n_head_kv):
            heads = [split_heads(r, il, n_head, n_head_kv) for r in cal]
            q = np.concatenate([x[0][:, h * group:(h + 1) * group].reshape(-1, x[0].shape[2]) for x in heads])
            k = np.concatenate([x[1][:, h] for x in heads])
            for key, c in fit_head(q, k, WIDTHS, rp, rng).items():
                coders.setdefault(key, []).append(c)
        for rows in test:
            q0, k0, v = split_heads(rows, il, n_head, n_head_kv)
            for off in offsets:
                pos = np.full(len(q0), float(off))
                q, k = rope(q0, pos, rp), rope(k0, pos, rp)
                p, o = attention(q, k, v)
                base = acc.setdefault(("base", off), {"energy": 0.0, "rows": 0, "k_energy": 0.0})
                base["energy"] += float((o**2).sum())
                base["rows"] += p.shape[0] * p.shape[1]
                base["k_energy"] += float((k**2).sum())
                for w in WIDTHS:
                    variants = {f"ktq{w}": ktq_keys(w)(k)}
                    for (name, cw), cs in coders.items():
                        if cw == w:
                            kq = k.copy()
                            for h, c in enumerate(cs):
                                kq[:, h] = c(k[:, h])
                            variants[f"{name}-{w}"] = kq
                    for name, kq in variants.items():
                        pq, oq = attention(q, kq, v)
                        a = acc.setdefault((name, off), {"k_err": 0.0, "out_err": 0.0, "kl": 0.0})
                        a["k_err"] += float(((kq - k) ** 2).sum())
                        a["out_err"] += float(((oq - o) ** 2).sum())
                        a["kl"] += float(kl_rows(p, pq).sum())
    return acc


def results_of(acc: dict, offsets: list[int]) -> list[dict]:
    out = []
    for off in offsets:
        base = acc[("base", off)]
        for w in WIDTHS:
            ref = acc[(f"ktq{w}", off)]["kl"]
            for name in (f"ktq{w}", f"klt-{w}", f"pair-{w}"):
                a = acc[(name, off)]
                out.append({"design": name.rstrip("-0123456789"), "name": name, "bits": w + 0.25,
                            "offset": off, "k_rel_err": a["k_err"] / base["k_energy"],
                            "out_rel_err": a["out_err"] / base["energy"], "kl": a["kl"] / base["rows"],
                            "kl_vs_ktq": a["kl"] / ref})
    return out


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    offsets = sorted({r["offset"] for r in results})
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = ["-", "--", ":", "-."]
    for design, color in (("ktq", "tab:gray"), ("klt", "tab:orange"), ("pair", "tab:blue")):
        for i, off in enumerate(offsets):
            sel = sorted((r for r in results if r["design"] == design and r["offset"] == off), key=lambda r: r["bits"])
            ax.plot([r["bits"] for r in sel], [r["kl"] for r in sel], styles[i % len(styles)], color=color, marker="o",
                    label=f"{design}, positions +{off}")
    ax.set_yscale("log")
    ax.set_xlabel("bits per K value")
    ax.set_ylabel("mean KL of the attention weights vs exact K")
    ax.set_xticks([w + 0.25 for w in WIDTHS])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="GGUF (default: the SmolLM2-135M test model, as F16 weights)")
    p.add_argument("--text", type=Path, default=kv_quality.DEFAULT_TEXT)
    p.add_argument("--ctx", type=int, default=512, help="tokens per window (BOS first)")
    p.add_argument("--windows", type=int, default=4, help="held-out test windows")
    p.add_argument("--cal-windows", type=int, default=3, help="calibration windows from the start of --text")
    p.add_argument("--offsets", default="0,131072", help="position shifts of the test windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=kv_quality.REPO / "benchmarks" / "out" / "k_weighted")
    args = p.parse_args()
    if args.windows < 1 or args.cal_windows < 1 or args.ctx < 8:
        p.error("--windows and --cal-windows must be >= 1 and --ctx >= 8")
    try:
        offsets = [int(x) for x in args.offsets.split(",")]
    except ValueError:
        p.error(f"--offsets: comma-separated integers expected, got {args.offsets!r}")
    if any(o < 0 for o in offsets):
        p.error("--offsets must be >= 0")

    from llama_tq import _core
    from llama_tq.calibrate.k_means import model_rope

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.model or kv_quality.f16_model(args.out, args.threads)
    model = _core.Model(str(model_path))
    _, rp = model_rope(model)
    if rp is None or rp.neox or rp.n_rot != HEAD:
        raise SystemExit("this proxy handles models with normal (non-neox) RoPE over the whole 64-value head")
    dims = tuple(int(model.info[k]) for k in ("n_layer", "n_head", "n_head_kv"))
    held = kv_quality.held_out_text(args.text, args.out, n_bytes=args.ctx * args.windows * 8).read_text("utf-8")
    cal_text = args.text.read_text("utf-8", errors="replace")[: args.ctx * args.cal_windows * 8]
    # an F16 cache: rows in the model's own basis (no attn_rot), from the unperturbed model
    ctx = _core.Context(model, n_ctx=args.ctx, n_batch=args.ctx, type_k="f16", type_v="f16", flash_attn=True,
                        n_threads=args.threads, collect_kv=True)
    test_tokens, cal_tokens = model.tokenize(held), model.tokenize(cal_text)
    bos = test_tokens[0]
    test = collect(ctx, bos, test_tokens[1:], args.ctx, args.windows)
    cal = collect(ctx, bos, cal_tokens[1:], args.ctx, args.cal_windows)
    if int(model.info["n_embd"]) // dims[1] != HEAD:
        raise SystemExit(f"this proxy handles head size {HEAD} only")
    results = results_of(measure(cal, test, dims, rp, offsets, args.seed), offsets)

    lines = [f"{args.cal_windows} calibration windows (start of {args.text.name}), {args.windows} held-out test "
             f"windows of {args.ctx} tokens; {dims[0]} layers x {dims[1]} query / {dims[2]} KV heads; V exact", "",
             "| design | bits | positions + | K rel. error | output rel. error | mean KL of weights | KL vs ktq |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['bits']:.2f} | {r['offset']} | {r['k_rel_err']:.4f} | "
                     f"{r['out_rel_err']:.5f} | {r['kl']:.5f} | {r['kl_vs_ktq']:.3f} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "k_weighted.md").write_text(table + "\n")
    (args.out / "k_weighted.json").write_text(json.dumps({"results": results}, indent=1))
    plot(results, args.out / "k_weighted.png",
         "K coded by query weight (SmolLM2-135M, real windows, V exact)")
    print(f"wrote {args.out / 'k_weighted'}.md, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
