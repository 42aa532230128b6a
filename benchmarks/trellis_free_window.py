#!/usr/bin/env python3
"""Can the trellis encoder's first (free) pass be shorter? Cost of the tail-biting paths it leads to.

The vtq trellis encoder (src/ggml-tq/tq-trellis.c, the CUDA encoder alike) runs two Viterbi passes of 64
dependent steps per block: a free pass over the block rotated by 32 samples, whose path fixes the stream's
first 6 bits (the overlap: the state of sample 0), then a pass constrained to that overlap. On a GPU the
two passes are a decode step's longest latency chain. This script asks what a shorter free pass would
cost: a free pass over only the W samples around sample 0 (samples -W/2 .. W/2 - 1), then the same
constrained pass. It prints, per trellis k and input distribution, the mean squared error of the
resulting tail-biting path above the exact optimum (all 64 overlaps tried) and how often the overlap
equals the full free pass's, and writes a PNG. Pure numpy through llama_tq.calibrate.trellis and the
shipped tables (src/ggml-tq/tq-codebooks-default.tqcb); a few minutes on 2 CPU threads.

    python benchmarks/trellis_free_window.py [--blocks 400] [--out benchmarks/out/trellis_free_window.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from llama_tq.calibrate.codebook_file import read_codebook
from llama_tq.calibrate.trellis import QK_TQ, TrellisSpec, viterbi, viterbi_tail_biting

ROOT = Path(__file__).resolve().parents[1]
TABLES = ROOT / "src" / "ggml-tq" / "tq-codebooks-default.tqcb"
WINDOWS = (64, 48, 32, 24, 16)  # 64: the shipped two-pass encoder


def blocks(dist: str, n: int, tmax: float, rng: np.random.Generator) -> np.ndarray:
    """Viterbi targets as the encoder makes them: x / max(rms, max|x| / max|table|)."""
    x = rng.standard_normal((n, QK_TQ)) if dist == "normal" else rng.standard_t(4, (n, QK_TQ))
    rms = np.sqrt((x * x).mean(axis=1, keepdims=True))
    return x / np.maximum(rms, np.abs(x).max(axis=1, keepdims=True) / tmax)


def window_overlap(y: np.ndarray, table: np.ndarray, k: int, w: int) -> np.ndarray:
    """Overlap (state of sample 0, low 6 bits) from a free pass over the w samples around sample 0."""
    spec = TrellisSpec(k, T=w)
    idx = (np.arange(w) - w // 2) % QK_TQ
    states, _ = viterbi(y[:, idx], table, spec)
    return states[:, w // 2] & (spec.n_overlap - 1)


def measure(table: np.ndarray, k: int, y: np.ndarray) -> dict[int, tuple[float, float]]:
    """window -> (mean % of cost above the exact tail-biting optimum, % of blocks with the W = 64 overlap)."""
    spec = TrellisSpec(k)
    _, exact = viterbi_tail_biting(y, table, spec, method="exact")
    out: dict[int, tuple[float, float]] = {}
    ref = None
    for w in WINDOWS:
        g = window_overlap(y, table, k, w)
        _, cost = viterbi(y, table, spec, start_overlap=g)
        ref = g if ref is None else ref
        out[w] = (100.0 * float(np.mean(cost / exact - 1.0)), 100.0 * float(np.mean(g == ref)))
    return out


def plot(rows: list[tuple[int, str, dict[int, tuple[float, float]]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, dist, res in rows:
        ax.plot(WINDOWS, [res[w][0] for w in WINDOWS], marker="o", ls="-" if dist == "normal" else "--",
                label=f"vtq{k} trellis, {dist}")
    ax.set_xlabel("samples in the free pass (64: the shipped encoder)")
    ax.set_ylabel("squared error above the exact optimum (%)")
    ax.set_title("Shorter free pass of the two-pass tail-biting Viterbi")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=400, help="random blocks per trellis and distribution")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "trellis_free_window.png")
    args = ap.parse_args()
    if args.blocks < 1:
        ap.error("--blocks must be at least 1")
    cb = read_codebook(TABLES)
    rng = np.random.default_rng(args.seed)
    rows = []
    print("| trellis | input | " + " | ".join(f"W = {w}: excess, same overlap" for w in WINDOWS) + " |")
    print("|---|---|" + "---|" * len(WINDOWS))
    for k in (2, 3, 4):
        table = np.asarray(cb[f"trellis{k}"], dtype=np.float64)
        for dist in ("normal", "t4"):
            res = measure(table, k, blocks(dist, args.blocks, float(np.abs(table).max()), rng))
            rows.append((k, dist, res))
            cells = " | ".join(f"+{res[w][0]:.3f} %, {res[w][1]:.0f} %" for w in WINDOWS)
            print(f"| vtq{k} | {'N(0,1)' if dist == 'normal' else 'Student-t(4)'} | {cells} |", flush=True)
    plot(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
