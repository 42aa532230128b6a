"""`tq-server`: the bundled llama-server (OpenAI-compatible HTTP API) started from Python.

All of llama-server's own flags pass through unchanged (``-m``, ``-c``, ``-ctk/-ctv``, ``-fa``, ``--parallel``,
``-nkvo``, ``-ub``, ``--rope-scaling yarn`` ...). tq-server adds: a free loopback port when none is given,
a readiness wait (``GET /health`` until 200; if the server dies first, the error carries its stderr tail),
the URL on stdout, and a clean shutdown (SIGTERM, then SIGKILL) on Ctrl-C, SIGTERM or exit.

Command line::

    tq-server [--tq-timeout SECONDS] [--tq-log FILE] [--tq-quiet] LLAMA-SERVER-FLAGS...

Library::

    from llama_tq.server import Server
    with Server(["-m", "model.gguf", "-c", "8192", "-fa", "on", "-ctk", "ktq2", "-ctv", "vtq2"]) as srv:
        print(srv.url)                         # http://127.0.0.1:PORT
        srv.chat("Say hi", max_tokens=8)       # OpenAI /v1/chat/completions, temperature 0
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from . import bundled

LOOPBACK = "127.0.0.1"
DEFAULT_READY_TIMEOUT = 300.0
_LIVE: weakref.WeakSet[Server] = weakref.WeakSet()


class ServerError(RuntimeError):
    """llama-server did not start, died, or was unreachable."""


class HTTPError(RuntimeError):
    """An HTTP error answer from the server (status and the decoded JSON body, if any)."""

    def __init__(self, status: int, body: Any, text: str) -> None:
        msg = body.get("error", {}).get("message", text) if isinstance(body, dict) else text
        super().__init__(f"HTTP {status}: {msg}")
        self.status = status
        self.body = body
        self.text = text


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _flag_value(args: Sequence[str], *names: str) -> str | None:
    """Value of the last occurrence of a flag given as `--flag value` or `--flag=value`."""
    value = None
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                value = args[i + 1]
            elif a.startswith(n + "="):
                value = a[len(n) + 1:]
    return value


def _set_pdeathsig() -> None:
    """In the child, before exec: get SIGKILL when the parent dies (Linux), so no server outlives a
    Python process that was killed without running its atexit handlers. (SIGKILL, not SIGTERM: on
    SIGTERM llama-server first finishes the batch in hand, minutes for a long prompt on a CPU.)"""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _Launcher:
    """Forks every server from one long-lived daemon thread: PR_SET_PDEATHSIG fires when the *thread* that
    forked the child exits, so forking from short-lived threads (a ThreadPoolExecutor) would kill the
    server early; this thread lives as long as the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while True:
            fn, out = self._jobs.get()
            try:
                out.put((True, fn()))
            except BaseException as e:  # handed back to the caller
                out.put((False, e))

    def run(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tq-server-launcher", daemon=True)
                self._thread.start()
        out: queue.Queue[Any] = queue.Queue()
        self._jobs.put((fn, out))
        ok, value = out.get()
        if not ok:
            raise value
        return value


_LAUNCHER = _Launcher()


def process_rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ServerError(f"no VmRSS for pid {pid}")


class Server:
    """A running llama-server. Start with ``start()`` or ``with Server(...) as srv``; ``stop()`` ends it.

    ``args`` are llama-server's flags, passed through. ``--host`` defaults to 127.0.0.1 and ``--port`` to a
    free port when not in ``args``. ``log_path`` receives the server's output; ``echo`` copies it to stderr;
    the last ``tail_lines`` lines are kept for error messages either way.
    """

    def __init__(self, args: Sequence[str] = (), *, ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 log_path: str | os.PathLike[str] | None = None, echo: bool = False, tail_lines: int = 200,
                 env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.ready_timeout = ready_timeout
        self.log_path = Path(log_path) if log_path else None
        self.echo = echo
        self.env = env
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._user_port = _flag_value(self.args, "--port")
        self.host = _flag_value(self.args, "--host") or LOOPBACK
        self.port = int(self._user_port) if self._user_port else 0

    # ---- lifecycle ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServerError("the server is not started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stderr_tail(self, n: int = 40) -> str:
        return "".join(list(self._tail)[-n:])

    def start(self) -> Server:
        if self._proc is not None:
            raise ServerError("already started")
        attempts = 1 if self._user_port else 3  # a picked port can be taken between pick and bind
        for attempt in range(attempts):
            argv = list(self.args)
            if not _flag_value(argv, "--host"):
                argv += ["--host", self.host]
            if not self._user_port:
                self.port = free_port(self.host if self.host != "0.0.0.0" else LOOPBACK)
                argv += ["--port", str(self.port)]
            self._launch(argv)
            try:
                self.wait_ready(self.ready_timeout)
                return self
            except ServerError as e:
                bind_failed = "couldn't bind" in self.stderr_tail(20).lower()
                self.stop()
                if attempt + 1 < attempts and bind_failed:
                    self._proc = None
                    self._tail.clear()
                    continue
                raise e
        raise AssertionError("unreachable")

    def _launch(self, argv: list[str]) -> None:
        path = bundled.tool_path("server")
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        pdeathsig = _set_pdeathsig if sys.platform.startswith("linux") else None
        self._proc = _LAUNCHER.run(lambda: subprocess.Popen(
            [str(path), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, preexec_fn=pdeathsig))
        log: IO[str] | None = self.log_path.open("a", encoding="utf-8") if self.log_path else None
        self._reader = threading.Thread(target=self._pump, args=(self._proc, log), daemon=True)
        self._reader.start()
        _LIVE.add(self)

    def _pump(self, proc: subprocess.Popen[bytes], log: IO[str] | None) -> None:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                self._tail.append(line)
                if log:
                    log.write(line)
                    log.flush()
                if self.echo:
                    sys.stderr.write(line)
        finally:
            if log:
                log.close()

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        """Poll GET /health until it answers 200; ServerError if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive:
                self._drain()
                raise ServerError(f"llama-server exited with code {self.returncode} before it was ready; "
                                  f"its last output:\n{self.stderr_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:  # 503 while the model loads
                last = f"HTTP {e.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
                last = str(e)
            time.sleep(0.1)
        raise ServerError(f"llama-server at {self.url} was not ready after {timeout:.0f} s ({last}); "
                          f"its last output:\n{self.stderr_tail()}")

    def _drain(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=2)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (llama-server shuts down cleanly), SIGKILL after `timeout` s; returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._drain()
        if proc.stdout:
            proc.stdout.close()
        _LIVE.discard(self)
        return proc.returncode

    def __enter__(self) -> Server:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- HTTP helpers (standard library only) ---------------------------------------------------------

    def request(self, method: str, path: str, payload: Any = None, timeout: float = 600.0) -> Any:
        """JSON request; returns the decoded JSON answer, raises HTTPError on 4xx/5xx."""
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            raise HTTPError(e.code, body, text) from None
        return json.loads(text) if text else None

    def get(self, path: str, timeout: float = 60.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, payload: Any, timeout: float = 600.0) -> Any:
        return self.request("POST", path, payload, timeout=timeout)

    def chat(self, content: str | list[dict[str, str]], *, max_tokens: int = 32, temperature: float = 0.0,
             **extra: Any) -> dict[str, Any]:
        """POST /v1/chat/completions (OpenAI format); returns the whole JSON answer."""
        messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
        payload = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature, **extra}
        return self.post("/v1/chat/completions", payload)

    def complete(self, prompt: str | list[int], *, n_predict: int = 32, temperature: float = 0.0,
                 **extra: Any) -> dict[str, Any]:
        """POST /completion (llama.cpp's native endpoint)."""
        return self.post("/completion", {"prompt": prompt, "n_predict": n_predict, "temperature": temperature,
                                         **extra})

    def stream_chat(self, content: str, *, max_tokens: int = 32, temperature: float = 0.0, timeout: float = 600.0,
                    **extra: Any) -> Iterator[dict[str, Any]]:
        """Streaming /v1/chat/completions: yields each server-sent event's JSON; ends at `data: [DONE]`.
        Raises ServerError if the stream ends without [DONE] (a truncated answer)."""
        payload = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                   "temperature": temperature, "stream": True, **extra}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("POST", "/v1/chat/completions", body=json.dumps(payload),
                         headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
            resp = conn.getresponse()
            if resp.status != 200:
                text = resp.read().decode("utf-8", "replace")
                try:
                    body = json.loads(text)
                except ValueError:
                    body = None
                raise HTTPError(resp.status, body, text)
            done = False
            for raw in resp:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                yield json.loads(data)
            if not done:
                raise ServerError("the event stream ended without data: [DONE]")
        finally:
            conn.close()


@atexit.register
def _stop_all() -> None:
    for srv in list(_LIVE):
        with contextlib.suppress(Exception):
            srv.stop(timeout=5)


# ---- command line -----------------------------------------------------------------------------------

USAGE = """\
usage: tq-server [--tq-timeout SECONDS] [--tq-log FILE] [--tq-quiet] LLAMA-SERVER-FLAGS...

Starts the bundled llama-server with your flags (e.g. -m model.gguf -c 32768 -fa on -ctk ktq2 -ctv vtq2
--parallel 4), on 127.0.0.1 and a free port unless --host/--port are given, waits until GET /health
answers 200 and prints the URL. Ctrl-C or SIGTERM stops it cleanly.

  --tq-timeout SECONDS  readiness wait (default 300)
  --tq-log FILE         append the server's output to FILE
  --tq-quiet            do not copy the server's output to stderr

`tq-server --help-server` prints llama-server's own flags.
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if args[0] == "--help-server":
        return bundled.run_tool("server", ["--help"]).returncode
    timeout, log, quiet, rest = DEFAULT_READY_TIMEOUT, None, False, []
    it = iter(args)
    for a in it:
        if a == "--tq-timeout":
            value = next(it, "")
            try:
                timeout = float(value)
            except ValueError:
                print(f"tq-server: --tq-timeout needs a number of seconds, not '{value}'", file=sys.stderr)
                return 2
        elif a == "--tq-log":
            log = next(it, None)
        elif a == "--tq-quiet":
            quiet = True
        else:
            rest.append(a)
    srv = Server(rest, ready_timeout=timeout, log_path=log, echo=not quiet)
    try:
        srv.start()
    except (ServerError, bundled.ToolNotFoundError) as e:
        print(f"tq-server: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        srv.stop()
        print("tq-server: interrupted", file=sys.stderr)
        return 130
    stop = threading.Event()
    old = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"tq-server: ready (pid {srv.pid})", file=sys.stderr, flush=True)
        print(srv.url, flush=True)
        while not stop.is_set() and srv.alive:
            stop.wait(0.5)
        code = srv.stop()
        if stop.is_set():
            print("tq-server: stopped", file=sys.stderr)
            return 0
        print(f"tq-server: llama-server exited with code {code}", file=sys.stderr)
        return code if code else 1
    finally:
        srv.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
