"""The installed package: build info, bundled tools, and _core against llama-perplexity on real tokens."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from llama_tq import bundled

from .logits_file import read_logits_file

REPO = Path(__file__).resolve().parents[2]
PIN = tomllib.loads((REPO / "vendor" / "llama.cpp.toml").read_text())
SHARED = Path(os.environ.get("LLAMA_TQ_SHARED", REPO.parent / "shared"))

BUNDLED = ["llama-cli", "llama-completion", "llama-server", "llama-perplexity", "llama-bench",
           "llama-finetune", "llama-quantize"]


def banner_ok(text: str) -> bool:
    return (f"build {PIN['upstream']['build']}, commit {PIN['upstream']['commit']}" in text
            and f"llama-tq: series {series_hash()}" in text)


def series_hash() -> str:
    out = subprocess.run([sys.executable, str(REPO / "tools" / "upstream.py"), "hash"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_build_info_matches_pin_and_series(core):
    from llama_tq import build_info

    info = build_info()
    assert info["upstream_commit"] == PIN["upstream"]["commit"]
    assert info["upstream_build"] == PIN["upstream"]["build"]
    assert info["series_hash"] == series_hash()
    assert "CPU" in info["backends"]
    assert any(d["name"] == "CPU" for d in info["devices"])
    assert {"f16", "q8_0", "q4_0"} <= set(info["cache_types"])


@pytest.mark.parametrize("program", [p for p in BUNDLED if p != "llama-quantize"])
def test_bundled_tool_reports_true_version(program):
    path = bundled.tool_path(program)
    ldd = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    assert "not found" not in ldd.stdout, ldd.stdout
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and banner_ok(out.stdout + out.stderr), out.stdout + out.stderr


def test_bundled_quantize_requantizes_the_test_model(core, model_path, tmp_path):
    """llama-quantize has no --version: it prints the banner when it works, so make it work."""
    out_path = tmp_path / "q8_0.gguf"
    out = bundled.run_tool("quantize", ["--allow-requantize", model_path, str(out_path), "Q8_0", "2"],
                           capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and banner_ok(out.stdout + out.stderr), out.stderr[-3000:]
    requantized = core.Model(str(out_path))
    assert requantized.info["n_params"] == core.Model(model_path).info["n_params"]
    assert requantized.info["size_bytes"] > core.Model(model_path).info["size_bytes"]  # 8.5 vs 5 bits


def test_llama_tq_forwards_to_bundled_tools():
    out = subprocess.run([sys.executable, "-m", "llama_tq.cli", "bench", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    assert "--cache-type-k" in out.stdout + out.stderr
    bad = subprocess.run([sys.executable, "-m", "llama_tq.cli", "no-such-tool"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_unknown_cache_type_names_the_valid_ones(core, model):
    with pytest.raises(ValueError, match=r"unknown K cache type 'q3_x'.*valid: .*q8_0"):
        core.Context(model, n_ctx=256, type_k="q3_x")
    with pytest.raises(ValueError, match=r"unknown V cache type"):
        core.Context(model, n_ctx=256, type_v="")


def test_bad_model_files_are_python_errors(core, tmp_path):
    with pytest.raises(ValueError, match="cannot open"):
        core.Model(str(tmp_path / "missing.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ValueError, match="not a GGUF"):
        core.Model(str(junk))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(RuntimeError, match="could not load"):
        core.Model(str(truncated))


def test_decode_rejects_bad_tokens_and_overflow(core, model):
    ctx = core.Context(model, n_ctx=256, n_batch=64)
    with pytest.raises(ValueError, match="out of range"):
        ctx.decode([model.n_vocab])
    with pytest.raises(ValueError, match="exceed n_ctx"):
        ctx.decode([1] * 257)
    assert ctx.n_past == 0


def test_tokenize_round_trip(model):
    text = "The quick brown fox jumps over the lazy dog."
    tokens = model.tokenize(text, add_special=False)
    assert len(tokens) > 5
    assert model.detokenize(tokens) == text


@pytest.mark.parametrize("type_k,type_v,bytes_per_32", [("f16", "f16", 64), ("q8_0", "q8_0", 34),
                                                         ("q4_0", "q4_0", 18)])
def test_memory_bytes_is_what_the_cache_holds(core, model, type_k, type_v, bytes_per_32):
    info = model.info
    n_embd_kv = info["n_embd"] // info["n_head"] * info["n_head_kv"]
    for n_ctx in (512, 2048):
        ctx = core.Context(model, n_ctx=n_ctx, n_batch=256, type_k=type_k, type_v=type_v, flash_attn=True)
        expected = info["n_layer"] * ctx.n_ctx * 2 * n_embd_kv * bytes_per_32 // 32
        assert ctx.memory_bytes() == expected


def test_logits_match_llama_perplexity(core, model, model_path, tmp_path):
    """_core and the bundled llama-perplexity give the same log-probabilities on the same tokens."""
    text = (SHARED / "data" / "brown.txt").read_text(encoding="utf-8")[:6000]
    src = tmp_path / "text.txt"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "base.kld"
    n_ctx = 128
    run = bundled.run_tool("perplexity", [
        "-m", model_path, "-f", str(src), "-c", str(n_ctx), "-b", str(n_ctx), "--chunks", "2", "-fa", "on",
        "-t", "2", "--kl-divergence-base", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = read_logits_file(out)
    assert ref.n_vocab == model.n_vocab and ref.n_ctx == n_ctx

    ctx = core.Context(model, n_ctx=n_ctx, n_batch=n_ctx, flash_attn=True, n_threads=2)
    for chunk in range(ref.tokens.shape[0]):
        tokens = ref.tokens[chunk].tolist()
        if model.info["add_bos"]:
            tokens[0] = model.info["bos"]  # llama-perplexity puts BOS at the start of every chunk
        ctx.reset()
        logits = ctx.decode(tokens).astype(np.float64)[ref.first:n_ctx - 1]
        ours = logits - logits.max(axis=1, keepdims=True)
        ours -= np.log(np.exp(ours).sum(axis=1, keepdims=True))
        theirs = ref.log_probs(chunk)
        visible = ref.q[chunk] > 0  # entries above llama-perplexity's 16-nat floor
        # 16 bits over a 16-nat range: quantization error <= 16 / 65535 / 2 per entry
        np.testing.assert_allclose(ours[visible], theirs[visible], atol=2e-4)
        assert visible.mean() > 0.01
