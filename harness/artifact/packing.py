"""Packing: how one stream's array becomes bytes in a blob and back (storage dtype, bit packing, byte planes).

Packing of each stream, recorded in its manifest entry so `read_stream` can undo it:
- "byte" (no key in the manifest): symbols one per item in the narrowest unsigned type (uint8,
  uint16 little-endian, uint32), other streams as their storage dtype (little-endian).
- "bits" (`"pack": "bits", "width": w`): symbol streams bit-packed at w bits per symbol,
  least-significant bit first, each stream padded to a whole byte; w = ceil(log2 alphabet), or
  `LayoutConfig.width` when set (an alphabet that does not fit is a ConfigError). A width equal to
  the byte type's is stored as "byte"; alphabet 1 takes 0 bytes.
- "planes" (`"pack": "planes", "stride": s`): with `shuffle`, every non-symbol stream of a
  multi-byte dtype (fp16, bf16, fp32, int16…) is byte-shuffled: a section's items are split into
  byte planes (byte 0 of every item of the section, then byte 1, …). A stream's plane p starts at
  `offset + p·stride`, where stride is the section's item count.

Which streams share a blob, in which sections and order, is bytegolf.artifact.layout's; `serialize` lays
out one blob's sections and says where each stream went.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from bytegolf.codecs import StreamInfo
from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats.base import Stream

FLOAT_DTYPES = {"float16": "<f2", "float32": "<f4"}
SYMBOL_DTYPES = {"uint8": "u1", "uint16": "<u2", "uint32": "<u4"}
INT_DTYPES = {"int8": "i1", "int16": "<i2", "int32": "<i4", "int64": "<i8"}
_CHUNK = 1 << 20  # symbols per bit-packing step (a multiple of 8, so every chunk ends on a byte)


def np_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a manifest storage dtype (ArtifactError for any other name)."""
    table = {**FLOAT_DTYPES, **SYMBOL_DTYPES, **INT_DTYPES}
    if name not in table:
        raise ArtifactError(f"stream dtype {name!r} is not a storage dtype")
    return np.dtype(table[name])


def storage_itemsize(dtype: str) -> int:
    """Bytes per element of a manifest storage dtype."""
    return np_dtype(dtype).itemsize


def symbol_width(alphabet: int) -> int:
    """Bits needed for symbols 0..alphabet-1 (0 for a one-symbol alphabet)."""
    return max(alphabet - 1, 0).bit_length()


def serial_dtype(s: Stream, label: str) -> str:
    """Storage dtype: symbols in the narrowest unsigned type, other streams as they are."""
    if s.alphabet is not None:
        if type(s.alphabet) is not int or s.alphabet < 1 or s.alphabet > 1 << 32:
            raise ConfigError(f"{label}: alphabet must be an int in 1..2^32, got {s.alphabet!r}")
        if s.data.size:
            lo, hi = int(s.data.min()), int(s.data.max())
            if lo < 0 or hi >= s.alphabet:
                bad = hi if hi >= s.alphabet else lo
                raise ConfigError(f"{label}: holds symbol {bad}, outside its declared alphabet of {s.alphabet}")
        return "uint8" if s.alphabet <= 256 else "uint16" if s.alphabet <= 65536 else "uint32"
    name = s.data.dtype.name
    if name in FLOAT_DTYPES or name in SYMBOL_DTYPES or name in INT_DTYPES:
        return name
    raise ConfigError(f"{label}: unsupported dtype {name}")


# ---- bit packing -------------------------------------------------------------------------------


def _bits_dtype(width: int) -> np.dtype:
    return np.dtype("<u4") if width > 16 else np.dtype("<u2") if width > 8 else np.dtype("u1")


def _group(width: int) -> int:
    """Symbols per group whose bits fill whole bytes within 64 bits (0: none; widths 9, 11, 13, ...)."""
    g = 8 // math.gcd(width, 8)
    return g if g * width <= 64 else 0


def pack_bits(symbols: np.ndarray, width: int) -> bytes:
    """Unsigned symbols at `width` bits each, least-significant bit first, padded to a whole byte."""
    x = np.ascontiguousarray(symbols.reshape(-1))
    if width == 0 or x.size == 0:
        return b""
    dt = _bits_dtype(width)
    x = x.astype(dt, copy=False)
    if width == 8 * dt.itemsize:
        return x.tobytes()
    g, parts = _group(width), []
    for s in range(0, x.size, _CHUNK):
        c = x[s : s + _CHUNK]
        if g:  # g symbols -> one uint64 -> g·width/8 bytes
            v = np.zeros(-(-c.size // g) * g, dtype=np.uint64)
            v[: c.size] = c
            v = v.reshape(-1, g)
            acc = v[:, 0].copy()
            for j in range(1, g):
                acc |= v[:, j] << np.uint64(j * width)
            parts.append(acc.astype("<u8").view(np.uint8).reshape(-1, 8)[:, : g * width // 8].tobytes())
        else:
            bits = np.unpackbits(c.view(np.uint8), bitorder="little").reshape(-1, 8 * dt.itemsize)
            parts.append(np.packbits(bits[:, :width], bitorder="little").tobytes())
    return b"".join(parts)[: (x.size * width + 7) // 8]


def unpack_bits(raw: bytes | memoryview, n: int, width: int) -> np.ndarray:
    """Inverse of pack_bits: n symbols of `width` bits from raw, in the narrowest unsigned type for width."""
    dt = _bits_dtype(width)
    native = dt.newbyteorder("=")
    if width == 0 or n == 0:
        return np.zeros(n, dtype=native)
    buf = np.frombuffer(raw, dtype=np.uint8)
    if width == 8 * dt.itemsize:
        return np.frombuffer(buf[: n * dt.itemsize].tobytes(), dtype=dt).astype(native)
    g, out = _group(width), np.empty(n, dtype=native)
    for s in range(0, n, _CHUNK):
        m = min(_CHUNK, n - s)
        start = s * width // 8  # whole bytes: _CHUNK is a multiple of 8
        if g:
            ng, gb = -(-m // g), g * width // 8
            chunk = buf[start : start + ng * gb]
            flat = np.zeros(ng * gb, dtype=np.uint8)
            flat[: chunk.size] = chunk
            words = np.zeros((ng, 8), dtype=np.uint8)
            words[:, :gb] = flat.reshape(ng, gb)
            acc = words.view("<u8").reshape(-1)
            vals = np.empty((ng, g), dtype=native)
            mask = np.uint64((1 << width) - 1)
            for j in range(g):
                vals[:, j] = (acc >> np.uint64(j * width)) & mask
            out[s : s + m] = vals.reshape(-1)[:m]
        else:
            chunk = buf[start : (s * width + m * width + 7) // 8]
            bits = np.unpackbits(chunk, bitorder="little")[: m * width].reshape(m, width)
            full = np.zeros((m, 8 * dt.itemsize), dtype=np.uint8)
            full[:, :width] = bits
            out[s : s + m] = np.packbits(full, axis=1, bitorder="little").reshape(-1).view(dt)
    return out


# ---- a blob's bytes ----------------------------------------------------------------------------


class Packable(Protocol):
    """What `serialize` needs of a stream: its checked array in the storage dtype and its alphabet."""

    label: str
    data: np.ndarray  # contiguous, in the storage dtype (little-endian)
    alphabet: int | None


def serialize(
    sections: Sequence[Sequence[Packable]], packing: str, shuffle: bool, width: int
) -> tuple[bytes, dict[int, dict[str, Any]], StreamInfo]:
    """A blob's bytes, each item's placement (keyed by id(item)), and the StreamInfo for its codec."""
    parts: list[bytes] = []
    where: dict[int, dict[str, Any]] = {}
    offset = 0
    kinds: set[tuple[str, int]] = set()
    alphabets: list[int] = []
    for sec in sections:
        first = sec[0]
        itemsize = first.data.dtype.itemsize
        if first.alphabet is None and shuffle and itemsize > 1:
            total = sum(it.data.size for it in sec)
            planes = np.concatenate([it.data.view(np.uint8).reshape(-1, itemsize) for it in sec]) if total else None
            pos = 0
            for it in sec:
                where[id(it)] = {"offset": offset + pos, "pack": "planes", "stride": total}
                pos += it.data.size
            if planes is not None:
                parts.append(np.ascontiguousarray(planes.T).tobytes())
            offset += total * itemsize
            kinds.add(("bytes", 1))
            continue
        for it in sec:
            if it.alphabet is not None and packing == "bits":
                w = width or symbol_width(it.alphabet)
                if it.alphabet > 1 << w:
                    raise ConfigError(f"{it.label}: alphabet of {it.alphabet} symbols does not fit in {w} bits")
                if w != itemsize * 8:
                    raw = pack_bits(it.data, w)
                    where[id(it)] = {"offset": offset, "pack": "bits", "width": w}
                    parts.append(raw)
                    offset += len(raw)
                    kinds.add(("bytes", 1))
                    continue
            raw = it.data.tobytes()
            where[id(it)] = {"offset": offset}
            parts.append(raw)
            offset += len(raw)
            kinds.add(("symbols" if it.alphabet is not None else "items", itemsize))
            if it.alphabet is not None:
                alphabets.append(it.alphabet)
    if len(kinds) == 1 and next(iter(kinds))[0] == "symbols" and next(iter(kinds))[1] <= 2:
        info = StreamInfo(next(iter(kinds))[1], max(alphabets))
    else:
        sizes = {size for _, size in kinds}
        info = StreamInfo(sizes.pop() if len(sizes) == 1 else 1, None)
    return b"".join(parts), where, info


# ---- reading back ------------------------------------------------------------------------------


def manifest_int(v: Any, what: str) -> int:
    """A manifest number checked to be a non-negative int (ArtifactError naming `what` otherwise)."""
    if type(v) is not int or v < 0:
        raise ArtifactError(f"{what} must be a non-negative integer, got {v!r}")
    return v


def read_stream(st: dict[str, Any], blobs: list[bytes]) -> np.ndarray:
    """One stream's array from its manifest entry, every field checked against the blob."""
    name = st["name"]
    dt = np_dtype(st["dtype"])
    shape = tuple(manifest_int(d, "stream dim") for d in st["shape"])
    n = math.prod(shape)
    bi, off = manifest_int(st["blob"], "blob index"), manifest_int(st["offset"], "stream offset")
    if bi >= len(blobs):
        raise ArtifactError(f"stream {name} points to blob {bi} of {len(blobs)}")
    blob = blobs[bi]
    pack = st.get("pack", "byte")
    alphabet = st["alphabet"]
    if pack == "byte":
        if off + n * dt.itemsize > len(blob):
            raise ArtifactError(f"stream {name} runs past the end of blob {bi}")
        data = np.frombuffer(blob, dtype=dt, count=n, offset=off)
    elif pack == "bits":
        width = st.get("width")
        if type(width) is not int or not 0 <= width <= 32:
            raise ArtifactError(f"stream {name}: bit width {width!r} is not an int in 0..32")
        if type(alphabet) is not int or not 1 <= alphabet <= 1 << width or alphabet > 1 << (8 * dt.itemsize):
            raise ArtifactError(f"stream {name}: bit-packed at {width} bits but its alphabet is {alphabet!r}")
        nbytes = (n * width + 7) // 8
        if off + nbytes > len(blob):
            raise ArtifactError(f"stream {name} runs past the end of blob {bi}")
        data = unpack_bits(memoryview(blob)[off : off + nbytes], n, width)
        if data.size and int(data.max()) >= alphabet:
            raise ArtifactError(f"stream {name} holds a symbol outside its alphabet of {alphabet}")
        data = data.astype(dt, copy=False)
    elif pack == "planes":
        stride = st.get("stride")
        if type(stride) is not int or stride < n or dt.itemsize < 2 or alphabet is not None:
            raise ArtifactError(f"stream {name}: byte planes with stride {stride!r} do not fit {n} {st['dtype']} items")
        if off + (dt.itemsize - 1) * stride + n > len(blob):
            raise ArtifactError(f"stream {name} runs past the end of blob {bi}")
        buf = np.frombuffer(blob, dtype=np.uint8)
        planes = np.stack([buf[off + p * stride : off + p * stride + n] for p in range(dt.itemsize)], axis=1)
        data = np.ascontiguousarray(planes).view(dt).reshape(-1)
    else:
        raise ArtifactError(f"stream {name}: unknown packing {pack!r} (expected byte, bits or planes)")
    return data.reshape(shape)
