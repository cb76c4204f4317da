"""Rank agreement, reversals (bootstrap-gated for bpb, exact for bytes) and frontier reversals on synthetic results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bytegolf import analysis

W = 48
RNG = np.random.default_rng(0)
BYTES = RNG.integers(2000, 3000, size=W).astype(float)
BASE = BYTES * math.log(2) * RNG.normal(1.3, 0.1, size=W)


def point(fmt: str, bpb_shift: float, noise: float = 0.0, seed: int = 1, **kw) -> dict:
    rng = np.random.default_rng(seed)
    nll = BASE + BYTES * math.log(2) * (bpb_shift + rng.normal(0, noise, size=W) if noise else bpb_shift)
    bpb = float(nll.sum() / math.log(2) / BYTES.sum())
    r = {
        "format": fmt,
        "codec": "zstd",
        "format_params": kw.pop("format_params", {}),
        "bpb": bpb,
        "window_nll": nll.tolist(),
        "window_bytes": BYTES.astype(int).tolist(),
        "status": "ok",
        "params": 1000,
    }
    r.update(kw)
    return r


def test_bpb_reversal_is_called_only_where_the_ci_excludes_zero() -> None:
    a = point("scalar", 0.05, rel_mse=0.01, final_bytes=100, nominal_bits_per_weight=4.0)  # best error, worse bpb
    b = point("clustered", 0.00, rel_mse=0.02, final_bytes=100, nominal_bits_per_weight=4.0)
    c = point("additive", 0.001, noise=0.02, seed=3, rel_mse=0.005, final_bytes=100, nominal_bits_per_weight=4.0)
    rev = [r for r in analysis.reversals([a, b, c], samples=500) if r["metric"] == "rel_mse"]
    pairs = {(r["preferred"], r["other"]) for r in rev}
    assert ("scalar", "clustered") in pairs  # lower rel_mse, +0.05 bpb: significant
    assert ("additive", "clustered") not in pairs  # +0.001 bpb in noise: CI includes 0
    (sc,) = (r for r in rev if r["preferred"] == "scalar" and r["other"] == "clustered")
    assert sc["delta"] == pytest.approx(a["bpb"] - b["bpb"]) and sc["lo"] > 0


def test_byte_reversals_are_exact() -> None:
    a = point("scalar", 0.0, nominal_bits_per_weight=3.0, final_bytes=500, rel_mse=0.1)
    b = point("clustered", 0.0, nominal_bits_per_weight=4.0, final_bytes=400, rel_mse=0.1)
    (rev,) = [r for r in analysis.reversals([a, b], samples=200) if r["metric"] == "nominal_bits_per_weight"]
    assert (rev["preferred"], rev["other"], rev["delta"]) == ("scalar", "clustered", 100.0)


def test_rank_agreement_and_groups_by_budget() -> None:
    pts = [
        point("scalar", s, rel_mse=e, final_bytes=fb, budget_bytes=bb, nominal_bits_per_weight=n)
        for s, e, fb, bb, n in [
            (0.00, 0.01, 990, 1000, 3),
            (0.01, 0.02, 995, 1000, 2),
            (0.02, 0.03, 999, 1000, 1),
            (0.00, 0.05, 500, 500, 1),
        ]
    ]
    pts.append({"format": "x", "status": "does_not_fit", "final_bytes": 9999, "budget_bytes": 500, "bpb": None})
    groups = analysis.groups(pts)
    assert list(groups) == ["budget 1,000 B", "budget 500 B"] and len(groups["budget 500 B"]) == 1
    rows = {(r["group"], r["metric"], r["outcome"]): r for r in analysis.rank_agreement(pts)}
    assert rows[("budget 1,000 B", "rel_mse", "bpb")]["tau_b"] == pytest.approx(1.0)
    assert rows[("budget 1,000 B", "nominal_bits_per_weight", "final_bytes")]["tau_b"] == pytest.approx(-1.0)
    assert math.isnan(rows[("budget 500 B", "rel_mse", "bpb")]["tau_b"])


def test_frontier_reversal_when_nominal_and_final_bytes_disagree() -> None:
    q = np.array([0.01, 0.02, 0.04, 0.08])
    base = 1e5 * (1 - np.log2(q) / 10)
    pts = []
    for fmt, nominal_scale, final_scale in (("scalar", 1.0, 1.0), ("clustered", 0.8, 1.2)):
        for e, b in zip(q, base, strict=True):
            pts.append(
                point(
                    fmt,
                    0.0,
                    rel_mse=float(e),
                    final_bytes=float(b * final_scale),
                    nominal_bits_per_weight=float(b * nominal_scale * 8 / 1000),
                )
            )
    assert analysis.bd_rates(pts, "rel_mse")[("clustered", "scalar")] == pytest.approx(20.0, abs=0.5)
    (rev,) = analysis.frontier_reversals(pts)
    assert (rev["test"], rev["anchor"]) == ("clustered", "scalar")
    assert rev["bd_rate_nominal"] == pytest.approx(-20.0, abs=0.5) and rev["bd_rate_final"] == pytest.approx(
        20.0, abs=0.5
    )
