"""The versioned codebook file (``.tqcb``): writer, reader and validation.

The format is specified in docs/codebook-format.md; in short (version 1)::

    TQCB 1
    # comments and empty lines are ignored
    tool tq-calibrate 1.0.0
    param <key> <value>
    entry <name> <count> [<key>=<value> ...]
    <count floats, whitespace separated, 8 per line, %.9g of float32>
    ...
    fnv1a64 <16 lowercase hex digits>

The last line holds the FNV-1a 64-bit hash of every byte before it. Entry names are ``ktq2..4`` and
``vtq2_1..vtq4_1`` (2^b ascending scalar levels) and ``trellis2..4`` (2^(k+6) trellis table values),
optionally suffixed ``@layer=N`` for a per-layer override.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .atomic import atomic_write_bytes
from .errors import CodebookFormatError, CodebookHashError
from .version import TOOL_NAME, TOOL_VERSION

FORMAT_MAGIC = "TQCB"
FORMAT_VERSION = 1
VALUES_PER_LINE = 8
HASH_KEYWORD = "fnv1a64"
FILE_SUFFIX = ".tqcb"

FNV64_OFFSET = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1

#: base entry name -> (kind, number of values)
ENTRY_SPECS: dict[str, tuple[str, int]] = {
    **{f"ktq{b}": ("levels", 1 << b) for b in (2, 3, 4)},
    **{f"vtq{b}_1": ("levels", 1 << b) for b in (2, 3, 4)},
    **{f"trellis{k}": ("trellis", 1 << (k + 6)) for k in (2, 3, 4)},
}
#: the entries every complete (default) codebook has, in canonical order
DEFAULT_ENTRY_NAMES: tuple[str, ...] = tuple(ENTRY_SPECS)
MAX_LAYER = 65535

_NAME_RE = re.compile(r"^(?P<base>[a-z0-9_]+)(?:@layer=(?P<layer>0|[1-9][0-9]{0,4}))?$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.,:=+\-()/@\[\]]+$")
_HASH_LINE_RE = re.compile(rb"fnv1a64 ([0-9a-f]{16})\n\Z")
_FLOAT_RE = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
MAX_LINE_BYTES = 1024  #: including the newline


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64-bit: h = 0xcbf29ce484222325; for each byte: h ^= byte; h *= 0x100000001b3 (mod 2^64)."""
    h = FNV64_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV64_PRIME) & _MASK64
    return h


def fnv1a64_hex(data: bytes) -> str:
    return f"{fnv1a64(data):016x}"


def split_name(name: str) -> tuple[str, int | None]:
    """``'ktq2@layer=5'`` -> ``('ktq2', 5)``; ``'ktq2'`` -> ``('ktq2', None)``. Validates the name."""
    m = _NAME_RE.match(name)
    if not m or m.group("base") not in ENTRY_SPECS:
        known = ", ".join(ENTRY_SPECS)
        raise CodebookFormatError(f"bad entry name {name!r}: expected one of {known}, optionally '@layer=N'")
    layer = m.group("layer")
    if layer is not None and int(layer) > MAX_LAYER:
        raise CodebookFormatError(f"bad entry name {name!r}: layer above {MAX_LAYER}")
    return m.group("base"), None if layer is None else int(layer)


def entry_name(base: str, layer: int | None = None) -> str:
    name = base if layer is None else f"{base}@layer={layer}"
    split_name(name)
    return name


def check_token(what: str, token: str) -> str:
    if not _TOKEN_RE.match(token):
        raise CodebookFormatError(f"{what} {token!r}: only letters, digits and _.,:=+-()/@[] are allowed (no spaces)")
    return token


def format_float(value: float) -> str:
    """%.9g of the float32 value: the shortest fixed format that round-trips every float32 exactly."""
    return f"{float(np.float32(value)):.9g}"


@dataclass(frozen=True)
class CodebookEntry:
    """One named table: float32 values and free-form ``key=value`` metadata (informational only)."""

    name: str
    values: NDArray[np.float32]
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        base, _ = split_name(self.name)
        kind, count = ENTRY_SPECS[base]
        with np.errstate(over="ignore"):
            vals = np.asarray(self.values, dtype=np.float64).astype(np.float32)
        if vals.shape != (count,):
            raise CodebookFormatError(f"entry {self.name}: expected {count} values, got {vals.size}")
        if not np.all(np.isfinite(vals)):
            raise CodebookFormatError(f"entry {self.name}: values must be finite float32 numbers")
        if kind == "levels" and not np.all(np.diff(vals) > 0):
            raise CodebookFormatError(f"entry {self.name}: levels must be strictly ascending")
        for key, value in self.meta.items():
            check_token(f"entry {self.name}: metadata key", key)
            check_token(f"entry {self.name}: metadata value", value)
        vals.setflags(write=False)
        object.__setattr__(self, "values", vals)

    @property
    def base(self) -> str:
        return split_name(self.name)[0]

    @property
    def layer(self) -> int | None:
        return split_name(self.name)[1]

    @property
    def kind(self) -> str:
        return ENTRY_SPECS[self.base][0]


def _sort_key(name: str) -> tuple[int, int]:
    base, layer = split_name(name)
    return DEFAULT_ENTRY_NAMES.index(base), -1 if layer is None else layer


@dataclass
class Codebook:
    """A set of named entries plus provenance (tool, version, ordered parameters)."""

    entries: dict[str, CodebookEntry] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tool: str = TOOL_NAME
    tool_version: str = TOOL_VERSION
    version: int = FORMAT_VERSION
    hash: str | None = None  #: fnv1a64 of the file this codebook was read from / last rendered to

    def add(self, name: str, values: ArrayLike, meta: Mapping[str, str] | None = None) -> CodebookEntry:
        if name in self.entries:
            raise CodebookFormatError(f"duplicate entry {name}")
        entry = CodebookEntry(name, np.asarray(values), dict(meta or {}))
        self.entries[name] = entry
        return entry

    def set_param(self, key: str, value: object) -> None:
        self.params[check_token("parameter name", key)] = check_token(f"parameter {key} value", str(value))

    def __getitem__(self, name: str) -> NDArray[np.float32]:
        return self.entries[name].values

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        """Entry names in canonical order (the order the writer uses)."""
        return sorted(self.entries, key=_sort_key)

    def missing_defaults(self) -> list[str]:
        return [n for n in DEFAULT_ENTRY_NAMES if n not in self.entries]


def render_codebook(codebook: Codebook) -> bytes:
    """The exact bytes of the file, hash line included (deterministic: no dates, canonical order)."""
    check_token("tool name", codebook.tool)
    check_token("tool version", codebook.tool_version)
    lines = [
        f"{FORMAT_MAGIC} {FORMAT_VERSION}",
        "# llama-tq codebook: see docs/codebook-format.md",
        f"tool {codebook.tool} {codebook.tool_version}",
    ]
    for key, value in codebook.params.items():
        check_token("parameter name", key)
        check_token(f"parameter {key} value", value)
        lines.append(f"param {key} {value}")
    for name in codebook.names():
        entry = codebook.entries[name]
        meta = "".join(f" {k}={v}" for k, v in entry.meta.items())
        lines.append(f"entry {name} {entry.values.size}{meta}")
        vals = [format_float(v) for v in entry.values]
        for i in range(0, len(vals), VALUES_PER_LINE):
            lines.append(" ".join(vals[i : i + VALUES_PER_LINE]))
    for line in lines:
        if len(line.encode("utf-8")) + 1 > MAX_LINE_BYTES:
            raise CodebookFormatError(f"line longer than {MAX_LINE_BYTES} bytes: {line[:60]}...")
    body = ("\n".join(lines) + "\n").encode("utf-8")
    return body + f"{HASH_KEYWORD} {fnv1a64_hex(body)}\n".encode("ascii")


def write_codebook(path: str | os.PathLike[str], codebook: Codebook) -> str:
    """Write atomically; returns the file's hash (also stored in ``codebook.hash``)."""
    data = render_codebook(codebook)
    atomic_write_bytes(path, data)
    codebook.hash = data[-17:-1].decode("ascii")
    return codebook.hash


def _parse_float(token: str, where: str) -> float:
    if not _FLOAT_RE.match(token):
        raise CodebookFormatError(f"{where}: {token!r} is not a decimal number")
    value = float(token)
    if not math.isfinite(value):
        raise CodebookFormatError(f"{where}: {token!r} is not finite")
    return value


def parse_codebook(data: bytes, source: str = "<codebook>") -> Codebook:
    """Parse and validate file contents; errors name the source and line."""
    if not data:
        raise CodebookFormatError(f"{source}: empty file, not a codebook")
    m = _HASH_LINE_RE.search(data)
    if m is None:
        raise CodebookFormatError(
            f"{source}: last line must be '{HASH_KEYWORD} <16 hex digits>' followed by a newline "
            "(truncated or not a codebook file)"
        )
    expected = m.group(1).decode("ascii")
    body = data[: m.start()]
    got = fnv1a64_hex(body)
    if got != expected:
        raise CodebookHashError(source, expected, got)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodebookFormatError(f"{source}: not UTF-8 ({exc})") from None
    if "\r" in text:
        raise CodebookFormatError(f"{source}: CR characters found; the format uses LF line endings only")
    lines = text.split("\n")[:-1] if text else []
    cb = Codebook(hash=expected)
    if not lines or not lines[0].startswith(FORMAT_MAGIC + " "):
        raise CodebookFormatError(f"{source}:1: missing '{FORMAT_MAGIC} <version>' header line")
    version_token = lines[0][len(FORMAT_MAGIC) + 1 :]
    if not re.fullmatch(r"[0-9]{1,6}", version_token):
        raise CodebookFormatError(f"{source}:1: bad format version {version_token!r}")
    cb.version = int(version_token)
    if cb.version != FORMAT_VERSION:
        raise CodebookFormatError(
            f"{source}: unsupported codebook format version {cb.version} (this reader supports {FORMAT_VERSION})"
        )
    for lineno, line in enumerate(lines, start=1):
        if len(line.encode("utf-8")) + 1 > MAX_LINE_BYTES:
            raise CodebookFormatError(f"{source}:{lineno}: line longer than {MAX_LINE_BYTES} bytes")
    seen_tool = False
    pending: tuple[str, int, dict[str, str], list[float], int] | None = None  # name, count, meta, vals, line
    for lineno, line in enumerate(lines[1:], start=2):
        where = f"{source}:{lineno}"
        if pending is not None:
            name, count, meta, vals, start = pending
            if not line.strip() or line.startswith("#"):
                raise CodebookFormatError(
                    f"{where}: entry {name} has {len(vals)} of {count} values; no blank or comment lines "
                    "are allowed inside an entry"
                )
            for tok in line.split():
                vals.append(_parse_float(tok, where))
            if len(vals) > count:
                raise CodebookFormatError(f"{where}: entry {name} has more than the declared {count} values")
            if len(vals) == count:
                _add_entry(cb, name, vals, meta, f"{source}:{start}")
                pending = None
            continue
        if not line.strip() or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword == "tool":
            parts = rest.split()
            if len(parts) != 2 or seen_tool:
                raise CodebookFormatError(f"{where}: expected exactly one 'tool <name> <version>' line")
            cb.tool, cb.tool_version = parts
            seen_tool = True
        elif keyword == "param":
            parts = rest.split()
            if len(parts) != 2:
                raise CodebookFormatError(f"{where}: expected 'param <key> <value>'")
            if parts[0] in cb.params:
                raise CodebookFormatError(f"{where}: duplicate parameter {parts[0]}")
            cb.params[parts[0]] = parts[1]
        elif keyword == "entry":
            parts = rest.split()
            if len(parts) < 2:
                raise CodebookFormatError(f"{where}: expected 'entry <name> <count> [key=value ...]'")
            name = parts[0]
            try:
                base, _ = split_name(name)
            except CodebookFormatError as exc:
                raise CodebookFormatError(f"{where}: {exc}") from None
            if name in cb.entries:
                raise CodebookFormatError(f"{where}: duplicate entry {name}")
            expected_count = ENTRY_SPECS[base][1]
            if parts[1] != str(expected_count):
                raise CodebookFormatError(
                    f"{where}: entry {name} must have {expected_count} values, header says {parts[1]!r}"
                )
            meta: dict[str, str] = {}
            for tok in parts[2:]:
                key, eq, value = tok.partition("=")
                if not eq or not key:
                    raise CodebookFormatError(f"{where}: bad entry metadata {tok!r} (expected key=value)")
                meta[key] = value
            pending = (name, expected_count, meta, [], lineno)
        else:
            raise CodebookFormatError(f"{where}: unknown line {line[:40]!r}")
    if pending is not None:
        raise CodebookFormatError(f"{source}: entry {pending[0]} ends early: {len(pending[3])} of {pending[1]} values")
    if not seen_tool:
        raise CodebookFormatError(f"{source}: missing 'tool <name> <version>' line")
    return cb


def _add_entry(cb: Codebook, name: str, vals: list[float], meta: dict[str, str], where: str) -> None:
    try:
        cb.add(name, np.asarray(vals), meta)
    except CodebookFormatError as exc:
        raise CodebookFormatError(f"{where}: {exc}") from None


def read_codebook(path: str | os.PathLike[str]) -> Codebook:
    """Read, verify (hash, version, names, sizes, values) and return a codebook file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CodebookFormatError(f"cannot read codebook {p}: {exc.strerror or exc}") from None
    return parse_codebook(data, str(p))


def merge_codebooks(codebooks: Iterable[Codebook]) -> Codebook:
    """Union of entries and parameters; duplicate names are an error."""
    out = Codebook()
    for cb in codebooks:
        for key, value in cb.params.items():
            out.set_param(key, value)
        for name, entry in cb.entries.items():
            out.add(name, entry.values, entry.meta)
    return out
