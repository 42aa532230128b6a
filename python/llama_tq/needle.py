"""Needle in a haystack: does long context still work with a compressed KV cache?

A short fact ("The secret passphrase is <word>.") is hidden at a chosen depth in filler text (the Brown
corpus), the model is asked for it at the end, and the answer counts as retrieved when the greedy
continuation contains the word. Everything goes through the bundled llama-server (``tq-server``): its
chat template (``/apply-template``), its tokenizer (``/tokenize``) and ``/completion`` at temperature 0.
The assistant turn is pre-filled with "The secret passphrase is" so that even a 135M model answers in
the expected form. (A one-shot example in the instruction made SmolLM2-135M answer with the example's
word; without it, f16 retrieval at 512-2048 tokens was 13/15.)

Prompts for one context length share the filler, and are run from the deepest needle to the shallowest,
so llama-server's prompt cache reuses the common prefix (it holds the same quantized K/V a fresh run
would compute).
"""

from __future__ import annotations

import bisect
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .server import Server

WORDS = (
    "apricot", "balloon", "cobalt", "dolphin", "emerald", "falcon", "glacier", "harbor", "iguana", "jasmine",
    "kettle", "lantern", "mango", "nebula", "orchid", "pelican", "quartz", "raccoon", "saffron", "tulip",
    "umbrella", "velvet", "walnut", "zeppelin", "cactus", "penguin", "volcano", "marble", "biscuit", "comet",
)
NEEDLE = "The secret passphrase is {word}."
INSTRUCTION = ("Read the text below. Somewhere in it there is a secret passphrase. "
               "Remember it: you will be asked for it at the end.")
QUESTION = "What is the secret passphrase? Answer with the passphrase only."
ANSWER_PREFIX = "The secret passphrase is"


@dataclass(frozen=True)
class Trial:
    type_k: str
    type_v: str
    n_ctx: int          # target prompt length (tokens)
    depth: float        # 0 = needle at the start of the filler, 1 = at its end
    word: str
    n_prompt: int       # actual prompt tokens
    answer: str
    found: bool
    seconds: float


def load_sentences(path: str | Path, start: int = 0, n_chars: int = 400_000) -> list[str]:
    """Lines (one sentence each) of the corpus from character offset `start`."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    chunk = text[start:start + n_chars]
    if start:
        chunk = chunk[chunk.find("\n") + 1:]
    return [s.strip() for s in chunk.splitlines() if s.strip()]


class Haystack:
    """Filler text cut to a token budget, with token-accurate offsets from the server's tokenizer."""

    def __init__(self, server: Server, sentences: Sequence[str], max_tokens: int) -> None:
        self.server = server
        # tokenize enough text once; map every sentence end to a token count
        ends: list[tuple[int, int]] = []  # (char end, token count up to that end)
        batch: list[str] = []
        n_chars = 0
        for s in sentences:  # Brown text runs at about 4.5 characters per token: take 1.3x that margin
            batch.append(s)
            n_chars += len(s) + 1
            if n_chars > max_tokens * 4 * 1.3:
                break
        text = "\n".join(batch)
        pieces = server.post("/tokenize", {"content": text, "add_special": False, "with_pieces": True})["tokens"]
        tok_ends: list[int] = []
        pos = 0
        for p in pieces:
            piece = p["piece"] if isinstance(p["piece"], str) else bytes(p["piece"]).decode("utf-8", "replace")
            pos += len(piece)
            tok_ends.append(pos)
        end = 0
        for s in batch:
            end += len(s)
            # tokens needed to cover the text up to this sentence's end
            ends.append((end, bisect.bisect_left(tok_ends, end) + 1))
            end += 1  # the newline
        self.text = text
        self.ends = ends

    def cut(self, n_tokens: int) -> str:
        """The longest whole-sentence prefix of at most n_tokens tokens."""
        best = 0
        for pos, n in self.ends:
            if n > n_tokens:
                break
            best = pos
        return self.text[:best]


def insert_needle(filler: str, needle: str, depth: float) -> str:
    """Put the needle on its own line at the sentence boundary nearest depth * len(filler)."""
    lines = filler.split("\n")
    target = depth * len(filler)
    pos, best_i, best_d = 0, 0, abs(target)
    for i in range(len(lines) + 1):
        d = abs(pos - target)
        if d < best_d:
            best_i, best_d = i, d
        if i < len(lines):
            pos += len(lines[i]) + 1
    return "\n".join(lines[:best_i] + [needle] + lines[best_i:])


def build_prompt(server: Server, haystack_text: str) -> str:
    user = f"{INSTRUCTION}\n\n<text>\n{haystack_text}\n</text>\n\n{QUESTION}"
    templated = server.post("/apply-template", {"messages": [{"role": "user", "content": user}]})["prompt"]
    return templated + ANSWER_PREFIX


def count_tokens(server: Server, text: str) -> int:
    return len(server.post("/tokenize", {"content": text, "add_special": True})["tokens"])


def answer_found(answer: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", answer, re.IGNORECASE) is not None


def run_grid(server: Server, type_k: str, type_v: str, sentences: Sequence[str], contexts: Sequence[int],
             depths: Sequence[float], *, seed: int = 0, n_predict: int = 8,
             progress: Callable[[Trial], None] | None = None) -> list[Trial]:
    """All (context, depth) cells against one running server (whose cache types are type_k/type_v)."""
    rng = random.Random(seed)
    hay = Haystack(server, sentences, max(contexts))
    overhead = count_tokens(server, build_prompt(server, "x\n" + NEEDLE.format(word=WORDS[0])))
    trials: list[Trial] = []
    for n_ctx in contexts:
        filler = hay.cut(max(0, n_ctx - overhead - n_predict))
        for depth in sorted(depths, reverse=True):  # deepest first: later prompts reuse the cached prefix
            word = rng.choice(WORDS)
            prompt = build_prompt(server, insert_needle(filler, NEEDLE.format(word=word), depth))
            t0 = time.monotonic()
            res = server.post("/completion", {"prompt": prompt, "n_predict": n_predict, "temperature": 0.0,
                                              "top_k": 1, "cache_prompt": True})
            dt = time.monotonic() - t0
            n_prompt = int(res.get("tokens_evaluated") or res.get("timings", {}).get("prompt_n", 0)
                           or count_tokens(server, prompt))
            answer = res.get("content", "")
            t = Trial(type_k, type_v, n_ctx, depth, word, n_prompt, answer.strip(), answer_found(answer, word), dt)
            trials.append(t)
            if progress:
                progress(t)
    return trials


def server_args(model: str, type_k: str, type_v: str, n_ctx: int, threads: int | None = None,
                extra: Sequence[str] = ()) -> list[str]:
    args = ["-m", model, "-c", str(n_ctx), "-np", "1", "-fa", "on", "-ctk", type_k, "-ctv", type_v,
            "--no-warmup", "-b", "2048", "-ub", "512", "--cache-reuse", "0"]
    if threads:
        args += ["-t", str(threads), "-tb", str(threads)]
    return args + list(extra)


def run_pair(model: str, type_k: str, type_v: str, sentences: Sequence[str], contexts: Sequence[int],
             depths: Sequence[float], *, seed: int = 0, threads: int | None = None, n_predict: int = 8,
             progress: Callable[[Trial], None] | None = None, extra: Sequence[str] = ()) -> list[Trial]:
    """Start a server with this cache pair, big enough for the largest context, and run the grid."""
    n_ctx = max(contexts) + 64  # llama.cpp rounds it up to a multiple of 256
    with Server(server_args(model, type_k, type_v, n_ctx, threads, extra)) as srv:
        return run_grid(srv, type_k, type_v, sentences, contexts, depths, seed=seed, n_predict=n_predict,
                        progress=progress)


def summarize(trials: Sequence[Trial]) -> dict[str, Any]:
    """Accuracy per pair, and per pair and context."""
    out: dict[str, Any] = {}
    for t in trials:
        key = f"{t.type_k}/{t.type_v}"
        d = out.setdefault(key, {"n": 0, "found": 0, "by_ctx": {}})
        d["n"] += 1
        d["found"] += int(t.found)
        c = d["by_ctx"].setdefault(str(t.n_ctx), {"n": 0, "found": 0})
        c["n"] += 1
        c["found"] += int(t.found)
    return out


def trials_to_json(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    return [asdict(t) for t in trials]
