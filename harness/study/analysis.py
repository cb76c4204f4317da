"""Ranking agreement and ranking reversals between pre-artifact metrics and what the artifact gives.

A pre-artifact metric (weight rel. MSE, calibration output error, nominal bits/weight, entropy
bound) predicts an outcome (bpb of the decoded model, final bytes of the artifact). For each
comparable group of points (all points of a sweep; the points of one budget in a compare), the
agreement of the two rankings is Kendall's tau-b, and a *reversal* is a pair of points where the
metric prefers one and the outcome the other. For bpb a reversal is called only where the paired
bootstrap of the bpb difference is significant (pairs evaluated on the same windows): its p-value,
adjusted for multiple comparisons over every pair tested (Holm by default, Benjamini–Hochberg on
request), is at most α; pairs significant only before the correction are listed as not
significant. Final bytes are exact, so any strict difference counts.

Format-level: per format, the Pareto front on (final bytes, bpb) and (final bytes, rel_mse);
BD-rate between the fronts of two formats; and a *frontier reversal* where BD-rate on nominal
bytes and BD-rate on final bytes (same quality axis) disagree in sign: the analytic bit count
ranks the two formats one way, the artifact the other.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from bytegolf.study import stats

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


def evaluated(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results with a bpb (does-not-fit rows and errors left out)."""
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
    ev = evaluated(results)
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


def _bpb_deltas(rs: list[dict[str, Any]], samples: int, level: float, seed: int):
    """delta(i, j): paired bootstrap of bpb_i − bpb_j (None when the windows differ)."""
    keys = [tuple(r.get("window_bytes") or ()) for r in rs]
    cache: dict[tuple, Any] = {}

    def resampled(key: tuple) -> tuple[list[int], np.ndarray]:
        if key not in cache:
            idx = [i for i, k in enumerate(keys) if k == key]
            nll = np.array([rs[i]["window_nll"] for i in idx], dtype=np.float64)
            counts = stats.resample_counts(len(key), samples, seed)
            cache[key] = (idx, stats.resampled_ratios(nll, np.asarray(key, dtype=np.float64), counts, 1 / stats.LN2))
        return cache[key]

    def delta(i: int, j: int) -> stats.PairedDelta | None:
        if not keys[i] or keys[i] != keys[j] or len(rs[i].get("window_nll") or ()) != len(keys[i]):
            return None
        idx, ratios = resampled(keys[i])
        a, b = idx.index(i), idx.index(j)
        denom = float(np.sum(keys[i]))
        observed = (math.fsum(rs[i]["window_nll"]) - math.fsum(rs[j]["window_nll"])) / stats.LN2 / denom
        return stats.delta_from_samples(observed, ratios[:, a] - ratios[:, b], level)

    return delta


MAX_RESAMPLES = 20_000  # the most bootstrap resamples reversals() raises itself to


def _comparable(rs: list[dict[str, Any]], i: int, j: int) -> bool:
    """Whether points i and j were evaluated on the same windows (a paired bootstrap applies)."""
    wi = tuple(rs[i].get("window_bytes") or ())
    ok = bool(wi) and wi == tuple(rs[j].get("window_bytes") or ())
    return ok and all(len(rs[k].get("window_nll") or ()) == len(wi) for k in (i, j))


def reversals(
    results: list[dict[str, Any]],
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    correction: str = "holm",
    alpha: float | None = None,
) -> list[dict[str, Any]]:
    """Pairs where a pre-artifact metric prefers one point and the outcome the other (see module doc).

    bpb rows: every pair whose bootstrap p ≤ alpha before correction (alpha: 1 − level by default),
    with `p` (raw), `p_adj` (adjusted by `correction`, "holm", "bh" or "none", over the family of
    every paired bpb test the search makes: each pair of points on the same windows that a metric
    orders, across all groups) and `significant` (p_adj ≤ alpha). A bootstrap p is at least
    1/(resamples + 1), so the resamples are raised to 2·family/alpha where that is more than
    `samples` (at most MAX_RESAMPLES); every row carries the number used (`samples`), the family
    size (`family`), `correction` and `alpha`. final_bytes rows are exact: p NaN, significant True."""
    alpha = 1.0 - level if alpha is None else alpha
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    found: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], tuple[str, int, int], bool]] = []  # (row, test, preferred is i)
    by_group = groups(results)
    for name, rs in by_group.items():
        names = labels(rs)
        for pre, out in PAIRS:
            for i, j in itertools.combinations(range(len(rs)), 2):
                pi, pj = number(rs[i], pre), number(rs[j], pre)
                oi, oj = number(rs[i], out), number(rs[j], out)
                if not all(map(math.isfinite, (pi, pj, oi, oj))) or pi == pj:
                    continue
                a, b = (i, j) if pi < pj else (j, i)  # a: preferred by the metric
                row = {
                    "group": name,
                    "metric": pre,
                    "outcome": out,
                    "preferred": names[a],
                    "other": names[b],
                    "metric_preferred": number(rs[a], pre),
                    "metric_other": number(rs[b], pre),
                    "outcome_preferred": number(rs[a], out),
                    "outcome_other": number(rs[b], out),
                }
                if out == "bpb":
                    if _comparable(rs, i, j):
                        pending.append((row, (name, i, j), a == i))
                    continue
                if not number(rs[a], out) > number(rs[b], out):
                    continue
                row.update(delta=number(rs[a], out) - number(rs[b], out), lo=math.nan, hi=math.nan, p=math.nan)
                row.update(p_adj=math.nan, significant=True)
                found.append(row)
    family = sorted({key for _, key, _ in pending})
    used = max(samples, min(MAX_RESAMPLES, math.ceil(2 * len(family) / alpha)))
    deltas = {name: _bpb_deltas(rs, used, level, seed) for name, rs in by_group.items()}
    tested = {key: deltas[key[0]](key[1], key[2]) for key in family}
    adjusted = dict(zip(family, stats.adjust_pvalues(np.array([tested[k].p for k in family]), correction), strict=True))
    for row, key, forward in pending:
        d = tested[key] if forward else _flip(tested[key])
        if d.delta > 0 and d.p <= alpha:
            row.update(delta=d.delta, lo=d.lo, hi=d.hi, p=d.p)
            row.update(p_adj=float(adjusted[key]), significant=bool(adjusted[key] <= alpha))
            found.append(row)
    for row in found:
        row.update(family=len(family), samples=used, correction=correction, alpha=alpha)
    return found


def _flip(d: stats.PairedDelta) -> stats.PairedDelta:
    """The same test seen from the other side: b − a."""
    return stats.PairedDelta(-d.delta, -d.hi, -d.lo, d.p, d.samples, d.level)


def by_format(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in evaluated(results):
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
        out[(b, a)] = stats.bd_rate(fronts[a][0], fronts[a][1], fronts[b][0], fronts[b][1])
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


REFERENCE_SYSTEMS = ("pg_baseline", "pg_record", "pg_top")  # Parameter Golf's exports (the compare ranks them)


def base_system(r: dict[str, Any]) -> str:
    """A point's system without the "@own" suffix of a reference export at its own size."""
    return system(r).removesuffix("@own")


def is_reference_export(r: dict[str, Any]) -> bool:
    """A row of a Parameter Golf reference export (pg_baseline, pg_record, pg_top, at a budget or @own)."""
    return base_system(r) in REFERENCE_SYSTEMS or bool(r.get("reference"))


def systems(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Evaluated points per system (the @own point of a reference joins its budget points), sorted by name."""
    out: dict[str, list[dict[str, Any]]] = {}
    many = _many_codecs(results)
    for r in evaluated(results):
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
    from bytegolf.study import bdrate

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
