"""KV-cache memory report: what llama.cpp allocates for a model's cache, per cache-type pair."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("f16", "f16"),
    ("q8_0", "q8_0"),
    ("q4_0", "q4_0"),
    ("ktq4", "vtq4"),
    ("ktq4", "vtq3"),
    ("ktq2", "vtq2"),
)


@dataclass(frozen=True)
class KvRow:
    type_k: str
    type_v: str
    n_ctx: int
    bytes: int

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


def measure(model_path: str, n_ctx: int, pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS) -> list[KvRow]:
    """Create a context per pair (flash attention on) and read back the bytes llama.cpp allocated."""
    from . import _core

    model = _core.Model(model_path)
    rows = []
    for type_k, type_v in pairs:
        ctx = _core.Context(model, n_ctx=n_ctx, n_batch=min(n_ctx, 512), type_k=type_k, type_v=type_v,
                            flash_attn=True)
        rows.append(KvRow(type_k, type_v, ctx.n_ctx, ctx.memory_bytes()))
        del ctx
    return rows


def format_table(rows: list[KvRow]) -> str:
    base = next((r.bytes for r in rows if (r.type_k, r.type_v) == ("f16", "f16")), None)
    lines = [f"{'K':>8} {'V':>8} {'n_ctx':>7} {'KV MiB':>9} {'bytes/token':>12} {'vs f16':>7}"]
    for r in rows:
        ratio = f"{r.bytes / base:6.3f}x" if base else "      -"
        lines.append(f"{r.type_k:>8} {r.type_v:>8} {r.n_ctx:>7} {r.mib:>9.2f} {r.bytes / r.n_ctx:>12.1f} {ratio:>7}")
    return "\n".join(lines)
