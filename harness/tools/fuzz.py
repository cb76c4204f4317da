"""Fuzz the artifact reader: corrupt real artifacts and decode each in a jailed child process.

`python -m bytegolf.tools.fuzz --cases N` writes small real artifacts (every built-in format and codec,
several layouts), then makes N corrupted copies (bit flips, truncations, extensions, header edits,
manifest edits and "integer bombs" with the manifest CRC fixed up so they reach the layers below,
payload edits with their blob CRC fixed up, manifests swapped between artifacts) and decodes each
with `artifact.read` in a forked child under a memory limit (RLIMIT_AS) and a timeout.

Outcomes: identical / different (decoded without error), artifact_error (the reader's promised
ArtifactError), and the bugs: other_exception, crash (killed by a signal), hang (timeout), memory
(MemoryError or an allocator failure under the limit). The exit status is 1 when any bug showed.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

OUTCOMES = ("identical", "different", "artifact_error", "other_exception", "crash", "hang", "memory")
BUGS = ("other_exception", "crash", "hang", "memory")
KINDS = {  # mutation -> weight
    "bitflip": 3,
    "truncate": 2,
    "extend": 1,
    "header": 2,
    "manifest": 5,
    "integer_bomb": 4,
    "payload": 3,
    "swap": 1,
}
_HEADER = struct.Struct("<8sHHII")
BOMBS = (-1, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63))
ODD = (None, True, False, 0, 1, -1, 0.5, float(2**70), "", "x", "uint8", "float64", [], {}, [1, 2], {"a": 1})


@dataclass
class Case:
    """One corrupted file and what decoding it did."""

    index: int
    base: str
    kind: str
    note: str
    outcome: str = ""
    detail: str = ""


@dataclass
class Report:
    """All cases of a fuzz run, with counts per mutation kind and outcome."""

    cases: list[Case] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, Counter]:
        """kind -> Counter of outcomes (plus "total")."""
        out: dict[str, Counter] = {k: Counter() for k in KINDS}
        out["total"] = Counter()
        for c in self.cases:
            out[c.kind][c.outcome] += 1
            out["total"][c.outcome] += 1
        return out

    def bugs(self) -> list[Case]:
        """Cases whose outcome is a bug (other exception, crash, hang, memory blow-up)."""
        return [c for c in self.cases if c.outcome in BUGS]

    def table(self) -> str:
        """The outcome table as fixed-width text."""
        counts = self.counts()
        head = f"{'mutation':<13}" + "".join(f"{o:>16}" for o in OUTCOMES) + f"{'cases':>8}"
        lines = [head, "-" * len(head)]
        for kind, cnt in counts.items():
            lines.append(f"{kind:<13}" + "".join(f"{cnt[o]:>16}" for o in OUTCOMES) + f"{sum(cnt.values()):>8}")
        return "\n".join(lines)


# ---- base artifacts (built in a separate process: the parent stays free of torch threads before forking) ----


def _tensor_digest(t: Any) -> str:
    import torch

    t = t.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode() + raw).hexdigest()


def _digests(tensors: dict[str, Any]) -> dict[str, str]:
    return {name: _tensor_digest(t) for name, t in sorted(tensors.items())}


def build_bases(out_dir: Path, seed: int = 0) -> list[dict[str, Any]]:
    """Write small real artifacts of every built-in format and codec into out_dir; return their descriptions."""
    import torch

    from bytegolf.artifact import file as artifact
    from bytegolf.artifact import layout
    from bytegolf.codecs import REGISTRY as CODECS
    from bytegolf.formats import REGISTRY as FORMATS
    from bytegolf.formats.base import EncodeContext
    from bytegolf.quantize import encoder
    from bytegolf.quantize.plan import Assignment

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    state = {
        "blocks.0.attn.c_q.weight": torch.randn(32, 64) * 0.05,
        "blocks.1.attn.c_q.weight": torch.randn(32, 64) * 0.05,
        "blocks.0.attn_scale": torch.randn(8).to(torch.bfloat16),
        "blocks.0.step": torch.arange(3),
    }
    params = {"scalar": {"bits": 4}, "basis_delta": {"rank": 4}, "passthrough": {"dtype": "fp16"}}
    layouts = [
        {},
        {"packing": "bits"},
        {"grouping": "role", "shuffle": True},
        {"grouping": "all", "transpose": True},
        {"grouping": "family", "reorder": ["*"]},
    ]
    codecs = list(CODECS.builtin)
    quick = [c for c in codecs if c not in ("zpaq", "best")]  # zpaq decodes slowly: it gets the small artifact only
    combos = [(f, quick[i % len(quick)], layouts[i % len(layouts)]) for i, f in enumerate(FORMATS.builtin)]
    combos += [("scalar", c, layouts[(i + 2) % len(layouts)]) for i, c in enumerate(codecs)]
    units_of: dict[str, Any] = {}
    bases = []
    for f, codec, lay in combos:
        if f not in units_of:
            plan = [
                Assignment(
                    n, f if n.endswith("weight") else "passthrough", params.get(f, {}) if n.endswith("weight") else {}
                )
                for n in state
            ]
            units_of[f] = encoder.encode_state(state, plan, EncodeContext(seed=seed), progress=False)
        path = out_dir / f"{f}-{codec}-{len(bases)}.bgz"
        artifact.write(path, units_of[f], codec, {}, layout.LayoutConfig(**lay))
        decoded, _ = artifact.read(path, progress=False)
        bases.append({"path": str(path), "name": path.stem, "digests": _digests(decoded)})
    return bases


# ---- mutations ---------------------------------------------------------------------------------


def _split(data: bytes) -> tuple[tuple, Any, bytes]:
    """(header fields, manifest JSON, payload) of a well-formed artifact."""
    fields = _HEADER.unpack(data[: _HEADER.size])
    meta_len = fields[3]
    manifest = json.loads(zlib.decompress(data[_HEADER.size : _HEADER.size + meta_len]))
    return fields, manifest, data[_HEADER.size + meta_len :]


def _join(fields: tuple, manifest: Any, payload: bytes) -> bytes:
    """An artifact from parts, with the manifest's length and CRC made to match (so the edit goes deeper)."""
    meta = zlib.compress(json.dumps(manifest, separators=(",", ":")).encode(), 9)
    return _HEADER.pack(fields[0], fields[1], fields[2], len(meta), zlib.crc32(meta)) + meta + payload


def _nodes(obj: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every value inside a JSON value (the root excluded)."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append((*path, k))
        out.extend(_nodes(v, (*path, k)))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _mutate_manifest(rng: random.Random, manifest: Any, ints_only: bool) -> str:
    """Edit one node of the manifest in place; returns a note saying what."""
    nodes = _nodes(manifest)
    if ints_only:
        nodes = [p for p in nodes if type(_get(manifest, p)) is int]
        in_meta = [p for p in nodes if "meta" in p]  # the numbers decoders read: half the bombs go there
        nodes = in_meta if in_meta and rng.random() < 0.5 else nodes
    if not nodes:
        return "nothing to edit"
    path = rng.choice(nodes)
    parent, key = _get(manifest, path[:-1]), path[-1]
    old = parent[key]
    where = "/".join(map(str, path))
    if ints_only:
        parent[key] = rng.choice(BOMBS) if rng.random() < 0.8 else old + rng.choice((-1, 1, old, 7))
        return f"{where}: {old} -> {parent[key]}"
    op = rng.random()
    if op < 0.15 and isinstance(parent, dict):
        del parent[key]
        return f"{where}: deleted"
    if op < 0.25 and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(old))
        return f"{where}: duplicated"
    if op < 0.35 and isinstance(parent, list):
        del parent[key]
        return f"{where}: removed"
    if op < 0.55 and isinstance(old, str):
        strings = [v for p in _nodes(manifest) if isinstance(v := _get(manifest, p), str)]
        parent[key] = rng.choice(strings)
        return f"{where}: {old!r} -> {parent[key]!r}"
    if op < 0.7 and isinstance(old, list) and old and all(type(x) is int for x in old):
        parent[key] = [rng.choice(BOMBS) if rng.random() < 0.5 else x for x in old]
        return f"{where}: {old} -> {parent[key]}"
    parent[key] = copy.deepcopy(rng.choice(ODD))
    return f"{where}: {str(old)[:40]} -> {parent[key]!r}"


def mutate(rng: random.Random, data: bytes, other: bytes, kind: str) -> tuple[bytes, str]:
    """A corrupted copy of the artifact `data` (`other`: another artifact, for swaps) and a note."""
    if kind == "bitflip":
        buf = bytearray(data)
        flips = [rng.randrange(len(buf) * 8) for _ in range(rng.randint(1, 8))]
        for bit in flips:
            buf[bit // 8] ^= 1 << (bit % 8)
        return bytes(buf), f"bits {flips}"
    if kind == "truncate":
        n = rng.randrange(len(data))
        return data[:n], f"to {n} of {len(data)} bytes"
    if kind == "extend":
        extra = rng.randbytes(rng.randint(1, 64)) if rng.random() < 0.5 else bytes(rng.randint(1, 4096))
        return data + extra, f"+{len(extra)} bytes"
    fields, manifest, payload = _split(data)
    if kind == "header":
        i = rng.randrange(5)
        f = list(fields)
        f[i] = (
            bytes(rng.randbytes(8))
            if i == 0
            else rng.choice((0, 1, 2, 0xFFFF, rng.randrange(1 << 16)))
            if i in (1, 2)
            else rng.choice((0, 1, f[i] - 1, f[i] + 1, 2**32 - 1, rng.randrange(1 << 32)))
        )
        meta = data[_HEADER.size : _HEADER.size + fields[3]]
        return _HEADER.pack(*f) + meta + payload, f"header field {i}: {fields[i]!r} -> {f[i]!r}"
    if kind in ("manifest", "integer_bomb"):
        note = _mutate_manifest(rng, manifest, ints_only=kind == "integer_bomb")
        return _join(fields, manifest, payload), note
    if kind == "payload":
        blobs = manifest["blobs"]
        i = rng.randrange(len(blobs))
        b = blobs[i]
        chunk = bytearray(payload[b["offset"] : b["offset"] + b["stored"]])
        if not chunk:
            return _join(fields, manifest, payload), f"blob {i} is empty"
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(chunk))
            chunk[pos] = rng.randrange(256) if rng.random() < 0.5 else chunk[pos] ^ (1 << rng.randrange(8))
        b["crc32"] = zlib.crc32(chunk)
        payload = payload[: b["offset"]] + bytes(chunk) + payload[b["offset"] + b["stored"] :]
        return _join(fields, manifest, payload), f"blob {i} ({b['codec']}) edited, CRC fixed"
    if kind == "swap":
        _, other_manifest, _ = _split(other)
        key = rng.choice(("units", "blobs", "all"))
        if key == "all":
            manifest = other_manifest
        else:
            manifest[key] = other_manifest[key]
        return _join(fields, manifest, payload), f"{key} from another artifact"
    raise ValueError(f"unknown mutation {kind!r}")


# ---- the jailed decode -------------------------------------------------------------------------


def _vm_bytes() -> int:
    """This process's current virtual memory size (what RLIMIT_AS counts)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _decode_in_child(path: str, digests: dict[str, str], mem_bytes: int, wfd: int) -> None:
    """Runs in the forked child: limit memory, decode, write one JSON line to wfd, exit."""
    result: dict[str, str]
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + mem_bytes, resource.RLIM_INFINITY))
        import torch

        from bytegolf.artifact import file as artifact
        from bytegolf.errors import ArtifactError

        torch.set_num_threads(1)
        try:
            decoded, _ = artifact.read(path, progress=False)
            same = _digests(decoded) == digests
            result = {"outcome": "identical" if same else "different", "detail": ""}
        except ArtifactError as exc:
            ctx = exc.__context__
            via = f" [from {type(ctx).__name__}]" if ctx is not None and not isinstance(ctx, ArtifactError) else ""
            result = {"outcome": "artifact_error", "detail": f"{str(exc)[:300]}{via}"}
        except MemoryError as exc:
            result = {"outcome": "memory", "detail": f"MemoryError: {str(exc)[:200]}"}
        except BaseException as exc:
            text = f"{type(exc).__name__}: {str(exc)[:300]}"
            memory = "alloc" in str(exc).lower() and "memory" in str(exc).lower()
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
            result = {"outcome": "memory" if memory else "other_exception", "detail": text + where}
    except BaseException as exc:  # the jail itself failed
        result = {"outcome": "other_exception", "detail": f"fuzz child setup: {type(exc).__name__}: {exc}"}
    try:
        os.write(wfd, json.dumps(result).encode()[:60000])
    finally:
        os._exit(0)


@dataclass
class _Running:
    case: Case
    pid: int
    rfd: int
    start: float
    chunks: list[bytes] = field(default_factory=list)


def _finish(run: _Running, status: int | None, timed_out: bool) -> None:
    """Classify a finished (or killed) child from its exit status and what it wrote."""
    data = b"".join(run.chunks)
    os.close(run.rfd)
    case = run.case
    if timed_out:
        case.outcome, case.detail = "hang", "timeout"
        return
    if data:
        try:
            r = json.loads(data)
            case.outcome, case.detail = r["outcome"], r["detail"]
            return
        except ValueError:
            pass
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        case.outcome = "memory" if sig == signal.SIGKILL else "crash"  # an outside SIGKILL is the OOM killer
        case.detail = f"killed by {signal.Signals(sig).name}"
    else:
        code = os.WEXITSTATUS(status) if status is not None else "?"
        case.outcome, case.detail = "crash", f"exited with status {code} and no result"


def _preload() -> None:
    """Import the reader and every built-in format and codec once, so that forked children start warm."""
    import bytegolf.artifact.file  # noqa: F401
    from bytegolf.codecs import REGISTRY as CODECS
    from bytegolf.formats import REGISTRY as FORMATS

    for reg in (FORMATS, CODECS):
        for name in reg.builtin:
            reg.load(name)


def run_cases(
    cases: list[tuple[Case, str, dict[str, str]]], jobs: int, timeout: float, mem_bytes: int, progress: bool = False
) -> None:
    """Decode each (case, file, expected digests) in a forked, memory-limited child, `jobs` at a time;
    progress: a bar of finished cases on stderr."""
    todo = list(reversed(cases))
    running: dict[int, _Running] = {}
    bar = tqdm(total=len(cases), desc="fuzz", unit="case", disable=not progress, leave=False)
    while todo or running:
        while todo and len(running) < jobs:
            case, path, digests = todo.pop()
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child
                os.close(rfd)
                _decode_in_child(path, digests, mem_bytes, wfd)
            os.close(wfd)
            running[pid] = _Running(case, pid, rfd, time.monotonic())
        readable, _, _ = select.select([r.rfd for r in running.values()], [], [], 0.01)
        for r in running.values():
            if r.rfd in readable:
                chunk = os.read(r.rfd, 65536)
                if chunk:
                    r.chunks.append(chunk)
        for pid, r in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                while chunk := os.read(r.rfd, 65536):
                    r.chunks.append(chunk)
                _finish(r, status, False)
                del running[pid]
                bar.update()
            elif time.monotonic() - r.start > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                _finish(r, None, True)
                del running[pid]
                bar.update()
    bar.close()


def fuzz(
    n_cases: int,
    seed: int = 0,
    jobs: int = 2,
    timeout: float = 30.0,
    mem_mb: int = 1024,
    workdir: Path | None = None,
    keep: Path | None = None,
    progress: bool = False,
) -> Report:
    """Build base artifacts, corrupt them n_cases times and decode each in a jail; the cases come back classified.

    keep: a folder to copy the files of the bug cases into (named by case index); progress: a bar on stderr."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bytegolf-fuzz-", dir=workdir) as tmp:
        tmpdir = Path(tmp)
        # a separate process builds the bases: this one must not start torch's thread pools before forking
        subprocess.run(
            [sys.executable, "-m", "bytegolf.tools.fuzz", "--build", str(tmpdir), "--seed", str(seed)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        bases = json.loads((tmpdir / "bases.json").read_text())
        raw = [Path(b["path"]).read_bytes() for b in bases]
        _preload()

        kinds, weights = list(KINDS), list(KINDS.values())
        todo = []
        for i in range(n_cases):
            rng = random.Random(seed * 1_000_003 + i)
            bi = i % len(bases)
            kind = rng.choices(kinds, weights)[0]
            other = raw[(bi + 1 + rng.randrange(len(bases) - 1)) % len(bases)]
            data, note = mutate(rng, raw[bi], other, kind)
            path = tmpdir / f"case{i}.bgz"
            path.write_bytes(data)
            todo.append((Case(i, bases[bi]["name"], kind, note), str(path), bases[bi]["digests"]))
        run_cases(todo, jobs, timeout, mem_mb << 20, progress)
        report = Report([c for c, _, _ in todo], time.perf_counter() - t0)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for c in report.bugs():
                (keep / f"case{c.index}.bgz").write_bytes((tmpdir / f"case{c.index}.bgz").read_bytes())
    return report


def main(argv: list[str] | None = None) -> None:
    """`python -m bytegolf.tools.fuzz --cases N`: print the outcome table; exit 1 if any case found a bug."""
    ap = argparse.ArgumentParser(prog="python -m bytegolf.tools.fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200, help="corrupted files to decode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="children decoding at once")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a decode may take before it is a hang")
    ap.add_argument("--mem-mb", type=int, default=1024, help="address space a child may add (RLIMIT_AS)")
    ap.add_argument("--keep", type=Path, default=None, help="copy the files of bug cases here")
    ap.add_argument("--json", type=Path, default=None, help="write every case (kind, note, outcome, detail) here")
    ap.add_argument("--build", type=Path, default=None, help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.build is not None:
        bases = build_bases(ns.build, ns.seed)
        (ns.build / "bases.json").write_text(json.dumps(bases))
        return
    report = fuzz(ns.cases, ns.seed, ns.jobs, ns.timeout, ns.mem_mb, keep=ns.keep, progress=True)
    print(report.table())
    bugs = report.bugs()
    for c in bugs[:30]:
        print(f"case {c.index} [{c.base}] {c.kind} ({c.note[:120]}): {c.outcome}: {c.detail}")
    print(f"{len(report.cases)} cases in {report.seconds:.1f} s; {len(bugs)} bug(s)")
    if ns.json is not None:
        ns.json.write_text(json.dumps([c.__dict__ for c in report.cases], indent=1))
    raise SystemExit(1 if bugs else 0)


if __name__ == "__main__":
    main()
