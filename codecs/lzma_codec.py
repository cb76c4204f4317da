"""LZMA2 in raw format (no .xz container: the artifact has its own sizes and CRCs)."""

from __future__ import annotations

import lzma
from dataclasses import dataclass
from typing import Any, ClassVar

from bytegolf.codecs.base import Codec, CodecError, StreamInfo, check_stream_end
from bytegolf.errors import ConfigError

_DICT_MIN = 4096
_PRESET_DICT = [1 << k for k in (18, 20, 21, 22, 22, 23, 23, 24, 25, 26)]  # xz(1) presets 0..9


@dataclass(frozen=True)
class Lzma(Codec):
    """LZMA2 with xz `preset` 0..9, optionally `extreme`.

    The dictionary is shrunk to the input size: that bounds memory (encoder and decoder), not the stream.
    """

    name: ClassVar[str] = "lzma"
    preset: int = 9
    extreme: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.preset, bool) or not isinstance(self.preset, int) or not 0 <= self.preset <= 9:
            raise ConfigError(f"codec lzma: preset must be an int in 0..9, got {self.preset!r}")
        if not isinstance(self.extreme, bool):
            raise ConfigError(f"codec lzma: extreme must be a bool, got {self.extreme!r}")

    def _filters(self, size: int) -> list[dict[str, Any]]:
        preset = self.preset | (lzma.PRESET_EXTREME if self.extreme else 0)
        dict_size = min(_PRESET_DICT[self.preset], max(size, _DICT_MIN))
        return [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": dict_size}]

    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=self._filters(len(data)))

    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        try:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=self._filters(raw_size))
            out = d.decompress(data, max_length=raw_size + 1)
        except (lzma.LZMAError, ValueError, MemoryError, OverflowError) as exc:
            raise CodecError(f"lzma: corrupt stream ({exc})") from None
        return check_stream_end("lzma", out, raw_size, d.eof, len(d.unused_data))
