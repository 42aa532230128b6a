#!/usr/bin/env python3
"""Quality and speed of the ktq/vtq block formats through the CPU reference (src/ggml-tq).

Builds the C reference (as tests/formats does), quantizes and dequantizes random rows, and prints per
type: bits per element, normalised MSE (sum (x - x̂)^2 / sum x^2) on N(0,1) blocks, on Student-t(3)
blocks as they are and after a 64-wide randomized Hadamard rotation (what the graph does before the
cache store), next to the Shannon bound 4^-b of a Gaussian source at b bits per sample; and the CPU
encode/decode speed per 576-element row (9 blocks, a SmolLM2 K/V row). Writes a PNG of MSE vs bits.

    python benchmarks/format_mse.py [--blocks 2000] [--out benchmarks/out/format_mse.png] [--no-speed]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "formats"))

import reference as R  # noqa: E402

from conftest import TQLib, build_library  # noqa: E402


def hadamard_rotate(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per 64-block x -> H·D·x / 8 (orthonormal Walsh-Hadamard with fixed random signs)."""
    from scipy.linalg import hadamard

    h = hadamard(R.QK).astype(np.float64) / np.sqrt(R.QK)
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], R.QK)
    return ((x.reshape(-1, R.QK) * signs) @ h.T).reshape(-1)


def distributions(n_blocks: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t3 = rng.standard_t(3, n_blocks * R.QK)
    return {
        "N(0,1)": rng.standard_normal(n_blocks * R.QK),
        "t3": t3,
        "t3+RHT": hadamard_rotate(t3, seed),
    }


def nmse(tq: TQLib, name: str, x: np.ndarray) -> float:
    x32 = x.astype(np.float32)
    y = tq.dequantize(name, tq.quantize(name, x32)).astype(np.float64)
    x64 = x32.astype(np.float64)
    return float(np.sum((x64 - y) ** 2) / np.sum(x64 * x64))


def time_call(fn, min_time: float = 0.3) -> float:
    """Best seconds per call over a few rounds of at least min_time / 3."""
    fn()
    best = float("inf")
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_time / 3:
            fn()
            n += 1
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def speed_table(tq: TQLib) -> list[tuple[str, float, float]]:
    rows = []
    x = np.random.default_rng(1).standard_normal(576).astype(np.float32)
    for info in R.ALL_TYPES:
        qf = getattr(tq.lib, f"quantize_row_{info.name}_ref")
        df = getattr(tq.lib, f"dequantize_row_{info.name}")
        buf = ctypes.create_string_buffer(9 * info.block_bytes)
        y = np.empty(576, np.float32)
        qf(x.ctypes.data, buf, 576)
        tq_s = time_call(lambda qf=qf, buf=buf: qf(x.ctypes.data, buf, 576))
        td_s = time_call(lambda df=df, buf=buf, y=y: df(buf, y.ctypes.data, 576))
        rows.append((info.name, tq_s * 1e6, td_s * 1e6))
    return rows


def viterbi_table(tq: TQLib, n_blocks: int = 300) -> list[tuple[int, str, float, float, float]]:
    rng = np.random.default_rng(2)
    y = rng.standard_normal((n_blocks, R.QK)).astype(np.float32)
    out = []
    for k in (2, 3, 4):
        exact_cost = None
        for mode, label in ((0, "two-pass"), (1, "exact B&B")):
            costs, passes = [], []
            t0 = time.perf_counter()
            for row in y:
                c, _, p = tq.viterbi(k, row, None, mode)
                costs.append(c)
                passes.append(p)
            dt = (time.perf_counter() - t0) / n_blocks
            total = float(np.sum(costs))
            if exact_cost is None:
                exact_cost = total
            out.append((k, label, dt * 1e6, float(np.mean(passes)), total))
        # excess of two-pass over exact
        out[-2] = (*out[-2][:4], out[-2][4] / out[-1][4] - 1)
        out[-1] = (*out[-1][:4], 0.0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2000, help="blocks per distribution (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "format_mse.png")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed tables")
    ap.add_argument("--cflags", default="", help="extra C flags for the build, e.g. '-O3 -march=native'")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tq = TQLib(build_library(Path(tmp), tuple(args.cflags.split())))
        dists = distributions(args.blocks, args.seed)
        results = []
        for info in R.ALL_TYPES:
            results.append((info, {d: nmse(tq, info.name, x) for d, x in dists.items()}))

        print(
            f"codebook: {tq.lib.tq_codebook_source().decode()} (fnv1a64 {tq.lib.tq_codebook_hash().decode()})"
        )
        print(f"normalised MSE, {args.blocks} blocks of {R.QK} per distribution")
        head = (
            f"{'type':8} {'bits/elem':>9} "
            + " ".join(f"{d:>9}" for d in dists)
            + f" {'4^-b':>9} {'4^-bpe':>9}"
        )
        print(head)
        print("-" * len(head))
        for info, m in results:
            cells = " ".join(f"{m[d]:9.5f}" for d in dists)
            bound, bound_bpe = 4.0**-info.bits, 4.0**-info.bits_per_element
            print(f"{info.name:8} {info.bits_per_element:9.2f} {cells} {bound:9.5f} {bound_bpe:9.5f}")

        if not args.no_speed:
            print("\nCPU speed per 576-element row (9 blocks), best of 3")
            print(f"{'type':8} {'encode us':>10} {'ns/elem':>8} {'blocks/s':>9} {'decode us':>10}")
            for name, q_us, d_us in speed_table(tq):
                print(f"{name:8} {q_us:10.1f} {q_us * 1e3 / 576:8.1f} {9e6 / q_us:9.0f} {d_us:10.2f}")
            print(
                "\nViterbi alone (one block, unit scale, N(0,1)): time, passes, cost excess over the optimum"
            )
            print(f"{'k':>2} {'mode':10} {'us/block':>9} {'ns/elem':>8} {'passes':>7} {'excess':>8}")
            for k, label, us, passes, excess in viterbi_table(tq):
                print(
                    f"{k:2d} {label:10} {us:9.1f} {us * 1e3 / R.QK:8.1f} {passes:7.2f} {excess * 100:7.3f}%"
                )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"N(0,1)": "o", "t3": "^", "t3+RHT": "s"}
    for info, m in results:
        variant = "ktq" if info.name.startswith("ktq") else info.name[-2:]
        color = {"ktq": "tab:blue", "_1": "tab:cyan", "_2": "tab:orange", "_3": "tab:red"}[variant]
        for d, v in m.items():
            ax.scatter(info.bits_per_element, v, marker=markers[d], color=color, s=36, alpha=0.85)
    bits = np.linspace(2, 5.2, 100)
    ax.plot(bits, 4.0**-bits, "k--", lw=1, label="4^-b (Gaussian, b bits/elem)")
    for variant, color in (
        ("ktq", "tab:blue"),
        ("vtq_1", "tab:cyan"),
        ("vtq_2", "tab:orange"),
        ("vtq_3", "tab:red"),
    ):
        ax.scatter([], [], color=color, label=variant)
    for d, mk in markers.items():
        ax.scatter([], [], marker=mk, color="gray", label=d)
    ax.set_yscale("log")
    ax.set_xlabel("bits per element (incl. scale and outlier slots)")
    ax.set_ylabel("normalised MSE")
    ax.set_title("llama-tq block formats (CPU reference)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
