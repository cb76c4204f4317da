"""Faults through the real CLI: a compare killed with SIGKILL at chosen and random moments resumes
without losing or recomputing a finished point; two sweeps or compares on one directory compute
each point once; artifacts are byte-identical across processes and thread counts."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bytegolf.quantize import encoder
from bytegolf.run import store
from tests.integration.test_run import TINY_ARGS

pytestmark = pytest.mark.slow

COMPARE = [
    *TINY_ARGS,
    "compare.formats=[scalar,clustered]",
    "compare.references=[]",
    "compare.allocated=null",
    "compare.calibrate.clustered.steps=0",
    "compare.embedding=null",
    "compare.front_points=3",
    "compare.seeds=2",
    "compare.budgets=[30000]",
    "compare.samples=200",
    "codec=zstd",
]


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bytegolf.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finished(out: Path) -> dict[str, tuple[int, str]]:
    """Point directory -> (mtime, sha256) of its result.json; every one must parse."""
    found = {}
    for p in out.glob(f"points/*/*/{store.RESULT}"):
        json.loads(p.read_text())  # a half-written result would fail here
        found[p.parent.name] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return found


def _kill_when(proc: subprocess.Popen, out: Path, trigger, deadline: float) -> bool:
    """SIGKILL the process group once trigger(out) holds (or at the deadline); False if it ended first."""
    end = time.monotonic() + deadline
    while proc.poll() is None:
        if trigger(out) or time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    return False


def _evaluating(out: Path) -> bool:
    """A point directory has its artifact but no result yet: the point is being decoded or evaluated."""
    return any(not (a.parent / store.RESULT).exists() for a in out.glob("points/*/*/model.bgz"))


def test_a_killed_compare_resumes_without_losing_or_recomputing_a_point(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", f"bundle={tiny_bundle}", *COMPARE, f"hydra.run.dir={out}"]
    rng = random.Random(0)
    moments = [
        ("encoding", lambda o: any(o.glob("search/.probe-clustered-*.bgz")), 120.0),
        ("evaluating", _evaluating, 120.0),
        ("random", lambda o: False, rng.uniform(3.0, 25.0)),
        ("random", lambda o: False, rng.uniform(3.0, 25.0)),
    ]
    kept: dict[str, tuple[int, str]] = {}
    for _name, trigger, deadline in moments:
        proc = _start(*args, cwd=tmp_path)
        killed = _kill_when(proc, out, trigger, deadline)
        now = _finished(out)
        for point, stamp in kept.items():  # nothing finished before a kill is lost or rewritten
            assert now.get(point) == stamp, point
        kept = now
        if not killed:
            break
    final = subprocess.run(
        [sys.executable, "-m", "bytegolf.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-2000:]
    done = _finished(out)
    assert all(done[p] == s for p, s in kept.items())  # finished points were skipped, not recomputed
    assert final.stdout.count("finished already") >= len(kept)
    ranked = [json.loads(p.read_text()) for p in out.glob(f"points/30000/*/{store.RESULT}")]
    assert sorted(r["format"] for r in ranked if r.get("budget_bytes") == 30000) == ["clustered", "scalar"]
    assert not list(out.glob("points/*/*/.claim"))  # no claim outlives its worker's rerun


def test_two_compares_on_one_directory_evaluate_each_point_once(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    args = ["compare", f"bundle={tiny_bundle}", *COMPARE, "compare.front_points=0", f"hydra.run.dir={out}"]
    procs = [_start(*args, cwd=tmp_path) for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-1500:] + logs[1][-1500:]
    points = [p.parent for p in out.glob(f"points/*/*/{store.RESULT}")]
    assert len(points) == 3  # scalar and clustered at the budget, clustered again with seed 1
    log = (out / "compare.log").read_text()  # both processes log here, one "eval ..." stage per evaluation
    assert log.count("] - eval ...") == 3


def test_two_sweeps_on_one_directory_run_each_point_once(tiny_bundle: Path, tmp_path: Path) -> None:
    d = tmp_path / "sweep"
    args = ["run", "-m", f"bundle={tiny_bundle}", *TINY_ARGS, "format.bits=3,4,5,6", "codec=zstd"]
    procs = [_start(*args, f"hydra.sweep.dir={d}", cwd=tmp_path) for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-1500:] + logs[1][-1500:]
    points = [p.parent for p in d.glob(f"*/{store.RESULT}")]
    assert len(points) == 4
    for p in points:
        assert (p / "run.log").read_text().count("] - eval ...") == 1, p.name
    ran = sum(line.count("bpb") for log in logs for line in log.splitlines() if "skipped" not in line)
    assert ran >= 4


FORMATS = [["format=scalar", "format.gptq=true"], ["format=clustered", "format.codebook_size=64"]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_artifacts_are_byte_identical_across_processes_and_thread_counts(
    tiny_bundle: Path, tmp_path: Path, fmt: list[str]
) -> None:
    digests = []
    for threads in (1, 2, 2):  # the repeat is a second process with the same settings
        out = tmp_path / f"t{threads}_{len(digests)}"
        settings = [*fmt, "codec=zstd", f"threads={threads}", f"hydra.run.dir={out}"]
        proc = subprocess.run(
            [sys.executable, "-m", "bytegolf.cli", "run", f"bundle={tiny_bundle}", *TINY_ARGS, *settings],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(hashlib.sha256((out / "model.bgz").read_bytes()).hexdigest())
    assert len(set(digests)) == 1, digests


@pytest.mark.parametrize("params", [{"codebook_size": 256, "dim": 4}, {"codebook_size": 64, "dim": 2, "lam": 0.05}])
def test_clustered_artifacts_are_byte_identical_with_and_without_faiss(
    params: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from bytegolf.artifact import file as artifact
    from bytegolf.artifact import layout
    from bytegolf.formats import EncodeContext
    from bytegolf.formats import kmeans as km
    from bytegolf.quantize.plan import PlanConfig, make_plan

    assert km.faiss is not None  # faiss-cpu is a declared dependency: the comparison is real
    g = torch.Generator().manual_seed(0)
    state = {"a.weight": torch.randn(128, 256, generator=g), "b.weight": torch.randn(256, 128, generator=g) * 0.1}
    plan = make_plan(state, PlanConfig(passthrough_max_numel=0, control_patterns=[]), "clustered", params)

    def digest(name: str) -> str:
        units = encoder.encode_state(state, plan, EncodeContext(), progress=False)
        artifact.write(tmp_path / name, units, "zstd", {}, layout.LayoutConfig())
        return hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    with_faiss = digest("faiss.bgz")
    monkeypatch.setattr(km, "faiss", None)
    assert digest("torch.bgz") == with_faiss
