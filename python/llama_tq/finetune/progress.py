"""Parse llama-finetune's output: its progress bar (ggml_opt_epoch_callback_progress_bar) and log lines.

The progress bar is rewritten in place with '\\r'; each update looks like

    train: [███▍    ] data=0000012/0000040 loss=3.12345±0.04321 acc=31.20±1.10% t=00:00:05 ETA=00:00:12

where data=i/n counts optimizer steps (one ubatch each) and loss is the running mean over the epoch so far.
The loss of step i alone is i*mean_i - (i-1)*mean_(i-1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+|nan|inf|-nan|-inf)"
PROGRESS_RE = re.compile(
    r"(?P<phase>train|val):\s*\[[^\]]*\]\s*data=(?P<i>\d+)/(?P<n>\d+)\s+"
    rf"loss=(?P<loss>{_NUM})±(?P<loss_unc>{_NUM})\s+acc=(?P<acc>{_NUM})±(?P<acc_unc>{_NUM})%\s+"
    r"t=(?P<th>\d+):(?P<tm>\d+):(?P<ts>\d+)\s+ETA=(?P<eh>\d+):(?P<em>\d+):(?P<es>\d+)",
    re.IGNORECASE,
)


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.nan


@dataclass(frozen=True)
class Progress:
    phase: str  # "train" or "val"
    step: int  # 1-based
    n_steps: int
    mean_loss: float
    accuracy: float  # percent
    elapsed_s: int
    eta_s: int


def parse_progress(line: str) -> Progress | None:
    m = PROGRESS_RE.search(line)
    if not m:
        return None
    g = m.groupdict()
    return Progress(
        phase=g["phase"].lower(),
        step=int(g["i"]),
        n_steps=int(g["n"]),
        mean_loss=_float(g["loss"]),
        accuracy=_float(g["acc"]),
        elapsed_s=int(g["th"]) * 3600 + int(g["tm"]) * 60 + int(g["ts"]),
        eta_s=int(g["eh"]) * 3600 + int(g["em"]) * 60 + int(g["es"]),
    )


class StepLosses:
    """Turns the running means of one phase into per-step losses."""

    def __init__(self) -> None:
        self.last_step = 0
        self.last_mean = 0.0

    def update(self, p: Progress) -> float | None:
        """The loss of step p.step alone, or None if p is not the next step (a repeated update)."""
        if p.step <= self.last_step:
            return None
        if p.step != self.last_step + 1:  # a skipped update: spread the gap evenly
            loss = (p.step * p.mean_loss - self.last_step * self.last_mean) / (p.step - self.last_step)
        else:
            loss = p.step * p.mean_loss - self.last_step * self.last_mean
        self.last_step, self.last_mean = p.step, p.mean_loss
        return loss


def split_stream(buffer: str) -> tuple[list[str], str]:
    """Split on '\\r' and '\\n'; returns complete pieces and the unfinished tail."""
    pieces = re.split(r"[\r\n]", buffer)
    return [p for p in pieces[:-1] if p.strip()], pieces[-1]


# log lines worth showing even without --verbose
_IMPORTANT = re.compile(
    r"error|failed|abort|GGML_ASSERT|GGML_BACKWARD_STOP_UNSUPPORTED|stop-gradient|trainable|train-skip-regex|"
    r"LLAMA_SAVER_ALLOW_UNTESTED|not been validated|n_ubatch .* != n_ctx",
    re.IGNORECASE,
)


_ERROR = re.compile(r"error|failed|abort|GGML_ASSERT|refusing", re.IGNORECASE)


def is_important(line: str) -> bool:
    return bool(_IMPORTANT.search(line))


def is_error(line: str) -> bool:
    return bool(_ERROR.search(line))


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--:--"
    s = int(round(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
