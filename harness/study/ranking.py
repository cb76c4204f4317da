"""Ranking at equal bytes: per budget the systems that fit, best first, each with Δbpb against the best (a
document-bootstrap interval and a ratio t-test p, Holm-adjusted over the budget), seed spreads, and the
markdown table the compare prints."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from omegaconf import DictConfig

from bytegolf import markdown
from bytegolf.measure.stats import adjust_pvalues, paired_bootstrap
from bytegolf.run import store
from bytegolf.study.analysis import paired_test, system


def evaluated(row: dict[str, Any]) -> bool:
    """Whether a row is a written, measured point: it has a bpb, or its model has none (model=weights)."""
    return row.get("bpb") is not None or row.get("bpb_measured") is False


def rank_key(row: dict[str, Any], by: str = "bpb") -> tuple[str, float]:
    """What a row is ranked by: bpb (or, with by="kld", its mean KLD), else (bpb not measured)
    output_error where measured, else rel_mse."""
    if by == "kld" and row.get("kld"):
        return "kld", float(row["kld"]["mean"])
    if row.get("bpb") is not None:
        return "bpb", float(row["bpb"])
    err = row.get("output_error")
    if err is not None and not math.isnan(float(err)):
        return "output_error", float(err)
    return "rel_mse", float(row.get("rel_mse") if row.get("rel_mse") is not None else math.inf)


def ranking(
    rows: list[dict[str, Any]], budget: int, samples: int, level: float, by: str = "bpb"
) -> list[dict[str, Any]]:
    """Rows of one budget (the reference exports at their own size included where they fit), best bpb
    (by="kld": lowest mean KLD) first (bpb not measured: lowest output_error, else rel_mse, first), each
    with Δbpb against the best: its document-bootstrap CI and ratio t-test p (analysis.paired_test)."""
    here = [r for r in rows if r.get("budget_bytes") == budget]
    here += [r for r in rows if r.get("status") == "own" and (r.get("counted_bytes") or 0) <= budget]
    ok = sorted((r for r in here if evaluated(r)), key=lambda r: (rank_key(r, by)[0] != by, rank_key(r, by)[1]))
    out = []
    best = ok[0] if ok else None
    for r in ok:
        entry = {"row": r, "delta": None, "spread": seed_spread(rows, r, budget) if r.get("bpb") is not None else None}
        if r is not best and best is not None and r.get("bpb") is not None and best.get("bpb") is not None:
            test = paired_test(r, best, samples, level, 0)  # CI of the document bootstrap, p of the ratio t-test
            if test is not None:
                entry["delta"], entry["by"] = test
                a, b = np.asarray(r["window_nll"]), np.asarray(best["window_nll"])
                entry["delta_windows"] = paired_bootstrap(a, b, np.asarray(r["window_bytes"]), samples, level)
        out.append(entry)
    tested = [e for e in out if e["delta"] is not None]
    for e, p_adj in zip(tested, adjust_pvalues(np.array([e["delta"].p for e in tested]), "holm"), strict=True):
        e["p_adj"] = float(p_adj)  # Holm over this budget's comparisons with the best
    out.extend({"row": r, "delta": None} for r in here if not evaluated(r))
    return out


def seed_spread(rows: list[dict[str, Any]], row: dict[str, Any], budget: int) -> float | None:
    """max − min bpb over a landing and its other-seed points (None: the system is not randomized)."""
    seeds = [
        r["bpb"]
        for r in rows
        if r.get("status") == "seed" and r.get("seed_budget") == budget and system(r) == system(row) and r.get("bpb")
    ]
    values = [*seeds, row["bpb"]]
    return max(values) - min(values) if seeds else None


def separable(entry: dict[str, Any], best: dict[str, Any]) -> bool:
    """A Δbpb counts as a win when its CI excludes 0, its Holm-adjusted p (over the budget's comparisons)
    is within 1 − level, and it is larger than either side's seed spread."""
    d = entry.get("delta")
    if d is None or not d.significant:
        return False
    if entry.get("p_adj") is not None and entry["p_adj"] > 1 - d.level:
        return False
    spread = max(entry.get("spread") or 0.0, best.get("spread") or 0.0)
    return abs(d.delta) > spread


def ranking_table(ranked: list[dict[str, Any]], budget: int) -> str:
    """One budget's ranking as a markdown table that pastes: system, setting, bytes and their share of the
    budget, bpb, Δbpb against the best with its interval and p (raw and Holm), seed spread and KLD where
    measured, status."""
    rows = []
    for e in ranked:
        r, d = e["row"], e["delta"]
        knob = f"{r['knob']}={r['knob_value']:g}" if r.get("knob") else "-"
        if r.get("allocation"):  # an allocated system: how many distinct settings it chose
            knob = f"allocated ×{len(r['allocation']['settings'])} settings"
        row = {"system": system(r), "setting": knob}
        if r.get("status") == "not_searched":
            rows.append({**row, "bytes": r["why"]})
            continue
        if not evaluated(r):
            rows.append({**row, "bytes": f"does not fit (smallest {r['counted_bytes']:,} B)"})
            continue
        row |= {"bytes": r["counted_bytes"], "x budget": f"{r['counted_bytes'] / budget:.4f}", "status": r["status"]}
        if r.get("bpb") is None:
            by, v = rank_key(r)
            row["bpb"] = f"{by} {v:.4e} (bpb not measured)"
        else:
            row["bpb"] = r["bpb"]
            if d is not None:
                row |= {"Δbpb [95% CI]": f"{d.delta:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]", "p": f"{d.p:.3g}"}
                row["holm"] = f"{e['p_adj']:.3g}" if e.get("p_adj") is not None else ""
            else:
                row["Δbpb [95% CI]"] = "best" if e is ranked[0] else "n/a (windows differ)"
            row["seeds ±"] = f"{e['spread'] / 2:.4f}" if e.get("spread") is not None else None
            k = r.get("kld")
            row["KLD"] = f"{k['mean']:.4g}±{k['se']:.2g}" if k else None
        rows.append(row)
    cols = ["system", "setting", "bytes", "x budget", "bpb", "Δbpb [95% CI]", "p", "holm", "seeds ±", "KLD", "status"]
    cols = [c for c in cols if any(r.get(c) not in (None, "") for r in rows)]
    return markdown.table(rows, cols, [c.replace("x budget", "× budget") for c in cols])


def print_ranking(rows: list[dict[str, Any]], budgets: list[int], cc: DictConfig) -> None:
    for budget in budgets:
        by = str(cc.get("rank_by", "bpb"))
        ranked = ranking(rows, budget, cc.samples, cc.level, by)
        counted = "final + code" if rows and rows[0].get("count_code") else "final"
        print(f"\n### budget {budget:,} B ({counted} bytes)\n\n{ranking_table(ranked, budget)}", flush=True)
        protocols = sorted({store.row_protocol(e["row"]) for e in ranked if e["row"].get("bpb") is not None} - {""})
        if protocols:
            print(f"protocol: {'; '.join(protocols)}" + (" (WARNING: mixed)" if len(protocols) > 1 else ""))
        fitted = [e for e in ranked if evaluated(e["row"])]
        if not fitted:
            print("no format fits this budget")
            continue
        second = next((e for e in fitted[1:] if e.get("delta_windows") is not None), None)
        if second is not None:
            w, d = second["delta_windows"], second["delta"]
            print(
                f"Δbpb CIs resample {second['by']}; width for {system(second['row'])}: "
                f"windows {w.hi - w.lo:.4f}, {second['by']} {d.hi - d.lo:.4f}",
                flush=True,
            )
        win = system(fitted[0]["row"])
        if fitted[0]["row"].get("bpb") is None:
            print(f"winner: {win} (lowest {rank_key(fitted[0]['row'])[0]}; bpb not measured)", flush=True)
            continue
        if by == "kld":
            print(f"winner by KLD: {win} (Δbpb intervals above are against it)", flush=True)
            continue
        ties = [system(e["row"]) for e in fitted[1:] if not separable(e, fitted[0])]
        verdict = f"winner: {win}" + (
            f" (not separable from {', '.join(ties)} at {cc.level:.0%} after Holm, or within the seed spread)"
            if ties
            else ""
        )
        print(verdict, flush=True)
