"""Layout: how format streams become codec inputs (grouping, order, row order, codec choice) and back.

Order (stable, documented): streams are visited unit by unit in plan order and, within a unit,
by stream name. `grouping` makes one blob per stream ("tensor"), per (role, storage dtype)
("role"), per tensor family for codes and per (role, storage dtype) for the rest ("family": the
codes of the same matrix of every layer together, Parameter Golf's per-group buckets), or one blob
for everything ("all"); blobs follow
the first appearance of their key.
Inside a blob, streams are laid out in sections of one (role, storage dtype), sections in order of
first appearance, streams in visiting order within a section.

How each stream is packed into its blob ("byte", "bits" or "planes", recorded in its manifest
entry) is bytegolf.artifact.packing; `LayoutConfig.packing`, `width` and `shuffle` choose it. What each
role's bytes cost is bytegolf.measure.accounting.

Before packing, 2-D "codes" streams may be rearranged (recorded per stream, undone by `unpack`):
- `reorder` (tensor-name globs): the rows of a matching tensor's codes are put in a greedy L1
  nearest-neighbour order (start at row 0, always step to the closest row not yet visited); the
  permutation is stored as a stream of its own ("<stream>#perm", role "perm", symbols with
  alphabet = rows) and counted like any other, and the codes entry records it as "perm";
- `transpose`: the codes are stored column by column ("transposed": true), so that similar
  neighbouring rows become runs.

Codecs that code symbols themselves (class attribute `wants_symbols`, e.g. ans) always get symbol
streams one per item ("byte"), whatever `packing` says, with the blob's StreamInfo carrying the
itemsize and the largest alphabet; float streams still follow `shuffle`.

Codec "best" (bytegolf.codecs.best) is resolved here, per blob: every candidate compresses the blob
in its preferred packing, the smallest output wins (ties: the earlier candidate), and the blob is
handed to the container under the winner's own name and parameters.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import threading
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from bytegolf.artifact.container import Blob
from bytegolf.artifact.packing import manifest_int, np_dtype, read_stream, serial_dtype, serialize
from bytegolf.codecs import StreamInfo, get_codec
from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats.base import Encoded, Stream, TensorSpec

GROUPINGS = ("tensor", "role", "family", "all")
REORDER_MAX_ROWS = 16_384  # the greedy sort holds a rows × rows distance matrix
PACKINGS = ("byte", "bits")
TENSOR_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass
class LayoutConfig:
    """grouping: a blob per stream ("tensor"), per role and dtype ("role"), or one ("all");
    packing: symbols one per byte/uint16 ("byte") or bit-packed to their width ("bits");
    shuffle: split multi-byte non-symbol streams (floats) into byte planes;
    width: bit width for packing="bits" (0: each stream's ceil(log2 alphabet));
    reorder: tensor-name globs whose code rows are sorted by greedy L1 nearest neighbour (permutation stored);
    transpose: store 2-D code streams column by column."""

    grouping: str = "tensor"
    packing: str = "byte"
    shuffle: bool = False
    width: int = 0
    reorder: list[str] = field(default_factory=list)
    transpose: bool = False

    def __post_init__(self) -> None:
        if self.grouping not in GROUPINGS:
            raise ConfigError(f"unknown layout grouping {self.grouping!r}; choose one of {GROUPINGS}")
        if self.packing not in PACKINGS:
            raise ConfigError(f"unknown layout packing {self.packing!r}; choose one of {PACKINGS}")
        if not isinstance(self.shuffle, bool):
            raise ConfigError(f"layout shuffle must be true or false, got {self.shuffle!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or not 0 <= self.width <= 32:
            raise ConfigError(f"layout width must be an int in 0..32 (0: automatic), got {self.width!r}")
        if not isinstance(self.transpose, bool):
            raise ConfigError(f"layout transpose must be true or false, got {self.transpose!r}")
        if isinstance(self.reorder, str) or not all(isinstance(p, str) for p in self.reorder):
            raise ConfigError(f"layout reorder must be a list of tensor-name globs, got {self.reorder!r}")
        self.reorder = list(self.reorder)

    def describe(self) -> dict[str, Any]:
        """The settings as recorded in the artifact manifest."""
        return {
            "grouping": self.grouping,
            "packing": self.packing,
            "shuffle": self.shuffle,
            "width": self.width,
            "reorder": list(self.reorder),
            "transpose": self.transpose,
        }


def family_key(name: str) -> str:
    """A tensor's family: its name with layer indices wildcarded (blocks.3.mlp.fc.weight -> blocks.*.mlp.fc.weight)."""
    return re.sub(r"\.\d+\.", ".*.", name)


def greedy_l1_order(rows: np.ndarray) -> np.ndarray:
    """A row order that starts at row 0 and always steps to the nearest unvisited row in L1 distance."""
    import torch

    n = rows.shape[0]
    if n > REORDER_MAX_ROWS:
        raise ConfigError(f"layout reorder: {n} rows is more than the {REORDER_MAX_ROWS} the greedy sort supports")
    x = torch.from_numpy(np.ascontiguousarray(rows).astype(np.float32))
    dist = torch.cdist(x[None], x[None], p=1.0)[0].numpy().astype(np.float64)
    order = np.empty(n, dtype=np.int64)
    seen = np.zeros(n, dtype=bool)
    cur = 0
    for i in range(n):
        order[i] = cur
        seen[cur] = True
        if i + 1 < n:
            d = np.where(seen, np.inf, dist[cur])
            cur = int(np.argmin(d))
    return order


# ---- pack --------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One stream on its way to a blob."""

    ui: int
    name: str
    label: str
    role: str
    dtype: str
    data: np.ndarray  # contiguous, in the storage dtype (little-endian)
    alphabet: int | None
    family: str = ""


def _arrange(unit: Encoded, sname: str, data: np.ndarray, cfg: LayoutConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """A 2-D codes stream's array as stored (rows reordered and/or transposed) and its row permutation."""
    s = unit.streams[sname]
    if s.role != "codes" or data.ndim != 2:
        return data, None
    perm = None
    if (
        cfg.reorder
        and len(unit.tensors) == 1
        and any(fnmatch.fnmatchcase(unit.tensors[0].name, p) for p in cfg.reorder)
    ):
        perm = greedy_l1_order(data)
        data = data[perm]
    return (data.T if cfg.transpose else data), perm


def _items(units: list[Encoded], cfg: LayoutConfig | None = None) -> tuple[list[_Item], list[dict[str, Any]]]:
    """Every stream in the stable order, checked, with the units' manifest entries (placement added later)."""
    cfg = cfg or LayoutConfig()
    items, entries = [], []
    for ui, unit in enumerate(units):
        tensor_names = ", ".join(t.name for t in unit.tensors) or "no tensors"
        family = family_key(unit.tensors[0].name) if unit.tensors else ""
        streams = []
        for sname in sorted(unit.streams):
            s = unit.streams[sname]
            label = f"unit {ui} ({tensor_names}) stream {sname!r}"
            dt = serial_dtype(s, label)
            arranged, perm = _arrange(unit, sname, s.data.astype(np_dtype(dt), copy=False), cfg)
            data = np.ascontiguousarray(arranged).reshape(-1)
            items.append(_Item(ui, sname, label, s.role, dt, data, s.alphabet, family))
            entry = {"name": sname, "role": s.role, "dtype": dt, "shape": list(s.data.shape), "alphabet": s.alphabet}
            if cfg.transpose and s.role == "codes" and s.data.ndim == 2:
                entry["transposed"] = True
            if perm is not None:
                pname = f"{sname}#perm"
                rows = int(perm.size)
                pdt = "uint16" if rows <= 65536 else "uint32"
                items.append(
                    _Item(ui, pname, f"{label} permutation", "perm", pdt, perm.astype(np_dtype(pdt)), rows, family)
                )
                entry["perm"] = pname
                streams.append(entry)
                streams.append({"name": pname, "role": "perm", "dtype": pdt, "shape": [rows], "alphabet": rows})
                continue
            streams.append(entry)
        entries.append(
            {
                "format": unit.format,
                "meta": unit.meta,
                "tensors": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in unit.tensors],
                "streams": streams,
            }
        )
    return items, entries


def _sections(items: list[_Item]) -> list[list[_Item]]:
    by: dict[tuple[str, str], list[_Item]] = {}
    for it in items:
        by.setdefault((it.role, it.dtype), []).append(it)
    return list(by.values())


def _candidates(codec: str, codec_params: dict[str, Any]) -> tuple[list[tuple[str, dict[str, Any], bool]], int, float]:
    """(name, params, wants_symbols) for the codec, or for each of best's candidates; best's screen and margin."""
    c = get_codec(codec, **codec_params)
    inner = c.codecs() if codec == "best" else [c]  # type: ignore[attr-defined]
    out = [(x.name, x.config(), bool(getattr(x, "wants_symbols", False))) for x in inner]
    return out, int(getattr(c, "screen", 0)), float(getattr(c, "margin", 0.0))


_MEMO_BYTES = 256 << 20  # compressed outputs kept, most recent first (a search's probe and its landing)
_memo: OrderedDict[tuple, bytes] = OrderedDict()
_memo_lock = threading.Lock()


def forget_compressed() -> None:
    """Drop the remembered compressed outputs (a benchmark times the codecs afresh)."""
    with _memo_lock:
        _memo.clear()


def _compress(name: str, params: dict[str, Any], raw: bytes, info: StreamInfo) -> bytes:
    """codec(name, params).compress(raw, info), remembered: the codecs are deterministic, so the same
    input compressed again (a landed point written after its search probe) is looked up, not recomputed."""
    key = (name, json.dumps(params, sort_keys=True, default=str), info.itemsize, info.alphabet, len(raw))
    key += (hashlib.blake2b(raw, digest_size=20).digest(),)
    with _memo_lock:
        out = _memo.get(key)
        if out is not None:
            _memo.move_to_end(key)
            return out
    out = get_codec(name, **params).compress(raw, info)
    with _memo_lock:
        _memo[key] = out
        total = sum(len(v) for v in _memo.values())
        while total > _MEMO_BYTES and len(_memo) > 1:
            total -= len(_memo.popitem(last=False)[1])
    return out


def pack(
    units: list[Encoded],
    codec: str,
    codec_params: dict[str, Any],
    cfg: LayoutConfig,
    workers: int = 0,
    progress: bool = True,
) -> tuple[list[dict], list[Blob]]:
    """Manifest entries for the units and the blobs holding their streams, in the stable order above.

    Every blob is compressed here (Blob.stored); workers: blobs compressed at once (0: one per
    available core); the output does not depend on it. progress: a bar of blobs compressed."""
    items, entries = _items(units, cfg)
    candidates, screen, margin = _candidates(codec, codec_params)
    groups: dict[Any, list[_Item]] = defaultdict(list)
    keys = {
        "tensor": lambda it: (it.ui, it.name),
        "role": lambda it: (it.role, it.dtype),
        "family": lambda it: (it.family if it.role == "codes" else "", it.role, it.dtype),
        "all": lambda it: "all",
    }[cfg.grouping]
    for it in items:
        groups[keys(it)].append(it)

    def blob(members: list[_Item]) -> tuple[Blob, dict[int, dict[str, Any]]]:
        sections = _sections(members)
        layouts: dict[str, tuple[bytes, dict[int, dict[str, Any]], StreamInfo]] = {}
        for _, _, wants_symbols in candidates:
            packing = "byte" if wants_symbols else cfg.packing
            if packing not in layouts:
                layouts[packing] = serialize(sections, packing, cfg.shuffle, cfg.width)
        if len(candidates) == 1:
            name, params, wants_symbols = candidates[0]
            raw, where, info = layouts["byte" if wants_symbols else cfg.packing]
            return Blob(name, dict(params), raw, info, stored=_compress(name, params, raw, info)), where
        trials = list(candidates)
        if screen and any(len(layouts[p][0]) > screen for p in layouts):
            sizes = []
            for name, params, wants_symbols in trials:
                raw, _, info = layouts["byte" if wants_symbols else cfg.packing]
                cut = raw[: screen - screen % info.itemsize]
                sizes.append(len(_compress(name, params, cut, info)))
            trials = [t for t, n in zip(trials, sizes, strict=True) if n <= min(sizes) * (1 + margin)]
        choice = None
        for name, params, wants_symbols in trials:
            packing = "byte" if wants_symbols else cfg.packing
            raw, _, info = layouts[packing]
            out = _compress(name, params, raw, info)
            if choice is None or len(out) < len(choice[0]):
                choice = (out, name, params, packing)
        assert choice is not None
        out, name, params, packing = choice
        raw, where, info = layouts[packing]
        return Blob(name, dict(params), raw, info, stored=out), where

    # Blobs are compressed here, in parallel threads (the codecs' C libraries release the GIL); the
    # output does not depend on the thread count.
    jobs = workers or len(os.sched_getaffinity(0))
    bar = tqdm(total=len(groups), desc="write", unit="blob", leave=False, disable=not progress)

    def counted(members: list[_Item]) -> tuple[Blob, dict[int, dict[str, Any]]]:
        out = blob(members)
        bar.update()
        return out

    if jobs > 1 and len(groups) > 1:
        with ThreadPoolExecutor(min(jobs, len(groups))) as pool:
            done = list(pool.map(counted, groups.values()))
    else:
        done = [counted(members) for members in groups.values()]
    bar.close()
    blobs: list[Blob] = [b for b, _ in done]
    placed: dict[tuple[int, str], dict[str, Any]] = {}
    for bi, (members, (_, where)) in enumerate(zip(groups.values(), done, strict=True)):
        for it in members:
            placed[(it.ui, it.name)] = {"blob": bi, **where[id(it)]}
    for ui, entry in enumerate(entries):
        for st in entry["streams"]:
            st.update(placed[(ui, st["name"])])
    return entries, blobs


# ---- unpack ------------------------------------------------------------------------------------


def _unpermute(s: Stream, perm: Stream | None, name: str) -> Stream:
    """The stream with its rows put back in their original order by the stored permutation."""
    rows = s.data.shape[0] if s.data.ndim == 2 else -1
    if perm is None or perm.data.shape != (rows,):
        raise ArtifactError(f"stream {name}: its row permutation is missing or has the wrong length")
    p = perm.data.astype(np.int64)
    if not np.array_equal(np.sort(p), np.arange(rows)):
        raise ArtifactError(f"stream {name}: the stored row order is not a permutation of {rows} rows")
    out = np.empty_like(s.data)
    out[p] = s.data
    return Stream(out, s.role, s.alphabet)


def unpack(entries: Any, blobs: list[bytes]) -> list[Encoded]:
    """Rebuild the units' streams from manifest entries and decompressed blobs, checking every field."""
    if not isinstance(entries, list):
        raise ArtifactError("manifest 'units' must be a list")
    units = []
    for ui, e in enumerate(entries):
        try:
            tensors = [
                TensorSpec(str(t["name"]), tuple(manifest_int(d, "tensor dim") for d in t["shape"]), str(t["dtype"]))
                for t in e["tensors"]
            ]
            for t in tensors:
                if t.dtype not in TENSOR_DTYPES:
                    raise ArtifactError(f"tensor {t.name}: unknown dtype {t.dtype!r}")
            streams = {}
            perms: dict[str, str] = {}
            for st in e["streams"]:
                data = read_stream(st, blobs)
                if st.get("transposed") is True:
                    if data.ndim != 2:
                        raise ArtifactError(f"stream {st['name']}: only a 2-D stream can be transposed")
                    data = np.ascontiguousarray(data.reshape(-1).reshape(data.shape[::-1]).T)
                if "perm" in st:
                    perms[str(st["name"])] = str(st["perm"])
                alphabet = st["alphabet"]
                if alphabet is not None:
                    alphabet = manifest_int(alphabet, "alphabet")
                    if data.size and int(data.max()) >= alphabet:
                        raise ArtifactError(f"stream {st['name']} holds a symbol outside its alphabet of {alphabet}")
                dt = data.dtype
                streams[str(st["name"])] = Stream(
                    data.astype(dt.newbyteorder("="), copy=False), str(st["role"]), alphabet
                )
            for sname, pname in perms.items():
                streams[sname] = _unpermute(streams[sname], streams.pop(pname, None), sname)
            meta = e["meta"]
            if not isinstance(meta, dict):
                raise ArtifactError("unit meta must be an object")
            units.append(Encoded(str(e["format"]), tensors, streams, meta))
        except ArtifactError as exc:
            raise ArtifactError(f"unit {ui}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"unit {ui}: malformed manifest entry ({type(exc).__name__}: {exc})") from None
    return units
