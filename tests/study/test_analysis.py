"""Rank agreement, reversals (one row per pair per budget; bpb: within the byte tolerance, document bootstrap CI,
analytic p, multiplicity-corrected; bytes: exact, not between points landed on one budget), frontier reversals
and BD-rate against a reference system, on synthetic results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.stats import t as scipy_t

from bytegolf.measure import stats
from bytegolf.study import analysis

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


def _pair(rows: list[dict]) -> set[tuple[str, str]]:
    return {(r["preferred"], r["other"]) for r in rows}


def test_bpb_reversal_is_called_only_where_the_test_is_significant_and_p_is_off_the_resampling_floor() -> None:
    a = point("scalar", 0.05, noise=0.02, seed=1, rel_mse=0.01, final_bytes=100)  # best error, worse bpb
    b = point("clustered", 0.00, noise=0.02, seed=2, rel_mse=0.02, final_bytes=100)
    c = point("additive", 0.001, noise=0.02, seed=3, rel_mse=0.005, final_bytes=100)
    rev = analysis.reversals([a, b, c], samples=500)
    assert ("scalar", "clustered") in _pair(rev)  # lower rel_mse, +0.05 bpb: significant
    assert ("additive", "clustered") not in _pair(rev)  # +0.001 bpb in noise
    (sc,) = (r for r in rev if r["preferred"] == "scalar" and r["other"] == "clustered")
    assert sc["delta"] == pytest.approx(a["bpb"] - b["bpb"]) and sc["lo"] > 0
    assert (sc["reversed_on_bpb"], sc["outcome"], sc["unit"]) == ("rel_mse", "bpb", "windows")
    # three pairs tested; p is the analytic paired t-test, far below the bootstrap floor 1/501
    assert (sc["family"], sc["samples"], sc["correction"]) == (3, 500, "holm")
    assert 0 < sc["p"] < 1e-3 / 501 and sc["p_adj"] <= 3 * sc["p"] and sc["significant"]
    # its t statistic is Δ over the spread of the window bootstrap of the same difference
    ratios = stats.resampled_ratios(
        np.stack([a["window_nll"], b["window_nll"]]), BYTES, stats.resample_counts(W, 20_000, 1), 1 / stats.LN2
    )
    t = sc["delta"] / np.std(ratios[:, 0] - ratios[:, 1])
    assert scipy_t.isf(sc["p"] / 2, W - 1) == pytest.approx(t, rel=0.05)


def test_bpb_test_resamples_documents_where_the_results_carry_them() -> None:
    docs = np.repeat(np.arange(12), 4).tolist()  # 12 documents of 4 windows
    a = point("scalar", 0.02, noise=0.005, seed=5, rel_mse=0.01, final_bytes=100, window_docs=docs)
    per_doc = np.random.default_rng(6).normal(0, 0.01, size=12)[docs]  # b's gain varies by document, not by window
    b = {**a, "format": "clustered", "rel_mse": 0.02}
    b["window_nll"] = (np.array(a["window_nll"]) - BYTES * math.log(2) * (0.02 + per_doc)).tolist()
    (rev,) = analysis.reversals([a, b], samples=400)
    nll_a, nll_b = np.array(a["window_nll"]), np.array(b["window_nll"])
    by_doc = stats.paired_bootstrap(nll_a, nll_b, BYTES, 400, 0.95, 0, groups=np.array(docs))
    by_window = stats.paired_bootstrap(nll_a, nll_b, BYTES, 400, 0.95, 0)
    assert rev["unit"] == "documents" and (rev["lo"], rev["hi"]) == pytest.approx((by_doc.lo, by_doc.hi))
    assert (rev["lo"], rev["hi"]) != pytest.approx((by_window.lo, by_window.hi))
    member = np.array(docs)
    want = stats.ratio_t_test(np.bincount(member, a_minus := nll_a - nll_b), np.bincount(member, BYTES))
    assert a_minus.sum() > 0 and rev["p"] == pytest.approx(want) and rev["p"] < 1 / 401


def test_ratio_t_test_matches_the_one_sample_t_test_for_equal_units() -> None:
    d = RNG.normal(0.3, 1.0, size=30)
    assert stats.ratio_t_test(d, np.ones(30)) == pytest.approx(scipy_stats.ttest_1samp(d, 0.0).pvalue)
    assert stats.ratio_t_test(np.zeros(5), np.ones(5)) == 1.0
    assert stats.ratio_t_test(2 * np.arange(1, 6.0), np.arange(1, 6.0)) == 0.0  # the same shift everywhere
    assert math.isnan(stats.ratio_t_test(np.ones(1), np.ones(1)))


def _with_p(monkeypatch: pytest.MonkeyPatch, p: dict[tuple[str, str], float]) -> None:
    """Make the paired test of points (a, b) (by format) give Δ = +0.01 (a worse) with the given p (0.5 elsewhere)."""

    def fake(ra, rb, samples, level, seed):
        got = p.get((ra["format"], rb["format"]), 0.5)
        return stats.PairedDelta(0.01, 0.001, 0.02, got, samples, level), "windows"

    monkeypatch.setattr(analysis, "paired_test", fake)


def test_a_reversal_significant_only_before_correction_is_reported_as_not_significant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # four points, rel_mse prefers f0 < f1 < f2 < f3; six pairs tested; only (f0, f1) has a small p
    pts = [point(f"f{k}", 0.0, rel_mse=0.01 * (k + 1), final_bytes=1000) for k in range(4)]
    _with_p(monkeypatch, {("f0", "f1"): 0.01})
    for method, adjusted, significant in (("holm", 0.06, False), ("bh", 0.06, False), ("none", 0.01, True)):
        (rev,) = analysis.reversals(pts, samples=2000, correction=method)
        assert (rev["preferred"], rev["other"], rev["family"]) == ("f0", "f1", 6)
        assert rev["p"] == pytest.approx(0.01) and rev["p_adj"] == pytest.approx(adjusted)
        assert rev["significant"] is significant and rev["bpb_significant"] is significant
    # the textbook family: raw p 0.01, 0.04, 0.03, 0.005 over four tests (two more pairs at p = 0.5 make six)
    _with_p(monkeypatch, {("f0", "f1"): 0.01, ("f0", "f2"): 0.04, ("f0", "f3"): 0.03, ("f1", "f2"): 0.005})
    got = {(r["preferred"], r["other"]): (r["p_adj"], r["significant"]) for r in analysis.reversals(pts, samples=2000)}
    # Holm over m = 6: 0.005·6 = 0.03, 0.01·5 = 0.05, 0.03·4 = 0.12, 0.04·3 = 0.12
    assert got == {
        ("f1", "f2"): (pytest.approx(0.03), True),
        ("f0", "f1"): (pytest.approx(0.05), True),
        ("f0", "f3"): (pytest.approx(0.12), False),
        ("f0", "f2"): (pytest.approx(0.12), False),
    }


def test_byte_reversals_are_exact_whatever_the_size_difference() -> None:
    a = point("scalar", 0.0, nominal_bits_per_weight=3.0, final_bytes=500, rel_mse=0.1)
    b = point("clustered", 0.0, nominal_bits_per_weight=4.0, final_bytes=400, rel_mse=0.1)
    (rev,) = analysis.reversals([a, b], samples=200)
    assert (rev["preferred"], rev["other"], rev["delta_bytes"]) == ("scalar", "clustered", 100.0)
    assert (rev["outcome"], rev["reversed_on_bytes"]) == ("final_bytes", "nominal_bits_per_weight")
    assert rev["significant"] and not rev["bpb_significant"]
    assert math.isnan(rev["delta"]) and rev["family"] == 0  # 25% apart: no bpb test


def _landed(fmt: str, shift: float, budget: int, nbytes: int, **kw) -> dict:
    """A point a compare searched to `budget` (status ok)."""
    return point(
        fmt,
        shift,
        noise=0.01,
        seed=len(fmt),
        final_bytes=nbytes,
        counted_bytes=nbytes,
        budget_bytes=budget,
        status="ok",
        **kw,
    )


def test_no_byte_reversal_between_points_landed_on_the_same_budget() -> None:
    # nominal bits prefer pg_top, its artifact is 401 B larger: where both were searched to 8 MB that is landing
    # noise, not a reversal; the own-size export (not searched) against a landed point still counts
    top = _landed("pg_top", 0.0, 8_000_000, 7_980_538, nominal_bits_per_weight=6.07, entropy_bound_bytes=7.90e6)
    rec = _landed("pg_record", 0.0, 8_000_000, 7_980_137, nominal_bits_per_weight=6.12, entropy_bound_bytes=7.95e6)
    own = point("x", 0.0, variant="scalar@own", status="own", final_bytes=7_205_527, counted_bytes=7_205_527)
    own["nominal_bits_per_weight"] = 6.5
    rev = analysis.reversals([top, rec, own], samples=200)
    assert _pair(rev) == {("pg_top", "scalar@own"), ("pg_record", "scalar@own")}  # not pg_top over pg_record
    r = next(r for r in rev if r["preferred"] == "pg_top")
    assert (r["group"], r["reversed_on_bytes"], r["reversed_on_bpb"]) == (
        "budget 8,000,000 B",
        "nominal_bits_per_weight",
        "",
    )
    assert (r["final_bytes_preferred"], r["final_bytes_other"], r["delta_bytes"]) == (7_980_538, 7_205_527, 775_011)
    assert rev == analysis.reversals([top, rec, own], samples=200)  # deterministic
    # the same two landed points as a sweep (no budget searched): the 401 B are the format's, a reversal
    (sweep,) = analysis.reversals([{**r, "budget_bytes": None, "status": "ok"} for r in (top, rec)], samples=200)
    assert (sweep["group"], sweep["preferred"], sweep["delta_bytes"]) == ("all points", "pg_top", 401)
    assert sweep["reversed_on_bytes"] == "nominal_bits_per_weight, entropy_bound_bytes"


def test_one_row_per_pair_per_budget_with_every_metric_and_no_twin_or_seed_repeats() -> None:
    # rel_mse and output_error both prefer pg_top, which is 0.03 bpb worse; its @own export is the same evaluation
    # (same_as), scalar has an unbudgeted twin too (the old "budget 0 B" group) and an other-seed repeat: one row,
    # in the budget's group
    top = _landed(
        "pg_top",
        0.03,
        8000,
        7_950,
        rel_mse=0.01,
        output_error=1e-4,
        nominal_bits_per_weight=6.0,
        artifact="/c/points/8000/pg_top_1/model.bgz",
        same_as="pg_top@own_2",
    )
    twin = {
        **top,
        "variant": "pg_top@own",
        "status": "own",
        "budget_bytes": None,
        "same_as": None,
        "artifact": "/c/points/own/pg_top@own_2/model.bgz",
    }
    sc = _landed("scalar", 0.0, 8000, 7_990, rel_mse=0.02, output_error=2e-4, nominal_bits_per_weight=6.1)
    sc_twin = {**sc, "variant": "scalar@own", "status": "own", "budget_bytes": None}
    seed = {**sc, "status": "seed", "budget_bytes": None, "seed_budget": 8000, "bpb": sc["bpb"] + 0.01}
    rows = [top, twin, sc, sc_twin, seed]
    groups = analysis.reversal_groups(rows)
    assert [(g, b, len(rs)) for g, b, rs in groups] == [("budget 8,000 B", 8000, 2), ("off budget", None, 2)]
    rev = analysis.reversals(rows, samples=300)
    (r,) = rev
    assert (r["group"], r["budget"], r["preferred"], r["other"]) == ("budget 8,000 B", 8000, "pg_top", "scalar")
    assert (r["reversed_on_bpb"], r["reversed_on_bytes"]) == ("rel_mse, output_error", "")
    assert r["prefers_preferred"] == "rel_mse, output_error, nominal_bits_per_weight"
    assert (r["rel_mse_preferred"], r["rel_mse_other"], r["output_error_preferred"]) == (0.01, 0.02, 1e-4)
    assert math.isnan(r["entropy_bound_bytes_preferred"]) and set(analysis.REVERSAL_COLUMNS) == set(r)
    assert r["delta"] == pytest.approx(top["bpb"] - sc["bpb"]) and r["lo"] > 0 and r["family"] == 1


def test_pairs_outside_the_byte_tolerance_are_not_compared_on_bpb() -> None:
    # all three: rel_mse prefers the worse-bpb point. 9,900 vs 9,700 B is 2% of the 10,000 B budget; 9,600 is 3%
    a = _landed("a", 0.05, 10_000, 9_900, rel_mse=0.01)
    b = _landed("b", 0.02, 10_000, 9_700, rel_mse=0.02)
    c = _landed("c", 0.00, 10_000, 9_600, rel_mse=0.03)
    rev = analysis.reversals([a, b, c], samples=300)
    assert _pair(rev) == {("a", "b"), ("b", "c")} and {r["family"] for r in rev} == {2}
    assert {r["tolerance"] for r in rev} == {0.02}
    assert _pair(analysis.reversals([a, b, c], samples=300, tolerance=0.05)) == {("a", "b"), ("b", "c"), ("a", "c")}
    assert analysis.reversals([a, b, c], samples=300, tolerance=0.005) == []


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
