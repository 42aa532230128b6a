"""A real run: fine-tuning SmolLM2-135M on the first 80 % of the Brown corpus lowers its perplexity on the last 20 %.

Small slices keep it to a few minutes on 2 idle CPU cores: train on 12 KB from the start of the corpus, measure on
16 chunks of 256 tokens from the start of the last 20 %. The Q4_1 test model is converted to F32 first
(llama-finetune trains F32 weights only). The first 24 of 30 blocks are frozen with --train-skip-regex, so their
backward pass is pruned.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from .conftest import BROWN, require_tool
from .util import run_cli, state

pytestmark = pytest.mark.slow

CTX = 256
FROZEN = r"^blk\.([0-9]|1[0-9]|2[0-3])\."  # blocks 0-23: only the last 6 blocks and the output norm train


def perplexity(tool, model, text, threads=2) -> float:
    r = subprocess.run([str(tool), "-m", str(model), "-f", str(text), "-c", str(CTX), "-b", str(CTX),
                        "-t", str(threads), "--chunks", "16"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    assert m, (r.stdout + r.stderr)[-2000:]
    return float(m.group(1))


def test_smollm2_finetune_lowers_perplexity(finetune_bin, tmp_path, monkeypatch, capsys):
    if not BROWN.is_file():
        pytest.skip(f"{BROWN} is not there (set LLAMA_TQ_BROWN)")
    quantize = require_tool("llama-quantize")
    ppl_tool = require_tool("llama-perplexity")
    from llama_tq import testmodel

    try:
        q41 = testmodel.test_model_path(quiet=True)
    except Exception as e:  # offline without LLAMA_TQ_TEST_MODEL
        pytest.skip(f"test model unavailable: {e}")
    f32 = tmp_path / "smollm2-f32.gguf"
    r = subprocess.run([str(quantize), "--allow-requantize", str(q41), str(f32), "F32"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]

    data = BROWN.read_bytes()
    split = int(len(data) * 0.8)
    train = tmp_path / "train.txt"
    train.write_bytes(data[:12_000])
    held_out = tmp_path / "eval.txt"
    held_out.write_bytes(data[split:split + 16_000])

    before = perplexity(ppl_tool, f32, held_out)
    monkeypatch.setenv("LLAMA_TQ_FINETUNE_BIN", str(finetune_bin))
    out = tmp_path / "smollm2-ft.gguf"
    rc, stdout, err = run_cli(["-m", f32, "-f", train, "-o", out, "-c", str(CTX), "--epochs", "2",
                               "-lr", "1e-5", "--val-split", "0.1", "-t", "2", "--train-skip-regex", FROZEN], capsys)
    assert rc == 0, err + stdout[-3000:]
    after = perplexity(ppl_tool, out, held_out)
    hist = state(tmp_path / "smollm2-ft.gguf.ckpt")["history"]
    print(f"SmolLM2-135M held-out PPL {before:.3f} -> {after:.3f}; "
          f"train loss per epoch {[round(h['train_loss'], 4) for h in hist]}, "
          f"val loss {[h['val_loss'] for h in hist]}")
    assert after < before
