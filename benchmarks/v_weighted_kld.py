#!/usr/bin/env python3
"""Does V gain from a calibrated, weighted coder as K does? End-to-end KLD with K exact.

V has no RoPE, so a basis fitted on calibration rows holds at every position. The error that counts is what the
output projection makes of it: for KV head h, E|W_o,g e|² summed over the query heads g that read it, so the
weight matrix is Σ_g W_o,gᵀ W_o,g. vklt-N is k_weighted_proxy's transform coder with that weight in place of the
queries' second moment (64·N + 16 bits per vector, no per-vector scale), fitted per layer and KV head on
calibration windows from the start of the text; vtqN is the shipped type through the CPU reference (upstream's
rotation, a scale per block, the trellis). "+first" keeps each window's first row of V exact (the attention
sink's value, which most queries read). The model runs in numpy (np_llama.py); mean KLD over the second half of
each held-out window against exact K and V.

    python benchmarks/v_weighted_kld.py [--chunks 4] [--widths 2,3]

Writes v_weighted_kld.md and .json to --out (default benchmarks/out/v_weighted_kld). 2 threads: about 5 min.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import k_weighted_kld as kk  # noqa: E402
import k_weighted_proxy as kw  # noqa: E402
import kv_quality  # noqa: E402
import np_llama  # noqa: E402


def fit_v_coders(model: np_llama.Llama, windows: list[list[int]], widths: tuple[int, ...]
                 ) -> dict[int, dict[int, list[kw.Coder]]]:
    """{width: {layer: [coder per KV head]}} weighted by the output projection."""
    rows: dict[int, list] = {}

    def grab(il: int, v: kw.F64) -> kw.F64:
        rows.setdefault(il, []).append(v)
        return v

    for w in windows:
        model.logits(w, value_hook=grab, first=len(w) - 1)
    group = model.n_head // model.n_head_kv
    out: dict[int, dict[int, list[kw.Coder]]] = {}
    for il, vs in rows.items():
        wo = model.tensors[f"blk.{il}.attn_output.weight"].astype(np.float64)
        for h in range(model.n_head_kv):
            d = vs[0].shape[2]
            # rows whose second moment is Σ_g W_o,gᵀ W_o,g (up to a factor, which the coder ignores)
            weight_rows = np.concatenate([wo[:, g * d:(g + 1) * d] for g in range(h * group, (h + 1) * group)])
            v = np.concatenate([x[:, h] for x in vs])
            for w, c in kw.klt_coders(weight_rows, v, {w: d * w + 16 for w in widths}).items():
                out.setdefault(w, {}).setdefault(il, []).append(c)
    return out


def coder_hook(coders: dict[int, list[kw.Coder]]) -> np_llama.ValueHook:
    def hook(il: int, v: kw.F64) -> kw.F64:
        out = v.copy()
        for h, c in enumerate(coders[il]):
            out[:, h] = c(v[:, h])
        return out
    return hook


def first_exact(hook: np_llama.ValueHook) -> np_llama.ValueHook:
    def run(il: int, v: kw.F64) -> kw.F64:
        out = hook(il, v)
        out[0] = v[0]
        return out
    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, default=kv_quality.DEFAULT_TEXT)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--cal-windows", type=int, default=3)
    p.add_argument("--widths", default="2,3")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=kv_quality.REPO / "benchmarks" / "out" / "v_weighted_kld")
    args = p.parse_args()
    try:
        widths = tuple(int(x) for x in args.widths.split(","))
    except ValueError:
        p.error("--widths takes comma-separated integers")
    if not set(widths) <= set(kw.WIDTHS) or args.chunks < 1 or args.cal_windows < 1 or args.ctx < 8:
        p.error(f"--widths among {kw.WIDTHS}; --chunks, --cal-windows >= 1; --ctx >= 8")

    from tqdm import tqdm

    model, _, tests, cals = kk.load_windows(args)
    coders = fit_v_coders(model, cals, widths)
    hooks: dict[str, tuple[int, np_llama.ValueHook]] = {}
    for w in widths:
        shipped = kk.value_hook(f"vtq{w}")
        assert shipped is not None
        hooks[f"vtq{w}"] = (w, shipped)
        hooks[f"vtq{w}+first"] = (w, first_exact(shipped))
        hooks[f"vklt-{w}"] = (w, coder_hook(coders[w]))
        hooks[f"vklt-{w}+first"] = (w, first_exact(coder_hook(coders[w])))
    first = args.ctx // 2
    kl: dict[str, list] = {}
    for toks in tqdm(tests, desc="chunks", unit="chunk"):
        ref = model.logits(toks, first=first)
        for name, (_, hook) in hooks.items():
            kl.setdefault(name, []).append(np_llama.kld_rows(ref, model.logits(toks, first=first, value_hook=hook)))
    results = [{"name": n, "bits": hooks[n][0] + 0.25,
                "mean_kld": float(np.concatenate(v).mean()), "p99_kld": float(np.quantile(np.concatenate(v), 0.99))}
               for n, v in kl.items()]
    lines = [f"K exact; {args.chunks} held-out windows of {args.ctx} tokens, KLD over the last {args.ctx - first}; "
             f"vklt fitted on {args.cal_windows} windows from the start of {args.text.name}", "",
             "| V | bits | mean KLD | p99 KLD |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['bits']:.2f} | {r['mean_kld']:.6f} | {r['p99_kld']:.6f} |" for r in results]
    table = "\n".join(lines)
    print(table)
    (args.out / "v_weighted_kld.md").write_text(table + "\n")
    (args.out / "v_weighted_kld.json").write_text(json.dumps({"results": results}, indent=1))
    print(f"wrote {args.out / 'v_weighted_kld'}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
