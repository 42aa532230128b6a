"""What the emulated-kernel tests share: the CPU reference library they compare with."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cuda_emu.test_fattn_emu import formats_harness, skip_reason


@pytest.fixture(scope="session")
def ref_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libtq.so of src/ggml-tq, built once (tests/formats/conftest.py's build_library); skips where no emulation."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    formats = formats_harness()
    if shutil.which(formats.CC) is None:
        pytest.skip(f"no C compiler found ({formats.CC}) for the CPU reference")
    return formats.build_library(tmp_path_factory.mktemp("tqlib"))
