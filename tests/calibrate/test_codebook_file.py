"""The .tqcb codebook file: round trip, integrity hash, validation, atomic writes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_tq.calibrate import atomic
from llama_tq.calibrate.codebook_file import (
    DEFAULT_ENTRY_NAMES,
    ENTRY_SPECS,
    Codebook,
    fnv1a64,
    fnv1a64_hex,
    parse_codebook,
    read_codebook,
    render_codebook,
    write_codebook,
)
from llama_tq.calibrate.errors import CalibrationError, CodebookFormatError, CodebookHashError


def make_codebook(seed: int = 0, layers: tuple[int, ...] = (0, 5)) -> Codebook:
    rng = np.random.default_rng(seed)
    cb = Codebook()
    cb.set_param("test.seed", seed)
    cb.set_param("test.what", "random")
    for name in DEFAULT_ENTRY_NAMES:
        kind, count = ENTRY_SPECS[name]
        values = rng.standard_normal(count).astype(np.float32)
        if kind == "levels":
            values = np.sort(values)
        cb.add(name, values, {"note": "x"})
    for layer in layers:
        cb.add(f"ktq2@layer={layer}", np.sort(rng.standard_normal(4)))
    return cb


def rehash(body: bytes) -> bytes:
    """Append a valid hash line: for testing validation past the integrity check."""
    return body + f"fnv1a64 {fnv1a64_hex(body)}\n".encode()


def body_of(data: bytes) -> bytes:
    return data[: data.rindex(b"fnv1a64 ")]


def test_fnv1a64_reference_vectors() -> None:
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a64(b"foobar") == 0x85944171F73967E8


def test_write_read_round_trip_is_exact(tmp_path: Path) -> None:
    cb = make_codebook()
    path = tmp_path / "cb.tqcb"
    digest = write_codebook(path, cb)
    back = read_codebook(path)
    assert back.hash == digest and re.fullmatch(r"[0-9a-f]{16}", digest)
    assert back.params == cb.params and back.tool == cb.tool and back.tool_version == cb.tool_version
    assert back.names() == cb.names()
    assert back.names()[:2] == ["ktq2", "ktq2@layer=0"]  # canonical order
    for name in cb.names():
        np.testing.assert_array_equal(back[name], cb[name])  # bit-exact float32
        assert back.entries[name].meta == cb.entries[name].meta
    assert render_codebook(back) == path.read_bytes()
    data = path.read_bytes()
    assert data.startswith(b"TQCB 1\n") and data.endswith(f"fnv1a64 {digest}\n".encode())
    assert fnv1a64_hex(body_of(data)) == digest


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=256, max_size=256))
def test_every_float32_round_trips_bit_exactly(bit_patterns: list[int]) -> None:
    values = np.array(bit_patterns, dtype=np.uint32).view(np.float32)
    values = np.where(np.isfinite(values), values, np.float32(1.5))  # any finite float32, -0 and subnormals
    cb = Codebook()
    cb.add("trellis2", values)
    back = parse_codebook(render_codebook(cb))
    np.testing.assert_array_equal(back["trellis2"].view(np.uint32), values.view(np.uint32))


def test_corrupted_byte_gives_hash_error_naming_both_hashes(tmp_path: Path) -> None:
    path = tmp_path / "cb.tqcb"
    digest = write_codebook(path, make_codebook())
    data = bytearray(path.read_bytes())
    pos = data.index(b"entry ktq3") + 20
    data[pos] = ord("7") if data[pos] != ord("7") else ord("8")
    path.write_bytes(bytes(data))
    with pytest.raises(CodebookHashError) as info:
        read_codebook(path)
    got = fnv1a64_hex(bytes(data[: data.rindex(b"fnv1a64 ")]))
    assert info.value.expected == digest and info.value.got == got
    assert digest in str(info.value) and got in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-30], "last line"),
        (lambda d: d.replace(b"fnv1a64 ", b"fnv1a32 "), "last line"),
        (lambda d: b"", "empty"),
    ],
)
def test_truncated_or_hashless_files(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CodebookFormatError, match=message):
        parse_codebook(mutate(render_codebook(make_codebook())))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.replace(b"TQCB 1\n", b"TQCB 2\n"), "unsupported codebook format version 2"),
        (lambda b: b.replace(b"TQCB 1\n", b"TQCX 1\n"), "TQCB"),
        (lambda b: b.replace(b"entry ktq2 4", b"entry ktq2 5"), "must have 4 values"),
        (lambda b: b.replace(b"entry ktq2 4", b"entry ktq9 4"), "bad entry name"),
        (lambda b: b.replace(b"entry ktq2@layer=5", b"entry ktq2@layer=05"), "bad entry name"),
        (lambda b: b.replace(b"entry vtq2_1 4", b"entry ktq2 4"), "duplicate entry"),
        (lambda b: b.replace(b"\ntool tq-calibrate", b"\n#ool tq-calibrate"), "missing 'tool"),
        (lambda b: b.replace(b"\n", b"\r\n"), "CR"),
        (lambda b: b + b"bogus line\n", "unknown line"),
        (lambda b: b + b"entry ktq2@layer=9 4\n1 2 3\n", "ends early"),
        (lambda b: b + b"entry ktq2@layer=9 4\n1 2 3 4 5\n", "more than"),
        (lambda b: b + b"entry ktq2@layer=9 4\n1 2 3 nan\n", "not a decimal"),
        (lambda b: b + b"entry ktq2@layer=9 4\n1 2 3 0x1p3\n", "not a decimal"),
        (lambda b: b + b"entry ktq2@layer=9 4\n1 2 3 1_0\n", "not a decimal"),
        (lambda b: b + b"entry ktq2@layer=9 4\n1 2 3 1e39\n", "finite"),
        (lambda b: b + b"entry ktq2@layer=9 4\n1 3 2 4\n", "ascending"),
        (lambda b: b + b"entry ktq2@layer=9 4\n1 2\n\n3 4\n", "blank or comment"),
        (lambda b: b + b"# " + b"x" * 1100 + b"\n", "longer than"),
        (lambda b: b + b"param test.seed 1\n", "duplicate parameter"),
    ],
)
def test_validation_errors_are_clear(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    body = body_of(render_codebook(make_codebook()))
    with pytest.raises(CodebookFormatError, match=message):
        parse_codebook(rehash(edit(body)), "x.tqcb")


def test_comments_blank_lines_and_subsets_are_accepted() -> None:
    cb = Codebook()
    cb.add("vtq3_1", np.linspace(-2, 2, 8))
    body = body_of(render_codebook(cb)).replace(b"entry vtq3_1", b"\n# a comment\n   \nentry vtq3_1")
    back = parse_codebook(rehash(body))
    assert back.names() == ["vtq3_1"]
    assert back.missing_defaults() == [n for n in DEFAULT_ENTRY_NAMES if n != "vtq3_1"]


def test_writer_rejects_bad_entries_and_tokens() -> None:
    cb = Codebook()
    with pytest.raises(CodebookFormatError, match="ascending"):
        cb.add("ktq2", [1.0, 0.0, 2.0, 3.0])
    with pytest.raises(CodebookFormatError, match="expected 8 values"):
        cb.add("ktq3", [1.0, 2.0])
    with pytest.raises(CodebookFormatError, match="finite"):
        cb.add("trellis2", np.full(256, np.nan))
    with pytest.raises(CodebookFormatError, match="bad entry name"):
        cb.add("ktq2@layer=x", [0, 1, 2, 3])
    with pytest.raises(CodebookFormatError, match="no spaces"):
        cb.set_param("a b", "c")
    with pytest.raises(CodebookFormatError, match="no spaces"):
        cb.set_param("key", "*/ evil")


def test_atomic_write_leaves_nothing_when_it_fails_midway(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cb.tqcb"

    def boom(fd: int) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atomic.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        write_codebook(path, make_codebook())
    assert os.listdir(tmp_path) == []
    # an existing file is left untouched
    monkeypatch.undo()
    write_codebook(path, make_codebook(seed=1))
    before = path.read_bytes()
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError, match="rename failed"):
        write_codebook(path, make_codebook(seed=2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["cb.tqcb"]


def test_atomic_write_interrupted_by_keyboard(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real_fdopen = atomic.os.fdopen

    class Exploding:
        def __init__(self, fh):  # type: ignore[no-untyped-def]
            self.fh = fh

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            self.fh.close()

        def write(self, data: bytes) -> None:
            self.fh.write(data[: len(data) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: Exploding(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        write_codebook(tmp_path / "cb.tqcb", make_codebook())
    assert os.listdir(tmp_path) == []


def test_write_errors_for_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        write_codebook(tmp_path / "nope" / "cb.tqcb", make_codebook())


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CodebookFormatError, match="cannot read"):
        read_codebook(tmp_path / "missing.tqcb")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_outputs_take_the_umask_permissions(tmp_path: Path, umask: int) -> None:
    """Codebooks and the GGUF calibration files appear as a plain open() would make them (mkstemp's 0600 would
    hide them from a server running as another user)."""
    from llama_tq.calibrate.calib_gguf import read_calib_gguf, write_calib_gguf

    old = os.umask(umask)
    try:
        write_codebook(tmp_path / "cb.tqcb", make_codebook())
        write_calib_gguf(tmp_path / "c.gguf", "llama", "k_means", 1, "test", 7,
                         {"k_mean.0": np.arange(6, dtype=np.float32).reshape(2, 3)})
    finally:
        os.umask(old)
    for name in ("cb.tqcb", "c.gguf"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    arch, tensors = read_calib_gguf(tmp_path / "c.gguf", "k_means", 1)
    assert arch == "llama" and tensors["k_mean.0"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert sorted(os.listdir(tmp_path)) == ["c.gguf", "cb.tqcb"]


def test_atomic_gguf_write_that_fails_leaves_the_old_file(tmp_path: Path) -> None:
    from llama_tq.calibrate.calib_gguf import write_calib_gguf

    path = tmp_path / "c.gguf"
    write_calib_gguf(path, "llama", "k_means", 1, "first", 1, {"t": np.zeros(4, dtype=np.float32)})
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_calib_gguf(path, "llama", "k_means", 1, "second", 1, {"t": np.zeros(4, dtype=np.complex64)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.gguf"]
