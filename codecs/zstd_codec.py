"""Zstandard, single frame, optionally with long-distance matching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import zstandard

from bytegolf.codecs.base import Codec, CodecError, StreamInfo
from bytegolf.errors import ConfigError

_LONG_WINDOW_LOG = 27
_READ_CHUNK = 1 << 20


def _frame_size(data: bytes) -> int:
    """Compressed length of the zstd frame at the start of `data` (which may be shorter or longer)."""
    pos = zstandard.frame_header_size(data)
    checksum = zstandard.get_frame_parameters(data).has_checksum
    while True:
        if pos + 3 > len(data):
            raise CodecError(f"zstd: stream ends early (block header at {pos} past {len(data)} bytes)")
        header = int.from_bytes(data[pos : pos + 3], "little")
        kind, size = (header >> 1) & 3, header >> 3
        if kind == 3:
            raise CodecError(f"zstd: reserved block type at byte {pos}")
        pos += 3 + (1 if kind == 1 else size)
        if header & 1:
            return pos + 4 * checksum


@dataclass(frozen=True)
class Zstd(Codec):
    """zstd at `level` 1..22; `long` enables long-distance matching with a 2^27-byte window."""

    name: ClassVar[str] = "zstd"
    level: int = 19
    long: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not 1 <= self.level <= 22:
            raise ConfigError(f"codec zstd: level must be an int in 1..22, got {self.level!r}")
        if not isinstance(self.long, bool):
            raise ConfigError(f"codec zstd: long must be a bool, got {self.long!r}")

    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        if self.long:
            params = zstandard.ZstdCompressionParameters.from_level(
                self.level, source_size=len(data), window_log=_LONG_WINDOW_LOG, enable_ldm=True
            )
            cctx = zstandard.ZstdCompressor(compression_params=params)
        else:
            cctx = zstandard.ZstdCompressor(level=self.level)
        return cctx.compress(data)

    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        try:
            end = _frame_size(data)
            if end > len(data):
                raise CodecError(f"zstd: stream ends early (frame needs {end} bytes, got {len(data)})")
            if end < len(data):
                raise CodecError(f"zstd: {len(data) - end} trailing bytes after the frame")
            dctx = zstandard.ZstdDecompressor(max_window_size=1 << _LONG_WINDOW_LOG)
            chunks, n = [], 0
            with dctx.stream_reader(data, read_across_frames=False) as reader:
                while n <= raw_size:  # read in bounded chunks: the frame's declared size is not trusted
                    chunk = reader.read(min(_READ_CHUNK, raw_size + 1 - n))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    n += len(chunk)
        except CodecError:
            raise
        except (zstandard.ZstdError, ValueError, MemoryError, OverflowError) as exc:
            raise CodecError(f"zstd: corrupt stream ({exc})") from None
        if n > raw_size:
            raise CodecError(f"zstd: stream decodes to more than the expected {raw_size} bytes")
        if n != raw_size:
            raise CodecError(f"zstd: stream decodes to {n} bytes, expected {raw_size}")
        return b"".join(chunks)
