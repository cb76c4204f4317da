"""Layout: how format streams become codec inputs (packing, shuffle, grouping, order) and back.

Order (stable, documented): streams are visited unit by unit in plan order and, within a unit,
by stream name. `grouping` makes one blob per stream ("tensor"), per (role, storage dtype)
("role"), per tensor family for codes and per (role, storage dtype) for the rest ("family": the
codes of the same matrix of every layer together, Parameter Golf's per-group buckets), or one blob
for everything ("all"); blobs follow
the first appearance of their key.
Inside a blob, streams are laid out in sections of one (role, storage dtype), sections in order of
first appearance, streams in visiting order within a section.

Packing of each stream, recorded in its manifest entry so `unpack` can undo it:
- "byte" (no key in the manifest): symbols one per item in the narrowest unsigned type (uint8,
  uint16 little-endian, uint32), other streams as their storage dtype (little-endian).
- "bits" (`"pack": "bits", "width": w`): symbol streams bit-packed at w bits per symbol,
  least-significant bit first, each stream padded to a whole byte; w = ceil(log2 alphabet), or
  `LayoutConfig.width` when set (an alphabet that does not fit is a ConfigError). A width equal to
  the byte type's is stored as "byte"; alphabet 1 takes 0 bytes.
- "planes" (`"pack": "planes", "stride": s`): with `shuffle`, every non-symbol stream of a
  multi-byte dtype (fp16, bf16, fp32, int16…) is byte-shuffled: a section's items are split into
  byte planes (byte 0 of every item of the section, then byte 1, …). A stream's plane p starts at
  `offset + p·stride`, where stride is the section's item count.

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
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bytegolf.codecs import StreamInfo, get_codec
from bytegolf.container import Blob
from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats.base import Encoded, Stream, TensorSpec

GROUPINGS = ("tensor", "role", "family", "all")
REORDER_MAX_ROWS = 16_384  # the greedy sort holds a rows × rows distance matrix
PACKINGS = ("byte", "bits")
FLOAT_DTYPES = {"float16": "<f2", "float32": "<f4"}
SYMBOL_DTYPES = {"uint8": "u1", "uint16": "<u2", "uint32": "<u4"}
INT_DTYPES = {"int8": "i1", "int16": "<i2", "int32": "<i4", "int64": "<i8"}
TENSOR_DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
_CHUNK = 1 << 20  # symbols per bit-packing step (a multiple of 8, so every chunk ends on a byte)


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


def _np_dtype(name: str) -> np.dtype:
    table = {**FLOAT_DTYPES, **SYMBOL_DTYPES, **INT_DTYPES}
    if name not in table:
        raise ArtifactError(f"stream dtype {name!r} is not a storage dtype")
    return np.dtype(table[name])


def storage_itemsize(dtype: str) -> int:
    """Bytes per element of a manifest storage dtype."""
    return _np_dtype(dtype).itemsize


def symbol_width(alphabet: int) -> int:
    """Bits needed for symbols 0..alphabet-1 (0 for a one-symbol alphabet)."""
    return max(alphabet - 1, 0).bit_length()


def _serial_dtype(s: Stream, label: str) -> str:
    """Storage dtype: symbols in the narrowest unsigned type, other streams as they are."""
    if s.alphabet is not None:
        if type(s.alphabet) is not int or s.alphabet < 1 or s.alphabet > 1 << 32:
            raise ConfigError(f"{label}: alphabet must be an int in 1..2^32, got {s.alphabet!r}")
        if s.data.size:
            lo, hi = int(s.data.min()), int(s.data.max())
            if lo < 0 or hi >= s.alphabet:
                bad = hi if hi >= s.alphabet else lo
                raise ConfigError(f"{label}: holds symbol {bad}, outside its declared alphabet of {s.alphabet}")
        return "uint8" if s.alphabet <= 256 else "uint16" if s.alphabet <= 65536 else "uint32"
    name = s.data.dtype.name
    if name in FLOAT_DTYPES or name in SYMBOL_DTYPES or name in INT_DTYPES:
        return name
    raise ConfigError(f"{label}: unsupported dtype {name}")


# ---- bit packing -------------------------------------------------------------------------------


def _bits_dtype(width: int) -> np.dtype:
    return np.dtype("<u4") if width > 16 else np.dtype("<u2") if width > 8 else np.dtype("u1")


def _group(width: int) -> int:
    """Symbols per group whose bits fill whole bytes within 64 bits (0: none; widths 9, 11, 13, ...)."""
    g = 8 // math.gcd(width, 8)
    return g if g * width <= 64 else 0


def pack_bits(symbols: np.ndarray, width: int) -> bytes:
    """Unsigned symbols at `width` bits each, least-significant bit first, padded to a whole byte."""
    x = np.ascontiguousarray(symbols.reshape(-1))
    if width == 0 or x.size == 0:
        return b""
    dt = _bits_dtype(width)
    x = x.astype(dt, copy=False)
    if width == 8 * dt.itemsize:
        return x.tobytes()
    g, parts = _group(width), []
    for s in range(0, x.size, _CHUNK):
        c = x[s : s + _CHUNK]
        if g:  # g symbols -> one uint64 -> g·width/8 bytes
            v = np.zeros(-(-c.size // g) * g, dtype=np.uint64)
            v[: c.size] = c
            v = v.reshape(-1, g)
            acc = v[:, 0].copy()
            for j in range(1, g):
                acc |= v[:, j] << np.uint64(j * width)
            parts.append(acc.astype("<u8").view(np.uint8).reshape(-1, 8)[:, : g * width // 8].tobytes())
        else:
            bits = np.unpackbits(c.view(np.uint8), bitorder="little").reshape(-1, 8 * dt.itemsize)
            parts.append(np.packbits(bits[:, :width], bitorder="little").tobytes())
    return b"".join(parts)[: (x.size * width + 7) // 8]


def unpack_bits(raw: bytes | memoryview, n: int, width: int) -> np.ndarray:
    """Inverse of pack_bits: n symbols of `width` bits from raw, in the narrowest unsigned type for width."""
    dt = _bits_dtype(width)
    native = dt.newbyteorder("=")
    if width == 0 or n == 0:
        return np.zeros(n, dtype=native)
    buf = np.frombuffer(raw, dtype=np.uint8)
    if width == 8 * dt.itemsize:
        return np.frombuffer(buf[: n * dt.itemsize].tobytes(), dtype=dt).astype(native)
    g, out = _group(width), np.empty(n, dtype=native)
    for s in range(0, n, _CHUNK):
        m = min(_CHUNK, n - s)
        start = s * width // 8  # whole bytes: _CHUNK is a multiple of 8
        if g:
            ng, gb = -(-m // g), g * width // 8
            chunk = buf[start : start + ng * gb]
            flat = np.zeros(ng * gb, dtype=np.uint8)
            flat[: chunk.size] = chunk
            words = np.zeros((ng, 8), dtype=np.uint8)
            words[:, :gb] = flat.reshape(ng, gb)
            acc = words.view("<u8").reshape(-1)
            vals = np.empty((ng, g), dtype=native)
            mask = np.uint64((1 << width) - 1)
            for j in range(g):
                vals[:, j] = (acc >> np.uint64(j * width)) & mask
            out[s : s + m] = vals.reshape(-1)[:m]
        else:
            chunk = buf[start : (s * width + m * width + 7) // 8]
            bits = np.unpackbits(chunk, bitorder="little")[: m * width].reshape(m, width)
            full = np.zeros((m, 8 * dt.itemsize), dtype=np.uint8)
            full[:, :width] = bits
            out[s : s + m] = np.packbits(full, axis=1, bitorder="little").reshape(-1).view(dt)
    return out


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
            dt = _serial_dtype(s, label)
            arranged, perm = _arrange(unit, sname, s.data.astype(_np_dtype(dt), copy=False), cfg)
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
                    _Item(ui, pname, f"{label} permutation", "perm", pdt, perm.astype(_np_dtype(pdt)), rows, family)
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


def _serialize(
    sections: list[list[_Item]], packing: str, shuffle: bool, width: int
) -> tuple[bytes, dict[int, dict[str, Any]], StreamInfo]:
    """A blob's bytes, each item's placement (keyed by id(item)), and the StreamInfo for its codec."""
    parts: list[bytes] = []
    where: dict[int, dict[str, Any]] = {}
    offset = 0
    kinds: set[tuple[str, int]] = set()
    alphabets: list[int] = []
    for sec in sections:
        first = sec[0]
        itemsize = first.data.dtype.itemsize
        if first.alphabet is None and shuffle and itemsize > 1:
            total = sum(it.data.size for it in sec)
            planes = np.concatenate([it.data.view(np.uint8).reshape(-1, itemsize) for it in sec]) if total else None
            pos = 0
            for it in sec:
                where[id(it)] = {"offset": offset + pos, "pack": "planes", "stride": total}
                pos += it.data.size
            if planes is not None:
                parts.append(np.ascontiguousarray(planes.T).tobytes())
            offset += total * itemsize
            kinds.add(("bytes", 1))
            continue
        for it in sec:
            if it.alphabet is not None and packing == "bits":
                w = width or symbol_width(it.alphabet)
                if it.alphabet > 1 << w:
                    raise ConfigError(f"{it.label}: alphabet of {it.alphabet} symbols does not fit in {w} bits")
                if w != itemsize * 8:
                    raw = pack_bits(it.data, w)
                    where[id(it)] = {"offset": offset, "pack": "bits", "width": w}
                    parts.append(raw)
                    offset += len(raw)
                    kinds.add(("bytes", 1))
                    continue
            raw = it.data.tobytes()
            where[id(it)] = {"offset": offset}
            parts.append(raw)
            offset += len(raw)
            kinds.add(("symbols" if it.alphabet is not None else "items", itemsize))
            if it.alphabet is not None:
                alphabets.append(it.alphabet)
    if len(kinds) == 1 and next(iter(kinds))[0] == "symbols" and next(iter(kinds))[1] <= 2:
        info = StreamInfo(next(iter(kinds))[1], max(alphabets))
    else:
        sizes = {size for _, size in kinds}
        info = StreamInfo(sizes.pop() if len(sizes) == 1 else 1, None)
    return b"".join(parts), where, info


def _candidates(codec: str, codec_params: dict[str, Any]) -> tuple[list[tuple[str, dict[str, Any], bool]], int, float]:
    """(name, params, wants_symbols) for the codec, or for each of best's candidates; best's screen and margin."""
    c = get_codec(codec, **codec_params)
    inner = c.codecs() if codec == "best" else [c]  # type: ignore[attr-defined]
    out = [(x.name, x.config(), bool(getattr(x, "wants_symbols", False))) for x in inner]
    return out, int(getattr(c, "screen", 0)), float(getattr(c, "margin", 0.0))


def pack(
    units: list[Encoded], codec: str, codec_params: dict[str, Any], cfg: LayoutConfig
) -> tuple[list[dict], list[Blob]]:
    """Manifest entries for the units and the blobs holding their streams, in the stable order above."""
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
    blobs: list[Blob] = []
    placed: dict[tuple[int, str], dict[str, Any]] = {}
    for bi, members in enumerate(groups.values()):
        sections = _sections(members)
        layouts: dict[str, tuple[bytes, dict[int, dict[str, Any]], StreamInfo]] = {}
        for _, _, wants_symbols in candidates:
            packing = "byte" if wants_symbols else cfg.packing
            if packing not in layouts:
                layouts[packing] = _serialize(sections, packing, cfg.shuffle, cfg.width)
        if len(candidates) == 1:
            name, params, wants_symbols = candidates[0]
            raw, where, info = layouts["byte" if wants_symbols else cfg.packing]
            blobs.append(Blob(name, dict(params), raw, info))
        else:
            trials = list(candidates)
            if screen and any(len(layouts[p][0]) > screen for p in layouts):
                sizes = []
                for name, params, wants_symbols in trials:
                    raw, _, info = layouts["byte" if wants_symbols else cfg.packing]
                    cut = raw[: screen - screen % info.itemsize]
                    sizes.append(len(get_codec(name, **params).compress(cut, info)))
                trials = [t for t, n in zip(trials, sizes, strict=True) if n <= min(sizes) * (1 + margin)]
            choice = None
            for name, params, wants_symbols in trials:
                packing = "byte" if wants_symbols else cfg.packing
                raw, _, info = layouts[packing]
                out = get_codec(name, **params).compress(raw, info)
                if choice is None or len(out) < len(choice[0]):
                    choice = (out, name, params, packing)
            assert choice is not None
            out, name, params, packing = choice
            raw, where, info = layouts[packing]
            blobs.append(Blob(name, dict(params), raw, info, stored=out))
        for it in members:
            placed[(it.ui, it.name)] = {"blob": bi, **where[id(it)]}
    for ui, entry in enumerate(entries):
        for st in entry["streams"]:
            st.update(placed[(ui, st["name"])])
    return entries, blobs


# ---- unpack ------------------------------------------------------------------------------------


def _int(v: Any, what: str) -> int:
    if type(v) is not int or v < 0:
        raise ArtifactError(f"{what} must be a non-negative integer, got {v!r}")
    return v


def _read_stream(st: dict[str, Any], blobs: list[bytes]) -> np.ndarray:
    """One stream's array from its manifest entry, every field checked against the blob."""
    name = st["name"]
    dt = _np_dtype(st["dtype"])
    shape = tuple(_int(d, "stream dim") for d in st["shape"])
    n = math.prod(shape)
    bi, off = _int(st["blob"], "blob index"), _int(st["offset"], "stream offset")
    if bi >= len(blobs):
        raise ArtifactError(f"stream {name} points to blob {bi} of {len(blobs)}")
    blob = blobs[bi]
    pack = st.get("pack", "byte")
    alphabet = st["alphabet"]
    if pack == "byte":
        if off + n * dt.itemsize > len(blob):
            raise ArtifactError(f"stream {name} runs past the end of blob {bi}")
        data = np.frombuffer(blob, dtype=dt, count=n, offset=off)
    elif pack == "bits":
        width = st.get("width")
        if type(width) is not int or not 0 <= width <= 32:
            raise ArtifactError(f"stream {name}: bit width {width!r} is not an int in 0..32")
        if type(alphabet) is not int or not 1 <= alphabet <= 1 << width or alphabet > 1 << (8 * dt.itemsize):
            raise ArtifactError(f"stream {name}: bit-packed at {width} bits but its alphabet is {alphabet!r}")
        nbytes = (n * width + 7) // 8
        if off + nbytes > len(blob):
            raise ArtifactError(f"stream {name} runs past the end of blob {bi}")
        data = unpack_bits(memoryview(blob)[off : off + nbytes], n, width)
        if data.size and int(data.max()) >= alphabet:
            raise ArtifactError(f"stream {name} holds a symbol outside its alphabet of {alphabet}")
        data = data.astype(dt, copy=False)
    elif pack == "planes":
        stride = st.get("stride")
        if type(stride) is not int or stride < n or dt.itemsize < 2 or alphabet is not None:
            raise ArtifactError(f"stream {name}: byte planes with stride {stride!r} do not fit {n} {st['dtype']} items")
        if off + (dt.itemsize - 1) * stride + n > len(blob):
            raise ArtifactError(f"stream {name} runs past the end of blob {bi}")
        buf = np.frombuffer(blob, dtype=np.uint8)
        planes = np.stack([buf[off + p * stride : off + p * stride + n] for p in range(dt.itemsize)], axis=1)
        data = np.ascontiguousarray(planes).view(dt).reshape(-1)
    else:
        raise ArtifactError(f"stream {name}: unknown packing {pack!r} (expected byte, bits or planes)")
    return data.reshape(shape)


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
                TensorSpec(str(t["name"]), tuple(_int(d, "tensor dim") for d in t["shape"]), str(t["dtype"]))
                for t in e["tensors"]
            ]
            for t in tensors:
                if t.dtype not in TENSOR_DTYPES:
                    raise ArtifactError(f"tensor {t.name}: unknown dtype {t.dtype!r}")
            streams = {}
            perms: dict[str, str] = {}
            for st in e["streams"]:
                data = _read_stream(st, blobs)
                if st.get("transposed") is True:
                    if data.ndim != 2:
                        raise ArtifactError(f"stream {st['name']}: only a 2-D stream can be transposed")
                    data = np.ascontiguousarray(data.reshape(-1).reshape(data.shape[::-1]).T)
                if "perm" in st:
                    perms[str(st["name"])] = str(st["perm"])
                alphabet = st["alphabet"]
                if alphabet is not None:
                    alphabet = _int(alphabet, "alphabet")
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


# ---- bytes by role -----------------------------------------------------------------------------


def stream_nbytes(st: dict[str, Any]) -> int:
    """Bytes a stream occupies in its (decompressed) blob, from its manifest entry."""
    n = math.prod(st["shape"])
    if st.get("pack") == "bits":
        return (n * st["width"] + 7) // 8
    return n * storage_itemsize(st["dtype"])


def role_report(
    units: list[Encoded], entries: list[dict[str, Any]], blob_stored: list[int], final_bytes: int
) -> dict[str, dict[str, Any]]:
    """Per stream role: stored bytes, raw bytes, order-0 bounds, bytes/bound and share of the file.

    A blob's stored bytes are split among its streams in proportion to the bytes they occupy in
    the blob (after packing). "bound": n·H₀/8 of the symbols for symbol streams, the order-0 byte
    entropy of the stored bytes for the others; "plane_bound": the same per byte plane (≤ bound);
    "packed": bytes in the blob before the codec. The "header" role is the container header plus
    the manifest (final_bytes − Σ blob_stored).
    """
    from bytegolf.codecs import bounds

    roles: dict[str, dict[str, Any]] = {}
    blob_roles: dict[int, dict[str, int]] = {}
    for unit, entry in zip(units, entries, strict=True):
        for st in entry["streams"]:
            s = unit.streams.get(st["name"])
            n = math.prod(st["shape"])
            raw = n * storage_itemsize(st["dtype"])
            packed = stream_nbytes(st)
            blob_roles.setdefault(st["blob"], {}).setdefault(st["role"], 0)
            blob_roles[st["blob"]][st["role"]] += packed
            r = roles.setdefault(st["role"], {"bytes": 0.0, "raw": 0, "packed": 0, "bound": 0.0, "plane_bound": 0.0})
            r["raw"] += raw
            r["packed"] += packed
            if s is None:  # a layout permutation: log2(n!) bits
                perm_bits = math.lgamma(n + 1) / math.log(2)
                b = {"bound": perm_bits / 8, "plane_bound": perm_bits / 8}
            else:
                b = bounds.stream_bound(s.data, s.alphabet)
            r["bound"] += b["bound"]
            r["plane_bound"] += b["plane_bound"]
    for bi, by_role in blob_roles.items():
        total = sum(by_role.values())
        for role, packed in by_role.items():
            roles[role]["bytes"] += blob_stored[bi] * packed / total if total else 0.0
    header = final_bytes - sum(blob_stored)
    roles["header"] = {"bytes": float(header), "raw": header, "packed": header, "bound": 0.0, "plane_bound": 0.0}
    for r in roles.values():
        r["bytes"] = round(r["bytes"], 1)
        r["bound"] = round(r["bound"], 1)
        r["plane_bound"] = round(r["plane_bound"], 1)
        r["ratio"] = r["bytes"] / r["bound"] if r["bound"] > 0 else None
        r["share"] = r["bytes"] / final_bytes if final_bytes else 0.0
    return roles


def storage_summary(
    units: list[Encoded], entries: list[dict[str, Any]], blob_stored: list[int], final_bytes: int
) -> dict[str, Any]:
    """role_report plus whole-artifact totals: bound, final bytes / bound, payload bytes / bound."""
    roles = role_report(units, entries, blob_stored, final_bytes)
    bound = sum(r["bound"] for r in roles.values())
    payload = sum(blob_stored)
    return {
        "bytes_by_role": roles,
        "entropy_bound_bytes": bound,
        "bytes_over_bound": final_bytes / bound if bound > 0 else None,
        "payload_over_bound": payload / bound if bound > 0 else None,
        "header_bytes": final_bytes - payload,
    }
