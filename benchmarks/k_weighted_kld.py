#!/usr/bin/env python3
"""The query-weighted K designs of k_weighted_proxy.py, scored end to end by the model's KL divergence.

k_weighted_proxy.py scores each layer's attention alone, with exact inputs. Here the whole model runs (np_llama.py,
a numpy forward pass checked against llama.cpp's logits first) with every layer's keys replaced by their
quantized values, so errors carry through the later layers as in llama-perplexity: the mean KLD over the second
half of each held-out window, against exact K, is comparable with kv_quality.py's K-only rows (ktq2/f16 etc.; V
exact here). Designs: ktqN (the shipped type through the CPU reference), klt-N and pair-N (fitted per layer and
KV head on calibration windows from the start of the text), at the windows' own positions and shifted by
--offsets (RoPE is relative, so exact logits do not change; position-bound designs do).

    python benchmarks/k_weighted_kld.py [--chunks 10] [--widths 2,3] [--offsets 0,131072]

Writes k_weighted_kld.md, .json and .png to --out (default benchmarks/out/k_weighted_kld). 2 threads: about
6 min with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import k_weighted_proxy as kw  # noqa: E402
import kv_quality  # noqa: E402
import np_llama  # noqa: E402


def calibration_rows(model: np_llama.Llama, windows: list[list[int]]) -> dict[int, tuple[list, list]]:
    """Every layer's exact queries and keys on the calibration windows: {layer: ([q], [k])}."""
    rows: dict[int, tuple[list, list]] = {}

    def grab(il: int, q: kw.F64, k: kw.F64) -> kw.F64:
        rows.setdefault(il, ([], []))
        rows[il][0].append(q)
        rows[il][1].append(k)
        return k

    for w in windows:
        model.logits(w, key_hook=grab, first=len(w) - 1)
    return rows


def fit_designs(model: np_llama.Llama, rows: dict[int, tuple[list, list]], widths: tuple[int, ...], seed: int
                ) -> dict[tuple[str, int], dict[int, list[kw.Coder]]]:
    """{(design, width): {layer: [coder per KV head]}}."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    group = model.n_head // model.n_head_kv
    out: dict[tuple[str, int], dict[int, list[kw.Coder]]] = {}
    for il in tqdm(sorted(rows), desc="fitting", unit="layer"):
        qs, ks = rows[il]
        for h in range(model.n_head_kv):
            q = np.concatenate([x[:, h * group:(h + 1) * group].reshape(-1, x.shape[2]) for x in qs])
            k = np.concatenate([x[:, h] for x in ks])
            for key, c in kw.fit_head(q, k, widths, model.rope, rng).items():
                out.setdefault(key, {}).setdefault(il, []).append(c)
    return out


def coder_hook(coders: dict[int, list[kw.Coder]]) -> np_llama.KeyHook:
    def hook(il: int, q: kw.F64, k: kw.F64) -> kw.F64:
        kq = k.copy()
        for h, c in enumerate(coders[il]):
            kq[:, h] = c(k[:, h])
        return kq
    return hook


def ktq_hook(width: int) -> np_llama.KeyHook:
    run = kw.ktq_keys(width)
    return lambda il, q, k: run(k)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, default=kv_quality.DEFAULT_TEXT)
    p.add_argument("--ctx", type=int, default=512, help="tokens per window; KLD over its second half")
    p.add_argument("--chunks", type=int, default=10, help="held-out test windows")
    p.add_argument("--cal-windows", type=int, default=3, help="calibration windows from the start of --text")
    p.add_argument("--widths", default="2,3")
    p.add_argument("--offsets", default="0,131072", help="position shifts of the test windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=kv_quality.REPO / "benchmarks" / "out" / "k_weighted_kld")
    args = p.parse_args()
    try:
        widths = tuple(int(x) for x in args.widths.split(","))
        offsets = [int(x) for x in args.offsets.split(",")]
    except ValueError:
        p.error("--widths and --offsets take comma-separated integers")
    if not set(widths) <= set(kw.WIDTHS) or any(o < 0 for o in offsets):
        p.error(f"--widths must be among {kw.WIDTHS}, --offsets >= 0")
    if args.chunks < 1 or args.cal_windows < 1 or args.ctx < 8:
        p.error("--chunks and --cal-windows must be >= 1 and --ctx >= 8")

    from tqdm import tqdm

    from llama_tq import _core

    args.out.mkdir(parents=True, exist_ok=True)
    path = kv_quality.f16_model(args.out, args.threads)
    model = np_llama.Llama.load(path)
    if model.rope.n_rot != kw.HEAD or model.tensors["blk.0.attn_k.weight"].shape[0] != kw.HEAD * model.n_head_kv:
        raise SystemExit(f"this benchmark handles head size {kw.HEAD} with RoPE over the whole head")
    runtime = _core.Model(str(path))
    held = kv_quality.held_out_text(args.text, args.out, n_bytes=args.ctx * args.chunks * 8).read_text("utf-8")
    test_tokens = runtime.tokenize(held)
    cal_tokens = runtime.tokenize(args.text.read_text("utf-8", errors="replace")[: args.ctx * args.cal_windows * 8])
    if len(test_tokens) < args.ctx * args.chunks or len(cal_tokens) < args.ctx * args.cal_windows:
        raise SystemExit("the text is too short for --chunks / --cal-windows windows of --ctx tokens")
    tests = [test_tokens[i * args.ctx:(i + 1) * args.ctx] for i in range(args.chunks)]
    cals = [cal_tokens[i * args.ctx:(i + 1) * args.ctx] for i in range(args.cal_windows)]

    ctx = _core.Context(runtime, n_ctx=args.ctx, n_batch=args.ctx, type_k="f16", type_v="f16", flash_attn=True,
                        n_threads=args.threads)
    agree = np_llama.check_against_runtime(model, np.asarray(ctx.decode(tests[0])), tests[0])
    print(f"numpy forward vs llama.cpp (F16 cache), window 0: mean KL {agree:.2e}")

    designs = fit_designs(model, calibration_rows(model, cals), widths, args.seed)
    hooks: dict[str, np_llama.KeyHook] = {}
    for w in widths:
        hooks[f"ktq{w}"] = ktq_hook(w)
        hooks[f"klt-{w}"] = coder_hook(designs[("klt", w)])
        hooks[f"pair-{w}"] = coder_hook(designs[("pair", w)])
    first = args.ctx // 2
    kl: dict[tuple[str, int], list] = {}
    top: dict[tuple[str, int], list] = {}
    for toks in tqdm(tests, desc="chunks", unit="chunk"):
        ref = model.logits(toks, first=first)
        for off in offsets:
            for name, hook in hooks.items():
                got = model.logits(toks, key_hook=hook, first=first, offset=off)
                kl.setdefault((name, off), []).append(np_llama.kld_rows(ref, got))
                top.setdefault((name, off), []).append(ref.argmax(-1) == got.argmax(-1))

    results = []
    for off in offsets:
        for w in widths:
            base = np.concatenate(kl[(f"ktq{w}", off)]).mean()
            for name in (f"ktq{w}", f"klt-{w}", f"pair-{w}"):
                v = np.concatenate(kl[(name, off)])
                results.append({"name": name, "design": name.rstrip("-0123456789"), "bits": w + 0.25,
                                "offset": off, "mean_kld": float(v.mean()), "median_kld": float(np.median(v)),
                                "p99_kld": float(np.quantile(v, 0.99)), "kld_vs_ktq": float(v.mean() / base),
                                "same_top": float(np.concatenate(top[(name, off)]).mean() * 100)})
    lines = [f"K only (V exact), {args.chunks} held-out windows of {args.ctx} tokens, KLD over the last "
             f"{args.ctx - first} of each against exact K; designs fitted on {args.cal_windows} windows from the "
             f"start of {args.text.name}; numpy forward vs llama.cpp: mean KL {agree:.2e}", "",
             "| K | bits | positions + | mean KLD | median KLD | p99 KLD | vs ktq | same top % |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['bits']:.2f} | {r['offset']} | {r['mean_kld']:.6f} | {r['median_kld']:.6f} | "
                     f"{r['p99_kld']:.6f} | {r['kld_vs_ktq']:.3f} | {r['same_top']:.2f} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "k_weighted_kld.md").write_text(table + "\n")
    (args.out / "k_weighted_kld.json").write_text(json.dumps({"forward_vs_runtime_kl": agree, "results": results},
                                                             indent=1))
    plot(results, args.out / "k_weighted_kld.png")
    print(f"wrote {args.out / 'k_weighted_kld'}.md, .json and .png")
    return 0


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["name"] for r in results))
    offsets = sorted({r["offset"] for r in results})
    width = 0.8 / len(offsets)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, off in enumerate(offsets):
        vals = [next(r["mean_kld"] for r in results if r["name"] == n and r["offset"] == off) for n in names]
        ax.bar([j + (i - (len(offsets) - 1) / 2) * width for j in range(len(names))], vals, width,
               label=f"positions +{off}")
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("mean KLD vs exact K (V exact)")
    ax.set_title("Query-weighted K coding, end to end (SmolLM2-135M, numpy forward pass)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
