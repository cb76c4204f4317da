"""rANS with a static categorical model whose histogram travels in the stored bytes (constriction).

The input is a symbol stream: items of `StreamInfo.itemsize` 1 or 2 bytes (uint8 / little-endian
uint16; any other itemsize is coded byte by byte) over an alphabet of `StreamInfo.alphabet` symbols
(256 / 65,536 when None). The model is built from the counts of the symbols the stream uses, so
unused symbols cost nothing, and encoder and decoder build it from the same stored integers.

Stored bytes: mode u8 | varint n (symbols) | body.
- mode 0 (raw): the n items verbatim (chosen whenever entropy coding would not be smaller);
- mode 1 (constant): varint symbol (a stream of one repeated symbol; no payload);
- mode 2 (static): symbol set | n_used varint counts | varint length | payload;
- mode 3 (rows): symbol set | varint segment length | per segment n_used varint counts (zeros
  allowed) | varint length | payload: one histogram per segment of `rows`·`chunk` symbols
  (histogram="rows"; the smallest of modes 0, 2 and 3 is written).
The payload is constriction's u32 words, little-endian, without the zero bytes that end the last
word (the decoder pads them back).
Symbol set: 0 | varint k | varint first | k-1 varint gaps-1 (sparse), or 1 | varint m | bitmap of
m bits (dense, symbols 0..m-1); the smaller is written. `side_info_bytes(stored)` returns the
length of everything before the payload (header plus histograms).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import constriction
import numpy as np

from bytegolf.codecs.base import Codec, CodecError, StreamInfo
from bytegolf.codecs.varint import Reader, put_varint, varints
from bytegolf.errors import ConfigError

HISTOGRAMS = ("stream", "rows")
RAW, CONSTANT, STATIC, ROWS = 0, 1, 2, 3


def _symbol_set(used: np.ndarray) -> bytes:
    """The sorted used symbols, sparse (gaps) or dense (bitmap), whichever is shorter."""
    out = bytearray([0])
    put_varint(out, used.size)
    if used.size:
        out += varints(np.concatenate([used[:1], np.diff(used) - 1]))
    m = int(used[-1]) + 1 if used.size else 0
    bitmap = np.zeros(m, dtype=np.uint8)
    bitmap[used] = 1
    dense = bytearray([1])
    put_varint(dense, m)
    dense += np.packbits(bitmap, bitorder="little").tobytes()
    return bytes(out) if len(out) <= len(dense) else bytes(dense)


def _read_symbol_set(r: Reader, alphabet: int) -> np.ndarray:
    kind = r.byte()
    if kind == 0:
        k = r.varint(alphabet, "symbol count")
        used = np.cumsum(r.varints(k, alphabet, "symbol gap") + 1) - 1
    elif kind == 1:
        m = r.varint(alphabet, "bitmap length")
        bits = np.unpackbits(np.frombuffer(r.take((m + 7) // 8, "symbol bitmap"), np.uint8), bitorder="little")
        if bits[m:].any():
            raise CodecError("ans: symbol bitmap has bits set past its length")
        used = np.flatnonzero(bits[:m])
    else:
        raise CodecError(f"ans: unknown symbol-set kind {kind}")
    if used.size == 0 or int(used[-1]) >= alphabet:
        raise CodecError(f"ans: symbol set is empty or leaves the alphabet of {alphabet}")
    return used.astype(np.int64)


def _model(counts: np.ndarray) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _payload(coder: constriction.stream.stack.AnsCoder) -> bytes:
    """varint length + the coder's words (u32 LE) without the zero bytes ending the last word."""
    payload = coder.get_compressed().astype("<u4").tobytes().rstrip(b"\0")  # the last word is never 0
    out = bytearray()
    put_varint(out, len(payload))
    return bytes(out) + payload


def _symbols(data: bytes, info: StreamInfo) -> tuple[np.ndarray, int, int]:
    """The items as integers, the item size used (1 or 2) and the alphabet."""
    itemsize = info.itemsize if info.itemsize in (1, 2) else 1
    limit = 1 << (8 * itemsize)
    alphabet = min(info.alphabet or limit, limit) if itemsize == info.itemsize else limit
    if len(data) % itemsize:
        raise ConfigError(f"ans: {len(data)} bytes is not a multiple of itemsize {itemsize}")
    return np.frombuffer(data, dtype="u1" if itemsize == 1 else "<u2"), itemsize, alphabet


@dataclass(frozen=True)
class Ans(Codec):
    """rANS over the stream's symbols with one stored histogram ("stream") or one per segment of
    `rows` consecutive chunks of `chunk` symbols ("rows"; e.g. chunk = row length of a matrix)."""

    name: ClassVar[str] = "ans"
    wants_symbols: ClassVar[bool] = True  # the layout hands this codec one symbol per item, never bit-packed
    histogram: str = "stream"
    rows: int = 64
    chunk: int = 512

    def __post_init__(self) -> None:
        if self.histogram not in HISTOGRAMS:
            raise ConfigError(f"codec ans: histogram must be one of {HISTOGRAMS}, got {self.histogram!r}")
        for key in ("rows", "chunk"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 30:
                raise ConfigError(f"codec ans: {key} must be a positive int, got {value!r}")

    # ---- encoding -------------------------------------------------------------------------
    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        x, _, alphabet = _symbols(data, info)
        n = x.size
        raw = bytearray([RAW])
        put_varint(raw, n)
        raw += data
        if n == 0:
            return bytes(raw)
        counts = np.bincount(x, minlength=alphabet)
        if counts.size > alphabet:
            top = int(np.flatnonzero(counts)[-1])
            raise ConfigError(f"ans: symbol {top} is outside the alphabet of {alphabet}")
        used = np.flatnonzero(counts)
        if used.size == 1:
            head = bytearray([CONSTANT])
            put_varint(head, n)
            put_varint(head, int(used[0]))
            return bytes(head)
        lut = np.zeros(alphabet, dtype=np.int32)
        lut[used] = np.arange(used.size, dtype=np.int32)
        idx = lut[x]
        prefix = bytearray()
        put_varint(prefix, n)
        prefix += _symbol_set(used)
        options = [bytes(raw), self._static(prefix, idx, counts[used])]
        seg = self.rows * self.chunk
        if self.histogram == "rows" and -(-n // seg) * used.size < len(data):  # else its counts alone exceed raw
            options.append(self._rows(prefix, idx, used.size, seg))
        return min(options, key=len)  # ties: raw, then static

    @staticmethod
    def _static(prefix: bytes, idx: np.ndarray, counts: np.ndarray) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(idx, _model(counts))
        return bytes([STATIC]) + prefix + varints(counts) + _payload(coder)

    @staticmethod
    def _rows(prefix: bytes, idx: np.ndarray, k: int, seg: int) -> bytes:
        head = bytearray([ROWS]) + prefix
        put_varint(head, seg)
        starts = range(0, idx.size, seg)
        seg_counts = [np.bincount(idx[s : s + seg], minlength=k) for s in starts]
        head += varints(np.concatenate(seg_counts))
        coder = constriction.stream.stack.AnsCoder()
        for s, c in zip(reversed(starts), reversed(seg_counts), strict=True):
            present = np.flatnonzero(c)
            if present.size > 1:
                local = np.cumsum(c > 0, dtype=np.int32) - 1
                coder.encode_reverse(local[idx[s : s + seg]], _model(c[present]))
        return bytes(head) + _payload(coder)

    # ---- decoding -------------------------------------------------------------------------
    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        try:
            return self._decompress(bytes(data), raw_size, info)
        except CodecError:
            raise
        except (ValueError, TypeError, OverflowError, MemoryError, IndexError) as exc:
            raise CodecError(f"ans: corrupt stream ({type(exc).__name__}: {exc})") from None
        except BaseException as exc:  # constriction's Rust panics arrive as pyo3 PanicException(BaseException)
            if type(exc).__name__ == "PanicException":
                raise CodecError(f"ans: corrupt stream ({exc})") from None
            raise

    def _decompress(self, data: bytes, raw_size: int, info: StreamInfo) -> bytes:
        itemsize = info.itemsize if info.itemsize in (1, 2) else 1
        limit = 1 << (8 * itemsize)
        alphabet = min(info.alphabet or limit, limit) if itemsize == info.itemsize else limit
        r = Reader(data, "ans")
        mode = r.byte()
        n = r.count(itemsize, raw_size, "symbol count")
        if mode == RAW:
            out = r.take(n * itemsize, "raw symbols")
        elif mode == CONSTANT:
            if n == 0:
                raise CodecError("ans: constant mode with no symbols")
            sym = r.varint(alphabet - 1, "constant symbol")
            out = np.full(n, sym, dtype="u1" if itemsize == 1 else "<u2").tobytes()
        elif mode in (STATIC, ROWS):
            out = self._decode_ans(r, mode, n, itemsize, alphabet)
        else:
            raise CodecError(f"ans: unknown mode {mode}")
        if r.pos != len(data):
            raise CodecError(f"ans: {len(data) - r.pos} trailing bytes after the stream")
        return out

    def _decode_ans(self, r: Reader, mode: int, n: int, itemsize: int, alphabet: int) -> bytes:
        if n < 2:
            raise CodecError(f"ans: entropy-coded mode with {n} symbols")
        used = _read_symbol_set(r, alphabet)
        if mode == STATIC:
            counts = r.varints(used.size, n, "count")
            if int(counts.sum()) != n or not counts.all():
                raise CodecError(f"ans: histogram counts sum to {int(counts.sum())}, expected {n} (or hold zeros)")
            segments = [(n, counts)]
        else:
            seg = r.varint(1 << 40, "segment length")
            if seg < 1:
                raise CodecError("ans: segment length 0")
            nseg = -(-n // seg)
            if nseg * used.size > len(r.data):  # each count takes at least one byte
                raise CodecError("ans: stream ends early (segment histograms)")
            flat = r.varints(nseg * used.size, seg, "count").reshape(nseg, used.size)
            sizes = [min(seg, n - i * seg) for i in range(nseg)]
            if any(int(c.sum()) != s for c, s in zip(flat, sizes, strict=True)):
                raise CodecError("ans: segment histogram counts do not sum to the segment length")
            segments = list(zip(sizes, flat, strict=True))
        nbytes = r.varint(len(r.data), "payload length")
        payload = r.take(nbytes, "ANS payload")
        if not payload or payload[-1] == 0:
            raise CodecError("ans: entropy-coded payload is empty or ends in a zero byte")
        words = np.frombuffer(payload + bytes(-nbytes % 4), dtype="<u4").astype(np.uint32)
        coder = constriction.stream.stack.AnsCoder(words)
        out = np.empty(n, dtype="u1" if itemsize == 1 else "<u2")
        pos = 0
        for size, c in segments:
            present = np.flatnonzero(c)
            if present.size == 1:
                out[pos : pos + size] = used[present[0]]
            else:
                local = coder.decode(_model(c[present]), size)
                if local.size != size or int(local.max()) >= present.size or int(local.min()) < 0:
                    raise CodecError("ans: decoder produced symbols outside the model")
                out[pos : pos + size] = used[present][local]
            pos += size
        if not coder.is_empty():
            raise CodecError("ans: compressed words left over or inconsistent after decoding every symbol")
        return out.tobytes()


def side_info_bytes(stored: bytes) -> int:
    """Bytes of an ans stream that are not ANS payload words: mode, length and histograms."""
    r = Reader(stored, "ans")
    mode = r.byte()
    n = r.varint(1 << 62, "symbol count")
    if mode in (RAW, CONSTANT):
        return len(stored) if mode == CONSTANT else r.pos
    used = _read_symbol_set(r, 1 << 16)
    if mode == STATIC:
        r.varints(used.size, n, "count")
    else:
        seg = r.varint(1 << 40, "segment length")
        r.varints(-(-n // seg) * used.size, seg, "count")
    r.varint(len(stored), "payload length")
    return r.pos
