"""Content fingerprints of files: the keys that caches are checked against."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_fingerprint(path: str | Path) -> str:
    """16 hex digits of the SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
