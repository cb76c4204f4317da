"""The codec protocol and registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from bytegolf.errors import ArtifactError
from bytegolf.registry import Registry, instantiate


class CodecError(ArtifactError):
    """Compressed data that cannot be decoded within its declared size."""


@dataclass(frozen=True)
class StreamInfo:
    """What a codec may know of its input: bytes per item and, for symbol streams, the alphabet."""

    itemsize: int = 1
    alphabet: int | None = None


class Codec:
    """Base class: subclasses set `name` and implement compress/decompress.

    decompress must return exactly `raw_size` bytes or raise CodecError, and must never
    produce (or allocate for) more than raw_size bytes, whatever the input says.
    """

    name: ClassVar[str] = ""

    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        raise NotImplementedError

    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Parameters needed to describe this codec in a manifest (JSON-able)."""
        return dict(vars(self))


def check_stream_end(codec: str, out: bytes, raw_size: int, eof: bool, trailing: int) -> bytes:
    """`out` if the stream ended exactly after raw_size decoded bytes; otherwise CodecError saying how not."""
    if len(out) > raw_size:
        raise CodecError(f"{codec}: stream decodes to more than the expected {raw_size} bytes")
    if not eof:
        raise CodecError(f"{codec}: stream ends early ({len(out)} of {raw_size} bytes decoded)")
    if trailing:
        raise CodecError(f"{codec}: {trailing} trailing bytes after the stream")
    if len(out) != raw_size:
        raise CodecError(f"{codec}: stream decodes to {len(out)} bytes, expected {raw_size}")
    return out


BUILTIN: dict[str, str] = {
    "raw": "bytegolf.codecs.raw:Raw",
    "zlib": "bytegolf.codecs.zlib_codec:Zlib",
    "lzma": "bytegolf.codecs.lzma_codec:Lzma",
    "zstd": "bytegolf.codecs.zstd_codec:Zstd",
    "brotli": "bytegolf.codecs.brotli_codec:Brotli",
    "ans": "bytegolf.codecs.ans:Ans",
    "zpaq": "bytegolf.codecs.zpaq_codec:Zpaq",
    "deepcabac": "bytegolf.codecs.deepcabac:DeepCabac",
    "best": "bytegolf.codecs.best:Best",
}

# The built-ins plus the `bytegolf.codecs` entry points of installed distributions (a built-in wins a clash).
REGISTRY = Registry("codec", "bytegolf.codecs", BUILTIN, base=Codec)


def get_codec(name: str, **params: Any) -> Codec:
    """Instantiate a registered codec by name (lazy import)."""
    return instantiate(REGISTRY, "codec", name, params)
