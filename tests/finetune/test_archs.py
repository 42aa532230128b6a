"""Fine-tune tiny random-weight hybrid MoE+SSM models on the CPU with tq-finetune.

For each architecture (upstream's test-llama-archs fixtures): a few epochs with block 0 frozen by
--train-skip-regex must give a finite, decreasing loss; the frozen tensors (and everything that is not a
weight llama-finetune trains) must come back bit-identical; trained weights must change - including the routed
experts and the router of the MoE models (MUL_MAT_ID and batched GET_ROWS backward passes).

Ops that still have no backward pass (SSM_SCAN, GATED_DELTA_NET) are stopped with
--stop-unsupported-grads, and every stop is logged; SIGMOID, MUL_MAT_ID, GET_ROWS and DIV never are.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from .conftest import periodic_text
from .util import arch_of, run_cli, state, step_log, tensors

ARCHS = ["granitehybrid", "jamba", "qwen35moe", "qwen3next", "mamba2"]
FROZEN = r"^blk\.0\."  # block 0: its backward subgraph is pruned
HAVE_BACKWARD = ("SIGMOID", "MUL_MAT_ID", "GET_ROWS", "DIV", "SOFTPLUS", "SILU", "SSM_CONV", "CONCAT")


def models_for(arch_models, arch):
    found = sorted(arch_models.glob(f"{arch}-*.gguf"))
    if not found:
        pytest.fail(f"test-llama-archs wrote no {arch} model into {arch_models}")
    return found


@pytest.mark.parametrize("arch", ARCHS)
def test_finetune_tiny_hybrid(arch, arch_models, finetune_bin, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMA_TQ_FINETUNE_BIN", str(finetune_bin))
    text = tmp_path / "train.txt"
    text.write_text(periodic_text(6000))
    for model in models_for(arch_models, arch):
        assert arch_of(model) == arch
        out = tmp_path / f"{model.stem}-ft.gguf"
        rc, stdout, err = run_cli(["-m", model, "-f", text, "-o", out, "-c", "256", "--epochs", "3",
                                   "-lr", "1e-3", "--val-split", "0", "-t", "1",
                                   "--train-skip-regex", FROZEN, "--stop-unsupported-grads"], capsys)
        assert rc == 0, f"{model.name}: {err}\n{stdout[-3000:]}"
        st = state(tmp_path / f"{model.stem}-ft.gguf.ckpt")
        losses = [h["train_loss"] for h in st["history"]]
        print(f"{model.name}: train loss per epoch {[round(x, 4) for x in losses]}, "
              f"{sum(h['tokens'] for h in st['history']) / sum(h['seconds'] for h in st['history']):.0f} tok/s")
        assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses
        assert losses[-1] < losses[0], f"{model.name}: loss did not decrease: {losses}"
        steps = [r for r in step_log(tmp_path / f"{model.stem}-ft.gguf.ckpt") if r["phase"] == "train"]
        assert steps and all(math.isfinite(r["loss"]) for r in steps)

        # what was stopped is logged, and never an op that has a backward pass now
        log = (tmp_path / f"{model.stem}-ft.gguf.ckpt" / "finetune.log").read_text()
        stopped = set(re.findall(r"stop-gradient at node '[^']*' \(([A-Z_0-9]+),", log))
        assert not stopped & set(HAVE_BACKWARD), stopped
        assert "trainable:" in log and "--train-skip-regex" in log

        before, after = tensors(model), tensors(out)
        assert before.keys() == after.keys()
        changed = set()
        for name, (typ, a) in before.items():
            typ2, b = after[name]
            assert typ == typ2, name
            if a.tobytes() != b.tobytes():
                changed.add(name)
        for name in before:
            if re.search(FROZEN, name) or before[name][0] != "F32" or name == "token_embd.weight":
                assert name not in changed, f"{model.name}: frozen tensor {name} changed"
        assert changed, f"{model.name}: no weight changed"
        assert all(np.isfinite(after[n][1]).all() for n in changed)
        if "moe" in model.name or arch in ("qwen35moe", "qwen3next"):
            exps = {n for n in changed if re.search(r"ffn_(gate|up|down)(_up)?_exps", n)}
            router = {n for n in changed if "ffn_gate_inp." in n}
            if any(re.search(r"ffn_.*_exps", n) for n in before):
                assert exps, f"{model.name}: no routed expert was trained: {sorted(changed)}"
            if any("ffn_gate_inp." in n for n in before):
                assert router, f"{model.name}: the router was not trained: {sorted(changed)}"
