"""Write a random-weight llama GGUF (F16) of a chosen shape, for speed runs: speed does not depend on weight values.

The tokenizer comes from a vocab-only GGUF (upstream ships them in llama.cpp's models/). Needs gguf-py and numpy
only, so it runs on a GPU machine with just the llama.cpp tree (PYTHONPATH=<tree>/gguf-py).

    python benchmarks/rand_llama.py --vocab models/ggml-vocab-llama-spm.gguf --out rand.gguf \\
        --layers 16 --embd 2048 --heads 32 --kv-heads 8 --head-dim 64
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import gguf
import numpy as np


def copy_tokenizer(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> int:
    """Copy the tokenizer.* keys; returns the vocabulary size."""
    n_vocab = 0
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            value = field.contents()
            writer.add_key_value(field.name, value, kind, sub_type=field.types[1])
            if field.name == "tokenizer.ggml.tokens":
                n_vocab = len(value)
        else:
            writer.add_key_value(field.name, field.contents(), kind)
    if n_vocab == 0:
        raise SystemExit("the vocab GGUF has no tokenizer.ggml.tokens")
    return n_vocab


def write_random_llama(vocab: Path, out: Path, layers: int, embd: int, heads: int, kv_heads: int, head_dim: int,
                       ff: int, ctx: int, seed: int = 0) -> None:
    if heads % kv_heads:
        raise SystemExit(f"--heads {heads} is not a multiple of --kv-heads {kv_heads}")
    reader = gguf.GGUFReader(vocab)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_context_length(ctx)
    writer.add_embedding_length(embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    n_vocab = copy_tokenizer(reader, writer)
    rng = np.random.default_rng(seed)

    def rand(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16))

    rand("token_embd.weight", n_vocab, embd)
    writer.add_tensor("output_norm.weight", np.ones(embd, dtype=np.float32))
    rand("output.weight", n_vocab, embd)
    for i in range(layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", np.ones(embd, dtype=np.float32))
        writer.add_tensor(p + "ffn_norm.weight", np.ones(embd, dtype=np.float32))
        rand(p + "attn_q.weight", heads * head_dim, embd)
        rand(p + "attn_k.weight", kv_heads * head_dim, embd)
        rand(p + "attn_v.weight", kv_heads * head_dim, embd)
        rand(p + "attn_output.weight", embd, heads * head_dim)
        rand(p + "ffn_gate.weight", ff, embd)
        rand(p + "ffn_up.weight", ff, embd)
        rand(p + "ffn_down.weight", embd, ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=Path, required=True, help="vocab-only GGUF for the tokenizer")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--embd", type=int, default=2048)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--ff", type=int, default=5632)
    p.add_argument("--ctx", type=int, default=262144)
    a = p.parse_args()
    write_random_llama(a.vocab, a.out, a.layers, a.embd, a.heads, a.kv_heads, a.head_dim, a.ff, a.ctx)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
