"""Markdown tables that paste into an issue or a README."""

from __future__ import annotations

import math
from typing import Any


def cell(v: Any) -> str:
    """A value as a markdown table cell: thousands separators, 4 decimals where bpb differences live."""
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


def header(headers: list[str], align: str = "") -> str:
    """A table's header and rule lines; align: one letter per column, r right-aligns it (numbers), l or
    nothing leaves it left."""
    rule = ["---:" if align[i : i + 1] == "r" else "---" for i in range(len(headers))]
    return "| " + " | ".join(headers) + " |\n|" + "|".join(rule) + "|"


def row(cells: list[Any]) -> str:
    """One table line of cells (each as `cell` writes it; text as given, pipes escaped)."""
    return "| " + " | ".join(cell(c) for c in cells) + " |"


def grid(headers: list[str], rows: list[list[Any]], align: str = "") -> str:
    """A GitHub markdown table of rows of cells."""
    return "\n".join([header(headers, align), *(row(r) for r in rows)]) + "\n"


def table(rows: list[dict[str, Any]], cols: list[str], headers: list[str] | None = None) -> str:
    """A GitHub markdown table of the given columns of dict rows."""
    if not rows:
        return "_none_\n"
    return grid(headers or cols, [[r.get(c) for c in cols] for r in rows])
