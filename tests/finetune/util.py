"""Helpers for the tq-finetune tests: run the CLI in-process, compare GGUF tensors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import gguf
import numpy as np

from llama_tq.finetune import cli


def run_cli(argv: list, capsys=None) -> tuple[int, str, str]:
    out = io.StringIO()
    rc = cli.run([str(a) for a in argv], out=out)
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, out.getvalue(), err


def tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    r = gguf.GGUFReader(str(path), "r")
    return {t.name: (t.tensor_type.name, np.array(t.data, copy=True)) for t in r.tensors}


def arch_of(path: Path) -> str:
    r = gguf.GGUFReader(str(path), "r")
    f = r.fields["general.architecture"]
    return bytes(f.parts[f.data[0]]).decode()


def state(ckpt: Path) -> dict:
    return json.loads((ckpt / "state.json").read_text())


def step_log(ckpt: Path) -> list[dict]:
    p = ckpt / "log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []
