"""`bytegolf report`: a real small sweep gives report.md with tables and PNGs; bad directories a one-line error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bytegolf import analysis, store
from tests.test_run import TINY_ARGS, bytegolf

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
