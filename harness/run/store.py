"""The result store: one result.json per point, written atomically; finished points are found by
config hash, running ones by a claim file; `collect` turns a tree of result files into a table.

Nothing here is a shared mutable file: each point owns its directory, every write goes through a
temporary name and a rename, and a claim is created with O_EXCL. Many workers on one shared
filesystem therefore never write the same file, and a reader sees whole files or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bytegolf import markdown
from bytegolf.errors import BytegolfError

log = logging.getLogger("bytegolf")

RESULT = "result.json"
CLAIM = ".claim"
HEARTBEAT_S = 30.0  # a running point touches its claim this often
STALE_S = 300.0  # a claim untouched this long belongs to a dead worker
# Settings that change how fast a point runs but not what it computes.
NOT_HASHED = ("threads", "encode_jobs", "reuse")
# Per-point columns the table leaves out (lists, per-tensor rows, provenance blobs).
DROPPED = (
    "tensors",
    "window_nll",
    "window_bytes",
    "window_docs",
    "ref_window_nll",
    "artifact",
    "overrides",
    "dropped_overrides",
)


def config_hash(config: dict[str, Any]) -> str:
    """Stable 12-hex-digit hash of a resolved, JSON-able config (keys in NOT_HASHED ignored)."""
    body = {k: v for k, v in config.items() if k not in NOT_HASHED and k != "hydra"}
    text = json.dumps(body, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_json_atomic(path: Path, obj: Any, strict: bool | None = None) -> None:
    """Write JSON through a uniquely named temporary file in the same directory and a rename.

    strict (None: for result.json only): standard JSON, NaN and ±Infinity written as null (`strict_json`);
    otherwise NaN and Infinity are written as Python's json writes and reads them (caches this code reads back)."""
    strict = path.name == RESULT if strict is None else strict
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
    if strict:
        text = json.dumps(strict_json(obj), indent=2, allow_nan=False)
    else:
        text = json.dumps(obj, indent=2, default=_jsonable)
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    try:
        return float(x)
    except (TypeError, ValueError):
        return str(x)


def strict_json(obj: Any) -> Any:
    """obj with every non-finite float (NaN, ±inf; numpy scalars included) as None, tuples as lists and
    other non-JSON values as float or str (as write_json_atomic writes them): json.dumps(allow_nan=False) takes it."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    v = _jsonable(obj)
    return strict_json(v) if isinstance(v, float) else v


# Float metrics that are NaN where not measured (no Hessian, nothing quantized) and never null otherwise:
# result.json stores such a NaN (or an infinite SQNR) as null, and read_result gives it back as NaN.
NAN_WHEN_NULL = ("rel_mse", "sqnr_db", "output_error")


def _nan_for_null(row: dict[str, Any], keys: Any) -> None:
    for k in keys:
        if k in row and row[k] is None:
            row[k] = math.nan


def read_result(path: Path) -> dict[str, Any] | None:
    """A result file's content, or None if it is missing or not a bytegolf result. A null among the
    NAN_WHEN_NULL metrics (top level and per tensor) and the kld statistics comes back as NaN, as written."""
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(r, dict) and "format" in r and "final_bytes" in r):
        return None
    _nan_for_null(r, NAN_WHEN_NULL)
    for row in r.get("tensors") or []:
        if isinstance(row, dict):
            _nan_for_null(row, NAN_WHEN_NULL)
    if isinstance(r.get("kld"), dict):
        _nan_for_null(r["kld"], list(r["kld"]))
    return r


def finished(out_dir: Path, chash: str) -> dict[str, Any] | None:
    """The finished result in out_dir for that config hash, else None."""
    r = read_result(out_dir / RESULT)
    return r if r is not None and r.get("config_hash") == chash else None


def write_result(out_dir: Path, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Rewrite result.json with provenance keys added (config_hash, status, ...); returns it."""
    result = {**result, **extra}
    result.setdefault("status", "ok")
    write_json_atomic(out_dir / RESULT, result)
    return result


# ------------------------------------------------------------------ claims


def _claim_is_live(path: Path) -> bool:
    try:
        info = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return False  # vanished or half-written by a crashed taker: treat as free
    if age > STALE_S:
        return False
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info.get("pid", -1)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, OverflowError):
            return True
    return True


def is_claimed(out_dir: Path, name: str = CLAIM) -> bool:
    """Whether a live worker holds out_dir's claim (a dead or stale taker's claim does not count)."""
    path = out_dir / name
    return path.exists() and _claim_is_live(path)


@contextlib.contextmanager
def claim(out_dir: Path, name: str = CLAIM) -> Iterator[bool]:
    """Try to own out_dir while a point runs there: yields True when owned (a heartbeat keeps the
    claim fresh until the block ends), False when a live worker owns it already. name: the claim
    file's (other than .claim: one of several things in out_dir, such as a cached search probe)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
    # the claim appears whole or not at all: written aside, then hard-linked into place (a reader
    # never sees an empty claim it would take for a crashed taker's)
    tmp = out_dir / f"{name}-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
    tmp.write_text(body)
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)
            except FileExistsError:
                if _claim_is_live(path):
                    yield False
                    return
                log.info("taking over the stale claim %s", path)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            break
        else:
            yield False
            return
    finally:
        tmp.unlink(missing_ok=True)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(path)

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield True
    finally:
        stop.set()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ------------------------------------------------------------------ tables


def result_files(dirs: list[Path]) -> list[Path]:
    """Every result.json under the directories (sorted; hidden directories skipped)."""
    files: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file() and d.name == RESULT:
            files.append(d)
            continue
        files.extend(
            p for p in sorted(d.rglob(RESULT)) if not any(part.startswith(".") for part in p.relative_to(d).parts)
        )
    return files


def load_results(dirs: list[Path]) -> list[dict[str, Any]]:
    """Full results (per-window arrays included) under the dirs, one per config hash, each with `path`."""
    out, seen = [], set()
    for f in result_files(dirs):
        r = read_result(f)
        if r is None:
            continue
        key = r.get("config_hash"), r.get("budget_bytes")
        if key[0] is not None and key in seen:
            continue
        seen.add(key)
        r["path"] = str(f.parent)
        out.append(r)
    return out


def flatten(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar columns of a result: nested dicts become dotted names, lists are left out."""
    row: dict[str, Any] = {}
    for k, v in result.items():
        if not prefix and k in DROPPED:
            continue
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            short = {"format_params": "format.", "codec_params": "codec.", "bytes_by_role": "role."}
            row.update(flatten(v, short.get(name, name + ".")))
        elif v is None or isinstance(v, (bool, int, float, str)):
            row[name] = v
    return row


def table(results: list[dict[str, Any]]):
    """One pandas row per point, scalar columns only (plus config_hash and path)."""
    import pandas as pd

    rows = []
    for r in results:
        row = flatten(r)
        row["protocol"] = row_protocol(r) or None  # results written before the field: from their evaluation
        for key in ("bpb_ci", "delta_bpb_ci"):
            if isinstance(r.get(key), list) and len(r[key]) == 2:
                row[f"{key}_lo"], row[f"{key}_hi"] = r[key]
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    first = [c for c in ("format", "codec", "status", "budget_bytes", "config_hash", "path") if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def mixed_sources(results: list[dict[str, Any]]) -> str:
    """A warning when the results were computed by more than one source tree, else ""."""
    sources = sorted({str(r.get("source_hash") or r.get("git_revision") or "unknown") for r in results})
    if len(sources) <= 1:
        return ""
    return f"{len(results)} results from {len(sources)} source trees ({', '.join(sources)}): they mix revisions"


def row_protocol(r: dict[str, Any]) -> str:
    """The evaluation protocol of a result row in words, from what rows carry (the row's own `protocol` where it
    has one, else "256 windows × 1024 tokens, 54 documents, bf16, no stride" from its evaluation fields, which do
    not record how the windows were drawn). "" for a row without an evaluation."""
    if r.get("protocol"):
        return str(r["protocol"])
    windows = int(r.get("eval_windows") or len(r.get("window_nll") or []))
    tokens = int(r.get("eval_tokens") or 0)
    stride = r.get("eval_stride")
    if not (windows or tokens):
        return ""
    if windows and tokens and not stride and tokens % windows == 0:
        parts = [f"{windows} windows × {tokens // windows} tokens"]
    elif windows:
        parts = [f"{windows} windows" + (f", {tokens:,} tokens scored" if tokens else "")]
    else:
        parts = [f"{tokens:,} tokens scored"]
    docs = len(set(r.get("window_docs") or []))
    if docs:
        parts.append(f"{docs} documents")
    if r.get("eval_precision"):
        parts.append(str(r["eval_precision"]))
    parts.append(f"sliding, stride {int(stride)}" if stride else "no stride")
    return ", ".join(parts)


def mixed_protocols(results: list[dict[str, Any]]) -> str:
    """A warning when the evaluated results were scored under more than one evaluation protocol, else ""."""
    counts = Counter(row_protocol(r) for r in results if r.get("bpb") is not None)
    if len(counts) <= 1:
        return ""
    parts = "; ".join(f"{n} under {p or 'an unrecorded protocol'}" for p, n in counts.most_common())
    return f"the results mix {len(counts)} evaluation protocols ({parts}): compare bpb only within one"


def collect(dirs: list[Path]):
    """The table of every result under the dirs; BytegolfError when there is none."""
    found = load_results(dirs)
    if not found:
        names = ", ".join(str(d) for d in dirs)
        raise BytegolfError(f"no bytegolf result.json under {names} (not a sweep, compare or run directory)")
    for msg in (mixed_sources(found), mixed_protocols(found)):
        if msg:
            warnings.warn(msg, stacklevel=2)
    return table(found)


def save_table(df, stem: Path) -> list[Path]:
    """Write stem.parquet and stem.csv atomically; returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("parquet", "csv"):
        path = stem.with_suffix(f".{ext}")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if ext == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
        paths.append(path)
    return paths


SHOWN = (
    "point",
    "format",
    "codec",
    "status",
    "budget_bytes",
    "knob",
    "knob_value",
    "final_bytes",
    "bits_per_weight",
    "rel_mse",
    "output_error",
    "bpb",
    "delta_bpb",
)
HEADERS = {
    "budget_bytes": "budget",
    "final_bytes": "final bytes",
    "bits_per_weight": "bits/weight",
    "delta_bpb": "Δbpb",
}


def summary(df, limit: int = 60) -> str:
    """The main columns (swept format and codec settings included) as a markdown table that pastes, bpb with its
    interval, the protocol under it (a column, with a warning, where the rows mix protocols)."""
    if df.empty:
        return "(no points)"
    df = df.assign(point=[Path(str(p)).name for p in df["path"]]) if "path" in df.columns else df
    varying = [c for c in df.columns if c.startswith(("format.", "codec.")) and df[c].nunique(dropna=False) > 1]
    cols = [c for c in SHOWN if c in df.columns and df[c].notna().any()]
    cols = cols[:3] + varying + cols[3:]
    sort = [c for c in ("budget_bytes", "format", "codec", "final_bytes") if c in df.columns]
    rows = (df.sort_values(sort) if sort else df).head(limit).to_dict("records")
    for r in rows:
        for key in ("bpb", "delta_bpb"):
            lo, hi = r.get(f"{key}_ci_lo"), r.get(f"{key}_ci_hi")
            if r.get(key) is not None and lo is not None and not math.isnan(lo):
                sign = "+" if key == "delta_bpb" else ""
                r[key] = f"{r[key]:{sign}.4f} [{lo:{sign}.4f}, {hi:{sign}.4f}]"
    protocols = sorted({p for p in df.get("protocol", []) if isinstance(p, str) and p})
    if len(protocols) > 1:
        cols.append("protocol")
    text = markdown.table(rows, cols, [HEADERS.get(c, c) for c in cols])
    if len(df) > limit:
        text += f"({len(df) - limit} more rows in the saved table)\n"
    if len(protocols) == 1:
        text += f"\nprotocol: {protocols[0]}; bpb [95% document-bootstrap interval]\n"
    elif protocols:
        text += f"\nWARNING: the rows mix {len(protocols)} evaluation protocols: compare bpb only within one\n"
    return text
