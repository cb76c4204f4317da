"""report.html: an offline page (plotly.js embedded, nothing fetched) with a hover on every point giving its system,
knob, bytes, bpb ± CI, Δbpb ± CI and the evaluation protocol; `bytegolf report` writes it beside report.md; it
renders in headless Chromium without a console error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bytegolf.run import store
from bytegolf.study import html, plots, report
from tests.study.test_plots import WINDOWS, _compare, _row

plotly = pytest.importorskip("plotly", reason="report.html needs plotly (pip install 'plotly>=5.0')")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_protocol_is_built_from_what_rows_carry() -> None:
    r = _row("scalar", 4_000_000, 3.9e6, 0.01)
    assert store.row_protocol(r) == f"{WINDOWS} windows × 1024 tokens, 8 documents, bf16, no stride"
    slid = {**r, "eval_stride": 64, "eval_tokens": 5000, "eval_windows": WINDOWS}
    assert store.row_protocol(slid) == f"{WINDOWS} windows, 5,000 tokens scored, 8 documents, bf16, sliding, stride 64"
    assert store.row_protocol({**r, "protocol": "given"}) == "given"
    assert store.row_protocol({"bpb": None}) == ""


def test_every_point_has_a_hover_with_system_knob_bytes_bpb_ci_and_protocol() -> None:
    rows = _compare()
    cis = plots.point_cis(rows, 100)
    fig = html._frontier(rows, cis, "delta_bpb", 100)
    texts = [t for tr in fig.data if tr.hovertext is not None and tr.mode == "markers" for t in tr.hovertext]
    assert len(texts) == len(rows)  # the does-not-fit row included
    evaluated = [t for t in texts if "does not fit" not in t]
    assert len(evaluated) == len(rows) - 1
    for t in evaluated:
        assert "knob: clip_k=12.5" in t and "final bytes: " in t and " B (" in t
        assert re.search(r"<br>bpb: \d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] \(95% CI\)", t)
        assert re.search(r"Δbpb vs unquantized: \+0\.\d{4} \[[+-]0\.\d{4}, \+0\.\d{4}\]", t)
        assert "paired bootstrap over documents, 100 resamples" in t
        assert f"protocol: {WINDOWS} windows × 1024 tokens, 8 documents, bf16, no stride" in t
    top = next(t for t in texts if "<b>pg_top</b>" in t and "budget: 4 MB" in t)
    c = cis[id(rows[2])]
    assert f"{c.delta:+.4f} [{c.delta_lo:+.4f}, {c.delta_hi:+.4f}]" in top and "3,990,000 B (3.99 MB)" in top
    (dnf,) = [t for t in texts if "does not fit" in t]
    assert "basis_delta" in dnf and "status: does_not_fit" in dnf
    # the error bars are the paired Δ intervals; each system's legend entry is its on-budget marker
    bars = [tr for tr in fig.data if tr.error_y is not None and tr.error_y.array is not None]
    assert bars and all(min(tr.error_y.arrayminus) >= 0 for tr in bars)
    legend = [tr for tr in fig.data if tr.showlegend is not False and tr.legendgroup != "budgets"]
    assert [tr.name for tr in legend] == list(plots.by_system(rows))
    assert {tr.marker.symbol for tr in legend if tr.name.startswith("pg_")} == {"square", "diamond", "star"}
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis.type == "log"
    ticks = list(fig.layout.xaxis.ticktext)
    assert {"4 MB", "8 MB", "16 MB"} <= set(ticks) and all(t.endswith(" MB") for t in ticks)  # the budgets, in MB


def test_write_html_embeds_plotly_js_and_fetches_nothing(tmp_path: Path) -> None:
    path = html.write_html(_compare(), tmp_path / "report.html", samples=50, title="t <&>")
    page = path.read_text()
    js = plotly.offline.get_plotlyjs()
    assert len(page) > 1_000_000 and js in page  # the library itself, inline
    rest = page.replace(js, "")  # (the library names a CDN only as its default map-data URL, unused here)
    assert "cdn.plot.ly" not in rest and "http" not in rest and not re.search(r"<script[^>]+src=", rest)
    assert "<title>t &lt;&amp;&gt;</title>" in page and page.count('class="plotly-graph-div"') == 3
    assert "Δbpb against the unquantized model vs final bytes" in page and "<table>" in page


def test_without_plotly_no_page_is_written_and_the_report_says_nothing_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    for i, r in enumerate(_compare()):
        (src / f"p{i}").mkdir(parents=True)
        (src / f"p{i}" / "result.json").write_text(json.dumps(r))
    md = report.write_report(src, tmp_path / "out", samples=50).read_text()
    assert (tmp_path / "out" / "report.html").is_file() and "[report.html](report.html)" in md
    assert "![frontier_bpb](frontier_bpb.png)" in md and "![delta_bpb_by_budget](delta_bpb_by_budget.png)" in md
    monkeypatch.setattr(html, "available", lambda: False)
    with pytest.warns(UserWarning, match="plotly"):
        md = report.write_report(src, tmp_path / "bare", samples=50).read_text()
    assert not (tmp_path / "bare" / "report.html").exists() and "report.html" not in md


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _headless(browser: str, page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess:
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *mode,
        "--window-size=1200,900", "--enable-logging=stderr", "--v=0", page.resolve().as_uri(),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _console_errors(stderr: str) -> list[str]:
    """Chromium's console lines (console.error/log, uncaught exceptions) and page load failures."""
    return [ln for ln in stderr.splitlines() if re.search(r":CONSOLE|Uncaught|ERR_FILE_NOT_FOUND|net::ERR_", ln)]


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_html_renders_in_headless_chromium_without_console_errors(tmp_path: Path) -> None:
    page = html.write_html(_compare(), tmp_path / "report.html", samples=50)
    shot = tmp_path / "shot.png"
    proc = _headless(_chromium(), page, tmp_path / "profile", f"--screenshot={shot}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_errors(proc.stderr) == []
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 30_000  # a drawn page, not a blank one
    dom = _headless(_chromium(), page, tmp_path / "profile2", "--dump-dom")
    assert dom.returncode == 0 and _console_errors(dom.stderr) == []
    assert dom.stdout.count('class="main-svg"') >= 6  # plotly.js ran and drew each figure's SVG layers
    assert "Uncaught" not in dom.stdout


def test_console_errors_are_caught_by_the_stderr_check() -> None:
    line = '[1:1:1205/134331.940086:INFO:CONSOLE:1] "Uncaught ReferenceError: f is not defined", source: x (1)'
    noise = "[1:2:1205/134327.24:ERROR:dbus/bus.cc:405] Failed to connect to the bus: no such file"
    assert _console_errors(f"{noise}\n{line}\n") == [line]
