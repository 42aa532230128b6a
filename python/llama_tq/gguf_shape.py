"""What a GGUF model's KV cache looks like, read from its metadata with gguf-py (no llama.cpp needed).

The rules mirror the pinned llama.cpp (b11312): ``llama_model::load_hparams`` and the per-arch
``load_arch_hparams`` in ``src/models/*.cpp`` decide head counts, head sizes, which layers are sliding-window
(SWA) and which are recurrent; ``llama_model::create_memory`` decides which layers get a K/V cache.
Covered: every plain transformer, per-layer ``head_count_kv`` arrays, the SWA archs listed in ``SWA_RULES``,
the hybrid SSM/attention archs in ``HYBRID_ARCHS``, pure recurrent archs, MLA (K-only cache), NextN/MTP
layers and Gemma-3n/4 KV sharing. Archs with extra per-token caches (sparse-attention indexers, DSV4
compression) are flagged as approximate in ``ModelShape.notes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ShapeError(ValueError):
    """The file is not a GGUF model this module can read."""


@dataclass(frozen=True)
class AttnLayer:
    """One layer that owns a K/V cache: elements per token of its K and V rows."""

    il: int
    head_k: int
    head_v: int
    n_head_kv: int
    swa: bool
    has_v: bool = True

    @property
    def n_embd_k(self) -> int:
        return self.head_k * self.n_head_kv

    @property
    def n_embd_v(self) -> int:
        return self.head_v * self.n_head_kv if self.has_v else 0


@dataclass
class ModelShape:
    path: str
    arch: str
    name: str
    n_layer: int                 # block_count (includes NextN/MTP layers)
    n_ctx_train: int
    attn_layers: list[AttnLayer]  # layers that own a K/V cache in the main context
    n_swa: int = 0               # sliding window (tokens); 0 = no SWA cache
    swa_type: str = "none"       # none | standard | chunked | symmetric
    recr_layers: list[int] = field(default_factory=list)
    n_embd_r: int = 0            # recurrent conv-state floats per sequence and layer
    n_embd_s: int = 0            # recurrent SSM-state floats per sequence and layer
    weight_bytes: int = 0        # sum of the GGUF's tensor data
    n_params: int = 0
    has_kv_cache: bool = True    # False for encoders / diffusion models (no memory at all)
    n_nextn: int = 0             # NextN/MTP layers at the end of block_count (not in the main context)
    exact: bool = True           # False where notes say the rule is an approximation
    notes: list[str] = field(default_factory=list)

    @property
    def is_hybrid(self) -> bool:
        return bool(self.recr_layers) and bool(self.attn_layers)

    def describe(self) -> str:
        n_swa_layers = sum(layer.swa for layer in self.attn_layers)
        heads = sorted({(la.n_head_kv, la.head_k, la.head_v) for la in self.attn_layers})
        head_txt = ", ".join(f"{h} KV heads x {k}" + (f"/{v}" if v != k else "") for h, k, v in heads) or "none"
        parts = [f"{self.arch}", f"{self.n_layer} layers", f"{len(self.attn_layers)} with KV ({head_txt})"]
        if n_swa_layers:
            parts.append(f"{n_swa_layers} SWA layers, window {self.n_swa} ({self.swa_type})")
        if self.recr_layers:
            parts.append(f"{len(self.recr_layers)} recurrent layers")
        parts.append(f"ctx_train {self.n_ctx_train}")
        return ", ".join(parts)


# arch -> (default pattern, dense_first, default n_swa or None, condition)
# condition: "always" (SWA regardless of keys), "key>0" (only if sliding_window > 0 is in the file),
# "array" (pattern must be the per-layer array), "llama4" / "exaone4" / "smallthinker" special cases.
SWA_RULES: dict[str, tuple[int, bool, int | None, str]] = {
    "gemma2": (2, False, 4096, "always"),
    "gemma3": (6, False, None, "key>0"),
    "gemma3n": (5, False, None, "always"),
    "gemma4": (0, False, None, "array"),
    "gemma4-assistant": (0, False, None, "array"),
    "gemma-embedding": (6, False, None, "always"),
    "cohere2": (4, False, None, "always"),
    "cohere2moe": (4, True, None, "always"),
    "gpt-oss": (2, False, None, "always"),
    "llama4": (4, False, 8192, "llama4"),
    "exaone4": (4, False, 4096, "exaone4"),
    "exaone-moe": (4, False, 128, "always"),
    "olmo2": (4, False, None, "key>0"),
    "afmoe": (4, False, None, "key>0"),
    "mellum": (4, False, None, "key>0"),
    "plamo3": (8, False, None, "key>0"),
    "laguna": (4, True, None, "key>0"),
    "smallthinker": (4, True, 4096, "smallthinker"),
    "muse-glimmer": (4, False, None, "always"),
    "granite_swa": (0, False, None, "array"),
    "mimo2": (0, False, None, "array"),
    "step35": (0, False, None, "array"),
    "maple": (0, False, None, "array"),
    "spark2_5": (0, False, None, "array"),
    "lfm2": (0, False, None, "lfm2"),
    "lfm2moe": (0, False, None, "lfm2"),
}

RECURRENT_ARCHS = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}
HYBRID_ARCHS = {
    "jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe",
    "qwen3next", "kimi-linear", "bailingmoe3", "kimi-k3", "glm5-next", "qwen35", "qwen35moe", "qwen4exp",
    "deepseek4", "minimax-01",
}
# recurrent layers = those with (i + 1) % full_attention_interval != 0 (default 4), unless the file has the array
INTERVAL_ARCHS = {"qwen3next", "qwen35", "qwen35moe", "qwen4exp", "minimax-01"}
NO_MEMORY_ARCHS = {
    "bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe", "neo-bert", "eurobert",
    "wavtokenizer-dec", "modern-bert", "gemma-embedding", "dream", "llada", "llada-moe", "rnd1",
}
# archs whose memory has parts this module does not model (indexer caches, compressed caches, ...)
APPROX_ARCHS = {
    "minimax-m3", "glm-dsa", "deepseek32", "glm5-next", "hy-v4", "dots3note", "deepseek4", "dflash",
    "qwen4exp", "kimi-linear", "kimi-k3", "minimax-01",
}


def _fast_reader(path: Path) -> Any:
    """gguf.GGUFReader, but long string arrays (the tokenizer's 50K+ tokens and merges) are skipped and
    numeric arrays are read as one numpy view: parsing them item by item takes seconds."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    class FastReader(GGUFReader):
        def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list[Any], list[int], list[Any]]:
            if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype = GGUFValueType(int(raw_itype[0]))
            n = int(alen[0])
            offs = orig_offs + 12
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:
                arr = self._get(offs, nptype, n)
                if len(arr) != n:
                    raise ValueError("array runs past the end of the file")
                return 12 + int(arr.nbytes), [raw_itype, alen, arr], [2], [GGUFValueType.ARRAY, itype]
            if itype == GGUFValueType.STRING and n > 64:
                buf = memoryview(self.data)
                for _ in range(n):
                    offs += 8 + int.from_bytes(buf[offs:offs + 8], "little")
                if offs > len(buf):
                    raise ValueError("string array runs past the end of the file")
                return offs - orig_offs, [raw_itype, alen], [], [GGUFValueType.ARRAY, itype]
            return super()._get_field_parts(orig_offs, raw_type)

    return FastReader(str(path), "r")


class _Meta:
    def __init__(self, path: Path) -> None:
        try:
            self.reader = _fast_reader(path)
        except Exception as e:  # gguf-py raises ValueError, struct.error, IndexError ... on bad files
            raise ShapeError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
        self.arch = str(self.get("general.architecture", ""))
        if not self.arch:
            raise ShapeError(f"{path}: GGUF has no general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception as e:
            raise ShapeError(f"corrupt metadata value for {key} ({e})") from None

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        return self.get(f"{self.arch}.{suffix}", default)


def _per_layer(value: Any, n: int, default: int) -> list[int]:
    if value is None:
        return [default] * n
    if isinstance(value, list):
        vals = [int(v) for v in value]
        return (vals + [0] * n)[:n]  # get_key_or_arr: missing entries stay 0
    return [int(value)] * n


def _swa_pattern(n_layer_main: int, n_layer_all: int, n_pattern: int, dense_first: bool) -> list[bool]:
    out = []
    for il in range(n_layer_all):
        if il >= n_layer_main:
            out.append(False)
        elif dense_first:
            out.append(n_pattern == 0 or il % n_pattern != 0)
        else:
            out.append(n_pattern == 0 or il % n_pattern < n_pattern - 1)
    return out


def read_shape(path: str | Path) -> ModelShape:
    """Read a GGUF's metadata and tensor table; raise ShapeError for unreadable or non-model files."""
    p = Path(path)
    if not p.is_file():
        raise ShapeError(f"{p}: no such file")
    m = _Meta(p)
    arch = m.arch
    notes: list[str] = []
    exact = True

    try:
        tensors = list(m.reader.tensors)
        weight_bytes = sum(int(t.n_bytes) for t in tensors)
        n_params = sum(int(t.n_elements) for t in tensors)
    except Exception as e:
        raise ShapeError(f"{p}: corrupt tensor table ({e})") from None

    n_layer_all = m.arch_key("block_count")
    if n_layer_all is None:
        raise ShapeError(f"{p}: {arch}.block_count missing: not a llama.cpp language model")
    n_layer_all = int(n_layer_all)
    n_nextn = int(m.arch_key("nextn_predict_layers", 0) or 0)
    n_layer_main = n_layer_all - n_nextn
    n_ctx_train = int(m.arch_key("context_length", 0) or 0)
    n_embd = int(m.arch_key("embedding_length", 0) or 0)
    name = str(m.get("general.name", p.name))

    shape = ModelShape(str(p), arch, name, n_layer_all, n_ctx_train, [], weight_bytes=weight_bytes,
                       n_params=n_params, notes=notes, n_nextn=n_nextn)

    if arch in NO_MEMORY_ARCHS:
        shape.has_kv_cache = False
        notes.append(f"{arch}: llama.cpp creates no KV cache for this arch (encoder/diffusion)")
        return shape

    n_head = _per_layer(m.arch_key("attention.head_count"), n_layer_all, 0)
    n_head_kv = _per_layer(m.arch_key("attention.head_count_kv"), n_layer_all, -1)
    n_head_kv = [h if h >= 0 else n_head[i] for i, h in enumerate(n_head_kv)]
    n_ff = _per_layer(m.arch_key("feed_forward_length"), n_layer_all, 0)

    head_k_full = head_v_full = 0
    if n_head[0] > 0:
        head_k_full = int(m.arch_key("attention.key_length", n_embd // n_head[0]))
        head_v_full = int(m.arch_key("attention.value_length", n_embd // n_head[0]))
    head_k_swa = int(m.arch_key("attention.key_length_swa", head_k_full))
    head_v_swa = int(m.arch_key("attention.value_length_swa", head_v_full))
    is_mla = (m.arch_key("attention.key_length_mla") is not None
              and m.arch_key("attention.value_length_mla") is not None)

    # --- sliding window ---------------------------------------------------------------------------
    swa = [False] * n_layer_all
    n_swa_key = m.arch_key("attention.sliding_window")
    pattern_val = m.arch_key("attention.sliding_window_pattern")
    rule = SWA_RULES.get(arch)
    swa_type = "none"
    n_swa = 0

    def load_pattern(default_pattern: int, dense_first: bool) -> list[bool]:
        if isinstance(pattern_val, list):
            arr = [bool(v) for v in pattern_val]
            return (arr + [False] * n_layer_all)[:n_layer_all]
        n_pat = int(pattern_val) if pattern_val is not None else default_pattern
        return _swa_pattern(n_layer_main, n_layer_all, n_pat, dense_first)

    if rule is not None:
        default_pattern, dense_first, default_n_swa, cond = rule
        use = False
        n_swa = default_n_swa or 0
        if cond == "always":
            use = True
        elif cond == "array":
            use = isinstance(pattern_val, list)
        elif cond == "key>0":
            use = n_swa_key is not None and int(n_swa_key) > 0
        elif cond == "llama4":
            use = not (n_swa_key is not None and int(n_swa_key) == 0)
            n_swa = 8192  # llama4 forces 8192-token chunks whatever the file says
        elif cond == "exaone4":
            use = n_layer_main == 64
        elif cond == "smallthinker":
            use = n_swa_key is not None and int(n_swa_key) > 0
            n_swa = 4096  # forced by llama.cpp
        elif cond == "lfm2":
            use = False  # handled after the recurrent layers are known
        if use:
            if cond not in ("llama4", "smallthinker") and n_swa_key is not None:
                n_swa = int(n_swa_key)
            swa = load_pattern(default_pattern, dense_first)
            swa_type = "chunked" if cond == "llama4" else ("symmetric" if arch == "gemma-embedding" else "standard")
    elif n_swa_key is not None and int(n_swa_key) > 0 and isinstance(pattern_val, list):
        notes.append(f"{arch}: SWA rule not in the table; using the file's per-layer sliding_window_pattern")
        exact = False
        n_swa = int(n_swa_key)
        swa = load_pattern(0, False)
        swa_type = "standard"
    elif n_swa_key is not None and int(n_swa_key) > 0:
        notes.append(f"{arch}: the file has a sliding window ({int(n_swa_key)}) but this arch's SWA rule is not "
                     "modelled; every layer is counted with a full-size cache (an upper bound)")
        exact = False

    # --- recurrent layers (hybrid and pure SSM archs) -----------------------------------------------
    recr = [arch in RECURRENT_ARCHS] * n_layer_all
    if arch in HYBRID_ARCHS:
        arr = m.arch_key("attention.recurrent_layers")
        if isinstance(arr, list) and arch in INTERVAL_ARCHS:
            recr = [bool(v) for v in (list(arr) + [False] * n_layer_all)[:n_layer_all]]
        elif arch in INTERVAL_ARCHS:
            interval = int(m.arch_key("full_attention_interval", 4))
            recr = [il < n_layer_main and (il + 1) % interval != 0 for il in range(n_layer_all)]
        elif arch == "falcon-h1":
            recr = [True] * n_layer_all
        elif arch in ("nemotron_h", "nemotron_h_moe"):
            recr = [il < n_layer_main and n_head_kv[il] == 0 and n_ff[il] == 0 for il in range(n_layer_all)]
        else:
            recr = [il < n_layer_main and n_head_kv[il] == 0 for il in range(n_layer_all)]
        if rule is not None and rule[3] == "lfm2" and n_swa_key is not None and int(n_swa_key) > 0:
            n_swa = int(n_swa_key)
            swa_type = "standard"
            swa = [il < n_layer_main and not recr[il] for il in range(n_layer_all)]

    # --- which layers own a K/V cache in the main context --------------------------------------------
    kv_from_start = -1
    if arch == "gemma3n":
        kv_from_start = 20
    elif arch == "gemma4":
        kv_from_start = n_layer_all - int(m.arch_key("attention.shared_kv_layers", 0) or 0)

    def has_attn_cache(il: int) -> bool:
        if arch in RECURRENT_ARCHS:
            return False
        if kv_from_start >= 0 and il >= kv_from_start:
            return False
        if arch in HYBRID_ARCHS:
            if arch == "falcon-h1":
                return True
            if arch in ("nemotron_h", "nemotron_h_moe"):
                return not recr[il] and n_ff[il] == 0 and il < n_layer_main
            if arch in INTERVAL_ARCHS or arch == "glm5-next":
                return il < n_layer_main and not recr[il]
            return not recr[il]
        # plain caches: NextN/MTP layers are filtered out of the main context
        return not (n_nextn > 0 and n_layer_main > 0 and il >= n_layer_main)

    layers: list[AttnLayer] = []
    for il in range(n_layer_all):
        if not has_attn_cache(il):
            continue
        hk, hv = (head_k_swa, head_v_swa) if swa[il] else (head_k_full, head_v_full)
        layers.append(AttnLayer(il, hk, hv, n_head_kv[il], swa[il], has_v=not is_mla))
    shape.attn_layers = layers
    shape.n_swa = n_swa if any(la.swa for la in layers) else 0
    shape.swa_type = swa_type if shape.n_swa else "none"

    # --- recurrent state sizes (llama_hparams::n_embd_r / n_embd_s) -----------------------------------
    shape.recr_layers = [il for il in range(n_layer_all) if recr[il]]
    if shape.recr_layers:
        wkv = int(m.arch_key("wkv.head_size", 0) or 0)
        l_cache = int(m.arch_key("shortconv.l_cache", 0) or 0)
        d_conv = int(m.arch_key("ssm.conv_kernel", 0) or 0)
        d_inner = int(m.arch_key("ssm.inner_size", 0) or 0)
        d_state = int(m.arch_key("ssm.state_size", 0) or 0)
        n_group = int(m.arch_key("ssm.group_count", 0) or 0)
        if wkv:
            shape.n_embd_r = int(m.arch_key("token_shift_count", 2) or 2) * n_embd
            shape.n_embd_s = n_embd * wkv
        elif l_cache:
            shape.n_embd_r = n_embd * (l_cache - 1)
            shape.n_embd_s = d_state * d_inner
        else:
            shape.n_embd_r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
            shape.n_embd_s = d_state * d_inner

    if arch in APPROX_ARCHS:
        exact = False
        notes.append(f"{arch}: llama.cpp adds caches here (indexer / compressed / linear-attention state) "
                     "that this estimate leaves out")
    if is_mla:
        notes.append("MLA: K-only cache (the latent), no V cache")
    shape.exact = exact
    return shape
