"""Fixtures for the tq-finetune tests: the programs they run, tiny models, training text.

Programs are found as `LLAMA_TQ_<NAME>_BIN` (e.g. LLAMA_TQ_FINETUNE_BIN, LLAMA_TQ_TEST_LLAMA_ARCHS_BIN) or bundled
with the installed package. A test whose program is missing, or whose llama-finetune lacks llama-tq's training
patches, is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BROWN = Path(os.environ.get("LLAMA_TQ_BROWN", REPO.parent / "shared" / "data" / "brown.txt"))


def find_tool(name: str) -> Path | None:
    env = "LLAMA_TQ_" + name.upper().replace("-", "_").removeprefix("LLAMA_") + "_BIN"
    if os.environ.get(env):
        p = Path(os.environ[env])
        return p if p.is_file() else None
    try:
        from llama_tq import bundled

        return bundled.tool_path(name)
    except Exception:
        return None


def require_tool(name: str) -> Path:
    p = find_tool(name)
    if p is None:
        env = "LLAMA_TQ_" + name.upper().replace("-", "_").removeprefix("LLAMA_") + "_BIN"
        pytest.skip(f"{name} is neither bundled with the installed llama-tq nor given as ${env}")
    return p


@pytest.fixture(scope="session")
def finetune_bin() -> Path:
    p = require_tool("llama-finetune")
    r = subprocess.run([str(p), "--help"], capture_output=True, text=True, timeout=60)
    if "--train-skip-regex" not in r.stdout + r.stderr:
        pytest.skip(f"{p} lacks llama-tq's training patches (no --train-skip-regex); set LLAMA_TQ_FINETUNE_BIN to a "
                    "patched build until the installed package has them")
    return p


@pytest.fixture(scope="session")
def archs_bin() -> Path:
    return require_tool("test-llama-archs")


def periodic_text(n_bytes: int) -> str:
    """A short passage repeated: even the weights after a stop-gradient can learn it, so the loss falls clearly."""
    passage = ("The Fulton County Grand Jury said Friday an investigation of the recent primary election produced "
               "no evidence that any irregularities took place.\n")
    return (passage * (n_bytes // len(passage) + 1))[:n_bytes]


def training_text(n_bytes: int, offset: int = 0) -> str:
    """A slice of the Brown corpus if it is there, else deterministic English-like text."""
    if BROWN.is_file():
        with BROWN.open("rb") as f:
            f.seek(offset)
            return f.read(n_bytes).decode("utf-8", errors="ignore")
    import random

    rng = random.Random(offset)
    words = (
        "the", "jury", "said", "that", "an", "investigation", "of", "the", "city", "election", "produced", "no",
        "evidence", "of", "any", "irregularity", "in", "the", "primary", "which", "was", "won", "by", "the",
        "mayor", "and", "the", "committee", "deserves", "praise", "for", "the", "manner",
    )
    out: list[str] = []
    size = 0
    while size < n_bytes:
        sent = " ".join(rng.choice(words) for _ in range(rng.randint(6, 16))).capitalize() + ".\n"
        out.append(sent)
        size += len(sent)
    return "".join(out)[:n_bytes]


@pytest.fixture(scope="session")
def arch_models(archs_bin, tmp_path_factory) -> Path:
    """Tiny random-weight F32 models written by upstream's test-llama-archs (`-a REGEX -o DIR`)."""
    out = tmp_path_factory.mktemp("arch-models")
    r = subprocess.run([str(archs_bin), "-a", "^(granitehybrid|jamba|qwen35moe|qwen3next|mamba2)$", "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"test-llama-archs failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return out
