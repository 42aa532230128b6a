#!/usr/bin/env python3
"""Kernel times from an Nsight Compute CSV (`ncu --csv --metrics gpu__time_duration.sum ...`), as tools/gpu_check.sh
prints them. Standard library only (it runs on the bare GPU machine).

    python3 tools/ncu_share.py ncu.csv --label "ktq2/vtq2 depth 0" --steps 17
        per kernel: launches, microseconds per launch and per step (steps: decode steps the run made)
    python3 tools/ncu_share.py ncu.csv --label "prefill" --part 'tq_k_encode|set_rows'
        also the share of all kernel time that the kernels matching --part take
    python3 tools/ncu_share.py ncu.csv --label "pp512 at depth 131072" --last 32
        only the last 32 launches of each kernel (a run that first fills a deep cache: the timed step's launches)
    python3 tools/ncu_share.py ncu.csv --count
        prints only the number of profiled launches (tools/gpu_check.sh: the launches of one ubatch, so that a
        deep-cache run can skip those of the ubatches that fill the cache)
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections import defaultdict
from pathlib import Path

METRIC = "gpu__time_duration.sum"
UNIT_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


class NcuCsvError(ValueError):
    pass


def kernel_name(full: str) -> str:
    """'void tq_k_fattn_vec<64, ...>(tq_fattn_params, ...)' -> 'tq_k_fattn_vec'."""
    return re.sub(r"[(<].*", "", full).replace("void ", "").strip()


def read_times(text: str, source: str = "ncu csv") -> list[tuple[str, float]]:
    """(kernel name, microseconds) of every profiled launch, in order; ncu's log lines before the header are skipped."""
    start = text.find('"ID"')
    if start < 0:
        return []
    out = []
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") != METRIC:
            continue
        unit = row.get("Metric Unit", "")
        if unit not in UNIT_US:
            raise NcuCsvError(f"{source}: unknown time unit {unit!r}")
        try:
            value = float(row["Metric Value"].replace(",", ""))
        except (KeyError, ValueError) as e:
            raise NcuCsvError(f"{source}: bad metric value in row {row.get('ID')!r}: {e}") from e
        out.append((kernel_name(row.get("Kernel Name", "")), value * UNIT_US[unit]))
    return out


def summarize(times: list[tuple[str, float]]) -> dict[str, tuple[int, float]]:
    """kernel -> (launches, total microseconds)."""
    tot: dict[str, float] = defaultdict(float)
    cnt: dict[str, int] = defaultdict(int)
    for name, us in times:
        tot[name] += us
        cnt[name] += 1
    return {n: (cnt[n], tot[n]) for n in tot}


def last_launches(times: list[tuple[str, float]], n: int) -> list[tuple[str, float]]:
    """Only the last n launches of each kernel, in their order (n >= 1)."""
    if n < 1:
        raise NcuCsvError(f"--last must be at least 1, not {n}")
    seen: dict[str, int] = defaultdict(int)
    keep = []
    for name, us in reversed(times):
        seen[name] += 1
        if seen[name] <= n:
            keep.append((name, us))
    return keep[::-1]


def share(times: list[tuple[str, float]], pattern: str) -> tuple[float, float]:
    """(microseconds of the kernels whose name matches pattern, microseconds of all kernels)."""
    rx = re.compile(pattern)
    part = sum(us for name, us in times if rx.search(name))
    return part, sum(us for _, us in times)


def report(times: list[tuple[str, float]], label: str, steps: int | None, part: str | None) -> str:
    lines = [f"  ncu {label}: " + ("no kernels" if not times else "")]
    summary = summarize(times)
    for name in sorted(summary, key=lambda n: -summary[n][1]):
        n, tot = summary[name]
        per_step = f" {tot / steps:9.1f} us/step" if steps else ""
        lines.append(f"    {name:32s} {n:6d} launches {tot / n:9.2f} us each{per_step}")
    if part is not None and times:
        p, total = share(times, part)
        pct = 100.0 * p / total
        lines.append(f"    kernels matching {part!r}: {p:.1f} of {total:.1f} us = {pct:.2f} % of the GPU time")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("--label", default="")
    ap.add_argument("--steps", type=int, default=None, help="divide each kernel's total by this many steps")
    ap.add_argument("--part", default=None, help="regex: print the share of the kernels it matches")
    ap.add_argument("--last", type=int, default=None, help="only the last this many launches of each kernel")
    ap.add_argument("--count", action="store_true", help="print only the number of profiled launches")
    args = ap.parse_args(argv)
    try:
        text = args.csv.read_text(errors="replace")
        times = read_times(text, str(args.csv))
        if args.count:
            print(len(times))
            return 0
        if args.last is not None:
            times = last_launches(times, args.last)
        print(report(times, args.label, args.steps, args.part))
    except (OSError, NcuCsvError, re.error) as e:
        print(f"ncu_share: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
