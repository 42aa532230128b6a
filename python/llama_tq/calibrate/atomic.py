"""Atomic file output: a file is either written completely or not at all.

Data goes to a temporary file in the destination directory (same filesystem), is flushed and fsynced,
then renamed over the destination with ``os.replace``. On any error the temporary file is removed and
the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import CalibrationError


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory + ``os.replace``)."""
    dest = Path(path)
    directory = dest.parent if str(dest.parent) else Path(".")
    if not directory.is_dir():
        raise CalibrationError(f"cannot write {dest}: directory {directory} does not exist")
    if dest.is_dir():
        raise CalibrationError(f"cannot write {dest}: it is a directory")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8, LF line endings, written atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
