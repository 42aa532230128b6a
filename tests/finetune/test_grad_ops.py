"""The backward passes the patches add, checked by upstream's test-backend-ops against finite differences (CPU).

`test-backend-ops grad -o OP` compares each case's analytic gradient with a numerical one; a case counts only
when it ran (OK), and no case may FAIL.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from .conftest import require_tool

ANSI = re.compile(r"\x1b\[[0-9;]*m")

# op -> the smallest number of gradient cases that must run (the patches' cases are among them)
OPS = {"SIGMOID": 2, "CLAMP": 2, "DIV": 10, "GET_ROWS": 10, "MUL_MAT_ID": 10, "SSM_CONV": 8, "CONCAT": 4}


@pytest.mark.parametrize("op", sorted(OPS))
def test_backward_matches_finite_differences(op: str) -> None:
    tool = require_tool("test-backend-ops")
    run = subprocess.run([str(tool), "grad", "-o", op, "-b", "CPU"], capture_output=True, text=True, timeout=900)
    out = ANSI.sub("", run.stdout + run.stderr)
    cases = [line for line in out.splitlines() if line.startswith(f"  {op}(")]
    ok = [c for c in cases if c.endswith(": OK")]
    failed = [line for line in out.splitlines() if "FAIL" in line]
    assert run.returncode == 0, out[-3000:]
    assert not failed, "\n".join(failed[:20])
    assert len(ok) >= OPS[op], f"only {len(ok)} gradient cases of {op} ran:\n" + "\n".join(cases[:20])


def test_batched_get_rows_and_broadcast_div_cases_ran() -> None:
    """The two shapes the patches fix: GET_ROWS on 3-D/4-D inputs, DIV with a broadcast divisor."""
    tool = require_tool("test-backend-ops")
    out = {}
    for op in ("GET_ROWS", "DIV"):
        run = subprocess.run([str(tool), "grad", "-o", op, "-b", "CPU"], capture_output=True, text=True, timeout=900)
        lines = ANSI.sub("", run.stdout).splitlines()
        out[op] = [ln for ln in lines if ln.startswith(f"  {op}(") and ln.endswith(": OK")]
    batched = [c for c in out["GET_ROWS"] if re.search(r"n=\d+,m=\d+,r=\d+,be1=([2-9]|\d\d)", c)]
    broadcast = [c for c in out["DIV"] if re.search(r"nr=\[[^\]]*\b([2-9]|\d\d)\b", c)]
    assert batched, "no batched GET_ROWS gradient case ran:\n" + "\n".join(out["GET_ROWS"][:10])
    assert broadcast, "no broadcast DIV gradient case ran:\n" + "\n".join(out["DIV"][:10])
