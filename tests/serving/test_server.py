"""tq-server: two servers at once over loopback HTTP, context overflow, a bounded load test, clean shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from llama_tq import bundled, fit, needle
from llama_tq.gguf_shape import read_shape
from llama_tq.server import HTTPError, Server, ServerError, process_rss_bytes

BASE = ["-fa", "on", "--no-warmup", "-t", "1", "-tb", "1"]
DEBUG_LOG = ["-lv", "4"]  # llama-server hides llama.cpp's KV-cache lines below debug verbosity


@pytest.fixture(scope="module")
def second_model(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second model: the test model requantized to Q4_0 by the bundled llama-quantize."""
    out = tmp_path_factory.mktemp("q40") / "smollm2-q4_0.gguf"
    res = bundled.run_tool("quantize", ["--allow-requantize", model_path, str(out), "Q4_0", "1"],
                           capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return str(out)


@pytest.fixture(scope="module")
def servers(model_path: str, second_model: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Two servers at once, each with its own model and cache types, on free loopback ports."""
    logs = tmp_path_factory.mktemp("logs")
    a = Server(["-m", model_path, "-c", "1024", "-np", "1", "-ctk", "ktq3", "-ctv", "vtq3", *BASE, *DEBUG_LOG],
               log_path=logs / "a.log")
    b = Server(["-m", second_model, "-c", "1024", "-np", "1", "-ctk", "q8_0", "-ctv", "q8_0", *BASE, *DEBUG_LOG],
               log_path=logs / "b.log")
    with ThreadPoolExecutor(2) as ex:  # start both together; each start() waits for GET /health == 200
        for f in [ex.submit(a.start), ex.submit(b.start)]:
            f.result()
    try:
        yield {"a": a, "b": b}
    finally:
        pids = [a.pid, b.pid]
        a.stop()
        b.stop()
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists(), f"llama-server {pid} is still running"


def test_two_servers_answer_over_loopback(servers: dict[str, Server], model_path: str, second_model: str):
    a, b = servers["a"], servers["b"]
    assert a.port != b.port and a.url.startswith("http://127.0.0.1:") and b.url.startswith("http://127.0.0.1:")
    for name, srv, path, ctk in (("a", a, model_path, "ktq3"), ("b", b, second_model, "q8_0")):
        assert srv.get("/health") == {"status": "ok"}
        models = srv.get("/v1/models")
        assert Path(models["data"][0]["id"]).name == Path(path).name
        chat = srv.chat("What is the capital of France? Answer in one word.", max_tokens=8)
        choice = chat["choices"][0]
        assert choice["finish_reason"] in ("stop", "length") and choice["message"]["content"].strip()
        assert 0 < chat["usage"]["completion_tokens"] <= 8
        comp = srv.complete("The capital of France is", n_predict=6)
        assert comp["content"].strip() and comp["tokens_predicted"] <= 6
        # temperature 0: the same request gives the same answer
        assert srv.complete("The capital of France is", n_predict=6)["content"] == comp["content"]
        # each server runs with its own cache types (llama.cpp's own log says so)
        log = Path(srv.log_path).read_text()  # type: ignore[arg-type]
        assert re.search(rf"K \({ctk}\): ", log), f"server {name} does not use {ctk}"


def test_request_larger_than_context_is_a_clear_http_error(servers: dict[str, Server]):
    a = servers["a"]
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 160  # ~1600 tokens > -c 1024
    with pytest.raises(HTTPError) as err:
        a.complete(long_prompt, n_predict=4)
    assert err.value.status == 400
    assert err.value.body["error"]["type"] == "exceed_context_size_error"
    assert "exceeds the available context size" in err.value.body["error"]["message"]
    with pytest.raises(HTTPError) as err:
        a.chat(long_prompt, max_tokens=4)
    assert err.value.status == 400
    # the server is still alive and still answers
    assert a.alive and a.get("/health") == {"status": "ok"}
    assert a.chat("Say hello.", max_tokens=4)["choices"][0]["message"]["content"]


def test_tiny_needle_case(servers: dict[str, Server]):
    """One short needle-in-a-haystack case (~500 tokens) through the server's chat template."""
    b = servers["b"]
    sentences = needle.load_sentences(needle_text(), start=0, n_chars=20_000)
    trials = needle.run_grid(b, "q8_0", "q8_0", sentences, [512], [1.0], seed=0)
    assert len(trials) == 1
    t = trials[0]
    assert 400 < t.n_prompt <= 512
    assert t.found, t


def needle_text() -> Path:
    repo = Path(__file__).resolve().parents[2]
    path = Path(os.environ.get("LLAMA_TQ_SHARED", repo.parent / "shared")) / "data" / "brown.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found (set LLAMA_TQ_SHARED)")
    return path


def test_server_that_dies_reports_its_stderr(tmp_path: Path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    t0 = time.monotonic()
    with pytest.raises(ServerError) as err:
        Server(["-m", str(bad)], ready_timeout=60).start()
    assert time.monotonic() - t0 < 30
    assert "exited with code" in str(err.value) and "bad.gguf" in str(err.value)


def stream_one(srv: Server, i: int, max_tokens: int) -> dict[str, Any]:
    """One streaming chat request; stream_chat raises if the stream ends without data: [DONE]."""
    content, finish, usage, n_deltas = "", None, None, 0
    for ev in srv.stream_chat(f"Tell me a story about a dog called Rex number {i}.", max_tokens=max_tokens,
                              stream_options={"include_usage": True}):
        for ch in ev.get("choices", []):
            delta = ch.get("delta", {}).get("content")
            if delta:
                content += delta
                n_deltas += 1
            finish = ch.get("finish_reason") or finish
        usage = ev.get("usage") or usage
    return {"content": content, "finish": finish, "usage": usage, "n_deltas": n_deltas}


def test_bounded_load_ktq3_parallel4(model_path: str, tmp_path: Path):
    """16 concurrent streaming requests x 3 rounds on --parallel 4 with ktq3/vtq3: none fails or is cut
    short, and the server's RSS stays flat across rounds. (With 2-bit K the 135M test model ends most answers
    early, e.g. an empty answer to "What is the capital of France?", so the run-to-length check uses 3-bit K.)"""
    log = tmp_path / "load.log"
    n_req, rounds, max_tokens = 16, 3, 12
    args = ["-m", model_path, "-c", "2048", "--parallel", "4", "-ctk", "ktq3", "-ctv", "vtq3", "-fa", "on",
            "--no-warmup", "-t", "1", "-tb", "1", "--cache-ram", "0", *DEBUG_LOG]
    rss: list[int] = []
    n_full = 0
    t0 = time.monotonic()
    with Server(args, log_path=log) as srv:
        pid = srv.pid
        for r in range(rounds):
            with ThreadPoolExecutor(n_req) as ex:
                results = list(ex.map(lambda i, r=r: stream_one(srv, r * 100 + i, max_tokens), range(n_req)))
            for res in results:  # every stream ended with [DONE], a finish reason and consistent usage
                assert res["finish"] in ("stop", "length"), res
                assert res["usage"] and 0 < res["usage"]["completion_tokens"] <= max_tokens, res
                assert res["n_deltas"] <= res["usage"]["completion_tokens"], res
                if res["finish"] == "length":
                    assert res["usage"]["completion_tokens"] == max_tokens and res["content"], res
            n_full += sum(res["finish"] == "length" for res in results)
            assert srv.get("/health") == {"status": "ok"}
            rss.append(process_rss_bytes(pid))
        elapsed = time.monotonic() - t0
    assert not Path(f"/proc/{pid}").exists()
    print(f"\nload: {rounds} x {n_req} streams in {elapsed:.1f} s ({n_full} ran to max_tokens); "
          f"RSS per round (MiB): {[round(x / 2**20, 1) for x in rss]}")
    assert n_full >= rounds * n_req // 2, "most answers should run to max_tokens"
    # the prompt cache (--cache-ram, 8 GiB by default) grows RSS by design: it is off here, so any growth
    # after the first round would be a leak
    assert rss[-1] - rss[0] < 4 * 2**20, f"RSS grew: {rss}"

    # tq-fit predicted the server's KV buffer: -np 4 without --kv-unified = 4 streams of 512 cells
    text = log.read_text()
    m = re.search(r"llama_kv_cache: size = +[0-9.]+ MiB \( *(\d+) cells, +(\d+) layers, +4/4 seqs\)", text)
    assert m, "no KV-cache line in the server log"
    est = fit.estimate(read_shape(model_path), 2048, "ktq3", "vtq3", fit.CacheConfig(n_seq=4, backend="cpu"))
    assert (int(m.group(1)), int(m.group(2))) == (est.cells, 30) == (512, 30)
    buf = re.search(r"llama_kv_cache: +CPU KV buffer size = +([0-9.]+) MiB", text)
    assert buf and buf.group(1) == f"{est.total / 2**20:.2f}"


def test_tq_server_command_starts_prints_url_and_stops(model_path: str):
    proc = subprocess.Popen([sys.executable, "-m", "llama_tq.server", "--tq-quiet", "--tq-timeout", "120",
                             "-m", model_path, "-c", "512", "-ctk", "ktq4", "-ctv", "vtq3", *BASE],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        pid = 0
        for _ in range(20):  # the "ready (pid N)" line, after any warnings
            m = re.search(r"ready \(pid (\d+)\)", proc.stderr.readline())
            if m:
                pid = int(m.group(1))
                break
        assert pid
        srv = Server(["--port", url.rsplit(":", 1)[1]])
        assert srv.get("/health") == {"status": "ok"}
        assert srv.complete("Hello", n_predict=3)["tokens_predicted"] > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), "llama-server outlived tq-server"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_llama_server_flags_pass_through(model_path: str, tmp_path: Path):
    """YaRN 2x beyond the trained context, -ub, -nkvo and ktq2/vtq2 reach llama.cpp unchanged."""
    log = tmp_path / "yarn.log"
    args = ["-m", model_path, "-c", "16384", "--rope-scaling", "yarn", "--rope-scale", "2", "--yarn-orig-ctx", "8192",
            "-ub", "256", "-nkvo", "-ctk", "ktq2", "-ctv", "vtq2", "-np", "1", *BASE, *DEBUG_LOG]
    with Server(args, log_path=log) as srv:
        assert srv.get("/props")["default_generation_settings"]["n_ctx"] == 16384
        assert srv.complete("Hello", n_predict=3)["tokens_predicted"] > 0
    text = log.read_text()
    assert re.search(r"llama_context: freq_scale += 0\.5\b", text)
    assert re.search(r"llama_context: n_ubatch += 256\b", text)
    est = fit.estimate(read_shape(model_path), 16384, "ktq2", "vtq2", fit.CacheConfig(backend="cpu", n_ubatch=256))
    assert f"CPU KV buffer size = {est.total / 2**20:8.2f} MiB" in text
