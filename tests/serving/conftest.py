"""Fixtures for the serving tests (``core`` and ``model_path`` come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import synth


@pytest.fixture(scope="session")
def synth_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny gguf-py-written models of other shapes: head dim 128 + GQA, SWA, hybrid (with and without SWA)."""
    d = tmp_path_factory.mktemp("synth")
    return {
        "llama_gqa128": synth.llama_gqa128(d / "llama_gqa128.gguf"),
        "gemma2_swa": synth.gemma2_swa(d / "gemma2_swa.gguf", n_swa=256),
        "lfm2_hybrid": synth.lfm2_hybrid(d / "lfm2_hybrid.gguf"),
        "lfm2_hybrid_swa": synth.lfm2_hybrid(d / "lfm2_hybrid_swa.gguf", n_swa=128),
    }
