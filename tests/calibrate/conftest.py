"""Make ``llama_tq.calibrate`` importable from a source checkout.

If an installed ``llama_tq`` already provides the ``calibrate`` subpackage it is used as is; otherwise
(nothing installed, or an installed build that predates it) the checkout's ``python/`` directory is put
first on ``sys.path`` (or, if an older ``llama_tq`` was already imported, added to its package path).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "python"


def _has_calibrate(locations: list[str] | None) -> bool:
    return any((Path(loc) / "calibrate" / "__init__.py").is_file() for loc in locations or [])


if "llama_tq" in sys.modules:
    package = sys.modules["llama_tq"]
    if not _has_calibrate(list(getattr(package, "__path__", []))):
        package.__path__.append(str(SOURCE / "llama_tq"))
else:
    spec = importlib.util.find_spec("llama_tq")
    if spec is None or not _has_calibrate(list(spec.submodule_search_locations or [])):
        sys.path.insert(0, str(SOURCE))
