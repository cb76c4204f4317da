"""Bjøntegaard deltas between two rate–quality fronts: BD-rate (bytes at equal quality) and BD-bpb
(quality at equal bytes).

Rate is the final artifact size in bytes (taken as log rate), quality a smaller-is-better number
(bpb). Each system's points are first reduced to their Pareto front (no other point has fewer
bytes and lower bpb): along it bpb falls strictly as bytes rise, so log rate is a monotone
function of bpb and bpb of log rate, and a shape-preserving cubic (pchip) interpolates either.

BD-rate: log rate as a function of bpb for both fronts, integrated over the bpb range both cover,
mean difference d = mean(log R_test − log R_ref); BD-rate = (exp(d) − 1)·100 %. Negative: the test
system needs fewer bytes for the same bpb. A front that is the reference at 0.9× the bytes gives
−10 %; swapping the arguments gives 1/(1 + BD/100) − 1 (+11.1 % there).

BD-bpb: bpb as a function of log rate, integrated over the log-rate range both cover; the mean
bpb difference test − ref. Negative: the test system has lower bpb at the same bytes.

Fewer than two Pareto points or no overlapping range is a FrontError (a BytegolfError and a
ValueError), which says which and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bytegolf.errors import BytegolfError
from bytegolf.measure.stats import pareto_front


class FrontError(BytegolfError, ValueError):
    """Two fronts that admit no Bjøntegaard delta: too few points, or ranges that do not overlap."""


@dataclass(frozen=True)
class Front:
    """A Pareto front: log rate ascending, quality strictly descending (both arrays of one length)."""

    log_rate: np.ndarray
    quality: np.ndarray

    def __len__(self) -> int:
        return len(self.log_rate)


def front(rate: np.ndarray, quality: np.ndarray, name: str = "front") -> Front:
    """The Pareto points of (rate, quality), both smaller-is-better, as log rate ascending / quality
    descending; non-finite and non-positive rates are dropped. FrontError below two points."""
    r, q = np.asarray(rate, dtype=np.float64).ravel(), np.asarray(quality, dtype=np.float64).ravel()
    if r.shape != q.shape:
        raise FrontError(f"{name}: {len(r)} rates but {len(q)} quality values")
    ok = np.flatnonzero(np.isfinite(r) & np.isfinite(q) & (r > 0))
    keep = ok[pareto_front(r[ok], q[ok])]
    if len(keep) < 2:
        raise FrontError(
            f"{name}: {len(keep)} Pareto point(s) of {len(ok)} usable; a Bjøntegaard delta needs at least 2"
        )
    return Front(np.log(r[keep]), q[keep])


def _mean_over(x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, what: str) -> tuple[float, float, float]:
    """Mean of pchip(x1, y1) − pchip(x0, y0) over the x range both cover, and that range."""
    from scipy.interpolate import PchipInterpolator

    lo, hi = max(x0.min(), x1.min()), min(x0.max(), x1.max())
    if not hi > lo:
        raise FrontError(
            f"the fronts do not overlap in {what}: reference {x0.min():.6g}..{x0.max():.6g}, "
            f"test {x1.min():.6g}..{x1.max():.6g}"
        )
    o0, o1 = np.argsort(x0), np.argsort(x1)
    i0 = PchipInterpolator(x0[o0], y0[o0]).integrate(lo, hi)
    i1 = PchipInterpolator(x1[o1], y1[o1]).integrate(lo, hi)
    return float((i1 - i0) / (hi - lo)), float(lo), float(hi)


def bd_rate(ref_rate: np.ndarray, ref_quality: np.ndarray, test_rate: np.ndarray, test_quality: np.ndarray) -> float:
    """BD-rate in percent of the test front against the reference front (negative: test needs fewer bytes
    for the same quality). FrontError: fewer than two Pareto points, or no common quality range."""
    ref, test = front(ref_rate, ref_quality, "reference"), front(test_rate, test_quality, "test")
    d, _, _ = _mean_over(ref.quality, ref.log_rate, test.quality, test.log_rate, "quality")
    return (math.exp(d) - 1.0) * 100.0


def bd_quality(ref_rate: np.ndarray, ref_quality: np.ndarray, test_rate: np.ndarray, test_quality: np.ndarray) -> float:
    """BD-bpb (BD-quality): mean quality difference test − reference over the common log-rate range
    (negative: test is better at the same bytes). FrontError as for bd_rate."""
    ref, test = front(ref_rate, ref_quality, "reference"), front(test_rate, test_quality, "test")
    d, _, _ = _mean_over(ref.log_rate, ref.quality, test.log_rate, test.quality, "log bytes")
    return d


bd_bpb = bd_quality


def bd_rate_or_nan(rate_a: np.ndarray, dist_a: np.ndarray, rate_b: np.ndarray, dist_b: np.ndarray) -> float:
    """bd_rate of curve b against anchor a, in percent; NaN where it raises FrontError."""
    try:
        return bd_rate(rate_a, dist_a, rate_b, dist_b)
    except FrontError:
        return math.nan
