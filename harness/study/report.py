"""`bytegolf report DIR`: a markdown report (tables + PNG plots) of every result under DIR."""

from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path
from typing import Any

from bytegolf import markdown
from bytegolf.errors import BytegolfError
from bytegolf.measure import stats
from bytegolf.run import store
from bytegolf.study import analysis, html, peers, plots


def _points_table(results: list[dict[str, Any]]) -> str:
    names = analysis.labels(results)
    rows = []
    for name, r in sorted(zip(names, results, strict=True), key=lambda nr: (nr[1].get("budget_bytes") or 0, nr[0])):
        rows.append({**r, "point": name})
    cols = ["point", "final_bytes", "bits_per_weight", "nominal_bits_per_weight", "rel_mse", "output_error", "bpb"]
    cols += ["delta_bpb", "status"]
    if any(r.get("budget_bytes") for r in results):
        cols = ["budget_bytes", *cols[:2], "landed_ratio", *cols[2:]]
    return markdown.table(rows, cols)


def _compare_section(results: list[dict[str, Any]], samples: int, correction: str = "holm") -> str:
    from bytegolf.study.ranking import ranking

    budgets = sorted({int(r["budget_bytes"]) for r in results if r.get("budget_bytes")}, reverse=True)
    if not budgets:
        return ""
    out = ["## Equal-bytes comparison\n"]
    out.append(
        f"Δbpb of each system against the best at each budget, paired bootstrap ({samples} resamples); "
        f"p adj: the p-values of one budget's comparisons adjusted together, {stats.correction_name(correction)}; "
        "separable from the best where p adj ≤ 0.05.\n"
    )
    for b in budgets:
        entries = ranking(results, b, samples, 0.95)
        ps = [e["delta"].p if e["delta"] is not None else math.nan for e in entries]
        adj = stats.adjust_pvalues(ps, correction) if ps else []
        rows = []
        for e, pa in zip(entries, adj, strict=True):
            r, d = e["row"], e["delta"]
            rows.append(
                {
                    "format": analysis.system(r),
                    "knob": f"{r.get('knob')}={r.get('knob_value'):g}" if r.get("knob") else "",
                    "counted_bytes": r.get("counted_bytes"),
                    "landed_ratio": r.get("landed_ratio"),
                    "bpb": r.get("bpb"),
                    "delta": "best" if r.get("bpb") is not None and d is None else (str(d) if d else ""),
                    "p_adj": float(pa),
                    "separable": bool(pa <= 0.05) if d is not None else None,
                    "status": r.get("status"),
                }
            )
        out.append(f"### budget {b:,} B\n")
        out.append(
            markdown.table(
                rows,
                list(rows[0]),
                [
                    "format",
                    "knob",
                    "bytes",
                    "bytes/budget",
                    "bpb",
                    "Δbpb vs best [95% CI] p",
                    f"p adj ({correction})",
                    "separable",
                    "status",
                ],
            )
        )
    return "\n".join(out) + "\n"


def _peer_section(results: list[dict[str, Any]], samples: int) -> str:
    """The peers (HQQ, llama.cpp's k-quants) point by point beside bytegolf's best with no more bytes."""
    rows = peers.peer_rows(results, samples)
    if not rows:
        return ""
    return "\n".join(
        [
            "## Peers\n",
            "Each point of a peer system beside the lowest-bpb point of bytegolf's own systems (formats, variants,"
            " allocated; not the reference exports) at the same budget, or with no more bytes for a peer at its own"
            " size: Δbpb = peer − ours on the same windows,"
            f" document bootstrap ({samples} resamples), positive where bytegolf is better. BD-rate: % bytes"
            " bytegolf's envelope (every ranked point of its systems) needs at the peer front's bpb (negative:"
            " fewer); blank where the fronts do not overlap or the peer has one point.\n",
            markdown.table(rows, peers.COLUMNS, peers.HEADERS),
        ]
    )


def _bd_section(ev: list[dict[str, Any]]) -> str:
    """BD-rate and BD-bpb of every system's (final bytes, bpb) front against the reference system's."""
    ref, rows, skipped = analysis.bd_against_reference(ev)
    out = ["### BD-rate against a reference system\n"]
    if ref is None:
        out.append("_no system has two or more points on its (final bytes, bpb) Pareto front: no BD-rate_\n")
    else:
        out.append(
            f"Reference: **{ref}** (pg_top where it has a front, else the best-ranked system). Each system's "
            "Pareto front on (final bytes, bpb), all its evaluated points; BD-rate: mean % bytes it needs vs "
            "the reference at equal bpb (negative: fewer bytes); BD-bpb: mean bpb difference at equal bytes "
            "(negative: lower bpb). Bjøntegaard, pchip over the range both fronts cover; blank: no overlap.\n"
        )
        out.append(
            markdown.table(
                rows,
                ["system", "points", "front", "bd_rate", "bd_bpb", "note"],
                ["system", "points", "front points", "BD-rate %", "BD-bpb", "note"],
            )
        )
    if skipped:
        out.append("Left out: " + "; ".join(skipped) + ".\n")
    return "\n".join(out)


REVERSALS_CSV = "reversals.csv"
TOP_REVERSALS = 10  # the reversals report.md shows; reversals.csv has every one


def _both(r: dict[str, Any], key: str) -> str:
    """One quantity of a reversal row as "preferred / other" (byte counts as whole bytes)."""
    vals = [r.get(f"{key}_{side}") for side in ("preferred", "other")]
    if key.endswith("bytes"):
        vals = [round(v) if isinstance(v, float) and math.isfinite(v) else v for v in vals]
    return " / ".join(markdown.cell(v) for v in vals)


def write_reversals_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Every reversal row, analysis.REVERSAL_COLUMNS in that order, to a CSV file (a header only when none)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(analysis.REVERSAL_COLUMNS), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def _reversal_section(
    results: list[dict[str, Any]],
    samples: int,
    correction: str,
    out: Path | None = None,
    top: int = TOP_REVERSALS,
    tolerance: float = analysis.TOLERANCE,
) -> str:
    """The count of reversals and the `top` largest by |Δbpb|; every one to out/reversals.csv (out given)."""
    alpha = 0.05
    rev = analysis.reversals(results, samples, level=1 - alpha, correction=correction, alpha=alpha, tolerance=tolerance)
    # significant first, then by |Δbpb| (reversals on bytes alone by |Δbytes| after them)
    rev.sort(
        key=lambda r: (
            not r["significant"],
            math.isnan(r["delta"]),
            -abs(r["delta"]) if not math.isnan(r["delta"]) else -abs(r["delta_bytes"]),
        )
    )
    if out is not None:
        write_reversals_csv(rev, out / REVERSALS_CSV)
    family = rev[0]["family"] if rev else 0
    on_bpb = [r for r in rev if r["reversed_on_bpb"]]
    sig = [r for r in on_bpb if r["bpb_significant"]]
    on_bytes = [r for r in rev if r["reversed_on_bytes"]]
    total = [r for r in rev if r["significant"]]
    text = [
        "Pairs of systems where a pre-artifact metric prefers one point and the outcome the other: one row per "
        "pair per budget (the reference exports at their own size join each budget they fit, as in the ranking; "
        "one that is the same evaluation as its budget point is not compared again; other-seed repeats are left "
        "out). **bpb** (rel_mse, output_error): only pairs whose final bytes differ by at most "
        f"{tolerance:.0%} of the budget (off budget: of the larger), on the same windows; Δbpb of the point the "
        f"metric prefers with the 95% CI of the paired document bootstrap ({samples} resamples), p of the "
        "paired t-test over documents (linearized standard error of the bpb difference, analytic: no "
        f"resampling floor); listed where p ≤ {alpha:g}; multiple-comparison correction: "
        f"**{stats.correction_name(correction)}** over the {family} pair(s) tested; significant: adjusted "
        f"p ≤ {alpha:g}. **Final bytes** (nominal bits/weight, entropy bound): exact, any strict difference, "
        "except between two points landed on the same budget (their bytes are where the search stopped).\n",
        f"**{len(total)} reversal(s)**: {len(sig)} on bpb significant after correction ({len(on_bpb)} before), "
        f"{len(on_bytes)} on final bytes.\n",
    ]
    rows = []
    for r in rev[:top]:
        d = r["delta"]
        cells = {
            "group": r["group"],
            "preferred": r["preferred"],
            "other": r["other"],
            "bytes": _both(r, "final_bytes"),
            **{m: _both(r, m) for m in analysis.PRE},
            "prefers_preferred": r["prefers_preferred"],
            "prefers_other": r["prefers_other"],
            "reversed": "; ".join(
                f"{o}: {r[k]}" for o, k in (("bpb", "reversed_on_bpb"), ("bytes", "reversed_on_bytes")) if r[k]
            ),
            "delta": f"{d:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}]" if not math.isnan(d) else "",
            "p": r["p"],
            "p_adj": r["p_adj"],
            "significant": r["significant"],
        }
        rows.append(cells)
    heads = ["group", "metric prefers", "over", "final bytes", "rel_mse", "output_error", "nominal bits/weight"]
    heads += ["entropy bound B", "metrics preferring it", "metrics preferring the other", "reversed on"]
    heads += ["Δbpb [95% CI]", "p (t-test)", f"p ({correction})", "significant"]
    if rows:
        order = "significant first, by |Δbpb|; each cell: metric-preferred point / other"
        text.append(f"The first {len(rows)} ({order}):\n")
    text.append(markdown.table(rows, list(rows[0]) if rows else [], heads))
    if out is not None:
        hidden = f" ({len(rev) - len(rows)} not shown here)" if len(rev) > len(rows) else ""
        text.append(f"All {len(rev)} listed pair(s){hidden}, every column: [{REVERSALS_CSV}]({REVERSALS_CSV}).\n")
    return "\n".join(text)


PROBES_CSV = "probes.csv"
PROBE_COLUMNS = ["variant", "format", "knob", "value", "final_bytes", "code_bytes"]
PROBE_COLUMNS += ["rel_mse", "output_error", "seconds"]


def _probe_section(search_dir: Path, out: Path, marks: list[int]) -> str:
    """A compare's search probes: every probe's pre-artifact error and bytes (probes.csv, probe_front*.png) and
    per system the range they span; empty without a search/ directory."""
    from bytegolf.search.prober import probe_rows

    probes = probe_rows(search_dir) if search_dir.is_dir() else []
    if not probes:
        return ""
    with (out / PROBES_CSV).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PROBE_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(sorted(probes, key=lambda r: (r["variant"], r["final_bytes"])))
    text = [
        "## Search probes\n",
        "Every encode the equal-bytes search made is a point of its system's error-vs-bytes front at no extra "
        "cost: bytes through the probe codec, error before the artifact, no evaluation. "
        f"All of them: [{PROBES_CSV}]({PROBES_CSV}).\n",
    ]
    for y, name in (("output_error", "probe_front.png"), ("rel_mse", "probe_front_rel_mse.png")):
        png = plots.probe_front(probes, marks, out / name, y)
        if png is not None:
            text.append(f"![{png.stem}]({png.name})\n")
    rows = []
    for label, rs in plots.by_system(probes).items():
        rs = sorted(rs, key=lambda r: r["final_bytes"])
        rows.append({"system": label, "knob": rs[0].get("knob") or "-", "probes": len(rs),
                     "smallest": rs[0]["final_bytes"], "error_smallest": rs[0].get("output_error"),
                     "largest": rs[-1]["final_bytes"], "error_largest": rs[-1].get("output_error")})  # fmt: skip
    cols = ["system", "knob", "probes", "smallest", "error_smallest", "largest", "error_largest"]
    heads = ["system", "knob", "probes", "smallest B", "output error there", "largest B", "output error there"]
    text.append(markdown.table(rows, cols, heads))
    return "\n".join(text)


def write_report(src: Path, out: Path, samples: int = 1000, correction: str = "holm") -> Path:
    """Write out/report.md, its PNGs and out/reversals.csv from the results under src; BytegolfError if there
    are none.

    correction: how the p-values of the pairwise claims are adjusted for multiple comparisons,
    "holm" (default), "bh" (Benjamini–Hochberg) or "none"."""
    if not src.is_dir():
        raise BytegolfError(f"{src}: no such directory")
    results = store.load_results([src])
    if not results:
        raise BytegolfError(f"{src}: no bytegolf result.json found (not a sweep, compare or run directory)")
    out.mkdir(parents=True, exist_ok=True)
    ev = analysis.scored(results)
    formats = sorted({analysis.system(r) for r in results})
    codecs = sorted({str(r.get("codec")) for r in results})
    md = [f"# bytegolf report: {src}\n"]
    md.append(
        f"{len(results)} points ({len(ev)} evaluated, {len(results) - len(ev)} not evaluated: "
        f"over their budget); formats: {', '.join(formats)}; codecs: {', '.join(codecs)}.\n"
    )
    if any(r.get("bpb_measured") is False for r in results):
        md.append(
            "**bpb was not measured**: the model adapter has no model to evaluate (model=weights); points "
            "are compared by weight error and bytes, and rankings order by output_error (else rel_mse).\n"
        )
    for mixed in (store.mixed_sources(results), store.mixed_protocols(results)):
        if mixed:
            warnings.warn(mixed, stacklevel=2)
            md.append(f"**Warning: {mixed}.**\n")
    protocols = {store.row_protocol(r) for r in ev} - {""}
    if len(protocols) == 1:
        md.append(f"Evaluation protocol: {protocols.pop()}.\n")
    md.append("## Points\n")
    md.append(_points_table(results))
    md.append(_compare_section(results, samples, correction))
    md.append(_peer_section(results, samples))

    md.append("## Frontiers\n")
    if ev:
        pngs = [
            plots.delta_frontier(results, out / "frontier_bpb.png", samples),
            plots.delta_by_budget(results, out / "delta_bpb_by_budget.png", samples),
            plots.frontier(ev, "rel_mse", "weight relative MSE ‖W−Ŵ‖²/‖W‖²", out / "frontier_rel_mse.png", logy=True),
            plots.nominal_vs_actual(ev, out / "nominal_vs_actual.png"),
        ]
        pngs = [p for p in pngs if p is not None]  # no per-budget plot without budgets
        md += [f"![{p.stem}]({p.name})\n" for p in pngs]
        for y in ("bpb", "rel_mse"):
            rows = []
            label = {id(r): lab for r, lab in zip(ev, analysis.labels(ev), strict=True)}
            for name, rs in analysis.by_format(ev).items():
                for r in analysis.front(rs, y):
                    rows.append(
                        {"format": name, "point": label[id(r)], "final_bytes": r.get("final_bytes"), y: r.get(y)}
                    )
            md.append(f"Pareto fronts on (final bytes, {y}):\n")
            md.append(markdown.table(rows, ["format", "point", "final_bytes", y]))
        md.append(_bd_section(ev))
        bd = analysis.bd_rates(ev, "rel_mse")
        rows = [{"test": t, "anchor": a, "bd_rate": v} for (t, a), v in sorted(bd.items()) if math.isfinite(v)]
        if rows:
            md.append(
                "BD-rate on (final bytes, rel_mse), % bytes the test format needs vs the anchor "
                f"(pairs without a common rel_mse range left out: {len(bd) - len(rows)}):\n"
            )
            md.append(markdown.table(rows, ["test", "anchor", "bd_rate"], ["test", "anchor", "BD-rate %"]))
    else:
        md.append("_no evaluated points_\n")

    md.append(_probe_section(src / "search", out, plots.budgets(results)))

    md.append("## Rank agreement (Kendall tau-b)\n")
    md.append(markdown.table(analysis.rank_agreement(results), ["group", "metric", "outcome", "tau_b", "p", "n"]))

    md.append("## Ranking reversals\n")
    md.append(_reversal_section(results, samples, correction, out))
    fr = analysis.frontier_reversals(ev)
    md.append("Format-level: BD-rate on nominal bytes vs on final bytes (quality rel_mse) disagree in sign:\n")
    md.append(markdown.table(fr, ["test", "anchor", "bd_rate_nominal", "bd_rate_final"]))

    if html.write_html(results, out / "report.html", samples, title=f"bytegolf report: {src}") is not None:
        md.insert(2, "Interactive plots (hover: each point's bytes, bpb ± CI, protocol): [report.html](report.html)\n")
    path = out / "report.md"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(md))
    os.replace(tmp, path)
    df = store.table(results)
    store.save_table(df, out / "results")
    return path
