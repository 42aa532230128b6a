"""llama-tq: TurboQuant KV caches on a pinned, patched llama.cpp.

The compiled pieces (the llama.cpp tools under ``bin/``, their libraries under ``lib/`` and the
``_core`` module) are installed inside this package by ``pip install .``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("llama-tq")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"


def build_info() -> dict[str, Any]:
    """What this build is: upstream commit and build, patch-series hash, backends, CUDA archs, devices."""
    from . import _core

    info = dict(_core.build_info())
    info["version"] = __version__
    return info


__all__ = ["__version__", "build_info"]
