"""Layout: how format streams become codec inputs (packing, grouping, order) and back."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from entropy_codecs import StreamInfo
from formats.base import Encoded, Stream, TensorSpec
from harness.container import Blob
from harness.errors import ArtifactError, ConfigError

GROUPINGS = ("tensor", "role", "all")
FLOAT_DTYPES = {"float16": "<f2", "float32": "<f4"}
SYMBOL_DTYPES = {"uint8": "u1", "uint16": "<u2", "uint32": "<u4"}


@dataclass
class LayoutConfig:
    """grouping: one codec call per stream ("tensor"), per role and dtype ("role"), or one for everything ("all")."""

    grouping: str = "tensor"

    def __post_init__(self) -> None:
        if self.grouping not in GROUPINGS:
            raise ConfigError(f"unknown layout grouping {self.grouping!r}; choose one of {GROUPINGS}")


def _serial_dtype(s: Stream) -> str:
    """Storage dtype: symbols in the narrowest unsigned type, floats as they are."""
    if s.alphabet is not None:
        if s.data.size and (int(s.data.min()) < 0 or int(s.data.max()) >= s.alphabet):
            raise ConfigError(f"{s.role} stream holds symbols outside its alphabet of {s.alphabet}")
        return "uint8" if s.alphabet <= 256 else "uint16" if s.alphabet <= 65536 else "uint32"
    name = s.data.dtype.name
    if name in FLOAT_DTYPES or name in SYMBOL_DTYPES or name in ("int8", "int16", "int32", "int64"):
        return name
    raise ConfigError(f"{s.role} stream has unsupported dtype {name}")


def _np_dtype(name: str) -> np.dtype:
    table = {**FLOAT_DTYPES, **SYMBOL_DTYPES, "int8": "i1", "int16": "<i2", "int32": "<i4", "int64": "<i8"}
    if name not in table:
        raise ArtifactError(f"stream dtype {name!r} is not a storage dtype")
    return np.dtype(table[name])


def storage_itemsize(dtype: str) -> int:
    """Bytes per element of a manifest storage dtype."""
    return _np_dtype(dtype).itemsize


def pack(
    units: list[Encoded], codec: str, codec_params: dict[str, Any], cfg: LayoutConfig
) -> tuple[list[dict], list[Blob]]:
    """Manifest entries for the units and the blobs holding their streams, in a stable order."""
    groups: dict[Any, list[tuple[int, str, bytes, int, int | None]]] = defaultdict(list)
    order: list[Any] = []
    entries = []
    for ui, unit in enumerate(units):
        streams = []
        for sname, s in unit.streams.items():
            dt = _serial_dtype(s)
            raw = np.ascontiguousarray(s.data.astype(_np_dtype(dt), copy=False)).tobytes()
            key = (ui, sname) if cfg.grouping == "tensor" else (s.role, dt) if cfg.grouping == "role" else "all"
            if key not in groups:
                order.append(key)
            groups[key].append((ui, sname, raw, _np_dtype(dt).itemsize, s.alphabet))
            streams.append(
                {"name": sname, "role": s.role, "dtype": dt, "shape": list(s.data.shape), "alphabet": s.alphabet}
            )
        entries.append(
            {
                "format": unit.format,
                "meta": unit.meta,
                "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in unit.tensors],
                "streams": streams,
            }
        )
    blobs = []
    where: dict[tuple[int, str], tuple[int, int]] = {}
    for bi, key in enumerate(order):
        offset, parts = 0, []
        itemsizes, alphabets = set(), []
        for ui, sname, raw, itemsize, alphabet in groups[key]:
            where[(ui, sname)] = (bi, offset)
            parts.append(raw)
            offset += len(raw)
            itemsizes.add(itemsize)
            alphabets.append(alphabet)
        itemsize = itemsizes.pop() if len(itemsizes) == 1 else 1
        alphabet = max(alphabets) if all(a is not None for a in alphabets) and itemsize <= 2 else None
        blobs.append(Blob(codec, dict(codec_params), b"".join(parts), StreamInfo(itemsize, alphabet)))
    for ui, entry in enumerate(entries):
        for st in entry["streams"]:
            st["blob"], st["offset"] = where[(ui, st["name"])]
    return entries, blobs


def _int(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise ArtifactError(f"{what} must be a non-negative integer, got {v!r}")
    return v


def unpack(entries: Any, blobs: list[bytes]) -> list[Encoded]:
    """Rebuild the units' streams from manifest entries and decompressed blobs, checking every field."""
    if not isinstance(entries, list):
        raise ArtifactError("manifest 'units' must be a list")
    units = []
    for ui, e in enumerate(entries):
        try:
            tensors = [
                TensorSpec(str(t["name"]), tuple(_int(d, "tensor dim") for d in t["shape"]), str(t["dtype"]))
                for t in e["tensors"]
            ]
            for t in tensors:
                if t.dtype not in (
                    "float32",
                    "float16",
                    "bfloat16",
                    "int64",
                    "int32",
                    "int16",
                    "int8",
                    "uint8",
                    "bool",
                ):
                    raise ArtifactError(f"tensor {t.name}: unknown dtype {t.dtype!r}")
            streams = {}
            for st in e["streams"]:
                dt = _np_dtype(st["dtype"])
                shape = tuple(_int(d, "stream dim") for d in st["shape"])
                bi, off = _int(st["blob"], "blob index"), _int(st["offset"], "stream offset")
                if bi >= len(blobs):
                    raise ArtifactError(f"stream {st['name']} points to blob {bi} of {len(blobs)}")
                nbytes = math.prod(shape) * dt.itemsize
                if off + nbytes > len(blobs[bi]):
                    raise ArtifactError(f"stream {st['name']} runs past the end of blob {bi}")
                data = np.frombuffer(blobs[bi], dtype=dt, count=math.prod(shape), offset=off).reshape(shape)
                alphabet = st["alphabet"]
                if alphabet is not None:
                    alphabet = _int(alphabet, "alphabet")
                    if data.size and int(data.max()) >= alphabet:
                        raise ArtifactError(f"stream {st['name']} holds a symbol outside its alphabet of {alphabet}")
                streams[str(st["name"])] = Stream(
                    data.astype(dt.newbyteorder("="), copy=False), str(st["role"]), alphabet
                )
            meta = e["meta"]
            if not isinstance(meta, dict):
                raise ArtifactError("unit meta must be an object")
            units.append(Encoded(str(e["format"]), tensors, streams, meta))
        except ArtifactError as exc:
            raise ArtifactError(f"unit {ui}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"unit {ui}: malformed manifest entry ({type(exc).__name__}: {exc})") from None
    return units
