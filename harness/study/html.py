"""`bytegolf report`'s report.html: the frontier plots as interactive plotly figures, every point with a hover
(system, knob, bytes, bpb and Δbpb against the unquantized model with their document-bootstrap CIs, status and
the evaluation protocol), and a table of the points. plotly.js is embedded in the page, which opens offline.

Needs the optional dependency plotly (`pip install "plotly>=5.0"`); without it no page is written."""

from __future__ import annotations

import html as _html
import importlib.util
import math
import os
import warnings
from pathlib import Path
from typing import Any

from bytegolf.run import store
from bytegolf.study import analysis, plots

PLOTLY_REQUIREMENT = "plotly>=5.0"
SYMBOLS = {
    "o": "circle", "^": "triangle-up", "v": "triangle-down", "p": "pentagon", "h": "hexagon", "<": "triangle-left",
    ">": "triangle-right", "8": "octagon", "s": "square", "D": "diamond", "*": "star", "P": "cross", "X": "x",
    "d": "diamond-tall",
}  # fmt: skip  # matplotlib marker -> plotly symbol (plots.styles draws the same marker per system)


def available() -> bool:
    """Whether plotly is installed (report.html needs it)."""
    return importlib.util.find_spec("plotly") is not None


def knob(r: dict[str, Any]) -> str:
    """The row's searched knob and its value ("clip_k=12.85"), "" where none."""
    if not r.get("knob"):
        return ""
    v = r.get("knob_value")
    return f"{r['knob']}={v:.5g}" if isinstance(v, (int, float)) else str(r["knob"])


def _interval(v: float, lo: float, hi: float, sign: str = "") -> str:
    if not math.isfinite(v):
        return ""
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{v:{sign}.4f} [{lo:{sign}.4f}, {hi:{sign}.4f}]"
    return f"{v:{sign}.4f}"


def hover(r: dict[str, Any], ci: plots.PointCI | None, samples: int = 1000) -> str:
    """One point's hover text (HTML): system, status, knob, budget, bytes, bpb ± CI, Δbpb against the unquantized
    model ± CI, rel_mse and the evaluation protocol."""
    e = _html.escape
    lines = [f"<b>{e(analysis.system(r))}</b> ({e(str(r.get('format')))} + {e(str(r.get('codec')))})"]
    lines.append(f"status: {e(plots.status(r))}")
    if knob(r):
        lines.append(f"knob: {e(knob(r))}")
    if r.get("budget_bytes"):
        ratio = analysis.number(r, "landed_ratio")
        landed = f" (landed at {ratio:.4f} of it)" if math.isfinite(ratio) else ""
        lines.append(f"budget: {plots.mb(float(r['budget_bytes']))}{landed}")
    fb = analysis.number(r, "final_bytes")
    if math.isfinite(fb):
        lines.append(f"final bytes: {fb:,.0f} B ({plots.mb(fb)})")
    if plots.status(r) == "does_not_fit":
        lines.append("<i>does not fit its budget: its smallest setting is the size above; not evaluated</i>")
    if ci is not None:
        level = f"{ci.level:.0%} CI"
        lines.append(f"bpb: {_interval(ci.bpb, ci.bpb_lo, ci.bpb_hi)}" + (f" ({level})" if ci.by else ""))
        how = f" ({level}, paired bootstrap over {ci.by}, {samples} resamples)" if ci.by else ""
        lines.append(f"Δbpb vs unquantized: {_interval(ci.delta, ci.delta_lo, ci.delta_hi, '+')}{how}")
        lines.append(f"unquantized bpb: {analysis.number(r, 'ref_bpb'):.4f}")
    mse = analysis.number(r, "rel_mse")
    if math.isfinite(mse):
        lines.append(f"rel_mse: {mse:.4g}")
    if store.row_protocol(r):
        lines.append(f"protocol: {e(store.row_protocol(r))}")
    return "<br>".join(lines)


def _rgb(c: tuple[float, ...]) -> str:
    return f"rgb({round(255 * c[0])},{round(255 * c[1])},{round(255 * c[2])})"


def _marker(style: plots.Style, status: str) -> dict[str, Any]:
    """A plotly marker for a system's style at a status: hollow off the budgets, black ring at the knob's limit."""
    st = plots.STATUS.get(status, plots.STATUS["ok"])
    symbol = SYMBOLS.get(style.marker, "circle") + ("" if st.filled else "-open")
    edge = {"black": "black", "0.45": "rgb(115,115,115)"}.get(st.edge or "", _rgb(style.color))
    size = {"front": 7, "seed": 5, "over_budget": 6, "own": 13}.get(status, 10) + (4 if style.marker == "*" else 0)
    width = 2.5 if st.edge else (2 if not st.filled else 0.5)
    line = {"color": edge, "width": width}
    return {"symbol": symbol, "color": _rgb(style.color), "size": size, "opacity": st.alpha, "line": line}


def _frontier(
    results: list[dict[str, Any]],
    cis: dict[int, plots.PointCI],
    y: str,
    samples: int,
) -> Any:
    """A plotly figure of y ("delta_bpb": Δbpb against the unquantized model, with CIs; or a row key) against final
    bytes, log–log: a trace per system and status, the systems' Pareto fronts, the budgets and the rows whose
    budget is out of reach."""
    import plotly.graph_objects as go

    delta = y == "delta_bpb"
    dnf = [r for r in results if plots.status(r) == "does_not_fit"]
    rows = [r for r in results if (id(r) in cis if delta else math.isfinite(analysis.number(r, y)))]
    rows = [r for r in rows if plots.status(r) != "does_not_fit"] + dnf
    groups = plots.by_system(rows)
    style = plots.styles(groups)
    fig = go.Figure()

    def val(r: dict[str, Any]) -> tuple[float, float, float]:
        if delta:
            c = cis[id(r)]
            return c.delta, c.delta_lo, c.delta_hi
        return analysis.number(r, y), math.nan, math.nan

    ys_all = [val(r)[0] for r in rows if plots.status(r) != "does_not_fit"]
    pos = [v for v in ys_all if v > 0]
    floor = min(pos) / 1.6 if pos else 1e-3
    top = max(pos) * 1.3 if pos else 1.0
    for name, rs in groups.items():
        sty = style[name]
        by_status: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(rs, key=lambda r: analysis.number(r, "final_bytes")):
            by_status.setdefault(plots.status(r), []).append(r)
        fig.add_trace(  # the legend entry: the system's marker as landed on a budget, whatever its points' status
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                marker=_marker(sty, "ok"),
                name=name,
                legendgroup=name,
                hoverinfo="skip",
            )
        )
        for st, ps in by_status.items():
            xs = [analysis.number(r, "final_bytes") for r in ps]
            if st == "does_not_fit":
                marker = {"symbol": "x", "size": 11, "color": _rgb(sty.color), "line": {"color": "black", "width": 1}}
                ys, err = [floor] * len(ps), None
            else:
                marker = _marker(sty, st)
                vals = [val(r) for r in ps]
                ys = [v for v, _, _ in vals]
                has = any(math.isfinite(lo) for _, lo, _ in vals)
                err = (
                    {
                        "type": "data", "symmetric": False, "thickness": 1.2, "width": 3, "color": _rgb(sty.color),
                        "array": [max(hi - v, 0) if math.isfinite(hi) else 0 for v, _, hi in vals],
                        "arrayminus": [max(v - lo, 0) if math.isfinite(lo) else 0 for v, lo, _ in vals],
                    }
                    if has and delta
                    else None
                )  # fmt: skip
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="markers",
                    marker=marker,
                    error_y=err,
                    name=name,
                    legendgroup=name,
                    showlegend=False,
                    hovertext=[hover(r, cis.get(id(r)), samples) for r in ps],
                    hovertemplate="%{hovertext}<extra></extra>",
                    meta=st,
                )
            )
        ranked = [r for r in rs if plots.status(r) not in (*plots.UNDRAWN, "does_not_fit")]
        f = plots.front_xy(ranked, {id(r): val(r)[0] for r in ranked})
        if len(f) > 1:
            fig.add_trace(
                go.Scatter(
                    x=[x for x, _ in f],
                    y=[v for _, v in f],
                    mode="lines",
                    name=f"{name} front",
                    legendgroup=name,
                    showlegend=False,
                    hoverinfo="skip",
                    line={"color": _rgb(sty.color), "width": 1.5, "dash": "dash" if sty.reference else "solid"},
                )
            )
    marks = plots.budgets(results)
    what = "budget" if any(r.get("budget_bytes") for r in results) else "byte cap"
    for i, b in enumerate(marks):
        lo = floor / 1.2 if delta or y == "rel_mse" else min(ys_all, default=0)
        fig.add_trace(
            go.Scatter(
                x=[b, b],
                y=[lo, top],
                mode="lines",
                line={"color": "gray", "dash": "dot", "width": 1},
                name=f"{what}s",
                legendgroup="budgets",
                showlegend=i == 0,
                hovertext=f"{what} {plots.mb(b)}",
                hoverinfo="text",
            )
        )
    logy = delta or y == "rel_mse"
    lo_x, hi_x, ticks = plots.mb_ticks([analysis.number(r, "final_bytes") for r in rows], marks)
    fig.update_xaxes(
        type="log", title="final artifact size (MB = 10⁶ bytes, log scale)", tickvals=ticks,
        ticktext=[plots.mb(t) for t in ticks], range=[math.log10(lo_x), math.log10(hi_x)] if ticks else None,
    )  # fmt: skip
    refs = plots.ref_bpbs(rows)
    ref = f"{refs[0]:.4f}" if len(refs) == 1 else "each point's model"
    ylabel = f"Δbpb vs unquantized ({ref} bpb), log" if delta else y + (" (log)" if logy else "")
    fig.update_yaxes(type="log" if logy else "linear", title=ylabel, **({"dtick": "D2"} if logy else {}))
    fig.update_layout(
        template="plotly_white", height=560, margin={"l": 70, "r": 20, "t": 30, "b": 60},
        legend={"title": {"text": "system (click to hide)"}}, hoverlabel={"align": "left"},
    )  # fmt: skip
    return fig


def _nominal_vs_actual(results: list[dict[str, Any]], cis: dict[int, plots.PointCI], samples: int) -> Any:
    """Nominal (analytic) against actual bits/weight, a trace per system, with the y = x line."""
    import plotly.graph_objects as go

    rows = [r for r in results if plots.status(r) not in ("seed", "does_not_fit")]
    groups = plots.by_system(rows)
    style = plots.styles(groups)
    fig = go.Figure()
    vals: list[float] = []
    for name, rs in groups.items():
        xs = [analysis.number(r, "nominal_bits_per_weight") for r in rs]
        ys = [analysis.number(r, "bits_per_weight") for r in rs]
        vals += [v for v in (*xs, *ys) if math.isfinite(v)]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name=name,
                marker=_marker(style[name], "ok"),
                hovertext=[hover(r, cis.get(id(r)), samples) for r in rs],
                hovertemplate="%{hovertext}<extra></extra>",
            )
        )
    if vals:
        fig.add_trace(
            go.Scatter(
                x=[min(vals), max(vals)],
                y=[min(vals), max(vals)],
                mode="lines",
                name="actual = nominal",
                line={"color": "gray", "dash": "dot"},
                hoverinfo="skip",
            )
        )
    fig.update_xaxes(title="nominal bits per weight (analytic formula)")
    fig.update_yaxes(title="actual bits per weight (final bytes × 8 / parameters)")
    fig.update_layout(template="plotly_white", height=520, margin={"l": 70, "r": 20, "t": 30, "b": 60})
    return fig


def _table(results: list[dict[str, Any]], cis: dict[int, plots.PointCI]) -> str:
    e = _html.escape
    head = ["system", "status", "budget", "knob", "final bytes", "bpb [CI]", "Δbpb vs unquantized [CI]", "protocol"]
    rows = sorted(
        results,
        key=lambda r: (r.get("budget_bytes") or 0, plots.series_names([r])[0], analysis.number(r, "final_bytes")),
    )
    out = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        c = cis.get(id(r))
        fb = analysis.number(r, "final_bytes")
        cells = [
            analysis.system(r),
            plots.status(r),
            plots.mb(float(r["budget_bytes"])) if r.get("budget_bytes") else "",
            knob(r),
            f"{fb:,.0f}" if math.isfinite(fb) else "",
            _interval(c.bpb, c.bpb_lo, c.bpb_hi) if c else "",
            _interval(c.delta, c.delta_lo, c.delta_hi, "+") if c else "",
            store.row_protocol(r),
        ]
        out.append("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in cells) + "</tr>")
    return "\n".join([*out, "</table>"])


CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}p{max-width:70em}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f3f3f3}td:nth-child(5),td:nth-child(6),td:nth-child(7){font-variant-numeric:tabular-nums}"""


def render(
    results: list[dict[str, Any]], samples: int = 1000, level: float = 0.95, title: str = "bytegolf report"
) -> str:
    """The whole report page as one HTML string, plotly.js inlined (no network needed to open it)."""
    import plotly.offline

    cis = plots.point_cis(results, samples, level)
    e = _html.escape
    config = {"displaylogo": False, "responsive": True}
    sections = []
    if cis:
        sections.append((
            "Δbpb against the unquantized model vs final bytes",
            f"Each point: bpb − bpb of the unquantized model, bars its {level:.0%} CI (paired bootstrap of the "
            f"point's and the unquantized model's per-window losses, {samples} resamples, documents resampled where "
            "rows carry them). Filled: landed on its budget; black ring: knob at its limit under the budget; hollow: "
            "reference export at its own size (or an off-budget front point); ×: the budget is out of reach (drawn "
            "at its smallest artifact, on the bottom). Lines: each system's Pareto front (dashed: reference exports). "
            "Hover a point for its system, knob, bytes, bpb, Δbpb and evaluation protocol; click a legend entry to "
            "hide a system.",
            _frontier(results, cis, "delta_bpb", samples),
        ))  # fmt: skip
    if any(math.isfinite(analysis.number(r, "rel_mse")) for r in results):
        sections.append((
            "Weight relative MSE vs final bytes",
            "‖W−Ŵ‖²/‖W‖² of every point (log scale), same markers.",
            _frontier(results, cis, "rel_mse", samples),
        ))  # fmt: skip
    sections.append((
        "Nominal vs actual bits per weight",
        "The analytic bits/weight against the artifact's (final bytes × 8 / parameters); dotted: actual = nominal.",
        _nominal_vs_actual(results, cis, samples),
    ))  # fmt: skip
    intro = f"<p>{len(results)} points; the static report: <a href='report.md'>report.md</a>.</p>"
    body = [f"<h1>{e(title)}</h1>", intro]
    for i, (head, text, fig) in enumerate(sections):
        div = fig.to_html(full_html=False, include_plotlyjs=False, config=config, div_id=f"fig{i}")
        body += [f"<h2>{e(head)}</h2>", f"<p>{e(text)}</p>", div]
    body += ["<h2>Points</h2>", _table(results, cis)]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{CSS}</style>"
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_html(
    results: list[dict[str, Any]],
    path: Path,
    samples: int = 1000,
    level: float = 0.95,
    title: str = "bytegolf report",
) -> Path | None:
    """Write the interactive report page to path (render); None, with a warning, where plotly is not installed."""
    if not available():
        warnings.warn(f"report.html not written: it needs plotly (pip install '{PLOTLY_REQUIREMENT}')", stacklevel=2)
        return None
    page = render(results, samples, level, title)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
