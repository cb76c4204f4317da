"""`bytegolf report DIR`: a markdown report (tables + PNG plots) of every result under DIR."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

from bytegolf import analysis, plots, store
from bytegolf.errors import BytegolfError


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        return f"{v:.4f}" if 0.1 <= abs(v) < 1000 else f"{v:.4g}"  # bpb differences live in the 4th decimal
    return str(v).replace("|", "\\|")


def md_table(rows: list[dict[str, Any]], cols: list[str], headers: list[str] | None = None) -> str:
    """A GitHub markdown table of the given columns."""
    if not rows:
        return "_none_\n"
    head = headers or cols
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _points_table(results: list[dict[str, Any]]) -> str:
    names = analysis.labels(results)
    rows = []
    for name, r in sorted(zip(names, results, strict=True), key=lambda nr: (nr[1].get("budget_bytes") or 0, nr[0])):
        rows.append({**r, "point": name})
    cols = ["point", "final_bytes", "bits_per_weight", "nominal_bits_per_weight", "rel_mse", "output_error", "bpb"]
    cols += ["delta_bpb", "status"]
    if any(r.get("budget_bytes") for r in results):
        cols = ["budget_bytes", *cols[:2], "landed_ratio", *cols[2:]]
    return md_table(rows, cols)


def _compare_section(results: list[dict[str, Any]], samples: int) -> str:
    from bytegolf.compare import ranking

    budgets = sorted({int(r["budget_bytes"]) for r in results if r.get("budget_bytes")}, reverse=True)
    if not budgets:
        return ""
    out = ["## Equal-bytes comparison\n"]
    for b in budgets:
        rows = []
        for e in ranking(results, b, samples, 0.95):
            r, d = e["row"], e["delta"]
            rows.append(
                {
                    "format": analysis.system(r),
                    "knob": f"{r.get('knob')}={r.get('knob_value'):g}" if r.get("knob") else "",
                    "counted_bytes": r.get("counted_bytes"),
                    "landed_ratio": r.get("landed_ratio"),
                    "bpb": r.get("bpb"),
                    "delta": "best" if r.get("bpb") is not None and d is None else (str(d) if d else ""),
                    "status": r.get("status"),
                }
            )
        out.append(f"### budget {b:,} B\n")
        out.append(
            md_table(
                rows,
                list(rows[0]),
                ["format", "knob", "bytes", "bytes/budget", "bpb", "Δbpb vs best [95% CI] p", "status"],
            )
        )
    return "\n".join(out) + "\n"


def write_report(src: Path, out: Path, samples: int = 1000) -> Path:
    """Write out/report.md and its PNGs from the results under src; BytegolfError if there are none."""
    if not src.is_dir():
        raise BytegolfError(f"{src}: no such directory")
    results = store.load_results([src])
    if not results:
        raise BytegolfError(f"{src}: no bytegolf result.json found (not a sweep, compare or run directory)")
    out.mkdir(parents=True, exist_ok=True)
    ev = analysis.evaluated(results)
    formats = sorted({analysis.system(r) for r in results})
    codecs = sorted({str(r.get("codec")) for r in results})
    md = [f"# bytegolf report: {src}\n"]
    md.append(
        f"{len(results)} points ({len(ev)} evaluated, {len(results) - len(ev)} not evaluated: "
        f"over their budget); formats: {', '.join(formats)}; codecs: {', '.join(codecs)}.\n"
    )
    mixed = store.mixed_sources(results)
    if mixed:
        warnings.warn(mixed, stacklevel=2)
        md.append(f"**Warning: {mixed}.**\n")
    md.append("## Points\n")
    md.append(_points_table(results))
    md.append(_compare_section(results, samples))

    md.append("## Frontiers\n")
    if ev:
        pngs = [
            plots.frontier(ev, "bpb", "bits per byte of the decoded model (bpb)", out / "frontier_bpb.png", clip=1.5),
            plots.frontier(ev, "rel_mse", "weight relative MSE ‖W−Ŵ‖²/‖W‖²", out / "frontier_rel_mse.png", logy=True),
            plots.nominal_vs_actual(ev, out / "nominal_vs_actual.png"),
        ]
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
            md.append(md_table(rows, ["format", "point", "final_bytes", y]))
        for y in ("bpb", "rel_mse"):
            bd = analysis.bd_rates(ev, y)
            if bd:
                rows = [{"test": t, "anchor": a, "bd_rate": v} for (t, a), v in sorted(bd.items())]
                md.append(
                    f"BD-rate on (final bytes, {y}), % bytes the test format needs vs the anchor (NaN: no overlap):\n"
                )
                md.append(md_table(rows, ["test", "anchor", "bd_rate"], ["test", "anchor", "BD-rate %"]))
    else:
        md.append("_no evaluated points_\n")

    md.append("## Rank agreement (Kendall tau-b)\n")
    md.append(md_table(analysis.rank_agreement(results), ["group", "metric", "outcome", "tau_b", "p", "n"]))

    md.append("## Ranking reversals\n")
    md.append(
        "Pairs where the pre-artifact metric prefers one point and the outcome the other; for bpb only "
        "where the paired bootstrap 95% CI of Δbpb excludes 0.\n"
    )
    rev = analysis.reversals(results, samples)
    md.append(f"{len(rev)} reversal(s).\n")
    rev.sort(key=lambda r: -abs(r["delta"]) if math.isfinite(r["delta"]) else 0)
    md.append(
        md_table(
            rev[:40],
            [
                "group",
                "metric",
                "outcome",
                "preferred",
                "other",
                "metric_preferred",
                "metric_other",
                "delta",
                "lo",
                "hi",
                "p",
            ],
            [
                "group",
                "metric",
                "outcome",
                "metric prefers",
                "over",
                "metric (pref.)",
                "metric (other)",
                "Δ outcome",
                "CI lo",
                "CI hi",
                "p",
            ],
        )
    )
    fr = analysis.frontier_reversals(ev)
    md.append("Format-level: BD-rate on nominal bytes vs on final bytes (quality rel_mse) disagree in sign:\n")
    md.append(md_table(fr, ["test", "anchor", "bd_rate_nominal", "bd_rate_final"]))

    path = out / "report.md"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(md))
    os.replace(tmp, path)
    df = store.table(results)
    store.save_table(df, out / "results")
    return path
