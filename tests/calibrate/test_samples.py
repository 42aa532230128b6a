"""Empirical calibration from per-layer K/V sample arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llama_tq.calibrate.codebook_file import parse_codebook, render_codebook
from llama_tq.calibrate.distributions import Gaussian
from llama_tq.calibrate.errors import CalibrationError
from llama_tq.calibrate.lloyd_max import lloyd_max
from llama_tq.calibrate.samples import calibrate_from_samples, load_samples_npz, normalize_blocks


def gaussian_layers(n_layers: int, rows: int, width: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    # very different scales per layer and per block: normalisation must remove them
    return {
        layer: rng.standard_normal((rows, width)) * rng.uniform(0.01, 50.0, (rows, width // 64)).repeat(64, axis=1)
        for layer in range(n_layers)
    }


def test_normalize_blocks() -> None:
    x = np.arange(1, 257, dtype=np.float64).reshape(2, 128)
    x[1, 64:] = 0.0
    blocks = normalize_blocks(x)
    assert blocks.shape == (3, 64)  # the zero block is dropped
    np.testing.assert_allclose(np.sqrt(np.mean(blocks**2, axis=1)), 1.0)
    np.testing.assert_allclose(blocks[0], x[0, :64] / np.sqrt(np.mean(x[0, :64] ** 2)))
    for bad, message in [
        (np.zeros((2, 64)), "all 2 blocks are zero"),
        (np.ones((4, 96)), "not a multiple of the block size 64"),
        (np.array([]), "empty"),
        (np.full(64, np.nan), "NaN or Inf"),
        (np.float64(3.0), "scalar"),
    ]:
        with pytest.raises(CalibrationError, match=message):
            normalize_blocks(bad)


def test_fits_global_and_per_layer_codebooks() -> None:
    k = gaussian_layers(3, 300, 128, 1)
    v = gaussian_layers(2, 300, 64, 2)
    res = calibrate_from_samples(k, v, bits=(2, 3), per_layer=True)
    cb = res.codebook
    assert cb.names() == [
        "ktq2",
        "ktq2@layer=0",
        "ktq2@layer=1",
        "ktq2@layer=2",
        "ktq3",
        "ktq3@layer=0",
        "ktq3@layer=1",
        "ktq3@layer=2",
        "vtq2_1",
        "vtq2_1@layer=0",
        "vtq2_1@layer=1",
        "vtq3_1",
        "vtq3_1@layer=0",
        "vtq3_1@layer=1",
    ]
    assert res.n_blocks["k"] == 3 * 300 * 2 and res.n_blocks["v"] == 2 * 300
    # RMS-normalised Gaussian blocks are close to N(0,1): levels near the Gaussian Lloyd-Max levels
    for name, bits in (("ktq2", 2), ("vtq3_1", 3)):
        np.testing.assert_allclose(cb[name], lloyd_max(Gaussian(), 1 << bits).levels, atol=0.06)
        fit = res.fits[name]
        assert fit.mse < 1.05 * lloyd_max(Gaussian(), 1 << bits).mse
    back = parse_codebook(render_codebook(cb))
    for name in cb.names():
        np.testing.assert_array_equal(back[name], cb[name])
    assert back.params["samples.k.layers"] == "3"


def test_symmetric_option_and_trellis_from_samples() -> None:
    v = gaussian_layers(1, 40, 64, 3)
    res = calibrate_from_samples(
        None, v, bits=(2,), symmetric=True, trellis=True, trellis_iterations=1, trellis_max_blocks=32
    )
    cb = res.codebook
    assert cb.names() == ["vtq2_1", "trellis2"]
    np.testing.assert_array_equal(cb["vtq2_1"], -cb["vtq2_1"][::-1])
    assert res.trellis["trellis2"].n_blocks == 32


def test_bad_sample_input() -> None:
    with pytest.raises(CalibrationError, match="no samples"):
        calibrate_from_samples({}, {})
    with pytest.raises(CalibrationError, match="bits"):
        calibrate_from_samples({0: np.ones(64)}, None, bits=(5,))
    with pytest.raises(CalibrationError, match="layer keys"):
        calibrate_from_samples({"a": np.ones(64)}, None)  # type: ignore[dict-item]
    with pytest.raises(CalibrationError, match="trellis training needs V"):
        calibrate_from_samples({0: np.random.default_rng(0).standard_normal(640)}, None, trellis=True)
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        calibrate_from_samples({0: np.full(64, np.inf)}, None)


def test_load_samples_npz(tmp_path: Path) -> None:
    good = tmp_path / "s.npz"
    np.savez(good, **{"k.0": np.ones((2, 64)), "v.0": np.ones(64, dtype=np.float16), "k.12": np.zeros(64)})
    k, v = load_samples_npz(good)
    assert sorted(k) == [0, 12] and sorted(v) == [0] and v[0].dtype == np.float64
    bad_key = tmp_path / "bad.npz"
    np.savez(bad_key, **{"q.0": np.ones(64)})
    with pytest.raises(CalibrationError, match="unexpected array 'q.0'"):
        load_samples_npz(bad_key)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CalibrationError, match="cannot read samples"):
        load_samples_npz(corrupt)
    with pytest.raises(CalibrationError, match="cannot read samples"):
        load_samples_npz(tmp_path / "missing.npz")
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    with pytest.raises(CalibrationError, match="no arrays"):
        load_samples_npz(empty)
