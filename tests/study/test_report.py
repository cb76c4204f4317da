"""`bytegolf report`: a real small sweep gives report.md with tables and PNGs; bad directories a one-line error;
the frontier plot draws the reference line, exports and caps; the report names its correction and the BD-rates."""

from __future__ import annotations

import csv
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
    assert by_gid["cap:2000000"].get_xdata()[0] == 2_000_000  # the one budget used
    assert "cap:16000000" not in by_gid  # the byte cap of a study with budgets is not drawn
    top = rows[-3]
    assert by_gid["reference:pg_top@own"].get_offsets().tolist() == [[top["final_bytes"], top["bpb"]]]
    assert "reference:pg_baseline@own" in by_gid and not ax.texts  # named in the legend, no label on a point
    assert sorted(g for g in by_gid if g.startswith("front:")) == ["front:clustered", "front:scalar"]  # no pg_* line
    assert len(by_gid["front:scalar"].get_xdata()) == 4
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "unquantized model (1.6925 bpb)" in legend and "pg_top  (1 point)" in legend
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
    for i, r in enumerate(_reversal_rows()):
        (src / f"p{i}").mkdir(parents=True)
        (src / f"p{i}" / "result.json").write_text(json.dumps(r))
    md = report.write_report(src, tmp_path / "out", samples=200).read_text()
    rev = md.split("## Ranking reversals")[1]
    assert "multiple-comparison correction: **Holm (family-wise error rate)**" in rev
    assert "| p (t-test) | p (holm) | significant |" in rev and "**2 reversal(s)**" in rev
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


def _reversal_rows() -> list[dict]:
    """_synthetic_results plus two systems 0.55% of bytes from a scalar point with far lower rel_mse and clearly
    higher bpb (+0.03, +0.05): two reversals on bpb."""
    return [
        *_synthetic_results(),
        {**_synthetic("clustered", 3, 0.905, 0.03), "variant": "additive", "rel_mse": 1e-4},  # vs scalar k=3
        {**_synthetic("clustered", 2, 0.905, 0.05), "variant": "sparse", "rel_mse": 1e-4},  # vs scalar k=2
    ]


def test_reversals_go_to_a_csv_and_the_report_shows_the_count_and_the_largest(tmp_path: Path) -> None:
    rows = _reversal_rows()
    md = report._reversal_section(rows, 200, "holm", tmp_path, top=1)
    assert "**2 reversal(s)**: 2 on bpb significant after correction (2 before), 0 on final bytes." in md
    assert "| Δbpb [95% CI] | p (t-test) | p (holm) | significant |" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| all points |")]
    (line,) = table  # top=1: only the largest |Δbpb|
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:4] == ["sparse", "scalar k=2", "3,620,000 / 3,600,000"]
    assert cells[4] == "0.0001 / 0.025" and cells[10] == "bpb: rel_mse" and cells[14] == "yes"
    delta = float(cells[11].split()[0])
    assert delta == pytest.approx(rows[-1]["bpb"] - rows[2]["bpb"], abs=1e-4) and delta > 0.04
    assert 0 < float(cells[12]) < 1 / 201  # the t-test p, off the bootstrap floor
    assert "All 2 listed pair(s) (1 not shown here), every column: [reversals.csv](reversals.csv)." in md
    # without the two: every pair of points differs by 5% of bytes or more (the old list had pg_top@own over
    # scalar k=3, 3.8 vs 7.2 MB): none within 2%, no reversal
    none = report._reversal_section(_synthetic_results(), 200, "holm")
    assert "**0 reversal(s)**: 0 on bpb significant after correction (0 before), 0 on final bytes." in none
    with (tmp_path / report.REVERSALS_CSV).open() as f:
        got = list(csv.DictReader(f))
    want = analysis.reversals(rows, 200, level=0.95, alpha=0.05)
    assert len(got) == len(want) == 2 and list(got[0]) == list(analysis.REVERSAL_COLUMNS)
    assert [(r["preferred"], r["other"]) for r in got] == [("sparse", "scalar k=2"), ("additive", "scalar k=3")]
    assert {(r["preferred"], r["other"], r["p"]) for r in want} == {
        (r["preferred"], r["other"], float(r["p"])) for r in got
    }
    assert float(got[1]["final_bytes_preferred"]) == 7_240_000 and got[1]["reversed_on_bpb"] == "rel_mse"


def test_write_report_writes_reversals_csv_beside_report_md(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i, r in enumerate(_reversal_rows()):
        (src / f"p{i}").mkdir(parents=True)
        (src / f"p{i}" / "result.json").write_text(json.dumps(r))
    md = report.write_report(src, tmp_path / "out", samples=200).read_text()
    assert "**2 reversal(s)**" in md and "All 2 listed pair(s), every column" in md
    assert "reversals.csv" in {p.name for p in (tmp_path / "out").iterdir()}
    with (tmp_path / "out" / "reversals.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2


def test_every_search_probe_is_a_front_point_in_the_report(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i, r in enumerate(_reversal_rows()):
        (src / f"p{i}").mkdir(parents=True)
        (src / f"p{i}" / "result.json").write_text(json.dumps(r))
    (src / "search").mkdir()
    probes = [
        {"value": k, "final_bytes": int(4e6 / k), "code_bytes": 9, "seconds": 1.0, "output_error": 1e-3 * k,
         "rel_mse": 2e-3 * k} for k in (1.0, 2.0, 4.0)
    ] + [{"value": 0.5, "final_bytes": None, "error": "bad"}]  # fmt: skip
    body = {"format": "scalar", "knob": {"name": "base.clip_k"}, "probes": probes}
    (src / "search" / "scalar_gptq_0123456789ab.json").write_text(json.dumps(body))
    (src / "search" / "alloc_0123456789ab.allocation.json").write_text("{}")  # not a probe cache
    out = tmp_path / "out"
    md = report.write_report(src, out, samples=200).read_text()
    section = md.split("## Search probes")[1].split("\n## ")[0]
    assert "| scalar_gptq | base.clip_k | 3 | 1,000,000 | 0.004 | 4,000,000 | 0.001 |" in section
    assert (out / "probe_front.png").is_file() and (out / "probe_front_rel_mse.png").is_file()
    with (out / "probes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["final_bytes"]) for r in rows] == [1_000_000, 2_000_000, 4_000_000]  # the failed probe left out
    assert {r["variant"] for r in rows} == {"scalar_gptq"} and rows[0]["rel_mse"] == "0.008"
