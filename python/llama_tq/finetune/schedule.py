"""The learning-rate schedule of llama-finetune (common/common.cpp lr_opt), and cutting the text into chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LrSchedule:
    """lr0 for every epoch, or, with lr_min > 0, exponential decay from lr0 to lr_min over decay_epochs
    (default: all epochs), constant within an epoch - as llama-finetune's -lr/-lr-min/-decay-epochs do."""

    lr0: float
    lr_min: float = -1.0
    decay_epochs: float = -1.0
    epochs: int = 1

    def lr(self, epoch: int) -> float:
        if not (self.lr_min > 0 and self.lr_min < self.lr0):
            return self.lr0
        n_half = math.log(self.lr0 / self.lr_min) / math.log(2.0)
        e = float(self.epochs)
        decay = self.decay_epochs
        if decay > 0 and decay < e:
            e = decay
        else:
            decay = e
        if epoch >= decay:
            return self.lr_min
        return self.lr0 * 0.5 ** (epoch * n_half / e)


def split_text(text: str, n_chunks: int) -> list[str]:
    """Cut text into n_chunks pieces of about equal length, at line ends where there are enough lines."""
    if n_chunks <= 1:
        return [text]
    lines = text.splitlines(keepends=True)
    if len(lines) < n_chunks:
        size = math.ceil(len(text) / n_chunks)
        return [text[i:i + size] for i in range(0, len(text), size)]
    target = len(text) / n_chunks
    chunks: list[str] = []
    cur: list[str] = []
    cur_len = 0
    for i, line in enumerate(lines):
        cur.append(line)
        cur_len += len(line)
        lines_left = len(lines) - i - 1
        chunks_left = n_chunks - len(chunks) - 1
        if chunks_left > 0 and (cur_len >= target or lines_left == chunks_left):
            chunks.append("".join(cur))
            cur, cur_len = [], 0
    chunks.append("".join(cur))
    return chunks
