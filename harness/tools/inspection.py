"""`bytegolf inspect` and `bytegolf decode`: what an artifact file holds, and its weights as safetensors.

inspect lists every stream of the manifest (tensor, format, stream, role, codec, stored bytes, raw
bytes, order-0 entropy bound), then totals by role and the grand total. Stored bytes are the
codec's output: a blob that holds one stream (layout grouping "tensor") is that stream's; a blob
shared by several streams is split among them in proportion to the bytes each occupies in the
blob before the codec (whole bytes, largest remainders, so each blob's shares add up to it
exactly). The grand total is Σ stored + the container's header (fixed 20 bytes) + its compressed
manifest, which is the file size exactly. Raw bytes are the stream in its storage dtype, before any
bit packing. The entropy bound is computed from the decoded streams (bytegolf.codecs.bounds: n·H₀/8
for symbol streams, order-0 byte entropy for the others, log2(n!)/8 for a layout permutation).

Both read the file through the same path as evaluation (container → layout → format decoders), so a
corrupt or truncated artifact ends in the container's one-line ArtifactError.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from bytegolf.artifact import container, layout, packing
from bytegolf.artifact import file as artifact
from bytegolf.codecs import bounds
from bytegolf.measure import accounting

HEADER_BYTES = container._HEADER.size  # magic, version, flags, manifest length, manifest CRC


@dataclass
class StreamRow:
    """One stream of the artifact as inspect lists it."""

    tensor: str
    format: str
    stream: str
    role: str
    codec: str
    blob: int
    stored: int
    raw: int
    packed: int
    bound: float


@dataclass
class Inspection:
    """Every stream of an artifact and the file's byte accounting (file_bytes = payload + header + manifest)."""

    path: Path
    rows: list[StreamRow]
    blob_stored: list[int]
    file_bytes: int
    manifest_bytes: int

    @property
    def payload_bytes(self) -> int:
        return sum(self.blob_stored)

    @property
    def overhead_bytes(self) -> int:
        """Container header plus compressed manifest."""
        return HEADER_BYTES + self.manifest_bytes

    def by_role(self) -> dict[str, dict[str, float]]:
        """Per role: streams, stored, raw and packed bytes, entropy bound (roles in order of first appearance)."""
        out: dict[str, dict[str, float]] = {}
        for r in self.rows:
            t = out.setdefault(r.role, {"streams": 0, "stored": 0, "raw": 0, "packed": 0, "bound": 0.0})
            t["streams"] += 1
            t["stored"] += r.stored
            t["raw"] += r.raw
            t["packed"] += r.packed
            t["bound"] += r.bound
        return out


def _split(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to weights in whole units that add up to it (largest remainders)."""
    w = sum(weights)
    if not weights:
        return []
    if w == 0:
        return [total // len(weights) + (i < total % len(weights)) for i in range(len(weights))]
    exact = [total * x / w for x in weights]
    out = [math.floor(e) for e in exact]
    for i in sorted(range(len(weights)), key=lambda i: out[i] - exact[i])[: total - sum(out)]:
        out[i] += 1
    return out


def inspect_artifact(path: str | os.PathLike[str]) -> Inspection:
    """Read, check and decode an artifact's streams and account for every byte of the file."""
    path = Path(path)
    manifest, blobs = container.read_artifact(path)  # ArtifactError for anything wrong with the file
    table = container.read_manifest(path)["blobs"]
    entries = manifest.get("units")
    units = layout.unpack(entries, blobs)
    file_bytes = path.stat().st_size
    blob_stored = [int(b["stored"]) for b in table]
    placed: list[tuple[int, dict, int]] = []  # (unit index, stream entry, packed bytes)
    for ui, entry in enumerate(entries):
        for st in entry["streams"]:
            placed.append((ui, st, accounting.stream_nbytes(st)))
    shares: dict[int, int] = {}
    for bi, stored in enumerate(blob_stored):
        members = [i for i, (_, st, _) in enumerate(placed) if st["blob"] == bi]
        for i, share in zip(members, _split(stored, [placed[i][2] for i in members]), strict=True):
            shares[i] = share
    rows = []
    for i, (ui, st, packed) in enumerate(placed):
        entry, unit = entries[ui], units[ui]
        n = math.prod(st["shape"])
        s = unit.streams.get(st["name"])
        # a layout permutation is no format stream: log2(n!) bits
        bound = math.lgamma(n + 1) / math.log(2) / 8 if s is None else bounds.stream_bound(s.data, s.alphabet)["bound"]
        rows.append(
            StreamRow(
                tensor=", ".join(t["name"] for t in entry["tensors"]),
                format=str(entry["format"]),
                stream=str(st["name"]),
                role=str(st["role"]),
                codec=str(table[st["blob"]]["codec"]),
                blob=int(st["blob"]),
                stored=shares.get(i, 0),
                raw=n * packing.storage_itemsize(st["dtype"]),
                packed=packed,
                bound=bound,
            )
        )
    manifest_bytes = file_bytes - HEADER_BYTES - sum(blob_stored)
    return Inspection(path, rows, blob_stored, file_bytes, manifest_bytes)


def _ratio(stored: float, bound: float) -> str:
    return f"{stored / bound:.3f}" if bound > 0 else "-"


def render(ins: Inspection, max_name: int = 40) -> str:
    """The inspect printout: one line per stream, totals by role, the grand total."""

    def short(s: str) -> str:
        return s if len(s) <= max_name else s[: max_name - 1] + "…"

    head = f"{'tensor':<{max_name}} {'format':<12} {'stream':<10} {'role':<9} {'codec':<8} {'blob':>4} "
    head += f"{'stored B':>11} {'raw B':>11} {'bound B':>12} {'×bound':>7}"
    lines = [f"{ins.path}: {ins.file_bytes:,} bytes, {len(ins.rows)} streams in {len(ins.blob_stored)} blobs", head]
    for r in ins.rows:
        lines.append(
            f"{short(r.tensor):<{max_name}} {r.format:<12} {r.stream:<10} {r.role:<9} {r.codec:<8} {r.blob:>4} "
            f"{r.stored:>11,} {r.raw:>11,} {r.bound:>12,.1f} {_ratio(r.stored, r.bound):>7}"
        )
    lines += [
        "",
        f"{'role':<9} {'streams':>7} {'stored B':>11} {'raw B':>11} {'bound B':>12} {'×bound':>7} {'share':>6}",
    ]
    for role, t in ins.by_role().items():
        lines.append(
            f"{role:<9} {t['streams']:>7} {t['stored']:>11,} {t['raw']:>11,} {t['bound']:>12,.1f} "
            f"{_ratio(t['stored'], t['bound']):>7} {t['stored'] / ins.file_bytes:>6.1%}"
        )
    bound = sum(r.bound for r in ins.rows)
    raw = sum(r.raw for r in ins.rows)
    lines.append(
        f"{'header':<9} {'':>7} {ins.overhead_bytes:>11,} {'':>11} {'':>12} {'':>7} "
        f"{ins.overhead_bytes / ins.file_bytes:>6.1%}  ({HEADER_BYTES} B container header + "
        f"{ins.manifest_bytes:,} B compressed manifest)"
    )
    total = ins.payload_bytes + ins.overhead_bytes
    lines.append(
        f"{'total':<9} {len(ins.rows):>7} {total:>11,} {raw:>11,} {bound:>12,.1f} {_ratio(total, bound):>7} "
        f"{total / ins.file_bytes:>6.1%}  (= file size {ins.file_bytes:,} B)"
    )
    return "\n".join(lines)


def decode_to_safetensors(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Decode an artifact as evaluation does (artifact.read) and write its weights to a safetensors file."""
    from bytegolf.model.checkpoint import save_state_dict

    decoded, _ = artifact.read(Path(path))
    save_state_dict(decoded, out)
    return decoded


def inspect_main(args: list[str]) -> None:
    """`bytegolf inspect ARTIFACT`: print the artifact's streams and byte accounting."""
    ap = argparse.ArgumentParser(prog="bytegolf inspect", description="an artifact's streams, bytes and bounds")
    ap.add_argument("artifact", type=Path)
    ns = ap.parse_args(args)
    print(render(inspect_artifact(ns.artifact)))


def decode_main(args: list[str]) -> None:
    """`bytegolf decode ARTIFACT OUT.safetensors`: write the decoded weights."""
    ap = argparse.ArgumentParser(prog="bytegolf decode", description="decode an artifact's weights to safetensors")
    ap.add_argument("artifact", type=Path)
    ap.add_argument("out", type=Path)
    ns = ap.parse_args(args)
    decoded = decode_to_safetensors(ns.artifact, ns.out)
    params = sum(t.numel() for t in decoded.values())
    print(f"{ns.out}: {len(decoded)} tensors, {params:,} parameters")
