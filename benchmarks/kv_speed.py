"""KV-cache speed: llama-bench pp512 / tg64 at several context depths, per cache-type pair, as ratios to f16.

Runs llama-bench (`-fa 1 -p 512 -n 64 -d DEPTHS -r REPS -o jsonl`) once per K/V pair on one model, appends the
raw records to OUT/speed.jsonl (a partial run keeps what it measured), then prints and writes a table
(OUT/speed.md) and a PNG (OUT/speed.png) from every record in OUT, ratios taken against f16/f16 of the same
model and depth. Standard library only apart from matplotlib for the plot, so it runs on a bare GPU machine:

    python benchmarks/kv_speed.py --bench build/bin/llama-bench --model rand-hd64.q4_k_m.gguf --label hd64 \\
        --pairs f16/f16,q8_0/q8_0,q4_0/q4_0,ktq2/vtq2 --depths 0,8192,32768,131072 --out benchmarks/out/kv_speed
    python benchmarks/kv_speed.py --report benchmarks/out/kv_speed       # table and PNG from saved records
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

DEFAULT_PAIRS = "f16/f16,q8_0/q8_0,q4_0/q4_0,ktq2/vtq2,ktq3/vtq3,ktq4/vtq3"


def find_bench(path: str | None) -> str:
    if path:
        return path
    try:
        from llama_tq import bundled

        return str(bundled.tool_path("llama-bench"))
    except ImportError:
        found = shutil.which("llama-bench")
        if not found:
            raise SystemExit("no llama-bench: pass --bench or install llama-tq") from None
        return found


def run_pair(bench: str, model: Path, pair: str, args: argparse.Namespace, label: str) -> list[dict]:
    type_k, type_v = pair.split("/")
    cmd = [bench, "-m", str(model), "-ngl", str(args.ngl), "-fa", "1", "-p", str(args.prompt), "-n", str(args.gen),
           "-d", args.depths, "-r", str(args.reps), "-ctk", type_k, "-ctv", type_v, "-o", "jsonl", *args.extra]
    print(f"# {' '.join(cmd)}", flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True)
    records = []
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            rec["label"] = label
            rec["pair"] = pair
            records.append(rec)
    if run.returncode != 0:
        print(f"llama-bench {pair} exited {run.returncode}:\n{run.stderr[-2000:]}", file=sys.stderr)
    return records


def load(out: Path) -> list[dict]:
    path = out / "speed.jsonl"
    if not path.exists():
        raise SystemExit(f"no records in {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(records: list[dict]) -> dict[tuple[str, str, int], dict[str, float]]:
    """(label, pair, depth) -> {'pp': t/s, 'tg': t/s, 'pp_sd':, 'tg_sd':}; the last record of a kind wins."""
    table: dict[tuple[str, str, int], dict[str, float]] = defaultdict(dict)
    for r in records:
        kind = "pp" if r["n_prompt"] > 0 and r["n_gen"] == 0 else "tg"
        key = (r["label"], r["pair"], int(r["n_depth"]))
        table[key][kind] = float(r["avg_ts"])
        table[key][kind + "_sd"] = float(r["stddev_ts"])
    return table


def _ts(v: dict[str, float], kind: str) -> str:
    return f"{v[kind]:.1f} ± {v[kind + '_sd']:.1f}" if kind in v else "-"


def _ratio(v: dict[str, float], base: dict[str, float], kind: str) -> str:
    return f"{v[kind] / base[kind]:.2f}" if kind in v and base.get(kind) else "-"


def format_table(table: dict) -> str:
    lines = ["| shape | K/V | depth | pp512 t/s | tg64 t/s | pp / f16 | tg / f16 |", "|---|---|---|---|---|---|---|"]
    for (label, pair, depth), v in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1] != "f16/f16",
                                                                        kv[0][1])):
        base = table.get((label, "f16/f16", depth), {})
        lines.append(f"| {label} | {pair} | {depth} | {_ts(v, 'pp')} | {_ts(v, 'tg')} | {_ratio(v, base, 'pp')} | "
                     f"{_ratio(v, base, 'tg')} |")
    return "\n".join(lines)


def plot(table: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({k[0] for k in table})
    if len({k[2] for k in table}) == 1:
        return _plot_variants(plt, table, labels, path)
    fig, axes = plt.subplots(len(labels), 2, figsize=(13, 4.5 * len(labels)), squeeze=False)
    for row, label in enumerate(labels):
        pairs = sorted({k[1] for k in table if k[0] == label}, key=lambda p: (p != "f16/f16", p))
        for col, kind in enumerate(("pp", "tg")):
            ax = axes[row][col]
            for pair in pairs:
                pts = sorted((d, v[kind]) for (lb, pr, d), v in table.items()
                             if lb == label and pr == pair and kind in v)
                if not pts:
                    continue
                xs = [max(d, 256) for d, _ in pts]
                ax.plot(xs, [y for _, y in pts], marker="o", ls="--" if "tq" not in pair else "-", label=pair)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context depth (tokens; 0 drawn at 256)")
            ax.set_ylabel(f"{'pp512' if kind == 'pp' else 'tg64'} tokens/s")
            ax.set_title(f"{label}: {'prefill' if kind == 'pp' else 'decode'}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _plot_variants(plt, table: dict, labels: list[str], path: Path) -> bool:
    """One depth only (runs that compare switches): grouped bars of t/s per run label, one bar per pair."""
    depth = next(iter(table))[2]
    pairs = sorted({k[1] for k in table}, key=lambda p: (p != "f16/f16", p))
    width = 0.8 / len(pairs)
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(labels)) * 2, 5), squeeze=False)
    for col, kind in enumerate(("pp", "tg")):
        ax = axes[0][col]
        for i, pair in enumerate(pairs):
            vals = [table.get((label, pair, depth), {}) for label in labels]
            xs = [j + (i - (len(pairs) - 1) / 2) * width for j in range(len(labels))]
            bars = ax.bar(xs, [v.get(kind, 0.0) for v in vals], width, yerr=[v.get(kind + "_sd", 0.0) for v in vals],
                          capsize=3, label=pair)
            for bar, label, v in zip(bars, labels, vals, strict=True):
                base = table.get((label, "f16/f16", depth), {}).get(kind)
                if pair != "f16/f16" and base and kind in v:
                    ax.annotate(f"{v[kind] / base:.2f}×", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=8, xytext=(0, 6), textcoords="offset points")
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"{'pp512' if kind == 'pp' else 'tg64'} tokens/s")
        ax.set_title(f"{'prefill' if kind == 'pp' else 'decode'} at depth {depth} (ratio to f16 above the bars)")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def report(out: Path) -> None:
    table = summarize(load(out))
    text = format_table(table)
    (out / "speed.md").write_text(text + "\n")
    print(text)
    if plot(table, out / "speed.png"):
        print(f"wrote {out / 'speed.md'} and {out / 'speed.png'}")
    else:
        print(f"wrote {out / 'speed.md'} (no matplotlib: no PNG)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="GGUF to time")
    p.add_argument("--label", default="model", help="name of the model shape in the table (e.g. hd64)")
    p.add_argument("--bench", help="llama-bench to run (default: the bundled one)")
    p.add_argument("--pairs", default=DEFAULT_PAIRS, help=f"comma-separated K/V pairs (default {DEFAULT_PAIRS})")
    p.add_argument("--depths", default="0,8192,32768,131072")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--gen", type=int, default=64)
    p.add_argument("--ngl", type=int, default=99)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "kv_speed")
    p.add_argument("--report", type=Path, metavar="DIR", help="only print/plot the records saved in DIR")
    p.add_argument("extra", nargs="*", help="more llama-bench arguments (after --)")
    args = p.parse_args()
    if args.report:
        report(args.report)
        return 0
    if not args.model or not args.model.is_file():
        raise SystemExit(f"--model {args.model}: no such GGUF")
    bench = find_bench(args.bench)
    args.out.mkdir(parents=True, exist_ok=True)
    for pair in args.pairs.split(","):
        if pair.count("/") != 1:
            raise SystemExit(f"pair {pair!r} is not K/V (e.g. ktq2/vtq2)")
        records = run_pair(bench, args.model, pair, args, args.label)
        with open(args.out / "speed.jsonl", "a") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    report(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
