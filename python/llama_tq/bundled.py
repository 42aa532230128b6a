"""Where the bundled llama.cpp programs live, and how to run them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
BIN_DIR = PACKAGE_DIR / "bin"

# The short names `llama-tq NAME` accepts, mapped to the bundled programs.
TOOLS: dict[str, str] = {
    "cli": "llama-cli",
    "completion": "llama-completion",
    "server": "llama-server",
    "perplexity": "llama-perplexity",
    "bench": "llama-bench",
    "finetune": "llama-finetune",
    "quantize": "llama-quantize",
    "test-backend-ops": "test-backend-ops",
}


class ToolNotFoundError(FileNotFoundError):
    """A bundled program is missing (a broken install, or a build without that tool)."""


def tool_path(name: str) -> Path:
    """Path of a bundled program, by short name (``bench``) or full name (``llama-bench``)."""
    program = TOOLS.get(name, name)
    path = BIN_DIR / program
    if not path.is_file():
        available = sorted(p.name for p in BIN_DIR.glob("*")) if BIN_DIR.is_dir() else []
        raise ToolNotFoundError(
            f"{program} is not bundled in {BIN_DIR} (found: {', '.join(available) or 'nothing'}); "
            "reinstall with `pip install .`"
        )
    return path


def run_tool(name: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a bundled program and wait for it (arguments as for subprocess.run)."""
    return subprocess.run([str(tool_path(name)), *args], **kwargs)


def exec_tool(name: str, args: list[str]) -> None:
    """Replace this process with a bundled program (signals and exit code go straight to it)."""
    path = tool_path(name)
    os.execv(path, [str(path), *args])
