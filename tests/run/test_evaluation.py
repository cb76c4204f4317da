"""`bytegolf eval ARTIFACT`: an existing artifact scored again, under its run's protocol, without encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bytegolf.measure.fidelity import kld_table, summarize
from tests.integration.test_run import TINY_ARGS, bytegolf


@pytest.fixture(scope="module")
def written(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("written")
    args = ["run", f"bundle={tiny_bundle}", *TINY_ARGS, "format.bits=4", "format.clip_k=4", "codec=zstd"]
    proc = bytegolf(*args, f"hydra.run.dir={out}", cwd=out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_eval_gives_the_run_its_own_bpb_with_an_interval_and_the_protocol(written: Path) -> None:
    run = json.loads((written / "result.json").read_text())
    proc = bytegolf("eval", str(written / "model.bgz"), cwd=written)
    assert proc.returncode == 0, proc.stderr
    (evaluated,) = written.glob("eval/*/eval.json")
    r = json.loads(evaluated.read_text())
    assert r["bpb"] == run["bpb"] and r["ref_bpb"] == run["ref_bpb"]  # same windows, same precision: bit for bit
    assert r["window_nll"] == run["window_nll"]
    lo, hi = r["bpb_ci"]
    assert lo - 1e-9 <= r["bpb"] <= hi + 1e-9 and hi - lo < 0.5  # the tiny split may hold one document (lo = hi)
    assert r["protocol"] == "4 windows × 64 tokens, sampled across the split (seed 0), bf16, no stride"
    assert run["protocol"] == r["protocol"] and run["bpb_ci"] == r["bpb_ci"]  # the run names the same protocol
    assert f"bpb {r['bpb']:.4f} [{lo:.4f}, {hi:.4f}]" in proc.stdout and r["protocol"] in proc.stdout
    assert not list(evaluated.parent.glob("*.bgz"))  # nothing encoded or written again


def test_eval_with_kld_prints_llama_perplexitys_table(written: Path) -> None:
    proc = bytegolf("eval", str(written), "eval.kld=true", "eval.windows=2", cwd=written)
    assert proc.returncode == 0, proc.stderr
    assert "2 windows × 64 tokens" in proc.stdout
    for row in ("Mean    KLD:", "Maximum KLD:", "99.9%  KLD:", "Minimum KLD:", "Same top p:", "RMS Δp"):
        assert row in proc.stdout, row


def test_eval_of_a_missing_or_foreign_file_is_a_one_line_error(written: Path, tmp_path: Path) -> None:
    proc = bytegolf("eval", str(tmp_path / "nope.bgz"), cwd=tmp_path)
    assert proc.returncode == 2 and "eval: no artifact file at" in proc.stderr
    bad = tmp_path / "bad.bgz"
    bad.write_bytes(b"not an artifact")
    proc = bytegolf("eval", str(bad), f"bundle={written}", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_kld_table_rows() -> None:
    k = summarize([0.0, 0.1, 0.2, 0.3], [True, True, False, True], [0.0, -0.1, 0.1, 0.0])
    table = kld_table(k).splitlines()
    assert table[0].strip().startswith("Mean    KLD:   0.150000 ±") and "(4 tokens)" in table[0]
    assert table[1].strip() == "Maximum KLD:   0.300000"
    assert "Same top p: 75.000 ±" in table[-2]
