"""The backward passes the patches add, checked by upstream's test-backend-ops against finite differences (CPU).

`test-backend-ops grad -o OP` compares each case's analytic gradient with a numerical one; a case counts only
when it ran (OK), and no case may FAIL. Each run draws new random inputs, and a finite difference of float32 sums
sometimes passes the tool's bound by chance: MUL_MAT_ID's f32 cases (k = 3, or m = 6 with a batch) exceeded its
max-asymmetry bound of 5e-4 (by up to 3x) in 1 of 300 and about 5 of 300 runs on a 2-core CPU, the other ops in
none of 40. So a case that fails is run again, twice, with new inputs, and counts as failed when it fails in two
of the three runs; a wrong gradient fails every run.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from .conftest import require_tool

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FAILED_CASE = re.compile(r"^ +(\w+\(.*?\)):.*\bFAIL\b", re.M)

# op -> the smallest number of gradient cases that must run (the patches' cases are among them)
OPS = {"SIGMOID": 2, "CLAMP": 2, "DIV": 10, "GET_ROWS": 10, "MUL_MAT_ID": 10, "SSM_CONV": 8, "CONCAT": 4}


def grad_run(tool: object, op: str) -> tuple[int, str, list[str], set[str]]:
    """(exit status, output, case lines, names of the failed cases) of one `test-backend-ops grad -o op` run."""
    run = subprocess.run([str(tool), "grad", "-o", op, "-b", "CPU"], capture_output=True, text=True, timeout=900)
    out = ANSI.sub("", run.stdout + run.stderr)
    cases = [line for line in out.splitlines() if line.startswith(f"  {op}(")]
    # a failed case's line names the loss its gradient is taken of (e.g. "  SUM(type_a=...): ... FAIL")
    failed = {m.group(1) for m in FAILED_CASE.finditer(out)}
    return run.returncode, out, cases, failed


@pytest.mark.parametrize("op", sorted(OPS))
def test_backward_matches_finite_differences(op: str) -> None:
    tool = require_tool("test-backend-ops")
    rc, out, cases, failed = grad_run(tool, op)
    ok = [c for c in cases if c.endswith(": OK")]
    assert len(ok) >= OPS[op], f"only {len(ok)} gradient cases of {op} ran:\n" + "\n".join(cases[:20])
    if rc == 0 and not failed:
        return
    assert failed, f"exit status {rc} with no failed case:\n{out[-3000:]}"
    # a case failed: two more runs with new random inputs; it counts when it fails in two of the three
    times = dict.fromkeys(failed, 1)
    reports = [out[-3000:]]
    for _ in range(2):
        rc2, out2, _, failed2 = grad_run(tool, op)
        assert rc2 == 0 or failed2, f"exit status {rc2} with no failed case:\n{out2[-3000:]}"
        reports.append(out2[-3000:])
        for name in failed2:
            times[name] = times.get(name, 0) + 1
    twice = sorted(name for name, n in times.items() if n >= 2)
    assert not twice, "failed in two of three runs:\n" + "\n".join(twice) + "\n\n" + "\n---\n".join(reports)


def test_batched_get_rows_and_broadcast_div_cases_ran() -> None:
    """The two shapes the patches fix: GET_ROWS on 3-D/4-D inputs, DIV with a broadcast divisor."""
    tool = require_tool("test-backend-ops")
    out = {}
    for op in ("GET_ROWS", "DIV"):
        _, _, cases, _ = grad_run(tool, op)
        out[op] = [c for c in cases if c.endswith(": OK")]
    batched = [c for c in out["GET_ROWS"] if re.search(r"n=\d+,m=\d+,r=\d+,be1=([2-9]|\d\d)", c)]
    broadcast = [c for c in out["DIV"] if re.search(r"nr=\[[^\]]*\b([2-9]|\d\d)\b", c)]
    assert batched, "no batched GET_ROWS gradient case ran:\n" + "\n".join(out["GET_ROWS"][:10])
    assert broadcast, "no broadcast DIV gradient case ran:\n" + "\n".join(out["DIV"][:10])
