"""Checkpoints and resume: an interrupted run loses at most the unit in progress and continues with --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .conftest import periodic_text
from .util import run_cli, state, step_log, tensors


def _args(model, text, out, *extra):
    return ["-m", model, "-f", text, "-o", out, "-c", "256", "--epochs", "2", "--checkpoints-per-epoch", "2",
            "-lr", "1e-3", "--val-split", "0", "-t", "1", "--stop-unsupported-grads", *extra]


def test_stop_and_resume(arch_models, finetune_bin, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMA_TQ_FINETUNE_BIN", str(finetune_bin))
    model = sorted(arch_models.glob("mamba2-*.gguf"))[0]
    text = tmp_path / "train.txt"
    text.write_text(periodic_text(16000))
    out = tmp_path / "out.gguf"
    ckpt = tmp_path / "out.gguf.ckpt"

    rc, stdout, err = run_cli(_args(model, text, out, "--stop-after", "1"), capsys)
    assert rc == 0, err
    st = state(ckpt)
    assert st["done"] == 1 and st["total"] == 4 and not st["finished"]
    assert (ckpt / st["model"]).is_file() and not out.exists()

    # a crash mid-unit leaves a partial file behind; a second plain run must not clobber the checkpoint
    (ckpt / "model-0001.gguf.partial").write_bytes(b"GGUF garbage")
    rc, _, err = run_cli(_args(model, text, out), capsys)
    assert rc == 2 and "--resume" in err

    rc, stdout, err = run_cli(_args(model, text, out, "--resume"), capsys)
    assert rc == 0, err
    assert "resuming after 1 of 4" in stdout
    st = state(ckpt)
    assert st["done"] == 4 and st["finished"] and [h["unit"] for h in st["history"]] == [0, 1, 2, 3]
    assert out.is_file() and not list(ckpt.glob("model-*"))  # checkpoint models removed once the output is written
    assert tensors(out).keys() == tensors(model).keys()

    # resuming a finished run is a no-op
    rc, stdout, _ = run_cli(_args(model, text, out, "--resume"), capsys)
    assert rc == 0 and "finished already" in stdout


def test_kill_mid_unit_then_resume(arch_models, finetune_bin, tmp_path):
    model = sorted(arch_models.glob("mamba2-*.gguf"))[0]
    text = tmp_path / "train.txt"
    text.write_text(periodic_text(16000))
    out = tmp_path / "out.gguf"
    ckpt = tmp_path / "out.gguf.ckpt"
    env = dict(os.environ, LLAMA_TQ_FINETUNE_BIN=str(finetune_bin))
    cmd = [sys.executable, "-m", "llama_tq.finetune", *map(str, _args(model, text, out))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # wait until the second unit is training, then kill everything (python and llama-finetune) at once
        while time.monotonic() < deadline and proc.poll() is None:
            if any(r["unit"] >= 1 for r in step_log(ckpt)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    st = state(ckpt)
    assert st["done"] == 1 and (ckpt / st["model"]).is_file()  # unit 0 survived, unit 1 is lost

    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    st = state(ckpt)
    assert st["finished"] and st["done"] == 4
    assert out.is_file()
