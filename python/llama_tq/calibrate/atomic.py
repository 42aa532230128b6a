"""Atomic codebook output (llama_tq.atomic), with tq-calibrate's errors for a missing directory or a directory
given as the output path."""

from __future__ import annotations

import os
from pathlib import Path

from .. import atomic as _atomic
from .errors import CalibrationError


def check_writable(path: str | os.PathLike[str]) -> Path:
    """The clear errors for an output path that cannot be written (missing directory, a directory)."""
    dest = Path(path)
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise CalibrationError(f"cannot write {dest}: directory {directory} does not exist")
    if dest.is_dir():
        raise CalibrationError(f"cannot write {dest}: it is a directory")
    return dest


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory + ``os.replace``)."""
    _atomic.atomic_write_bytes(check_writable(path), data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8, LF line endings, written atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
