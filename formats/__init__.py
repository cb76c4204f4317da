"""Weight formats: each turns tensors into named streams plus JSON-able meta, and back."""

from bytegolf.formats.base import REGISTRY, EncodeContext, Encoded, Format, Stream, TensorSpec, get_format

__all__ = ["REGISTRY", "EncodeContext", "Encoded", "Format", "Stream", "TensorSpec", "get_format"]
