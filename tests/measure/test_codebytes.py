"""Code bytes: the compressed source a reader needs, deterministic, growing with what the artifact uses."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats import EncodeContext, Encoded, Stream, TensorSpec, get_format
from bytegolf.measure import codebytes

DECODER = {
    "harness/__init__.py",
    "harness/errors.py",
    "harness/registry.py",
    "formats/__init__.py",
    "formats/base.py",
    "codecs/__init__.py",
    "codecs/base.py",
    *codebytes.read_path(),
}


def test_code_bytes_are_positive_deterministic_and_grow_with_formats_and_codecs() -> None:
    base = codebytes.code_bytes(["passthrough"], ["zstd"])
    assert base == codebytes.code_bytes(["passthrough", "passthrough"], ["zstd"])
    assert set(base["files"]) == DECODER | {"formats/passthrough.py", "formats/arrays.py", "codecs/zstd_codec.py"}
    assert base["files"] == sorted(base["files"])
    raw = sum((codebytes.REPO / f).stat().st_size for f in base["files"])
    assert base["raw_code_bytes"] == raw
    assert 2_000 < base["code_bytes"] < raw / 2  # source compresses well, and is not empty
    scalar = codebytes.code_bytes(["passthrough", "scalar"], ["zstd"])
    assert {"formats/scalar.py", "formats/gptq.py"} <= set(scalar["files"])  # scalar imports gptq
    # the decoder holds the layout's packing and the reshaping; the shared array helpers come with the formats
    assert {"harness/artifact/packing.py", "harness/artifact/reshape.py"} <= DECODER
    assert "formats/arrays.py" not in DECODER and not any("quantize" in f or "model" in f for f in DECODER)
    assert scalar["code_bytes"] > base["code_bytes"]
    more = codebytes.code_bytes(["passthrough", "scalar"], ["zstd", "ans"])
    assert more["code_bytes"] > scalar["code_bytes"] and "codecs/ans.py" in more["files"]
    # "best" never reaches an artifact; asked for directly it means any of its default candidates
    best = codebytes.code_bytes(["passthrough"], ["best"])
    assert "codecs/best.py" not in best["files"]
    assert {"codecs/zstd_codec.py", "codecs/brotli_codec.py", "codecs/lzma_codec.py", "codecs/ans.py"} <= set(
        best["files"]
    )


def test_a_module_added_to_the_decoder_folder_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in ("harness", "formats", "codecs"):
        shutil.copytree(codebytes.REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codebytes, "REPO", tmp_path)
    before = codebytes.code_bytes(["passthrough"], ["zstd"])
    (tmp_path / "harness" / "artifact" / "extra.py").write_text(
        '"""A new decoder module."""\n\nTABLE = ' + repr(list(range(300))) + "\n"
    )
    after = codebytes.code_bytes(["passthrough"], ["zstd"])
    assert set(after["files"]) - set(before["files"]) == {"harness/artifact/extra.py"}
    assert after["code_bytes"] > before["code_bytes"] + 100


def test_code_bytes_is_lzma_of_the_sorted_concatenation() -> None:
    r = codebytes.code_bytes(["scalar"], ["raw"])
    blob = b"".join(
        f"{p}\n{(codebytes.REPO / p).stat().st_size}\n".encode() + (codebytes.REPO / p).read_bytes() for p in r["files"]
    )
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
    assert r["code_bytes"] == len(lzma.compress(blob, format=lzma.FORMAT_RAW, filters=filters))


def test_artifact_code_bytes_counts_what_the_file_uses(tmp_path: Path) -> None:
    codes = np.random.default_rng(0).integers(0, 16, (64, 64)).astype(np.uint8)
    repeats = np.tile(np.arange(50, dtype=np.float16), 40)  # exact repeats: LZ77 wins, order-0 does not
    units = [
        Encoded("scalar", [TensorSpec("w", (64, 64), "float32")], {"codes": Stream(codes, "codes", 16)}),
        Encoded("passthrough", [TensorSpec("b", (2000,), "float32")], {"fp": Stream(repeats, "fp")}),
    ]
    path = tmp_path / "m.bgz"
    artifact.write(path, units, "best", {"candidates": ["ans", "zlib"]}, layout.LayoutConfig(grouping="tensor"))
    r = codebytes.artifact_code_bytes(path)
    assert r["formats"] == ["passthrough", "scalar"]
    assert r["codecs"] == ["ans", "zlib"]  # the winners: ans on the codes, zlib on the repeats
    assert r["code_bytes"] == codebytes.code_bytes(["passthrough", "scalar"], ["ans", "zlib"])["code_bytes"]


def test_unknown_names_and_bad_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown format 'nope'"):
        codebytes.code_bytes(["nope"], ["zstd"])
    with pytest.raises(ConfigError, match="unknown codec 'nope'"):
        codebytes.code_bytes(["scalar"], ["nope"])
    (tmp_path / "x.bgz").write_bytes(b"not an artifact at all")
    with pytest.raises(ArtifactError, match="not a bytegolf artifact"):
        codebytes.artifact_code_bytes(tmp_path / "x.bgz")
    with pytest.raises(ArtifactError, match="cannot read"):
        codebytes.artifact_code_bytes(tmp_path / "missing.bgz")


def test_artifact_code_bytes_count_the_formats_a_wrapper_nests(tmp_path: Path) -> None:
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    fmt = get_format("sparse_outlier", base={"name": "clustered", "codebook_size": 8, "dim": 2}, select="magnitude")
    enc = fmt.encode({"w": w}, EncodeContext())
    enc.meta = {**enc.meta, "params": fmt.config()}
    path = tmp_path / "m.bgz"
    artifact.write(path, [enc], "zlib", {}, layout.LayoutConfig())
    assert codebytes.artifact_names(path)[0] == ["clustered", "sparse_outlier"]
