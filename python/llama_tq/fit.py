"""`tq-fit`: which context fits in my VRAM, with which KV-cache types?

Reads a GGUF's metadata with gguf-py (``gguf_shape.read_shape``) and computes, per K/V cache-type pair,
the exact bytes llama.cpp (b11312, as patched by llama-tq) allocates for the KV cache (and the recurrent
state of hybrid models) at a context length, plus the weights, and the largest context that fits a memory
budget. No model is loaded: the type sizes are a table here (``TYPE_TRAITS``, tested equal to ggml's); per-layer
rules (LLAMA_TQ_K_LAYERS / LLAMA_TQ_V_LAYERS, ``--k-layers`` / ``--v-layers``) go through the runtime's own parser.

How llama.cpp sizes the cache (llama-context.cpp, llama-kv-cache.cpp, llama-kv-cache-iswa.cpp):

* ``n_ctx`` is rounded up to a multiple of 256; with ``-np N`` and no ``--kv-unified`` each of the N
  streams gets ``pad256(n_ctx / N)`` cells;
* each layer with a cache gets a K tensor ``[n_head_kv * head_k, cells, streams]`` of type K and a V
  tensor of type V (no V for MLA), sized as ggml rows (``blocks * bytes_per_block``), each tensor padded
  to the buffer alignment (32 bytes on CPU; 128 on CUDA, which also pads quantized rows to 512 elements);
* sliding-window layers get ``pad256(min(cells, n_swa * (unified ? N : 1) + n_ubatch))`` cells unless
  ``--swa-full``; recurrent layers of hybrid models get f32 conv + SSM state per sequence instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from .gguf_shape import ModelShape, ShapeError, read_shape

# ggml type name -> (elements per block, bytes per block): ggml's type_traits for the cache types
TYPE_TRAITS: dict[str, tuple[int, int]] = {
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "iq4_nl": (32, 18),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "ktq2": (64, 18),
    "ktq3": (64, 26),
    "ktq4": (64, 34),
    "vtq2_1": (64, 18),
    "vtq3_1": (64, 26),
    "vtq4_1": (64, 34),
    "vtq2_2": (64, 18),
    "vtq3_2": (64, 26),
    "vtq4_2": (64, 34),
    "vtq2_3": (64, 24),
    "vtq3_3": (64, 32),
    "vtq4_3": (64, 40),
    "ktqp2": (64, 18),
    "ktqp3": (64, 26),
}
ALIASES = {"vtq2": "vtq2_2", "vtq3": "vtq3_2", "vtq4": "vtq4_2"}
V_ONLY = {t for t in TYPE_TRAITS if t.startswith("vtq")}
K_ONLY = {t for t in TYPE_TRAITS if t.startswith("ktqp")}  # keys folded by their queries (LLAMA_TQ_K_PROFILES)
TQ_TYPES = {t for t in TYPE_TRAITS if t.startswith(("ktq", "vtq"))}

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("f16", "f16"),
    ("q8_0", "q8_0"),
    ("q4_0", "q4_0"),
    ("ktq4", "vtq4"),
    ("ktq4", "vtq3"),
    ("ktq3", "vtq3"),
    ("ktq2", "vtq2"),
)

CUDA_MATRIX_ROW_PADDING = 512
ALIGNMENT = {"cpu": 32, "cuda": 128}
MAX_SEARCH_CTX = 1 << 24  # 16M tokens: the largest context tq-fit looks for
DEFAULT_OVERHEAD = "1GiB"


class FitError(ValueError):
    """Bad input: unknown cache type, unreadable model, malformed size."""


# ---- types ----------------------------------------------------------------------------------------

def canonical_type(name: str, *, role: str = "") -> str:
    t = ALIASES.get(name.lower(), name.lower())
    if t not in TYPE_TRAITS:
        valid = ", ".join([*TYPE_TRAITS, *ALIASES])
        raise FitError(f"unknown cache type '{name}'; valid types: {valid}")
    if role == "K" and t in V_ONLY:
        raise FitError(f"{name} is a V-cache type; use ktq2, ktq3 or ktq4 (or a ggml type) for the K cache")
    if role == "V" and t in K_ONLY:
        raise FitError(f"{name} is a K-cache type; use vtq2, vtq3 or vtq4 (or a ggml type) for the V cache")
    return t


def bits_per_element(name: str) -> float:
    blck, size = TYPE_TRAITS[canonical_type(name)]
    return 8.0 * size / blck


def row_bytes(type_name: str, n: int) -> int:
    """ggml_row_size: bytes of n elements of a type (n must be a whole number of blocks)."""
    blck, size = TYPE_TRAITS[canonical_type(type_name)]
    if n % blck:
        raise FitError(f"a row of {n} elements is not a whole number of {type_name} blocks of {blck}")
    return size * n // blck


def _pad(x: int, n: int) -> int:
    return (x + n - 1) // n * n


def tensor_alloc_bytes(type_name: str, ne0: int, rows: int, backend: str = "cpu") -> int:
    """Bytes a buffer reserves for a contiguous [ne0, rows] tensor (ggml-alloc: padded to the alignment)."""
    if ne0 <= 0 or rows <= 0:
        return 0
    t = canonical_type(type_name)
    size = row_bytes(t, ne0) * rows
    if backend == "cuda" and TYPE_TRAITS[t][0] > 1 and ne0 % CUDA_MATRIX_ROW_PADDING:
        size += row_bytes(t, CUDA_MATRIX_ROW_PADDING - ne0 % CUDA_MATRIX_ROW_PADDING)
    return _pad(size, ALIGNMENT[backend])


# ---- sizes ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CacheConfig:
    """The llama.cpp context parameters that change the cache size (their llama.cpp flags in brackets)."""

    n_seq: int = 1            # -np / --parallel
    kv_unified: bool = False  # --kv-unified (llama-server's default -np auto means 4 slots, unified)
    n_ubatch: int = 512       # -ub
    swa_full: bool = False    # --swa-full (the llama.h library default is true; the tools' is false)
    backend: str = "cpu"      # cpu | cuda: buffer alignment rules
    n_rs_seq: int = 0         # recurrent rollback rows (only speculative MTP/EAGLE3 drafts set it)
    k_layers: str = ""        # LLAMA_TQ_K_LAYERS: per-layer K types, e.g. "0,-1=q8_0"
    v_layers: str = ""        # LLAMA_TQ_V_LAYERS


@dataclass(frozen=True)
class CachePart:
    """One llama.cpp cache object: the full-attention KV cache, the SWA KV cache, or the recurrent state."""

    kind: str      # full | swa | recurrent
    cells: int     # cells per stream (rows per sequence for recurrent)
    n_layers: int
    k_bytes: int   # buffer bytes of the K tensors (r tensors for recurrent), alignment included
    v_bytes: int   # ... of the V tensors (s tensors for recurrent)

    @property
    def bytes(self) -> int:
        return self.k_bytes + self.v_bytes


@dataclass(frozen=True)
class KvEstimate:
    type_k: str
    type_v: str
    n_ctx: int          # after llama.cpp's padding (total over streams)
    cells: int          # cells per stream of the full-attention cache
    cells_swa: int      # cells per stream of the SWA cache (0 if none)
    n_stream: int
    k_bytes: int
    v_bytes: int
    rs_bytes: int       # recurrent state (hybrid / SSM models)
    parts: tuple[CachePart, ...] = ()

    @property
    def kv_bytes(self) -> int:
        return self.k_bytes + self.v_bytes

    @property
    def total(self) -> int:
        """What llama.cpp reports as the context's memory (llama_memory_size_bytes)."""
        return self.k_bytes + self.v_bytes + self.rs_bytes


def padded_ctx(n_ctx: int, cfg: CacheConfig) -> tuple[int, int, int]:
    """(n_ctx after padding, cells per stream, streams) as llama_context's constructor computes them."""
    if n_ctx <= 0:
        raise FitError("the context length must be positive")
    n = _pad(n_ctx, 256)
    if cfg.kv_unified or cfg.n_seq <= 1:
        return n, n, 1
    per_seq = _pad(n // cfg.n_seq, 256)
    if per_seq == 0:
        raise FitError("n_ctx_seq == 0")
    return per_seq * cfg.n_seq, per_seq, cfg.n_seq


def layer_types(shape: ModelShape, base: str, rules: str, role: str) -> dict[int, str]:
    """The cache type of every attention layer under LLAMA_TQ_K_LAYERS / LLAMA_TQ_V_LAYERS rules, parsed by the
    runtime's own parser (negative indices count the trunk layers, not an MTP head)."""
    if not rules:
        return {la.il: base for la in shape.attn_layers}
    from ._core import layer_types as parse  # the C parser of src/ggml-tq/tq-layer-types.c

    n_main = shape.n_layer - shape.n_nextn
    try:
        named = parse(rules, n_main)
    except ValueError as e:
        raise FitError(f"LLAMA_TQ_{role}_LAYERS: {e}") from None
    out = {}
    for la in shape.attn_layers:
        t = named[la.il] if la.il < n_main else None
        out[la.il] = canonical_type(t, role=role) if t else base
    return out


def avg_bits(shape: ModelShape, base: str, rules: str, role: str) -> float:
    """Bits per element of one side of the cache, averaged over its layers' elements."""
    types = layer_types(shape, base, rules, role)
    width = {la.il: (la.n_embd_k if role == "K" else la.n_embd_v) for la in shape.attn_layers}
    total = sum(width.values())
    if not total:
        return bits_per_element(base)
    return sum(bits_per_element(types[il]) * w for il, w in width.items()) / total


def check_pair(shape: ModelShape, type_k: str, type_v: str, cfg: CacheConfig | None = None) -> str | None:
    """Why llama.cpp would refuse this pair (and these per-layer rules) for this model, or None."""
    tk, tv = canonical_type(type_k, role="K"), canonical_type(type_v, role="V")
    cfg = cfg or CacheConfig()
    types_k = layer_types(shape, tk, cfg.k_layers, "K")
    types_v = layer_types(shape, tv, cfg.v_layers, "V")
    for layer in shape.attn_layers:
        tk, tv = types_k[layer.il], types_v[layer.il]
        for t, head, n in ((tk, layer.head_k, layer.n_embd_k), (tv, layer.head_v, layer.n_embd_v)):
            blck = TYPE_TRAITS[t][0]
            if n and t in TQ_TYPES and head % blck:
                return f"{t} needs a head size that is a multiple of {blck} (layer {layer.il} has {head})"
            if n and n % blck:
                return f"{t} needs rows that are a multiple of {blck} (layer {layer.il} has {n})"
    return None


def estimate(shape: ModelShape, n_ctx: int, type_k: str, type_v: str, cfg: CacheConfig = CacheConfig()
             ) -> KvEstimate:
    """The bytes llama.cpp allocates for this model's memory at n_ctx with these cache types."""
    tk, tv = canonical_type(type_k, role="K"), canonical_type(type_v, role="V")
    why = check_pair(shape, tk, tv, cfg)
    if why:
        raise FitError(why)
    types_k = layer_types(shape, tk, cfg.k_layers, "K")
    types_v = layer_types(shape, tv, cfg.v_layers, "V")
    n_total, cells, n_stream = padded_ctx(n_ctx, cfg)
    cells_swa = 0
    if any(layer.swa for layer in shape.attn_layers):
        if cfg.swa_full:
            cells_swa = cells
        else:
            cells_swa = _pad(min(cells, shape.n_swa * (cfg.n_seq if cfg.kv_unified else 1) + cfg.n_ubatch), 256)
    parts: list[CachePart] = []
    for kind, n_cells in (("full", cells), ("swa", cells_swa)):
        layers = [la for la in shape.attn_layers if la.swa == (kind == "swa")]
        if not layers:
            continue
        rows = n_cells * n_stream
        k = sum(tensor_alloc_bytes(types_k[la.il], la.n_embd_k, rows, cfg.backend) for la in layers)
        v = sum(tensor_alloc_bytes(types_v[la.il], la.n_embd_v, rows, cfg.backend) for la in layers)
        parts.append(CachePart(kind, n_cells, len(layers), k, v))
    if shape.recr_layers:
        rs_rows = max(1, cfg.n_seq) * (1 + cfg.n_rs_seq)
        n = len(shape.recr_layers)
        r = n * tensor_alloc_bytes("f32", shape.n_embd_r, rs_rows, cfg.backend)
        s = n * tensor_alloc_bytes("f32", shape.n_embd_s, rs_rows, cfg.backend)
        parts.append(CachePart("recurrent", rs_rows, n, r, s))
    k = sum(p.k_bytes for p in parts if p.kind != "recurrent")
    v = sum(p.v_bytes for p in parts if p.kind != "recurrent")
    rs = sum(p.bytes for p in parts if p.kind == "recurrent")
    return KvEstimate(tk, tv, n_total, cells, cells_swa, n_stream, k, v, rs, tuple(parts))


def compute_overhead(shape: ModelShape, est: KvEstimate, fixed: int, cfg: CacheConfig) -> int:
    """Fixed allowance + the context-dependent part of llama.cpp's compute buffer that we can size:
    the f16 attention mask [cells, n_ubatch] per cache (full and SWA) the GPU graph holds."""
    if not shape.attn_layers:
        return fixed
    mask = est.cells * est.n_stream * cfg.n_ubatch * 2
    if est.cells_swa:
        mask += est.cells_swa * est.n_stream * cfg.n_ubatch * 2
    return fixed + mask


@dataclass(frozen=True)
class FitRow:
    type_k: str
    type_v: str
    bits_k: float
    bits_v: float
    n_ctx: int
    kv_bytes: int        # K + V (+ recurrent state) at n_ctx
    weight_bytes: int
    overhead_bytes: int
    total_bytes: int
    fits: bool
    max_ctx: int         # largest context (multiple of 256) whose total fits the budget; 0 if none
    error: str = ""


def max_context(shape: ModelShape, type_k: str, type_v: str, budget: int, fixed_overhead: int,
                cfg: CacheConfig = CacheConfig(), cap: int = MAX_SEARCH_CTX) -> int:
    """Largest n_ctx (a multiple of 256) with weights + memory + overhead <= budget; 0 if even 256 doesn't."""

    def total(n: int) -> int:
        est = estimate(shape, n, type_k, type_v, cfg)
        return shape.weight_bytes + est.total + compute_overhead(shape, est, fixed_overhead, cfg)

    step = 256 * max(1, cfg.n_seq if not cfg.kv_unified else 1)
    lo, hi = 0, cap // step
    if total(step) > budget:
        return 0
    while lo < hi:  # invariant: lo*step fits (or lo == 0), the answer is in [lo, hi]
        mid = (lo + hi + 1) // 2
        if total(mid * step) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo * step


def fit_table(shape: ModelShape, n_ctx: int, pairs: Iterable[tuple[str, str]], budget: int | None,
              fixed_overhead: int, cfg: CacheConfig = CacheConfig()) -> list[FitRow]:
    rows = []
    for type_k, type_v in pairs:
        tk, tv = canonical_type(type_k, role="K"), canonical_type(type_v, role="V")
        why = check_pair(shape, tk, tv, cfg)
        bits_k, bits_v = (avg_bits(shape, t, rules, role) if not why else bits_per_element(t)
                          for t, rules, role in ((tk, cfg.k_layers, "K"), (tv, cfg.v_layers, "V")))
        if why:
            rows.append(FitRow(type_k, type_v, bits_k, bits_v, n_ctx, 0,
                               shape.weight_bytes, 0, 0, False, 0, why))
            continue
        est = estimate(shape, n_ctx, tk, tv, cfg)
        over = compute_overhead(shape, est, fixed_overhead, cfg)
        total = shape.weight_bytes + est.total + over
        fits = budget is None or total <= budget
        mc = max_context(shape, tk, tv, budget, fixed_overhead, cfg) if budget is not None else 0
        rows.append(FitRow(type_k, type_v, bits_k, bits_v, est.n_ctx, est.total,
                           shape.weight_bytes, over, total, fits, mc))
    return rows


# ---- sizes as text --------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
          "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4, "tb": 1000**4}


def parse_size(text: str) -> int:
    """'24GiB', '24G' (binary), '24GB' (decimal), '512MiB', '1e9' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise FitError(f"cannot read the size '{text}' (examples: 24GiB, 24GB, 512MiB, 0)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_overhead(text: str, budget: int | None) -> int:
    t = text.strip()
    if t.endswith("%"):
        if budget is None:
            raise FitError("a percentage overhead needs --vram")
        try:
            return int(float(t[:-1]) / 100.0 * budget)
        except ValueError:
            raise FitError(f"cannot read the overhead '{text}'") from None
    return parse_size(t)


def parse_ctx(text: str) -> int:
    t = text.strip().lower()
    mult = 1
    if t.endswith("k"):
        t, mult = t[:-1], 1024
    elif t.endswith("m"):
        t, mult = t[:-1], 1024 * 1024
    try:
        v = int(float(t) * mult)
    except ValueError:
        raise FitError(f"cannot read the context length '{text}' (examples: 8192, 128k)") from None
    if v <= 0:
        raise FitError("the context length must be positive")
    return v


def parse_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("/")
        if not sep:
            k = v = item
        canonical_type(k, role="K")
        canonical_type(v, role="V")
        pairs.append((k, v))
    if not pairs:
        raise FitError("no cache-type pairs given")
    return pairs


def fmt_bytes(n: int) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    if n >= 1024**2:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def fmt_ctx(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def format_table(shape: ModelShape, rows: Sequence[FitRow], budget: int | None) -> str:
    head = (f"{'K':>7} {'V':>7} {'bits K/V':>10} {'KV @ ' + fmt_ctx(rows[0].n_ctx) if rows else 'KV':>13} "
            f"{'weights':>11} {'overhead':>10} {'total':>11}")
    if budget is not None:
        head += f" {'fits':>5} {'max context':>13}"
    lines = [head]
    beyond = False
    for r in rows:
        if r.error:
            lines.append(f"{r.type_k:>7} {r.type_v:>7}   n/a: {r.error}")
            continue
        bits = f"{r.bits_k:g}/{r.bits_v:g}"
        line = (f"{r.type_k:>7} {r.type_v:>7} {bits:>10} {fmt_bytes(r.kv_bytes):>13} "
                f"{fmt_bytes(r.weight_bytes):>11} {fmt_bytes(r.overhead_bytes):>10} {fmt_bytes(r.total_bytes):>11}")
        if budget is not None:
            mark = ""
            if shape.n_ctx_train and r.max_ctx > shape.n_ctx_train:
                mark, beyond = "*", True
            mc = f">={r.max_ctx:,}" if r.max_ctx >= MAX_SEARCH_CTX else f"{r.max_ctx:,}"
            line += f" {'yes' if r.fits else 'NO':>5} {mc + mark:>13}"
        lines.append(line)
    if beyond:
        lines.append(f"* beyond the trained context ({shape.n_ctx_train}): needs RoPE scaling (YaRN), quality "
                     "not guaranteed")
    return "\n".join(lines)


# ---- plot -----------------------------------------------------------------------------------------

def plot(shape: ModelShape, pairs: Sequence[tuple[str, str]], out: str, budget: int | None, fixed_overhead: int,
         cfg: CacheConfig, n_ctx: int) -> None:
    """Total memory against context (log2 axis) per pair; with a budget, up to where the lines cross it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    valid = [(k, v) for k, v in pairs if not check_pair(shape, k, v, cfg)]
    hi = max(n_ctx * 2, 1 << 16)
    limits = {}
    if budget is not None:
        limits = {pair: max_context(shape, *pair, budget, fixed_overhead, cfg) for pair in valid}
        hi = max(hi, min(MAX_SEARCH_CTX, int(max(limits.values(), default=0) * 1.3)))
    ctxs = sorted({max(256, int(2 ** (e / 8)) // 256 * 256) for e in range(80, int(8 * math.log2(hi)) + 1)})
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for pair in valid:
        ys = []
        for c in ctxs:
            est = estimate(shape, c, *pair, cfg)
            ys.append((shape.weight_bytes + est.total + compute_overhead(shape, est, fixed_overhead, cfg)) / 2**30)
        (line,) = ax.plot(ctxs, ys, label=f"{pair[0]}/{pair[1]}", lw=1.6)
        if budget is not None and 0 < limits[pair] < MAX_SEARCH_CTX:
            ax.plot([limits[pair]], [budget / 2**30], "o", color=line.get_color(), ms=5)
    if budget is not None:
        ax.axhline(budget / 2**30, color="k", ls="--", lw=1, label=f"budget {fmt_bytes(budget)}")
        ax.set_ylim(0, budget / 2**30 * 1.4)
    if shape.n_ctx_train:
        ax.axvline(shape.n_ctx_train, color="grey", ls=":", lw=1, label=f"trained context {fmt_ctx(shape.n_ctx_train)}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: f"{x / 2**20:g}M" if x >= 2**20 else (f"{x / 1024:g}K" if x >= 1024 else f"{x:g}")))
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("GiB: weights + KV cache + overhead")
    ax.set_title(f"{shape.name} ({shape.arch}): memory vs context per KV-cache type", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tq-fit",
        description="KV-cache bytes per cache-type pair, and the largest context that fits a memory budget. "
                    "Numbers are what llama.cpp allocates (weights are the GGUF's tensor data).",
        epilog="Overhead: a fixed allowance for the CUDA context, cuBLAS/compute buffers and output buffers "
               f"(default {DEFAULT_OVERHEAD}; '5%' means 5% of --vram), plus the part of llama.cpp's compute "
               "buffer that grows with the context (the f16 attention mask, cells x n_ubatch x 2 bytes).",
    )
    p.add_argument("model", help="GGUF file")
    p.add_argument("-c", "--ctx-size", default="8192", help="context length (e.g. 8192, 128k; default 8192)")
    p.add_argument("--vram", help="memory budget, e.g. 24GiB (binary), 24GB (decimal)")
    p.add_argument("--pairs", default=",".join(f"{k}/{v}" for k, v in DEFAULT_PAIRS),
                   help="comma-separated K/V cache-type pairs (a single name means K = V)")
    p.add_argument("--overhead", default=DEFAULT_OVERHEAD, help="fixed allowance, e.g. 1GiB, 512MiB or 5%%")
    p.add_argument("-np", "--parallel", type=int, default=1, help="llama.cpp -np: sequences / server slots")
    p.add_argument("--kv-unified", action="store_true", help="llama.cpp --kv-unified (one cache for all slots)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=512, help="llama.cpp -ub (SWA cache size, mask)")
    p.add_argument("--swa-full", action="store_true", help="llama.cpp --swa-full (full-size SWA cache)")
    p.add_argument("--backend", choices=sorted(ALIGNMENT), default="cuda",
                   help="buffer alignment rules (default cuda; cpu is what the CPU build allocates)")
    p.add_argument("--k-layers", default=os.environ.get("LLAMA_TQ_K_LAYERS", ""), metavar="RULES",
                   help="per-layer K types, as LLAMA_TQ_K_LAYERS (default: that variable), e.g. '0,-1=q8_0'")
    p.add_argument("--v-layers", default=os.environ.get("LLAMA_TQ_V_LAYERS", ""), metavar="RULES",
                   help="per-layer V types, as LLAMA_TQ_V_LAYERS (default: that variable)")
    p.add_argument("--plot", metavar="PNG", help="write context-vs-memory lines per pair to this PNG")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        n_ctx = parse_ctx(args.ctx_size)
        budget = parse_size(args.vram) if args.vram else None
        overhead = parse_overhead(args.overhead, budget)
        pairs = parse_pairs(args.pairs)
        if args.parallel < 1 or args.ubatch_size < 1:
            raise FitError("--parallel and --ubatch-size must be positive")
        cfg = CacheConfig(n_seq=args.parallel, kv_unified=args.kv_unified, n_ubatch=args.ubatch_size,
                          swa_full=args.swa_full, backend=args.backend, k_layers=args.k_layers,
                          v_layers=args.v_layers)
        shape = read_shape(args.model)
        if not shape.has_kv_cache:
            raise FitError(f"{args.model}: {'; '.join(shape.notes)}")
        rows = fit_table(shape, n_ctx, pairs, budget, overhead, cfg)
    except (FitError, ShapeError) as e:
        print(f"tq-fit: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": shape.path, "arch": shape.arch, "shape": shape.describe(),
                          "exact": shape.exact, "notes": shape.notes, "budget": budget,
                          "config": asdict(cfg), "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(f"{shape.name}: {shape.describe()}")
        print(f"weights {fmt_bytes(shape.weight_bytes)} (GGUF tensor data); n_ctx {n_ctx} -> {rows[0].n_ctx} "
              f"after padding; -np {cfg.n_seq}{' unified' if cfg.kv_unified else ''}; -ub {cfg.n_ubatch}; "
              f"{cfg.backend} buffers"
              + (f"; budget {fmt_bytes(budget)}" if budget is not None else "")
              + f"; fixed overhead {fmt_bytes(overhead)}")
        for side, rules in (("K", cfg.k_layers), ("V", cfg.v_layers)):
            if rules:
                print(f"per-layer {side} types: {rules} (bits columns: averages over the layers)")
        for note in shape.notes:
            print(f"note: {note}")
        print(format_table(shape, rows, budget))
    if args.plot:
        plot(shape, pairs, args.plot, budget, overhead, cfg, n_ctx)
        if not args.json:
            print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
