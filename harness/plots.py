"""PNG plots of a results set (matplotlib, Agg): frontiers against final bytes, nominal vs actual bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bytegolf import analysis


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(names: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def frontier(
    results: list[dict[str, Any]], y: str, ylabel: str, path: Path, logy: bool = False, clip: float | None = None
) -> Path:
    """Every point per format (faint) and its Pareto front (line) on (final bytes, y); caps as vertical lines.

    clip: the y axis ends at clip × the lowest y; points above it are drawn on the top edge with their value."""
    plt = _plt()
    groups = analysis.by_format(results)
    colors = _colors(list(groups))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, rs in groups.items():
        xs = np.array([analysis._num(r, "final_bytes") for r in rs])
        ys = np.array([analysis._num(r, y) for r in rs])
        ax.scatter(xs, ys, s=14, alpha=0.35, color=colors[name])
        f = analysis.front(rs, y)
        fx = [analysis._num(r, "final_bytes") for r in f]
        fy = [analysis._num(r, y) for r in f]
        ax.plot(fx, fy, "-o", ms=4, lw=1.6, color=colors[name], label=f"{name} ({len(rs)} points)")
    caps = sorted({int(c) for r in results for c in (r.get("cap_bytes"), r.get("budget_bytes")) if c})
    for i, cap in enumerate(caps):
        ax.axvline(cap, color="0.35", ls="--", lw=1, label="cap / budget" if i == 0 else None)
    ys_all = [v for r in results if np.isfinite(v := analysis._num(r, y))]
    if clip and ys_all and max(ys_all) > clip * min(ys_all):
        lo, top = min(ys_all), clip * min(ys_all)
        ax.set_ylim(lo - 0.03 * (top - lo), top)
        off = sorted((r for r in results if analysis._num(r, y) > top), key=lambda r: analysis._num(r, "final_bytes"))
        last_x, depth = -1.0, 0
        for r in off:
            x = analysis._num(r, "final_bytes")
            depth = depth + 1 if x < 1.08 * last_x else 0  # stack the labels of points at about the same size
            last_x = x
            ax.annotate(
                f"{analysis._num(r, y):.2f}",
                (x, top),
                xytext=(0, -12 - 10 * depth),
                textcoords="offset points",
                ha="center",
                fontsize=7,
                color=colors[analysis.system(r)],
                arrowprops={"arrowstyle": "-|>", "color": colors[analysis.system(r)]},
            )
        ax.set_title(f"{y} vs final bytes (lines: Pareto front per format; off-scale values on the top edge)")
    else:
        ax.set_title(f"{y} vs final bytes (lines: Pareto front per format)")
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("final artifact size (bytes, log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def nominal_vs_actual(results: list[dict[str, Any]], path: Path) -> Path:
    """Nominal (analytic) bits/weight against the artifact's bits/weight, with the y = x line."""
    plt = _plt()
    groups = analysis.by_format(results)
    colors = _colors(list(groups))
    fig, ax = plt.subplots(figsize=(6, 5))
    lo, hi = np.inf, 0.0
    for name, rs in groups.items():
        xs = np.array([analysis._num(r, "nominal_bits_per_weight") for r in rs])
        ys = np.array([analysis._num(r, "bits_per_weight") for r in rs])
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
