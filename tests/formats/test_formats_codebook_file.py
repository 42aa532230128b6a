"""LLAMA_TQ_CODEBOOK: the C reader of codebook files (docs/codebook-format.md), in fresh processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

BASE = {
    **{f"ktq{b}": 1 << b for b in (2, 3, 4)},
    **{f"vtq{b}_1": 1 << b for b in (2, 3, 4)},
    **{f"trellis{k}": 1 << (k + 6) for k in (2, 3, 4)},
}
LEVEL_TYPE = {"ktq2": 0, "ktq3": 1, "ktq4": 2, "vtq2_1": 3, "vtq3_1": 4, "vtq4_1": 5}

PROBE = r"""
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
lib.tq_levels.restype = ctypes.POINTER(ctypes.c_float)
lib.tq_trellis_table.restype = ctypes.POINTER(ctypes.c_float)
lib.tq_codebook_hash.restype = ctypes.c_char_p
lib.tq_codebook_source.restype = ctypes.c_char_p
out = {"hash": lib.tq_codebook_hash().decode(), "source": lib.tq_codebook_source().decode()}
for name, t in LEVEL_TYPE.items():
    n = 1 << (2 + t % 3)
    out[name] = [lib.tq_levels(t)[i] for i in range(n)]
for k in (2, 3, 4):
    out[f"trellis{k}"] = [lib.tq_trellis_table(k)[i] for i in range(1 << (k + 6))]
# the row functions use the active tables: one ktq2 block with d = 1 and all codes 0
blk = (ctypes.c_uint8 * 18)(0x00, 0x3C)
y = (ctypes.c_float * 64)()
lib.dequantize_row_ktq2(blk, y, ctypes.c_int64(64))
out["decoded"] = y[0]
print(json.dumps(out))
""".replace("LEVEL_TYPE", repr(LEVEL_TYPE))


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & ((1 << 64) - 1)
    return h


def render(
    entries: dict[str, np.ndarray],
    *,
    header: str = "TQCB 1",
    tool: bool = True,
    extra: tuple[str, ...] = (),
    newline: str = "\n",
) -> bytes:
    lines = [header, "# test codebook"]
    if tool:
        lines.append("tool test-writer 0.1")
    lines.append("param origin tests")
    lines += extra
    for name, vals in entries.items():
        lines.append(f"entry {name} {len(vals)} note=x")
        txt = [f"{float(np.float32(v)):.9g}" for v in vals]
        lines += [" ".join(txt[i : i + 8]) for i in range(0, len(txt), 8)]
    body = newline.join(lines).encode() + newline.encode()
    return body + f"fnv1a64 {fnv1a64(body):016x}\n".encode()


def rehash(body: bytes) -> bytes:
    return body + f"fnv1a64 {fnv1a64(body):016x}\n".encode()


def custom_entries(rng, names=tuple(BASE)) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        n = BASE[name]
        v = rng.standard_normal(n) * 1.1
        out[name] = np.sort(v) if not name.startswith("trellis") else v
    return out


def run_probe(libpath, codebook_path, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_TQ_CODEBOOK"}
    if codebook_path is not None:
        env["LLAMA_TQ_CODEBOOK"] = str(codebook_path)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", PROBE, str(libpath)], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture(scope="module")
def defaults(libpath):
    res = run_probe(libpath, None)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    return json.loads(res.stdout)


def test_no_variable_uses_builtin(defaults, tq):
    assert defaults["source"] == "built-in"
    assert np.array_equal(np.float32(defaults["ktq2"]), tq.levels("ktq2"))
    assert defaults["decoded"] == pytest.approx(defaults["ktq2"][0])


def test_empty_variable_uses_builtin(libpath, defaults):
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_TQ_CODEBOOK"}
    env["LLAMA_TQ_CODEBOOK"] = ""
    res = subprocess.run([sys.executable, "-c", PROBE, str(libpath)], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["source"] == "built-in"


def test_full_file_replaces_every_table(libpath, tmp_path):
    entries = custom_entries(np.random.default_rng(1))
    path = tmp_path / "full.tqcb"
    data = render(entries)
    path.write_bytes(data)
    res = run_probe(libpath, path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["hash"] == data[-17:-1].decode() and out["source"] == str(path)
    for name, vals in entries.items():
        assert np.array_equal(np.float32(out[name]), vals.astype(np.float32)), name
    assert out["decoded"] == pytest.approx(float(np.float32(entries["ktq2"][0])))
    assert "9 of 9 tables from the file" in res.stderr


def test_partial_file_and_layer_entries(libpath, tmp_path, defaults):
    rng = np.random.default_rng(2)
    entries = custom_entries(rng, ("ktq2", "trellis3"))
    entries["ktq2@layer=0"] = np.sort(rng.standard_normal(4))
    entries["trellis3@layer=17"] = rng.standard_normal(512)
    path = tmp_path / "partial.tqcb"
    path.write_bytes(render(entries))
    res = run_probe(libpath, path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert np.array_equal(np.float32(out["ktq2"]), entries["ktq2"].astype(np.float32))
    assert np.array_equal(np.float32(out["trellis3"]), entries["trellis3"].astype(np.float32))
    for name in ("ktq3", "vtq2_1", "trellis2", "trellis4"):
        assert out[name] == defaults[name]
    assert "2 of 9 tables" in res.stderr and "2 per-layer entries skipped" in res.stderr


def test_decimal_comma_locale(libpath, tmp_path):
    import locale

    for name in ("de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8"):
        try:
            locale.setlocale(locale.LC_NUMERIC, name)
        except locale.Error:
            continue
        finally:
            locale.setlocale(locale.LC_NUMERIC, "C")
        break
    else:
        pytest.skip("no locale with a decimal comma installed")
    entries = custom_entries(np.random.default_rng(3), ("ktq4",))
    path = tmp_path / "loc.tqcb"
    path.write_bytes(render(entries))
    probe = f"import locale; locale.setlocale(locale.LC_NUMERIC, {name!r})\n" + PROBE
    env = {**os.environ, "LLAMA_TQ_CODEBOOK": str(path)}
    res = subprocess.run([sys.executable, "-c", probe, str(libpath)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert np.array_equal(np.float32(json.loads(res.stdout)["ktq4"]), entries["ktq4"].astype(np.float32))


def raw(*lines: str) -> bytes:
    return rehash(("\n".join(lines) + "\n").encode())


def _bad_files():
    rng = np.random.default_rng(4)
    good = custom_entries(rng, ("ktq2", "trellis2"))
    body = render(good)[:-25]
    desc = np.sort(rng.standard_normal(4))[::-1].copy()
    head = ("TQCB 1", "tool t 1")
    return {
        "hash mismatch": render(good)[:-17] + b"0123456789abcdef\n",
        "last line must be": body,
        "unsupported codebook format version 2": render(good, header="TQCB 2"),
        "missing 'TQCB <version>'": render(good, header="TQCX 1"),
        "must have 4 values": raw(*head, "entry ktq2 5", "-1 0 1 2 3"),
        "ends early": raw(*head, "entry ktq2 4", "-1 0 1"),
        "more than the declared": raw(*head, "entry ktq2 4", "-1 0 1 2 3"),
        "strictly ascending": render({"ktq2": desc}),
        "not a finite float32": raw(*head, "entry ktq2 4", "-1 0 1 1e39"),
        "'nan' is not a finite": raw(*head, "entry ktq2 4", "-1 0 1 nan"),
        "'0x1p1' is not a finite": raw(*head, "entry ktq2 4", "-1 0 1 0x1p1"),
        "bad entry name": raw(*head, "entry ktq5 4", "-1 0 1 2"),
        "bad entry metadata": raw(*head, "entry ktq2 4 =x", "-1 0 1 2"),
        "duplicate entry ktq2": raw(*head, "entry ktq2 4", "-1 0 1 2", "entry ktq2 4", "-1 0 1 2"),
        "duplicate entry ktq2@layer=3": raw(
            *head, "entry ktq2@layer=3 4", "-1 0 1 2", "entry ktq2@layer=3 4", "-1 0 1 2"
        ),
        "CR characters": render(good, newline="\r\n"),
        "missing 'tool": render(good, tool=False),
        "exactly one 'tool": raw(*head, "tool t 2"),
        "unknown line": render(good, extra=("bogus line",)),
        "longer than 1024": raw(*head, "#" + "x" * 1100),
        "empty file": b"",
    }


BAD = _bad_files()


@pytest.mark.parametrize("problem", list(BAD))
def test_bad_file_aborts_with_message(libpath, tmp_path, problem):
    path = tmp_path / "bad.tqcb"
    path.write_bytes(BAD[problem])
    res = run_probe(libpath, path)
    assert res.returncode == -signal.SIGABRT, (res.returncode, res.stdout, res.stderr)
    assert f"LLAMA_TQ_CODEBOOK={path}" in res.stderr and problem in res.stderr, res.stderr


def test_missing_file_aborts(libpath, tmp_path):
    res = run_probe(libpath, tmp_path / "nope.tqcb")
    assert res.returncode == -signal.SIGABRT and "cannot open" in res.stderr


def test_agrees_with_calibration_reader(libpath, tmp_path):
    """python/llama_tq/calibrate/codebook_file.py accepts exactly the files the C reader accepts, and
    a file its writer renders loads with the same float32 values."""
    try:
        from llama_tq.calibrate import codebook_file as CF
    except ImportError:
        pytest.skip("llama_tq.calibrate.codebook_file not importable")
    for problem, data in BAD.items():
        if problem == "empty file":
            continue
        with pytest.raises(CF.CodebookFormatError):
            CF.parse_codebook(data, "bad")
    cb = CF.Codebook()
    entries = custom_entries(np.random.default_rng(5))
    for name, vals in entries.items():
        cb.add(name, vals, {"origin": "test"})
    cb.add("ktq3@layer=4", np.sort(np.random.default_rng(6).standard_normal(8)))
    path = tmp_path / "cal.tqcb"
    digest = CF.write_codebook(path, cb)
    res = run_probe(libpath, path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["hash"] == digest
    for name in entries:
        assert np.array_equal(np.float32(out[name]), CF.read_codebook(path)[name]), name
