"""PNG plots of a results set (matplotlib, Agg): Δbpb against the unquantized model and other frontiers against
final bytes, Δbpb per budget, nominal vs actual bits.

Every plot draws a system in one colour and marker (`styles`: tab10, the marker cycling once the colours
repeat; each Parameter Golf reference export its own marker, with or without @own) and a point's status in
its fill and edge (`STATUS`: filled landed on its budget, ringed black at its knob's limit, hollow off the
budgets, × at the bottom edge where the budget is out of reach). Names go in a legend table beside the axes,
never as labels on the points, and the x axis is in MB with only the budgets the study used drawn."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

from bytegolf.figure import pyplot
from bytegolf.measure import stats
from bytegolf.run import store
from bytegolf.study import analysis

MARKERS = ("o", "^", "v", "p", "h", "<", ">", "8")  # the marker of the n-th format cycles once tab10's colours repeat
REFERENCE_MARKERS = {"pg_baseline": "s", "pg_record": "D", "pg_top": "*"}  # each reference export its own
OTHER_REFERENCE_MARKERS = ("P", "X", "d")  # references not named above
UNDRAWN = ("seed", "over_budget")  # statuses on no front line: other-seed repeats, points set aside over budget


@dataclass(frozen=True)
class Style:
    """How one system is drawn: its colour (RGBA), marker and whether it is a reference export."""

    color: tuple[float, float, float, float]
    marker: str
    reference: bool


@dataclass(frozen=True)
class StatusStyle:
    """How a point's status is drawn: filled or hollow, an edge colour and width, size and opacity."""

    label: str
    filled: bool = True
    edge: str | None = None
    edge_width: float = 0.6
    size: float = 46
    alpha: float = 0.95


STATUS = {
    "ok": StatusStyle("landed on its budget (filled)"),
    "at_limit": StatusStyle("at_limit: knob at its end, under the budget (black ring)", edge="black", edge_width=1.8),
    "short": StatusStyle("short: next step does not fit (grey ring)", edge="0.45", edge_width=1.8),
    "own": StatusStyle("reference at its own size, @own (hollow)", filled=False, edge_width=1.5, size=70),
    "front": StatusStyle("front: off-budget frontier point (hollow, small)", filled=False, edge_width=1.1, size=26),
    "seed": StatusStyle("other-seed repeat (small, faint)", size=14, alpha=0.5),
    "over_budget": StatusStyle("over its budget, set aside (faint)", size=20, alpha=0.35),
    "point": StatusStyle("point (filled)"),  # a sweep's rows carry no status
}
DOES_NOT_FIT = "does_not_fit: budget out of reach (× at its smallest artifact's size, no bpb)"


def status(r: dict[str, Any]) -> str:
    """A row's status for drawing: compare's status, "point" for a sweep row without one."""
    s = str(r.get("status") or "point")
    return s if s in STATUS or s == "does_not_fit" else "ok"


def series_names(results: list[dict[str, Any]]) -> list[str]:
    """One name per row: its system without @own, plus "+codec" where one system's evaluated rows use several
    codecs (a does-not-fit row, whose codec may be another, joins its system's series)."""
    codecs: dict[str, set[str]] = {}
    for r in results:
        if status(r) != "does_not_fit":
            codecs.setdefault(analysis.base_system(r), set()).add(str(r.get("codec")))
    out = []
    for r in results:
        base, codec = analysis.base_system(r), str(r.get("codec"))
        many = len(codecs.get(base, ())) > 1 and (status(r) != "does_not_fit" or codec in codecs[base])
        out.append(base + (f"+{codec}" if many else ""))
    return out


def by_system(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows per system (series_names), formats first then reference exports, each sorted by name."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, r in zip(series_names(results), results, strict=True):
        out.setdefault(name, []).append(r)
    return dict(sorted(out.items(), key=lambda kv: (any(analysis.is_reference_export(r) for r in kv[1]), kv[0])))


def styles(groups: dict[str, list[dict[str, Any]]]) -> dict[str, Style]:
    """A distinct (colour, marker) per system: tab10's colours but grey, in order; formats cycle MARKERS once the
    colours repeat; each reference export (pg_baseline, pg_record, pg_top, …) its own marker."""
    tab10 = pyplot().get_cmap("tab10")
    palette = [tuple(float(c) for c in tab10(i)) for i in range(10) if i != 7]  # tab10 less grey (statuses)
    out, k, other = {}, 0, 0
    for i, (name, rs) in enumerate(groups.items()):
        ref = any(analysis.is_reference_export(r) for r in rs)
        if ref:
            base = name.split("+")[0]
            marker = REFERENCE_MARKERS.get(base) or OTHER_REFERENCE_MARKERS[other % len(OTHER_REFERENCE_MARKERS)]
            other += base not in REFERENCE_MARKERS
        else:
            marker = MARKERS[(k // len(palette)) % len(MARKERS)]
            k += 1
        out[name] = Style(palette[i % len(palette)], marker, ref)
    return out


def mb(b: float) -> str:
    """Bytes as MB (10⁶ bytes), e.g. "4 MB", "0.06 MB"."""
    return f"{b / 1e6:.3g} MB"


def budgets(results: list[dict[str, Any]]) -> list[int]:
    """The byte budgets the study used (compare's budget_bytes); a sweep without budgets: its byte caps."""
    used = sorted({int(r["budget_bytes"]) for r in results if r.get("budget_bytes")})
    return used or sorted({int(r["cap_bytes"]) for r in results if r.get("cap_bytes")})


@dataclass(frozen=True)
class PointCI:
    """One point's bpb and Δbpb against the unquantized model, with document-bootstrap intervals (NaN: the row
    has no per-window losses to resample)."""

    bpb: float
    bpb_lo: float
    bpb_hi: float
    delta: float
    delta_lo: float
    delta_hi: float
    level: float
    by: str  # "documents", "windows" or "" (no interval)


def point_ci(r: dict[str, Any], samples: int = 1000, level: float = 0.95) -> PointCI | None:
    """bpb and Δbpb = bpb − ref_bpb of one row with their intervals: Δ by stats.paired_bootstrap of window_nll
    against ref_window_nll (documents resampled where the row has window_docs), bpb by the same resample.
    None where the row has no bpb or no ref_bpb."""
    bpb, ref = analysis.number(r, "bpb"), analysis.number(r, "ref_bpb")
    if not (math.isfinite(bpb) and math.isfinite(ref)):
        return None
    nan = math.nan
    a, b, d = (np.asarray(r.get(k) or [], dtype=np.float64) for k in ("window_nll", "ref_window_nll", "window_bytes"))
    if not (len(a) and a.shape == b.shape == d.shape and samples > 0):
        return PointCI(bpb, nan, nan, bpb - ref, nan, nan, level, "")
    docs = r.get("window_docs")
    groups = np.asarray(docs) if docs is not None and len(docs) == len(a) else None
    delta = stats.paired_bootstrap(a, b, d, samples, level, groups=groups)
    counts = stats.resample_counts(len(a), samples, 0, groups)
    boot = stats.resampled_ratios(a[None, :], d, counts, 1 / stats.LN2)[:, 0]
    lo, hi = (float(np.quantile(boot, q)) for q in ((1 - level) / 2, (1 + level) / 2))
    by = "documents" if groups is not None else "windows"
    return PointCI(bpb, lo, hi, delta.delta, delta.lo, delta.hi, level, by)


def mb_ticks(xs: list[float], marks: list[int]) -> tuple[float, float, list[float]]:
    """A log byte axis's range (the sizes and budgets with 10% to spare) and its ticks: the budgets plus round
    sizes (1, 2, 5, then 4, 3, 6, 8, 1.5 × 10ᵏ) no closer to another tick than an eighth of the range (so that no
    label runs into the next). (nan, nan, []) without a positive size."""
    vals = [x for x in [*xs, *marks] if math.isfinite(x) and x > 0]
    if not vals:
        return math.nan, math.nan, []
    lo, hi = min(vals) / 1.1, max(vals) * 1.1
    gap = math.log(hi / lo) / 8
    kept = [float(b) for b in marks]
    for m in (1, 2, 5, 4, 3, 6, 8, 1.5):  # roundest first
        for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
            t = m * 10.0**e
            if lo <= t <= hi and all(abs(math.log(t / k)) >= gap for k in kept):
                kept.append(t)
    return lo, hi, sorted(kept)


def _mb_axis(ax: Any, xs: list[float], marks: list[int]) -> None:
    """Log x axis over the sizes, ticked in MB (mb_ticks)."""

    lo, hi, ticks = mb_ticks(xs, marks)
    if not ticks:
        return
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: mb(v)))
    ax.xaxis.set_minor_locator(NullLocator())


def _log_y(ax: Any, lows: list[float]) -> None:
    """Log y axis with plain decimal ticks (1-2-5); symlog where some interval reaches 0 or below."""

    pos = [v for v in lows if math.isfinite(v) and v > 0]
    if any(math.isfinite(v) and v <= 0 for v in lows) and pos:
        ax.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(min(pos))))
    else:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _handle(style: Style | None, st: StatusStyle, label: str, ls: str = "none") -> Any:

    color = style.color if style else "0.35"
    marker = style.marker if style else "o"
    return Line2D(
        [], [], color=color, ls=ls, lw=1.3, marker=marker, ms=7 if marker != "*" else 10, label=label,
        markerfacecolor=color if st.filled else "white", markeredgecolor=st.edge or color,
        markeredgewidth=st.edge_width, alpha=st.alpha,
    )  # fmt: skip


def _legend_table(ax: Any, sections: list[tuple[str, list[Any]]]) -> None:
    """One legend outside the axes on the right, its sections under bold headings (a table, no label on a point)."""

    handles = []
    for title, hs in sections:
        if hs:
            handles.append(Line2D([], [], ls="none", label=title))
            handles += hs
    leg = ax.legend(
        handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, handlelength=2.2
    )
    for text, h in zip(leg.get_texts(), handles, strict=True):
        if h.get_marker() in (None, "None", "none", "") and h.get_linestyle() in ("None", "none", ""):
            text.set_fontweight("bold")


def _err(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Error-bar lengths below and above v for the interval [lo, hi], clipped at 0 (a percentile interval of a
    skewed bootstrap may leave out the observed value)."""
    return np.stack([np.maximum(v - lo, 0.0), np.maximum(hi - v, 0.0)])


def front_xy(rows: list[dict[str, Any]], y: dict[int, float]) -> list[tuple[float, float]]:
    """The Pareto front (x = final bytes, y given per row id), both smaller-is-better, sorted by x."""
    xs = np.array([analysis.number(r, "final_bytes") for r in rows])
    ys = np.array([y[id(r)] for r in rows])
    return [(float(xs[i]), float(ys[i])) for i in stats.pareto_front(xs, ys)] if rows else []


def _draw_points(
    ax: Any,
    groups: dict[str, list[dict[str, Any]]],
    style: dict[str, Style],
    value: Callable[[dict[str, Any]], tuple[float, float, float]],
    top: float | None = None,
) -> tuple[list[Any], set[str], list[float], list[str]]:
    """Every point of every system (marker per system, fill and edge per status, a CI bar where value gives an
    interval) and each system's Pareto front (a line; dashed for reference exports). value(row) gives (y, lo,
    hi). Returns the system legend handles, the statuses drawn, every y and interval low drawn (for the axis),
    and one note per value above top (drawn as ▲ on the top edge)."""
    handles: list[Any] = []
    seen: set[str] = set()
    lows: list[float] = []
    off: list[str] = []
    for name, rs in groups.items():
        sty = style[name]
        pts = [(r, *value(r)) for r in rs if status(r) != "does_not_fit"]
        pts = [p for p in pts if math.isfinite(analysis.number(p[0], "final_bytes")) and math.isfinite(p[1])]
        by_status: dict[str, list[tuple]] = {}
        for p in pts:
            by_status.setdefault(status(p[0]), []).append(p)
        for st_name, ps in by_status.items():
            st = STATUS[st_name]
            seen.add(st_name)
            xs = np.array([analysis.number(p[0], "final_bytes") for p in ps])
            ys = np.array([p[1] for p in ps], dtype=float)
            lo, hi = np.array([p[2] for p in ps], dtype=float), np.array([p[3] for p in ps], dtype=float)
            over = ys > top if top is not None else np.zeros(len(ys), bool)
            off += [f"{name} at {mb(x)}: {v:.4g}" for x, v in zip(xs[over], ys[over], strict=True)]
            shown = np.minimum(ys, top) if top is not None else ys
            bar = np.isfinite(lo) & np.isfinite(hi) & ~over
            if bar.any():
                ax.errorbar(
                    xs[bar], ys[bar], yerr=_err(ys[bar], lo[bar], hi[bar]), fmt="none", ecolor=sty.color,
                    elinewidth=1.0, capsize=2.5, alpha=0.8 * st.alpha, zorder=4,
                )  # fmt: skip
                lows += [float(v) for v in lo[bar]]
            lows += [float(v) for v in ys[~over]]
            pc = ax.scatter(
                xs, shown, s=st.size * (2.2 if sty.marker == "*" else 1.0), marker=sty.marker, zorder=6,
                alpha=st.alpha, facecolors=[sty.color if st.filled else "white"] * len(xs),
                edgecolors=[st.edge or sty.color] * len(xs), linewidths=st.edge_width, clip_on=not over.any(),
            )  # fmt: skip
            pc.set_gid(f"points:{name}:{st_name}")
            if over.any():
                ax.scatter(xs[over], shown[over], marker="^", s=36, color=sty.color, zorder=7, clip_on=False)
            if sty.reference:  # each reference export's point, by its label (pg_top, pg_top@own, …)
                for p, x, y in zip(ps, xs, shown, strict=True):
                    ax.scatter([x], [y], s=0, marker=sty.marker).set_gid(f"reference:{analysis.system(p[0])}")
        ranked = [p for p in pts if status(p[0]) not in UNDRAWN]
        f = front_xy([p[0] for p in ranked], {id(p[0]): p[1] for p in ranked})
        if len(f) > 1:
            (line,) = ax.plot(
                [x for x, _ in f], [min(y, top) if top is not None else y for _, y in f],
                ls="--" if sty.reference else "-", lw=1.4, color=sty.color, alpha=0.8, zorder=3,
            )  # fmt: skip
            line.set_gid(f"front:{name}")
        n = len(pts)
        label = f"{name}  ({n} point{'s' if n != 1 else ''})"
        handles.append(_handle(sty, STATUS["ok"], label, "--" if sty.reference else "-"))
    return handles, seen, lows, off


def _draw_does_not_fit(ax: Any, groups: dict[str, list[dict[str, Any]]], style: dict[str, Style]) -> bool:
    """The rows whose budget is out of reach as × on the bottom edge at their smallest artifact's size."""
    drawn = False
    for name, rs in groups.items():
        xs = [x for r in rs if status(r) == "does_not_fit" and math.isfinite(x := analysis.number(r, "final_bytes"))]
        if xs:
            pc = ax.scatter(
                xs, [0.025] * len(xs), marker="X", s=60, color=style[name].color, edgecolors="black", linewidths=0.5,
                transform=ax.get_xaxis_transform(), zorder=8, clip_on=False,
            )  # fmt: skip
            pc.set_gid(f"does_not_fit:{name}")
            drawn = True
    return drawn


def protocol_note(rows: list[dict[str, Any]]) -> str:
    """The evaluation protocol of the evaluated rows for a plot's title: "\nprotocol: …", or a warning where
    they mix protocols ("" where none is evaluated)."""
    found = {store.row_protocol(r) for r in rows if r.get("bpb") is not None} - {""}
    if not found:
        return ""
    if len(found) == 1:
        return f"\nprotocol: {found.pop()}"
    return f"\nWARNING: {len(found)} evaluation protocols mixed: bpb compares only within one"


def _budget_lines(ax: Any, marks: list[int], budget: bool) -> list[Any]:
    """A dashed vertical line per budget (gid "cap:<bytes>"); the legend handle."""
    for b in marks:
        ax.axvline(b, color="0.35", ls="--", lw=1, zorder=1).set_gid(f"cap:{b}")
    if not marks:
        return []

    what = "budget" if budget else "byte cap"
    return [Line2D([], [], color="0.35", ls="--", lw=1, label=f"{what}{'s' if len(marks) > 1 else ''}: " +
                   ", ".join(mb(b) for b in marks))]  # fmt: skip


def _status_handles(seen: set[str], does_not_fit: bool) -> list[Any]:
    hs = [_handle(None, STATUS[s], STATUS[s].label) for s in STATUS if s in seen]
    if does_not_fit:
        hs.append(Line2D([], [], ls="none", marker="X", ms=8, color="0.35", mec="black", mew=0.5, label=DOES_NOT_FIT))
    return hs


def frontier_figure(
    results: list[dict[str, Any]],
    y: str,
    ylabel: str,
    logy: bool = False,
    clip: float | None = None,
    series: str = "format",
):
    """The frontier plot of y against final bytes as a matplotlib Figure (see `frontier`); its artists carry gids:
    "front:<system>", "points:<system>:<status>", "cap:<bytes>", "ref_bpb", "reference:<label>" (a reference
    export's point) and "does_not_fit:<system>"."""

    plt = pyplot()
    groups = by_system(results)
    style = styles(groups)
    fig, ax = plt.subplots(figsize=(13, 6))
    ys_all = [v for r in results if status(r) != "does_not_fit" and math.isfinite(v := analysis.number(r, y))]
    top = clip * min(ys_all) if clip and ys_all and max(ys_all) > clip * min(ys_all) else None
    handles, seen, _, off = _draw_points(ax, groups, style, lambda r: (analysis.number(r, y), math.nan, math.nan), top)
    dnf = _draw_does_not_fit(ax, groups, style)
    lines = _budget_lines(ax, marks := budgets(results), any(r.get("budget_bytes") for r in results))
    model_bpbs = ref_bpbs(results) if y == "bpb" else []
    for v in model_bpbs:
        ax.axhline(v, color="tab:red", ls=":", lw=1.3).set_gid("ref_bpb")
    if model_bpbs:
        what = "model (" if len(model_bpbs) == 1 else "models ("
        label = f"unquantized {what}{', '.join(f'{v:.4f}' for v in model_bpbs)} bpb)"
        lines.append(Line2D([], [], color="tab:red", ls=":", lw=1.3, label=label))
    if top is not None:
        lo = min([*ys_all, *model_bpbs])
        ax.set_ylim(lo - 0.03 * (top - lo), top)
        lines += [Line2D([], [], ls="none", marker="^", color="0.35", label=f"▲ off-scale: {o}") for o in off]
    _mb_axis(ax, [analysis.number(r, "final_bytes") for r in results], marks)
    if logy:
        ax.set_yscale("log")
    note = protocol_note(results) if y in ("bpb", "delta_bpb", "val_loss") else ""
    ax.set_title(f"{y} vs final bytes (lines: Pareto front per {series}){note}", fontsize=10)
    ax.set_xlabel("final artifact size (MB = 10⁶ bytes, log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    _legend_table(ax, [(f"{series} (points)", handles), ("status", _status_handles(seen, dnf)), ("lines", lines)])
    fig.tight_layout()
    return fig


def ref_bpbs(results: list[dict[str, Any]]) -> list[float]:
    """The unquantized model's bpb the points carry (ref_bpb), one value per distinct model (4 decimals)."""
    vals = [v for r in results if np.isfinite(v := analysis.number(r, "ref_bpb"))]
    by: dict[float, list[float]] = {}
    for v in vals:
        by.setdefault(round(v, 4), []).append(v)
    return [float(np.median(v)) for _, v in sorted(by.items())]


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def frontier(
    results: list[dict[str, Any]],
    y: str,
    ylabel: str,
    path: Path,
    logy: bool = False,
    clip: float | None = None,
    series: str = "format",
) -> Path:
    """Every point per system (colour and marker per system, fill per status) and its Pareto front (line) on
    (final bytes, y), written to path as PNG.

    Also drawn: the budgets the study used (a sweep without budgets: its byte caps; dashed vertical lines,
    ticks in MB), the rows whose budget is out of reach (× on the bottom edge) and, for y = bpb, the
    unquantized model's bpb (dotted horizontal line). clip: the y axis ends at clip × the lowest y; points
    above it are drawn as ▲ on the top edge, their values in the legend."""
    return _save(frontier_figure(results, y, ylabel, logy, clip, series), path)


def point_cis(results: list[dict[str, Any]], samples: int = 1000, level: float = 0.95) -> dict[int, PointCI]:
    """point_ci of every row that has one (does-not-fit rows left out), keyed by id(row)."""
    out = {}
    for r in results:
        if status(r) != "does_not_fit" and (ci := point_ci(r, samples, level)) is not None:
            out[id(r)] = ci
    return out


def delta_frontier_figure(results: list[dict[str, Any]], samples: int = 1000, level: float = 0.95):
    """Δbpb against the unquantized model (bpb − ref_bpb, log y axis) vs final bytes as a Figure: every point with
    its paired document-bootstrap interval (point_ci), each system's Pareto front, the budgets the study used
    and the rows whose budget is out of reach. Gids as in frontier_figure. Without a ref_bpb on any row: the
    plain bpb frontier_figure."""
    cis = point_cis(results, samples, level)
    if not cis:
        return frontier_figure(results, "bpb", "bits per byte of the decoded model (bpb)")
    plt = pyplot()
    rows = [r for r in results if id(r) in cis or status(r) == "does_not_fit"]
    groups = by_system(rows)
    style = styles(groups)
    fig, ax = plt.subplots(figsize=(13, 6))

    def value(r: dict[str, Any]) -> tuple[float, float, float]:
        c = cis[id(r)]
        return c.delta, c.delta_lo, c.delta_hi

    handles, seen, lows, _ = _draw_points(ax, groups, style, value)
    dnf = _draw_does_not_fit(ax, groups, style)
    lines = _budget_lines(ax, marks := budgets(rows), any(r.get("budget_bytes") for r in rows))
    _log_y(ax, lows)
    _mb_axis(ax, [analysis.number(r, "final_bytes") for r in rows], marks)
    refs = ref_bpbs(rows)
    by = {c.by for c in cis.values()} - {""}
    ci = f"bars: {level:.0%} CI, paired bootstrap over {'/'.join(sorted(by))}; " if by else ""
    ax.set_title(
        f"Δbpb against the unquantized model vs final bytes ({ci}lines: Pareto front per system){protocol_note(rows)}",
        fontsize=10,
    )
    model = f"the unquantized model ({refs[0]:.4f} bpb)" if len(refs) == 1 else "each point's unquantized model"
    ax.set_ylabel(f"Δbpb = bpb − bpb of {model}\n(log scale; lower is better)")
    ax.set_xlabel("final artifact size (MB = 10⁶ bytes, log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="y", alpha=0.1)
    _legend_table(ax, [("system (points)", handles), ("status", _status_handles(seen, dnf)), ("lines", lines)])
    fig.tight_layout()
    return fig


def delta_frontier(results: list[dict[str, Any]], path: Path, samples: int = 1000, level: float = 0.95) -> Path:
    """delta_frontier_figure written to path as PNG: Δbpb against the unquantized model on a log axis, so that one
    far-off point does not squash the differences between the rest."""
    return _save(delta_frontier_figure(results, samples, level), path)


def budget_rows(results: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The rows a budget ranks (as compare.ranking): those landed on it (does-not-fit included) and the reference
    exports at their own size that fit it."""
    here = [r for r in results if r.get("budget_bytes") == budget and status(r) not in UNDRAWN]
    own = [r for r in results if status(r) == "own" and (analysis.number(r, "counted_bytes") or 0) <= budget]
    return here + own


def delta_by_budget_figure(results: list[dict[str, Any]], samples: int = 1000, level: float = 0.95):
    """One panel per budget the study used, stacked on a shared log x axis: every system's Δbpb against the
    unquantized model with its CI, best first, does-not-fit rows last (× at the left edge); None without
    budgets or without a ref_bpb. Points carry gid "budget:<bytes>:<label>"."""
    marks = sorted({int(r["budget_bytes"]) for r in results if r.get("budget_bytes")})
    cis = point_cis(results, samples, level)
    if not marks or not cis:
        return None
    plt = pyplot()
    panels = []
    for b in marks:
        rs = [r for r in budget_rows(results, b) if id(r) in cis or status(r) == "does_not_fit"]
        ok = sorted((r for r in rs if id(r) in cis), key=lambda r: cis[id(r)].delta)
        panels.append((b, ok + [r for r in rs if id(r) not in cis]))
    panels = [(b, rs) for b, rs in panels if rs]
    if not panels:
        return None
    groups = by_system([r for _, rs in panels for r in rs])
    style = styles(groups)
    name_of = {id(r): n for n, rs in groups.items() for r in rs}
    sizes = [len(rs) for _, rs in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(13, 0.3 * sum(sizes) + 1.1 * len(panels) + 0.8), sharex=True, squeeze=False,
        gridspec_kw={"height_ratios": [n + 1.2 for n in sizes]},
    )  # fmt: skip
    lows: list[float] = []
    seen: set[str] = set()
    dnf = False
    for ax, (b, rs) in zip(axes[:, 0], panels, strict=True):
        labels = []
        for i, r in enumerate(rs):
            sty, st_name = style[name_of[id(r)]], status(r)
            if id(r) not in cis:
                dnf = True
                labels.append(f"{analysis.system(r)}: does not fit (smallest {mb(analysis.number(r, 'final_bytes'))})")
                pc = ax.scatter(
                    [0.012], [i], marker="X", s=60, color=sty.color, edgecolors="black", linewidths=0.5,
                    transform=ax.get_yaxis_transform(), zorder=8, clip_on=False,
                )  # fmt: skip
                pc.set_gid(f"budget:{b}:{analysis.system(r)}")
                continue
            c, st = cis[id(r)], STATUS[st_name]
            seen.add(st_name)
            knob = f", {r['knob']}={r['knob_value']:.4g}" if r.get("knob") and r.get("knob_value") is not None else ""
            labels.append(f"{analysis.system(r)} ({mb(analysis.number(r, 'final_bytes'))}{knob})")
            if math.isfinite(c.delta_lo) and math.isfinite(c.delta_hi):
                err = _err(np.array([c.delta]), np.array([c.delta_lo]), np.array([c.delta_hi]))
                ax.errorbar([c.delta], [i], xerr=err, fmt="none", ecolor=sty.color, elinewidth=1.2, capsize=2.5)
                lows.append(c.delta_lo)
            lows.append(c.delta)
            pc = ax.scatter(
                [c.delta], [i], s=st.size * (2.2 if sty.marker == "*" else 1.0), marker=sty.marker, zorder=6,
                facecolors=[sty.color if st.filled else "white"], edgecolors=[st.edge or sty.color],
                linewidths=st.edge_width,
            )  # fmt: skip
            pc.set_gid(f"budget:{b}:{analysis.system(r)}")
        ax.set_yticks(range(len(rs)), labels, fontsize=8)
        ax.set_ylim(len(rs) - 0.5, -0.7)
        ax.set_title(f"budget {mb(b)}", fontsize=10, loc="left")
        ax.grid(True, axis="x", which="major", alpha=0.3)
    bottom = axes[-1, 0]
    pos = [v for v in lows if v > 0]
    if any(v <= 0 for v in lows) and pos:
        bottom.set_xscale("symlog", linthresh=10 ** math.floor(math.log10(min(pos))))
    else:
        bottom.set_xscale("log")
        bottom.xaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        bottom.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    refs = ref_bpbs([r for _, rs in panels for r in rs])
    model = f"the unquantized model ({refs[0]:.4f} bpb)" if len(refs) == 1 else "each point's unquantized model"
    bottom.set_xlabel(f"Δbpb = bpb − bpb of {model} (log scale; lower is better)")
    handles = [_handle(style[n], STATUS["ok"], n) for n in groups]
    by = {c.by for c in cis.values()} - {""}
    ci = f" (bars: {level:.0%} CI, paired bootstrap over {'/'.join(sorted(by))})" if by else ""
    fig.suptitle(
        f"Δbpb against the unquantized model per budget, best first{ci}"
        f"{protocol_note([r for _, rs in panels for r in rs])}",
        fontsize=10,
    )
    _legend_table(axes[0, 0], [("system", handles), ("status", _status_handles(seen, dnf))])
    fig.tight_layout()
    return fig


def delta_by_budget(results: list[dict[str, Any]], path: Path, samples: int = 1000, level: float = 0.95) -> Path | None:
    """delta_by_budget_figure written to path as PNG; None (nothing written) where the study used no budgets."""
    fig = delta_by_budget_figure(results, samples, level)
    return None if fig is None else _save(fig, path)


def nominal_vs_actual_figure(results: list[dict[str, Any]]):
    """Two panels: nominal (analytic) against actual bits/weight with the y = x line (a colour and marker per
    system), and per point nominal (hollow) and actual (filled) joined by a line, other-seed repeats left
    out. Artists carry gids "scatter:<system>", "nominal:<system>", "actual:<system>"."""
    plt = pyplot()
    rows = [r for r in results if status(r) not in ("seed", "does_not_fit")]
    groups = by_system(rows)
    style = styles(groups)
    n = sum(len(rs) for rs in groups.values())
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, max(5.0, 0.26 * n + 1.6)), gridspec_kw={"width_ratios": [1, 1.15]})
    lo, hi = np.inf, 0.0
    handles, labels, row = [], [], 0
    for name, rs in groups.items():
        sty = style[name]
        rs = sorted(rs, key=lambda r: analysis.number(r, "final_bytes"))
        xs = np.array([analysis.number(r, "nominal_bits_per_weight") for r in rs])
        ys = np.array([analysis.number(r, "bits_per_weight") for r in rs])
        ok = np.isfinite(xs) & np.isfinite(ys)
        size = 70 if sty.marker == "*" else 34
        ax.scatter(xs, ys, s=size, marker=sty.marker, color=sty.color, edgecolors="black", linewidths=0.4,
                   zorder=5).set_gid(f"scatter:{name}")  # fmt: skip
        if ok.any():
            lo, hi = min(lo, xs[ok].min(), ys[ok].min()), max(hi, xs[ok].max(), ys[ok].max())
        pos = np.arange(row, row + len(rs))
        for p, x, y in zip(pos, xs, ys, strict=True):
            bx.plot([x, y], [p, p], color=sty.color, lw=1.2, alpha=0.7, zorder=3)
        bx.scatter(xs, pos, s=size, marker=sty.marker, facecolors="white", edgecolors=[sty.color] * len(rs),
                   linewidths=1.4, zorder=5).set_gid(f"nominal:{name}")  # fmt: skip
        bx.scatter(ys, pos, s=size, marker=sty.marker, color=sty.color, zorder=6).set_gid(f"actual:{name}")
        labels += [f"{analysis.system(r)} {mb(analysis.number(r, 'final_bytes'))}" for r in rs]
        handles.append(_handle(sty, STATUS["ok"], f"{name}  ({len(rs)})"))
        row += len(rs)
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], color="0.4", ls=":", lw=1, label="actual = nominal")
    ax.set_xlabel("nominal bits per weight (analytic formula)")
    ax.set_ylabel("actual bits per weight (final bytes × 8 / parameters)")
    ax.set_title("nominal vs actual bits per weight (dotted: actual = nominal)", fontsize=10)
    ax.grid(True, alpha=0.3)
    bx.set_yticks(range(row), labels, fontsize=7)
    bx.set_ylim(row - 0.5, -0.5)
    bx.set_xlabel("bits per weight")
    bx.set_title("per point: nominal (hollow) → actual (filled)", fontsize=10)
    bx.grid(True, axis="x", alpha=0.3)

    key = [
        Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", mew=1.4, label="nominal (hollow)"),
        Line2D([], [], ls="none", marker="o", color="0.3", label="actual (filled)"),
        Line2D([], [], color="0.4", ls=":", lw=1, label="actual = nominal"),
    ]
    _legend_table(bx, [("system (points)", handles), ("markers", key)])
    fig.tight_layout()
    return fig


def nominal_vs_actual(results: list[dict[str, Any]], path: Path) -> Path:
    """nominal_vs_actual_figure written to path as PNG."""
    return _save(nominal_vs_actual_figure(results), path)


def probe_front_figure(probes: list[dict[str, Any]], marks: list[int], y: str = "output_error"):
    """Every search probe's pre-artifact error (y) against its bytes, one line per system through its probes
    sorted by bytes, as a matplotlib Figure; None without a probe that has y."""
    rows = [r for r in probes if math.isfinite(analysis.number(r, y)) and analysis.number(r, y) > 0]
    if not rows:
        return None
    plt = pyplot()
    groups = by_system(rows)
    style = styles(groups)
    fig, ax = plt.subplots(figsize=(13, 6))
    handles = []
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["final_bytes"])
        st = style[name]
        xs, ys = [r["final_bytes"] for r in rs], [analysis.number(r, y) for r in rs]
        (line,) = ax.plot(xs, ys, color=st.color, marker=st.marker, ms=5, lw=1.2, alpha=0.9)
        line.set_gid(f"probes:{name}")
        handles.append(_handle(st, STATUS["point"], f"{name} ({len(rs)} probes)", ls="-"))
    lines = _budget_lines(ax, marks, True)
    _mb_axis(ax, [r["final_bytes"] for r in rows], marks)
    _log_y(ax, [analysis.number(r, y) for r in rows])
    what = {"output_error": "output error ‖(W−Ŵ)X‖²/‖WX‖²", "rel_mse": "weight relative MSE ‖W−Ŵ‖²/‖W‖²"}
    ax.set_title(f"every search probe: {y} before the artifact vs bytes (probe codec; no evaluation)", fontsize=10)
    ax.set_xlabel("probe artifact size (MB = 10⁶ bytes, log scale)")
    ax.set_ylabel(what.get(y, y))
    ax.grid(True, which="major", alpha=0.3)
    _legend_table(ax, [("system", handles), ("lines", lines)])
    fig.tight_layout()
    return fig


def probe_front(probes: list[dict[str, Any]], marks: list[int], path: Path, y: str = "output_error") -> Path | None:
    """probe_front_figure written to path as PNG (None, nothing written, without a probe that has y)."""
    fig = probe_front_figure(probes, marks, y)
    return _save(fig, path) if fig is not None else None
