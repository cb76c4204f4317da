"""The deepcabac codec (optional nncodec extension): exact round trips, size near the order-0 bound,
corrupt and truncated streams rejected with CodecError, bounded decoding."""

from __future__ import annotations

import re
import sys
import tracemalloc
import zlib

import numpy as np
import pytest

pytest.importorskip(
    "nncodec.extensions.deepCABAC",
    reason="optional codec deepcabac: python -m pip install pybind11 setuptools wheel && "
    "python -m pip install --no-deps --no-build-isolation nncodec==2.1.3",
)

from bytegolf.artifact import layout
from bytegolf.codecs import CodecError, StreamInfo, get_codec
from bytegolf.codecs.bounds import entropy_bound_bytes
from bytegolf.errors import ConfigError
from bytegolf.formats.base import Encoded, Stream, TensorSpec

RNG = np.random.default_rng(77)
INT6 = StreamInfo(1, 63)


def laplace_codes(n: int, scale: float = 3.0, half: int = 31) -> np.ndarray:
    """int6-style symmetric codes: round(Laplace) clipped to ±half, stored as uint8 symbols 0..2·half."""
    return (np.round(RNG.laplace(0, scale, n)).clip(-half, half) + half).astype(np.uint8)


def roundtrip(x: np.ndarray, info: StreamInfo, **params) -> bytes:
    codec = get_codec("deepcabac", **params)
    data = x.tobytes()
    stored = codec.compress(data, info)
    out = codec.decompress(stored, len(data), info)
    assert type(out) is bytes and out == data
    assert codec.compress(data, info) == stored, "must be deterministic"
    assert get_codec("deepcabac").decompress(stored, len(data), info) == data, "the stream carries its settings"
    return stored


@pytest.mark.parametrize("chunk", [1 << 16, 1000])
def test_int8_and_int16_round_trips(chunk: int) -> None:
    roundtrip(laplace_codes(50_000), INT6, chunk=chunk)
    roundtrip(np.round(RNG.laplace(0, 4, 30_000)).clip(-128, 127).astype(np.int8), StreamInfo(1, 256), chunk=chunk)
    wide = np.round(RNG.laplace(0, 300, 40_000)).clip(-32768, 32767).astype("<i2")  # two's complement
    roundtrip(wide, StreamInfo(2, 1 << 16), chunk=chunk)
    roundtrip((np.round(RNG.laplace(0, 40, 20_000)) + 2000).clip(0, 4095).astype("<u2"), StreamInfo(2, 4096))
    roundtrip(np.round(RNG.laplace(0, 1e5, 5000)).astype("<i4"), StreamInfo(4, 1 << 32), chunk=chunk)
    roundtrip(RNG.integers(0, 16, 7000).astype(np.uint8), StreamInfo(1, 16), chunk=chunk)  # flat: falls back to raw
    one_sided = np.minimum(RNG.geometric(0.3, 20_000) - 1, 255).astype(np.uint8)  # no value below the mode
    roundtrip(one_sided, StreamInfo(1, 256), chunk=chunk)
    roundtrip(255 - one_sided, StreamInfo(1, 256), chunk=chunk)  # none above it


def test_edge_cases() -> None:
    assert len(roundtrip(np.zeros(0, np.uint8), INT6)) == 2  # mode + n
    assert len(roundtrip(np.array([9], np.uint8), INT6)) == 3  # raw is smaller
    assert len(roundtrip(np.zeros(100_000, np.uint8), INT6)) < 40  # all zero: a few bytes per chunk
    assert len(roundtrip(np.full(100_000, 40, np.uint8), INT6)) < 40  # one symbol: centred to zero
    assert len(roundtrip(np.full(3000, -7, "<i2"), StreamInfo(2, 1 << 16))) < 40
    extreme = np.array([-(1 << 31), (1 << 31) - 1, 0, 5] * 50, "<i4")  # beyond ±2^30 after centring: raw
    assert len(roundtrip(extreme, StreamInfo(4, 1 << 32))) == 1 + 2 + extreme.nbytes
    roundtrip(np.array([0, 62] * 1000, np.uint8), INT6)


def test_non_symbol_data_is_coded_as_bytes() -> None:
    floats = RNG.normal(0, 0.02, 20_000).astype(np.float16)
    stored = roundtrip(floats, StreamInfo(2, None))
    assert len(stored) < floats.nbytes  # the exponent bytes are skewed
    roundtrip(RNG.normal(0, 1, 999).astype(np.float32), StreamInfo(4, None))
    roundtrip(np.arange(64, dtype=np.uint8), StreamInfo(3, 7))  # itemsize 3: bytes too
    with pytest.raises(ConfigError, match="multiple of itemsize 2"):
        get_codec("deepcabac").compress(b"abc", StreamInfo(2, 1 << 16))


def test_laplacian_codes_within_two_percent_of_the_order0_bound() -> None:
    """1M i.i.d. int6 codes (Laplace scale 3, H ≈ 3.5 bits): measured stored / (n·H₀/8) = 1.009 (adaptive
    contexts pay for learning the distribution; a static model stored with the data, like ans, pays ~0)."""
    x = laplace_codes(1_000_000)
    stored = roundtrip(x, INT6)
    bound = entropy_bound_bytes(x, 63)
    assert bound * 0.999 <= len(stored) <= bound * 1.02 + 64


def test_truncated_extended_and_wrong_size_streams_raise_codec_error() -> None:
    x = laplace_codes(3000)
    for chunk in (1 << 16, 700):
        codec = get_codec("deepcabac", chunk=chunk)
        stored = codec.compress(x.tobytes(), INT6)
        assert stored[0] == 1  # coded, not raw
        for cut in range(len(stored)):
            with pytest.raises(CodecError, match="deepcabac"):
                codec.decompress(stored[:cut], x.size, INT6)
        for tail in (b"\x00", b"\x01\x02\x03\x04", stored):
            with pytest.raises(CodecError, match="deepcabac"):
                codec.decompress(stored + tail, x.size, INT6)
        with pytest.raises(CodecError, match="more than the expected 2999 bytes"):
            codec.decompress(stored, x.size - 1, INT6)
        with pytest.raises(CodecError, match="expected 3001"):
            codec.decompress(stored, x.size + 1, INT6)


def test_corrupt_streams_raise_codec_error() -> None:
    codec = get_codec("deepcabac", chunk=1000)
    x = laplace_codes(5000)
    stored = codec.compress(x.tobytes(), INT6)
    for i in range(len(stored)):  # every single-byte change is caught by the checksum or the header checks
        bad = bytearray(stored)
        bad[i] ^= 1 << (i % 8)
        with pytest.raises(CodecError, match="deepcabac"):
            codec.decompress(bytes(bad), x.size, INT6)
    # forged streams: the checksum recomputed over a damaged body, so deepCABAC's decoder itself sees
    # garbage; it must end in CodecError (or, rarely, other bytes of the right length), never a crash
    head = 12
    for trial in range(300):
        bad = bytearray(stored[:-4])
        if trial % 2:
            bad[head:] = RNG.bytes(len(bad) - head)
        else:
            for i in RNG.integers(head, len(bad), 5):
                bad[i] ^= 1 << int(RNG.integers(0, 8))
        forged = bytes(bad) + zlib.crc32(bad).to_bytes(4, "little")
        try:
            out = codec.decompress(forged, x.size, INT6)
        except CodecError:
            continue
        assert len(out) == x.size


def test_decompression_bomb_is_bounded() -> None:
    codec = get_codec("deepcabac")
    bomb = codec.compress(bytes(16 << 20), INT6)  # 16 MiB of zeros, a few KB stored
    assert len(bomb) < 8000
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="more than the expected 1000 bytes"):
            codec.decompress(bomb, 1000, INT6)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"unary_length": 0}, "unary_length"),
        ({"unary_length": 33}, "unary_length"),
        ({"chunk": 0}, "chunk"),
        ({"chunk": 1.5}, "chunk"),
        ({"chunk": (1 << 20) + 1}, "chunk"),
        ({"param_opt": 1}, "param_opt"),
    ],
)
def test_bad_params_raise_config_error(params: dict, bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        get_codec("deepcabac", **params)


def test_config_round_trips() -> None:
    codec = get_codec("deepcabac", unary_length=4, chunk=5000, param_opt=False)
    assert get_codec("deepcabac", **codec.config()) == codec
    roundtrip(laplace_codes(12_000), INT6, **codec.config())


def test_missing_extension_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nncodec.extensions", None)  # import now fails
    with pytest.raises(ConfigError, match=re.escape("--no-deps --no-build-isolation nncodec==2.1.3")):
        get_codec("deepcabac").compress(laplace_codes(1000).tobytes(), INT6)


def test_artifact_layout_round_trip() -> None:
    """Through the layout (one symbol per item, as wants_symbols asks) and back."""
    codes = laplace_codes(64 * 48).reshape(64, 48)
    wide = np.round(RNG.laplace(500, 20, 300)).clip(0, 999).astype(np.uint16)
    units = [
        Encoded(
            "scalar",
            [TensorSpec("w", (64, 48), "float32")],
            {
                "codes": Stream(codes, "codes", 63),
                "wide": Stream(wide, "codes", 1000),
                "scales": Stream(RNG.normal(0.01, 0.001, 64).astype(np.float16), "scales"),
            },
        )
    ]
    for grouping in ("tensor", "all"):
        cfg = layout.LayoutConfig(grouping=grouping, packing="bits")
        entries, blobs = layout.pack(units, "deepcabac", {}, cfg)
        raw = [get_codec(b.codec, **b.params).decompress(b.stored, len(b.raw), b.info) for b in blobs]
        back = layout.unpack(entries, raw)
        for name, s in units[0].streams.items():
            assert np.array_equal(back[0].streams[name].data, s.data)
