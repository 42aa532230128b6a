#!/usr/bin/env python3
"""Two candidate quality levers for the ktq/vtq caches, measured offline on a real model's K/V rows.

Rows are collected as the cache receives them (after upstream's attn_rot Walsh-Hadamard H, see
llama_tq.calibrate.model_samples), then quantized with the CPU reference (llama_tq.codecs.round_trip):

1. random signs: rows rotated by D·H·D (fixed random ±1 signs D; symmetric and its own inverse like H)
   instead of H. Printed: relative MSE sum (x - x̂)² / sum x² under each rotation.
2. K centering as shipped (LLAMA_TQ_K_MEANS): the pre-RoPE per-layer mean m is estimated on window A
   (llama_tq.calibrate.k_means, undoing the rotation and RoPE), and the constant the runtime subtracts for
   a context of C positions, the mean of RoPE_p(m) over p < C, is removed from held-out keys of window B
   placed at positions spread over 0..C-1 (B's own pre-RoPE keys re-RoPE'd there: positions past 2048 are
   synthetic). Printed: K's quantization error with centering / without, per context C.
3. V centering (not shipped): a per-layer V mean c, estimated on window A, removed from window B's rows
   before quantizing (attention would add it back exactly: the probabilities sum to 1). Printed: the share
   of V's energy in its mean, and V's quantization error with centering / without (error of the original
   rows, since c returns exactly).

    python benchmarks/k_offset_proxy.py [--model M.gguf] [--text brown.txt] [--ctx 2048] [--out DIR]

Writes k_offset.md, k_offset.json and k_offset.png to --out (default benchmarks/out/k_offset).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
K_TYPES = ("ktq2", "ktq3", "ktq4")
V_TYPES = ("vtq2", "vtq3", "vtq4")


def randomized_hadamard(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.linalg import hadamard

    h = hadamard(n).astype(np.float64) / np.sqrt(n)
    d = np.random.default_rng(seed).choice([-1.0, 1.0], n)
    return h, d[:, None] * h * d[None, :]


def quant_error(cache_type: str, x: np.ndarray) -> float:
    from llama_tq import codecs

    q = codecs.round_trip(cache_type, x.reshape(-1, 64).astype(np.float32)).astype(np.float64)
    return float(((q - x.reshape(-1, 64)) ** 2).sum())


def random_signs(samples: dict[str, np.ndarray], seed: int) -> list[dict]:
    h, r = randomized_hadamard(64, seed)
    rows = []
    for t in K_TYPES + V_TYPES:
        err_h = err_r = energy = 0.0
        for key, x in samples.items():
            if key[0] != t[0]:
                continue
            xh = x.reshape(-1, 64).astype(np.float64)  # rotated by H (per 64 channels)
            xr = (xh @ h) @ r.T                           # H is its own inverse: back, then D·H·D
            err_h += quant_error(t, xh)
            err_r += quant_error(t, xr)
            energy += float((xh ** 2).sum())
        rows.append({"type": t, "mse_H": err_h / energy, "mse_DHD": err_r / energy, "ratio": err_r / err_h})
    return rows


CONTEXTS = (512, 4096, 32768, 131072)


def k_centering(samples: dict[str, np.ndarray], ctx: int, model: object) -> list[dict]:
    from llama_tq.calibrate.k_means import (
        estimate_means,
        hadamard_rows,
        k_rotation_size,
        model_rope,
        position_mean,
        rope,
    )

    _, rp = model_rope(model)
    n_head = int(model.info["n_head_kv"])  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    err: dict[tuple[str, int], list[float]] = {}
    for key, x in samples.items():
        if key[0] != "k":
            continue
        a, b = x[:ctx], x[ctx:2 * ctx]
        m = estimate_means({key: a}, ctx, n_head, rp)[int(key.split(".")[1])]
        hd = x.shape[1] // n_head
        nrot = k_rotation_size(hd)
        pre_b = rope(hadamard_rows(b, nrot).reshape(ctx, n_head, hd), np.arange(ctx, dtype=np.float64), rp, -1.0)
        for c_len in CONTEXTS:
            pos = np.sort(rng.integers(0, c_len, ctx // 2)).astype(np.float64)
            test = hadamard_rows(rope(pre_b[ctx // 2:], pos, rp).reshape(ctx // 2, -1), nrot)
            c = hadamard_rows(position_mean(m, rp, c_len).reshape(-1), nrot)
            for t in K_TYPES:
                e = err.setdefault((t, c_len), [0.0, 0.0])
                e[0] += quant_error(t, test)
                e[1] += quant_error(t, test - c)
    return [{"type": t, **{f"ratio_{c}": err[(t, c)][1] / err[(t, c)][0] for c in CONTEXTS}} for t in K_TYPES]


def plot(signs: list[dict], means: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    xs = np.arange(len(signs))
    a0.bar(xs - 0.2, [r["mse_H"] for r in signs], 0.4, label="H (upstream)")
    a0.bar(xs + 0.2, [r["mse_DHD"] for r in signs], 0.4, label="D·H·D (random signs)")
    a0.set_xticks(xs, [r["type"] for r in signs])
    a0.set_yscale("log")
    a0.set_ylabel("relative MSE")
    a0.set_title("rotation: plain vs random signs")
    a0.legend()
    xs = np.arange(len(means))
    for j, c in enumerate(CONTEXTS):
        a1.bar(xs + (j - 1.5) * 0.2, [r[f"ratio_{c}"] for r in means], 0.2, label=f"context {c}")
    a1.axhline(1.0, color="gray", lw=0.8)
    a1.set_xticks(xs, [r["type"] for r in means])
    a1.set_ylabel("K error with centering / without")
    a1.set_title("K centering (held-out keys)")
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def v_centering(samples: dict[str, np.ndarray], ctx: int) -> list[dict]:
    share_num = share_den = 0.0
    err: dict[str, list[float]] = {}
    for key, x in samples.items():
        if key[0] != "v":
            continue
        a, b = x[:ctx].astype(np.float64), x[ctx:2 * ctx].astype(np.float64)
        c = a.mean(axis=0)  # rotated domain: the rotation is linear, so this is H times the plain mean
        share_num += float(len(b) * (c ** 2).sum())
        share_den += float((b ** 2).sum())
        for t in V_TYPES:
            e = err.setdefault(t, [0.0, 0.0])
            e[0] += quant_error(t, b)
            e[1] += quant_error(t, b - c)
    return [{"type": t, "mean_energy_share": share_num / share_den, "ratio": err[t][1] / err[t][0]} for t in V_TYPES]


def main() -> int:
    from llama_tq.calibrate.model_samples import collect_model_samples
    from llama_tq.testmodel import test_model_path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="GGUF (default: the SmolLM2-135M test model)")
    p.add_argument("--text", type=Path, default=ROOT.parent / "shared" / "data" / "brown.txt")
    p.add_argument("--ctx", type=int, default=2048, help="tokens per window (two windows are collected)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the random signs")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "k_offset")
    args = p.parse_args()

    from llama_tq import _core
    from llama_tq.calibrate.k_means import ENV, env_without

    model = args.model or test_model_path()
    loaded = _core.Model(str(model))
    with env_without(ENV):
        samples = collect_model_samples(model, args.text, n_ctx=args.ctx, n_chunks=2, model=loaded)
    signs = random_signs(samples, args.seed)
    means = k_centering(samples, args.ctx, loaded)
    v_means = v_centering(samples, args.ctx)

    lines = [f"{Path(model).name}: 2 windows of {args.ctx} tokens of {args.text.name}", "",
             "| type | rel. MSE, H | rel. MSE, D·H·D | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['type']} | {r['mse_H']:.5f} | {r['mse_DHD']:.5f} | {r['ratio']:.3f} |" for r in signs]
    lines += ["", "| K type | " + " | ".join(f"error ratio, context {c}" for c in CONTEXTS) + " |",
              "|---" * (1 + len(CONTEXTS)) + "|"]
    lines += [f"| {r['type']} | " + " | ".join(f"{r[f'ratio_{c}']:.3f}" for c in CONTEXTS) + " |" for r in means]
    lines += ["", "| V type | mean's share of V energy | error ratio, centered / not |", "|---|---|---|"]
    lines += [f"| {r['type']} | {r['mean_energy_share']:.3f} | {r['ratio']:.3f} |" for r in v_means]
    text = "\n".join(lines)
    print(text)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "k_offset.md").write_text(text + "\n")
    record = {"random_signs": signs, "k_centering": means, "v_centering": v_means}
    (args.out / "k_offset.json").write_text(json.dumps(record, indent=1))
    plot(signs, means, args.out / "k_offset.png")
    print(f"wrote {args.out}/k_offset.md, .json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
