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


def table(rows: list[dict[str, Any]], cols: list[str], headers: list[str] | None = None) -> str:
    """A GitHub markdown table of the given columns."""
    if not rows:
        return "_none_\n"
    head = headers or cols
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
