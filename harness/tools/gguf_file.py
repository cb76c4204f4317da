"""Real GGUF files from kquant blocks, and back: the llama.cpp-loadable twin of a kquant artifact.

write_gguf(path, named_blocks) writes tensors with their GGML types through gguf-py's GGUFWriter
(block bytes stored verbatim, F32 / F16 arrays as floats) and returns the file's size on disk;
read_gguf(path) dequantizes every tensor with gguf-py's own reader and `gguf.quants.dequantize`.
named_blocks maps a tensor name to (data, type, shape): data the block bytes (bytes or a uint8
array, as `bytegolf.formats.kquant.quantize` returns them) for a block type, or the values for
F32 / F16; shape is the tensor's numpy shape (the last axis is the row). blocks_of(encoded) gives
that triple for a kquant Encoded unit. Only a metadata-free file (architecture "bytegolf"): a GGUF
that llama.cpp can run also needs the model's hyperparameters and tokenizer.

Needs the optional package gguf (`pip install "gguf==0.19.0"`), imported on first use only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bytegolf.errors import ConfigError
from bytegolf.formats.base import Encoded
from bytegolf.formats.kquant import LAYOUTS

FLOAT_TYPES = {"F32": np.float32, "F16": np.float16}


def _gguf() -> Any:
    """The gguf module, or ConfigError saying how to install it."""
    try:
        import gguf
    except ImportError as e:
        raise ConfigError('GGUF files need the gguf package: pip install "gguf==0.19.0"') from e
    return gguf


def blocks_of(enc: Encoded) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """(block bytes, type, shape) of a kquant unit, whether its blocks are one stream or one per field."""
    (spec,) = enc.tensors
    qtype = enc.meta["type"]
    _, size, fields = LAYOUTS[qtype]
    if enc.meta.get("fields"):
        parts = [np.ascontiguousarray(enc.streams[f].data).view(np.uint8).reshape(-1, w) for f, w in fields]
        data = np.concatenate(parts, axis=1)
    else:
        data = np.ascontiguousarray(enc.streams["blocks"].data, dtype=np.uint8).reshape(-1, size)
    return data, qtype, tuple(spec.shape)


def write_gguf(path: str | os.PathLike[str], named_blocks: dict[str, tuple[Any, str, tuple[int, ...]]]) -> int:
    """Write the tensors into a GGUF file at path; its size in bytes."""
    gguf = _gguf()
    writer = gguf.GGUFWriter(Path(path), "bytegolf")
    for name, (data, qtype, shape) in named_blocks.items():
        shape = tuple(int(s) for s in shape)
        if qtype in FLOAT_TYPES:
            arr = np.ascontiguousarray(data, dtype=FLOAT_TYPES[qtype]).reshape(shape)
            writer.add_tensor(name, arr)
            continue
        if qtype not in LAYOUTS:
            raise ConfigError(f"gguf_file: tensor {name} has type {qtype!r}; use F32, F16 or {', '.join(LAYOUTS)}")
        block, size, _ = LAYOUTS[qtype]
        if not shape or shape[-1] % block:
            raise ConfigError(f"gguf_file: tensor {name} of shape {shape} has rows not a multiple of {block}")
        raw = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data, np.uint8)
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        row_bytes = shape[-1] // block * size
        if raw.size != rows * row_bytes:
            raise ConfigError(
                f"gguf_file: tensor {name} has {raw.size} bytes, {qtype} {shape} needs {rows * row_bytes}"
            )
        writer.add_tensor(name, raw.reshape(*shape[:-1], row_bytes), raw_dtype=gguf.GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return os.path.getsize(path)


def read_gguf(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file dequantized to float32 by gguf-py, in its numpy shape."""
    gguf = _gguf()
    reader = gguf.GGUFReader(Path(path))
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = np.asarray(values, np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))
    return out
