"""Checkpoints of a tq-finetune run: a directory with the latest model and a state file, both written atomically.

llama-finetune (ggml-opt) cannot save or restore its optimizer state, so a run is cut into units (one epoch
over one chunk of the text) and each unit is a separate llama-finetune invocation that starts from the model
the previous unit wrote. After each unit:

1. llama-finetune has written ``model-NNNN.gguf.partial``; it is fsynced and renamed to ``model-NNNN.gguf``;
2. ``state.json`` is rewritten atomically (temporary file, fsync, rename) to point at it;
3. the previous unit's model is deleted.

A crash at any point leaves ``state.json`` pointing at a complete model, so an interrupted run loses at most
the unit in progress; leftovers (``*.partial``, a model newer than the state) are removed on resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text, fsync_dir
from .errors import FinetuneError

STATE_FORMAT = "tq-finetune-checkpoint/1"
STATE_FILE = "state.json"


def fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


@dataclass
class RunState:
    """What has been done: `done` units out of `total`, the model after the last one, a per-unit history."""

    fingerprint: dict[str, Any]
    total: int
    done: int = 0
    model: str | None = None  # file name inside the checkpoint directory; None: still the input model
    finished: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({
            "format": STATE_FORMAT,
            "fingerprint": self.fingerprint,
            "total": self.total,
            "done": self.done,
            "model": self.model,
            "finished": self.finished,
            "history": self.history,
        }, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> RunState:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise FinetuneError(f"checkpoint state {where} is not valid JSON: {e}") from None
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise FinetuneError(f"{where} is not a tq-finetune checkpoint state ({STATE_FORMAT})")
        return cls(d["fingerprint"], int(d["total"]), int(d["done"]), d.get("model"), bool(d.get("finished")),
                   list(d.get("history", [])))


class CheckpointDir:
    def __init__(self, path: Path):
        self.path = path
        self.state_path = path / STATE_FILE

    def exists(self) -> bool:
        return self.state_path.is_file()

    def load(self) -> RunState:
        try:
            text = self.state_path.read_text(encoding="utf-8")
        except OSError as e:
            raise FinetuneError(f"cannot read {self.state_path}: {e.strerror}") from None
        state = RunState.from_json(text, self.state_path)
        if state.model is not None and not state.finished:
            model = self.path / state.model
            if not is_gguf(model):
                raise FinetuneError(f"checkpoint {self.state_path} points at {model}, which is missing or damaged")
        return state

    def save(self, state: RunState) -> None:
        atomic_write_text(self.state_path, state.to_json())

    def model_name(self, unit: int) -> str:
        return f"model-{unit:04d}.gguf"

    def partial_path(self, unit: int) -> Path:
        return self.path / (self.model_name(unit) + ".partial")

    def commit_model(self, unit: int) -> str:
        """Make the model written for `unit` durable under its final name; returns that name."""
        partial = self.partial_path(unit)
        if not is_gguf(partial):
            raise FinetuneError(f"llama-finetune exited without writing a GGUF to {partial}")
        fsync_file(partial)
        name = self.model_name(unit)
        os.replace(partial, self.path / name)
        fsync_dir(self.path)
        return name

    def clean(self, keep: set[str]) -> None:
        """Remove models and partial files that the state does not point at."""
        for p in self.path.glob("model-*.gguf*"):
            if p.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
