"""`bytegolf report`: a real small sweep gives report.md with tables and PNGs; bad directories a one-line error;
the frontier plot draws the reference line, exports and caps; the report names its correction and the BD-rates."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bytegolf.figure import pyplot
from bytegolf.run import store
from bytegolf.study import analysis, bdrate, plots, report
from tests.integration.test_run import TINY_ARGS, bytegolf

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["empty", "missing", "foreign"])
def test_report_on_a_directory_without_results_is_a_one_line_error(tmp_path: Path, kind: str) -> None:
    d = tmp_path / "d"
    if kind != "missing":
        d.mkdir()
    if kind == "foreign":
        (d / "notes.txt").write_text("hello")
        (d / "sub").mkdir()
        (d / "sub" / "result.json").write_text('{"accuracy": 0.9}')
    proc = bytegolf("report", str(d), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and str(d) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (d / "report").exists()


@pytest.fixture(scope="module")
def small_sweep(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rep") / "sweep"
    proc = bytegolf(
        "run",
        "-m",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        "format.bits=3,4,6",
        "codec=zstd",
        "budget.cap_bytes=60000",
        f"hydra.sweep.dir={d}",
        cwd=d.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


@pytest.mark.slow
def test_report_on_a_real_sweep_writes_markdown_and_pngs(small_sweep: Path) -> None:
    proc: subprocess.CompletedProcess = bytegolf("report", str(small_sweep), cwd=small_sweep)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = small_sweep / "report"
    md = (out / "report.md").read_text()
    for png in ("frontier_bpb.png", "frontier_rel_mse.png", "nominal_vs_actual.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
        assert f"]({png})" in md
    for heading in ("## Points", "## Frontiers", "## Rank agreement (Kendall tau-b)", "## Ranking reversals"):
        assert heading in md
    points = md.split("## Points")[1].split("##")[0]
    assert sum(line.startswith("| scalar bits=") for line in points.splitlines()) == 3
    results = store.load_results([small_sweep])
    tau = {(r["metric"], r["outcome"]): r["tau_b"] for r in analysis.rank_agreement(results)}
    assert tau[("rel_mse", "final_bytes")] == pytest.approx(-1.0)  # more bits: more bytes, less error
    assert tau[("nominal_bits_per_weight", "final_bytes")] == pytest.approx(1.0)
    assert len(store.load_results([small_sweep])) == 3 and (out / "results.parquet").is_file()


def _synthetic(fmt: str, k: int, scale: float, offset: float = 0.0, **kw) -> dict:
    """A result row of one system's front: bytes = scale · 1e6 · 2^k, bpb ≈ 1.7 + 0.8 / (k + 1) + offset (window
    noise 0.01), on shared windows."""
    bpb = 1.7 + 0.8 / (k + 1) + offset
    nbytes = [1000 + 10 * w for w in range(32)]
    rng = np.random.default_rng(k + 10 * len(fmt))
    nll = [b * math.log(2) * (bpb + rng.normal(0, 0.01)) for b in nbytes]
    return {
        "format": fmt,
        "codec": "zstd",
        "format_params": {"k": k},
        "final_bytes": scale * 1e6 * 2**k,
        "bpb": sum(nll) / math.log(2) / sum(nbytes),
        "ref_bpb": 1.6925,
        "rel_mse": 0.1 / 2**k,
        "window_nll": nll,
        "window_bytes": nbytes,
        "cap_bytes": 16_000_000,
        "status": "ok",
        "params": 1000,
        **kw,
    }


def _synthetic_results() -> list[dict]:
    rows = [_synthetic("scalar", k, 0.9) for k in range(4)] + [_synthetic("clustered", k, 1.0, 0.03) for k in range(4)]
    rows.append({**_synthetic("scalar", 2, 0.95), "variant": "pg_top@own", "status": "own", "rel_mse": 1e-3})
    rows.append({**_synthetic("scalar", 3, 0.8), "variant": "pg_baseline@own", "status": "own"})
    return rows


def test_frontier_plot_draws_reference_bpb_exports_and_caps(tmp_path: Path) -> None:
    rows = [*_synthetic_results(), {**_synthetic("scalar", 1, 0.9), "budget_bytes": 2_000_000}]
    fig = plots.frontier_figure(rows, "bpb", "bpb", clip=1.5)
    (ax,) = fig.axes
    by_gid = {a.get_gid(): a for a in [*ax.lines, *ax.collections, *ax.texts] if a.get_gid()}
    assert by_gid["ref_bpb"].get_ydata()[0] == pytest.approx(1.6925)  # the unquantized model, horizontal
    assert list(by_gid["ref_bpb"].get_xdata()) == [0, 1]  # spans the axes
    assert by_gid["cap:16000000"].get_xdata()[0] == 16_000_000 and by_gid["cap:2000000"].get_xdata()[0] == 2_000_000
    top = rows[-3]
    assert by_gid["reference:pg_top@own"].get_offsets().tolist() == [[top["final_bytes"], top["bpb"]]]
    assert by_gid["reference_label:pg_top@own"].get_text() == "pg_top@own"
    assert "reference_label:pg_baseline@own" in by_gid
    assert sorted(g for g in by_gid if g.startswith("front:")) == ["front:clustered", "front:scalar"]  # no pg_* line
    assert len(by_gid["front:scalar"].get_xdata()) == 4
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "unquantized model (1.6925 bpb)" in legend and "Parameter Golf reference exports" in legend
    assert ax.get_ylim()[0] < 1.6925  # the reference line is inside the clipped axis
    pyplot().close(fig)
    # rel_mse has no unquantized line; the PNG is written
    fig = plots.frontier_figure(rows, "rel_mse", "rel_mse", logy=True)
    assert not [a for a in fig.axes[0].lines if a.get_gid() == "ref_bpb"]
    pyplot().close(fig)
    png = plots.frontier(rows, "bpb", "bpb", tmp_path / "f.png", clip=1.5)
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_report_prints_the_correction_raw_and_adjusted_p_and_bd_rate(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i, r in enumerate(_synthetic_results()):
        (src / f"p{i}").mkdir(parents=True)
        (src / f"p{i}" / "result.json").write_text(json.dumps(r))
    md = report.write_report(src, tmp_path / "out", samples=200).read_text()
    rev = md.split("## Ranking reversals")[1]
    assert "multiple-comparison correction: **Holm (family-wise error rate)**" in rev
    assert "| p (raw) | p (holm) | significant |" in rev
    # pg_top's tiny rel_mse and +0.067 bpb over the best scalar point: a clear reversal that survives Holm
    (line,) = [
        ln for ln in rev.splitlines() if ln.startswith("| all points | rel_mse | bpb | pg_top@own | scalar k=3 |")
    ]
    cells = [c.strip() for c in line.strip("|").split("|")]
    p_raw, p_adj = float(cells[10]), float(cells[11])
    assert float(cells[7]) == pytest.approx(0.8 / 3 - 0.8 / 4, abs=0.01) and cells[12] == "yes"
    assert p_raw < p_adj <= 0.05
    bd = md.split("### BD-rate against a reference system")[1].split("BD-rate on (final bytes, rel_mse)")[0]
    assert "Reference: **scalar**" in bd  # pg_top has one point: the best-ranked system is the reference
    (clustered,) = [line for line in bd.splitlines() if line.startswith("| clustered |")]
    cells = [c.strip() for c in clustered.strip("|").split("|")]
    assert cells[:3] == ["clustered", "4", "4"]
    rs = _synthetic_results()
    xy = {
        f: ([r["final_bytes"] for r in rs[i : i + 4]], [r["bpb"] for r in rs[i : i + 4]])
        for f, i in (("s", 0), ("c", 4))
    }
    assert float(cells[3]) == pytest.approx(bdrate.bd_rate(*xy["s"], *xy["c"]), abs=1e-4)
    assert float(cells[4]) == pytest.approx(bdrate.bd_bpb(*xy["s"], *xy["c"]), abs=1e-4)
    assert float(cells[3]) > 100 / 0.9 - 100 and float(cells[4]) > 0.03  # more bytes and more bpb than scalar
    assert "pg_top: 1 point(s), 1 on its Pareto front; a front needs 2" in bd
    bh = report.write_report(src, tmp_path / "out_bh", samples=200, correction="bh").read_text()
    assert "**Benjamini–Hochberg (false discovery rate)**" in bh and "| p (bh) |" in bh
