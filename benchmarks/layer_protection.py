"""Per-layer cache types: which layers a low-bit cache should keep at a higher precision, and what it buys.

Same runs as kv_quality.py (llama-perplexity on held-out Brown text, f16 weights, KL-divergence against the
f16-KV logits, the quantized cache read during prefill too), with LLAMA_TQ_K_LAYERS / LLAMA_TQ_V_LAYERS set
per configuration. Bits per element are averaged over the layers (every layer of the test model has the
same K/V width). Prints a table, writes it (markdown + JSON) and a PNG to --out.

    # one run per layer: layer i's K at f16, every other layer ktq2 (V f16): where the K error hurts
    python benchmarks/layer_protection.py --sweep-k f16 --base ktq2/f16 --chunks 4
    # the same for V: layer i's V at f16, every other layer vtq2 (K ktq4)
    python benchmarks/layer_protection.py --sweep-v f16 --base ktq4/vtq2 --chunks 4
    # configurations, '|'-separated: "K/V [k:RULES] [v:RULES]" (RULES as in the variables)
    python benchmarks/layer_protection.py --configs "ktq2/vtq2|ktq2/vtq2 k:0,-1=q8_0"
    # the same with K centering (a file from `tq-calibrate k-means`) in every configuration
    python benchmarks/layer_protection.py --k-means smol.kmeans.gguf --configs "ktq3/vtq2|ktq3/vtq2 k:0-2=ktq4"
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kv_quality  # noqa: E402  (the runs, the parser and the held-out text are kv_quality's)

from llama_tq.codecs import bits_per_element  # noqa: E402

N_LAYER_DEFAULT = 30  # SmolLM2-135M


def layer_types(base: str, rules: str | None, n_layer: int) -> list[str]:
    """The type of every layer under RULES, by the runtime's own parser (src/ggml-tq/tq-layer-types.c)."""
    from llama_tq import _core

    return [t or base for t in _core.layer_types(rules or "", n_layer)]


@dataclass
class Config:
    type_k: str
    type_v: str
    k_rules: str | None = None
    v_rules: str | None = None
    n_layer: int = N_LAYER_DEFAULT
    result: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, n_layer: int) -> Config:
        parts = text.split()
        type_k, _, type_v = parts[0].partition("/")
        rules = {p[:2]: p[2:] for p in parts[1:]}
        unknown = set(rules) - {"k:", "v:"}
        if unknown or not type_v:
            raise SystemExit(f"bad configuration {text!r}: expected 'K/V [k:RULES] [v:RULES]'")
        return cls(type_k, type_v, rules.get("k:"), rules.get("v:"), n_layer)

    @property
    def label(self) -> str:
        return " ".join([f"{self.type_k}/{self.type_v}"] + [f"{s}:{r}" for s, r in (("k", self.k_rules),
                                                                                      ("v", self.v_rules)) if r])

    @property
    def file_stem(self) -> str:
        return self.label.replace("/", "-").replace(" ", "_").replace(":", "").replace(";", "+").replace(",", ".")

    def bits(self, side: str) -> float:
        base, rules = (self.type_k, self.k_rules) if side == "k" else (self.type_v, self.v_rules)
        types = layer_types(base, rules, self.n_layer)
        return sum(bits_per_element(t) for t in types) / len(types)

    def env(self) -> dict[str, str]:
        env = {}
        if self.k_rules:
            env["LLAMA_TQ_K_LAYERS"] = self.k_rules
        if self.v_rules:
            env["LLAMA_TQ_V_LAYERS"] = self.v_rules
        return env


def format_table(configs: list[Config]) -> str:
    lines = ["| configuration | bits K | bits V | bits avg | PPL | mean KLD | p99 KLD | same top % |",
             "|---|---|---|---|---|---|---|---|"]
    for c in configs:
        bk, bv = c.bits("k"), c.bits("v")
        r = c.result
        lines.append(f"| {c.label} | {bk:.3f} | {bv:.3f} | {(bk + bv) / 2:.3f} | {r['ppl']:.4f} | "
                     f"{r['kld_mean']:.6f} | {r['kld_p99']:.6f} | {r['same_top']:.2f} |")
    return "\n".join(lines)


def plot(configs: list[Config], path: Path, title: str, sweep: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 5.5))
    if sweep:
        base = configs[0].result["kld_mean"]
        layers = list(range(len(configs) - 1))
        ax.bar(layers, [c.result["kld_mean"] for c in configs[1:]], color="tab:red")
        ax.axhline(base, color="gray", ls="--", lw=1, label=f"no layer protected ({configs[0].label})")
        ax.set_xlabel("protected layer")
        ax.set_xticks(layers)
        ax.set_ylabel("mean KLD vs f16 KV")
        ax.legend()
    else:
        for c in configs:
            bits = (c.bits("k") + c.bits("v")) / 2
            ax.scatter(bits, c.result["kld_mean"], color="tab:red" if (c.k_rules or c.v_rules) else "tab:blue")
            ax.annotate(c.label, (bits, c.result["kld_mean"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("bits per element (K and V averaged over layers)")
        ax.set_ylabel("mean KLD vs f16 KV (log)")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, default=kv_quality.DEFAULT_TEXT)
    p.add_argument("--model", type=Path, help="GGUF (default: the SmolLM2-135M test model, as F16 weights)")
    p.add_argument("--configs", help="'|'-separated configurations 'K/V [k:RULES] [v:RULES]'")
    p.add_argument("--sweep-k", metavar="TYPE", help="one configuration per layer: that layer's K at TYPE")
    p.add_argument("--sweep-v", metavar="TYPE", help="one configuration per layer: that layer's V at TYPE")
    p.add_argument("--base", default="ktq2/f16", help="K/V of a sweep's other layers (default ktq2/f16)")
    p.add_argument("--n-layer", type=int, default=N_LAYER_DEFAULT)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--threads", type=int, default=kv_quality.os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=kv_quality.REPO / "benchmarks" / "out" / "layer_protection")
    p.add_argument("--k-means", type=Path, help="LLAMA_TQ_K_MEANS file: K centering on in every configuration")
    p.add_argument("--reuse-base", action="store_true",
                   help="reuse the f16 logits of an earlier run in --out (same model, text and --chunks)")
    args = p.parse_args()
    if sum(map(bool, (args.configs, args.sweep_k, args.sweep_v))) != 1:
        p.error("give one of --configs, --sweep-k, --sweep-v")
    sweep = args.sweep_k or args.sweep_v
    side = "k" if args.sweep_k else "v"

    if sweep:
        configs = [Config.parse(args.base, args.n_layer)]
        configs += [Config.parse(f"{args.base} {side}:{il}={sweep}", args.n_layer) for il in range(args.n_layer)]
    else:
        configs = [Config.parse(c.strip(), args.n_layer) for c in args.configs.split("|") if c.strip()]

    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model or kv_quality.f16_model(args.out, args.threads)
    text = kv_quality.held_out_text(args.text, args.out, n_bytes=args.chunks * args.ctx * 8)
    base_file = args.out / "base-f16.kld"
    if not (args.reuse_base and base_file.exists()):
        log, _ = kv_quality.perplexity(model, text, "f16", "f16", args, ["--kl-divergence-base", str(base_file)])
        (args.out / "base-f16.log").write_text(log)

    from tqdm import tqdm

    for c in tqdm(configs, desc="configurations", unit="run"):
        log, _ = kv_quality.perplexity(model, text, c.type_k, c.type_v, args,
                                       ["--kl-divergence-base", str(base_file), "--kl-divergence"],
                                       k_means=args.k_means, env_extra=c.env())
        (args.out / f"{c.file_stem}.log").write_text(log)
        c.result = kv_quality.parse(log)

    title = (f"{model.name}: {args.chunks} x {args.ctx} tokens of held-out Brown text, FA on, CPU"
             + (", K centering on" if args.k_means else ""))
    table = format_table(configs)
    print(title)
    print(table)
    name = f"sweep-{side}" if sweep else "configs"
    (args.out / f"{name}.md").write_text(f"{title}\n\n{table}\n")
    (args.out / f"{name}.json").write_text(json.dumps(
        [asdict(c) | {"label": c.label, "bits_k": c.bits("k"), "bits_v": c.bits("v")} for c in configs], indent=1))
    plot(configs, args.out / f"{name}.png", title, sweep=bool(sweep))
    print(f"wrote {args.out / name}.md, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
