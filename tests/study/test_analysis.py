"""Rank agreement, reversals (bootstrap-gated and multiplicity-corrected for bpb, exact for bytes), frontier
reversals and BD-rate against a reference system, on synthetic results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bytegolf.study import analysis, stats

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


def test_bpb_reversal_is_called_only_where_the_bootstrap_is_significant() -> None:
    a = point("scalar", 0.05, rel_mse=0.01, final_bytes=100, nominal_bits_per_weight=4.0)  # best error, worse bpb
    b = point("clustered", 0.00, rel_mse=0.02, final_bytes=100, nominal_bits_per_weight=4.0)
    c = point("additive", 0.001, noise=0.02, seed=3, rel_mse=0.005, final_bytes=100, nominal_bits_per_weight=4.0)
    rev = [r for r in analysis.reversals([a, b, c], samples=500) if r["metric"] == "rel_mse"]
    pairs = {(r["preferred"], r["other"]) for r in rev}
    assert ("scalar", "clustered") in pairs  # lower rel_mse, +0.05 bpb: significant
    assert ("additive", "clustered") not in pairs  # +0.001 bpb in noise: CI includes 0
    (sc,) = (r for r in rev if r["preferred"] == "scalar" and r["other"] == "clustered")
    assert sc["delta"] == pytest.approx(a["bpb"] - b["bpb"]) and sc["lo"] > 0
    # three pairs tested; the clear reversal sits at the bootstrap floor 1/501 and Holm multiplies it by 3
    assert (sc["family"], sc["samples"], sc["correction"]) == (3, 500, "holm")
    assert sc["p"] == pytest.approx(1 / 501) and sc["p_adj"] == pytest.approx(3 / 501) and sc["significant"]


def test_resamples_are_raised_until_the_corrected_p_can_reach_alpha() -> None:
    a = point("scalar", 0.05, rel_mse=0.01)
    b = point("clustered", 0.00, rel_mse=0.02)
    c = point("additive", 0.02, rel_mse=0.03)
    rev = [r for r in analysis.reversals([a, b, c], samples=20) if r["outcome"] == "bpb"]
    assert {r["samples"] for r in rev} == {120}  # 2 · 3 tests / 0.05
    (sc,) = (r for r in rev if r["preferred"] == "scalar" and r["other"] == "clustered")
    assert sc["p"] == pytest.approx(1 / 121) and sc["p_adj"] == pytest.approx(3 / 121) and sc["significant"]


def _with_p(monkeypatch: pytest.MonkeyPatch, p: dict[tuple[int, int], float]) -> None:
    """Make the paired bootstrap of points (i, j) give Δ = +0.01 (i worse) with the given p (0.5 elsewhere)."""

    def fake(rs, samples, level, seed):
        return lambda i, j: stats.PairedDelta(0.01, 0.001, 0.02, p.get((i, j), 0.5), samples, level)

    monkeypatch.setattr(analysis, "_bpb_deltas", fake)


def test_a_reversal_significant_only_before_correction_is_reported_as_not_significant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # four points, rel_mse prefers 0 < 1 < 2 < 3; six pairs tested; only (0, 1) has a small p
    pts = [point(f"f{k}", 0.0, rel_mse=0.01 * (k + 1)) for k in range(4)]
    _with_p(monkeypatch, {(0, 1): 0.01})
    for method, adjusted, significant in (("holm", 0.06, False), ("bh", 0.06, False), ("none", 0.01, True)):
        (rev,) = analysis.reversals(pts, samples=2000, correction=method)
        assert (rev["preferred"], rev["other"], rev["family"]) == ("f0", "f1", 6)
        assert rev["p"] == pytest.approx(0.01) and rev["p_adj"] == pytest.approx(adjusted)
        assert rev["significant"] is significant
    # the textbook family: raw p 0.01, 0.04, 0.03, 0.005 over four tests (two more pairs at p = 0.5 make six)
    _with_p(monkeypatch, {(0, 1): 0.01, (0, 2): 0.04, (0, 3): 0.03, (1, 2): 0.005})
    got = {(r["preferred"], r["other"]): (r["p_adj"], r["significant"]) for r in analysis.reversals(pts, samples=2000)}
    # Holm over m = 6: 0.005·6 = 0.03, 0.01·5 = 0.05, 0.03·4 = 0.12, 0.04·3 = 0.12
    assert got == {
        ("f1", "f2"): (pytest.approx(0.03), True),
        ("f0", "f1"): (pytest.approx(0.05), True),
        ("f0", "f3"): (pytest.approx(0.12), False),
        ("f0", "f2"): (pytest.approx(0.12), False),
    }


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


def _front(fmt: str, scale: float, n: int = 4, **kw) -> list[dict]:
    """n points of one system on the front bytes = scale · 1e6 · 2^k, bpb = 1.7 + 0.8 / (k + 1)."""
    return [{**point(fmt, 0.0), "final_bytes": scale * 1e6 * 2**k, "bpb": 1.7 + 0.8 / (k + 1), **kw} for k in range(n)]


def test_bd_rate_against_pg_top_joins_its_own_size_point_and_skips_single_points() -> None:
    pts = _front("scalar", 0.9) + _front("clustered", 1.0, variant="pg_top")
    pts[-1] = {**pts[-1], "variant": "pg_top@own", "budget_bytes": None}  # the @own point joins pg_top's front
    pts.append({**point("additive", 0.0), "final_bytes": 3e6, "bpb": 2.0})  # one point: no front
    ref, rows, skipped = analysis.bd_against_reference(pts)
    assert ref == "pg_top"
    (row,) = rows
    assert (row["system"], row["points"], row["front"]) == ("scalar", 4, 4)
    assert row["bd_rate"] == pytest.approx(-10.0, abs=1e-6)  # the same front at 0.9× the bytes
    assert row["bd_bpb"] < 0
    assert skipped == ["additive: 1 point(s), 1 on its Pareto front; a front needs 2"]


def test_bd_rate_reference_falls_back_to_the_best_ranked_system() -> None:
    worse = [{**r, "bpb": r["bpb"] + 0.05} for r in _front("clustered", 1.0)]  # more bytes and more bpb
    pts = _front("scalar", 0.9) + worse + [{**point("x", 0.0), "final_bytes": 1e9, "bpb": 9.0}]
    pts.append({**point("y", 0.0), "variant": "pg_top@own", "final_bytes": 2e6, "bpb": 1.0})  # best, but 1 point
    ref, rows, skipped = analysis.bd_against_reference(pts)
    assert ref == "scalar"  # the lowest bpb (1.9) among the systems with a front
    assert [r["system"] for r in rows] == ["clustered"]
    assert rows[0]["bd_rate"] > 100 / 0.9 - 100 and rows[0]["bd_bpb"] > 0.05  # worse on both axes
    assert skipped[-1] == "reference pg_top has no front; the reference is the best-ranked system, scalar"
