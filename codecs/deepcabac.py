"""DeepCABAC (NNCodec, the MPEG-7 NNC entropy coder): context-adaptive binary arithmetic coding of integers.

Optional: needs nncodec's C++ extension `nncodec.extensions.deepCABAC`. `pip install nncodec` resolves
its dependencies for over an hour (opencv, pandas pins); none of them is needed for the extension,
so install it without them (the build takes about a minute on 2 cores):

    python -m pip install pybind11 setuptools wheel
    python -m pip install --no-deps --no-build-isolation nncodec==2.1.3

Input. Symbol streams (`StreamInfo.alphabet` set) of itemsize 1, 2 or 4 are read as little-endian
signed integers (int8 / int16 / int32) as stored: uint8 / uint16 symbols 0..alphabet-1 and two's
complement values alike. Every other stream (floats: alphabet None, or an itemsize other than 1, 2,
4) is coded as its bytes, taken as uint8 symbols. The alphabet itself is not used: the range
the coder needs is taken from the data and stored.

Coding. The stream's most frequent item c is subtracted (modulo 2^(8·itemsize), read back as
signed), so the commonest value becomes 0, as deepCABAC's binarization expects: a significance
flag, a sign flag, `unary_length` greater-than-k flags, then an exp-Golomb remainder with
context-coded prefix and bypass suffix bits. Contexts depend on the previous value (zero /
negative / positive), which is how deepCABAC models the neighbourhood of a weight. The range
[-lo, hi] of the centred values is passed as the NNC "codebook" bounds (general profile 1), so
flags that the bounds decide are not coded. The encoder picks each context's initial adaptation
rate (NNC's parameter optimisation, `param_opt`; encoder-only). The stream is coded in
independent chunks of `chunk` values (contexts start afresh in each; a few bytes per chunk):
deepCABAC's decoder reads its buffer without a length, and per chunk the bytes it can read are
bounded (below), so each chunk is decoded from a zero-padded copy that is long enough whatever
the stored bytes say.

Stored bytes: mode u8 | varint n (items) | body.
- mode 0 (raw): the n items verbatim (written whenever coding would not be smaller, and for n = 0
  or values outside ±2^30 after centring);
- mode 1 (cabac): u8 unary_length | varint c | varint lo | varint hi | varint chunk | per chunk:
  varint length, deepCABAC bytes | CRC-32 (u32 LE) of everything before it. The CRC rejects
  corrupt streams before the C++ decoder sees them; each chunk must also end exactly on its
  terminating bin and decode inside [-lo, hi], else CodecError.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bytegolf.codecs.base import Codec, CodecError, StreamInfo
from bytegolf.codecs.varint import Reader, put_varint
from bytegolf.errors import ConfigError

INSTALL = (
    "python -m pip install pybind11 setuptools wheel && "
    "python -m pip install --no-deps --no-build-isolation nncodec==2.1.3"
)
RAW, CABAC = 0, 1
MAX_ABS = 1 << 30  # centred values beyond ±2^30 are stored raw (deepCABAC decodes int32)
MAX_CHUNK = 1 << 20
MAX_UNARY = 32


def _read_bytes_bound(count: int, unary: int) -> int:
    """Most bytes deepCABAC's decoder can read for `count` values, whatever the stream holds.

    Each context-coded bin reads at most one byte, a run of k bypass bins at most k/8 + 1. Per value:
    significance, sign, `unary` greater-than flags, at most 31 remainder-prefix bins, one bypass run
    of at most 31 bins (5 bytes). Before the values: 2 bytes, and per context (3 + 3 + 2·unary + 31)
    an optimised-rate flag plus 3 bypass bins; at the end the terminating bin."""
    return count * (unary + 38) + 2 * (37 + 2 * unary) + 64


def _deepcabac() -> Any:
    try:
        from nncodec.extensions import deepCABAC
    except ImportError as exc:
        raise ConfigError(f"codec deepcabac needs nncodec's deepCABAC extension ({exc}); install: {INSTALL}") from None
    return deepCABAC


def _itemsize(info: StreamInfo) -> int:
    """Bytes per coded item: the symbol stream's itemsize (1, 2, 4), else 1 (bytes)."""
    return info.itemsize if info.alphabet is not None and info.itemsize in (1, 2, 4) else 1


def _centre(x: np.ndarray, itemsize: int) -> tuple[np.ndarray, int]:
    """The items minus their most frequent value c (wrapping), as int64, and c as unsigned."""
    bits = 8 * itemsize
    u = x.view(f"<u{itemsize}")
    if itemsize <= 2:
        c = int(np.argmax(np.bincount(u, minlength=1)))
    else:
        vals, counts = np.unique(u, return_counts=True)
        c = int(vals[np.argmax(counts)])
    v = (u.astype(np.int64) - c) & ((1 << bits) - 1)
    v -= (v >= 1 << (bits - 1)).astype(np.int64) << bits
    return v, c


@dataclass(frozen=True)
class DeepCabac(Codec):
    """DeepCABAC over the stream's integers (symbols as signed itemsize integers, other data as bytes).

    unary_length: greater-than-k flags before the exp-Golomb remainder (NNC's cabac_unary_length;
    stored, so any instance decodes); chunk: values per independently coded chunk; param_opt: let
    the encoder choose each context's initial adaptation rate (encoder-only)."""

    name: ClassVar[str] = "deepcabac"
    wants_symbols: ClassVar[bool] = True  # one symbol per item, never bit-packed
    unary_length: int = 11
    chunk: int = 1 << 16
    param_opt: bool = True

    def __post_init__(self) -> None:
        for key, hi in (("unary_length", MAX_UNARY), ("chunk", MAX_CHUNK)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                raise ConfigError(f"codec deepcabac: {key} must be an int in 1..{hi}, got {value!r}")
        if not isinstance(self.param_opt, bool):
            raise ConfigError(f"codec deepcabac: param_opt must be true or false, got {self.param_opt!r}")

    def config(self) -> dict[str, Any]:
        return {"unary_length": self.unary_length, "chunk": self.chunk, "param_opt": self.param_opt}

    # ---- encoding -------------------------------------------------------------------------
    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        data = bytes(data)
        itemsize = _itemsize(info)
        if len(data) % itemsize:
            raise ConfigError(f"deepcabac: {len(data)} bytes is not a multiple of itemsize {itemsize}")
        n = len(data) // itemsize
        raw = bytearray([RAW])
        put_varint(raw, n)
        raw += data
        if n == 0:
            return bytes(raw)
        v, c = _centre(np.frombuffer(data, dtype=f"<i{itemsize}"), itemsize)
        lo, hi = -int(v.min()), int(v.max())
        if lo > MAX_ABS or hi > MAX_ABS:
            return bytes(raw)
        dc = _deepcabac()
        out = bytearray([CABAC])
        put_varint(out, n)
        out.append(self.unary_length)
        for value in (c, lo, hi, self.chunk):
            put_varint(out, value)
        v32 = v.astype(np.int32)
        hdsp = np.zeros(2, dtype=np.int8)
        for s in range(0, n, self.chunk):
            enc = dc.Encoder()
            enc.initCtxModels(self.unary_length, int(self.param_opt))
            part = np.ascontiguousarray(v32[s : s + self.chunk])
            # dq_flag 0, scan_order 0, general_profile_idc 1, no parent node, no row skip, HDSP off
            enc.encodeLayer(part, 0, 0, 1, 0, 0, np.zeros(1, np.int32), dc.HdspMode.AlwaysOff, hdsp, lo + hi + 1, lo)
            body = enc.finish().tobytes()
            put_varint(out, len(body))
            out += body
        if len(out) + 4 >= len(raw):
            return bytes(raw)
        return bytes(out) + zlib.crc32(out).to_bytes(4, "little")

    # ---- decoding -------------------------------------------------------------------------
    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        data = bytes(data)
        itemsize = _itemsize(info)
        r = Reader(data, "deepcabac")
        mode = r.byte()
        n = r.count(itemsize, raw_size, "item count")
        if mode == RAW:
            out = r.take(n * itemsize, "raw items")
            if r.pos != len(data):
                raise CodecError(f"deepcabac: {len(data) - r.pos} trailing bytes after the stream")
            return out
        if mode != CABAC:
            raise CodecError(f"deepcabac: unknown mode {mode}")
        if n == 0:
            raise CodecError("deepcabac: coded mode with no items")
        if len(data) < r.pos + 4:
            raise CodecError("deepcabac: stream ends early (checksum)")
        if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
            raise CodecError("deepcabac: checksum mismatch (corrupt, truncated or extended stream)")
        r.end = len(data) - 4
        try:
            out = self._decode(r, n, itemsize)
        except CodecError:
            raise
        except (ValueError, TypeError, OverflowError, MemoryError, IndexError, RuntimeError) as exc:
            why = str(exc).strip().rsplit(": ", 1)[-1]  # deepCABAC's own errors start with a file and line
            raise CodecError(f"deepcabac: corrupt stream ({type(exc).__name__}: {why})") from None
        if r.pos != r.end:
            raise CodecError(f"deepcabac: {r.end - r.pos} trailing bytes after the last chunk")
        return out

    def _decode(self, r: Reader, n: int, itemsize: int) -> bytes:
        unary = r.byte()
        if not 1 <= unary <= MAX_UNARY:
            raise CodecError(f"deepcabac: unary length {unary} outside 1..{MAX_UNARY}")
        bits = 8 * itemsize
        c = r.varint((1 << bits) - 1, "centre")
        lo = r.varint(MAX_ABS, "negative range")
        hi = r.varint(MAX_ABS, "positive range")
        chunk = r.varint(MAX_CHUNK, "chunk length")
        if chunk < 1:
            raise CodecError("deepcabac: chunk length 0")
        if -(-n // chunk) > r.end - r.pos:  # every chunk stores at least its length byte
            raise CodecError("deepcabac: stream ends early (more chunks than bytes)")
        dc = _deepcabac()
        hdsp = np.zeros(2, dtype=np.int8)
        size = min(chunk, n)
        scratch = np.zeros(_read_bytes_bound(size, unary), dtype=np.uint8)
        values = np.empty(size, dtype=np.int32)
        out = np.empty(n, dtype=f"<u{itemsize}")
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            length = r.varint(r.end - r.pos, "chunk bytes")
            body = r.take(length, "chunk")
            if length < 2:
                raise CodecError(f"deepcabac: chunk of {length} bytes")
            scratch[:length] = np.frombuffer(body, dtype=np.uint8)
            scratch[length:] = 0
            dec = dc.Decoder()
            dec.setStream(scratch)
            dec.initCtxModels(unary)
            part = values[:m]
            dec.decodeLayer(part, 0, 0, 1, 0, dc.HdspMode.AlwaysOff, hdsp, lo + hi + 1, lo)
            used = dec.finish()
            if used != length:
                raise CodecError(f"deepcabac: chunk decoding used {used} of its {length} bytes")
            if m and (int(part.min()) < -lo or int(part.max()) > hi):
                raise CodecError(f"deepcabac: decoded values leave the stored range [-{lo}, {hi}]")
            out[s : s + m] = ((part.astype(np.int64) + c) & ((1 << bits) - 1)).astype(out.dtype)
        return out.tobytes()
