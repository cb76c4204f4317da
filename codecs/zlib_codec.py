"""zlib (DEFLATE in the zlib wrapper), the Parameter Golf baseline codec."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import ClassVar

from bytegolf.codecs.base import Codec, CodecError, StreamInfo, check_stream_end
from bytegolf.errors import ConfigError


@dataclass(frozen=True)
class Zlib(Codec):
    """zlib at `level` 0..9 (zlib.compress format: 2-byte header, Adler-32 trailer)."""

    name: ClassVar[str] = "zlib"
    level: int = 9

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not 0 <= self.level <= 9:
            raise ConfigError(f"codec zlib: level must be an int in 0..9, got {self.level!r}")

    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        return zlib.compress(data, self.level)

    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        try:
            d = zlib.decompressobj()
            out = d.decompress(data, raw_size + 1)
        except (zlib.error, ValueError, MemoryError, OverflowError) as exc:
            raise CodecError(f"zlib: corrupt stream ({exc})") from None
        return check_stream_end("zlib", out, raw_size, d.eof, len(d.unused_data))
