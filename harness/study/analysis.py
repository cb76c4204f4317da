"""Ranking agreement and ranking reversals between pre-artifact metrics and what the artifact gives.

A pre-artifact metric (weight rel. MSE, calibration output error, nominal bits/weight, entropy
bound) predicts an outcome (bpb of the decoded model, final bytes of the artifact). For each
comparable group of points (all points of a sweep; the points of one budget in a compare), the
agreement of the two rankings is Kendall's tau-b.

A *reversal* is a pair of points where a metric prefers one and the outcome the other, listed once
per pair of systems per budget (reversals(): the points of reversal_groups(); other-seed repeats and
an @own reference that is the same evaluation as its budget point are not compared again), with
both points' bytes and every metric. On bpb, only pairs whose final bytes lie within a tolerance
(2% of the budget by default) count, and a reversal is called only where the paired test of the bpb
difference (document bootstrap CI, paired t-test p over documents) is significant: its p-value,
adjusted for multiple comparisons over every pair tested (Holm by default, Benjamini–Hochberg on
request), is at most α; pairs significant only before the correction are listed as not
significant. Final bytes are exact, so any strict difference counts, except between two points
landed on the same budget (their bytes are where the budget search stopped).

Format-level: per format, the Pareto front on (final bytes, bpb) and (final bytes, rel_mse);
BD-rate between the fronts of two formats; and a *frontier reversal* where BD-rate on nominal
bytes and BD-rate on final bytes (same quality axis) disagree in sign: the analytic bit count
ranks the two formats one way, the artifact the other.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from bytegolf.measure import stats
from bytegolf.study import bdrate

PRE = ("rel_mse", "output_error", "nominal_bits_per_weight", "entropy_bound_bytes")
OUTCOMES = ("final_bytes", "bpb")
PAIRS = (
    ("rel_mse", "bpb"),
    ("output_error", "bpb"),
    ("nominal_bits_per_weight", "final_bytes"),
    ("entropy_bound_bytes", "final_bytes"),
)


def number(r: dict[str, Any], key: str) -> float:
    v = r.get(key)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def scored(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results with a bpb (does-not-fit rows and errors left out); a single row's test is
    bytegolf.study.ranking.evaluated."""
    return [r for r in results if r.get("bpb") is not None and r.get("status", "ok") != "does_not_fit"]


def system(r: dict[str, Any]) -> str:
    """What a point is compared as: its compare variant label if it has one, else its format."""
    return str(r.get("variant") or r.get("format"))


def labels(results: list[dict[str, Any]]) -> list[str]:
    """Short distinct names: format (+codec when several) plus the settings that vary within that format."""
    keys: dict[tuple[str, str], set[str]] = {}
    for r in results:
        for k, v in (r.get("format_params") or {}).items():
            keys.setdefault((system(r), k), set()).add(repr(v))
    codecs = {r.get("codec") for r in results}
    out = []
    for r in results:
        p, fmt = r.get("format_params") or {}, system(r)
        parts = [fmt + (f"+{r.get('codec')}" if len(codecs) > 1 else "")]
        for k in sorted(p):
            if len(keys.get((fmt, k), ())) > 1:
                parts.append(f"{k}={p[k]:g}" if isinstance(p[k], float) else f"{k}={p[k]}")
        out.append(" ".join(parts))
    return out


def groups(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Comparable points: one group per compare budget, else one group of everything evaluated."""
    ev = scored(results)
    if any(r.get("budget_bytes") for r in ev):
        out: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(ev, key=lambda r: -(r.get("budget_bytes") or 0)):
            out.setdefault(f"budget {int(r.get('budget_bytes') or 0):,} B", []).append(r)
        return out
    return {"all points": ev} if ev else {}


def rank_agreement(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Kendall tau-b between each pre-artifact metric and each outcome, per group."""
    rows = []
    for name, rs in groups(results).items():
        for pre in PRE:
            for out in OUTCOMES:
                x = np.array([number(r, pre) for r in rs])
                y = np.array([number(r, out) for r in rs])
                tau, p = stats.kendall_tau_b(x, y)
                n = int(np.sum(np.isfinite(x) & np.isfinite(y)))
                rows.append({"group": name, "metric": pre, "outcome": out, "tau_b": tau, "p": p, "n": n})
    return rows


TOLERANCE = 0.02  # pairs whose final bytes differ by more than this share of the budget are not compared on bpb
UNRANKED = ("seed", "over_budget")  # rows no reversal compares: other-seed repeats, points set aside over budget


def _final(r: dict[str, Any]) -> float:
    return number(r, "final_bytes")


def _dirname(r: dict[str, Any]) -> str | None:
    """The name of a result's point directory (what another result's same_as names)."""
    return Path(str(r["artifact"])).parent.name if r.get("artifact") else None


def _twins(own: dict[str, Any], row: dict[str, Any]) -> bool:
    """Whether an @own row and another row of the same system are one evaluation (same_as either way, or
    the same final bytes and bpb)."""
    if base_system(own) != base_system(row) or own.get("codec") != row.get("codec"):
        return False
    a, b = _dirname(own), _dirname(row)
    linked = (a is not None and row.get("same_as") == a) or (b is not None and own.get("same_as") == b)
    return linked or (_final(own) == _final(row) and number(own, "bpb") == number(row, "bpb"))


def _evaluation(r: dict[str, Any]) -> tuple:
    """What identifies one evaluation across groups (an @own row and its budget twin share it)."""
    return base_system(r), r.get("codec"), _final(r), number(r, "bpb")


def reversal_groups(results: list[dict[str, Any]]) -> list[tuple[str, int | None, list[dict[str, Any]]]]:
    """(name, budget, rows) of the points reversals() compares.

    A compare: per budget, largest first, the points landed on it (budget_bytes; status ok, at_limit or
    short) plus the reference exports at their own size that fit it (status own, as the compare's ranking
    takes them) unless the @own row is a twin of a landed row (same_as: one evaluation); then one
    "off budget" group of the unbudgeted own and front points. Other-seed repeats (status seed) and
    points set aside over budget are left out. A sweep (no budgets): one group of every evaluated point."""
    ev = [r for r in scored(results) if r.get("status") not in UNRANKED]
    budgets = sorted({int(r["budget_bytes"]) for r in ev if r.get("budget_bytes")}, reverse=True)
    if not budgets:
        return [("all points", None, ev)] if ev else []
    out: list[tuple[str, int | None, list[dict[str, Any]]]] = []
    unbudgeted = [r for r in ev if not r.get("budget_bytes")]
    for b in budgets:
        landed = [r for r in ev if r.get("budget_bytes") == b]
        own = [r for r in unbudgeted if r.get("status") == "own" and number(r, "counted_bytes") <= b]
        own = [r for r in own if not any(_twins(r, x) for x in landed)]
        out.append((f"budget {b:,} B", b, landed + own))
    if unbudgeted:
        out.append(("off budget", None, unbudgeted))
    return out


def _landed(r: dict[str, Any], budget: int | None) -> bool:
    """Whether the point was searched to this budget (its bytes are the search's landing, not the format's)."""
    return budget is not None and r.get("budget_bytes") == budget and r.get("status") not in ("own", "front")


def _within(ra: dict[str, Any], rb: dict[str, Any], budget: int | None, tolerance: float) -> bool:
    """Whether two points' final bytes differ by at most tolerance × the budget (no budget: × the larger)."""
    fa, fb = _final(ra), _final(rb)
    if not (math.isfinite(fa) and math.isfinite(fb)):
        return False
    return abs(fa - fb) <= tolerance * (budget if budget else max(fa, fb))


def paired_test(
    ra: dict[str, Any], rb: dict[str, Any], samples: int, level: float, seed: int
) -> tuple[stats.PairedDelta, str] | None:
    """Δbpb = bpb(a) − bpb(b) on shared windows and the unit resampled ("documents"; "windows" where the
    rows do not share window_docs): the CI of the paired bootstrap of those units (as the compare's
    ranking does it), p of ratio_t_test over the same units; None when the windows differ."""
    wb = ra.get("window_bytes") or ()
    if not wb or list(wb) != list(rb.get("window_bytes") or ()):
        return None
    if any(len(r.get("window_nll") or ()) != len(wb) for r in (ra, rb)):
        return None
    docs, unit = None, "windows"
    da, db = ra.get("window_docs"), rb.get("window_docs")
    if da is not None and len(da) == len(wb) and list(da) == list(db or ()):
        docs, unit = np.asarray(da), "documents"
    a, b = np.asarray(ra["window_nll"], dtype=np.float64), np.asarray(rb["window_nll"], dtype=np.float64)
    nbytes = np.asarray(wb, dtype=np.float64)
    boot = stats.paired_bootstrap(a, b, nbytes, samples, level, seed, groups=docs)
    member = np.unique(docs, return_inverse=True)[1] if docs is not None else np.arange(len(wb))
    p = stats.ratio_t_test(np.bincount(member, weights=a - b), np.bincount(member, weights=nbytes))
    return stats.PairedDelta(boot.delta, boot.lo, boot.hi, p, samples, level), unit


REVERSAL_COLUMNS = (
    "group",
    "budget",
    "preferred",
    "other",
    "outcome",
    "reversed_on_bpb",
    "reversed_on_bytes",
    "prefers_preferred",
    "prefers_other",
    "final_bytes_preferred",
    "final_bytes_other",
    "delta_bytes",
    *(f"{m}_{side}" for m in PRE for side in ("preferred", "other")),
    "bpb_preferred",
    "bpb_other",
    "delta",
    "lo",
    "hi",
    "p",
    "p_adj",
    "bpb_significant",
    "significant",
    "unit",
    "family",
    "samples",
    "correction",
    "alpha",
    "tolerance",
)


def reversals(
    results: list[dict[str, Any]],
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    correction: str = "holm",
    alpha: float | None = None,
    tolerance: float = TOLERANCE,
) -> list[dict[str, Any]]:
    """Pairs of points where a pre-artifact metric prefers one and the outcome the other: one row per pair
    of systems per group of reversal_groups() (see the module doc), keys REVERSAL_COLUMNS.

    `preferred` is the point the reversed metric(s) prefer; each row carries both points' final bytes,
    every PRE metric of both, which metrics prefer which (`prefers_preferred`, `prefers_other`), and
    Δbpb = bpb(preferred) − bpb(other) with its CI and p where the pair was tested. Two settings of one
    system (a reference at a budget and at its own size) are not a pair, and a pair of evaluations is
    compared once, in the first group that holds both.

    bpb (metrics rel_mse, output_error): only pairs on the same windows whose final bytes differ by at
    most `tolerance` × the budget (off budget: × the larger of the two) are tested: a bpb difference
    between points of very different size is no reversal. The CI is the percentile interval of the
    paired document bootstrap (`samples` resamples of the documents of window_docs, as the compare's
    ranking does; windows where window_docs is missing); p is the two-sided paired t-test of the same
    difference over the documents' summed NLL differences and bytes (ratio_t_test: linearized standard
    error, n − 1 degrees of freedom, scipy), analytic, so not pinned at a resampling floor. A pair is listed
    where p ≤ alpha (1 − level by default) and a metric prefers the worse point; `p_adj` adjusts p by
    `correction` ("holm", "bh" or "none") over the family of every pair tested (`family`), and
    `bpb_significant` is p_adj ≤ alpha.

    final bytes (metrics nominal_bits_per_weight, entropy_bound_bytes): exact, any strict difference
    counts, whatever the size difference (the bytes are the outcome), but not between two points landed
    on the same budget (their bytes are where the search stopped, not what the format gives).
    `significant`: a reversal on bytes, or on bpb after correction."""
    alpha = 1.0 - level if alpha is None else alpha
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    bpb_metrics = [pre for pre, out in PAIRS if out == "bpb"]
    byte_metrics = [pre for pre, out in PAIRS if out == "final_bytes"]
    seen: set[frozenset] = set()
    pending: list[dict[str, Any]] = []
    for name, budget, rs in reversal_groups(results):
        names = labels(rs)
        for i, j in itertools.combinations(range(len(rs)), 2):
            ri, rj = rs[i], rs[j]
            if names[i].replace("@own", "") == names[j].replace("@own", ""):
                continue  # one system at two settings
            pair = frozenset((_evaluation(ri), _evaluation(rj)))
            if len(pair) < 2 or pair in seen:
                continue
            seen.add(pair)
            by_bytes = []  # byte metrics the final bytes reverse, with the side (0: i, 1: j) each prefers
            if not (_landed(ri, budget) and _landed(rj, budget)):
                for pre in byte_metrics:
                    m, o = (number(ri, pre), number(rj, pre)), (_final(ri), _final(rj))
                    if all(map(math.isfinite, (*m, *o))) and m[0] != m[1]:
                        a = 0 if m[0] < m[1] else 1
                        if o[a] > o[1 - a]:
                            by_bytes.append((pre, a))
            ordering = []  # bpb metrics that order the pair, with the side each prefers
            for pre in bpb_metrics:
                m = (number(ri, pre), number(rj, pre))
                if all(map(math.isfinite, m)) and m[0] != m[1]:
                    ordering.append((pre, 0 if m[0] < m[1] else 1))
            test = None
            bpbs = (number(ri, "bpb"), number(rj, "bpb"))
            if ordering and all(map(math.isfinite, bpbs)) and _within(ri, rj, budget, tolerance):
                test = paired_test(ri, rj, samples, level, seed)
            if test is None and not by_bytes:
                continue
            pending.append(
                {"group": name, "budget": budget, "rows": (ri, rj), "names": (names[i], names[j])}
                | {"by_bytes": by_bytes, "ordering": ordering, "test": test}
            )
    tested = [c for c in pending if c["test"] is not None]
    adjusted = stats.adjust_pvalues(np.array([c["test"][0].p for c in tested]), correction) if tested else []
    for c, pa in zip(tested, adjusted, strict=True):
        c["p_adj"] = float(pa)
    found = []
    for c in pending:
        by_bpb: list[str] = []
        worse = None
        if c["test"] is not None:
            d = c["test"][0]
            worse = 0 if d.delta > 0 else 1 if d.delta < 0 else None
            if worse is not None and d.p <= alpha:
                by_bpb = [pre for pre, a in c["ordering"] if a == worse]
        if not by_bpb and not c["by_bytes"]:
            continue
        a = worse if by_bpb else c["by_bytes"][0][1]
        found.append(_reversal_row(c, a, by_bpb, alpha, correction, samples, tolerance, len(tested)))
    return found


def _reversal_row(
    c: dict[str, Any],
    a: int,
    by_bpb: list[str],
    alpha: float,
    correction: str,
    samples: int,
    tolerance: float,
    family: int,
) -> dict[str, Any]:
    """One reversal row, oriented so that `preferred` (side a of the pair) is what the reversed metrics prefer."""
    pref, oth = c["rows"][a], c["rows"][1 - a]
    prefers = {0: [], 1: []}
    for m in PRE:
        x, y = number(pref, m), number(oth, m)
        if math.isfinite(x) and math.isfinite(y) and x != y:
            prefers[0 if x < y else 1].append(m)
    by_bytes = [pre for pre, _ in c["by_bytes"]]
    row: dict[str, Any] = {
        "group": c["group"],
        "budget": c["budget"],
        "preferred": c["names"][a],
        "other": c["names"][1 - a],
        "outcome": ", ".join(o for o, hit in (("bpb", by_bpb), ("final_bytes", by_bytes)) if hit),
        "reversed_on_bpb": ", ".join(by_bpb),
        "reversed_on_bytes": ", ".join(by_bytes),
        "prefers_preferred": ", ".join(prefers[0]),
        "prefers_other": ", ".join(prefers[1]),
        "final_bytes_preferred": _final(pref),
        "final_bytes_other": _final(oth),
        "delta_bytes": _final(pref) - _final(oth),
    }
    for m in PRE:
        row.update({f"{m}_preferred": number(pref, m), f"{m}_other": number(oth, m)})
    row.update(bpb_preferred=number(pref, "bpb"), bpb_other=number(oth, "bpb"))
    nan = math.nan
    row.update(delta=nan, lo=nan, hi=nan, p=nan, p_adj=nan, bpb_significant=False, unit="")
    if c["test"] is not None:
        d, unit = c["test"]
        if a == 1:
            d = _flip(d)
        row.update(delta=d.delta, lo=d.lo, hi=d.hi, p=d.p, p_adj=c["p_adj"], unit=unit)
        row["bpb_significant"] = bool(by_bpb) and c["p_adj"] <= alpha
    row["significant"] = bool(by_bytes) or row["bpb_significant"]
    row.update(family=family, samples=samples, correction=correction, alpha=alpha, tolerance=tolerance)
    return row


def _flip(d: stats.PairedDelta) -> stats.PairedDelta:
    """The same test seen from the other side: b − a."""
    return stats.PairedDelta(-d.delta, -d.hi, -d.lo, d.p, d.samples, d.level)


def by_format(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in scored(results):
        out.setdefault(system(r) + (f"+{r.get('codec')}" if _many_codecs(results) else ""), []).append(r)
    return dict(sorted(out.items()))


def _many_codecs(results: list[dict[str, Any]]) -> bool:
    return len({r.get("codec") for r in results}) > 1


def nominal_bytes(r: dict[str, Any]) -> float:
    """The analytic size: nominal bits/weight × parameters / 8."""
    return number(r, "nominal_bits_per_weight") * number(r, "params") / 8


def front(rs: list[dict[str, Any]], y: str, x: str = "final_bytes") -> list[dict[str, Any]]:
    """The Pareto front of the points on (x, y), both smaller-is-better, sorted by x."""
    xs = np.array([nominal_bytes(r) if x == "nominal_bytes" else number(r, x) for r in rs])
    ys = np.array([number(r, y) for r in rs])
    return [rs[i] for i in stats.pareto_front(xs, ys)]


def bd_rates(results: list[dict[str, Any]], y: str, x: str = "final_bytes") -> dict[tuple[str, str], float]:
    """BD-rate (%) of each format's front against each other format's front on (x, y)."""
    fronts = {}
    for name, rs in by_format(results).items():
        f = front(rs, y, x)
        xs = [nominal_bytes(r) if x == "nominal_bytes" else number(r, x) for r in f]
        fronts[name] = (np.array(xs), np.array([number(r, y) for r in f]))
    out = {}
    for a, b in itertools.permutations(fronts, 2):
        out[(b, a)] = bdrate.bd_rate_or_nan(fronts[a][0], fronts[a][1], fronts[b][0], fronts[b][1])
    return out


def frontier_reversals(results: list[dict[str, Any]], y: str = "rel_mse", margin: float = 1.0) -> list[dict[str, Any]]:
    """Format pairs whose BD-rate on nominal bytes and on final bytes differ in sign (beyond margin %)."""
    nominal = bd_rates(results, y, "nominal_bytes")
    final = bd_rates(results, y, "final_bytes")
    rows = []
    for (test, anchor), bn in nominal.items():
        bf = final.get((test, anchor), math.nan)
        if test < anchor and math.isfinite(bn) and math.isfinite(bf) and bn * bf < 0 and min(abs(bn), abs(bf)) > margin:
            rows.append({"test": test, "anchor": anchor, "quality": y, "bd_rate_nominal": bn, "bd_rate_final": bf})
    return rows


PG_REFERENCES = ("pg_baseline", "pg_record", "pg_top")  # Parameter Golf's exports (the compare ranks them)
GGUF_REFERENCES = ("gguf_q4_k_m", "gguf_q3_k_m", "gguf_q2_k")  # llama.cpp's k-quant mixes as GGUF files
# every reference a compare knows by name: PRESET+CODEC is the preset's encoding through another codec, its
# container counted instead of its GGUF file (bytegolf.study.systems.reference_system)
REFERENCE_SYSTEMS = (*PG_REFERENCES, *GGUF_REFERENCES, *(f"{g}+fair" for g in GGUF_REFERENCES))


def base_system(r: dict[str, Any]) -> str:
    """A point's system without the "@own" suffix of a reference export at its own size."""
    return system(r).removesuffix("@own")


def is_reference_export(r: dict[str, Any]) -> bool:
    """A row of a reference export (Parameter Golf's pg_*, llama.cpp's gguf_* and their +codec rows, at a budget
    or @own)."""
    return base_system(r) in REFERENCE_SYSTEMS or bool(r.get("reference"))


def systems(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Evaluated points per system (the @own point of a reference joins its budget points), sorted by name."""
    out: dict[str, list[dict[str, Any]]] = {}
    many = _many_codecs(results)
    for r in scored(results):
        out.setdefault(base_system(r) + (f"+{r.get('codec')}" if many else ""), []).append(r)
    return dict(sorted(out.items()))


def _best_ranked(results: list[dict[str, Any]], names: list[str]) -> str | None:
    """Of the named systems, the one with the lowest bpb in the first comparable group (the largest budget)."""
    many = _many_codecs(results)
    for rs in groups(results).values():
        here = [r for r in rs if base_system(r) + (f"+{r.get('codec')}" if many else "") in names]
        if here:
            best = min(here, key=lambda r: number(r, "bpb"))
            return base_system(best) + (f"+{best.get('codec')}" if many else "")
    return None


def bd_against_reference(
    results: list[dict[str, Any]], reference: str = "pg_top", y: str = "bpb"
) -> tuple[str | None, list[dict[str, Any]], list[str]]:
    """BD-rate and BD-bpb of every system's (final bytes, y) front against one reference system's.

    The reference is `reference` where it has a front (two or more Pareto points), else the
    best-ranked system that has one. Returns (reference name or None, one row per other system:
    system, points, front, bd_rate %, bd_bpb, note; skipped: one line per system left out and why)."""

    by = systems(results)
    fronts: dict[str, bdrate.Front] = {}
    skipped: list[str] = []
    for name, rs in by.items():
        xs = np.array([number(r, "final_bytes") for r in rs])
        ys = np.array([number(r, y) for r in rs])
        try:
            fronts[name] = bdrate.front(xs, ys, name)
        except bdrate.FrontError:
            n = len(stats.pareto_front(xs, ys))
            skipped.append(f"{name}: {len(rs)} point(s), {n} on its Pareto front; a front needs 2")
    ref = next((n for n in fronts if n.split("+")[0] == reference), None)
    if ref is None:
        ref = _best_ranked(results, list(fronts))
        if reference in {n.split("+")[0] for n in by}:
            skipped.append(f"reference {reference} has no front; the reference is the best-ranked system, {ref}")
    if ref is None:
        return None, [], skipped
    rf = fronts[ref]
    rows = []
    for name, f in fronts.items():
        if name == ref:
            continue
        row: dict[str, Any] = {"system": name, "points": len(by[name]), "front": len(f)}
        args = (np.exp(rf.log_rate), rf.quality, np.exp(f.log_rate), f.quality)
        for key, fn in (("bd_rate", bdrate.bd_rate), ("bd_bpb", bdrate.bd_quality)):
            try:
                row[key] = fn(*args)
            except bdrate.FrontError as e:
                row[key] = math.nan
                row["note"] = str(e).split(":")[0]
        rows.append(row)
    return ref, rows, skipped
