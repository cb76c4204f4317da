"""Models compared at equal bytes across compare directories: pairing, known answers, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bytegolf.errors import BytegolfError
from bytegolf.study import crossmodel


def _point(root: Path, name: str, budget: int, nll: list[float], docs: list[int], nbytes: int = 7_000_000) -> None:
    d = root / "points" / str(budget) / name
    d.mkdir(parents=True)
    r = {
        "format": "scalar", "config_hash": name, "budget_bytes": budget, "status": "ok", "final_bytes": nbytes,
        "knob": "clip_k", "knob_value": 12.5, "bpb": sum(nll) / math.log(2) / (100 * len(nll)), "ref_bpb": 1.7,
        "window_nll": nll, "window_bytes": [100] * len(nll), "window_docs": docs, "val_loss": 3.0,
    }  # fmt: skip
    (d / "result.json").write_text(json.dumps(r))


def test_a_model_better_by_a_constant_gets_that_delta_with_a_ci_that_excludes_zero(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = list(rng.uniform(200, 260, size=40))
    docs = [i // 4 for i in range(40)]
    _point(tmp_path / "a", "a7", 7_000_000, base, docs)
    _point(tmp_path / "b", "b7", 7_000_000, [x - 2.0 for x in base], docs)  # 2 nats less per 100-byte window
    pts = crossmodel.model_points({"a": tmp_path / "a", "b": tmp_path / "b"})
    d = crossmodel.paired(crossmodel.landing(pts["b"], 7_000_000), crossmodel.landing(pts["a"], 7_000_000), 500, 0.95)
    assert d.delta == pytest.approx(-2.0 / 100 / math.log(2))
    assert d.lo == pytest.approx(d.delta) and d.hi == pytest.approx(d.delta)  # constant shift: every resample agrees
    text = crossmodel.table(pts, ["a"], samples=200)
    assert "| 7,000,000 | scalar | b | 7,000,000 | clip_k 12.5 |" in text and f"{d.delta:+.4f}" in text and " *" in text


def test_models_scored_on_other_windows_are_refused(tmp_path: Path) -> None:
    _point(tmp_path / "a", "a7", 7_000_000, [1.0, 2.0], [0, 1])
    _point(tmp_path / "b", "b7", 7_000_000, [1.0, 2.0], [0, 2])
    pts = crossmodel.model_points({"a": tmp_path / "a", "b": tmp_path / "b"})
    with pytest.raises(BytegolfError, match="different windows"):
        crossmodel.table(pts, ["a"])
    with pytest.raises(BytegolfError, match="no evaluated point"):
        crossmodel.model_points({"c": tmp_path / "empty"})


def test_the_command_writes_table_and_front_and_names_a_bad_baseline(tmp_path: Path) -> None:
    _point(tmp_path / "a", "a7", 7_000_000, [230.0, 240.0], [0, 1])
    _point(tmp_path / "b", "b7", 7_000_000, [220.0, 245.0], [0, 1], nbytes=6_990_000)
    out = tmp_path / "out"
    crossmodel.main([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--baseline", "a", "--out", str(out)])
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG" and "Δbpb vs a" in (out / "table.md").read_text()
    with pytest.raises(SystemExit, match="baseline 'z'"):
        crossmodel.main([f"a={tmp_path / 'a'}", "--baseline", "z", "--out", str(out)])


def test_ranking_tau_is_one_for_the_same_order_and_minus_one_for_the_reverse(tmp_path: Path) -> None:
    for model, order in (("a", [1.7, 1.8, 1.9]), ("b", [1.6, 1.65, 2.0]), ("c", [2.0, 1.9, 1.8])):
        for name, bpb in zip(("scalar", "clustered", "additive"), order, strict=True):
            _point(tmp_path / model, name, 4_000_000, [bpb * 100 * math.log(2)], [0])
            r = json.loads((tmp_path / model / "points/4000000" / name / "result.json").read_text())
            (tmp_path / model / "points/4000000" / name / "result.json").write_text(
                json.dumps({**r, "format": name, "bpb": bpb})
            )
    (same,) = crossmodel.ranking_tau(tmp_path / "a", tmp_path / "b")
    (rev,) = crossmodel.ranking_tau(tmp_path / "a", tmp_path / "c")
    assert same["tau"] == pytest.approx(1.0) and rev["tau"] == pytest.approx(-1.0)
    assert same["systems"] == ["additive", "clustered", "scalar"] and same["budget"] == 4_000_000


def test_several_systems_are_paired_system_by_system_and_best_against_best(tmp_path: Path) -> None:
    docs = [0, 1]
    for model, shift in (("a", 0.0), ("b", -1.0)):
        for name, nll in (("scalar", [230.0, 240.0]), ("sparse_outlier", [210.0, 220.0])):
            _point(tmp_path / model, f"{name}_{model}", 4_000_000, [x + shift for x in nll], docs)
            f = tmp_path / model / "points/4000000" / f"{name}_{model}" / "result.json"
            f.write_text(json.dumps({**json.loads(f.read_text()), "format": name}))
    pts = crossmodel.model_points({"a": tmp_path / "a", "b": tmp_path / "b"})
    assert crossmodel.landing(pts["a"], 4_000_000)["system"] == "sparse_outlier"  # the best there
    assert crossmodel.landing(pts["a"], 4_000_000, "scalar")["system"] == "scalar"
    text = crossmodel.table(pts, ["a"], samples=100)
    delta = -1.0 / 100 / math.log(2)  # b is 1 nat better per 100-byte window, system by system
    assert f"| 4,000,000 | scalar | b | 7,000,000 | clip_k 12.5 | {(235 - 1) / 100 / math.log(2):.4f}" in text
    assert "| 4,000,000 | best: sparse_outlier | b |" in text and text.count(f"{delta:+.4f} [") == 3


def test_ranking_tau_pairs_other_budgets_and_the_command_prints_them(tmp_path: Path) -> None:
    for model, budget, order in (("a", 8_000_000, [1.7, 1.8, 1.9]), ("b", 3_000_000, [1.9, 1.8, 1.7])):
        for name, bpb in zip(("scalar", "clustered", "additive"), order, strict=True):
            _point(tmp_path / model, name, budget, [bpb * 100 * math.log(2)], [0])
            f = tmp_path / model / f"points/{budget}" / name / "result.json"
            f.write_text(json.dumps({**json.loads(f.read_text()), "format": name, "bpb": bpb}))
    assert crossmodel.ranking_tau(tmp_path / "a", tmp_path / "b") == []  # no budget in common
    (t,) = crossmodel.ranking_tau(tmp_path / "a", tmp_path / "b", [(8_000_000, 3_000_000)])
    assert t["tau"] == pytest.approx(-1.0) and (t["budget"], t["budget_b"]) == (8_000_000, 3_000_000)
    out = tmp_path / "out"
    crossmodel.main([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--tau", "8e6:3e6", "--out", str(out)])
    row = "| a | 8,000,000 | b | 3,000,000 | 3 | additive, clustered, scalar | -1.000 |"
    assert row in (out / "table.md").read_text()
    with pytest.raises(SystemExit, match=r"--tau 7000000:3000000: 0 system\(s\) landed"):
        crossmodel.main([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--tau", "7e6:3e6", "--out", str(out)])
    with pytest.raises(SystemExit, match="needs two models"):
        crossmodel.main([f"a={tmp_path / 'a'}", "--tau", "8e6:3e6", "--out", str(out)])
    with pytest.raises(SystemExit, match="BUDGET_A:BUDGET_B"):
        crossmodel.main([f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--tau", "8e6", "--out", str(out)])
