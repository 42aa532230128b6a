"""The generated C header: exact interface, determinism, values that compile back to the same floats."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from llama_tq.calibrate.codebook_file import DEFAULT_ENTRY_NAMES, Codebook, parse_codebook, render_codebook
from llama_tq.calibrate.errors import CalibrationError
from llama_tq.calibrate.header import c_float_literal, render_header

from .test_codebook_file import make_codebook

EXPECTED_SYMBOLS = [
    ("tq_default_ktq2", 4),
    ("tq_default_ktq3", 8),
    ("tq_default_ktq4", 16),
    ("tq_default_vtq2_1", 4),
    ("tq_default_vtq3_1", 8),
    ("tq_default_vtq4_1", 16),
    ("tq_default_trellis2", 256),
    ("tq_default_trellis3", 512),
    ("tq_default_trellis4", 1024),
]


def _read_back(cb: Codebook) -> Codebook:
    return parse_codebook(render_codebook(cb), "cb.tqcb")


def test_header_has_exactly_the_interface() -> None:
    cb = _read_back(make_codebook())
    text = render_header(cb, "some/dir/cb.tqcb")
    assert "#pragma once" in text
    decls = re.findall(r"static const float (\w+)\[(\d+)\] = \{", text)
    assert [(n, int(c)) for n, c in decls] == EXPECTED_SYMBOLS
    assert re.findall(r'#define (\w+) "([0-9a-f]{16})"', text) == [("TQ_CODEBOOK_HASH", cb.hash)]
    assert re.findall(r"^#define (\w+)", text, flags=re.M) == ["TQ_CODEBOOK_HASH"]
    assert "some/dir" not in text and "cb.tqcb" in text  # base name only: reproducible
    assert "layer" not in text.split("#pragma once")[1]  # per-layer entries are runtime-only


def test_header_generation_is_deterministic() -> None:
    a = render_header(_read_back(make_codebook(3)), "cb.tqcb")
    b = render_header(_read_back(make_codebook(3)), "cb.tqcb")
    assert a == b
    # a codebook that was never written hashes the same as its file
    assert render_header(make_codebook(3), "cb.tqcb") == a
    assert render_header(_read_back(make_codebook(4)), "cb.tqcb") != a


def test_header_needs_all_default_entries() -> None:
    cb = make_codebook()
    del cb.entries["trellis3"]
    with pytest.raises(CalibrationError, match="missing trellis3"):
        render_header(cb, "cb.tqcb")


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (0.0, "0.0f"),
        (-0.0, "-0.0f"),
        (1.0, "1.0f"),
        (-2.0, "-2.0f"),
        (0.1, "0.100000001f"),
        (1e-5, "9.99999975e-06f"),
        (3e38, "3.00000001e+38f"),
        (1e-45, "1.40129846e-45f"),
    ],
)
def test_c_float_literals(value: float, literal: str) -> None:
    assert c_float_literal(value) == literal
    assert np.float32(float(literal[:-1])) == np.float32(value)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_header_compiles_warning_free_and_values_round_trip(tmp_path: Path) -> None:
    cb = _read_back(make_codebook(7))
    (tmp_path / "tq-codebooks-default.h").write_text(render_header(cb, "cb.tqcb"))
    prints = "\n".join(
        f'    for (i = 0; i < {n}; ++i) printf("{name} %d %a\\n", i, (double) {name}[i]);'
        for name, n in EXPECTED_SYMBOLS
    )
    (tmp_path / "main.c").write_text(
        '#include <stdio.h>\n#include "tq-codebooks-default.h"\n'
        'int main(void) {\n    int i;\n    printf("hash %s\\n", TQ_CODEBOOK_HASH);\n'
        f"{prints}\n    return 0;\n}}\n"
    )
    exe = tmp_path / "main"
    subprocess.run(
        [
            "cc",
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-o",
            str(exe),
            str(tmp_path / "main.c"),
        ],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    assert out[0] == f"hash {cb.hash}"
    got: dict[str, list[float]] = {}
    for line in out[1:]:
        name, _, value = line.split()
        got.setdefault(name, []).append(float.fromhex(value))
    for entry in DEFAULT_ENTRY_NAMES:
        np.testing.assert_array_equal(np.array(got[f"tq_default_{entry}"], dtype=np.float32), cb[entry])
