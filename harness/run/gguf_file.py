"""Real GGUF files from kquant blocks, and back: the llama.cpp-loadable twin of a kquant artifact.

A run with `gguf: true` (the gguf_* presets) writes model.gguf beside its artifact (gguf_tensors: every
kquant unit's blocks verbatim, every passthrough tensor as F16 or F32 as it is stored), checks that gguf-py
reads back the decoded model bit for bit (verify_gguf) and counts the GGUF file's size
(bytegolf.run.point.run_point).

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
import torch

from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats.arrays import from_numpy
from bytegolf.formats.base import Encoded
from bytegolf.formats.kquant import LAYOUTS
from bytegolf.formats.passthrough import STORAGE

FLOAT_TYPES = {"F32": np.float32, "F16": np.float16}
PASSTHROUGH_TYPES = {"fp16": "F16", "fp32": "F32", "bf16": "F32"}  # bf16 widens to F32 exactly
GGUF_NAME = "model.gguf"


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
    """Every tensor of a GGUF file dequantized to float32 by gguf-py, in its numpy shape; a file gguf-py cannot
    read (bad magic, truncated, inconsistent header) raises ArtifactError naming it."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(Path(path))
        out = {}
        for t in reader.tensors:
            values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
            out[t.name] = np.array(values, np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))  # a copy
    except (ValueError, KeyError, IndexError, TypeError, OSError, NotImplementedError) as e:
        raise ArtifactError(f"GGUF file {path} is unreadable: {type(e).__name__}: {e}") from e
    return out


def gguf_tensors(units: list[Encoded]) -> dict[str, tuple[Any, str, tuple[int, ...]]]:
    """write_gguf's tensors for an encoding: each kquant unit's blocks as they are, each passthrough tensor as it
    is stored (fp16: F16; fp32, bf16: F32). Any other format has no GGUF type: ConfigError naming the tensors."""
    out: dict[str, tuple[Any, str, tuple[int, ...]]] = {}
    other = []
    for u in units:
        if u.format == "kquant":
            out[u.tensors[0].name] = blocks_of(u)
        elif u.format == "passthrough" and u.meta.get("storage") in PASSTHROUGH_TYPES:
            (spec,) = u.tensors
            qtype = PASSTHROUGH_TYPES[u.meta["storage"]]
            data = from_numpy(u.streams["fp"].data, STORAGE[u.meta["storage"]])
            values = data.to(torch.float32).numpy() if qtype == "F32" else data.numpy()
            out[spec.name] = (values, qtype, tuple(spec.shape))
        else:
            other += [f"{t.name} ({u.format} {u.meta.get('storage', '')})".replace(" )", ")") for t in u.tensors]
    if other:
        raise ConfigError(
            "gguf: true writes kquant blocks and fp16/fp32 passthrough tensors only; these have no GGUF type: "
            + ", ".join(other[:5])
            + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        )
    return out


def verify_gguf(path: str | os.PathLike[str], decoded: dict[str, torch.Tensor]) -> None:
    """gguf-py's dequantization of every tensor in the file, cast to the decoded tensor's dtype, equals the
    decoded model bit for bit, and the file holds exactly its tensors; else ArtifactError."""
    back = read_gguf(path)
    if set(back) != set(decoded):
        missing, extra = sorted(set(decoded) - set(back)), sorted(set(back) - set(decoded))
        raise ArtifactError(f"GGUF file {path}: tensors missing {missing[:5]}, unexpected {extra[:5]}")
    for name, want in decoded.items():
        got = torch.from_numpy(back[name])
        if tuple(got.shape) != tuple(want.shape):
            raise ArtifactError(f"GGUF file {path}: {name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        got = got.to(want.dtype)
        if not torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)):
            bad = int((got != want).sum())
            raise ArtifactError(
                f"GGUF file {path}: gguf-py's dequantization of {name} differs from the decoded model "
                f"in {bad} of {want.numel()} values"
            )
