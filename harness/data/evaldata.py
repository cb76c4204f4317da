"""The token streams a run evaluates and calibrates on, with the byte counts bits-per-byte divides by.

data.kind shards: Parameter Golf token files and a SentencePiece tokenizer (bytes from its byte tables,
bytegolf.data.tokenizer). data.kind text (`data=text`): raw text files, each tokenized as one document with
the model's tokenizer (model=hf: the transformers tokenizer in model.path; otherwise data.tokenizer, a
SentencePiece model), a separator token (BOS, else EOS) before each document.

Bytes with a transformers tokenizer: each token is credited with the UTF-8 bytes of the text up to the
end of its character span (offset mapping) that no earlier token covered, so a document's tokens sum to
exactly the UTF-8 length of the document (text no token covers goes to its last token), whatever the
tokenizer does inside (byte-level BPE splitting a character, SentencePiece byte fallback).
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bytegolf.data import bundle as data
from bytegolf.data import shards, tokenizer
from bytegolf.data.windows import Windows, eval_windows
from bytegolf.errors import ConfigError, DataError
from bytegolf.fingerprint import file_fingerprint


@dataclass
class StreamBytes:
    """Bytes each position of a token stream stands for (as a target), aligned with the stream."""

    per_token: np.ndarray

    def at(self, pos: np.ndarray) -> np.ndarray:
        """Bytes of the targets at stream positions `pos`."""
        return self.per_token[pos].astype(np.int64)


@dataclass
class EvalData:
    """Validation windows and their documents, the byte counter, fingerprints, and the calibration stream."""

    val: Windows
    val_docs: np.ndarray
    tables: Any  # tokenizer.ByteTables or StreamBytes
    fingerprints: dict[str, str]  # tokenizer, val, train
    train_tokens: Callable[[], np.ndarray | None]
    train_glob: str | None
    files: data.DataFiles | None = None  # shards only

    def calib_windows(self, seq_len: int, count: int) -> np.ndarray:
        """`count` windows of seq_len+1 tokens from the start of the calibration stream."""
        tokens = self.train_tokens()
        if tokens is None:
            raise ConfigError(f"calibration needs train shards but none match {self.train_glob}")
        return data.windows(tokens, seq_len, count)


def _files(pattern: str | None) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(pattern))) if pattern else []


def hf_document(tok: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of one document (no special tokens) and the UTF-8 bytes each stands for (summing to the
    document's UTF-8 length)."""
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"{type(tok).__name__} is not a fast tokenizer: bpb needs its offset mapping")
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    char_byte = np.append(np.flatnonzero((raw & 0xC0) != 0x80), raw.size)  # byte offset of each char (+ end)
    if ids.size == 0:
        return ids, np.zeros(0, dtype=np.int64)
    ends = np.maximum.accumulate(np.asarray([e for _, e in enc["offset_mapping"]], dtype=np.int64))
    pos = char_byte[np.minimum(ends, char_byte.size - 1)]
    nbytes = np.diff(np.r_[0, pos])
    nbytes[-1] += raw.size - pos[-1]
    return ids, nbytes.astype(np.int64)


def hf_stream(tok: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token stream, bytes per position, first position of each document) with a separator before each."""
    sep = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids, nbytes, starts, n = [], [], [], 0
    for text in texts:
        t, b = hf_document(tok, text)
        if sep is not None:
            t, b = np.r_[sep, t], np.r_[0, b]
        starts.append(n)
        ids.append(t)
        nbytes.append(b)
        n += t.size
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ids), np.concatenate(nbytes), np.asarray(starts, dtype=np.int64)


def _texts(paths: list[Path]) -> list[str]:
    out = []
    for p in paths:
        try:
            out.append(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{p}: cannot read as UTF-8 text ({exc})") from None
    return out


def load(cfg: Any, adapter: Any, model: Any) -> EvalData:
    """The evaluation and calibration data `cfg.data` names, tokenized as the adapter's model needs."""
    kind = str(cfg.data.get("kind", "shards") or "shards")
    hf = getattr(adapter, "name", "") == "hf"
    if kind == "shards":
        if hf:
            raise ConfigError("model=hf evaluates raw text with its own tokenizer: use data=text data.val='GLOB'")
        files = data.DataFiles.locate(cfg.data.tokenizer, cfg.data.train, cfg.data.val)
        sp = tokenizer.load_tokenizer(files.tokenizer)
        tables = tokenizer.byte_tables(sp, adapter.vocab_size(model))
        val, val_docs = eval_windows(shards.read_shards(files.val), cfg.eval)
        fp = {
            "tokenizer": file_fingerprint(files.tokenizer),
            "val": data.fingerprint(files.val),
            "train": data.fingerprint(files.train) if files.train else "none",
        }
        train = (lambda: shards.read_shards(files.train)) if files.train else (lambda: None)
        return EvalData(val, val_docs, tables, fp, train, str(cfg.data.train), files)
    if kind != "text":
        raise ConfigError(f"data.kind must be shards or text, got {kind!r}")
    val_files, train_files = _files(cfg.data.val), _files(cfg.data.get("train"))
    if not val_files:
        raise DataError(f"no validation text files match {cfg.data.val}")
    if hf:
        tok = adapter.tokenizer()
        vocab = adapter.vocab_size(model)
        if vocab is not None and len(tok) > vocab:
            raise ConfigError(f"the tokenizer in {adapter.path} has {len(tok)} tokens, the model's vocab only {vocab}")
        tokens, nbytes, doc_starts = hf_stream(tok, _texts(val_files))
        tables: Any = StreamBytes(nbytes)
        tok_fp = adapter.fingerprint()

        def train() -> np.ndarray | None:
            return hf_stream(tok, _texts(train_files))[0] if train_files else None
    else:
        if not cfg.data.tokenizer or not Path(cfg.data.tokenizer).is_file():
            raise DataError(f"data=text needs data.tokenizer, a SentencePiece .model file (got {cfg.data.tokenizer})")
        sp = tokenizer.load_tokenizer(cfg.data.tokenizer)
        tokens = tokenizer.encode_documents(sp, _texts(val_files))
        doc_starts = np.flatnonzero(tokens == tokenizer.BOS_ID)
        tables = tokenizer.byte_tables(sp, adapter.vocab_size(model))
        tok_fp = file_fingerprint(cfg.data.tokenizer)

        def train() -> np.ndarray | None:
            return tokenizer.encode_documents(sp, _texts(train_files)) if train_files else None

    val, _ = eval_windows(tokens, cfg.eval, doc_starts)
    val_docs = (np.searchsorted(doc_starts, val.block_first - 1, side="right")).astype(np.int64)
    fp = {
        "tokenizer": tok_fp,
        "val": data.fingerprint(val_files),
        "train": data.fingerprint(train_files) if train_files else "none",
    }
    return EvalData(val, val_docs, tables, fp, train, cfg.data.get("train"))
