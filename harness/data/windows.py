"""Evaluation windows: which tokens of a validation stream are scored, in which windows, with what context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bytegolf.data import bundle as data
from bytegolf.data.tokenizer import BOS_ID, ByteTables
from bytegolf.errors import ConfigError

BYTE_CHUNK = 4096  # blocks whose byte counts are computed at once


@dataclass
class Windows:
    """Windows of seq_len+1 tokens cut from `tokens` at `starts`; window j scores its targets from
    index score_from[j] up to (not including) score_to[j] (None: seq_len, all the rest). Scored targets are
    credited to blocks: block b holds the block_len[b] (None: seq_len) targets at stream positions
    block_first[b] onwards."""

    tokens: np.ndarray
    starts: np.ndarray
    score_from: np.ndarray
    block_first: np.ndarray
    seq_len: int
    score_to: np.ndarray | None = None
    block_len: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.score_to is None:
            self.score_to = np.full(self.starts.size, self.seq_len, dtype=np.int64)
        if self.block_len is None:
            self.block_len = np.full(self.block_first.size, self.seq_len, dtype=np.int64)

    @classmethod
    def documents(
        cls, tokens: np.ndarray, doc_starts: np.ndarray, doc_ends: np.ndarray, seq_len: int, stride: int | None = None
    ) -> Windows:
        """Document-isolated windows, as Parameter Golf records score: every window starts inside one document
        and scores only that document's targets, so no context crosses a document boundary. doc_starts: the
        first token (BOS) of each document to score, ascending, and doc_ends its end (exclusive: the next
        document's start, or the stream's end); its targets are its tokens after the first. A document of at
        most seq_len targets is one window; a longer one is cut into windows of seq_len targets (stride None)
        or covered by windows `stride` tokens apart, each scoring its last `stride` targets (the first all of
        its own). Each document is one block. Tokens past a document's end in its window (the next document, or padding
        at the stream's end) are never scored and, the model being causal, never seen by a scored target."""
        stride = seq_len if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 0 < stride <= seq_len:
            raise ConfigError(f"eval.stride must be an integer in 1..{seq_len} (eval.seq_len) or null, got {stride!r}")
        doc_starts = np.asarray(doc_starts, dtype=np.int64).reshape(-1)
        if doc_starts.size == 0:
            raise ConfigError("document-isolated evaluation needs at least one document")
        n_targets = np.asarray(doc_ends, dtype=np.int64).reshape(-1) - doc_starts - 1
        if np.any(n_targets < 1):
            raise ConfigError("document-isolated evaluation: a document holds no token after its BOS")
        starts, score_from, score_to = [], [], []
        for s, n in zip(doc_starts.tolist(), n_targets.tolist(), strict=True):
            if n <= seq_len:
                starts.append(s), score_from.append(0), score_to.append(n)
            elif stride == seq_len:
                for k in range(0, n, seq_len):
                    starts.append(s + k), score_from.append(0), score_to.append(min(seq_len, n - k))
            else:
                starts.append(s), score_from.append(0), score_to.append(seq_len)
                done = seq_len
                while done < n:
                    step = min(stride, n - done)
                    starts.append(s + done + step - seq_len), score_from.append(seq_len - step)
                    score_to.append(seq_len)
                    done += step
        padded = np.concatenate([tokens, np.zeros(seq_len + 1, dtype=tokens.dtype)])
        i64 = np.int64
        return cls(
            padded, np.array(starts, i64), np.array(score_from, i64), doc_starts + 1, seq_len,
            np.array(score_to, i64), n_targets.astype(i64),
        )  # fmt: skip

    @classmethod
    def from_array(cls, windows: np.ndarray) -> Windows:
        """Non-overlapping windows of shape (n, seq_len+1), each its own block, scored in full."""
        if windows.ndim != 2 or windows.shape[1] < 2:
            raise ConfigError(f"evaluation windows must have shape (n, seq_len+1), got {windows.shape}")
        n, width = windows.shape
        starts = np.arange(n, dtype=np.int64) * width
        return cls(windows.reshape(-1), starts, np.zeros(n, dtype=np.int64), starts + 1, width - 1)

    @classmethod
    def sliding(cls, tokens: np.ndarray, block_starts: np.ndarray, seq_len: int, stride: int | None = None) -> Windows:
        """Windows over the blocks of seq_len+1 tokens at `block_starts` (first-token positions, ascending),
        `stride` tokens apart within each run of consecutive blocks (None: seq_len, the blocks themselves)."""
        stride = seq_len if stride is None else stride
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 0 < stride <= seq_len:
            raise ConfigError(f"eval.stride must be an integer in 1..{seq_len} (eval.seq_len) or null, got {stride!r}")
        block_starts = np.asarray(block_starts, dtype=np.int64).reshape(-1)
        if block_starts.size == 0:
            raise ConfigError("evaluation needs at least one window")
        if np.any(np.diff(block_starts) < seq_len) or block_starts[0] < 0 or block_starts[-1] + seq_len >= tokens.size:
            raise ConfigError("evaluation blocks must be ascending, non-overlapping and inside the token stream")
        breaks = np.flatnonzero(np.diff(block_starts) != seq_len) + 1
        starts, score_from = [], []
        for run in np.split(block_starts, breaks):
            a, rest = int(run[0]), (run.size - 1) * seq_len  # targets after the run's first window
            q, r = divmod(rest, stride)
            starts.append(a + stride * np.arange(q + 1, dtype=np.int64))
            score_from.append(np.r_[0, np.full(q, seq_len - stride, dtype=np.int64)])
            if r:
                starts.append(np.array([a + rest], dtype=np.int64))
                score_from.append(np.array([seq_len - r], dtype=np.int64))
        return cls(tokens, np.concatenate(starts), np.concatenate(score_from), block_starts + 1, seq_len)

    def __len__(self) -> int:
        return int(self.starts.size)

    @property
    def scored_tokens(self) -> int:
        """Targets scored over all windows (each block's targets once)."""
        return int((self.score_to - self.score_from).sum())

    def targets(self) -> np.ndarray:
        """The scored targets, block after block (1-D)."""
        offs = np.arange(int(self.block_len.max()))[None, :]
        keep = offs < self.block_len[:, None]
        return self.tokens[np.minimum(self.block_first[:, None] + offs, self.tokens.size - 1)][keep]

    def batch(self, i: int, j: int) -> np.ndarray:
        """Windows i..j-1 as an int64 array of shape (j−i, seq_len+1)."""
        idx = self.starts[i:j, None] + np.arange(self.seq_len + 1)[None, :]
        return self.tokens[idx].astype(np.int64)

    def block_bytes(self, tables: ByteTables) -> np.ndarray:
        """Bytes each block's targets stand for (each target given the stream token before it; tables with
        `at(positions)`, bytegolf.data.evaldata.StreamBytes, give bytes per stream position instead)."""
        out = []
        offs = np.arange(int(self.block_len.max()))[None, :]
        for i in range(0, self.block_first.size, BYTE_CHUNK):
            keep = offs < self.block_len[i : i + BYTE_CHUNK, None]
            pos = np.where(keep, self.block_first[i : i + BYTE_CHUNK, None] + offs, 1)  # past a block: not counted
            if hasattr(tables, "at"):
                out.append((tables.at(pos) * keep).sum(1))
                continue
            counts = tables.count(self.tokens[pos - 1].astype(np.int64), self.tokens[pos].astype(np.int64))
            out.append((counts * keep).sum(1))
        return np.concatenate(out)


def window_count(value: Any, key: str = "eval.windows") -> int:
    """A configured window count as an int: a non-negative integer, 0 meaning all windows; a negative,
    non-integer or bool value is a ConfigError naming `key` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{key} must be a non-negative integer (0: the whole validation split), got {value!r}")
    return int(value)


def eval_windows(tokens: np.ndarray, eval_cfg: Any, doc_starts: np.ndarray | None = None) -> tuple[Windows, np.ndarray]:
    """The evaluation windows an `eval` config asks for (seq_len, windows, sample/seed, stride, documents) over
    a validation stream, and the document of each block. With eval.documents, `windows` counts documents
    (doc_starts: each document's first token; None: the stream's BOS tokens), each scored in windows of its
    own (Windows.documents)."""
    count = window_count(eval_cfg.windows)
    seq_len = int(eval_cfg.seq_len)
    seed = int(eval_cfg.get("seed", 0)) if eval_cfg.get("sample", False) else None
    stride = eval_cfg.get("stride", None)
    if eval_cfg.get("documents", False):
        docs = np.flatnonzero(tokens == BOS_ID) if doc_starts is None else np.asarray(doc_starts, dtype=np.int64)
        if docs.size == 0:
            raise ConfigError("eval.documents=true: the validation stream holds no document start (BOS)")
        ends = np.r_[docs[1:], tokens.size]
        docs, ends = docs[ends - docs > 1], ends[ends - docs > 1]  # documents with a token after the first
        pick = np.arange(docs.size)
        if 0 < count < docs.size:
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(docs.size, size=count, replace=False)) if seed is not None else pick[:count]
        return Windows.documents(tokens, docs[pick], ends[pick], seq_len, stride), pick.astype(np.int64)
    starts = data.window_starts(tokens.size, seq_len, count, seed)
    return Windows.sliding(tokens, starts, seq_len, stride), data.window_docs(tokens, starts)
