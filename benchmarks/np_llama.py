"""A numpy forward pass of a llama-architecture GGUF, with a hook on every layer's keys.

For offline experiments with K formats that the runtime does not have yet: the hook receives each layer's queries
and keys [n, heads, head size] as attention would read them (after RoPE, in the model's own basis) and returns the
keys attention should read, so a candidate quantizer written in numpy can be scored by the KL divergence of the
model's next-token distributions, errors carried through all later layers as in llama-perplexity. Only what
SmolLM2-class models use: RMS norm, normal (non-neox) RoPE without scaling, grouped-query attention, SwiGLU, tied or
separate output matrix; the weights are dequantized by gguf-py, activations stay float32 (llama.cpp rounds them for
quantized matrices, so against a quantized model the two agree less closely than against F16 weights).
`check_against_runtime` compares the logits with llama.cpp's (F16 cache) so that a wrong forward pass is caught.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from llama_tq.calibrate.k_means import RopeParams, rope

F32 = NDArray[np.float32]
KeyHook = Callable[[int, NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]]
ValueHook = Callable[[int, NDArray[np.float64]], NDArray[np.float64]]


@dataclass
class Llama:
    n_head: int
    n_head_kv: int
    eps: float
    rope: RopeParams
    tensors: dict[str, F32]

    @classmethod
    def load(cls, path: Path) -> Llama:
        import gguf

        r = gguf.GGUFReader(str(path))
        meta = {f.name: f.parts[-1][0] for f in r.fields.values() if len(f.parts[-1]) == 1}
        arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r}, this forward pass knows llama only")
        from gguf.quants import dequantize

        tensors = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32) for t in r.tensors}
        n_head = int(meta["llama.attention.head_count"])
        n_embd = int(meta["llama.embedding_length"])
        n_rot = int(meta.get("llama.rope.dimension_count", n_embd // n_head))
        return cls(n_head=n_head, n_head_kv=int(meta["llama.attention.head_count_kv"]),
                   eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
                   rope=RopeParams(n_rot=n_rot, neox=False, freq_base=float(meta.get("llama.rope.freq_base", 1e4)),
                                   freq_scale=1.0),
                   tensors=tensors)

    @property
    def n_layer(self) -> int:
        return sum(1 for k in self.tensors if k.endswith(".attn_q.weight"))

    def _norm(self, x: F32, w: F32) -> F32:
        return (x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + self.eps) * w).astype(np.float32)

    def logits(self, tokens: list[int], key_hook: KeyHook | None = None, first: int = 0, offset: int = 0,
               value_hook: ValueHook | None = None) -> F32:
        """Logits [n - first, n_vocab] of positions first..n-1 for tokens at positions offset..offset+n-1 (one
        sequence; RoPE is relative, so the offset changes only what a position-bound key hook sees). value_hook
        (layer, v [n, heads, head size]) returns the values attention should read."""
        t = self.tensors
        x = t["token_embd.weight"][tokens]
        n = len(tokens)
        pos = np.arange(offset, offset + n, dtype=np.float64)
        mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1)
        for il in range(self.n_layer):
            p = f"blk.{il}."
            h = self._norm(x, t[p + "attn_norm.weight"])
            q = (h @ t[p + "attn_q.weight"].T).reshape(n, self.n_head, -1)
            k = (h @ t[p + "attn_k.weight"].T).reshape(n, self.n_head_kv, -1)
            v = (h @ t[p + "attn_v.weight"].T).reshape(n, self.n_head_kv, -1)
            d = q.shape[2]
            q64, k64 = rope(q, pos, self.rope), rope(k, pos, self.rope)
            k = (key_hook(il, q64, k64) if key_hook else k64).astype(np.float32)
            q = q64.astype(np.float32)
            if value_hook:
                v = value_hook(il, v.astype(np.float64)).astype(np.float32)
            group = self.n_head // self.n_head_kv
            kh = np.repeat(k.transpose(1, 0, 2), group, axis=0)
            vh = np.repeat(v.transpose(1, 0, 2), group, axis=0)
            s = q.transpose(1, 0, 2) @ kh.transpose(0, 2, 1) / np.float32(np.sqrt(d)) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            o = (s / s.sum(axis=-1, keepdims=True)) @ vh  # [H, n, d]
            x = x + o.transpose(1, 0, 2).reshape(n, -1) @ t[p + "attn_output.weight"].T
            h = self._norm(x, t[p + "ffn_norm.weight"])
            g = h @ t[p + "ffn_gate.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * (h @ t[p + "ffn_up.weight"].T)) @ t[p + "ffn_down.weight"].T
        out = t.get("output.weight", t["token_embd.weight"])
        return self._norm(x[first:], t["output_norm.weight"]) @ out.T


def log_softmax(z: NDArray[np.floating]) -> NDArray[np.float64]:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kld_rows(ref_logits: NDArray[np.floating], logits: NDArray[np.floating]) -> NDArray[np.float64]:
    """KL(ref || other) per row, as llama-perplexity's --kl-divergence computes it."""
    lp, lq = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def check_against_runtime(model: Llama, runtime_logits: NDArray[np.floating], tokens: list[int],
                          max_kld: float = 1e-3) -> float:
    """Mean KL between llama.cpp's logits (F16 cache) and this forward pass's; raises past max_kld."""
    kl = float(kld_rows(runtime_logits, model.logits(tokens)).mean())
    if not kl <= max_kld:
        raise RuntimeError(f"the numpy forward pass disagrees with llama.cpp: mean KL {kl:.3g} > {max_kld}")
    return kl
