#!/usr/bin/env python3
"""Sum Nsight Compute's source page (``ncu --import R --page source --csv --print-source cuda,sass``) by CUDA line.

The page lists, per file and function, each CUDA line followed by its SASS instructions with their warp stall
samples (all and by reason), instructions executed and L1 wavefronts. This prints, per function, the lines that
hold the most stall samples with their main reasons, and the totals by reason: where a kernel's warps wait.

    python3 tools/ncu_source.py ncu-source-tq_k_encode_kv-0.csv --top 25

Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict

COUNTS = ("Warp Stall Sampling (All Samples)", "Instructions Executed", "L1 Wavefronts Shared",
          "L1 Wavefronts Shared Ideal", "L2 Theoretical Sectors Global", "L1 Tag Requests Global")


def _num(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


class LineStats:
    """Sums of one CUDA line's SASS instructions."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = defaultdict(float)
        self.stalls: dict[str, float] = defaultdict(float)
        self.sass = 0


def parse(path: str) -> dict[str, dict[tuple[str, int], LineStats]]:
    """function name -> (file, line) -> sums; rows of a function that appears twice (two launches) are added."""
    out: dict[str, dict[tuple[str, int], LineStats]] = defaultdict(lambda: defaultdict(LineStats))
    fname = "?"
    func = "?"
    header: list[str] | None = None
    line = 0
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "File Path":
                fname, header = os.path.basename(row[1]), None
                continue
            if row[0] == "Function Name":
                func = row[1]
                continue
            if row[0] == "Line No":
                header = row
                continue
            if header is None or len(row) != len(header):
                continue
            if row[0]:
                line = int(_num(row[0]))
                continue
            st = out[func][(fname, line)]
            st.sass += 1
            for i, name in enumerate(header):
                if name in COUNTS:
                    st.counts[name] += _num(row[i])
                elif name.startswith("stall_") and "(Not Issued)" not in name:
                    st.stalls[name[6:]] += _num(row[i])
    return out


def short(func: str, width: int = 90) -> str:
    return func if len(func) <= width else func[: width - 3] + "..."


def report(path: str, top: int) -> None:
    data = parse(path)
    samples = COUNTS[0]
    for func, lines in data.items():
        total = sum(s.counts[samples] for s in lines.values())
        if total == 0:
            continue
        reasons: dict[str, float] = defaultdict(float)
        for s in lines.values():
            for k, v in s.stalls.items():
                reasons[k] += v
        print(f"{short(func)}\n  {total:.0f} stall samples, "
              f"{sum(s.counts['Instructions Executed'] for s in lines.values()):.0f} warp instructions executed, "
              f"{sum(s.counts['L1 Wavefronts Shared'] for s in lines.values()):.0f} shared wavefronts")
        print("  by reason: " + ", ".join(f"{k} {100 * v / total:.1f}%"
                                           for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]) if v > 0))
        print(f"  {'file:line':<34} {'samples':>8} {'share':>6} {'instr':>10} {'shm wf':>9}  main reasons")
        ranked = sorted(lines.items(), key=lambda kv: -kv[1].counts[samples])
        for (fn, ln), s in ranked[:top]:
            main = sorted(s.stalls.items(), key=lambda kv: -kv[1])[:3]
            why = ", ".join(f"{k} {100 * v / max(s.counts[samples], 1):.0f}%" for k, v in main if v > 0)
            print(f"  {fn + ':' + str(ln):<34} {s.counts[samples]:>8.0f} {100 * s.counts[samples] / total:>5.1f}% "
                  f"{s.counts['Instructions Executed']:>10.0f} {s.counts['L1 Wavefronts Shared']:>9.0f}  {why}")
        print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="the source page as CSV")
    ap.add_argument("--top", type=int, default=20, help="lines listed per function")
    args = ap.parse_args(argv)
    if not os.path.isfile(args.csv):
        print(f"no such file: {args.csv}", file=sys.stderr)
        return 2
    report(args.csv, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
