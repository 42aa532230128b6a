"""Fixtures shared by the test suites: the built module, the bundled tools, the test model."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def core():
    try:
        from llama_tq import _core
    except ImportError as e:  # a source checkout without `pip install .`
        pytest.fail(f"llama_tq._core is not built ({e}); run `pip install .` first")
    _core.set_log_level("error")
    return _core


@pytest.fixture(scope="session")
def model_path() -> str:
    from llama_tq import testmodel

    return str(testmodel.test_model_path(quiet=True))


@pytest.fixture(scope="session")
def model(core, model_path):
    return core.Model(model_path)
