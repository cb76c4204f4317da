"""Statistics for comparing points: paired bootstrap, multiple-comparison correction, Kendall tau-b,
Pareto fronts.

Paired bootstrap (Koehn 2004, as sacrebleu does it): draw N resamples of the evaluation windows
with replacement, the same indices for every system; each resample gives each system's ratio
Σ nll / Σ denominator over the drawn windows (denominator: bytes for bpb, tokens for loss per
token). The CI on the difference is the percentile interval of the resampled differences; the
two-sided p-value counts the resampled differences, centred on their mean (the null
hypothesis), whose magnitude reaches the observed one: p = (c + 1) / (N + 1).

Multiple comparisons: where a report scans many pairs and lists those with a small p, the p-values
are adjusted over the whole family of tests made: Holm (1979) step-down, which controls the
family-wise error rate under any dependence (the default), or Benjamini–Hochberg (1995) step-up,
which controls the false discovery rate. Adjusted p-values are monotone in the raw ones and
capped at 1; a claim is significant where its adjusted p ≤ α.

BD-rate (Bjøntegaard): bytegolf.study.bdrate, on the fronts pareto_front finds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student

LN2 = math.log(2)


@dataclass(frozen=True)
class PairedDelta:
    """Observed difference a − b of ratio statistics, its bootstrap CI and p-value."""

    delta: float
    lo: float
    hi: float
    p: float
    samples: int
    level: float

    @property
    def significant(self) -> bool:
        """True where the CI excludes 0."""
        return self.lo > 0 or self.hi < 0

    def __str__(self) -> str:
        return f"{self.delta:+.4f} [{self.lo:+.4f}, {self.hi:+.4f}] p={self.p:.3g}"


def resample_counts(windows: int, samples: int = 1000, seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
    """(samples, windows) multiplicities of each window in each bootstrap resample.

    groups: a document id per window; then documents are drawn with replacement and every window
    of a drawn document counts once per draw (a cluster bootstrap: windows of one document are not
    independent)."""
    if windows < 1 or samples < 1:
        raise ValueError(f"bootstrap needs at least one window and one sample, got {windows}, {samples}")
    rng = np.random.default_rng(seed)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (windows,):
            raise ValueError(f"bootstrap groups need one id per window ({windows}), got shape {groups.shape}")
        ids, member = np.unique(groups, return_inverse=True)
        drawn = rng.integers(0, len(ids), size=(samples, len(ids)))
        per_doc = np.zeros((samples, len(ids)), dtype=np.float64)
        np.add.at(per_doc, (np.arange(samples)[:, None], drawn), 1.0)
        return per_doc[:, member]
    idx = rng.integers(0, windows, size=(samples, windows))
    counts = np.zeros((samples, windows), dtype=np.float64)
    np.add.at(counts, (np.arange(samples)[:, None], idx), 1.0)
    return counts


def resampled_ratios(nll: np.ndarray, denom: np.ndarray, counts: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(samples, systems) of scale·Σnll/Σdenom per resample, for nll of shape (systems, windows)."""
    nll = np.atleast_2d(np.asarray(nll, dtype=np.float64))
    denom = np.asarray(denom, dtype=np.float64)
    return scale * (counts @ nll.T) / (counts @ denom)[:, None]


def bpb_interval(
    nll: list[float], nbytes: list[int], docs: np.ndarray, samples: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of bpb (nll in nats) over a bootstrap of documents (every window of a drawn document
    counts)."""
    counts = resample_counts(len(nll), samples, 0, docs)
    r = resampled_ratios(np.asarray(nll)[None, :], np.asarray(nbytes), counts, 1 / LN2)[:, 0]
    return float(np.quantile(r, (1 - level) / 2)), float(np.quantile(r, (1 + level) / 2))


def delta_from_samples(observed: float, diffs: np.ndarray, level: float = 0.95) -> PairedDelta:
    """CI and p-value of an observed difference from its resampled differences."""
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    centred = np.abs(diffs - diffs.mean())
    c = int(np.sum(centred >= abs(observed) - 1e-15))
    p = (c + 1) / (len(diffs) + 1)
    return PairedDelta(float(observed), float(lo), float(hi), p, len(diffs), level)


def paired_bootstrap(
    nll_a: np.ndarray,
    nll_b: np.ndarray,
    denom: np.ndarray,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    scale: float = 1 / LN2,
    groups: np.ndarray | None = None,
) -> PairedDelta:
    """Δ = stat(a) − stat(b), stat = scale·Σnll/Σdenom (default: bits per byte from nats and bytes);
    groups: resample documents (a document id per window) instead of windows."""
    a, b, d = (np.asarray(x, dtype=np.float64) for x in (nll_a, nll_b, denom))
    if not (a.shape == b.shape == d.shape) or a.ndim != 1:
        raise ValueError(f"paired bootstrap needs equal 1-D per-window arrays, got {a.shape}, {b.shape}, {d.shape}")
    counts = resample_counts(len(a), samples, seed, groups)
    r = resampled_ratios(np.stack([a, b]), d, counts, scale)
    observed = scale * (a.sum() - b.sum()) / d.sum()
    return delta_from_samples(observed, r[:, 0] - r[:, 1], level)


def ratio_t_test(diff: np.ndarray, denom: np.ndarray) -> float:
    """Two-sided p that the ratio Σdiff / Σdenom is 0, over n independent units (documents) with these sums.

    t = r / se with r = Σdiff/Σdenom and the linearized (cluster-robust) standard error
    se² = n/(n−1)·Σ(diff − r·denom)² / (Σdenom)², on n − 1 degrees of freedom (scipy): the analytic
    counterpart of the document bootstrap of the same ratio. NaN below two units; no spread: 1 where
    r is 0, else 0."""
    diff, denom = np.asarray(diff, dtype=np.float64), np.asarray(denom, dtype=np.float64)
    n = len(diff)
    if n < 2 or not denom.sum() > 0:
        return math.nan
    r = diff.sum() / denom.sum()
    se = math.sqrt(n / (n - 1) * float(np.sum((diff - r * denom) ** 2))) / denom.sum()
    if se <= 1e-15 * max(abs(r), 1e-300):
        return 1.0 if r == 0 else 0.0
    return float(2 * student.sf(abs(r) / se, n - 1))


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Kendall's tau-b between two rankings (scipy; ties handled), and its p-value. NaN below 2 points."""
    from scipy.stats import kendalltau

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return math.nan, math.nan
    res = kendalltau(x[ok], y[ok], variant="b")
    return float(res.statistic), float(res.pvalue)


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats in both (smaller x, smaller y), sorted by x."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = ok[np.lexsort((y[ok], x[ok]))]
    keep, best = [], math.inf
    for i in order:
        if y[i] < best:
            keep.append(i)
            best = y[i]
    return np.asarray(keep, dtype=np.int64)


CORRECTIONS = ("holm", "bh", "none")


def _finite_order(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p, dtype=np.float64)
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[(p < 0) | (p > 1)].tolist()}")
    idx = np.flatnonzero(np.isfinite(p))
    return p, idx[np.argsort(p[idx], kind="stable")]


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error rate), in the input order.

    The i-th smallest of m finite p-values becomes max over j ≤ i of min(1, (m − j + 1)·p_(j));
    NaN entries stay NaN and do not count in m."""
    p, order = _finite_order(p)
    out = np.full(p.shape, np.nan)
    m = len(order)
    if m:
        stepped = (m - np.arange(m)) * p[order]
        out[order] = np.minimum(1.0, np.maximum.accumulate(stepped))
    return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg step-up adjusted p-values (false discovery rate), in the input order.

    The i-th smallest of m finite p-values becomes min over j ≥ i of min(1, m·p_(j)/j); NaN entries
    stay NaN and do not count in m."""
    p, order = _finite_order(p)
    out = np.full(p.shape, np.nan)
    m = len(order)
    if m:
        stepped = m * p[order] / np.arange(1, m + 1)
        out[order] = np.minimum(1.0, np.minimum.accumulate(stepped[::-1])[::-1])
    return out


def adjust_pvalues(p: np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjusted p-values of one family of tests: method "holm" (default), "bh" or "none"."""
    if method == "holm":
        return holm(p)
    if method == "bh":
        return benjamini_hochberg(p)
    if method == "none":
        return _finite_order(p)[0].copy()
    raise ValueError(f"unknown multiple-comparison correction {method!r}; use one of {', '.join(CORRECTIONS)}")


def correction_name(method: str) -> str:
    """How a report names the correction."""
    return {"holm": "Holm (family-wise error rate)", "bh": "Benjamini–Hochberg (false discovery rate)"}.get(
        method, "none"
    )
