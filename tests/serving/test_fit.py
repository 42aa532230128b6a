"""tq-fit: its byte counts must equal what llama.cpp allocates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llama_tq import bundled, fit
from llama_tq.gguf_shape import read_shape

CPU = fit.CacheConfig(backend="cpu")
CPU_SWA_FULL = fit.CacheConfig(backend="cpu", swa_full=True)  # the llama.h default, which _core uses

SMOL_PAIRS = [("f16", "f16"), ("q8_0", "q4_0"), ("ktq2", "vtq2"), ("ktq4", "vtq3_3"), ("ktq3", "vtq4_1"),
              ("q4_1", "iq4_nl"), ("bf16", "vtq2_3"), ("q5_0", "q5_1")]


def test_type_table_equals_ggml(core):
    names = set(core.cache_types())
    assert names == set(fit.TYPE_TRAITS), "tq-fit's type table and the build's cache types differ"
    for name in [*names, *fit.ALIASES]:
        info = core.type_info(name)
        assert fit.TYPE_TRAITS[fit.canonical_type(name)] == (info["block_size"], info["type_size"]), name
        assert fit.bits_per_element(name) == pytest.approx(info["bits_per_element"])


@pytest.mark.parametrize("n_ctx", [512, 1000, 4096, 8192])
def test_smollm2_equals_llama_cpp(core, model_path, n_ctx):
    shape = read_shape(model_path)
    assert (shape.arch, shape.n_layer, len(shape.attn_layers), shape.n_ctx_train) == ("llama", 30, 30, 8192)
    assert {(la.n_head_kv, la.head_k, la.head_v) for la in shape.attn_layers} == {(3, 64, 64)}
    model = core.Model(model_path)
    for type_k, type_v in SMOL_PAIRS:
        ctx = core.Context(model, n_ctx=n_ctx, n_batch=min(n_ctx, 512), type_k=type_k, type_v=type_v,
                           flash_attn=True, n_threads=1)
        est = fit.estimate(shape, n_ctx, type_k, type_v, CPU_SWA_FULL)
        assert est.n_ctx == ctx.n_ctx
        assert est.total == ctx.memory_bytes(), (type_k, type_v, n_ctx)
        del ctx


def test_smollm2_weights_and_bits(model_path):
    shape = read_shape(model_path)
    assert shape.weight_bytes == 96_576_768  # sum of the GGUF's tensor data
    assert shape.n_params > 134_000_000
    est = fit.estimate(shape, 8192, "f16", "f16", CPU)
    assert est.kv_bytes == 30 * 2 * 192 * 8192 * 2  # layers x (K, V) x n_embd_gqa x cells x 2 bytes
    assert fit.estimate(shape, 8192, "ktq2", "vtq2", CPU).kv_bytes * 16 == est.kv_bytes * 2.25


@pytest.mark.parametrize("name", ["llama_gqa128", "gemma2_swa", "lfm2_hybrid", "lfm2_hybrid_swa"])
def test_other_shapes_equal_core(core, synth_models, name):
    """Head dim 128 + GQA, SWA (with llama.h's default full-size SWA cache), hybrid conv/attention."""
    path = str(synth_models[name])
    shape = read_shape(path)
    model = core.Model(path)
    for n_ctx in (300, 2048):
        for type_k, type_v in (("f16", "f16"), ("ktq2", "vtq2"), ("q8_0", "vtq3_3")):
            ctx = core.Context(model, n_ctx=n_ctx, n_batch=256, type_k=type_k, type_v=type_v, flash_attn=True,
                               n_threads=1)
            est = fit.estimate(shape, n_ctx, type_k, type_v, CPU_SWA_FULL)
            assert est.total == ctx.memory_bytes(), (name, n_ctx, type_k, type_v)


def test_shapes_read_from_metadata(synth_models):
    s = read_shape(synth_models["llama_gqa128"])
    assert [(la.n_head_kv, la.head_k) for la in s.attn_layers] == [(2, 128)] * 3
    s = read_shape(synth_models["gemma2_swa"])
    assert [la.swa for la in s.attn_layers] == [True, False, True, False] and s.n_swa == 256
    s = read_shape(synth_models["lfm2_hybrid"])
    assert [la.il for la in s.attn_layers] == [1, 4] and s.recr_layers == [0, 2, 3, 5]
    assert s.n_embd_r == 256 * 2  # n_embd * (l_cache - 1)


KV_LINE = re.compile(r"llama_kv_cache: size = +[0-9.]+ MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\)")
BUF_LINE = re.compile(r"(?:llama_kv_cache|llama_memory_recurrent): +CPU (KV|RS) buffer size = +([0-9.]+) MiB")


def llama_log(model: Path | str, args: list[str]) -> tuple[list[tuple[int, int, int]], list[tuple[str, str]]]:
    """Allocate a context with llama-completion (the tools' defaults: swa_full off) and read its cache log.

    The tools log through a worker thread; in one CI run (at 5b6b065) a successful run's log stopped in
    the middle of a line right after "constructing llama_context", before the cache lines. A run whose log has no
    cache line is therefore repeated, twice at most: the figures compared come from a complete log."""
    for _ in range(3):
        out = bundled.run_tool("completion", ["-m", str(model), "-n", "1", "-p", "a", "-no-cnv", "--no-warmup", "-t",
                                              "1", "-fa", "on", "-lv", "4", *args],
                               capture_output=True, text=True, timeout=120)
        # the log is on stderr: kept apart from the generated text on stdout, so no line of it can be interleaved
        assert out.returncode == 0, out.stderr[-3000:]
        caches = [(int(c), int(n), int(s)) for c, n, s, _ in KV_LINE.findall(out.stderr)]
        if caches:
            return caches, BUF_LINE.findall(out.stderr)
    raise AssertionError("no llama_kv_cache line in the log of 3 runs; the last one's:\n" + out.stderr[-3000:])


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:.2f}"


@pytest.mark.parametrize("name,args,cfg", [
    ("gemma2_swa", ["-c", "4000", "-ctk", "q8_0", "-ctv", "q4_0"], fit.CacheConfig(backend="cpu")),
    ("gemma2_swa", ["-c", "8192", "-ctk", "ktq2", "-ctv", "vtq2", "-ub", "256"],
     fit.CacheConfig(backend="cpu", n_ubatch=256)),
    ("lfm2_hybrid_swa", ["-c", "3000"], fit.CacheConfig(backend="cpu")),
    ("lfm2_hybrid", ["-c", "1000", "-np", "3", "-ctk", "ktq4", "-ctv", "vtq4"],
     fit.CacheConfig(backend="cpu", n_seq=3)),
    ("llama_gqa128", ["-c", "1000", "-np", "3"], fit.CacheConfig(backend="cpu", n_seq=3)),
])
def test_swa_window_and_streams_match_llama_log(synth_models, name, args, cfg):
    """SWA caches hold only their window (+ a ubatch), hybrid layers only attention, -np splits streams."""
    ctx = int(args[args.index("-c") + 1])
    tk = args[args.index("-ctk") + 1] if "-ctk" in args else "f16"
    tv = args[args.index("-ctv") + 1] if "-ctv" in args else "f16"
    est = fit.estimate(read_shape(synth_models[name]), ctx, tk, tv, cfg)
    caches, buffers = llama_log(synth_models[name], args)
    attn_parts = [p for p in est.parts if p.kind != "recurrent"]
    # iswa logs an empty non-SWA cache for lfm2 (0 layers): compare the non-empty ones
    assert [c for c in caches if c[1]] == [(p.cells, p.n_layers, est.n_stream) for p in attn_parts]
    assert buffers == [("KV" if p.kind != "recurrent" else "RS", mib(p.bytes)) for p in est.parts]


def test_max_context_is_the_largest_that_fits(model_path):
    shape = read_shape(model_path)
    budget, over = fit.parse_size("2GiB"), fit.parse_size("512MiB")
    for pair in (("f16", "f16"), ("ktq2", "vtq2")):
        n = fit.max_context(shape, *pair, budget, over, CPU)
        assert n % 256 == 0 and n > 0

        def total(c: int, pair: tuple[str, str] = pair) -> int:
            e = fit.estimate(shape, c, *pair, CPU)
            return shape.weight_bytes + e.total + fit.compute_overhead(shape, e, over, CPU)

        assert total(n) <= budget < total(n + 256)
    assert fit.max_context(shape, "f16", "f16", shape.weight_bytes, 0, CPU) == 0


def test_cli_table_plot_and_errors(model_path, tmp_path, capsys):
    png = tmp_path / "fit.png"
    assert fit.main([model_path, "-c", "128k", "--vram", "24GiB", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "ktq2    vtq2" in out and "405.0 MiB" in out and "max context" in out
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    truncated = tmp_path / "truncated.gguf"
    with open(model_path, "rb") as f:
        truncated.write_bytes(f.read(5_000_000))
    for argv, msg in (
        ([str(bad)], "not a readable GGUF"),
        ([str(truncated)], "not a readable GGUF"),
        ([str(tmp_path / "missing.gguf")], "no such file"),
        ([model_path, "--pairs", "f16/q3_k"], "valid types: f32, f16"),
        ([model_path, "--pairs", "vtq2/vtq2"], "V-cache type"),
        ([model_path, "--pairs", "ktqp2/ktqp2"], "ktqp2 is a K-cache type"),
        ([model_path, "--vram", "lots"], "cannot read the size"),
    ):
        assert fit.main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err


def test_pair_refused_for_unsupported_head_size():
    from llama_tq.gguf_shape import AttnLayer, ModelShape

    shape = ModelShape("x", "phi2", "x", 2, 2048, [AttnLayer(0, 80, 80, 32, False), AttnLayer(1, 80, 80, 32, False)])
    assert "multiple of 64" in (fit.check_pair(shape, "ktq2", "vtq2") or "")
    assert fit.check_pair(shape, "q8_0", "q8_0") is None


@pytest.mark.parametrize(("k_rules", "v_rules"), [("0,-1=q8_0", ""), ("1-2=ktq4;5=f16", "1=q8_0;-3--1=vtq4_3")])
def test_per_layer_rules_equal_llama_cpp(core, model_path, monkeypatch, k_rules, v_rules):
    """LLAMA_TQ_K_LAYERS / LLAMA_TQ_V_LAYERS: tq-fit's bytes are what llama.cpp allocates with the same rules."""
    shape = read_shape(model_path)
    model = core.Model(model_path)
    cfg = fit.CacheConfig(backend="cpu", swa_full=True, k_layers=k_rules, v_layers=v_rules)
    monkeypatch.setenv("LLAMA_TQ_K_LAYERS", k_rules)
    monkeypatch.setenv("LLAMA_TQ_V_LAYERS", v_rules)
    for type_k, type_v in (("ktq2", "vtq2"), ("q4_0", "q4_0")):
        ctx = core.Context(model, n_ctx=1000, n_batch=512, type_k=type_k, type_v=type_v, flash_attn=True,
                           n_threads=1)
        assert fit.estimate(shape, 1000, type_k, type_v, cfg).total == ctx.memory_bytes(), (type_k, type_v)
        del ctx


def test_per_layer_rules_in_a_swa_model(core, synth_models, monkeypatch):
    """Each of the two caches of an iSWA model applies the rules to its own layers."""
    path = str(synth_models["gemma2_swa"])
    shape = read_shape(path)
    cfg = fit.CacheConfig(backend="cpu", swa_full=True, k_layers="0,-1=q8_0", v_layers="1=f16")
    monkeypatch.setenv("LLAMA_TQ_K_LAYERS", cfg.k_layers)
    monkeypatch.setenv("LLAMA_TQ_V_LAYERS", cfg.v_layers)
    ctx = core.Context(core.Model(path), n_ctx=2048, n_batch=256, type_k="ktq2", type_v="vtq2", flash_attn=True,
                       n_threads=1)
    assert fit.estimate(shape, 2048, "ktq2", "vtq2", cfg).total == ctx.memory_bytes()


def test_cli_per_layer_rules(model_path, capsys, monkeypatch):
    monkeypatch.delenv("LLAMA_TQ_K_LAYERS", raising=False)
    assert fit.main([model_path, "--pairs", "ktq2/vtq2", "--k-layers", "0,-1=q8_0", "--json"]) == 0
    row = __import__("json").loads(capsys.readouterr().out)["rows"][0]
    assert row["bits_k"] == pytest.approx((28 * 2.25 + 2 * 8.5) / 30)
    assert row["bits_v"] == pytest.approx(2.25)
    monkeypatch.setenv("LLAMA_TQ_K_LAYERS", "40=q8_0")  # the default comes from the variable, as in llama.cpp
    assert fit.main([model_path, "--pairs", "ktq2/vtq2"]) == 2
    err = capsys.readouterr().err
    assert "LLAMA_TQ_K_LAYERS: rule '40=q8_0': '40' is not a layer or a range of layers of this model (0..29)" in err
