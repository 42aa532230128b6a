"""tq-finetune refuses bad input with one clear line and exit status 2, before running anything.

These tests need no llama.cpp program: validation happens before the binary is even looked up.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from llama_tq.finetune import cli
from llama_tq.finetune.checkpoint import CheckpointDir, RunState
from llama_tq.finetune.model_info import compile_skip_regex, plan_training, read_model_info
from llama_tq.finetune.progress import StepLosses, parse_progress, split_stream
from llama_tq.finetune.schedule import LrSchedule, split_text


def write_model(path: Path, arch: str = "llama", dtype=np.float32) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    rng = np.random.default_rng(0)
    for name, shape in [("token_embd.weight", (16, 8)), ("output_norm.weight", (8,)),
                        ("blk.0.attn_norm.weight", (8,)), ("blk.0.attn_q.weight", (8, 8)),
                        ("blk.0.ffn_up.weight", (32, 8)), ("blk.0.ffn_down.weight", (8, 32))]:
        t = rng.standard_normal(shape).astype(np.float32 if len(shape) == 1 else dtype)
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def files(tmp_path):
    model = write_model(tmp_path / "m.gguf")
    text = tmp_path / "t.txt"
    text.write_text("Some text to train on.\n" * 50)
    return model, text, tmp_path / "out.gguf"


def run(argv, capsys):
    out = io.StringIO()
    rc = cli.run([str(a) for a in argv], out=out)
    err = capsys.readouterr().err
    return rc, out.getvalue(), err


def test_dry_run_reports_the_plan(files, capsys, monkeypatch, tmp_path):
    model, text, out = files
    # any executable that prints --train-skip-regex in --help stands in for a patched llama-finetune
    fake = tmp_path / "fake-finetune"
    fake.write_text("#!/bin/sh\necho '--train-skip-regex REGEX'\n")
    fake.chmod(0o755)
    monkeypatch.setenv(cli.ENV_BIN, str(fake))
    rc, stdout, err = run(["-m", model, "-f", text, "-o", out, "--train-skip-regex", r"ffn_", "--dry-run"], capsys)
    assert rc == 0, err
    assert "arch llama" in stdout
    # attn_norm, attn_q, output_norm trainable; ffn_up/ffn_down frozen; token_embd never trained
    assert "3 trainable tensors" in stdout and "2 frozen by --train-skip-regex" in stdout
    assert not out.exists()


def test_stock_finetune_is_refused(files, capsys, monkeypatch, tmp_path):
    model, text, out = files
    fake = tmp_path / "stock-finetune"
    fake.write_text("#!/bin/sh\necho 'usage: llama-finetune'\n")
    fake.chmod(0o755)
    monkeypatch.setenv(cli.ENV_BIN, str(fake))
    rc, _, err = run(["-m", model, "-f", text, "-o", out, "--dry-run"], capsys)
    assert rc == 2 and "lacks llama-tq's training patches" in err


@pytest.mark.parametrize("regex, message", [
    ("blk.(", "does not compile"),
    ("no_such_tensor", "matches none of the 5 trainable tensors"),
    ("token_embd", "matches none"),  # token_embd is never trained: freezing it freezes nothing
    (".", "freezes all 5 trainable tensors"),
    ("weight", "freezes all"),
])
def test_bad_regex(files, capsys, regex, message):
    model, text, out = files
    rc, stdout, err = run(["-m", model, "-f", text, "-o", out, "--train-skip-regex", regex], capsys)
    assert rc == 2
    assert err.startswith("tq-finetune: error:") and message in err, err
    assert err.count("\n") == 1  # one line, no traceback


def test_bad_inputs(files, capsys, tmp_path):
    model, text, out = files
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    notgguf = tmp_path / "x.gguf"
    notgguf.write_text("hello")
    f16 = write_model(tmp_path / "f16.gguf", dtype=np.float16)
    # a model with only F16 weights (no 1-D tensors): nothing llama-finetune can train
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    t5 = write_model(tmp_path / "t5.gguf", arch="t5")
    cases = [
        (["-m", tmp_path / "missing.gguf", "-f", text, "-o", out], "does not exist"),
        (["-m", notgguf, "-f", text, "-o", out], "not a GGUF file"),
        (["-m", tmp_path / "q.gguf", "-f", text, "-o", out], "no trainable weights"),
        (["-m", model, "-f", tmp_path / "missing.txt", "-o", out], "does not exist"),
        (["-m", model, "-f", empty, "-o", out], "is empty"),
        (["-m", model, "-f", text, "-o", tmp_path / "no" / "such" / "dir" / "o.gguf"], "does not exist"),
        (["-m", model, "-f", text, "-o", tmp_path], "is a directory"),
        (["-m", model, "-f", text, "-o", model], "is the input model"),
        (["-m", t5, "-f", text, "-o", out], "not been validated for architecture 't5'"),
        (["-m", model, "-f", text, "-o", out, "-c", "256", "-b", "100"], "multiple of -b"),
        (["-m", model, "-f", text, "-o", out, "-c", "64"], "multiple of 256"),
        (["-m", model, "-f", text, "-o", out, "--val-split", "1.5"], "--val-split"),
        (["-m", model, "-f", text, "-o", out, "--epochs", "0"], "--epochs"),
        (["-m", model, "-f", text, "-o", out, "--resume"], "nothing to resume"),
    ]
    for argv, message in cases:
        rc, _, err = run(argv, capsys)
        assert rc == 2, (argv, err)
        assert message in err, (argv, err)
    assert not out.exists()
    assert f16.exists()  # F16 matrices + F32 norms: still trainable (norms), so not refused above


def test_existing_checkpoint_needs_resume_or_overwrite(files, capsys):
    model, text, out = files
    ckpt = CheckpointDir(Path(str(out) + ".ckpt"))
    ckpt.path.mkdir()
    ckpt.save(RunState({"x": 1}, 2))
    rc, _, err = run(["-m", model, "-f", text, "-o", out], capsys)
    assert rc == 2 and "--resume" in err
    rc, _, err = run(["-m", model, "-f", text, "-o", out, "--resume"], capsys)
    assert rc == 2 and "different" in err


def test_plan_and_regex_units(files):
    model, _, _ = files
    info = read_model_info(model)
    assert info.arch == "llama" and len(info.tensors) == 6
    plan = plan_training(info, compile_skip_regex(r"blk\.0\.ffn_(up|down)"))
    assert {t.name for t in plan.frozen} == {"blk.0.ffn_up.weight", "blk.0.ffn_down.weight"}
    assert "token_embd.weight" not in {t.name for t in plan.trainable}


def test_progress_parsing_and_step_losses():
    lines = ("train: [▏       ] data=0000001/0000004 loss=4.00000±nan acc=1.00±nan% t=00:00:01 ETA=00:00:03 \r"
             "train: [██      ] data=0000002/0000004 loss=3.50000±0.50000 acc=2.00±1.00% t=00:00:02 ETA=00:00:02 \r"
             "train: [████    ] data=0000002/0000004 loss=3.50000±0.50000 acc=2.00±1.00% t=00:00:02 ETA=00:00:02 \r"
             "train: [████████] data=0000004/0000004 loss=3.00000±0.40000 acc=3.00±1.00% t=00:00:04 ETA=00:00:00 \n"
             "llama_model_load: something\npartial")
    pieces, tail = split_stream(lines)
    assert tail == "partial"
    sl = StepLosses()
    got = [sl.update(p) for p in map(parse_progress, pieces) if p is not None]
    assert got[0] == pytest.approx(4.0) and got[1] == pytest.approx(3.0) and got[2] is None
    assert got[3] == pytest.approx((4 * 3.0 - 2 * 3.5) / 2)  # steps 3 and 4, spread evenly
    assert parse_progress("llama_model_load: something") is None


def test_lr_schedule_matches_llama_finetune():
    s = LrSchedule(1e-3, 1e-4, -1, 4)
    assert s.lr(0) == pytest.approx(1e-3) and s.lr(4) == pytest.approx(1e-4)
    assert s.lr(2) == pytest.approx(1e-3 * 0.5 ** (2 * np.log2(10) / 4))
    assert LrSchedule(1e-3).lr(7) == 1e-3


def test_split_text_is_lossless():
    text = "".join(f"line {i} " + "x" * (i % 7) + "\n" for i in range(101))
    for k in (1, 2, 3, 7):
        chunks = split_text(text, k)
        assert len(chunks) == k and "".join(chunks) == text
        sizes = [len(c) for c in chunks]
        assert max(sizes) < 2 * min(sizes) + 20


def test_state_round_trip(tmp_path):
    ckpt = CheckpointDir(tmp_path)
    st = RunState({"a": 1}, 4, 2, None, False, [{"unit": 0, "train_loss": 3.0}])
    ckpt.save(st)
    assert json.loads(ckpt.state_path.read_text())["done"] == 2
    back = ckpt.load()
    assert back.done == 2 and back.history == st.history and back.fingerprint == {"a": 1}
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary left behind
