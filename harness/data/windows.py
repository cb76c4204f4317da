"""Evaluation windows: which tokens of a validation stream are scored, in which windows, with what context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bytegolf.data import bundle as data
from bytegolf.data.tokenizer import ByteTables
from bytegolf.errors import ConfigError

BYTE_CHUNK = 4096  # blocks whose byte counts are computed at once


@dataclass
class Windows:
    """Windows of seq_len+1 tokens cut from `tokens` at `starts`; window j scores its targets from
    index score_from[j] on. Scored targets are credited to blocks: block b holds the seq_len targets
    at stream positions block_first[b] .. block_first[b] + seq_len − 1."""

    tokens: np.ndarray
    starts: np.ndarray
    score_from: np.ndarray
    block_first: np.ndarray
    seq_len: int

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
        """Targets scored over all windows (each block's seq_len targets once)."""
        return int((self.seq_len - self.score_from).sum())

    def targets(self) -> np.ndarray:
        """The scored targets, (blocks, seq_len): block b's row holds its seq_len targets."""
        return self.tokens[self.block_first[:, None] + np.arange(self.seq_len)[None, :]]

    def batch(self, i: int, j: int) -> np.ndarray:
        """Windows i..j-1 as an int64 array of shape (j−i, seq_len+1)."""
        idx = self.starts[i:j, None] + np.arange(self.seq_len + 1)[None, :]
        return self.tokens[idx].astype(np.int64)

    def block_bytes(self, tables: ByteTables) -> np.ndarray:
        """Bytes each block's targets stand for (each target given the stream token before it; tables with
        `at(positions)`, bytegolf.data.evaldata.StreamBytes, give bytes per stream position instead)."""
        out = []
        offs = np.arange(self.seq_len)[None, :]
        for i in range(0, self.block_first.size, BYTE_CHUNK):
            pos = self.block_first[i : i + BYTE_CHUNK, None] + offs
            if hasattr(tables, "at"):
                out.append(tables.at(pos).sum(1))
                continue
            out.append(tables.count(self.tokens[pos - 1].astype(np.int64), self.tokens[pos].astype(np.int64)).sum(1))
        return np.concatenate(out)


def window_count(value: Any, key: str = "eval.windows") -> int:
    """A configured window count as an int: a non-negative integer, 0 meaning all windows; a negative,
    non-integer or bool value is a ConfigError naming `key` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{key} must be a non-negative integer (0: the whole validation split), got {value!r}")
    return int(value)


def eval_windows(tokens: np.ndarray, eval_cfg: Any) -> tuple[Windows, np.ndarray]:
    """The evaluation windows an `eval` config asks for (seq_len, windows, sample/seed, stride) over a
    validation stream, and the document each block starts in."""
    count = window_count(eval_cfg.windows)
    seq_len = int(eval_cfg.seq_len)
    seed = int(eval_cfg.get("seed", 0)) if eval_cfg.get("sample", False) else None
    starts = data.window_starts(tokens.size, seq_len, count, seed)
    stride = eval_cfg.get("stride", None)
    return Windows.sliding(tokens, starts, seq_len, stride), data.window_docs(tokens, starts)
