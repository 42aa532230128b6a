"""tools/ncu_source.py on Nsight Compute source-page CSV text written here (no GPU, no ncu)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "ncu_source.py"
_spec = importlib.util.spec_from_file_location("ncu_source", TOOL)
ns = importlib.util.module_from_spec(_spec)
sys.modules["ncu_source"] = ns
_spec.loader.exec_module(ns)

HEADER = ('"Line No","Source","Address","Source","Warp Stall Sampling (All Samples)",'
          '"Warp Stall Sampling (Not-issued Samples)","Instructions Executed","L1 Wavefronts Shared",'
          '"stall_barrier","stall_short_sb","stall_barrier (Not Issued)","stall_short_sb (Not Issued)"\n')


def block(path: str, func: str, rows: list[str]) -> str:
    return f'"File Path","{path}"\n"Function Name","{func}"\n' + HEADER + "".join(rows)


def line(no: int) -> str:
    # a CUDA line's own row: its sums are not read (the SASS rows below it are summed instead)
    return f'"{no}","x = y;","-","-","999","0","999","0","999","0","0","0"\n'


def sass(samples: int, instr: int, wf: int, barrier: int, short_sb: int) -> str:
    return f'"","","0x1","  LDS R1","{samples}","0","{instr}","{wf}","{barrier}","{short_sb}","7","7"\n'


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "src.csv"
    p.write_text(text)
    return p


def test_sums_sass_rows_by_line_and_adds_repeated_functions(tmp_path: Path) -> None:
    rows = [line(10), sass(3, 100, 4, 1, 2), sass(5, 50, 0, 5, 0), line(12), sass(2, 7, 1, 0, 2)]
    text = block("/b/k.cuh", "kern", rows)
    # the same function again (a second launch) in another file's block: adds to its lines
    text += block("/b/j.cu", "kern", [line(10), sass(4, 1, 0, 0, 4)])
    data = ns.parse(str(write(tmp_path, text)))
    lines = data["kern"]
    assert set(lines) == {("k.cuh", 10), ("k.cuh", 12), ("j.cu", 10)}
    a = lines[("k.cuh", 10)]
    assert a.sass == 2
    assert a.counts["Warp Stall Sampling (All Samples)"] == 8
    assert a.counts["Instructions Executed"] == 150
    assert a.counts["L1 Wavefronts Shared"] == 4
    assert a.stalls == {"barrier": 6, "short_sb": 2}  # the "(Not Issued)" columns are left out
    assert lines[("j.cu", 10)].stalls["short_sb"] == 4


def test_report_ranks_lines_by_samples(tmp_path: Path, capsys) -> None:
    text = block("/b/k.cuh", "kern", [line(10), sass(1, 1, 0, 1, 0), line(20), sass(9, 1, 0, 0, 9)])
    assert ns.main([str(write(tmp_path, text)), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "10 stall samples" in out
    assert "short_sb 90.0%, barrier 10.0%" in out
    assert out.index("k.cuh:20") < out.index("k.cuh:10")


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert ns.main([str(tmp_path / "none.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
