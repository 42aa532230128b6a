"""Needle in a haystack per KV-cache type pair: retrieval accuracy, depth x context, with tq-server.

A fact ("The secret passphrase is <word>.") is hidden at several depths of Brown-corpus filler up to the
model's trained context; the model (greedy, through llama-server's chat template) is asked for it. One
server per cache pair. Prints a table, and writes it (markdown + JSON) and a heatmap PNG to --out.

    python benchmarks/needle.py                         # 6 pairs x 4 contexts (1K..8000) x 5 depths
    python benchmarks/needle.py --quick                 # 512..2048 tokens, 3 depths
    python benchmarks/needle.py --pairs ktq2/vtq2 --contexts 4096,8000 --depths 0,0.5,1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llama_tq import needle, testmodel

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = Path(os.environ.get("LLAMA_TQ_SHARED", REPO.parent / "shared")) / "data" / "brown.txt"
DEFAULT_PAIRS = "f16/f16,q8_0/q8_0,q4_0/q4_0,ktq4/vtq4,ktq3/vtq3,ktq2/vtq2"


def markdown_table(trials: Sequence[needle.Trial], contexts: Sequence[int]) -> str:
    summary = needle.summarize(trials)
    head = "| K/V | " + " | ".join(f"{c} tok" for c in contexts) + " | all |"
    lines = [head, "|---" * (len(contexts) + 2) + "|"]
    for pair, d in summary.items():
        cells = []
        for c in contexts:
            x = d["by_ctx"].get(str(c), {"n": 0, "found": 0})
            cells.append(f"{x['found']}/{x['n']}")
        pct = 100 * d["found"] / d["n"]
        lines.append(f"| {pair} | " + " | ".join(cells) + f" | {d['found']}/{d['n']} ({pct:.0f} %) |")
    return "\n".join(lines)


def heatmap(trials: Sequence[needle.Trial], contexts: Sequence[int], depths: Sequence[float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = list(dict.fromkeys(f"{t.type_k}/{t.type_v}" for t in trials))
    ncol = min(3, len(pairs))
    nrow = (len(pairs) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow), dpi=110, squeeze=False)
    ds = sorted(depths)
    for ax, pair in zip(axes.flat, pairs, strict=False):
        grid = np.full((len(ds), len(contexts)), np.nan)
        for t in trials:
            if f"{t.type_k}/{t.type_v}" == pair:
                grid[ds.index(t.depth), list(contexts).index(t.n_ctx)] = float(t.found)
        ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto", origin="lower")
        ax.set_xticks(range(len(contexts)), [str(c) for c in contexts], fontsize=7)
        ax.set_yticks(range(len(ds)), [f"{d:.0%}" for d in ds], fontsize=7)
        acc = np.nanmean(grid) if np.isfinite(grid).any() else float("nan")
        ax.set_title(f"{pair}: {acc:.0%}", fontsize=9)
        ax.set_xlabel("context (tokens)", fontsize=8)
        ax.set_ylabel("needle depth", fontsize=8)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    fig.suptitle("Needle in a haystack (green: retrieved)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", help="GGUF model (default: the SmolLM2-135M test model)")
    p.add_argument("--pairs", default=DEFAULT_PAIRS)
    p.add_argument("--contexts", default="1024,2048,4096,8000", help="prompt lengths in tokens")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--quick", action="store_true", help="contexts 512,1024,2048 and depths 0,0.5,1")
    p.add_argument("--text", default=str(DEFAULT_TEXT), help="filler corpus (one sentence per line)")
    p.add_argument("--offset", type=int, default=0, help="character offset of the filler in the corpus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 2, help="threads per server")
    p.add_argument("-j", "--jobs", type=int, default=1, help="servers (cache pairs) run at once")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "out"))
    p.add_argument("--server-args", default="", help="extra llama-server flags, e.g. '-ngl 99'")
    args = p.parse_args(argv)

    if args.quick:
        args.contexts, args.depths = "512,1024,2048", "0,0.5,1"
    contexts = [int(c) for c in args.contexts.split(",")]
    depths = [float(d) for d in args.depths.split(",")]
    pairs = [tuple(x.split("/")) for x in args.pairs.split(",")]
    model = args.model or str(testmodel.test_model_path())
    sentences = needle.load_sentences(args.text, start=args.offset, n_chars=max(contexts) * 8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print(f"model {model}\ncontexts {contexts}, depths {depths}, {len(pairs)} pairs, {args.jobs} at once, "
          f"{args.threads} threads each", flush=True)
    def progress(t: needle.Trial) -> None:
        mark = "ok  " if t.found else "MISS"
        print(f"  {t.type_k}/{t.type_v} ctx {t.n_ctx:>5} ({t.n_prompt} tok) depth {t.depth:4.0%} {mark} "
              f"{t.word!r} -> {t.answer!r}  {t.seconds:.1f} s", flush=True)

    def one_pair(pair: tuple[str, ...]) -> list[needle.Trial]:
        t0 = time.monotonic()
        res = needle.run_pair(model, pair[0], pair[1], sentences, contexts, depths, seed=args.seed,
                              threads=args.threads, progress=progress, extra=args.server_args.split())
        print(f"{pair[0]}/{pair[1]}: {time.monotonic() - t0:.0f} s", flush=True)
        return res

    t_all = time.monotonic()
    with ThreadPoolExecutor(max(1, args.jobs)) as ex:  # one llama-server per pair; --jobs of them at once
        trials = [t for res in ex.map(one_pair, pairs) for t in res]
    elapsed = time.monotonic() - t_all

    table = markdown_table(trials, contexts)
    print()
    print(table)
    print(f"\n{len(trials)} trials in {elapsed:.0f} s")
    (out / "needle.md").write_text(table + "\n")
    (out / "needle.json").write_text(json.dumps({
        "model": model, "contexts": contexts, "depths": depths, "seed": args.seed, "seconds": elapsed,
        "summary": needle.summarize(trials), "trials": needle.trials_to_json(trials)}, indent=2))
    heatmap(trials, contexts, depths, out / "needle.png")
    print(f"wrote {out / 'needle.md'}, {out / 'needle.json'}, {out / 'needle.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
