"""The identity codec: stored bytes are the raw bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bytegolf.codecs.base import Codec, CodecError, StreamInfo


@dataclass(frozen=True)
class Raw(Codec):
    """No compression; useful as a baseline and for already-compressed streams."""

    name: ClassVar[str] = "raw"

    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        return bytes(data)

    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        if len(data) != raw_size:
            raise CodecError(f"raw: stored {len(data)} bytes, expected {raw_size}")
        return bytes(data)
