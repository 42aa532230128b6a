"""Tiny random-weight llama GGUFs of any shape, written with gguf-py, for tests that need odd head sizes.

The tokenizer is copied from the test model (SmolLM2), so the files load and tokenize like a real model.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def _strings(field: gguf.ReaderField) -> list[str]:
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def write_tiny_llama(path: Path, vocab_from: str, *, head_dim: int, n_head: int = 2, n_head_kv: int = 1,
                     n_layer: int = 2, n_ff: int = 128, seed: int = 0) -> Path:
    """A llama-architecture GGUF with n_embd = n_head * head_dim and random F16 weights."""
    src = gguf.GGUFReader(vocab_from)
    tokens = _strings(src.fields["tokenizer.ggml.tokens"])
    token_types = [int(src.fields["tokenizer.ggml.token_type"].parts[i][0])
                   for i in src.fields["tokenizer.ggml.token_type"].data]
    merges = _strings(src.fields["tokenizer.ggml.merges"])

    n_embd = n_head * head_dim
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"tiny-llama-hd{head_dim}")
    w.add_block_count(n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    w.add_tensor("token_embd.weight", weight(len(tokens), n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", weight(n_head * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", weight(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", weight(n_head_kv * head_dim, n_embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", weight(n_embd, n_head * head_dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weight(n_embd, n_ff))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
