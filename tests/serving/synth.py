"""Tiny random-weight GGUF models of other shapes, written with gguf-py, to check tq-fit against llama.cpp.

Shapes are given in ggml order (ne0 first), as in llama.cpp's ``create_tensor`` calls (src/models/*.cpp).
The tokenizer is llama.cpp's dummy ``test`` tokenizer (the one upstream's test-llama-archs writes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

N_VOCAB = 128


def write_gguf(path: Path, arch: str, kv: dict[str, Any], tensors: dict[str, tuple[int, ...]], seed: int = 0) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tq-fit test {arch}")
    for key, value in kv.items():
        full = key.replace("{arch}", arch)
        if isinstance(value, bool):
            w.add_bool(full, value)
        elif isinstance(value, int):
            w.add_uint32(full, value)
        elif isinstance(value, float):
            w.add_float32(full, value)
        elif isinstance(value, list):
            w.add_array(full, value)
        else:
            w.add_string(full, str(value))
    w.add_tokenizer_model("test")
    w.add_token_list([f"tok_{i}" for i in range(N_VOCAB)])
    w.add_token_scores([0.0] * N_VOCAB)
    for name, shape in tensors.items():
        np_shape = tuple(reversed(shape))
        if len(shape) == 1:
            data = np.ones(np_shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(np_shape) * 0.02).astype(np.float32)  # f32: ssm_conv needs it
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _common(n_embd: int, n_layer: int, n_ctx: int = 4096) -> dict[str, Any]:
    return {
        "{arch}.context_length": n_ctx,
        "{arch}.embedding_length": n_embd,
        "{arch}.block_count": n_layer,
        "{arch}.vocab_size": N_VOCAB,
        "{arch}.attention.layer_norm_rms_epsilon": 1e-6,
    }


def _attention_kv(n_ff: int, n_head: int, n_head_kv: int, hd: int) -> dict[str, int]:
    return {
        "{arch}.feed_forward_length": n_ff,
        "{arch}.attention.head_count": n_head,
        "{arch}.attention.head_count_kv": n_head_kv,
        "{arch}.attention.key_length": hd,
        "{arch}.attention.value_length": hd,
    }


def _attention_ffn_block(i: int, n_embd: int, n_head: int, n_head_kv: int, hd: int,
                         n_ff: int) -> dict[str, tuple[int, ...]]:
    """Shapes of one transformer block: attention (GQA, head dim hd) and a gated FFN."""
    return {
        f"blk.{i}.attn_norm.weight": (n_embd,),
        f"blk.{i}.attn_q.weight": (n_embd, hd * n_head),
        f"blk.{i}.attn_k.weight": (n_embd, hd * n_head_kv),
        f"blk.{i}.attn_v.weight": (n_embd, hd * n_head_kv),
        f"blk.{i}.attn_output.weight": (hd * n_head, n_embd),
        f"blk.{i}.ffn_norm.weight": (n_embd,),
        f"blk.{i}.ffn_gate.weight": (n_embd, n_ff),
        f"blk.{i}.ffn_up.weight": (n_embd, n_ff),
        f"blk.{i}.ffn_down.weight": (n_ff, n_embd),
    }


def llama_gqa128(path: Path) -> Path:
    """llama, head dim 128 (not n_embd / n_head), 4 query / 2 KV heads, 3 layers."""
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = 256, 4, 2, 128, 512, 3
    kv = _common(n_embd, n_layer) | _attention_kv(n_ff, n_head, n_head_kv, hd) | {"{arch}.rope.dimension_count": hd}
    t: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_embd, N_VOCAB), "output_norm.weight": (n_embd,),
                                     "output.weight": (n_embd, N_VOCAB)}
    for i in range(n_layer):
        t |= _attention_ffn_block(i, n_embd, n_head, n_head_kv, hd, n_ff)
    return write_gguf(path, "llama", kv, t)


def gemma2_swa(path: Path, n_swa: int = 256) -> Path:
    """gemma2: interleaved sliding-window attention (pattern 2: even layers SWA), head dim 128, GQA 4/2."""
    n_embd, n_head, n_head_kv, hd, n_ff, n_layer = 256, 4, 2, 128, 512, 4
    kv = _common(n_embd, n_layer, 8192) | _attention_kv(n_ff, n_head, n_head_kv, hd) | {
        "{arch}.attention.sliding_window": n_swa,
    }
    t: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_embd, N_VOCAB), "output_norm.weight": (n_embd,)}
    for i in range(n_layer):
        t |= _attention_ffn_block(i, n_embd, n_head, n_head_kv, hd, n_ff) | {
            f"blk.{i}.post_attention_norm.weight": (n_embd,),
            f"blk.{i}.post_ffw_norm.weight": (n_embd,),
        }
    return write_gguf(path, "gemma2", kv, t)


def lfm2_hybrid(path: Path, n_swa: int = 0) -> Path:
    """lfm2: a hybrid of short-convolution (recurrent) layers and attention layers; attention layers are
    those with head_count_kv > 0. With n_swa > 0 the attention layers are sliding-window (hybrid-iswa)."""
    n_embd, n_head, n_ff, l_cache = 256, 4, 512, 3
    kv_heads = [0, 2, 0, 0, 2, 0]
    n_layer = len(kv_heads)
    hd = n_embd // n_head
    kv = _common(n_embd, n_layer) | {
        "{arch}.feed_forward_length": n_ff,
        "{arch}.attention.head_count": n_head,
        "{arch}.attention.head_count_kv": kv_heads,
        "{arch}.shortconv.l_cache": l_cache,
    }
    if n_swa:
        kv["{arch}.attention.sliding_window"] = n_swa
    t: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_embd, N_VOCAB), "token_embd_norm.weight": (n_embd,)}
    for i, h in enumerate(kv_heads):
        t |= {
            f"blk.{i}.ffn_norm.weight": (n_embd,),
            f"blk.{i}.ffn_gate.weight": (n_embd, n_ff),
            f"blk.{i}.ffn_up.weight": (n_embd, n_ff),
            f"blk.{i}.ffn_down.weight": (n_ff, n_embd),
            f"blk.{i}.attn_norm.weight": (n_embd,),
        }
        if h:
            t |= {
                f"blk.{i}.attn_q_norm.weight": (hd,),
                f"blk.{i}.attn_k_norm.weight": (hd,),
                f"blk.{i}.attn_q.weight": (n_embd, n_embd),
                f"blk.{i}.attn_k.weight": (n_embd, hd * h),
                f"blk.{i}.attn_v.weight": (n_embd, hd * h),
                f"blk.{i}.attn_output.weight": (n_embd, n_embd),
            }
        else:
            t |= {
                f"blk.{i}.shortconv.conv.weight": (l_cache, n_embd),
                f"blk.{i}.shortconv.in_proj.weight": (n_embd, 3 * n_embd),
                f"blk.{i}.shortconv.out_proj.weight": (n_embd, n_embd),
            }
    return write_gguf(path, "lfm2", kv, t)
