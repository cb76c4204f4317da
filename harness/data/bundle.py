"""Token data on disk: building the default corpus's shards, and locating a data directory's files."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bytegolf.data import corpus, shards, tokenizer
from bytegolf.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class DataFiles:
    """A tokenizer plus train (or calibration) and validation shards."""

    tokenizer: Path
    train: list[Path]
    val: list[Path]

    @classmethod
    def locate(cls, tokenizer_path: str | Path, train_glob: str, val_glob: str) -> DataFiles:
        tok = Path(tokenizer_path)
        if not tok.is_file():
            raise DataError(f"tokenizer model not found: {tok}")
        train = sorted(Path(p) for p in glob.glob(str(train_glob)))
        val = sorted(Path(p) for p in glob.glob(str(val_glob)))
        if not val:
            raise DataError(f"no validation shards match {val_glob}")
        return cls(tok, train, val)


def fingerprint(paths: list[Path]) -> str:
    """sha256 over the files' bytes, in order (first 16 hex digits)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def build_corpus_data(
    out_dir: str | Path, pattern: str | None = None, vocab_size: int = 1024, val_fraction: float = 0.04
) -> DataFiles:
    """Split a corpus, train the tokenizer on the train side, and write both sides as shards."""
    out = Path(out_dir)
    docs = corpus.load_documents(pattern)
    train_docs, val_docs = corpus.split(docs, val_fraction)
    log.info("corpus: %d documents (%d train, %d val)", len(docs), len(train_docs), len(val_docs))
    tok_path = out / "tokenizer.model"
    tokenizer.train_tokenizer((d.text for d in train_docs), tok_path, vocab_size)
    sp = tokenizer.load_tokenizer(tok_path)
    stats = {"corpus": pattern or "stdlib", "documents": len(docs), "vocab_size": vocab_size}
    for side, side_docs in (("train", train_docs), ("val", val_docs)):
        tokens = tokenizer.encode_documents(sp, (d.text for d in side_docs))
        shards.write_shard(out / f"{side}_000000.bin", tokens)
        n_bytes = sum(len(d.text.encode("utf-8")) for d in side_docs)
        stats[side] = {"documents": len(side_docs), "tokens": int(tokens.size), "utf8_bytes": n_bytes}
        log.info(
            "%s: %d tokens, %d bytes (%.3f bytes/token)", side, tokens.size, n_bytes, n_bytes / max(tokens.size, 1)
        )
    stats["val_documents_fingerprint"] = hashlib.sha256("\n".join(d.key for d in val_docs).encode()).hexdigest()[:16]
    (out / "data.json").write_text(json.dumps(stats, indent=2))
    return DataFiles(tok_path, [out / "train_000000.bin"], [out / "val_000000.bin"])


def window_starts(n_tokens: int, seq_len: int, count: int = 0, seed: int | None = None) -> np.ndarray:
    """First-token positions of the windows `sample_windows` cuts (multiples of seq_len, in order); count 0
    (or more than there are): all of them, a negative or non-integer count: ConfigError."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ConfigError(f"window count must be a non-negative integer (0: all windows), got {count!r}")
    n = (n_tokens - 1) // seq_len
    if n <= 0:
        raise DataError(f"{n_tokens} tokens are too few for one window of {seq_len}")
    pick = np.arange(n)
    if 0 < count < n:
        pick = (
            np.sort(np.random.default_rng(seed).choice(n, size=count, replace=False))
            if seed is not None
            else pick[:count]
        )
    return (pick * seq_len).astype(np.int64)


def sample_windows(
    tokens: np.ndarray, seq_len: int, count: int = 0, seed: int | None = None, bos: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """`count` non-overlapping windows (0, or more than there are: all) and the document each starts
    in (documents begin at BOS): the first ones (seed None) or a seeded sample drawn across all of
    `tokens`, kept in order."""
    starts = window_starts(tokens.size, seq_len, count, seed)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return tokens[idx].astype(np.int64), window_docs(tokens, starts, bos)


def window_docs(tokens: np.ndarray, starts: np.ndarray, bos: int = 1) -> np.ndarray:
    """The document (count of BOS tokens up to and including it) each window starting at `starts` begins in."""
    return np.cumsum(tokens == bos)[starts].astype(np.int64)


def windows(tokens: np.ndarray, seq_len: int, count: int | None = None) -> np.ndarray:
    """Non-overlapping (input, target) windows of seq_len+1 tokens: shape (n, seq_len+1); count None or 0: all."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0):
        raise ConfigError(f"window count must be a non-negative integer (0: all windows), got {count!r}")
    n = (tokens.size - 1) // seq_len
    if count is not None and count > 0:
        n = min(n, count)
    if n <= 0:
        raise DataError(f"{tokens.size} tokens are too few for one window of {seq_len}")
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return tokens[idx].astype(np.int64)
