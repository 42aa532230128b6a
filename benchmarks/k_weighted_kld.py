#!/usr/bin/env python3
"""The query-weighted K designs of k_weighted_proxy.py, scored end to end by the model's KL divergence.

k_weighted_proxy.py scores each layer's attention alone, with exact inputs. Here the whole model runs (np_llama.py,
a numpy forward pass checked against llama.cpp's logits first) with every layer's keys replaced by their
quantized values, so errors carry through the later layers as in llama-perplexity: the mean KLD over the second
half of each held-out window, against exact K, is comparable with kv_quality.py's K-only rows (ktq2/f16 etc.; V
exact here, or --v-type through the CPU reference). Designs: ktqN (the shipped type through the CPU reference),
klt-N and pair-N (fitted per layer and KV head on calibration windows from the start of the text), profP-N
(k_profiles.py: query-energy folding and a table of P bit profiles, "prof-N" one per calibration head), at the
windows' own positions and shifted by --offsets (RoPE is relative, so exact logits do not change;
position-bound designs do).

    python benchmarks/k_weighted_kld.py [--chunks 10] [--widths 2,3] [--offsets 0,131072] [--profiles 0,16]
                                        [--v-type f16]

Writes k_weighted_kld.md, .json and .png to --out (default benchmarks/out/k_weighted_kld). 2 threads: about
25 min with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import k_profiles  # noqa: E402
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


def fit_profiles(model: np_llama.Llama, rows: dict[int, tuple[list, list]], widths: tuple[int, ...],
                 n_profiles: list[int], seed: int
                 ) -> tuple[dict[int, list[kw.F64]], dict[tuple[int, int], k_profiles.ProfileTable]]:
    """The folding scales {layer: [a per KV head]} and the profile tables {(P, width): table} of k_profiles."""
    rng = np.random.default_rng(seed)
    group = model.n_head // model.n_head_kv
    folds: dict[int, list[kw.F64]] = {}
    rms, samples = [], []
    for il in sorted(rows):
        qs, ks = rows[il]
        for h in range(model.n_head_kv):
            q = np.concatenate([x[:, h * group:(h + 1) * group].reshape(-1, x.shape[2]) for x in qs])
            y = np.concatenate([x[:, h] for x in ks]) * (a := k_profiles.fold_scales(q, model.rope))
            folds.setdefault(il, []).append(a)
            rms.append(k_profiles.pair_rms(y, model.rope))
            samples.append(k_profiles.shape_sample(y, model.rope, rng))
    tables = {}
    for n in n_profiles:
        for w, t in k_profiles.fit_tables(rms, samples, widths, n, model.rope, seed).items():
            tables[(n, w)] = t
    return folds, tables


def profile_hook(folds: dict[int, list[kw.F64]], table: k_profiles.ProfileTable) -> np_llama.KeyHook:
    def hook(il: int, q: kw.F64, k: kw.F64) -> kw.F64:
        kq = k.copy()
        for h, a in enumerate(folds[il]):
            kq[:, h] = table(k[:, h] * a)[0] / a
        return kq
    return hook


def value_hook(cache_type: str) -> np_llama.ValueHook | None:
    """V through a cache type as the runtime stores it (upstream's rotation, the CPU reference, rotated back)."""
    if cache_type == "f16":
        return None

    def hook(il: int, v: kw.F64) -> kw.F64:
        vr = kw.hadamard_rows(v, kw.HEAD).astype(np.float32).reshape(-1, kw.HEAD)
        return kw.hadamard_rows(kw.codecs.round_trip(cache_type, vr).astype(np.float64).reshape(v.shape), kw.HEAD)
    return hook


def ktq_hook(width: int) -> np_llama.KeyHook:
    run = kw.ktq_keys(width)
    return lambda il, q, k: run(k)


def load_windows(args: argparse.Namespace) -> tuple[np_llama.Llama, object, list[list[int]], list[list[int]]]:
    """The F16 test model (numpy and llama.cpp), args.chunks held-out test windows and args.cal_windows
    calibration windows from the start of args.text, each of args.ctx tokens."""
    from llama_tq import _core

    args.out.mkdir(parents=True, exist_ok=True)
    path = kv_quality.f16_model(args.out, args.threads)
    model = np_llama.Llama.load(path)
    runtime = _core.Model(str(path))
    held = kv_quality.held_out_text(args.text, args.out, n_bytes=args.ctx * args.chunks * 8).read_text("utf-8")
    test_tokens = runtime.tokenize(held)
    cal_tokens = runtime.tokenize(args.text.read_text("utf-8", errors="replace")[: args.ctx * args.cal_windows * 8])
    if len(test_tokens) < args.ctx * args.chunks or len(cal_tokens) < args.ctx * args.cal_windows:
        raise SystemExit("the text is too short for --chunks / --cal-windows windows of --ctx tokens")
    tests = [test_tokens[i * args.ctx:(i + 1) * args.ctx] for i in range(args.chunks)]
    cals = [cal_tokens[i * args.ctx:(i + 1) * args.ctx] for i in range(args.cal_windows)]
    return model, runtime, tests, cals


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, default=kv_quality.DEFAULT_TEXT)
    p.add_argument("--ctx", type=int, default=512, help="tokens per window; KLD over its second half")
    p.add_argument("--chunks", type=int, default=10, help="held-out test windows")
    p.add_argument("--cal-windows", type=int, default=3, help="calibration windows from the start of --text")
    p.add_argument("--widths", default="2,3")
    p.add_argument("--offsets", default="0,131072", help="position shifts of the test windows")
    p.add_argument("--profiles", default="0,16",
                   help="profile-table sizes of the prof designs (0: one profile per calibration head)")
    p.add_argument("--v-type", default="f16", help="V cache type for every row (f16: V exact)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", type=Path, default=kv_quality.REPO / "benchmarks" / "out" / "k_weighted_kld")
    args = p.parse_args()
    try:
        widths = tuple(int(x) for x in args.widths.split(","))
        offsets = [int(x) for x in args.offsets.split(",")]
        n_profiles = [int(x) for x in args.profiles.split(",")] if args.profiles else []
    except ValueError:
        p.error("--widths, --offsets and --profiles take comma-separated integers")
    if any(n < 0 or n == 1 for n in n_profiles):
        p.error("--profiles: 0 (one per head) or at least 2")
    v_types = [*kw.codecs.cache_types(), "vtq2", "vtq3", "vtq4"]  # the short names are vtqN_2
    if args.v_type not in v_types:
        p.error(f"--v-type: unknown type {args.v_type!r}; valid: {', '.join(v_types)}")
    if not set(widths) <= set(kw.WIDTHS) or any(o < 0 for o in offsets):
        p.error(f"--widths must be among {kw.WIDTHS}, --offsets >= 0")
    if args.chunks < 1 or args.cal_windows < 1 or args.ctx < 8:
        p.error("--chunks and --cal-windows must be >= 1 and --ctx >= 8")

    from tqdm import tqdm

    from llama_tq import _core

    model, runtime, tests, cals = load_windows(args)
    if model.rope.n_rot != kw.HEAD or model.tensors["blk.0.attn_k.weight"].shape[0] != kw.HEAD * model.n_head_kv:
        raise SystemExit(f"this benchmark handles head size {kw.HEAD} with RoPE over the whole head")

    ctx = _core.Context(runtime, n_ctx=args.ctx, n_batch=args.ctx, type_k="f16", type_v="f16", flash_attn=True,
                        n_threads=args.threads)
    agree = np_llama.check_against_runtime(model, np.asarray(ctx.decode(tests[0])), tests[0])
    print(f"numpy forward vs llama.cpp (F16 cache), window 0: mean KL {agree:.2e}")

    cal_rows = calibration_rows(model, cals)
    designs = fit_designs(model, cal_rows, widths, args.seed)
    folds, tables = fit_profiles(model, cal_rows, widths, n_profiles, args.seed)
    hooks: dict[str, np_llama.KeyHook] = {}
    for w in widths:
        hooks[f"ktq{w}"] = ktq_hook(w)
        hooks[f"klt-{w}"] = coder_hook(designs[("klt", w)])
        hooks[f"pair-{w}"] = coder_hook(designs[("pair", w)])
        for n in n_profiles:
            hooks[f"prof{n or ''}-{w}"] = profile_hook(folds, tables[(n, w)])
    vhook = value_hook(args.v_type)
    first = args.ctx // 2
    kl: dict[tuple[str, int], list] = {}
    top: dict[tuple[str, int], list] = {}
    for toks in tqdm(tests, desc="chunks", unit="chunk"):
        ref = model.logits(toks, first=first)
        for off in offsets:
            for name, hook in hooks.items():
                got = model.logits(toks, key_hook=hook, first=first, offset=off, value_hook=vhook)
                kl.setdefault((name, off), []).append(np_llama.kld_rows(ref, got))
                top.setdefault((name, off), []).append(ref.argmax(-1) == got.argmax(-1))

    results = []
    for off in offsets:
        for w in widths:
            base = np.concatenate(kl[(f"ktq{w}", off)]).mean()
            for name in [n for n in hooks if n == f"ktq{w}" or n.endswith(f"-{w}")]:
                v = np.concatenate(kl[(name, off)])
                results.append({"name": name, "design": name.rstrip("-0123456789"), "bits": w + 0.25,
                                "offset": off, "mean_kld": float(v.mean()), "median_kld": float(np.median(v)),
                                "p99_kld": float(np.quantile(v, 0.99)), "kld_vs_ktq": float(v.mean() / base),
                                "same_top": float(np.concatenate(top[(name, off)]).mean() * 100)})
    v_what = "V exact" if args.v_type == "f16" else f"V {args.v_type} (CPU reference, rotated as upstream rotates)"
    lines = [f"{v_what}, {args.chunks} held-out windows of {args.ctx} tokens, KLD over the last "
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
    plot(results, args.out / "k_weighted_kld.png", v_what)
    print(f"wrote {args.out / 'k_weighted_kld'}.md, .json and .png")
    return 0


def plot(results: list[dict], path: Path, v_what: str) -> None:
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
    ax.set_ylabel(f"mean KLD vs exact K and V ({v_what.split(' (')[0]})")
    ax.set_title("Query-weighted K coding, end to end (SmolLM2-135M, numpy forward pass)", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
