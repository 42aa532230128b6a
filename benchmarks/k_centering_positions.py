#!/usr/bin/env python3
"""K centering, position by position: how the K quantization error of a real window changes with centering.

k_offset_proxy.py measures centering on held-out keys placed at positions spread over a context; it never
sees the first token of a window (the BOS token, which most heads use as an attention sink). This script
takes real windows as llama-perplexity sees them (BOS first, then the held-out Brown text), collects the K
rows the cache receives (after attn_rot), and quantizes them with the CPU reference with and without the
constant the runtime subtracts for a cache of that many positions (the k-means file's per-layer mean,
turned by RoPE and averaged over the positions, then rotated). Printed per position bucket: relative error
sum (k - k̂)² / sum k² plain and centered, and their ratio.

    python benchmarks/k_centering_positions.py --k-means smol.kmeans.gguf [--ctx 512,4096] [--types ktq2,ktq4]

Writes k_centering_positions.md, .json and .png to --out (default benchmarks/out/k_centering_positions).
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
from llama_tq.calibrate.k_means import (  # noqa: E402
    env_without,
    hadamard_rows,
    k_rotation_size,
    model_rope,
    position_mean,
    read_means,
)

BUCKETS = ((0, 1), (1, 4), (4, 64), (64, 512), (512, 4096), (4096, 1 << 30))


def measure(model, tokens: list[int], n_ctx: int, means: dict, types: list[str]) -> list[dict]:
    from llama_tq import _core

    with env_without("LLAMA_TQ_K_MEANS"):
        ctx = _core.Context(model, n_ctx=n_ctx, n_batch=512, type_k="ktq4", type_v="f16", flash_attn=True,
                            collect_kv=True)
        rows = ctx.collect_kv(tokens[:n_ctx])
    _, rp = model_rope(model)
    n_head = int(model.info["n_head_kv"])
    sums: dict[tuple[str, int], list[float]] = {}
    for il in range(int(model.info["n_layer"])):
        x = rows[f"k.{il}"].astype(np.float64)
        hd = x.shape[1] // n_head
        nrot = k_rotation_size(hd)
        c = hadamard_rows(position_mean(means[il], rp, n_ctx).reshape(-1), nrot)
        energy = (x.reshape(n_ctx, n_head, hd) ** 2).sum(axis=(1, 2))
        for t in types:
            errs = []
            for y in (x, x - c):
                q = codecs.round_trip(t, y.reshape(-1, 64).astype(np.float32)).astype(np.float64).reshape(y.shape)
                errs.append(((q - y) ** 2).sum(axis=1))
            for bi, (a, b) in enumerate(BUCKETS):
                if a >= n_ctx:
                    continue
                s = sums.setdefault((t, bi), [0.0, 0.0, 0.0])
                s[0] += errs[0][a:b].sum()
                s[1] += errs[1][a:b].sum()
                s[2] += energy[a:b].sum()
    out = []
    for (t, bi), (plain, centered, energy) in sorted(sums.items()):
        a, b = BUCKETS[bi]
        out.append({"ctx": n_ctx, "type": t, "first": a, "last": min(b, n_ctx) - 1, "rel_err_plain": plain / energy,
                    "rel_err_centered": centered / energy, "ratio": centered / plain})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = [a for a, _ in BUCKETS]
    labels = ["0 (BOS)" if b - a == 1 else f"{a}-{b - 1}" if b < (1 << 30) else f"{a}-" for a, b in BUCKETS]
    series = sorted({(r["type"], r["ctx"]) for r in rows})
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(10, 5))
    for si, (t, n_ctx) in enumerate(series):
        sel = [r for r in rows if r["type"] == t and r["ctx"] == n_ctx]
        ax.bar([starts.index(r["first"]) + si * width for r in sel], [r["ratio"] for r in sel], width,
               label=f"{t}, cache of {n_ctx}")
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(BUCKETS))])
    ax.set_xticklabels(labels)
    ax.set_xlabel("key positions")
    ax.set_ylabel("K error with centering / without")
    ax.legend()
    fig.suptitle("K centering by position (real windows, BOS first)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k-means", type=Path, required=True, help="file from `tq-calibrate k-means`")
    p.add_argument("--model", type=Path, help="GGUF (default: the SmolLM2-135M test model, as F16 weights)")
    p.add_argument("--text", type=Path, default=kv_quality.DEFAULT_TEXT)
    p.add_argument("--ctx", default="512,4096", help="cache sizes (one window each, from the held-out slice)")
    p.add_argument("--types", default="ktq2,ktq4")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=kv_quality.REPO / "benchmarks" / "out" / "k_centering_positions")
    args = p.parse_args()

    from llama_tq import _core

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.model or kv_quality.f16_model(args.out, args.threads)
    model = _core.Model(str(model_path))
    contexts = [int(c) for c in args.ctx.split(",")]
    text = kv_quality.held_out_text(args.text, args.out, n_bytes=max(contexts) * 8).read_text(encoding="utf-8")
    tokens = model.tokenize(text)
    if len(tokens) < max(contexts):
        raise SystemExit(f"the held-out text gives {len(tokens)} tokens, fewer than {max(contexts)}")
    _, means = read_means(args.k_means)
    rows = [r for n_ctx in contexts for r in measure(model, tokens, n_ctx, means, args.types.split(","))]

    lines = ["| cache positions | K type | key positions | rel. error plain | rel. error centered | ratio |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        span = f"{r['first']}" + (f"-{r['last']}" if r["last"] > r["first"] else " (BOS)")
        lines.append(f"| {r['ctx']} | {r['type']} | {span} | {r['rel_err_plain']:.4f} | {r['rel_err_centered']:.4f} | "
                     f"{r['ratio']:.3f} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "k_centering_positions.md").write_text(table + "\n")
    (args.out / "k_centering_positions.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "k_centering_positions.png")
    print(f"wrote {args.out / 'k_centering_positions'}.md, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
