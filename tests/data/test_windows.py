"""Evaluation window counts: 0 means all, a positive count that many, anything else a ConfigError early."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from bytegolf.data import bundle
from bytegolf.data.windows import eval_windows, window_count
from bytegolf.errors import ConfigError

SEQ = 16
TOKENS = (np.arange(10 * SEQ + 1) % 7 + 1).astype(np.uint16)  # exactly 10 windows of SEQ+1 tokens


def _eval(windows, **kw) -> OmegaConf:
    return OmegaConf.create({"windows": windows, "seq_len": SEQ, "sample": False, "seed": 0, "stride": None, **kw})


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (1, 1), (64, 64), (np.int64(3), 3)])
def test_window_count_accepts_non_negative_integers(value, expected: int) -> None:
    assert window_count(value) == expected
    assert type(window_count(value)) is int


@pytest.mark.parametrize("value", [-3, -1, np.int64(-2), 2.5, 4.0, True, False, "8", None])
def test_window_count_rejects_negative_non_integer_and_bool(value) -> None:
    with pytest.raises(ConfigError, match=r"eval\.windows") as info:
        window_count(value)
    assert repr(value) in str(info.value)


def test_window_count_names_the_given_key() -> None:
    with pytest.raises(ConfigError, match=r"calib\.windows must be a non-negative integer.*got -1"):
        window_count(-1, "calib.windows")


@pytest.mark.parametrize(("windows", "n"), [(0, 10), (3, 3), (10, 10), (50, 10)])
def test_eval_windows_counts(windows: int, n: int) -> None:
    w, docs = eval_windows(TOKENS, _eval(windows))
    assert len(w) == n and docs.shape == (n,)
    assert w.starts.tolist() == [SEQ * i for i in range(n)]
    assert w.scored_tokens == n * SEQ


def test_eval_windows_sample_draws_the_count() -> None:
    w, _ = eval_windows(TOKENS, _eval(4, sample=True, seed=1))
    assert len(w) == 4
    assert np.all(np.diff(w.starts) > 0) and np.all(w.starts % SEQ == 0)


@pytest.mark.parametrize("windows", [-3, -1, 1.5, True])
def test_eval_windows_rejects_bad_counts(windows) -> None:
    with pytest.raises(ConfigError, match=rf"eval\.windows .*got {windows!r}"):
        eval_windows(TOKENS, _eval(windows))


@pytest.mark.parametrize("count", [-1, -10, 2.0, True])
def test_window_starts_rejects_bad_counts(count) -> None:
    with pytest.raises(ConfigError, match="window count must be a non-negative integer"):
        bundle.window_starts(TOKENS.size, SEQ, count)
    assert bundle.window_starts(TOKENS.size, SEQ, 0).tolist() == [SEQ * i for i in range(10)]


@pytest.mark.parametrize("windows", [-3, 2.5, True])
def test_run_point_rejects_bad_eval_windows_before_any_work(windows, tmp_path: Path, monkeypatch) -> None:
    from bytegolf.run import point

    def no_work(*a, **k):
        raise AssertionError("run_point loaded the model, data or encoded despite a bad eval.windows")

    monkeypatch.setattr(point.adapters, "get_adapter", no_work)
    monkeypatch.setattr(point.evaldata, "load", no_work)
    monkeypatch.setattr(point, "encode_units", no_work)
    cfg = OmegaConf.create(
        {
            "threads": 0,
            "seed": 0,
            "device": "cpu",
            "format": {"name": "scalar", "bits": 6},
            "codec": {"name": "zlib"},
            "layout": {},
            "eval": {"windows": windows, "seq_len": 64},
        }
    )
    with pytest.raises(ConfigError, match=rf"eval\.windows .*got {windows!r}"):
        point.run_point(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []
