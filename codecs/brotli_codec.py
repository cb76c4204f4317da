"""Brotli, the codec of the leading Parameter Golf records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import brotli

from bytegolf.codecs.base import Codec, CodecError, StreamInfo
from bytegolf.errors import ConfigError


@dataclass(frozen=True)
class Brotli(Codec):
    """brotli at `quality` 0..11 with a 2^`lgwin`-byte window (lgwin 10..24).

    Decoding overshoots raw_size by at most one of the library's output blocks (32 KiB) before it stops.
    """

    name: ClassVar[str] = "brotli"
    quality: int = 11
    lgwin: int = 24

    def __post_init__(self) -> None:
        for key, lo, hi in (("quality", 0, 11), ("lgwin", 10, 24)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"codec brotli: {key} must be an int in {lo}..{hi}, got {value!r}")

    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        return brotli.compress(data, quality=self.quality, lgwin=self.lgwin)

    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        chunks, n = [], 0
        try:
            d = brotli.Decompressor()
            # A limit of 1 makes each call return one output block, so the loop stops soon after raw_size.
            out = d.process(data, output_buffer_limit=1)
            while True:
                chunks.append(out)
                n += len(out)
                if n > raw_size:
                    raise CodecError(f"brotli: stream decodes to more than the expected {raw_size} bytes")
                if d.is_finished():
                    break
                if not out:  # the decoder wants input that is not there
                    raise CodecError(f"brotli: stream ends early ({n} of {raw_size} bytes decoded)")
                out = d.process(b"", output_buffer_limit=1)
        except CodecError:
            raise
        except (brotli.error, ValueError, MemoryError, OverflowError) as exc:
            raise CodecError(f"brotli: corrupt stream ({exc})") from None
        if n != raw_size:
            raise CodecError(f"brotli: stream decodes to {n} bytes, expected {raw_size}")
        return b"".join(chunks)
