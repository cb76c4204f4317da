"""LEB128 varints for codec headers, written and read back with bounds checks (every failure a CodecError)."""

from __future__ import annotations

import numpy as np

from bytegolf.codecs.base import CodecError

MAX_VARINT_BYTES = 10


def put_varint(out: bytearray, v: int) -> None:
    """Append v (>= 0) as a LEB128 varint."""
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def varints(values: np.ndarray) -> bytes:
    """LEB128 of non-negative integers, vectorized (values < 2^63)."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.size, dtype=np.int64)
    for k in range(1, MAX_VARINT_BYTES):
        nbytes += v >= np.uint64(1) << np.uint64(7 * k)
    ends = np.cumsum(nbytes)
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    starts = ends - nbytes
    for k in range(int(nbytes.max())):
        sel = nbytes > k
        byte = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (byte | more).astype(np.uint8)
    return out.tobytes()


class Reader:
    """Bounds-checked reading of the stored bytes up to `end` (None: all of them); every failure is a CodecError
    naming `codec`."""

    def __init__(self, data: bytes, codec: str, end: int | None = None) -> None:
        self.data, self.pos, self.codec = data, 0, codec
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise CodecError(f"{self.codec}: stream ends early (header)")
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self, limit: int, what: str) -> int:
        v = shift = 0
        for _ in range(MAX_VARINT_BYTES):
            b = self.byte()
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if v > limit:
                    raise CodecError(f"{self.codec}: {what} {v} exceeds {limit}")
                return v
        raise CodecError(f"{self.codec}: malformed varint ({what})")

    def count(self, itemsize: int, raw_size: int, what: str) -> int:
        """The stream's item count, which must decode to exactly raw_size bytes of `itemsize`-byte items."""
        n = self.varint(1 << 62, what)
        if n * itemsize > raw_size:
            raise CodecError(f"{self.codec}: stream decodes to more than the expected {raw_size} bytes")
        if n * itemsize != raw_size:
            raise CodecError(f"{self.codec}: stream decodes to {n * itemsize} bytes, expected {raw_size}")
        return n

    def varints(self, count: int, limit: int, what: str) -> np.ndarray:
        """`count` varints at once (vectorized); each must be <= limit."""
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        avail = min(self.end - self.pos, count * 9)
        window = np.frombuffer(self.data, dtype=np.uint8, count=avail, offset=self.pos)
        ends = np.flatnonzero(window < 0x80)
        if ends.size < count:
            raise CodecError(f"{self.codec}: stream ends early ({what})")
        ends = ends[:count]
        starts = np.concatenate([[0], ends[:-1] + 1])
        if int((ends - starts).max()) >= 9:
            raise CodecError(f"{self.codec}: malformed varint ({what})")
        vals = np.zeros(count, dtype=np.int64)
        for k in range(int((ends - starts).max()) + 1):
            idx = starts + k
            sel = idx <= ends
            vals[sel] |= (window[idx[sel]].astype(np.int64) & 0x7F) << (7 * k)
        if int(vals.max()) > limit:
            raise CodecError(f"{self.codec}: {what} {int(vals.max())} exceeds {limit}")
        self.pos += int(ends[-1]) + 1
        return vals

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise CodecError(f"{self.codec}: stream ends early ({what}: {n} bytes, {self.end - self.pos} left)")
        self.pos += n
        return self.data[self.pos - n : self.pos]
