"""SentencePiece tokenizer: training for code, and the byte-count tables behind bits-per-byte."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from bytegolf.errors import DataError

SPACE = "\u2581"
BOS_ID = 1


def _chunks(texts: Iterable[str], limit: int) -> Iterator[str]:
    """Line-aligned chunks of at most `limit` characters (newlines kept)."""
    for text in texts:
        buf = ""
        for line in text.splitlines(keepends=True):
            if buf and len(buf) + len(line) > limit:
                yield buf
                buf = ""
            buf += line[:limit]
        if buf:
            yield buf


def train_tokenizer(
    texts: Iterable[str], path: str | Path, vocab_size: int = 1024, seed_sentences: int = 200_000
) -> None:
    """Train a byte-fallback BPE model that keeps whitespace runs and newlines (lossless on code)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_chunks(texts, 4000),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=0.9999,
        pad_id=0,
        bos_id=BOS_ID,
        eos_id=2,
        unk_id=3,
        input_sentence_size=seed_sentences,
        shuffle_input_sentence=True,
        max_sentence_length=8192,
        num_threads=2,
        minloglevel=2,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(out.getvalue())


def load_tokenizer(path: str | Path) -> spm.SentencePieceProcessor:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer model not found: {path}")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except Exception as exc:  # sentencepiece raises bare RuntimeError/OSError
        raise DataError(f"{path}: not a SentencePiece model ({exc})") from None


@dataclass
class ByteTables:
    """Per-token byte counts in Parameter Golf's form, with whitespace inside pieces counted exactly.

    bytes(target) = base_bytes[target] + (has_leading_space[target] and not
    (drop_space_after_boundary and is_boundary[previous])).
    """

    base_bytes: np.ndarray
    has_leading_space: np.ndarray
    is_boundary: np.ndarray
    drop_space_after_boundary: bool

    def count(self, prev: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Bytes each target token stands for, given the token before it."""
        lead = self.has_leading_space[target]
        if self.drop_space_after_boundary:
            lead = lead & ~self.is_boundary[prev]
        return self.base_bytes[target].astype(np.int64) + lead


# Characters that stand for no text: the case markers (U+E001-U+E004) of the CaseOps tokenizer a Parameter Golf
# record uses, whose byte sidecar counts them as 0 bytes; a piece holding one counts only its other characters.
ZERO_BYTE_CHARS = "\ue001\ue002\ue003\ue004"


def byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int | None = None) -> ByteTables:
    """Build the tables; a leading '▁' is one byte, and so is every '▁' inside a piece; ZERO_BYTE_CHARS count
    nothing."""
    n = int(sp.vocab_size())
    size = max(n, vocab_size or 0)
    base = np.zeros(size, dtype=np.int16)
    lead = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE):
            lead[i] = True
            piece = piece[1:]
        text = piece.replace(SPACE, " ").translate(dict.fromkeys(map(ord, ZERO_BYTE_CHARS)))
        base[i] = len(text.encode("utf-8"))
    # With a dummy prefix the decoder drops the space that starts a document: Parameter Golf's rule.
    space_id = sp.piece_to_id(SPACE)
    dummy = space_id != sp.unk_id() and sp.decode([space_id]) == ""
    return ByteTables(base, lead, boundary, drop_space_after_boundary=dummy)


def encode_documents(sp: spm.SentencePieceProcessor, texts: Iterable[str]) -> np.ndarray:
    """Token stream with BOS before each document, as uint16."""
    parts = []
    for ids in sp.encode(list(texts)):
        parts.append(np.array([BOS_ID, *ids], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
