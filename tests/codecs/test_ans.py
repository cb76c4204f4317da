"""The ans codec: exact round trips, size within 0.1% of the order-0 bound plus its stored histogram,
strict and bounded decoding."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest

from bytegolf.codecs import CodecError, StreamInfo, get_codec
from bytegolf.codecs.ans import side_info_bytes
from bytegolf.codecs.bounds import entropy_bound_bytes
from bytegolf.errors import ConfigError

RNG = np.random.default_rng(2024)


def gauss(k: int) -> np.ndarray:
    p = np.exp(-((np.arange(k) - (k - 1) / 2) ** 2) / (2 * (k / 8) ** 2))
    return p / p.sum()


def roundtrip(x: np.ndarray, info: StreamInfo, **params) -> bytes:
    codec = get_codec("ans", **params)
    data = x.tobytes()
    stored = codec.compress(data, info)
    assert codec.decompress(stored, len(data), info) == data
    assert codec.compress(data, info) == stored, "must be deterministic"
    return stored


@pytest.mark.parametrize("histogram", ["stream", "rows"])
def test_edge_cases_round_trip(histogram: str) -> None:
    params = {"histogram": histogram, "rows": 3, "chunk": 100}
    u8 = StreamInfo(1, 256)
    assert len(roundtrip(np.zeros(0, np.uint8), u8, **params)) == 2  # mode + n
    assert len(roundtrip(np.array([7], np.uint8), u8, **params)) == 3  # constant: mode + n + symbol
    assert len(roundtrip(np.full(100_000, 200, np.uint8), u8, **params)) == 6
    full = np.concatenate([np.arange(256), RNG.choice(256, 20_000, p=gauss(256))]).astype(np.uint8)
    big = np.concatenate([RNG.permutation(65536), np.round(RNG.normal(30000, 50, 200_000)).clip(0, 65535)])
    big = big.astype("<u2")  # 65,536-symbol alphabet, itemsize 2: every symbol once plus a peaked tail
    sizes = [len(roundtrip(full, u8, **params)), len(roundtrip(big, StreamInfo(2, 65536), **params))]
    # 7.05 and ~2.3 bits/symbol plus one histogram (with rows: segments of 300 symbols would need
    # 256- or 65,536-entry histograms each, more than the data, so the codec keeps one)
    assert sizes[0] < entropy_bound_bytes(full, 256) * 1.001 + 600 < 0.92 * full.size
    assert sizes[1] < entropy_bound_bytes(big, 65536) * 1.001 + 80_000 < big.nbytes  # 8 KB bitmap + counts
    three = RNG.choice(3, 5000).astype(np.uint8)
    small = roundtrip(three, StreamInfo(1, 3), **params)
    # + 8: the coder's final state (a 64-bit head, partly informative) matters on short streams
    assert len(small) <= entropy_bound_bytes(three, 3) * 1.001 + side_info_bytes(small) + 8
    assert side_info_bytes(small) <= (14 if histogram == "stream" else 14 + 17 * 3 * 2)  # 17 segments
    two = np.array([0, 1], np.uint8)
    roundtrip(two, StreamInfo(1, 2), **params)
    roundtrip(np.array([65535, 0, 65535], "<u2"), StreamInfo(2, None), **params)


def test_incompressible_input_falls_back_to_raw() -> None:
    data = RNG.bytes(10_000)
    stored = get_codec("ans").compress(data)
    assert len(stored) == 10_000 + 3  # mode byte + varint(10000)
    assert get_codec("ans").decompress(stored, 10_000) == data


@pytest.mark.parametrize("k", [16, 64])
def test_iid_within_a_thousandth_of_the_bound_plus_histogram(k: int) -> None:
    """1M i.i.d. draws: measured (stored - side info) / bound = 1.000017 (k=16), 1.000004 (k=64)."""
    x = RNG.choice(k, 1_000_000, p=gauss(k)).astype(np.uint8)
    stored = roundtrip(x, StreamInfo(1, k))
    side = side_info_bytes(stored)
    bound = entropy_bound_bytes(x, k)
    assert len(stored) <= bound * 1.001 + side
    assert len(stored) - side >= bound * 0.9999  # no coder beats the order-0 bound on i.i.d. data
    assert side <= 4 + 4 * k  # mode, n, symbol set, k counts < 2^21, word count


def test_rows_histograms_follow_changing_statistics() -> None:
    a = RNG.choice(16, 200_000, p=gauss(16)).astype(np.uint8)
    b = (15 - RNG.choice(4, 200_000, p=[0.7, 0.2, 0.05, 0.05])).astype(np.uint8)
    x = np.concatenate([a, b])
    info = StreamInfo(1, 16)
    one = roundtrip(x, info)
    rows = roundtrip(x, info, histogram="rows", rows=100, chunk=1000)  # 4 segments of 100,000
    bound = entropy_bound_bytes(a, 16) + entropy_bound_bytes(b, 16)
    assert len(rows) <= bound * 1.001 + side_info_bytes(rows)
    assert len(rows) < 0.8 * len(one)
    assert side_info_bytes(rows) > side_info_bytes(one)  # its histograms are stored and counted


def test_long_stream_round_trips_near_the_bound() -> None:
    x = RNG.choice(64, 3_000_000, p=gauss(64)).astype(np.uint8)
    codec = get_codec("ans")
    stored = codec.compress(x.tobytes(), StreamInfo(1, 64))
    assert codec.decompress(stored, x.size, StreamInfo(1, 64)) == x.tobytes()
    assert len(stored) <= entropy_bound_bytes(x, 64) * 1.001 + side_info_bytes(stored)


def test_truncation_trailing_bytes_and_wrong_size_raise_codec_error() -> None:
    x = RNG.choice(16, 3000, p=gauss(16)).astype(np.uint8)
    for params in ({}, {"histogram": "rows", "rows": 1, "chunk": 1000}):
        codec = get_codec("ans", **params)
        stored = codec.compress(x.tobytes(), StreamInfo(1, 16))
        for cut in range(len(stored)):
            with pytest.raises(CodecError, match="ans"):
                codec.decompress(stored[:cut], x.size, StreamInfo(1, 16))
        for tail in (b"\x00", b"\x01\x02\x03\x04"):
            with pytest.raises(CodecError, match="trailing"):
                codec.decompress(stored + tail, x.size, StreamInfo(1, 16))
        with pytest.raises(CodecError, match="more than the expected 2999 bytes"):
            codec.decompress(stored, x.size - 1, StreamInfo(1, 16))
        with pytest.raises(CodecError, match="expected 3001"):
            codec.decompress(stored, x.size + 1, StreamInfo(1, 16))


def test_corrupt_streams_raise_codec_error_and_never_anything_else() -> None:
    codec = get_codec("ans")
    info = StreamInfo(1, 16)
    x = RNG.choice(16, 2000, p=gauss(16)).astype(np.uint8)
    stored = codec.compress(x.tobytes(), info)
    hand_made = [
        b"\x09\x05",  # unknown mode
        b"\x02" + b"\xff" * 12,  # endless varint
        b"\x01\xd0\x0f\x10",  # constant symbol 16 outside the alphabet of 16
        b"\x02\xd0\x0f\x00\x02\x00\x00\xe8\x07\xe8\x07\x00",  # two symbols, counts ok, no payload
        b"\x02\xd0\x0f\x00\x02\x00\x00\xe8\x07\xe8\x07\x02\x05\x00",  # payload ends in a zero byte
        b"\x02\xd0\x0f\x00\x02\x00\x00\x01\x01\x01\x00\x00\x00\x00",  # counts do not sum to n
        b"\x02\xd0\x0f\x00\x02\x00\x20\xe8\x07\xe8\x07",  # second symbol 33 outside the alphabet
        b"\x02\xd0\x0f\x07",  # unknown symbol-set kind
        b"\x03\xd0\x0f\x00\x02\x00\x00\x00",  # rows mode with segment length 0
    ]
    for bad in hand_made:
        with pytest.raises(CodecError, match="ans"):
            codec.decompress(bad, 2000, info)
    rng = np.random.default_rng(5)
    outcomes = {"error": 0, "decoded": 0}
    for _ in range(300):
        b = bytearray(stored)
        pos = int(rng.integers(0, len(b)))
        b[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            out = codec.decompress(bytes(b), 2000, info)
        except CodecError:
            outcomes["error"] += 1
        else:  # a flipped bit may decode to other symbols (no checksum here): the container's CRC catches that
            assert len(out) == 2000
            outcomes["decoded"] += 1
    assert outcomes["error"] > 0
    for seed in range(200):  # random garbage of every kind: CodecError or a right-sized output, quickly
        garbage = np.random.default_rng(seed).bytes(int(seed % 40) + 1)
        t0 = time.perf_counter()
        with contextlib.suppress(CodecError):
            assert len(codec.decompress(garbage, 64, info)) == 64
        assert time.perf_counter() - t0 < 1.0


def test_huge_declared_counts_are_refused_before_allocating() -> None:
    codec = get_codec("ans")
    claim = b"\x02\xff\xff\xff\xff\x0f"  # n = 2^32 - 1
    with pytest.raises(CodecError, match="more than the expected 100 bytes"):
        codec.decompress(claim + b"\x00" * 8, 100)
    rows = b"\x03\xe8\x07\x01\x10\xff\xff\x01\x01"  # 1000 symbols, dense set, segment length 1
    with pytest.raises(CodecError, match="ans"):
        codec.decompress(rows, 1000)


def test_symbols_outside_the_alphabet_and_bad_params_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="symbol 16 is outside the alphabet of 16"):
        get_codec("ans").compress(np.array([1, 16], np.uint8).tobytes(), StreamInfo(1, 16))
    with pytest.raises(ConfigError, match="histogram"):
        get_codec("ans", histogram="column")
    with pytest.raises(ConfigError, match="chunk"):
        get_codec("ans", chunk=0)
