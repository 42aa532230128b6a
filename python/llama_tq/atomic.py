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


@contextlib.contextmanager
def _temp_beside(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """(fd, name) of a new temporary file beside path. When the block ends normally (the caller has written and
    fsynced it) it takes the umask's permissions (mkstemp makes it 0600) and replaces path, and the directory is
    fsynced; when it raises, the file is removed."""
    dest = Path(path)
    directory = dest.parent if str(dest.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    try:
        yield fd, tmp
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, dest)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """``with atomic_writer(p) as f: f.write(...)``: p appears with all of it, or not at all."""
    with _temp_beside(path) as (fd, _), os.fdopen(fd, "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """For writers that take a file name (gguf.GGUFWriter): ``with atomic_path(p) as tmp: write(tmp)``; tmp, beside
    p, is fsynced and renamed onto p when the block ends normally, removed when it raises."""
    with _temp_beside(path) as (fd, tmp):
        try:
            yield Path(tmp)
            os.fsync(fd)  # the writer's data, written through its own handle to the same file
        finally:
            os.close(fd)


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
