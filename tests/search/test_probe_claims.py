"""Compares on one output directory share search probes: a probe being computed is claimed, a second
process asking for the same knob value reads the first one's result instead of computing it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bytegolf.run import store
from bytegolf.search.budget import Probe
from bytegolf.search.prober import ProbeCache


class Counting:
    """A slow probe function that counts its calls (thread-safe)."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds, self.calls, self.lock = seconds, [], threading.Lock()

    def __call__(self, x: float) -> Probe:
        with self.lock:
            self.calls.append(x)
        time.sleep(self.seconds)
        return Probe(x, int(1000 * x), 7, self.seconds)


def _cache(path: Path) -> ProbeCache:
    c = ProbeCache(path, {"format": "scalar"})
    c.wait_s = 0.02
    return c


def test_two_searches_at_once_compute_a_shared_probe_once(tmp_path: Path) -> None:
    path = tmp_path / "search" / "scalar_abc.json"
    compute = Counting()
    caches = [_cache(path), _cache(path)]
    start = threading.Barrier(2)
    got: list[Probe | None] = [None, None]

    def search(i: int) -> None:
        start.wait()
        got[i] = caches[i].get(12.85, compute)
        caches[i].get(25.0 + i, compute)  # a value of its own: both end up in the shared file

    threads = [threading.Thread(target=search, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(compute.calls) == [12.85, 25.0, 26.0]  # 12.85 once, not once per search
    assert got[0] == got[1] == Probe(12.85, 12850, 7, 0.3)
    assert sorted(c.computed for c in caches) == [1, 2]
    body = json.loads(path.read_text())
    assert body["format"] == "scalar" and [p["value"] for p in body["probes"]] == [12.85, 25.0, 26.0]
    assert not list(path.parent.glob(".claim*"))  # every claim released
    # a later search (a rerun) reads them all from the file
    later = _cache(path)
    assert later.get(26.0, compute) == Probe(26.0, 26000, 7, 0.3) and later.computed == 0


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bytegolf.search.budget import Probe
    from bytegolf.search.prober import ProbeCache

    path, count, go = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])

    def compute(x):
        with count.open("a") as f:
            f.write(f"{x}\\n")
        time.sleep(1.0)
        return Probe(x, 4242, 0, 1.0)

    cache = ProbeCache(path, {"format": "scalar"})
    cache.wait_s = 0.05
    time.sleep(max(0.0, go - time.time()))
    print(cache.get(3.0, compute).final_bytes, cache.computed)
    """
)


@pytest.mark.slow
def test_two_processes_compute_a_shared_probe_once(tmp_path: Path) -> None:
    path, count = tmp_path / "scalar_abc.json", tmp_path / "computed.txt"
    go = time.time() + 3.0  # both start asking at the same moment, once imported
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(count), str(go)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert count.read_text().split() == ["3.0"]  # one computation between the two processes
    assert sorted(outs) == [["4242", "0"], ["4242", "1"]]


def test_a_dead_computers_claim_is_taken_over(tmp_path: Path) -> None:
    """A claim whose process is gone (a search killed mid-probe) does not block the value forever."""
    path = tmp_path / "scalar_abc.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = tmp_path / f"{store.CLAIM}-{path.name}-{3.0!r}"
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "since": time.time()}))
    compute = Counting(0.0)
    assert _cache(path).get(3.0, compute).final_bytes == 3000 and compute.calls == [3.0]
    assert not claim.exists()


def test_a_failed_computation_lets_the_waiter_compute(tmp_path: Path) -> None:
    """The first process's probe raising releases its claim: the second computes the value itself."""
    path = tmp_path / "scalar_abc.json"
    first, second = _cache(path), _cache(path)
    started = threading.Event()

    def broken(x: float) -> Probe:
        started.set()
        time.sleep(0.2)
        raise RuntimeError("encoder crashed")

    def run_first() -> None:
        with pytest.raises(RuntimeError):
            first.get(5.0, broken)

    t = threading.Thread(target=run_first)
    t.start()
    started.wait(10)
    compute = Counting(0.0)
    assert second.get(5.0, compute).final_bytes == 5000 and compute.calls == [5.0]
    t.join(10)
