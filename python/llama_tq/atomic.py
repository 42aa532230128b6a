"""Atomic file output: a file is either written completely or not at all.

Data goes to a temporary file in the destination directory (same filesystem), is flushed and fsynced, then
renamed over the destination with ``os.replace``, and the directory is fsynced so the rename survives a crash.
On any error the temporary file is removed and the destination is left as it was. Used for codebooks
(tq-calibrate) and for checkpoints and models (tq-finetune).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory (makes a rename in it durable); ignored where the platform cannot."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _commit(tmp: str, dest: Path, directory: Path) -> None:
    """A finished temporary file onto dest: the umask's permissions (mkstemp makes it 0600), rename, directory
    fsync."""
    os.chmod(tmp, 0o666 & ~_current_umask())
    os.replace(tmp, dest)
    fsync_dir(directory)


def _dest(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    dest = Path(path)
    return dest, dest.parent if str(dest.parent) else Path(".")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """``with atomic_writer(p) as f: f.write(...)``: p appears with all of it, or not at all."""
    dest, directory = _dest(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _commit(tmp, dest, directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """For writers that take a file name (gguf.GGUFWriter): ``with atomic_path(p) as tmp: write(tmp)``; tmp, beside
    p, is fsynced and renamed onto p when the block ends normally, removed when it raises."""
    dest, directory = _dest(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, dest, directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8, written atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a (large) file atomically onto dst."""
    with atomic_writer(dst) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 16 << 20)
