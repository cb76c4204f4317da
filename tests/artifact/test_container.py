"""The artifact container: exact round trips, determinism, atomic writes, and corruption always caught."""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bytegolf.artifact.container import MAGIC, VERSION, Blob, read_artifact, stored_sizes, write_artifact
from bytegolf.codecs import StreamInfo
from bytegolf.errors import ArtifactError, ConfigError

HEADER = struct.Struct("<8sHHII")
MANIFEST = {"units": "bytes", "layout": {"groups": ["q", "k"], "order": [2, 0, 1]}, "note": "ünïcode ok"}


def make_blobs() -> list[Blob]:
    rng = np.random.default_rng(7)
    p = np.exp(-((np.arange(16) - 7.5) ** 2) / 8.0)
    symbols = rng.choice(16, 24000, p=p / p.sum()).astype(np.uint8).tobytes()
    int16 = np.round(rng.normal(0, 30, 6000)).astype("<i2").tobytes()
    text = b"the artifact must fit a byte cap; " * 300
    return [
        Blob("zlib", {"level": 9}, symbols, StreamInfo(alphabet=16)),
        Blob("zstd", {"level": 19}, int16, StreamInfo(itemsize=2)),
        Blob("brotli", {"quality": 11, "lgwin": 22}, text),
        Blob("lzma", {}, symbols[:5000] + int16[:3000]),
        Blob("raw", {}, rng.bytes(3000)),
        Blob("zstd", {"level": 3, "long": True}, b""),
        Blob("brotli", {}, symbols[:8000], StreamInfo(alphabet=16)),
    ]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("art") / "model.bgz"
    size = write_artifact(path, MANIFEST, make_blobs())
    data = path.read_bytes()
    assert size == len(data)
    assert 20_000 <= size <= 50_000
    return path, data


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The manifest (with 'blobs') and the payload of an artifact's bytes."""
    _, _, _, meta_len, _ = HEADER.unpack_from(data)
    return json.loads(zlib.decompress(data[HEADER.size : HEADER.size + meta_len])), data[HEADER.size + meta_len :]


def rebuild(manifest: Any, payload: bytes, *, raw_meta: bytes | None = None) -> bytes:
    """Artifact bytes with this manifest and a correct manifest CRC, so readers must look deeper."""
    meta = raw_meta if raw_meta is not None else json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    meta = zlib.compress(meta, 9)
    return HEADER.pack(MAGIC, VERSION, 0, len(meta), zlib.crc32(meta)) + meta + payload


def edit(data: bytes, fn: Callable[[dict[str, Any]], Any], *, replace: bool = False) -> bytes:
    """Artifact bytes whose manifest `fn` changed in place (or, with `replace`, returned anew)."""
    manifest, payload = split(data)
    result = fn(manifest)
    return rebuild(result if replace else manifest, payload)


def test_round_trip(artifact: tuple[Path, bytes]) -> None:
    path, data = artifact
    manifest, blobs = read_artifact(path)
    assert manifest == MANIFEST
    assert blobs == [b.raw for b in make_blobs()]
    magic, version, flags, meta_len, crc = HEADER.unpack_from(data)
    assert (magic, version, flags) == (MAGIC, 1, 0)
    meta = data[HEADER.size : HEADER.size + meta_len]
    assert zlib.crc32(meta) == crc
    text = zlib.decompress(meta)
    full = json.loads(text)
    assert text == json.dumps(full, sort_keys=True, separators=(",", ":")).encode()
    payload = data[HEADER.size + meta_len :]
    offset = 0
    for entry, blob in zip(full["blobs"], make_blobs(), strict=True):
        assert entry["codec"] == blob.codec and entry["offset"] == offset and entry["raw"] == len(blob.raw)
        assert entry["itemsize"] == blob.info.itemsize and entry["alphabet"] == blob.info.alphabet
        assert entry["crc32"] == zlib.crc32(payload[offset : offset + entry["stored"]])
        offset += entry["stored"]
    assert offset == len(payload)
    assert stored_sizes(path) == [entry["stored"] for entry in full["blobs"]]
    assert full["blobs"][3]["params"] == {"preset": 9, "extreme": True}  # defaults are recorded
    assert full["blobs"][0]["stored"] < 0.5 * 24000  # 3.05-bit symbols were compressed, not stored


def test_deterministic_and_atomic(tmp_path: Path, artifact: tuple[Path, bytes]) -> None:
    a, b = tmp_path / "a.bgz", tmp_path / "b.bgz"
    write_artifact(a, MANIFEST, make_blobs())
    write_artifact(b, dict(reversed(MANIFEST.items())), make_blobs())
    assert a.read_bytes() == b.read_bytes() == artifact[1]
    write_artifact(a, {"units": "other"}, [Blob("raw", {}, b"xyz")])  # overwrite in place
    assert read_artifact(a) == ({"units": "other"}, [b"xyz"])
    with pytest.raises(ConfigError):
        write_artifact(a, {"bad": object()}, [Blob("raw", {}, b"abc")])
    with pytest.raises(ConfigError, match="blobs"):
        write_artifact(a, {"blobs": []}, [])
    with pytest.raises(ConfigError, match="itemsize"):
        write_artifact(a, {}, [Blob("raw", {}, b"abc", StreamInfo(itemsize=2))])
    with pytest.raises(ConfigError, match="nope"):
        write_artifact(a, {}, [Blob("nope", {}, b"abc")])
    assert read_artifact(a) == ({"units": "other"}, [b"xyz"]), "a failed write must leave the old file alone"
    assert sorted(os.listdir(tmp_path)) == ["a.bgz", "b.bgz"], "no temporary files may remain"


def test_empty_artifact(tmp_path: Path) -> None:
    path = tmp_path / "empty.bgz"
    assert write_artifact(path, {}, []) == HEADER.size + len(zlib.compress(b'{"blobs":[]}', 9))
    assert read_artifact(path) == ({}, [])


def _header_edit(data: bytes, field: int, value: int) -> bytes:
    fields = list(HEADER.unpack_from(data))
    fields[field] = value
    return HEADER.pack(*fields) + data[HEADER.size :]


def _set(i: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["blobs"][i].__setitem__(key, value)


def _swap_offsets(i: int, j: int) -> Callable[[dict[str, Any]], None]:
    def fn(m: dict[str, Any]) -> None:
        a, b = m["blobs"][i], m["blobs"][j]
        a["offset"], b["offset"] = b["offset"], a["offset"]

    return fn


def structured_corruptions(data: bytes) -> list[tuple[str, bytes]]:
    """Hand-picked header and manifest edits; manifest edits carry a fixed-up CRC."""
    manifest, payload = split(data)
    n = len(manifest["blobs"])
    cases = [
        ("magic", b"BYTEGOLD" + data[8:]),
        ("version 0", _header_edit(data, 1, 0)),
        ("version 2", _header_edit(data, 1, 2)),
        ("version max", _header_edit(data, 1, 0xFFFF)),
        ("flags", _header_edit(data, 2, 1)),
        ("manifest_len 0", _header_edit(data, 3, 0)),
        ("manifest_len huge", _header_edit(data, 3, 0xFFFFFFFF)),
        ("manifest_len +1", _header_edit(data, 3, HEADER.unpack_from(data)[3] + 1)),
        ("manifest_len -1", _header_edit(data, 3, HEADER.unpack_from(data)[3] - 1)),
        ("manifest crc", _header_edit(data, 4, HEADER.unpack_from(data)[4] ^ 1)),
        ("not json", rebuild(None, payload, raw_meta=b"{not json")),
        ("not utf-8", rebuild(None, payload, raw_meta=b'{"blobs":[],"x":"\xff"}')),
        ("deep json", rebuild(None, payload, raw_meta=b"[" * 100_000 + b"]" * 100_000)),
        ("NaN", rebuild(None, payload, raw_meta=b'{"blobs":[],"x":NaN}')),
        ("list", edit(data, lambda m: m["blobs"], replace=True)),
        ("no blobs", edit(data, lambda m: {k: v for k, v in m.items() if k != "blobs"}, replace=True)),
        ("blobs dict", edit(data, lambda m: {**m, "blobs": {"0": m["blobs"][0]}}, replace=True)),
        ("blob not dict", edit(data, lambda m: m["blobs"].__setitem__(0, [1, 2]))),
        ("missing key", edit(data, lambda m: m["blobs"][1].pop("crc32"))),
        ("extra key", edit(data, _set(1, "extra", 1))),
        ("blob dropped", edit(data, lambda m: m["blobs"].pop())),
        ("blob duplicated", edit(data, lambda m: m["blobs"].append(m["blobs"][-1]))),
        ("unknown codec", edit(data, _set(0, "codec", "zpaq"))),
        ("codec not str", edit(data, _set(0, "codec", 5))),
        ("params not dict", edit(data, _set(0, "params", [9]))),
        ("params rejected", edit(data, _set(0, "params", {"level": 99}))),
        ("params unknown", edit(data, _set(0, "params", {"speed": 1}))),
        ("raw 2**40", edit(data, _set(0, "raw", 2**40))),
        ("raw bool", edit(data, _set(0, "raw", True))),
        ("raw float", edit(data, _set(0, "raw", 1.0 * len(make_blobs()[0].raw)))),
        ("raw str", edit(data, _set(0, "raw", "24000"))),
        ("raw -1", edit(data, _set(0, "raw", -1))),
        ("raw odd for itemsize 2", edit(data, _set(1, "raw", 11999))),
        ("itemsize 0", edit(data, _set(0, "itemsize", 0))),
        ("alphabet 0", edit(data, _set(0, "alphabet", 0))),
        ("alphabet str", edit(data, _set(0, "alphabet", "16"))),
        ("offset -1", edit(data, _set(0, "offset", -1))),
        ("offset null", edit(data, _set(2, "offset", None))),
        ("stored +1", edit(data, lambda m: m["blobs"][-1].__setitem__("stored", m["blobs"][-1]["stored"] + 1))),
        ("stored -1", edit(data, lambda m: m["blobs"][-1].__setitem__("stored", m["blobs"][-1]["stored"] - 1))),
        ("crc 2**32", edit(data, _set(0, "crc32", 2**32))),
        ("crc wrong", edit(data, lambda m: m["blobs"][2].__setitem__("crc32", m["blobs"][2]["crc32"] ^ 4))),
        ("payload trailing", rebuild(manifest, payload + b"\x00")),
        ("payload short", rebuild(manifest, payload[:-1])),
    ]
    for i in range(n):
        for j in range(i + 1, n):
            if manifest["blobs"][i]["offset"] != manifest["blobs"][j]["offset"]:
                cases.append((f"swap offsets {i} {j}", edit(data, _swap_offsets(i, j))))
    for i, entry in enumerate(manifest["blobs"]):  # sizes that only decoding can reveal
        step = entry["itemsize"]
        cases.append((f"blob {i} raw +item", edit(data, _set(i, "raw", entry["raw"] + step))))
        if entry["raw"]:
            cases.append((f"blob {i} raw -item", edit(data, _set(i, "raw", entry["raw"] - step))))
    return cases


def random_corruptions(data: bytes, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Bit flips anywhere and in the payload, truncations and appended bytes."""
    _, _, _, meta_len, _ = HEADER.unpack_from(data)
    start = HEADER.size + meta_len
    cases = []
    for k in range(120):
        buf = bytearray(data)
        low = start if k % 3 == 0 else 0  # a third of the flips land in the payload
        for pos in rng.integers(low, len(buf), size=1 + k % 8):
            buf[pos] ^= 1 << int(rng.integers(8))
        if buf != data:
            cases.append((f"flip {k}", bytes(buf)))
    for cut in [0, 1, 7, 19, 20, 21, start - 1, start, len(data) - 1, *rng.integers(0, len(data), 40)]:
        cases.append((f"truncate {cut}", data[:cut]))
    for k in range(20):
        cases.append((f"append {k}", data + rng.bytes(1 + k * 7)))
    return cases


def test_corruptions_always_raise_artifact_error(tmp_path: Path, artifact: tuple[Path, bytes]) -> None:
    data = artifact[1]
    cases = structured_corruptions(data) + random_corruptions(data, np.random.default_rng(2024))
    assert len(cases) >= 200
    path = tmp_path / "bad.bgz"
    structural = 0
    started = time.perf_counter()
    for label, corrupt in cases:
        assert corrupt != data, label
        path.write_bytes(corrupt)
        t0 = time.perf_counter()
        with pytest.raises(ArtifactError) as exc:  # any other exception type fails the test
            read_artifact(path)
        assert time.perf_counter() - t0 < 2.0, label
        assert str(path) in str(exc.value), (label, str(exc.value))
        try:
            stored_sizes(path)  # checks header and manifest only; may pass when the damage is deeper
        except ArtifactError:
            structural += 1
    assert time.perf_counter() - started < 20.0
    assert structural >= 100


def test_codec_level_corruption_with_fixed_crcs(tmp_path: Path, artifact: tuple[Path, bytes]) -> None:
    """Damage inside compressed blobs, CRCs fixed up: the codecs must fail cleanly or decode to the declared size."""
    manifest, payload = split(artifact[1])
    rng = np.random.default_rng(99)
    path = tmp_path / "m.bgz"
    errors = 0
    started = time.perf_counter()
    for k in range(150):
        m = json.loads(json.dumps(manifest))
        buf = bytearray(payload)
        entry = m["blobs"][k % len(m["blobs"])]
        if entry["stored"] == 0 or entry["codec"] == "raw":
            continue
        lo, hi = entry["offset"], entry["offset"] + entry["stored"]
        for pos in rng.integers(lo, hi, size=1 + k % 4):
            buf[pos] ^= 1 << int(rng.integers(8))
        entry["crc32"] = zlib.crc32(buf[lo:hi])
        path.write_bytes(rebuild(m, bytes(buf)))
        try:
            _, blobs = read_artifact(path)
        except ArtifactError:
            errors += 1
            continue
        assert [len(b) for b in blobs] == [e["raw"] for e in m["blobs"]]
    assert errors >= 50, "most damage to compressed streams should be detected by the codecs themselves"
    assert time.perf_counter() - started < 20.0


def test_unknown_codec_is_named(tmp_path: Path, artifact: tuple[Path, bytes]) -> None:
    path = tmp_path / "m.bgz"
    path.write_bytes(edit(artifact[1], _set(2, "codec", "cmix")))
    with pytest.raises(ArtifactError, match=r"m\.bgz: blob 2: unknown codec 'cmix'"):
        read_artifact(path)


def test_huge_declared_size_rejected_before_decoding(tmp_path: Path, artifact: tuple[Path, bytes]) -> None:
    path = tmp_path / "m.bgz"
    path.write_bytes(edit(artifact[1], _set(0, "raw", 2**40)))
    t0 = time.perf_counter()
    with pytest.raises(ArtifactError, match=r"declared raw size \d+ bytes is too large"):
        read_artifact(path)
    assert time.perf_counter() - t0 < 0.5
    total = sum(len(b.raw) for b in make_blobs())
    with pytest.raises(ArtifactError, match="too large"):
        read_artifact(artifact[0], max_total_raw=total - 1)
    assert len(read_artifact(artifact[0], max_total_raw=total)[1]) == len(make_blobs())


def test_specific_messages(tmp_path: Path, artifact: tuple[Path, bytes]) -> None:
    path = tmp_path / "m.bgz"
    data = artifact[1]
    manifest, payload = split(data)
    bad = bytearray(payload)
    bad[manifest["blobs"][3]["offset"]] ^= 0x10
    path.write_bytes(rebuild(manifest, bytes(bad)))
    with pytest.raises(ArtifactError, match=r"blob 3 CRC mismatch \(stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}\)"):
        read_artifact(path)
    path.write_bytes(edit(data, _set(0, "raw", manifest["blobs"][0]["raw"] + 1)))
    with pytest.raises(ArtifactError, match=r"blob 0 \(zlib\) does not decode"):
        read_artifact(path)
    path.write_bytes(data[:10])
    with pytest.raises(ArtifactError, match="shorter than"):
        read_artifact(path)
    with pytest.raises(ArtifactError, match=r"missing\.bgz"):
        read_artifact(tmp_path / "missing.bgz")
    with pytest.raises(ArtifactError, match="cannot read"):
        read_artifact(tmp_path)  # a directory
