"""The artifact file: a fixed header, a JSON manifest and codec-compressed blobs back to back.

Layout: MAGIC(8) | version u16 | flags u16 | manifest_len u32 | manifest_crc32 u32 (little-endian)
| manifest (canonical JSON, utf-8, zlib level 9; the CRC covers the stored bytes) | payload.
The manifest's "blobs" list describes each blob
(codec, params, itemsize, alphabet, offset, stored, raw, crc32); all other keys belong to the caller.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bytegolf.codecs.base import Codec, StreamInfo, get_codec
from bytegolf.errors import ArtifactError, ConfigError

MAGIC = b"BYTEGOLF"
VERSION = 1
_HEADER = struct.Struct("<8sHHII")
MAX_MANIFEST = 64 << 20  # bytes of manifest JSON a reader accepts
_BLOB_INTS = {"itemsize": 1, "offset": 0, "stored": 0, "raw": 0, "crc32": 0}  # key -> minimum
_BLOB_KEYS = {"codec", "params", "alphabet", *_BLOB_INTS}


@dataclass
class Blob:
    """One codec-compressed chunk of the artifact."""

    codec: str
    params: dict[str, Any]
    raw: bytes
    info: StreamInfo = field(default_factory=StreamInfo)
    stored: bytes | None = field(default=None, repr=False)  # the codec's output, when the caller has it already


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def write_artifact(path: str | os.PathLike[str], manifest: dict[str, Any], blobs: list[Blob]) -> int:
    """Compress `blobs`, write the artifact atomically and return its size in bytes (deterministic)."""
    if not isinstance(manifest, dict) or "blobs" in manifest:
        raise ConfigError("artifact manifest must be a dict without a 'blobs' key (the writer adds it)")
    entries, stored_parts, offset = [], [], 0
    for i, blob in enumerate(blobs):
        codec = get_codec(blob.codec, **blob.params)
        if len(blob.raw) % blob.info.itemsize:
            raise ConfigError(f"blob {i}: {len(blob.raw)} bytes is not a multiple of itemsize {blob.info.itemsize}")
        stored = blob.stored if blob.stored is not None else codec.compress(blob.raw, blob.info)
        entries.append(
            {
                "codec": blob.codec,
                "params": codec.config(),
                "itemsize": blob.info.itemsize,
                "alphabet": blob.info.alphabet,
                "offset": offset,
                "stored": len(stored),
                "raw": len(blob.raw),
                "crc32": zlib.crc32(stored),
            }
        )
        stored_parts.append(stored)
        offset += len(stored)
    try:
        meta = zlib.compress(_dumps({**manifest, "blobs": entries}), 9)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"artifact manifest is not JSON-serializable: {exc}") from None
    data = b"".join([_HEADER.pack(MAGIC, VERSION, 0, len(meta), zlib.crc32(meta)), meta, *stored_parts])
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(data)


def _blob_entries(name: str, manifest: Any) -> list[dict[str, Any]]:
    """The manifest's blob list, checked for types and ranges."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{name}: manifest is a JSON {type(manifest).__name__}, not an object")
    blobs = manifest.get("blobs")
    if not isinstance(blobs, list):
        raise ArtifactError(f"{name}: manifest has no 'blobs' list")
    for i, entry in enumerate(blobs):
        if not isinstance(entry, dict) or set(entry) != _BLOB_KEYS:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ArtifactError(f"{name}: blob {i} entry is malformed (keys {keys}, expected {sorted(_BLOB_KEYS)})")
        for key, low in _BLOB_INTS.items():
            value = entry[key]
            if type(value) is not int or value < low:
                raise ArtifactError(f"{name}: blob {i} {key} must be an int >= {low}, got {value!r}")
        alphabet = entry["alphabet"]
        if alphabet is not None and (type(alphabet) is not int or alphabet < 1):
            raise ArtifactError(f"{name}: blob {i} alphabet must be null or an int >= 1, got {alphabet!r}")
        if not isinstance(entry["codec"], str) or not isinstance(entry["params"], dict):
            raise ArtifactError(f"{name}: blob {i} codec must be a string and params an object")
        if entry["crc32"] >= 1 << 32:
            raise ArtifactError(f"{name}: blob {i} crc32 {entry['crc32']} does not fit in 32 bits")
        if entry["raw"] % entry["itemsize"]:
            raise ArtifactError(f"{name}: blob {i} raw size {entry['raw']} is not a multiple of {entry['itemsize']}")
    return blobs


def read_header(f: BinaryIO, name: str) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """Header, manifest and blob table of an open artifact, all checked: (manifest, blobs, payload size)."""
    size = os.fstat(f.fileno()).st_size
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise ArtifactError(f"{name}: {len(header)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, flags, meta_len, meta_crc = _HEADER.unpack(header)
    if magic != MAGIC:
        raise ArtifactError(f"{name}: not a bytegolf artifact (magic {magic!r})")
    if version != VERSION or flags:
        raise ArtifactError(f"{name}: unsupported format version {version} flags {flags:#x} (reads {VERSION})")
    if _HEADER.size + meta_len > size:
        raise ArtifactError(f"{name}: manifest length {meta_len} runs past the end of the {size}-byte file")
    meta = f.read(meta_len)
    if len(meta) != meta_len or zlib.crc32(meta) != meta_crc:
        raise ArtifactError(
            f"{name}: manifest CRC mismatch (stored {meta_crc:#010x}, computed {zlib.crc32(meta):#010x})"
        )
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(meta, MAX_MANIFEST)
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise ValueError(f"compressed manifest is truncated, oversized or followed by junk (limit {MAX_MANIFEST})")
        manifest = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError, zlib.error) as exc:
        raise ArtifactError(f"{name}: manifest is not valid JSON ({exc})") from None
    blobs = _blob_entries(name, manifest)
    offset = 0
    for i, entry in enumerate(blobs):
        if entry["offset"] != offset:
            raise ArtifactError(f"{name}: blob {i} starts at payload offset {entry['offset']}, expected {offset}")
        offset += entry["stored"]
    payload_size = size - _HEADER.size - meta_len
    if offset != payload_size:
        raise ArtifactError(f"{name}: blobs cover {offset} payload bytes but the file holds {payload_size}")
    return manifest, blobs, payload_size


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole checked manifest, blob table included (nothing is decompressed)."""
    try:
        with open(path, "rb") as f:
            return read_header(f, os.fspath(path))[0]
    except OSError as exc:
        raise ArtifactError(f"{os.fspath(path)}: cannot read artifact ({exc.strerror or exc})") from None


def stored_sizes(path: str | os.PathLike[str]) -> list[int]:
    """Compressed size of each blob, from a checked header and manifest (nothing is decompressed)."""
    return [entry["stored"] for entry in read_manifest(path)["blobs"]]


def read_artifact(path: str | os.PathLike[str], max_total_raw: int = 1 << 34) -> tuple[dict[str, Any], list[bytes]]:
    """Validate and decode an artifact: returns the caller's manifest and the decompressed blobs.

    Any problem with the file (missing, foreign, truncated, corrupt, oversized) raises ArtifactError,
    found before anything is decompressed except what only decoding can reveal.
    """
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            manifest, blobs, payload_size = read_header(f, name)
            total_raw = sum(entry["raw"] for entry in blobs)
            if total_raw > max_total_raw:
                raise ArtifactError(f"{name}: declared raw size {total_raw} bytes is too large (limit {max_total_raw})")
            codecs: list[Codec] = []
            for i, entry in enumerate(blobs):
                try:
                    codecs.append(get_codec(entry["codec"], **entry["params"]))
                except ConfigError as exc:
                    raise ArtifactError(f"{name}: blob {i}: {exc}") from None
            payload = f.read(payload_size + 1)
    except OSError as exc:
        raise ArtifactError(f"{name}: cannot read artifact ({exc.strerror or exc})") from None
    if len(payload) != payload_size:
        raise ArtifactError(
            f"{name}: file changed while reading ({len(payload)} payload bytes, expected {payload_size})"
        )
    for i, entry in enumerate(blobs):
        crc = zlib.crc32(payload[entry["offset"] : entry["offset"] + entry["stored"]])
        if crc != entry["crc32"]:
            raise ArtifactError(f"{name}: blob {i} CRC mismatch (stored {entry['crc32']:#010x}, computed {crc:#010x})")
    out = []
    for i, (entry, codec) in enumerate(zip(blobs, codecs, strict=True)):
        stored = payload[entry["offset"] : entry["offset"] + entry["stored"]]
        try:
            raw = codec.decompress(stored, entry["raw"], StreamInfo(entry["itemsize"], entry["alphabet"]))
        except Exception as exc:  # a codec bug or an unforeseen library error must not escape as another type
            raise ArtifactError(f"{name}: blob {i} ({entry['codec']}) does not decode: {exc}") from None
        if len(raw) != entry["raw"]:
            raise ArtifactError(f"{name}: blob {i} decodes to {len(raw)} bytes, declared {entry['raw']}")
        out.append(raw)
    user = {k: v for k, v in manifest.items() if k != "blobs"}
    return user, out
