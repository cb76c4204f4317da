"""Paired bootstrap, Kendall tau-b, Pareto fronts and BD-rate on known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bytegolf.measure import stats
from bytegolf.study import bdrate


def _windows(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    nbytes = rng.integers(2000, 4000, size=n).astype(float)
    nll = nbytes * math.log(2) * rng.normal(1.2, 0.15, size=n)  # about 1.2 bits per byte, varying by window
    return nll, nbytes


def test_bootstrap_of_a_system_against_itself_contains_zero() -> None:
    nll, nbytes = _windows()
    d = stats.paired_bootstrap(nll, nll, nbytes, samples=500)
    assert d.delta == 0.0 and d.lo == 0.0 and d.hi == 0.0
    assert not d.significant and d.p == 1.0


def test_bootstrap_of_a_clearly_worse_system_excludes_zero() -> None:
    nll, nbytes = _windows()
    rng = np.random.default_rng(1)
    worse = nll + nbytes * math.log(2) * (0.02 + rng.normal(0, 0.01, size=len(nll)))  # +0.02 bpb, noisy
    d = stats.paired_bootstrap(worse, nll, nbytes, samples=1000)
    assert d.delta == pytest.approx(np.sum(worse - nll) / math.log(2) / np.sum(nbytes))
    assert 0.015 < d.delta < 0.025
    assert d.significant and 0 < d.lo < d.delta < d.hi
    assert d.p == pytest.approx(1 / 1001)
    flipped = stats.paired_bootstrap(nll, worse, nbytes, samples=1000)
    assert flipped.delta == pytest.approx(-d.delta) and flipped.hi < 0


def test_bootstrap_of_a_tiny_difference_is_not_significant() -> None:
    nll, nbytes = _windows()
    rng = np.random.default_rng(2)
    other = nll + nbytes * math.log(2) * rng.normal(0, 0.05, size=len(nll))  # noise, no shift
    d = stats.paired_bootstrap(other, nll, nbytes, samples=1000)
    assert d.lo < 0 < d.hi and d.p > 0.05


def test_bootstrap_rejects_mismatched_windows() -> None:
    with pytest.raises(ValueError, match="equal 1-D"):
        stats.paired_bootstrap(np.ones(4), np.ones(5), np.ones(4))


@pytest.mark.parametrize(
    ("x", "y", "tau"),
    [
        ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 1.0),
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], -1.0),
        ([1, 2, 3, 4, 5], [1, 2, 3, 5, 4], 0.8),  # one discordant pair of ten
        ([1, 1, 2, 3], [1, 2, 3, 4], 5 / math.sqrt(30)),  # tau-b with a tie: 5 / sqrt((6-1)(6-0))
    ],
)
def test_kendall_tau_b_on_known_rankings(x: list[float], y: list[float], tau: float) -> None:
    got, p = stats.kendall_tau_b(np.array(x), np.array(y))
    assert got == pytest.approx(tau)
    assert 0 <= p <= 1


def test_kendall_tau_b_ignores_nan_and_needs_two_points() -> None:
    got, _ = stats.kendall_tau_b(np.array([1, 2, math.nan, 3]), np.array([3, 2, 1, 1]))
    assert got == pytest.approx(-1.0)  # the NaN point is dropped: (1,3), (2,2), (3,1)
    assert math.isnan(stats.kendall_tau_b(np.array([1.0]), np.array([2.0]))[0])


def test_pareto_front() -> None:
    x = np.array([10, 20, 30, 15, 25, 10, math.nan])
    y = np.array([5.0, 3.0, 1.0, 6.0, 3.5, 4.0, 0.0])
    assert stats.pareto_front(x, y).tolist() == [5, 1, 2]  # (10,4) beats (10,5); (15,6) and (25,3.5) are dominated


def _curve(d: np.ndarray) -> np.ndarray:
    """A smooth rate-distortion curve: rate falls as distortion rises."""
    return 1e6 * np.exp(-1.3 * d + 0.2 * d**2)


def test_bd_rate_of_a_curve_against_itself_is_zero() -> None:
    d = np.linspace(0.5, 2.5, 6)
    assert bdrate.bd_rate_or_nan(_curve(d), d, _curve(d), d) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_of_ten_percent_more_bytes_is_ten_percent() -> None:
    da = np.linspace(0.5, 2.5, 6)
    db = np.linspace(0.7, 2.9, 5)  # sampled elsewhere, partly overlapping
    bd = bdrate.bd_rate_or_nan(_curve(da), da, 1.1 * _curve(db), db)
    assert bd == pytest.approx(10.0, abs=0.5)
    back = bdrate.bd_rate_or_nan(1.1 * _curve(db), db, _curve(da), da)
    assert back == pytest.approx(100 / 1.1 - 100, abs=0.5)  # -9.09%: the anchor needs 1/1.1 of the bytes


def test_bd_rate_without_overlap_is_nan() -> None:
    da, db = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6])
    assert math.isnan(bdrate.bd_rate_or_nan(_curve(da), da, _curve(db), db))
    assert math.isnan(bdrate.bd_rate_or_nan(_curve(da), da, _curve(da[:1]), da[:1]))  # one point is no curve


def test_document_bootstrap_resamples_whole_documents() -> None:
    """Known answer: two documents of 3 windows each, every window of a document alike. Window
    resampling sees 6 independent values; document resampling sees 2, so its CI is wider, and
    every resample weights the windows of a document together."""
    groups = np.array([0, 0, 0, 1, 1, 1])
    counts = stats.resample_counts(6, 400, seed=1, groups=groups)
    assert np.all(counts[:, 0] == counts[:, 1]) and np.all(counts[:, 3] == counts[:, 5])
    assert np.all(counts[:, [0, 3]].sum(axis=1) == 2)  # two documents drawn per resample
    a = np.array([1.0, 1.0, 1.0, 3.0, 3.0, 3.0])
    b = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    denom = np.ones(6)
    by_doc = stats.paired_bootstrap(a, b, denom, 2000, scale=1.0, groups=groups)
    by_win = stats.paired_bootstrap(a, b, denom, 2000, scale=1.0)
    assert by_doc.delta == by_win.delta == pytest.approx(1.0)
    # Resampling 2 documents: the difference is 0, 1 or 2 with probability 1/4, 1/2, 1/4.
    assert by_doc.lo == pytest.approx(0.0) and by_doc.hi == pytest.approx(2.0)
    assert by_doc.hi - by_doc.lo > by_win.hi - by_win.lo
    with pytest.raises(ValueError, match="one id per window"):
        stats.resample_counts(6, 10, groups=np.zeros(5))


def test_sampled_windows_span_the_split_and_know_their_documents() -> None:
    from bytegolf.data import bundle as data

    tokens = np.arange(10_001) % 97 + 2
    tokens[::1000] = 1  # a document starts every 1000 tokens
    first, docs_first = data.sample_windows(tokens, 100, 10)
    assert first[0, 0] == tokens[0] and first[-1, 0] == tokens[900] and docs_first.tolist() == [1] * 10
    sampled, docs = data.sample_windows(tokens, 100, 10, seed=3)
    assert len(set(docs.tolist())) > 3 and docs.max() >= 7  # drawn across the split
    again, _ = data.sample_windows(tokens, 100, 10, seed=3)
    assert np.array_equal(sampled, again)
    everything, _ = data.sample_windows(tokens, 100, 0, seed=3)
    assert everything.shape == (100, 101)


def test_holm_on_a_textbook_example() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 → running max 0.02, 0.03, 0.06, 0.06
    got = stats.holm(np.array([0.01, 0.04, 0.03, 0.005]))
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_benjamini_hochberg_on_a_textbook_example() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 → ×4/1, ×4/2, ×4/3, ×4/4 = 0.02, 0.02, 0.04, 0.04 → running min from the top: same
    got = stats.benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005]))
    assert got == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # a step-up case: 0.04·3/2 = 0.06 is lowered to the 0.045·3/3 = 0.045 above it
    assert stats.benjamini_hochberg(np.array([0.001, 0.04, 0.045])) == pytest.approx([0.003, 0.045, 0.045])


def test_adjusted_p_values_are_monotone_capped_and_keep_nan() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(0, 0.2, size=30)
    order = np.argsort(p)
    for method in ("holm", "bh"):
        adj = stats.adjust_pvalues(p, method)
        assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
        assert np.all(np.diff(adj[order]) >= -1e-15)  # same order as the raw p-values
    assert stats.holm(np.array([0.5, 0.6]))[1] == 1.0  # 2 × 0.6 capped at 1
    got = stats.holm(np.array([0.01, math.nan, 0.02]))
    assert math.isnan(got[1]) and got[[0, 2]] == pytest.approx([0.02, 0.02])  # m = 2: NaN is not a test
    assert stats.adjust_pvalues(np.array([0.01, 0.02]), "none") == pytest.approx([0.01, 0.02])
    assert stats.holm(np.array([])).shape == (0,)
    with pytest.raises(ValueError, match="unknown multiple-comparison correction"):
        stats.adjust_pvalues(np.array([0.1]), "bonferroni-ish")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm(np.array([1.5]))
