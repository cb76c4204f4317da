"""Peer systems beside bytegolf's best: each point of a tool researchers already run (HQQ through its package,
llama.cpp's k-quant mixes as GGUF files) against the best of bytegolf's own systems at no more bytes, with
Δbpb [document CI] and the BD-rate of bytegolf's envelope against the peer's front."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from bytegolf.study import bdrate
from bytegolf.study.analysis import base_system, number, paired_test
from bytegolf.study.ranking import evaluated

RANKED = ("ok", "short", "at_limit", "own")  # a landing or a reference at its own size (not seeds or front points)


def family(row: dict[str, Any]) -> str | None:
    """The peer a row belongs to (hqq; gguf: llama.cpp's k-quant mixes, the +CODEC encodings apart), None if
    it is not a peer's."""
    name = base_system(row)
    if row.get("format") == "hqq" or name == "hqq":
        return "hqq"
    if name.startswith("gguf_"):
        return "llama.cpp k-quants" + (f" +{name.split('+', 1)[1]}" if "+" in name else "")
    return None


def ours(row: dict[str, Any]) -> bool:
    """A row of bytegolf's own systems: a format, variant or allocated system, not a reference export or peer."""
    return not row.get("reference") and family(row) is None


def _bytes(row: dict[str, Any]) -> float:
    return number(row, "counted_bytes") if row.get("counted_bytes") is not None else number(row, "final_bytes")


def _where(row: dict[str, Any]) -> str:
    """A point as "system @budget" (a reference at its own size: @its bytes)."""
    return f"{base_system(row)} @{int(row.get('budget_bytes') or _bytes(row)):,}"


def _envelope(rows: list[dict[str, Any]]) -> bdrate.Front | None:
    """The (bytes, bpb) Pareto front of rows, None with fewer than 2 points on it."""
    try:
        return bdrate.front(np.array([_bytes(r) for r in rows]), np.array([number(r, "bpb") for r in rows]))
    except bdrate.FrontError:
        return None


def peer_rows(results: list[dict[str, Any]], samples: int, level: float = 0.95) -> list[dict[str, Any]]:
    """One row per peer point: the peer (bytes, bpb), bytegolf's best point (lowest bpb among its own systems'
    ranked points) at the same budget, or for a peer at its own size with no more bytes, Δbpb = peer − ours
    with its document-bootstrap CI and p, and per peer family the BD-rate of bytegolf's envelope (every
    ranked point of its own systems) against the family's front: % bytes bytegolf needs at equal bpb
    (negative: fewer)."""
    ranked = [r for r in results if evaluated(r) and r.get("bpb") is not None and r.get("status", "ok") in RANKED]
    mine = [r for r in ranked if ours(r)]
    env = _envelope(mine)
    fams: dict[str, list[dict[str, Any]]] = {}
    for r in ranked:
        if (f := family(r)) is not None:
            fams.setdefault(f, []).append(r)
    out = []
    for _, rows in sorted(fams.items()):
        bd = math.nan
        front = _envelope(rows)
        if env is not None and front is not None:
            with contextlib.suppress(bdrate.FrontError):
                bd = bdrate.bd_rate(np.exp(front.log_rate), front.quality, np.exp(env.log_rate), env.quality)
        for p in sorted(rows, key=_bytes):
            if p.get("budget_bytes"):  # searched to a budget: ours at the same budget (equal bytes)
                under = [r for r in mine if r.get("budget_bytes") == p["budget_bytes"]]
            else:
                under = [r for r in mine if _bytes(r) <= _bytes(p)]
            best = min(under, key=lambda r: float(r["bpb"])) if under else None
            row: dict[str, Any] = {
                "peer": base_system(p) + (f" @{int(p['budget_bytes']):,}" if p.get("budget_bytes") else " (own size)"),
                "peer_bytes": int(_bytes(p)),
                "peer_bpb": float(p["bpb"]),
                "ours": "" if best is None else _where(best),
                "our_bytes": None if best is None else int(_bytes(best)),
                "our_bpb": None if best is None else float(best["bpb"]),
                "delta": "",
                "bd_rate": bd,
            }
            test = paired_test(p, best, samples, level, 0) if best is not None else None
            if test is not None:
                row["delta"] = str(test[0])
            out.append(row)
    return out


COLUMNS = ["peer", "peer_bytes", "peer_bpb", "ours", "our_bytes", "our_bpb", "delta", "bd_rate"]
HEADERS = [
    "peer point",
    "bytes",
    "bpb",
    "bytegolf's best with no more bytes",
    "bytes",
    "bpb",
    "Δbpb peer − ours [95% CI] p",
    "BD-rate % (bytegolf vs the peer's front)",
]
