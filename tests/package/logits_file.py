"""Reader for the logits file llama-perplexity writes with --kl-divergence-base.

Layout (tools/perplexity/perplexity.cpp): b"_logits_", int32 n_ctx, int32 n_vocab, int32 n_chunk,
int32 tokens[n_chunk * n_ctx], then for each chunk and each of the n_ctx - 1 - n_ctx//2 scored positions a
record of nv = 2*((n_vocab + 1)//2) + 4 uint16: float32 scale, float32 min_log_prob, then n_vocab uint16 q
with log_prob = min_log_prob + scale * q (q = 0 means "at or below min_log_prob").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class LogitsFile:
    n_ctx: int
    n_vocab: int
    tokens: np.ndarray       # [n_chunk, n_ctx] int32
    scale: np.ndarray        # [n_chunk, n_scored] float32
    min_log_prob: np.ndarray  # [n_chunk, n_scored] float32
    q: np.ndarray            # [n_chunk, n_scored, n_vocab] uint16

    @property
    def first(self) -> int:
        return self.n_ctx // 2

    def log_probs(self, chunk: int) -> np.ndarray:
        """Decoded log-probabilities [n_scored, n_vocab] (float64)."""
        return self.min_log_prob[chunk, :, None] + self.scale[chunk, :, None] * self.q[chunk].astype(np.float64)


def read_logits_file(path: str | Path) -> LogitsFile:
    data = Path(path).read_bytes()
    if data[:8] != b"_logits_":
        raise ValueError(f"{path}: not a llama-perplexity logits file")
    n_ctx, n_vocab, n_chunk = np.frombuffer(data, dtype=np.int32, count=3, offset=8)
    off = 8 + 12
    tokens = np.frombuffer(data, dtype=np.int32, count=n_chunk * n_ctx, offset=off).reshape(n_chunk, n_ctx)
    off += tokens.nbytes
    nv = 2 * ((n_vocab + 1) // 2) + 4
    n_scored = n_ctx - 1 - n_ctx // 2
    rec = np.frombuffer(data, dtype=np.uint16, count=n_chunk * n_scored * nv, offset=off)
    rec = rec.reshape(n_chunk, n_scored, nv)
    head = rec[:, :, :4].copy().view(np.float32)  # [n_chunk, n_scored, 2]
    return LogitsFile(int(n_ctx), int(n_vocab), tokens, head[..., 0], head[..., 1], rec[:, :, 4:4 + n_vocab])
