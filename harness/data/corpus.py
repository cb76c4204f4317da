"""Text corpora: the default (this interpreter's standard-library sources) or any glob."""

from __future__ import annotations

import glob
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from bytegolf.errors import DataError


@dataclass(frozen=True)
class Document:
    """One text document and the key that decides its split and order."""

    key: str
    text: str


def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's own .py files (site-packages excluded), sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    return root, files


def load_documents(pattern: str | None = None) -> list[Document]:
    """Documents from a glob (recursive `**` allowed) or, when None, the stdlib sources."""
    if pattern is None:
        root, files = stdlib_files()
    else:
        root = Path("/")
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"corpus glob matched no files: {pattern}")
    docs = []
    for p in files:
        text = p.read_bytes().decode("utf-8", errors="replace")
        if text:
            key = str(p.relative_to(root)) if pattern is None else str(p)
            docs.append(Document(key, text))
    return docs


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def split(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Deterministic split by path hash; each side is ordered by hash (a fixed shuffle)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    cut = int(val_fraction * 2**64)
    ordered = sorted(docs, key=lambda d: _hash(d.key))
    train = [d for d in ordered if _hash("split:" + d.key) >= cut]
    val = [d for d in ordered if _hash("split:" + d.key) < cut]
    if not train or not val:
        raise DataError(f"split of {len(docs)} documents left an empty side; change val_fraction")
    return train, val
