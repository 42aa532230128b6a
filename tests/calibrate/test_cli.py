"""The tq-calibrate command line: happy paths and clean failures (exit 2, message, nothing written)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from llama_tq.calibrate.cli import main
from llama_tq.calibrate.codebook_file import read_codebook
from llama_tq.calibrate.codebook_file import write_codebook as _write

from .test_codebook_file import make_codebook


def run(args: list[str]) -> int:
    try:
        return main(["--quiet", *args])
    except SystemExit as exc:  # argparse errors
        return int(exc.code or 0)


def assert_clean_failure(capsys, args: list[str], message: str, directory: Path) -> None:  # type: ignore[no-untyped-def]
    before = sorted(os.listdir(directory))
    assert run(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert sorted(os.listdir(directory)) == before


@pytest.fixture
def codebook_file(tmp_path: Path) -> Path:
    path = tmp_path / "cb.tqcb"
    _write(path, make_codebook())
    return path


def test_theory_prints_mse_table(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert run(["theory", "--bits", "1", "2", "3", "4"]) == 0
    out = capsys.readouterr().out
    for value in ("0.36338", "0.117482", "0.0345478", "0.00950101"):
        assert value in out
    assert run(["theory", "--dist", "beta", "--d", "64", "--levels", "3", "7"]) == 0
    assert "beta(d=64" in capsys.readouterr().out


def test_theory_plot_writes_png(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    png = tmp_path / "theory.png"
    assert run(["theory", "--dist", "laplace", "--bits", "2", "--plot", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert os.listdir(tmp_path) == ["theory.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["theory", "--bits", "9"], "--bits must be in [1, 8], got 9"),
        (["theory", "--levels", "1"], "--levels must be in [2, 256], got 1"),
        (["theory", "--levels", "x"], "--levels must be an integer"),
        (["theory", "--dist", "cauchy"], "invalid choice"),
        (["theory", "--d", "64"], "--d and --unit-norm apply to --dist beta only"),
        (["trellis", "--k", "0"], "--k must be in [1, 8], got 0"),
        (["trellis", "--k", "2", "--L", "2"], "k < L <= 16"),
        (["from-samples"], "required"),
    ],
)
def test_bad_arguments_exit_2(capsys, tmp_path: Path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    assert_clean_failure(capsys, args, message, tmp_path)


def test_show_verifies_and_prints(capsys, codebook_file: Path) -> None:  # type: ignore[no-untyped-def]
    assert run(["show", str(codebook_file), "--eval-blocks", "4"]) == 0
    out = capsys.readouterr().out
    assert "hash verified" in out and "ktq2@layer=5" in out and "trellis4" in out


def test_show_rejects_corrupt_and_missing_files(capsys, codebook_file: Path) -> None:  # type: ignore[no-untyped-def]
    expected = read_codebook(codebook_file).hash
    data = bytearray(codebook_file.read_bytes())
    data[40] ^= 0x01
    codebook_file.write_bytes(bytes(data))
    assert_clean_failure(capsys, ["show", str(codebook_file)], f"file says fnv1a64 {expected}", codebook_file.parent)
    assert run(["show", str(codebook_file)]) == 2
    assert "contents hash to" in capsys.readouterr().err
    assert_clean_failure(
        capsys,
        ["show", str(codebook_file.parent / "nope.tqcb")],
        "cannot read codebook",
        codebook_file.parent,
    )


def test_header_command(capsys, codebook_file: Path) -> None:  # type: ignore[no-untyped-def]
    out = codebook_file.parent / "x.h"
    assert run(["header", str(codebook_file), "-o", str(out)]) == 0
    first = out.read_bytes()
    assert run(["header", str(codebook_file), "-o", str(out)]) == 0
    assert out.read_bytes() == first
    assert b"TQ_CODEBOOK_HASH" in first


def test_header_of_incomplete_file_writes_nothing(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cb = make_codebook()
    del cb.entries["ktq4"]
    path = tmp_path / "partial.tqcb"
    _write(path, cb)
    assert_clean_failure(capsys, ["header", str(path), "-o", str(tmp_path / "out.h")], "missing ktq4", tmp_path)


def test_from_samples(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    npz = tmp_path / "s.npz"
    np.savez(
        npz,
        **{
            "k.0": rng.standard_normal((50, 128)),
            "v.0": rng.standard_normal((50, 64)),
            "k.1": rng.standard_normal((50, 128)),
        },
    )
    out = tmp_path / "fit.tqcb"
    assert run(["from-samples", str(npz), "-o", str(out), "--bits", "2", "--per-layer"]) == 0
    cb = read_codebook(out)
    assert cb.names() == ["ktq2", "ktq2@layer=0", "ktq2@layer=1", "vtq2_1", "vtq2_1@layer=0"]
    assert cb.params["samples.file"] == "s.npz" and len(cb.params["samples.sha256"]) == 64


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"k.0": np.full((4, 64), np.nan)}, "NaN or Inf"),
        ({"k.0": np.zeros((0, 64))}, "empty"),
        ({"k.0": np.ones((4, 100))}, "not a multiple of the block size"),
        ({"x.0": np.ones(64)}, "unexpected array 'x.0'"),
    ],
)
def test_from_samples_bad_input_writes_nothing(capsys, tmp_path: Path, arrays, message: str) -> None:  # type: ignore[no-untyped-def]
    npz = tmp_path / "bad.npz"
    np.savez(npz, **arrays)
    assert_clean_failure(capsys, ["from-samples", str(npz), "-o", str(tmp_path / "out.tqcb")], message, tmp_path)


def test_outputs_into_missing_directories_fail_before_work(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "no" / "such"
    assert_clean_failure(capsys, ["theory", "--plot", str(missing / "a.png")], "does not exist", tmp_path)
    assert_clean_failure(capsys, ["trellis", "-o", str(missing / "a.tqcb")], "does not exist", tmp_path)
    assert_clean_failure(capsys, ["default", "-o", str(missing)], "does not exist", tmp_path)
    assert_clean_failure(
        capsys,
        ["default", "-o", str(tmp_path / "d"), "--plot", str(missing / "p.png")],
        "does not exist",
        tmp_path,
    )


def test_trellis_and_default_commands(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    small = ["--iterations", "1", "--train-blocks", "16", "--eval-blocks", "8"]
    out = tmp_path / "t.tqcb"
    assert run(["trellis", "--k", "2", *small, "-o", str(out)]) == 0
    assert "trellis2" in read_codebook(out).names()
    assert run(["trellis", "--k", "2", "--L", "5", "--no-train", "--eval-blocks", "8"]) == 0
    assert_clean_failure(
        capsys, ["trellis", "--k", "2", "--L", "5", "-o", str(tmp_path / "u.tqcb")], "L = k + 6", tmp_path
    )
    d = tmp_path / "d"
    assert run(["default", "-o", str(d), *small]) == 0
    names = sorted(os.listdir(d))
    assert names == ["tq-codebooks-default.h", "tq-codebooks-default.tqcb"]
    first = {n: (d / n).read_bytes() for n in names}
    assert run(["default", "-o", str(d), *small]) == 0  # reproducible
    assert {n: (d / n).read_bytes() for n in names} == first
    assert run(["header", str(d / "tq-codebooks-default.tqcb"), "-o", str(tmp_path / "h.h")]) == 0
    # identical apart from the "Regenerate:" hint in the comment
    generated = (tmp_path / "h.h").read_bytes().split(b"#pragma once")[1]
    assert generated == first["tq-codebooks-default.h"].split(b"#pragma once")[1]
