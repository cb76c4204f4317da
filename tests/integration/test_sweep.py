"""Sweeps through the real CLI: joblib and submitit launchers, resume, mixed-format keys, `bytegolf results`."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bytegolf.run import store, sweep
from tests.integration.test_run import TINY_ARGS, bytegolf

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
SWEEP = ["format.bits=4,6", "codec=zstd,zlib"]  # four points


def _sweep(bundle: Path, sweep_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return bytegolf(
        "run",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"bundle={bundle}",
        *TINY_ARGS,
        *extra,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=sweep_dir.parent,
    )


def _skipped(stdout: str) -> set[str]:
    """Point directories a run reported as finished already (each is logged and printed)."""
    return {Path(m).name for m in re.findall(r"finished already in (\S+);", stdout)}


def _results(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{store.RESULT}")}


@pytest.mark.parametrize(
    ("threads", "launcher", "expected"),
    [
        (3, {"_target_": JOBLIB, "n_jobs": 4}, 3),  # threads=N wins
        (0, {"_target_": JOBLIB, "n_jobs": 4}, 4),  # 16 CPUs // 4 jobs
        (0, {"_target_": JOBLIB, "n_jobs": 32}, 1),
        (0, {"_target_": JOBLIB, "n_jobs": -1}, 1),  # one job per CPU
        (0, {"_target_": JOBLIB, "n_jobs": -4}, 1),  # 13 jobs
        (0, {"_target_": JOBLIB, "n_jobs": 3}, 5),
        (0, {"_target_": SUBMITIT, "cpus_per_task": 6}, 6),
        (0, {"_target_": SUBMITIT, "cpus_per_task": None}, 0),
        (0, None, 0),  # a plain run keeps torch's default
    ],
)
def test_threads_per_job(threads: int, launcher: dict | None, expected: int) -> None:
    assert sweep.threads_for(threads, launcher, cpus=16) == expected


@pytest.fixture(scope="module")
def joblib_sweep(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    d = tmp_path_factory.mktemp("sweep") / "s"
    return d, _sweep(tiny_bundle, d, *SWEEP)


@pytest.mark.slow
def test_joblib_multirun_runs_and_aggregates_every_point(joblib_sweep) -> None:
    import joblib

    d, proc = joblib_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = _results(d)
    assert len(res) == 4
    assert {(r["format_params"]["bits"], r["codec"]) for r in res.values()} == {
        (4, "zstd"),
        (6, "zstd"),
        (4, "zlib"),
        (6, "zlib"),
    }
    for name, r in res.items():
        assert name == f"scalar_{r['codec']}_{r['config_hash']}"  # the directory is the point's identity
        assert r["status"] == "ok" and r["final_bytes"] == (d / name / "model.bgz").stat().st_size
        assert r["threads"] == max(1, joblib.cpu_count() // 2)  # cpu_count // n_jobs
    assert len({r["config_hash"] for r in res.values()}) == 4
    six = [r for r in res.values() if r["format_params"]["bits"] == 6]
    four = [r for r in res.values() if r["format_params"]["bits"] == 4]
    assert min(r["final_bytes"] for r in six) > max(r["final_bytes"] for r in four)
    table = pd.read_parquet(d / "results.parquet")  # written by the end-of-sweep callback
    assert len(table) == 4 and {"config_hash", "path", "final_bytes", "bpb", "format.bits"} <= set(table.columns)
    assert sorted(table["final_bytes"]) == sorted(r["final_bytes"] for r in res.values())
    assert "window_nll" not in table.columns and "tensors" not in table.columns
    assert len(pd.read_csv(d / "results.csv")) == 4
    assert "4 points ->" in proc.stdout


@pytest.mark.slow
def test_killed_sweep_resumes_with_only_the_missing_points(joblib_sweep, tiny_bundle: Path) -> None:
    d, _ = joblib_sweep
    before = _results(d)
    victims = sorted(before)[:2]
    for name in victims:  # as if the sweep had been killed before these two finished
        (d / name / store.RESULT).unlink()
    (d / victims[0] / store.CLAIM).write_text(json.dumps({"host": "gone", "pid": 1, "since": 0}))
    os.utime(d / victims[0] / store.CLAIM, (0, 0))  # a stale claim left by a dead worker
    kept = {n: (d / n / store.RESULT).stat().st_mtime_ns for n in before if n not in victims}
    proc = _sweep(tiny_bundle, d, *SWEEP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _results(d)
    assert set(after) == set(before)  # no point lost, none added
    assert _skipped(proc.stdout) == set(kept)
    assert {n: (d / n / store.RESULT).stat().st_mtime_ns for n in kept} == kept  # finished points not rerun
    for n in victims:
        assert after[n]["config_hash"] == before[n]["config_hash"]
        assert after[n]["final_bytes"] == before[n]["final_bytes"]
        assert not (d / n / store.CLAIM).exists()


@pytest.mark.slow
def test_results_verb_aggregates_dirs(joblib_sweep, tmp_path: Path) -> None:
    d, _ = joblib_sweep
    proc = bytegolf("results", str(d), "--out", str(tmp_path / "all"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "4 points" in proc.stdout and "scalar" in proc.stdout
    assert "| point | format | codec |" in proc.stdout and "\nprotocol: 4 windows × 64 tokens" in proc.stdout
    assert len(pd.read_parquet(tmp_path / "all.parquet")) == 4
    empty = bytegolf("results", str(tmp_path / "nothing"), cwd=tmp_path)
    assert empty.returncode == 2 and "no bytegolf result.json" in empty.stderr and "Traceback" not in empty.stderr


@pytest.mark.slow
def test_sweep_over_formats_applies_format_keys_where_they_exist(tiny_bundle: Path, tmp_path: Path) -> None:
    d = tmp_path / "mixed"
    proc = bytegolf(
        "run",
        "-m",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        "format=scalar,clustered",
        "format.bits=4,6",
        "format.codebook_size=16",
        "codec=zstd",
        f"hydra.sweep.dir={d}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = _results(d)
    assert sorted((r["format"], r["format_params"].get("bits")) for r in res.values()) == [
        ("clustered", None),
        ("scalar", 4),
        ("scalar", 6),
    ]  # clustered has no bits: its two jobs are one point
    (clustered,) = (r for r in res.values() if r["format"] == "clustered")
    assert clustered["format_params"]["codebook_size"] == 16 and clustered["dropped_overrides"] == ["format.bits"]
    assert len(_skipped(proc.stdout)) == 1
    typo = bytegolf("run", "-m", "format=scalar,clustered", "format.bitz=3,4", cwd=tmp_path)
    assert typo.returncode == 2 and "format.bitz: no swept choice has this key" in typo.stderr
    assert "Traceback" not in typo.stderr


@pytest.mark.slow
def test_non_numeric_sweep_value_gives_hydras_clear_error(tiny_bundle: Path, tmp_path: Path) -> None:
    proc = bytegolf(
        "run", "-m", f"bundle={tiny_bundle}", "format.bits=abc,4", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path
    )
    assert proc.returncode != 0
    assert "format.bits=abc" in proc.stderr and "could not be converted to Integer" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob(f"*/{store.RESULT}"))


@pytest.mark.slow
def test_submitit_local_runs_a_point(tiny_bundle: Path, tmp_path: Path) -> None:
    d = tmp_path / "sub"
    proc = bytegolf(
        "run",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.cpus_per_task=1",
        f"bundle={tiny_bundle}",
        *TINY_ARGS,
        "format.bits=5",
        "codec=zstd",
        f"hydra.sweep.dir={d}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = _results(d).values()
    assert r["format_params"]["bits"] == 5 and r["threads"] == 1 and r["bpb"] > 0
    assert (d / ".submitit").is_dir()


@pytest.mark.slow
def test_a_failing_point_leaves_error_json_and_the_sweep_goes_on(tiny_bundle: Path, tmp_path: Path) -> None:
    d = tmp_path / "err"
    args = ["run", "-m", f"bundle={tiny_bundle}", *TINY_ARGS, "format.group_size=48,0", "codec=zstd"]
    proc = bytegolf(*args, f"hydra.sweep.dir={d}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "1 point(s) failed" in proc.stderr and "Traceback" not in proc.stderr
    (ok,) = _results(d).values()
    assert ok["format_params"]["group_size"] == 0
    (err,) = d.glob("*/error.json")
    assert "not divisible by group_size 48" in json.loads(err.read_text())["error"]
    assert not (err.parent / store.RESULT).exists()  # a resumed sweep retries it
