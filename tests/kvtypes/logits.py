"""What the KV-cache tests compare logits with."""

from __future__ import annotations

import numpy as np


def kld(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(P || Q) over positions, from logits (float64)."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))
