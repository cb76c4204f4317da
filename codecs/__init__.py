"""Entropy codecs: bytes (or symbol arrays) to bytes and back. Codecs never see tensors or formats."""

from bytegolf.codecs.base import REGISTRY, Codec, CodecError, StreamInfo, get_codec

__all__ = ["REGISTRY", "Codec", "CodecError", "StreamInfo", "get_codec"]
