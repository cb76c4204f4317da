"""`bytegolf inspect` and `bytegolf decode` on artifacts written by the project's own writer."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout, packing
from bytegolf.cli import main
from bytegolf.errors import ArtifactError
from bytegolf.formats import EncodeContext
from bytegolf.measure import accounting
from bytegolf.model import checkpoint
from bytegolf.quantize import encoder
from bytegolf.quantize.plan import PlanConfig, make_plan
from bytegolf.tools.inspection import HEADER_BYTES, decode_to_safetensors, inspect_artifact, render


def bytegolf(*args: str | Path) -> subprocess.CompletedProcess:
    """The real command, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "bytegolf.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def in_process(capsys: pytest.CaptureFixture, *args: str | Path) -> subprocess.CompletedProcess:
    """The same command through bytegolf.cli.main in this process (a process start costs seconds)."""
    rc = 0
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


@pytest.fixture(scope="module")
def units(tiny_bundle: Path, one_thread: None) -> list:
    state = checkpoint.load_state_dict(tiny_bundle / "model.safetensors")
    plan = make_plan(state, PlanConfig(passthrough_max_numel=1024), "scalar", {"bits": 4})
    return encoder.encode_state(state, plan, EncodeContext(), progress=False)


LAYOUTS = {
    "tensor": layout.LayoutConfig(grouping="tensor"),
    "role": layout.LayoutConfig(grouping="role", packing="bits", shuffle=True, reorder=["blocks.0.*"]),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def written(request: pytest.FixtureRequest, units: list, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("inspect") / artifact.ARTIFACT_NAME
    return request.param, path, artifact.write(path, units, "zstd", {}, LAYOUTS[request.param])


@pytest.fixture(scope="module")
def shared_blobs(units: list, tmp_path_factory: pytest.TempPathFactory):
    """The CLI's artifact (each command starts a Python process, so only this one layout)."""
    path = tmp_path_factory.mktemp("inspect_cli") / artifact.ARTIFACT_NAME
    return "role", path, artifact.write(path, units, "zstd", {}, LAYOUTS["role"])


def test_bytes_add_up_to_the_file_size(written) -> None:
    grouping, path, w = written
    ins = inspect_artifact(path)
    size = path.stat().st_size
    assert ins.file_bytes == size == w.final_bytes
    manifest_len = struct.unpack("<8sHHII", path.read_bytes()[:HEADER_BYTES])[3]
    assert HEADER_BYTES == 20 and ins.manifest_bytes == manifest_len
    assert sum(r.stored for r in ins.rows) + HEADER_BYTES + manifest_len == size  # every byte accounted for
    assert sum(t["stored"] for t in ins.by_role().values()) + ins.overhead_bytes == size
    assert ins.blob_stored == w.blob_stored
    for bi, stored in enumerate(w.blob_stored):  # each blob's shares add up to it exactly
        assert sum(r.stored for r in ins.rows if r.blob == bi) == stored
    streams = [(e["tensors"], st) for e in w.manifest["units"] for st in e["streams"]]
    assert len(ins.rows) == len(streams)
    for r, (tensors, st) in zip(ins.rows, streams, strict=True):
        assert r.tensor == ", ".join(t["name"] for t in tensors) and r.stream == st["name"] and r.role == st["role"]
        assert r.raw == math.prod(st["shape"]) * packing.storage_itemsize(st["dtype"]) and r.codec == "zstd"
    # per role, the same bytes and entropy bounds the run records (its shares are fractional)
    report = accounting.role_report(w.units, w.manifest["units"], w.blob_stored, w.final_bytes)
    for role, t in ins.by_role().items():
        assert t["raw"] == report[role]["raw"] and t["packed"] == report[role]["packed"]
        assert t["bound"] == pytest.approx(report[role]["bound"], abs=0.1 * t["streams"])
        assert abs(t["stored"] - report[role]["bytes"]) <= len(w.blob_stored)
    assert report["header"]["bytes"] == ins.overhead_bytes
    if grouping == "tensor":  # one stream per blob: its stored bytes are exact
        assert [r.stored for r in ins.rows] == w.blob_stored
    else:  # the reordered codes of blocks.0 carry their permutation, bounded by log2(rows!)/8
        perms = [r for r in ins.rows if r.role == "perm"]
        assert perms and all(r.tensor.startswith("blocks.0.") for r in perms)
        assert perms[0].bound == pytest.approx(math.lgamma(perms[0].raw // 2 + 1) / math.log(2) / 8)


def test_render_prints_streams_roles_and_the_total(written) -> None:
    _, path, w = written
    text = render(inspect_artifact(path))
    lines = text.splitlines()
    assert lines[0].startswith(f"{path}: {w.final_bytes:,} bytes")
    assert any(line.startswith("blocks.0.attn.c_q.weight") and " scalar " in line for line in lines)
    total = next(line for line in lines if line.startswith("total"))
    assert f"{w.final_bytes:,}" in total and f"(= file size {w.final_bytes:,} B)" in total
    assert any(line.startswith("codes ") for line in lines) and any(line.startswith("header ") for line in lines)


def test_cli_inspect_and_decode(shared_blobs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, path, w = shared_blobs
    proc = bytegolf("inspect", path)
    assert proc.returncode == 0, proc.stderr
    assert f"(= file size {w.final_bytes:,} B)" in proc.stdout
    assert proc.stdout == in_process(capsys, "inspect", path).stdout
    out = tmp_path / "decoded.safetensors"
    proc = in_process(capsys, "decode", path, out)
    assert proc.returncode == 0, proc.stderr
    decoded, _ = artifact.read(path)
    got = load_file(str(out))
    assert set(got) == set(decoded)
    for k, v in decoded.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert f"{len(decoded)} tensors" in proc.stdout
    artifact.verify_bit_exact(got, w.units)  # the quantizer's reconstruction, bit for bit


def test_corrupt_truncated_or_missing_artifacts_end_in_one_line(
    shared_blobs, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, path, _ = shared_blobs
    raw = path.read_bytes()
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF  # inside the last blob
    cases = {
        "flipped.bgz": (bytes(flipped), "CRC mismatch"),
        "truncated.bgz": (raw[:-7], "payload bytes but the file holds"),
        "short.bgz": (raw[:10], "shorter than the 20-byte header"),
        "foreign.bgz": (b"PK\x03\x04" + raw[4:], "not a bytegolf artifact"),
    }
    for name, (content, message) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ArtifactError, match=message):
            inspect_artifact(bad)
        with pytest.raises(ArtifactError, match=message):
            decode_to_safetensors(bad, tmp_path / "never.safetensors")
    for name, verb in (("flipped.bgz", "inspect"), ("truncated.bgz", "decode")):  # the CLI's one line
        bad = tmp_path / name
        proc = in_process(capsys, verb, bad, *([tmp_path / "never.safetensors"] if verb == "decode" else []))
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.startswith(f"error: {bad}: ") and cases[name][1] in proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "never.safetensors").exists()
    proc = bytegolf("inspect", tmp_path / "missing.bgz")  # the real command's exit status and stderr
    assert proc.returncode == 2 and "cannot read artifact" in proc.stderr and proc.stderr.count("\n") == 1
