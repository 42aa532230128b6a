"""KV-cache quality: perplexity and KL-divergence against f16-KV logits, per cache-type pair.

Runs the bundled llama-perplexity on a held-out slice of the Brown corpus (the last 20 %; fine-tuning
uses the first 80 %) with f16 model weights. Every run uses the quantized cache during prefill as well:
llama.cpp writes each ubatch's K/V into the cache (SET_ROWS) and flash attention reads them back from it,
with no f16 staging. Prints a table, and writes it (markdown + JSON) and a PNG to --out.

    python benchmarks/kv_quality.py                       # all pairs, 20 x 512 tokens
    python benchmarks/kv_quality.py --pairs ktq2/vtq2,q4_0/q4_0 --chunks 4

K centering (LLAMA_TQ_K_MEANS, a file from `tq-calibrate k-means`): a pair written K/V+kc runs with
--k-means FILE in the environment, and is labelled so; the f16 reference never is. The ktqp K types need
--k-profiles FILE (LLAMA_TQ_K_PROFILES, from `tq-calibrate k-profiles`); with it, their pairs (KP_PAIRS) join the
default list.

    python benchmarks/kv_quality.py --k-means smol.kmeans.gguf --pairs ktq2/vtq2,ktq2/vtq2+kc
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llama_tq import bundled, testmodel
from llama_tq.codecs import bits_per_element

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = Path(os.environ.get("LLAMA_TQ_SHARED", REPO.parent / "shared")) / "data" / "brown.txt"

UPSTREAM_PAIRS = ["f16/f16", "q8_0/q8_0", "q5_1/q5_1", "q5_0/q5_0", "q4_1/q4_1", "q4_0/q4_0", "iq4_nl/iq4_nl"]
OUR_PAIRS = [
    "ktq2/vtq2", "ktq3/vtq3", "ktq4/vtq4",                  # the trellis V (default variant)
    "ktq4/vtq2", "ktq4/vtq3", "ktq3/vtq2",                  # K-heavy mixes
    "ktq2/vtq2_1", "ktq3/vtq3_1", "ktq4/vtq4_1",            # codebook V
    "ktq2/vtq2_3", "ktq3/vtq3_3", "ktq4/vtq4_3",            # trellis + outliers V
    "q8_0/vtq2", "ktq4/q8_0", "ktq2/f16", "f16/vtq2",       # one side alone
]
KP_PAIRS = ["ktqp2/vtq2", "ktqp3/vtq3", "ktqp3/vtq2", "ktqp2/f16", "ktqp3/f16"]  # with --k-profiles

FIELDS = {
    "ppl": r"Mean PPL\(Q\)\s*:\s*(-?[0-9.]+)",
    "kld_mean": r"Mean\s+KLD:\s*(-?[0-9.]+)",
    "kld_median": r"Median\s+KLD:\s*(-?[0-9.]+)",
    "kld_p99": r"99\.0%\s+KLD:\s*(-?[0-9.]+)",
    "same_top": r"Same top p:\s*(-?[0-9.]+)",
}


@dataclass
class Row:
    type_k: str
    type_v: str
    bits_k: float
    bits_v: float
    ppl: float
    kld_mean: float
    kld_median: float
    kld_p99: float
    same_top: float
    seconds: float
    centered: bool = False  # K centering on (LLAMA_TQ_K_MEANS)

    @property
    def bits(self) -> float:
        return (self.bits_k + self.bits_v) / 2

    @property
    def label(self) -> str:
        return f"{self.type_k}/{self.type_v}" + ("+kc" if self.centered else "")


def split_pair(pair: str) -> tuple[str, str, bool]:
    """'ktq2/vtq2+kc' -> ('ktq2', 'vtq2', True): K type, V type, K centering on."""
    type_k, _, type_v = pair.partition("/")
    return type_k, type_v.removesuffix("+kc"), type_v.endswith("+kc")


def held_out_text(text_path: Path, out_dir: Path, n_bytes: int) -> Path:
    text = text_path.read_text(encoding="utf-8")
    start = int(len(text) * 0.8)
    path = out_dir / "eval.txt"
    path.write_text(text[start:start + n_bytes], encoding="utf-8")
    return path


def f16_model(out_dir: Path, threads: int) -> Path:
    path = out_dir / "SmolLM2-135M-Instruct.F16.gguf"
    if not path.exists():
        src = testmodel.test_model_path()
        tmp = path.with_suffix(".tmp")
        run = bundled.run_tool("quantize", ["--allow-requantize", str(src), str(tmp), "F16", str(threads)],
                               capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"llama-quantize failed:\n{run.stderr[-2000:]}")
        tmp.replace(path)
    return path


TQ_ENV = ("LLAMA_TQ_K_MEANS", "LLAMA_TQ_K_LAYERS", "LLAMA_TQ_V_LAYERS", "LLAMA_TQ_K_PROFILES")


def perplexity(model: Path, text: Path, type_k: str, type_v: str, args, extra: list[str],
               k_means: Path | None = None, env_extra: dict[str, str] | None = None) -> tuple[str, float]:
    """One llama-perplexity run; the llama-tq variables of the caller's environment are dropped, so only
    k_means and env_extra apply."""
    env = {k: v for k, v in os.environ.items() if k not in TQ_ENV}
    if k_means is not None:
        env["LLAMA_TQ_K_MEANS"] = str(k_means)
    env.update(env_extra or {})
    cmd = ["-m", str(model), "-f", str(text), "-c", str(args.ctx), "-b", str(args.ctx), "-ub", str(args.ubatch),
           "--chunks", str(args.chunks), "-fa", "on", "-ctk", type_k, "-ctv", type_v, "-t", str(args.threads),
           *extra]
    t0 = time.time()
    run = bundled.run_tool("perplexity", cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"llama-perplexity -ctk {type_k} -ctv {type_v} failed:\n{run.stderr[-3000:]}")
    return run.stdout + run.stderr, time.time() - t0


def parse(log: str) -> dict[str, float]:
    values = {}
    for key, pattern in FIELDS.items():
        m = re.search(pattern, log)
        if not m:
            raise ValueError(f"no '{key}' in llama-perplexity output")
        values[key] = float(m.group(1))
    return values


def format_table(rows: list[Row]) -> str:
    head = ("| K | V | bits K | bits V | bits avg | PPL | mean KLD | median KLD | p99 KLD | same top % |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        k = r.type_k + (" +kc" if r.centered else "")
        lines.append(f"| {k} | {r.type_v} | {r.bits_k:.2f} | {r.bits_v:.2f} | {r.bits:.3f} | {r.ppl:.4f} | "
                     f"{r.kld_mean:.6f} | {r.kld_median:.6f} | {r.kld_p99:.6f} | {r.same_top:.2f} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    for ax, key, ylabel in ((axes[0], "kld_mean", "mean KLD vs f16 KV (log)"), (axes[1], "ppl", "perplexity")):
        for r in rows:
            if r.label == "f16/f16" and key == "kld_mean":
                continue
            ours = "tq" in r.label
            ax.scatter(r.bits, getattr(r, key), marker="o" if ours else "s", s=40,
                       color="tab:red" if ours else "tab:blue")
            ax.annotate(r.label, (r.bits, getattr(r, key)), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("bits per element (K and V averaged)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    base = next((r for r in rows if r.label == "f16/f16"), None)
    if base:
        axes[1].axhline(base.ppl, color="gray", ls="--", lw=1, label="f16 KV")
        axes[1].legend()
    axes[0].scatter([], [], marker="o", color="tab:red", label="llama-tq ktq/vtq")
    axes[0].scatter([], [], marker="s", color="tab:blue", label="upstream (rotated)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    p.add_argument("--model", type=Path, help="GGUF (default: the SmolLM2-135M test model, as F16 weights)")
    p.add_argument("--pairs", help="comma-separated K/V pairs (default: upstream and ours)")
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "kv_quality")
    p.add_argument("--k-means", type=Path, help="LLAMA_TQ_K_MEANS file for the pairs written K/V+kc")
    p.add_argument("--k-profiles", type=Path, help="LLAMA_TQ_K_PROFILES file for the ktqp pairs (adds KP_PAIRS)")
    p.add_argument("--reuse-base", action="store_true",
                   help="reuse the f16 logits of an earlier run in --out (same model, text and --chunks)")
    p.add_argument("--backend", default="CPU", help="label for the title (e.g. 'CUDA H100')")
    p.add_argument("--from-logs", type=Path, metavar="DIR",
                   help="no runs: build the table from llama-perplexity logs K-V.log saved in DIR (e.g. by "
                        "tools/gpu_check.sh on a GPU machine)")
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_logs:
        return report_from_logs(args)
    model = args.model or f16_model(args.out, args.threads)
    text = held_out_text(args.text, args.out, n_bytes=args.chunks * args.ctx * 8)
    pairs = args.pairs.split(",") if args.pairs else \
        UPSTREAM_PAIRS + OUR_PAIRS + (KP_PAIRS if args.k_profiles else [])
    if "f16/f16" not in pairs:
        pairs.insert(0, "f16/f16")

    base_file = args.out / "base-f16.kld"
    if not (args.reuse_base and base_file.exists()):
        base_log, _ = perplexity(model, text, "f16", "f16", args, ["--kl-divergence-base", str(base_file)])
        (args.out / "base-f16.log").write_text(base_log)

    rows: list[Row] = []
    from tqdm import tqdm

    for pair in tqdm(pairs, desc="cache pairs", unit="pair"):
        type_k, type_v, centered = split_pair(pair)
        if centered and args.k_means is None:
            sys.exit(f"{pair}: K centering needs --k-means FILE (from `tq-calibrate k-means`)")
        profiled = type_k.startswith("ktqp")
        if profiled and args.k_profiles is None:
            sys.exit(f"{pair}: ktqp needs --k-profiles FILE (from `tq-calibrate k-profiles`)")
        log, seconds = perplexity(model, text, type_k, type_v, args,
                                  ["--kl-divergence-base", str(base_file), "--kl-divergence"],
                                  k_means=args.k_means if centered else None,
                                  env_extra={"LLAMA_TQ_K_PROFILES": str(args.k_profiles)} if profiled else None)
        (args.out / f"{type_k}-{type_v}{'+kc' if centered else ''}.log").write_text(log)
        rows.append(Row(type_k, type_v, bits_per_element(type_k), bits_per_element(type_v), **parse(log),
                        seconds=seconds, centered=centered))

    title = (f"{model.name}: {args.chunks} x {args.ctx} tokens of held-out Brown text, "
             f"ubatch {args.ubatch}, FA on, {args.backend}")
    write_report(rows, args.out, title)
    return 0


def report_from_logs(args: argparse.Namespace) -> int:
    logs = {p.stem: p for p in args.from_logs.glob("*.log") if p.stem.count("-") == 1 and "base" not in p.stem}
    if not logs:
        raise SystemExit(f"no K-V.log files in {args.from_logs}")
    pairs = args.pairs.split(",") if args.pairs else UPSTREAM_PAIRS + OUR_PAIRS
    rows = []
    for pair in pairs:
        type_k, type_v, centered = split_pair(pair)
        path = logs.get(f"{type_k}-{type_v}{'+kc' if centered else ''}")
        if path is None:
            print(f"no log for {pair}", file=sys.stderr)
            continue
        rows.append(Row(type_k, type_v, bits_per_element(type_k), bits_per_element(type_v),
                        **parse(path.read_text(errors="replace")), seconds=0.0, centered=centered))
    title = f"logs of {args.from_logs.name}: {args.chunks} x {args.ctx} tokens of held-out Brown text, {args.backend}"
    write_report(rows, args.out, title)
    return 0


def write_report(rows: list[Row], out: Path, title: str) -> None:
    table = format_table(rows)
    print(title)
    print(table)
    (out / "kv_quality.md").write_text(f"{title}\n\n{table}\n")
    (out / "kv_quality.json").write_text(json.dumps([asdict(r) | {"bits": r.bits} for r in rows], indent=1))
    plot(rows, out / "kv_quality.png", title)
    print(f"wrote {out / 'kv_quality.md'}, .json and .png")


if __name__ == "__main__":
    sys.exit(main())
