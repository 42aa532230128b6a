"""The committed default codebook (src/ggml-tq/tq-codebooks-default.{tqcb,h}) and its regeneration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llama_tq.calibrate.codebook_file import DEFAULT_ENTRY_NAMES, read_codebook, render_codebook
from llama_tq.calibrate.defaults import DEFAULT_BASENAME, REGENERATE_HINT, build_default
from llama_tq.calibrate.distributions import Gaussian
from llama_tq.calibrate.header import render_header
from llama_tq.calibrate.lloyd_max import lloyd_max
from llama_tq.calibrate.trellis import TrellisSpec, evaluate_trellis

SRC = Path(__file__).resolve().parents[2] / "src" / "ggml-tq"
TQCB = SRC / f"{DEFAULT_BASENAME}.tqcb"
HEADER = SRC / f"{DEFAULT_BASENAME}.h"
SCALAR_MSE = {2: 0.1175, 3: 0.03454, 4: 0.009497}


def test_committed_file_is_valid_and_complete() -> None:
    cb = read_codebook(TQCB)  # verifies hash, version, names, sizes
    assert cb.names() == list(DEFAULT_ENTRY_NAMES)
    for b in (2, 3, 4):
        levels = lloyd_max(Gaussian(), 1 << b).levels.astype(np.float32)
        np.testing.assert_array_equal(cb[f"ktq{b}"], levels)
        np.testing.assert_array_equal(cb[f"vtq{b}_1"], levels)


def test_committed_header_matches_the_committed_file() -> None:
    cb = read_codebook(TQCB)
    assert HEADER.read_text() == render_header(cb, TQCB.name, regenerate_hint=REGENERATE_HINT)
    assert f'#define TQ_CODEBOOK_HASH "{cb.hash}"' in HEADER.read_text()


@pytest.mark.parametrize("k", [2, 3, 4])
def test_committed_trellis_tables_beat_scalar_lloyd_max(k: int) -> None:
    cb = read_codebook(TQCB)
    ev = evaluate_trellis(cb[f"trellis{k}"].astype(np.float64), TrellisSpec(k), n_blocks=48, seed=k)
    assert ev.mse_refit < 0.8 * SCALAR_MSE[k]
    assert ev.mse_refit < 1.6 * 4.0**-k


def test_default_build_is_reproducible_with_small_parameters() -> None:
    small = {"iterations": 1, "n_blocks": 24, "eval_blocks": 4}
    a = render_codebook(build_default(**small).codebook)
    b = render_codebook(build_default(**small).codebook)
    assert a == b
