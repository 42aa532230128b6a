"""Little-endian bit packing shared by the ktq/vtq_1 code layout and the vtq_2 trellis bitstream.

Convention (docs/formats.md): bit j of a stream is bit ``j % 8`` of byte ``j // 8``; a sequence of
b-bit codes is packed so that code i occupies stream bits ``[i*b, i*b + b)``, least significant bit
first. These functions work on the last axis, so a batch of blocks packs in one call.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

U8Array = NDArray[np.uint8]


def _check_width(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise ValueError(f"code width must be 1..8 bits, got {bits}")


def codes_to_bits(codes: ArrayLike, bits: int) -> U8Array:
    """Expand ``(..., n)`` codes of ``bits`` bits to a ``(..., n*bits)`` array of 0/1 stream bits."""
    _check_width(bits)
    c = np.asarray(codes)
    if c.size and (c.min() < 0 or c.max() >= (1 << bits)):
        raise ValueError(f"codes out of range for {bits}-bit packing")
    c = c.astype(np.uint16)
    shifts = np.arange(bits, dtype=np.uint16)
    stream = (c[..., :, None] >> shifts) & 1
    return stream.reshape(*c.shape[:-1], c.shape[-1] * bits).astype(np.uint8)


def bits_to_codes(stream_bits: ArrayLike, bits: int) -> NDArray[np.int64]:
    """Inverse of :func:`codes_to_bits`: group ``(..., n*bits)`` stream bits into n codes."""
    _check_width(bits)
    sb = np.asarray(stream_bits, dtype=np.int64)
    if sb.shape[-1] % bits:
        raise ValueError(f"stream length {sb.shape[-1]} is not a multiple of {bits}")
    grouped = sb.reshape(*sb.shape[:-1], sb.shape[-1] // bits, bits)
    return (grouped << np.arange(bits, dtype=np.int64)).sum(axis=-1)


def bits_to_bytes(stream_bits: ArrayLike) -> U8Array:
    """Pack ``(..., m)`` 0/1 stream bits (m a multiple of 8) into ``(..., m/8)`` bytes, little-endian."""
    sb = np.asarray(stream_bits, dtype=np.uint8)
    if sb.shape[-1] % 8:
        raise ValueError(f"stream length {sb.shape[-1]} is not a multiple of 8 bits")
    return np.packbits(sb, axis=-1, bitorder="little")


def bytes_to_bits(packed: ArrayLike) -> U8Array:
    """Unpack ``(..., m/8)`` bytes to ``(..., m)`` 0/1 stream bits, little-endian."""
    return np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1, bitorder="little")


def pack_bits(codes: ArrayLike, bits: int) -> U8Array:
    """Pack ``(..., n)`` b-bit codes into ``(..., n*b/8)`` bytes (code i at stream bits [i*b, i*b+b))."""
    return bits_to_bytes(codes_to_bits(codes, bits))


def unpack_bits(packed: ArrayLike, bits: int) -> NDArray[np.int64]:
    """Inverse of :func:`pack_bits`."""
    return bits_to_codes(bytes_to_bits(packed), bits)
