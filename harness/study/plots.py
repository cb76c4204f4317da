"""PNG plots of a results set (matplotlib, Agg): frontiers against final bytes, nominal vs actual bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bytegolf.figure import pyplot
from bytegolf.study import analysis


def _colors(names: list[str]) -> dict[str, Any]:
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _ref_bpbs(results: list[dict[str, Any]]) -> list[float]:
    """The unquantized model's bpb the points carry (ref_bpb), one value per distinct model (4 decimals)."""
    vals = [v for r in results if np.isfinite(v := analysis.number(r, "ref_bpb"))]
    by: dict[float, list[float]] = {}
    for v in vals:
        by.setdefault(round(v, 4), []).append(v)
    return [float(np.median(v)) for _, v in sorted(by.items())]


def _mb(b: float) -> str:
    return f"{b / 1e6:g} MB"


def frontier_figure(
    results: list[dict[str, Any]],
    y: str,
    ylabel: str,
    logy: bool = False,
    clip: float | None = None,
    series: str = "format",
):
    """The frontier plot as a matplotlib Figure (see `frontier`); its artists carry gids: "front:<system>",
    "cap:<bytes>", "ref_bpb", "reference:<label>" (the marker) and its text "reference_label:<label>"."""
    plt = pyplot()
    refs = [r for r in results if analysis.is_reference_export(r)]
    groups = analysis.by_format([r for r in results if not analysis.is_reference_export(r)])
    colors = _colors(list(groups))
    fig, ax = plt.subplots(figsize=(10, 5.4))
    for name, rs in groups.items():
        xs = np.array([analysis.number(r, "final_bytes") for r in rs])
        ys = np.array([analysis.number(r, y) for r in rs])
        ax.scatter(xs, ys, s=14, alpha=0.35, color=colors[name], zorder=7)  # over the reference labels
        f = analysis.front(rs, y)
        fx = [analysis.number(r, "final_bytes") for r in f]
        fy = [analysis.number(r, y) for r in f]
        (line,) = ax.plot(fx, fy, "-o", ms=4, lw=1.6, color=colors[name], label=f"{name} ({len(rs)} points)", zorder=7)
        line.set_gid(f"front:{name}")
    last_x, depth = -1.0, 0
    for k, r in enumerate(sorted(refs, key=lambda r: analysis.number(r, "final_bytes"))):
        x, v, lab = analysis.number(r, "final_bytes"), analysis.number(r, y), analysis.system(r)
        if not (np.isfinite(x) and np.isfinite(v)):
            continue
        depth = depth + 1 if x < 1.15 * last_x else 0  # stack the labels of exports at about the same size
        last_x = x
        pts = ax.scatter(
            [x], [v], marker="*", s=160, color="black", edgecolor="white", lw=0.6, zorder=5,
            label="Parameter Golf reference exports" if k == 0 else None,
        )  # fmt: skip
        pts.set_gid(f"reference:{lab}")
        t = ax.annotate(
            lab, (x, v), xytext=(8, 10 + 12 * depth), textcoords="offset points", fontsize=8, fontweight="bold",
            arrowprops={"arrowstyle": "-", "color": "0.3", "lw": 0.6, "shrinkB": 5}, zorder=6,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
        )  # fmt: skip
        t.set_gid(f"reference_label:{lab}")
    caps = sorted({int(c) for r in results for c in (r.get("cap_bytes"), r.get("budget_bytes")) if c})
    for i, cap in enumerate(caps):
        ln = ax.axvline(cap, color="0.35", ls="--", lw=1, label="byte cap / budget" if i == 0 else None)
        ln.set_gid(f"cap:{cap}")
        ax.annotate(
            _mb(cap), (cap, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2), textcoords="offset points",
            ha="center", va="bottom", fontsize=8, color="0.3",
        )  # fmt: skip
    ref_bpbs = _ref_bpbs(results) if y == "bpb" else []
    refs_label = "model (" if len(ref_bpbs) == 1 else "models ("
    refs_label += ", ".join(f"{v:.4f}" for v in ref_bpbs)
    for i, v in enumerate(ref_bpbs):
        ln = ax.axhline(v, color="tab:red", ls=":", lw=1.3, label=f"unquantized {refs_label} bpb)" if i == 0 else None)
        ln.set_gid("ref_bpb")
    ys_all = [v for r in results if np.isfinite(v := analysis.number(r, y))]
    if clip and ys_all and max(ys_all) > clip * min(ys_all):
        lo, top = min([*ys_all, *ref_bpbs]), clip * min(ys_all)
        ax.set_ylim(lo - 0.03 * (top - lo), top)
        off = sorted(
            (r for r in results if analysis.number(r, y) > top), key=lambda r: analysis.number(r, "final_bytes")
        )
        last_x, depth = -1.0, 0
        for r in off:
            x = analysis.number(r, "final_bytes")
            depth = depth + 1 if x < 1.08 * last_x else 0  # stack the labels of points at about the same size
            last_x = x
            c = colors.get(analysis.system(r), "black")
            ax.annotate(
                f"{analysis.number(r, y):.2f}",
                (x, top),
                xytext=(0, -12 - 10 * depth),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                color=c,
                arrowprops={"arrowstyle": "-|>", "color": c},
            )
        ax.set_title(
            f"{y} vs final bytes (lines: Pareto front per {series}; off-scale values on the top edge)",
            fontsize=10,
            pad=16,
        )
    else:
        ax.set_title(f"{y} vs final bytes (lines: Pareto front per {series})", fontsize=10, pad=16)
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("final artifact size (bytes, log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def frontier(
    results: list[dict[str, Any]],
    y: str,
    ylabel: str,
    path: Path,
    logy: bool = False,
    clip: float | None = None,
    series: str = "format",
) -> Path:
    """Every point per format (faint) and its Pareto front (line) on (final bytes, y), written to path as PNG.

    Also drawn: the byte caps / budgets (dashed vertical lines, labelled in MB), the Parameter Golf
    reference exports (black stars, labelled) and, for y = bpb, the unquantized model's bpb (dotted
    horizontal line). clip: the y axis ends at clip × the lowest y; points above it are drawn on the
    top edge with their value."""
    plt = pyplot()
    fig = frontier_figure(results, y, ylabel, logy, clip, series)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def nominal_vs_actual(results: list[dict[str, Any]], path: Path) -> Path:
    """Nominal (analytic) bits/weight against the artifact's bits/weight, with the y = x line."""
    plt = pyplot()
    groups = analysis.by_format(results)
    colors = _colors(list(groups))
    fig, ax = plt.subplots(figsize=(6, 5))
    lo, hi = np.inf, 0.0
    for name, rs in groups.items():
        xs = np.array([analysis.number(r, "nominal_bits_per_weight") for r in rs])
        ys = np.array([analysis.number(r, "bits_per_weight") for r in rs])
        ax.scatter(xs, ys, s=18, color=colors[name], label=name)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if ok.any():
            lo, hi = min(lo, xs[ok].min(), ys[ok].min()), max(hi, xs[ok].max(), ys[ok].max())
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], color="0.4", ls=":", lw=1, label="actual = nominal")
    ax.set_xlabel("nominal bits per weight (analytic formula)")
    ax.set_ylabel("actual bits per weight (final bytes × 8 / parameters)")
    ax.set_title("nominal vs actual bits per weight")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
