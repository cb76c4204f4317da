"""Token shards in Parameter Golf's format: 256 int32 header words, then uint16 tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bytegolf.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write tokens (all < 65536) to a shard file."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 0xFFFF):
        raise DataError(f"{path}: token ids must fit in uint16")
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype("<u2").tobytes())


def read_shard(path: str | Path) -> np.ndarray:
    """Read one shard, checking magic, version and length; returns uint16 tokens."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"shard not found: {path}")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"{path}: shorter than the {HEADER_BYTES}-byte shard header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_WORDS)
    if int(header[0]) != MAGIC or int(header[1]) != VERSION:
        raise DataError(f"{path}: not a Parameter Golf shard (magic {header[0]}, version {header[1]})")
    n = int(header[2])
    if size != HEADER_BYTES + 2 * n:
        raise DataError(f"{path}: header promises {n} tokens but the file holds {(size - HEADER_BYTES) / 2:g}")
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)


def read_shards(paths: list[Path]) -> np.ndarray:
    """Concatenate several shards in the given order."""
    if not paths:
        raise DataError("no shard files given")
    return np.concatenate([read_shard(p) for p in paths])
