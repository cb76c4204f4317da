"""Content fingerprints of files: the keys that caches are checked against."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path


def file_fingerprint(path: str | Path) -> str:
    """16 hex digits of the SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes, or "missing" where there is no such file."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return "missing"


def files_fingerprint(paths: Iterable[str | Path], digest: Callable[[Path], str] | None = None) -> str:
    """16 hex digits of the SHA-256 over files' absolute paths and contents, in sorted path order (the order and
    repeats of `paths` do not matter). A missing file counts by its path. digest(path) gives a file's content
    digest (default file_digest: its bytes now); a caller may pass one that remembers the bytes it first saw."""
    h = hashlib.sha256()
    for p in sorted({Path(p).resolve() for p in paths}, key=str):
        h.update(f"{p}\0{(digest or file_digest)(p)}\n".encode())
    return h.hexdigest()[:16]
