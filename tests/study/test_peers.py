"""The peer table: each HQQ or k-quant point beside bytegolf's best with no more bytes, Δbpb and BD-rate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bytegolf.study import peers
from bytegolf.study.report import _peer_section

WINDOWS = 40


def _row(name: str, nbytes: int, bpb: float, budget: int | None, **extra) -> dict:
    """A ranked point whose per-window nll gives exactly `bpb` (every window 1,000 bytes, 2 windows a document)."""
    rng = np.random.default_rng(len(name) + nbytes)
    noise = rng.normal(0, 0.002, WINDOWS)
    wb = [1000.0] * WINDOWS
    nll = (bpb + noise - noise.mean()) * 1000.0 * math.log(2)
    row = {"variant": name, "format": extra.pop("format", name), "final_bytes": nbytes, "counted_bytes": nbytes}
    row |= {"bpb": bpb, "window_nll": list(nll), "window_bytes": wb, "window_docs": [i // 2 for i in range(WINDOWS)]}
    row |= {"budget_bytes": budget, "status": "own" if budget is None else "ok"} | extra
    return row


@pytest.fixture
def results() -> list[dict]:
    return [
        _row("scalar_gptq", 3_990_000, 1.95, 4_000_000),
        _row("scalar_gptq", 1_990_000, 2.30, 2_000_000),
        _row("alloc_gptq", 3_980_000, 1.93, 4_000_000),
        _row("alloc_gptq", 7_990_000, 1.90, 8_000_000),
        _row("pg_top", 3_000_000, 1.80, None, reference=True),  # a reference export: never "ours"
        _row("hqq", 3_900_000, 2.10, 4_000_000, format="hqq"),
        _row("hqq", 7_900_000, 1.95, 8_000_000, format="hqq"),
        _row("gguf_q2_k", 6_000_000, 2.05, None, reference=True, format="scalar"),
        _row("gguf_q4_k_m", 10_000_000, 1.91, None, reference=True, format="scalar"),
        _row("scalar", 3_000_000, 1.50, 4_000_000) | {"status": "seed"},  # a seed point is not ranked
    ]


def test_each_peer_point_meets_our_best_at_its_budget_or_with_no_more_bytes(results: list[dict]) -> None:
    rows = {r["peer"]: r for r in peers.peer_rows(results, 200)}
    assert set(rows) == {"hqq @4,000,000", "hqq @8,000,000", "gguf_q2_k (own size)", "gguf_q4_k_m (own size)"}
    assert rows["hqq @4,000,000"]["ours"] == "alloc_gptq @4,000,000"  # the same budget (both landed near 4 MB)
    assert rows["gguf_q2_k (own size)"]["ours"] == "alloc_gptq @4,000,000"  # 8 MB is over 6 MB
    assert rows["gguf_q4_k_m (own size)"]["ours"] == "alloc_gptq @8,000,000"
    d = rows["gguf_q2_k (own size)"]["delta"]
    assert d.startswith("+0.12"), d  # 2.05 − 1.93, ours better


def test_bd_rate_is_negative_where_our_envelope_needs_fewer_bytes(results: list[dict]) -> None:
    rows = peers.peer_rows(results, 200)
    hqq = [r["bd_rate"] for r in rows if r["peer"].startswith("hqq")]
    kq = [r["bd_rate"] for r in rows if r["peer"].startswith("gguf")]
    assert hqq[0] == hqq[1] < 0 and kq[0] == kq[1] < 0  # one value per family, fewer bytes at equal bpb


def test_no_peer_no_section(results: list[dict]) -> None:
    mine = [r for r in results if peers.family(r) is None]
    assert peers.peer_rows(mine, 100) == [] and _peer_section(mine, 100) == ""
    assert "## Peers" in _peer_section(results, 100)
