"""Independent float64 numpy reference of the ktq / vtq block formats (docs/formats.md).

Stands alone (numpy only): it shares no code with src/ggml-tq or python/llama_tq. Tables (levels,
trellis tables) are inputs, so the same functions check the built-in and any loaded codebook.

Conventions mirrored from the contract:
- QK_TQ = 64 elements per block; every block starts with the fp16 scale ``d`` (IEEE half bits).
- Codes / trellis streams: little-endian bit-stream, bit j of the stream is bit ``j % 8`` of byte ``j // 8``.
- Scalar codebook (ktqb, vtqb_1): code j is stream bits ``[j*b, j*b+b)``, ``x̂_j = d * level[code_j]``.
- Trellis (vtqb_2): k bits per sample, L = k + 6; state_i = stream bits ``[i*k, i*k+L)`` mod 64*k;
  ``x̂_i = d * table[state_i]``.
- vtqb_3: vtqb_2 plus two outlier slots: ``od[2]`` (fp16 values) and ``op[2]`` (positions); after the
  trellis decode ``x̂[op[o] & 63] = od[o]`` for o = 0, 1 in order. Block: d, od[0], od[1], op[0], op[1], qs.

Encoders are written from the algorithm descriptions in docs/formats.md, in float64 (the scale ``d`` is
rounded as ``fp16(float32(d))``; trellis targets are float32 like the C encoder's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK = 64
N_OUTLIERS = 2
FP16_MAX = 65504.0
CB_ITERS = 8

TYPE_NAMES = (
    "ktq2",
    "ktq3",
    "ktq4",
    "vtq2_1",
    "vtq3_1",
    "vtq4_1",
    "vtq2_2",
    "vtq3_2",
    "vtq4_2",
    "vtq2_3",
    "vtq3_3",
    "vtq4_3",
)


@dataclass(frozen=True)
class TypeInfo:
    name: str
    index: int  #: enum tq_type value
    bits: int  #: b (bits per code / trellis sample)
    kind: str  #: "codebook" or "trellis"
    outliers: int  #: outlier slots per block

    @property
    def qs_bytes(self) -> int:
        return QK * self.bits // 8

    @property
    def block_bytes(self) -> int:
        return 2 + 3 * self.outliers + self.qs_bytes

    @property
    def bits_per_element(self) -> float:
        return self.block_bytes * 8 / QK

    @property
    def state_bits(self) -> int:
        return self.bits + 6


def type_info(name: str) -> TypeInfo:
    i = TYPE_NAMES.index(name)
    b = 2 + i % 3
    if i < 6:
        return TypeInfo(name, i, b, "codebook", 0)
    return TypeInfo(name, i, b, "trellis", N_OUTLIERS if i >= 9 else 0)


ALL_TYPES = tuple(type_info(n) for n in TYPE_NAMES)


# ---- fp16 and bit streams -----------------------------------------------------------------------


def fp16_bits(value: float) -> int:
    """IEEE half bits of float32(value), round to nearest even."""
    with np.errstate(over="ignore"):
        return int(np.array([value], dtype=np.float32).astype(np.float16).view(np.uint16)[0])


def fp16_value(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def stream_bits(qs: bytes | np.ndarray) -> np.ndarray:
    """Bytes -> 0/1 array, bit j = bit j%8 of byte j//8."""
    b = np.frombuffer(bytes(qs), dtype=np.uint8)
    return ((b[:, None] >> np.arange(8)) & 1).reshape(-1).astype(np.int64)


def pack_stream(bits: np.ndarray) -> bytes:
    bits = np.asarray(bits, dtype=np.int64).reshape(-1, 8)
    return bytes((bits << np.arange(8)).sum(axis=1).astype(np.uint8).tolist())


def codes_from_stream(qs: bytes, b: int) -> np.ndarray:
    bits = stream_bits(qs).reshape(-1, b)
    return (bits << np.arange(b)).sum(axis=1)


def stream_from_codes(codes: np.ndarray, b: int) -> bytes:
    codes = np.asarray(codes, dtype=np.int64)
    return pack_stream(((codes[:, None] >> np.arange(b)) & 1).reshape(-1))


def trellis_states(qs: bytes, k: int) -> np.ndarray:
    """state_i = stream bits [i*k, i*k + L) mod 64*k, little-endian."""
    bits = stream_bits(qs)
    n = bits.size
    L = k + 6
    idx = (np.arange(QK)[:, None] * k + np.arange(L)[None, :]) % n
    return (bits[idx] << np.arange(L)).sum(axis=1)


# ---- block (de)serialisation --------------------------------------------------------------------


@dataclass
class Block:
    d: int  #: fp16 bits
    qs: bytes
    od: tuple[int, ...] = ()  #: fp16 bits of outlier values
    op: tuple[int, ...] = ()  #: outlier positions

    def to_bytes(self) -> bytes:
        out = int(self.d).to_bytes(2, "little")
        out += b"".join(int(v).to_bytes(2, "little") for v in self.od)
        out += bytes(self.op)
        return out + self.qs


def parse_block(info: TypeInfo, data: bytes) -> Block:
    assert len(data) == info.block_bytes
    d = int.from_bytes(data[0:2], "little")
    n = info.outliers
    od = tuple(int.from_bytes(data[2 + 2 * i : 4 + 2 * i], "little") for i in range(n))
    op = tuple(data[2 + 2 * n + i] for i in range(n))
    return Block(d, bytes(data[2 + 3 * n :]), od, op)


def split_row(info: TypeInfo, data: bytes) -> list[Block]:
    bs = info.block_bytes
    assert len(data) % bs == 0
    return [parse_block(info, data[i : i + bs]) for i in range(0, len(data), bs)]


# ---- decoding -----------------------------------------------------------------------------------


def decode_block(info: TypeInfo, blk: Block, table: np.ndarray) -> np.ndarray:
    """float32 reconstruction of one block (d * value rounded once to float32, as C does)."""
    d = fp16_value(blk.d)
    tab = np.asarray(table, dtype=np.float32).astype(np.float64)
    if info.kind == "codebook":
        vals = tab[codes_from_stream(blk.qs, info.bits)]
    else:
        vals = tab[trellis_states(blk.qs, info.bits)]
    y = (np.float64(np.float32(d)) * vals).astype(np.float32)
    for v, p in zip(blk.od, blk.op, strict=True):
        y[p & 63] = np.float32(fp16_value(v))
    return y


def dequantize_row(info: TypeInfo, data: bytes, table: np.ndarray) -> np.ndarray:
    blocks = split_row(info, data)
    if not blocks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([decode_block(info, b, table) for b in blocks])


# ---- scalar codebook encoder --------------------------------------------------------------------


def sanitize(x: np.ndarray) -> np.ndarray:
    xs = np.asarray(x, dtype=np.float32).astype(np.float64)
    return np.where(np.isfinite(xs), xs, 0.0)


def nearest_codes(x: np.ndarray, levels: np.ndarray, d: float) -> np.ndarray:
    """Nearest level at scale d: the number of scaled midpoints (l_i + l_i+1)/2 * d below x (a value
    exactly on a scaled midpoint takes the lower code)."""
    lv = np.asarray(levels, dtype=np.float64)
    thr = 0.5 * (lv[:-1] + lv[1:]) * d
    return (x[:, None] > thr[None, :]).sum(axis=1)


def codebook_quantize_block(x: np.ndarray, levels: np.ndarray) -> Block:
    """Scalar codebook encoder (formats.md): from each of two starts (RMS, max|x| / max|level|), alternate
    nearest-level assignment and least-squares scale; round that scale to fp16, reassign; keep the start
    with the smaller error (first on ties), or the all-zero block if neither is at least as good."""
    lv = np.asarray(levels, dtype=np.float32).astype(np.float64)
    b = int(np.log2(lv.size))
    xs = sanitize(x)
    ss = float(np.sum(xs * xs))
    zero = Block(0, bytes(QK * b // 8))
    lmax = float(np.max(np.abs(lv)))
    if not ss > 0 or not lmax > 0:
        return zero
    best: Block | None = None
    best_e16 = ss  # the all-zero block's error
    for d in (np.sqrt(ss / QK), float(np.max(np.abs(xs))) / lmax):
        d_fit, e_fit = 0.0, ss
        prev = None
        for _ in range(CB_ITERS):
            codes = nearest_codes(xs, lv, d)
            if prev is not None and np.array_equal(codes, prev):
                break
            prev = codes
            num = float(np.sum(xs * lv[codes]))
            den = float(np.sum(lv[codes] ** 2))
            if not (num > 0 and den > 0):
                break
            dn = num / den
            err = float(np.sum((xs - dn * lv[codes]) ** 2))
            if err < e_fit:
                e_fit, d_fit = err, dn
            d = dn
        if not d_fit > 0:
            continue
        d16 = fp16_bits(min(d_fit, FP16_MAX))
        dq = fp16_value(d16)
        if not dq > 0:
            continue
        codes = nearest_codes(xs, lv, dq)
        err = float(np.sum((xs - dq * lv[codes]) ** 2))
        if err < best_e16 or (best is None and err <= best_e16):
            best_e16, best = err, Block(d16, stream_from_codes(codes, b))
    return zero if best is None else best


# ---- trellis encoder ----------------------------------------------------------------------------


def viterbi(y: np.ndarray, w: np.ndarray, table: np.ndarray, k: int, overlaps: np.ndarray | None):
    """Minimum of sum_i w_i (y_i - table[s_i])^2 over valid state paths of one block, for each
    requested tail-biting overlap g (state_0 mod 64 == g == state_63 >> k), or unconstrained (None).

    Returns (costs (n,), states (n, 64)). Straightforward dynamic programming in natural state order.
    """
    tab = np.asarray(table, dtype=np.float32).astype(np.float64)
    S = tab.size
    K = 1 << k
    G = S // K
    s = np.arange(S)
    n = 1 if overlaps is None else len(overlaps)
    err = np.asarray(w, np.float64)[:, None] * (np.asarray(y, np.float64)[:, None] - tab[None, :]) ** 2
    cost = np.repeat(err[0][None, :], n, axis=0)
    if overlaps is not None:
        cost[(s[None, :] % G) != np.asarray(overlaps)[:, None]] = np.inf
    back = np.zeros((QK, n, G), dtype=np.int64)
    for i in range(1, QK):
        # predecessors of state s = c*G + g are g*K + h (h < K): view costs as [g, h], minimise over h
        grouped = cost.reshape(n, G, K)
        h = np.argmin(grouped, axis=2)
        back[i] = h
        best = np.take_along_axis(grouped, h[:, :, None], axis=2)[:, :, 0]
        cost = np.tile(best, (1, K)) + err[i][None, :]
    if overlaps is not None:
        cost[(s[None, :] >> k) != np.asarray(overlaps)[:, None]] = np.inf
    last = np.argmin(cost, axis=1)
    states = np.zeros((n, QK), dtype=np.int64)
    states[:, -1] = last
    rows = np.arange(n)
    for i in range(QK - 1, 0, -1):
        g = states[:, i] % G
        states[:, i - 1] = g * K + back[i][rows, g]
    return cost[rows, last], states


def viterbi_tail_biting(y, w, table, k: int, method: str = "exact"):
    """Tail-biting optimum. ``exact``: all 64 overlaps; ``two-pass``: overlap from a free pass over the
    block rotated by 32 samples, then one constrained pass. Returns (cost, states)."""
    y = np.asarray(y, np.float64)
    w = np.asarray(w, np.float64)
    if method == "exact":
        costs, states = viterbi(y, w, table, k, np.arange(64))
        g = int(np.argmin(costs))
        return float(costs[g]), states[g]
    _, rs = viterbi(np.roll(y, -32), np.roll(w, -32), table, k, None)
    g = int(rs[0, 32] % 64)
    costs, states = viterbi(y, w, table, k, np.array([g]))
    return float(costs[0]), states[0]


def is_tail_biting(states: np.ndarray, k: int) -> bool:
    s = np.asarray(states)
    return bool(np.all((s >> k) == (np.roll(s, -1) % 64)))


def stream_from_states(states: np.ndarray, k: int) -> bytes:
    return stream_from_codes(np.asarray(states) & ((1 << k) - 1), k)


def trellis_target(info: TypeInfo, x: np.ndarray, table: np.ndarray):
    """(xs, w, y, outlier slots) as the encoder prepares them; y is None for an all-zero block.

    The Viterbi target is x / d0 with d0 = max(rms, max|x| / max|table|) over the weighted samples."""
    xs = sanitize(x)
    w = np.ones(QK)
    od, op = [], []
    for _ in range(info.outliers):
        mag = np.where(w > 0, np.abs(xs), -1.0)
        j = int(np.argmax(mag))  # first index of the maximum
        w[j] = 0.0
        op.append(j)
        od.append(fp16_bits(float(np.clip(xs[j], -FP16_MAX, FP16_MAX))))
    ss = float(np.sum(w * xs * xs))
    if not ss > 0:
        return xs, w, None, tuple(od), tuple(op)
    rms = np.sqrt(ss / (QK - info.outliers))
    amax = float(np.max(w * np.abs(xs)))
    tmax = float(np.max(np.abs(np.asarray(table, dtype=np.float32))))
    d0 = amax / tmax if tmax > 0 and amax / tmax > rms else rms
    y = np.where(w > 0, (xs / d0).astype(np.float32).astype(np.float64), 0.0)
    return xs, w, y, tuple(od), tuple(op)


def trellis_scale(xs: np.ndarray, w: np.ndarray, states: np.ndarray, table: np.ndarray) -> int:
    """fp16 bits of the least-squares scale of a path (0 if degenerate)."""
    t = np.asarray(table, dtype=np.float32).astype(np.float64)[states]
    den = float(np.sum(w * t * t))
    if not den > 0:
        return 0
    return fp16_bits(float(np.clip(np.sum(w * xs * t) / den, -FP16_MAX, FP16_MAX)))


def trellis_quantize_block(info: TypeInfo, x: np.ndarray, table: np.ndarray, method: str = "exact") -> Block:
    xs, w, y, od, op = trellis_target(info, x, table)
    if y is None:
        return Block(0, bytes(info.qs_bytes), od, op)
    _, states = viterbi_tail_biting(y, w, table, info.bits, method)
    return Block(trellis_scale(xs, w, states, table), stream_from_states(states, info.bits), od, op)


# ---- rows ---------------------------------------------------------------------------------------


def quantize_block(info: TypeInfo, x: np.ndarray, table: np.ndarray, method: str = "exact") -> Block:
    if info.kind == "codebook":
        return codebook_quantize_block(x, table)
    return trellis_quantize_block(info, x, table, method)


def quantize_row(info: TypeInfo, x: np.ndarray, table: np.ndarray, method: str = "exact") -> bytes:
    x = np.asarray(x, dtype=np.float32)
    assert x.size % QK == 0
    return b"".join(quantize_block(info, x[i : i + QK], table, method).to_bytes() for i in range(0, x.size, QK))


def vec_dot(info: TypeInfo, data: bytes, q: np.ndarray, table: np.ndarray) -> float:
    """float64 dot of the reference-dequantized row with q."""
    return float(np.dot(dequantize_row(info, data, table).astype(np.float64), np.asarray(q, np.float64)))
