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


DOC_LENGTHS = (6, 21, 4, 50, 9, 2)  # tokens per document, its BOS included: shorter and longer than SEQ


def _doc_stream() -> tuple[np.ndarray, np.ndarray]:
    """A stream of documents, each a BOS (1) then tokens 2..9, and each document's start."""
    rng = np.random.default_rng(0)
    docs = [np.r_[1, rng.integers(2, 10, n - 1)] for n in DOC_LENGTHS]
    starts = np.cumsum([0, *DOC_LENGTHS[:-1]])
    return np.concatenate(docs).astype(np.uint16), starts


@pytest.mark.parametrize("stride", [None, 5, SEQ])
def test_document_windows_score_each_document_token_once_and_never_look_across_a_document(stride) -> None:
    tokens, starts = _doc_stream()
    w, docs = eval_windows(tokens, _eval(0, documents=True, stride=stride))
    assert docs.tolist() == list(range(len(DOC_LENGTHS)))  # windows=0: every document, one block each
    assert w.block_len.tolist() == [n - 1 for n in DOC_LENGTHS] and w.block_first.tolist() == (starts + 1).tolist()
    scored = []
    for s, frm, to in zip(w.starts, w.score_from, w.score_to, strict=True):
        assert 0 <= frm < to <= SEQ
        seen = w.tokens[s : s + to]  # what the last scored target's prediction sees
        assert (seen[1:] != 1).all(), "a window's context reaches into the previous document"
        assert seen[0] == 1 or (seen != 1).all()  # starts at its document's BOS or inside it
        scored += list(range(s + 1 + frm, s + 1 + to))
    doc_targets = [p for a, n in zip(starts, DOC_LENGTHS, strict=True) for p in range(a + 1, a + n)]
    assert sorted(scored) == doc_targets  # every token after a BOS scored exactly once
    assert w.targets().tolist() == tokens[doc_targets].tolist()
    assert w.scored_tokens == sum(DOC_LENGTHS) - len(DOC_LENGTHS)


def test_document_windows_count_and_sample_documents() -> None:
    tokens, _ = _doc_stream()
    w, docs = eval_windows(tokens, _eval(2, documents=True))
    assert docs.tolist() == [0, 1] and w.block_len.tolist() == [5, 20]  # the first two
    w, docs = eval_windows(tokens, _eval(3, documents=True, sample=True, seed=1))
    assert len(docs) == 3 and docs.tolist() == sorted(docs.tolist())
    assert w.block_len.tolist() == [DOC_LENGTHS[d] - 1 for d in docs]
    with pytest.raises(ConfigError, match="no document start"):
        eval_windows(np.full(40, 5, dtype=np.uint16), _eval(0, documents=True))


def test_document_isolated_evaluation_equals_each_document_scored_alone() -> None:
    import torch

    from bytegolf.data.tokenizer import ByteTables
    from bytegolf.measure.evaluate import evaluate
    from bytegolf.model.gpt import GPT, ModelConfig

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=16, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2)).eval()
    with torch.no_grad():  # give the zero-initialised projections some weight
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    tokens, starts = _doc_stream()
    w, _ = eval_windows(tokens, _eval(0, documents=True))
    tables = ByteTables(np.arange(16) % 3 + 1, np.zeros(16, bool), np.zeros(16, bool), False)
    r = evaluate(model, w, tables, batch_size=3, streams=1, progress=False)
    alone = []
    for a, n in zip(starts, DOC_LENGTHS, strict=True):
        doc = torch.from_numpy(tokens[a : a + n].astype(np.int64))
        total = 0.0
        for k in range(0, n - 1, SEQ):  # a document longer than SEQ: chunks of SEQ targets, each alone
            piece = doc[k : k + SEQ + 1][None]
            with torch.inference_mode():
                total += float(model.token_nll(piece[:, :-1], piece[:, 1:]).double().sum())
        alone.append(total)
    assert r.window_nll == pytest.approx(alone, rel=1e-5, abs=1e-5)
    assert r.tokens == sum(DOC_LENGTHS) - len(DOC_LENGTHS)
    assert r.window_bytes == [
        int((np.arange(16) % 3 + 1)[tokens[a + 1 : a + n]].sum()) for a, n in zip(starts, DOC_LENGTHS, strict=True)
    ]
