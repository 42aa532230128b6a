"""tools/ncu_share.py on Nsight Compute CSV text written here (no GPU, no ncu)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "ncu_share.py"
_spec = importlib.util.spec_from_file_location("ncu_share", TOOL)
ns = importlib.util.module_from_spec(_spec)
sys.modules["ncu_share"] = ns
_spec.loader.exec_module(ns)

HEADER = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",' \
    '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"\n'


def row(i: int, kernel: str, unit: str, value: str, metric: str = "gpu__time_duration.sum") -> str:
    return (f'"{i}","1","llama-bench","h","{kernel}","1","7","(128, 1, 1)","(8, 1, 1)","0","9.0",'
            f'"Command line profiler metrics","{metric}","{unit}","{value}"\n')


def csv_text(rows: list[str]) -> str:
    # ncu prints its own log lines before the table
    return "==PROF== Connected to process 1\n==PROF== Profiling \"k\" - 0: 0%....100%\n" + HEADER + "".join(rows)


def test_times_units_names_and_share() -> None:
    text = csv_text([
        row(0, "void tq_k_encode_trellis<(ggml_type)49, tq_cuda_loc_set_rows>(T2, tq_cuda_tab<T1>, float)", "usecond",
            "13.5"),
        row(1, "void k_set_rows<float, half>(const float *, ...)", "nsecond", "2,280"),
        row(2, "void mul_mat_q<(ggml_type)12, 64>(...)", "msecond", "0.0845"),
        row(3, "void tq_k_encode_trellis<(ggml_type)49, tq_cuda_loc_set_rows>(T2, tq_cuda_tab<T1>, float)", "us",
            "14.5"),
        row(4, "void mul_mat_q<(ggml_type)12, 64>(...)", "ns", "1000", metric="sm__cycles_elapsed.avg"),  # other metric
    ])
    times = ns.read_times(text)
    assert [n for n, _ in times] == ["tq_k_encode_trellis", "k_set_rows", "mul_mat_q", "tq_k_encode_trellis"]
    assert [round(us, 6) for _, us in times] == [13.5, 2.28, 84.5, 14.5]
    summary = ns.summarize(times)
    assert summary.keys() == {"tq_k_encode_trellis", "k_set_rows", "mul_mat_q"}
    assert summary["tq_k_encode_trellis"] == (2, pytest.approx(28.0))
    assert summary["k_set_rows"] == (1, pytest.approx(2.28))
    assert summary["mul_mat_q"] == (1, pytest.approx(84.5))
    part, total = ns.share(times, "tq_k_encode|set_rows")
    assert part == pytest.approx(30.28) and total == pytest.approx(114.78)
    out = ns.report(times, "prefill", steps=2, part="tq_k_encode|set_rows")
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["mul_mat_q", "1"]  # largest total first
    assert "14.00 us each" in lines[2] and "14.0 us/step" in lines[2]
    assert lines[-1].endswith("= 26.38 % of the GPU time")


def test_no_table_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ns.read_times("==ERROR== no kernels were profiled\n") == []
    assert ns.report([], "x", None, "a") == "  ncu x: no kernels"
    with pytest.raises(ns.NcuCsvError, match="unknown time unit 'cycle'"):
        ns.read_times(csv_text([row(0, "void k()", "cycle", "5")]))
    with pytest.raises(ns.NcuCsvError, match="bad metric value"):
        ns.read_times(csv_text([row(0, "void k()", "us", "n/a")]))
    bad = tmp_path / "bad.csv"
    bad.write_text(csv_text([row(0, "void k()", "cycle", "5")]))
    assert ns.main([str(bad)]) == 1
    assert "unknown time unit" in capsys.readouterr().err
    assert ns.main([str(tmp_path / "missing.csv")]) == 1
    good = tmp_path / "good.csv"
    good.write_text(csv_text([row(0, "void k()", "us", "5"), row(1, "void j()", "us", "15")]))
    assert ns.main([str(good), "--label", "t", "--part", "^k$"]) == 0
    assert "5.0 of 20.0 us = 25.00 %" in capsys.readouterr().out


def test_last_launches_per_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a deep-cache run: the fill's launches first, the timed step's last; a kernel can stop early (k ends at 3)
    times = [("fa", 1.0), ("k", 10.0), ("fa", 2.0), ("k", 20.0), ("fa", 3.0), ("k", 30.0), ("fa", 4.0)]
    assert ns.last_launches(times, 2) == [("k", 20.0), ("fa", 3.0), ("k", 30.0), ("fa", 4.0)]
    assert ns.last_launches(times, 1) == [("k", 30.0), ("fa", 4.0)]
    assert ns.last_launches(times, 9) == times
    with pytest.raises(ns.NcuCsvError, match="at least 1"):
        ns.last_launches(times, 0)
    f = tmp_path / "deep.csv"
    f.write_text(csv_text([row(i, f"void {n}()", "us", str(us)) for i, (n, us) in enumerate(times)]))
    assert ns.main([str(f), "--last", "2", "--part", "^k$"]) == 0
    out = capsys.readouterr().out
    assert "25.00 us each" in out and "3.50 us each" in out
    assert "50.0 of 57.0 us" in out
    assert ns.main([str(f), "--last", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err


def test_count_launches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # one row per launch and metric: only the time rows count; an empty table counts 0
    rows = [row(0, "void fa()", "us", "1.0"), row(0, "void fa()", "byte", "5", metric="dram__bytes.sum"),
            row(1, "void k()", "ns", "500"), row(2, "void fa()", "us", "2.0")]
    f = tmp_path / "one.csv"
    f.write_text(csv_text(rows))
    assert ns.main([str(f), "--count"]) == 0
    assert capsys.readouterr().out == "3\n"
    e = tmp_path / "empty.csv"
    e.write_text("==PROF== Connected to process 1\n")
    assert ns.main([str(e), "--count"]) == 0
    assert capsys.readouterr().out == "0\n"
