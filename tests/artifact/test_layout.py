"""Layout: every packing × shuffle × grouping round-trips exactly through artifact.write and the
container, writes are deterministic, bit-packing is exact, "best" never loses to its candidates,
and bad layouts or manifests fail with errors that name what is wrong."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bytegolf.artifact import container, layout
from bytegolf.artifact import file as artifact
from bytegolf.artifact.packing import pack_bits, symbol_width, unpack_bits
from bytegolf.codecs.best import candidate_spec
from bytegolf.codecs.bounds import entropy_bound_bytes
from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats import EncodeContext, Encoded, Stream, TensorSpec
from bytegolf.measure import accounting
from bytegolf.quantize import encoder
from bytegolf.quantize.plan import Assignment

ALPHABETS = [3, 16, 64, 255, 4096, 1]
CODECS: list[tuple[str, dict[str, Any]]] = [
    ("raw", {}),
    ("zstd", {"level": 3}),
    ("ans", {}),
    ("best", {"candidates": ["zlib", "ans", "raw"]}),
]


def make_units(seed: int = 0) -> list[Encoded]:
    """Hand-made units: symbol streams of several alphabets (peaked, so codecs have work), fp16 and
    fp32 scales, a bf16 stream (uint16 without alphabet), an int64 stream and an empty stream."""
    rng = np.random.default_rng(seed)
    units = []
    for i, a in enumerate(ALPHABETS):
        dt = np.uint8 if a <= 256 else np.uint16
        p = np.exp(-((np.arange(a) - a / 2) ** 2) / (2 * max(a / 6, 0.5) ** 2))
        codes = rng.choice(a, size=(37, 29), p=p / p.sum()).astype(dt)
        scales = np.abs(rng.normal(0.01, 0.002, 37)).astype(np.float16 if i % 2 else np.float32)
        units.append(
            Encoded(
                "scalar",
                [TensorSpec(f"blocks.{i}.w", (37, 29), "float32")],
                {"codes": Stream(codes, "codes", a), "scales": Stream(scales, "scales")},
                {"i": i},
            )
        )
    units.append(
        Encoded(
            "passthrough",
            [TensorSpec("skip", (50,), "float32"), TensorSpec("pos", (9,), "int64")],
            {
                "fp": Stream(rng.normal(size=50).astype(np.float32), "fp"),
                "bf16": Stream(rng.integers(0, 1 << 16, 21).astype(np.uint16), "fp"),
                "ints": Stream(np.arange(9, dtype=np.int64) * 1000 - 3, "outliers"),
                "empty": Stream(np.zeros((0, 4), np.float16), "fp"),
                "mask": Stream(rng.integers(0, 2, 64).astype(np.uint8), "mask", 2),
            },
            {},
        )
    )
    return units


def container_blobs(path: Path) -> list[dict[str, Any]]:
    """The container's own blob table (codec, params, sizes) of an artifact file."""
    return container.read_manifest(path)["blobs"]


def read_back(path: Path) -> list[Encoded]:
    manifest, blobs = container.read_artifact(path)
    return layout.unpack(manifest["units"], blobs)


def assert_same_streams(a: list[Encoded], b: list[Encoded]) -> None:
    assert len(a) == len(b)
    for ua, ub in zip(a, b, strict=True):
        assert ua.format == ub.format and ua.meta == ub.meta and ua.tensors == ub.tensors
        assert set(ua.streams) == set(ub.streams)
        for name, sa in ua.streams.items():
            sb = ub.streams[name]
            assert (sa.role, sa.alphabet) == (sb.role, sb.alphabet), name
            assert sa.data.dtype == sb.data.dtype and sa.data.shape == sb.data.shape, name
            assert sa.data.tobytes() == sb.data.tobytes(), name


@pytest.mark.parametrize(("name", "params"), CODECS, ids=[c for c, _ in CODECS])
@pytest.mark.parametrize("grouping", layout.GROUPINGS)
def test_every_layout_round_trips_exactly(tmp_path: Path, grouping: str, name: str, params: dict[str, Any]) -> None:
    units = make_units()
    for packing, shuffle in itertools.product(layout.PACKINGS, (False, True)):
        cfg = layout.LayoutConfig(grouping=grouping, packing=packing, shuffle=shuffle)
        w = artifact.write(tmp_path / "a.bgz", units, name, params, cfg)
        assert w.final_bytes == (tmp_path / "a.bgz").stat().st_size
        assert_same_streams(units, read_back(tmp_path / "a.bgz"))
        assert w.manifest["layout"] == cfg.describe()
        assert cfg.describe() == {
            "grouping": grouping,
            "packing": packing,
            "shuffle": shuffle,
            "width": 0,
            "reorder": [],
            "transpose": False,
        }
        families = {layout.family_key(u.tensors[0].name) for u in units}
        nblobs = {"tensor": sum(len(u.streams) for u in units), "role": 9, "family": None, "all": 1}[grouping]
        if nblobs is None:  # one blob per (family, role, dtype)
            nblobs = len(
                {
                    (layout.family_key(u.tensors[0].name), s.role, s.data.dtype)
                    for u in units
                    for s in u.streams.values()
                }
            )
            assert nblobs >= len(families)
        assert len(w.blob_stored) == nblobs  # role: codes u8/u16, scales f4/f2, fp u16/f2/f4, outliers, mask
        packs = {st.get("pack", "byte") for e in w.manifest["units"] for st in e["streams"]}
        want_bits = packing == "bits" and name in ("raw", "zstd")  # ans takes symbols; best picks per blob
        assert ("bits" in packs) == want_bits or name == "best"
        assert ("planes" in packs) == shuffle


def test_writes_are_byte_identical(tmp_path: Path) -> None:
    cfg = layout.LayoutConfig(grouping="role", packing="bits", shuffle=True)
    for name, params in CODECS:
        artifact.write(tmp_path / "a.bgz", make_units(), name, params, cfg)
        artifact.write(tmp_path / "b.bgz", make_units(), name, params, cfg)
        assert (tmp_path / "a.bgz").read_bytes() == (tmp_path / "b.bgz").read_bytes(), name


def test_blobs_are_the_same_whatever_the_worker_count() -> None:
    """Blobs are compressed in parallel threads; one worker or four give the same blobs and choices."""
    cfg = layout.LayoutConfig(grouping="tensor")
    best = {"candidates": ["zlib", "ans", {"name": "zpaq", "level": 2}, "raw"]}
    for name, params in [("best", best), ("brotli", {"quality": 5})]:
        (e1, b1), (e4, b4) = (layout.pack(make_units(), name, params, cfg, workers=w) for w in (1, 4))
        assert len(b1) > 2 and e1 == e4
        assert [(b.codec, b.params, b.stored) for b in b1] == [(b.codec, b.params, b.stored) for b in b4]
        assert all(b.stored is not None for b in b1)
    assert len({b.codec for b in layout.pack(make_units(), "best", best, cfg)[1]}) > 1  # candidates compete


def test_a_blob_compressed_again_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A landing written after its search probe does not compress the same blobs twice."""
    calls: list[str] = []
    real = layout.get_codec

    class Spy:
        def __init__(self, name: str, **params: Any) -> None:
            self.name, self.codec = name, real(name, **params)

        def config(self) -> dict[str, Any]:
            return self.codec.config()

        def compress(self, data: bytes, info: Any) -> bytes:
            calls.append(self.name)
            return self.codec.compress(data, info)

    def spy(name: str, **params: Any) -> Any:
        return Spy(name, **params) if name == "brotli" else real(name, **params)

    monkeypatch.setattr(layout, "get_codec", spy)
    cfg = layout.LayoutConfig(grouping="role")
    params = {"quality": 4, "lgwin": 18}  # a setting no other test uses, so nothing is remembered yet
    first = layout.pack(make_units(seed=7), "brotli", params, cfg)
    n = len(calls)
    again = layout.pack(make_units(seed=7), "brotli", params, cfg)
    assert n == len(first[1]) > 1 and len(calls) == n  # every blob compressed once, none the second time
    assert [b.stored for b in first[1]] == [b.stored for b in again[1]]
    layout.pack(make_units(seed=8), "brotli", params, cfg)
    assert len(calls) > n  # other data is compressed


def test_order_is_by_unit_then_stream_name(tmp_path: Path) -> None:
    units = make_units()
    reordered = make_units()
    for u in reordered:
        u.streams = dict(reversed(list(u.streams.items())))
    cfg = layout.LayoutConfig(grouping="all")
    artifact.write(tmp_path / "a.bgz", units, "raw", {}, cfg)
    artifact.write(tmp_path / "b.bgz", reordered, "raw", {}, cfg)
    assert (tmp_path / "a.bgz").read_bytes() == (tmp_path / "b.bgz").read_bytes()
    entries, _ = layout.pack(units, "raw", {}, layout.LayoutConfig(grouping="role"))
    keys = [(st["role"], st["dtype"], st["blob"]) for e in entries for st in e["streams"]]
    first_blob = {}
    for role, dtype, blob in keys:
        first_blob.setdefault((role, dtype), blob)
    assert list(first_blob.values()) == list(range(9))  # blobs follow the first appearance of (role, dtype)
    assert len(set(keys)) == 9  # and each (role, dtype) has exactly one blob
    assert [st["name"] for st in entries[-1]["streams"]] == ["bf16", "empty", "fp", "ints", "mask"]


def test_bit_packing_is_exact_and_shrinks_codes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for n in (1, 7, 8, 1001, 3_000_001):
        codes = rng.integers(0, 16, n).astype(np.uint8)
        unit = Encoded("scalar", [TensorSpec("w", (n,), "float32")], {"codes": Stream(codes, "codes", 16)})
        w = artifact.write(tmp_path / "a.bgz", [unit], "raw", {}, layout.LayoutConfig(packing="bits"))
        assert w.blob_raw == [math.ceil(n * 4 / 8)]
        assert w.blob_stored == [math.ceil(n * 4 / 8)]
        assert read_back(tmp_path / "a.bgz")[0].streams["codes"].data.tobytes() == codes.tobytes()
    # every width 0..32: LSB-first bit order (numpy's packbits of each symbol's low bits), exact sizes, inverse
    for width, n in itertools.product(range(33), (1, 9, 12345)):
        x = rng.integers(0, 1 << width, n, dtype=np.int64).astype(np.uint32)
        raw = pack_bits(x, width)
        assert len(raw) == math.ceil(n * width / 8)
        bits = np.unpackbits(x.astype("<u4").view(np.uint8), bitorder="little").reshape(n, 32)[:, :width]
        assert raw == np.packbits(bits, bitorder="little").tobytes()
        assert np.array_equal(unpack_bits(raw, n, width), x)
    units = make_units()
    byte = artifact.write(tmp_path / "a.bgz", units, "raw", {}, layout.LayoutConfig(grouping="role"))
    bits = artifact.write(tmp_path / "b.bgz", units, "raw", {}, layout.LayoutConfig(grouping="role", packing="bits"))
    n = 37 * 29
    saved = sum(n * (1 if a <= 256 else 2) - math.ceil(n * symbol_width(a) / 8) for a in ALPHABETS)
    assert saved == (n - 269) + (n - 537) + (n - 805) + 0 + (2 * n - 1610) + n  # 3, 16, 64, 255, 4096, 1
    assert sum(byte.blob_stored) - sum(bits.blob_stored) == saved + (64 - 8)  # + the 1-bit mask
    wide = artifact.write(tmp_path / "c.bgz", units, "raw", {}, layout.LayoutConfig(packing="bits", width=13))
    assert_same_streams(units, read_back(tmp_path / "c.bgz"))
    assert wide.final_bytes > bits.final_bytes


def test_best_is_never_larger_than_its_smallest_candidate(tmp_path: Path) -> None:
    units = make_units(seed=1)
    candidates = [{"name": "zstd", "params": {"level": 3}}, "brotli", "ans", "raw", {"name": "zlib", "level": 9}]
    for grouping, packing in itertools.product(layout.GROUPINGS, layout.PACKINGS):
        cfg = layout.LayoutConfig(grouping=grouping, packing=packing, shuffle=True)
        best = artifact.write(tmp_path / "best.bgz", units, "best", {"candidates": candidates}, cfg)
        blob_entries = container_blobs(tmp_path / "best.bgz")
        assert {e["codec"] for e in blob_entries} <= {"zstd", "brotli", "ans", "raw", "zlib"}
        entry_bytes = sum(len(json.dumps({"codec": e["codec"], "params": e["params"]})) for e in blob_entries)
        singles = []
        for c in candidates:
            name, params = candidate_spec(c)
            singles.append(artifact.write(tmp_path / f"{name}.bgz", units, name, params, cfg))
        for i, stored in enumerate(best.blob_stored):  # per blob: the smallest candidate output, exactly
            assert stored == min(s.blob_stored[i] for s in singles)
        assert best.final_bytes <= min(s.final_bytes for s in singles) + entry_bytes
        assert best.final_bytes < max(s.final_bytes for s in singles)
        assert_same_streams(units, read_back(tmp_path / "best.bgz"))


def test_real_formats_decode_bit_exact_through_every_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {
        "a.weight": torch.randn(64, 48) * 0.02,
        "b.weight": torch.randn(32, 64) * 0.05,
        "scale": torch.rand(48),
        "ids": torch.arange(10, dtype=torch.int64),
    }
    plan = [
        Assignment("a.weight", "scalar", {"bits": 6}),
        Assignment("b.weight", "scalar", {"bits": 3, "symmetric": False, "group_size": 16}),
        Assignment("scale", "passthrough", {"dtype": "fp16"}),
        Assignment("ids", "passthrough", {"dtype": "keep"}),
    ]
    units = encoder.encode_state(state, plan, EncodeContext(), progress=False)
    for grouping, packing, shuffle in itertools.product(layout.GROUPINGS, layout.PACKINGS, (False, True)):
        cfg = layout.LayoutConfig(grouping=grouping, packing=packing, shuffle=shuffle)
        for name, params in (("ans", {"histogram": "rows", "rows": 4, "chunk": 48}), ("brotli", {})):
            artifact.write(tmp_path / "m.bgz", units, name, params, cfg)
            decoded, _ = artifact.read(tmp_path / "m.bgz")
            artifact.verify_bit_exact(decoded, units)


def test_role_report_splits_the_file_and_measures_the_bound(tmp_path: Path) -> None:
    units = make_units()
    w = artifact.write(tmp_path / "a.bgz", units, "ans", {}, layout.LayoutConfig(grouping="all", packing="bits"))
    s = accounting.storage_summary(units, w.manifest["units"], w.blob_stored, w.final_bytes)
    roles = s["bytes_by_role"]
    assert set(roles) == {"codes", "scales", "fp", "outliers", "mask", "header"}
    assert sum(r["bytes"] for r in roles.values()) == pytest.approx(w.final_bytes, abs=1)
    assert sum(r["share"] for r in roles.values()) == pytest.approx(1.0)
    bound = sum(entropy_bound_bytes(u.streams["codes"].data, u.streams["codes"].alphabet) for u in units[:-1])
    assert roles["codes"]["bound"] == pytest.approx(bound, abs=0.1)
    assert roles["codes"]["raw"] == 37 * 29 * 7  # six streams, the 4096-symbol one at two bytes
    assert roles["header"]["bytes"] == w.final_bytes - sum(w.blob_stored) and roles["header"]["ratio"] is None
    assert roles["fp"]["plane_bound"] <= roles["fp"]["bound"]
    assert s["bytes_over_bound"] == pytest.approx(w.final_bytes / s["entropy_bound_bytes"])


def test_layout_config_errors_name_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"grouping 'rows'.*tensor.*role.*all"):
        layout.LayoutConfig(grouping="rows")
    with pytest.raises(ConfigError, match=r"packing 'nibble'.*byte.*bits"):
        layout.LayoutConfig(packing="nibble")
    with pytest.raises(ConfigError, match="width"):
        layout.LayoutConfig(width=33)
    with pytest.raises(ConfigError, match="shuffle"):
        layout.LayoutConfig(shuffle="yes")  # type: ignore[arg-type]


def test_bad_streams_are_config_errors_naming_the_stream(tmp_path: Path) -> None:
    units = make_units()
    units[2].streams["codes"] = Stream(np.array([[0, 5, 64]], np.uint8), "codes", 64)
    with pytest.raises(ConfigError, match=r"unit 2 \(blocks\.2\.w\) stream 'codes'.*symbol 64.*alphabet of 64"):
        artifact.write(tmp_path / "a.bgz", units, "raw", {}, layout.LayoutConfig())
    units = make_units()
    with pytest.raises(ConfigError, match=r"unit 2 \(blocks\.2\.w\) stream 'codes'.*64 symbols.*5 bits"):
        artifact.write(tmp_path / "a.bgz", units, "raw", {}, layout.LayoutConfig(packing="bits", width=5))
    assert not (tmp_path / "a.bgz").exists()


def _edit(entries: list[dict], unit: int, stream: str, **changes: Any) -> list[dict]:
    out = copy.deepcopy(entries)
    st = next(s for s in out[unit]["streams"] if s["name"] == stream)
    for k, v in changes.items():
        if v is None:
            st.pop(k, None)
        else:
            st[k] = v
    return out


def test_unpack_rejects_inconsistent_manifests() -> None:
    units = make_units()
    entries, blobs = layout.pack(units, "raw", {}, layout.LayoutConfig(grouping="role", packing="bits", shuffle=True))
    raw = [b.raw for b in blobs]
    assert_same_streams(units, layout.unpack(entries, raw))
    codes16 = next(s for s in entries[1]["streams"] if s["name"] == "codes")
    assert codes16["pack"] == "bits" and codes16["width"] == 4
    scales = next(s for s in entries[1]["streams"] if s["name"] == "scales")
    assert scales["pack"] == "planes" and scales["stride"] == 37 * 3  # three fp16 scale streams share a section
    bad = [
        (_edit(entries, 1, "codes", width=3), "alphabet"),
        (_edit(entries, 1, "codes", width=40), "bit width"),
        (_edit(entries, 1, "codes", pack="nibbles"), "unknown packing 'nibbles'"),
        (_edit(entries, 1, "codes", pack=None), "runs past the end|outside its alphabet"),
        (_edit(entries, 1, "codes", offset=len(raw[0])), "runs past the end"),
        (_edit(entries, 1, "scales", stride=36), "byte planes"),
        (_edit(entries, 1, "scales", stride=10**9), "runs past the end"),
        (_edit(entries, 1, "scales", pack="bits"), "bit width"),
        (_edit(entries, 1, "scales", pack="bits", width=8), "alphabet"),
        (_edit(entries, 1, "codes", blob=99), "blob 99"),
        (_edit(entries, 1, "codes", dtype="complex64"), "not a storage dtype"),
        (_edit(entries, 1, "codes", shape=[-1]), "stream dim"),
    ]
    for edited, message in bad:
        with pytest.raises(ArtifactError, match=message):
            layout.unpack(edited, raw)
    mangled = list(raw)
    i = next(s["blob"] for s in entries[0]["streams"] if s["name"] == "codes")
    mangled[i] = bytes([0xFF]) * len(raw[i])  # 2-bit codes of a 3-symbol alphabet: 3 is out of range
    with pytest.raises(ArtifactError, match="outside its alphabet of 3"):
        layout.unpack(entries, mangled)


def _symbols_unit(alphabet: int, n: int = 200_000, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    dt = np.uint8 if alphabet <= 256 else np.uint16
    codes = rng.integers(0, alphabet, size=(n // 100, 100)).astype(dt)
    return Encoded("scalar", [TensorSpec("w", codes.shape, "float32")], {"codes": Stream(codes, "codes", alphabet)})


@pytest.mark.slow
def test_fair_codec_has_no_width_cliff_above_256_symbols(tmp_path: Path) -> None:
    """i.i.d. uniform symbols: 257 symbols cost log2(257)/8 ≈ 1.0007× what 256 do; the compare's
    default codec stays within 1% of that (a byte-oriented codec alone pays ≈ 2× for uint16 items)."""
    from omegaconf import OmegaConf

    fair = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "experiments/codec/fair.yaml"))
    fair.pop("defaults")
    sizes = {}
    for a in (256, 257):
        w = artifact.write(tmp_path / f"{a}.bgz", [_symbols_unit(a)], "best", fair, layout.LayoutConfig())
        sizes[a] = sum(w.blob_stored)
    assert sizes[257] <= 1.01 * sizes[256] * math.log2(257) / 8


def test_screening_skips_candidates_far_behind_and_keeps_the_winner(tmp_path: Path) -> None:
    unit = [_symbols_unit(16, 400_000)]
    full = {"candidates": ["ans", "raw", {"name": "zstd", "level": 3}]}
    screened = {**full, "screen": 65536, "margin": 0.01}
    a = artifact.write(tmp_path / "a.bgz", unit, "best", full, layout.LayoutConfig())
    b = artifact.write(tmp_path / "b.bgz", unit, "best", screened, layout.LayoutConfig())
    assert a.blob_stored == b.blob_stored and container_blobs(tmp_path / "b.bgz")[0]["codec"] == "ans"
    assert_same_streams(unit, read_back(tmp_path / "b.bgz"))
    with pytest.raises(ConfigError, match="screen must be an int"):
        artifact.write(tmp_path / "c.bgz", unit, "best", {**full, "screen": -1}, layout.LayoutConfig())
