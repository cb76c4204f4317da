"""Bad input fails clearly and early: non-finite weights, fp16 overflow, corrupted artifacts (fuzzed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.errors import ArtifactError, DataError
from bytegolf.formats.base import EncodeContext, get_format
from bytegolf.quantize import encoder
from bytegolf.quantize.plan import Assignment


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "blocks.0.attn.c_q.weight": torch.randn(32, 64) * 0.05,
        "blocks.0.attn_scale": torch.randn(8),
        "blocks.0.mlp.fc.weight": torch.randn(32, 64) * 0.05,
    }


def _plan(state: dict[str, torch.Tensor]) -> list[Assignment]:
    return [
        Assignment(n, "scalar", {"bits": 4}) if t.ndim == 2 else Assignment(n, "passthrough", {"dtype": "fp16"})
        for n, t in state.items()
    ]


@pytest.mark.parametrize(("name", "bad"), [("blocks.0.attn_scale", float("nan")), ("blocks.0.mlp.fc.weight", -1e999)])
def test_non_finite_weights_fail_before_any_encoding(name: str, bad: float, monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state()
    state[name].view(-1)[3] = bad
    calls = []
    monkeypatch.setattr(encoder, "get_format", lambda *a, **k: calls.append(a) or pytest.fail("a format was built"))
    kind = "1 NaN, 0 Inf" if bad != bad else "0 NaN, 1 Inf"
    with pytest.raises(DataError, match=rf"non-finite weights in tensor {name} \({kind} of \d+ values\)"):
        encoder.encode_state(state, _plan(state), EncodeContext(), progress=False)
    assert not calls  # the check runs before the first unit is encoded, wherever the bad tensor is in the plan


def test_passthrough_itself_names_a_non_finite_tensor() -> None:
    with pytest.raises(DataError, match=r"tensor gain holds 2 NaN/Inf value\(s\) of 4"):
        t = torch.tensor([1.0, float("inf"), float("nan"), 2.0])
        get_format("passthrough").encode({"gain": t}, EncodeContext())


def test_non_finite_reconstruction_is_named_not_blamed_on_the_decoder() -> None:
    state = _state()
    units = encoder.encode_state(state, _plan(state), EncodeContext(), progress=False)
    decoded = {n: t.clone() for u in units for n, t in (u.recon or {}).items()}
    units[1].recon = {"blocks.0.attn_scale": torch.full((8,), float("nan"))}
    with pytest.raises(ArtifactError, match=r"reconstruction of blocks\.0\.attn_scale holds NaN or Inf"):
        artifact.verify_bit_exact(decoded, units)


@pytest.mark.parametrize("src", [torch.float32, torch.bfloat16])
def test_fp16_overflow_is_stored_fp32_through_the_artifact(src: torch.dtype, tmp_path: Path) -> None:
    state = _state()
    state["blocks.0.attn_scale"] = (torch.tensor([1.0, -70000.0, 65519.0, 3.0e5, 0.5, 2.0, -1.0, 1e-3])).to(src)
    units = encoder.encode_state(state, _plan(state), EncodeContext(), progress=False)
    meta = units[1].meta
    assert meta["storage"] == "fp32" and meta["widened_from"] == "fp16"
    path = tmp_path / "m.bgz"
    artifact.write(path, units, "zstd", {}, layout.LayoutConfig(grouping="role", shuffle=True))
    decoded, read_units = artifact.read(path)
    artifact.verify_bit_exact(decoded, units)
    got = decoded["blocks.0.attn_scale"]
    assert got.dtype == src and torch.equal(got, state["blocks.0.attn_scale"])  # fp32 holds bf16/fp32 exactly
    assert read_units[1].meta["storage"] == "fp32"


def test_values_fp16_rounds_to_its_max_stay_fp16(tmp_path: Path) -> None:
    t = torch.tensor([65504.0, 65519.0, -65510.0, 1.0])  # below 65520 the cast rounds to ±65504, no Inf
    enc = get_format("passthrough").encode({"t": t}, EncodeContext())
    assert enc.meta == {"storage": "fp16"} and torch.isfinite(enc.recon["t"]).all()


def test_float64_beyond_fp32_range_is_an_error() -> None:
    t = torch.tensor([1.0, 1e300], dtype=torch.float64)
    with pytest.raises(DataError, match=r"tensor big: values beyond the range of fp32"):
        get_format("passthrough", dtype="fp32").encode({"big": t}, EncodeContext())


def test_fuzzed_artifacts_never_crash_hang_blow_up_or_raise_other_errors(tmp_path: Path) -> None:
    out = tmp_path / "cases.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bytegolf.tools.fuzz", "--cases", "200", "--json", str(out), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    cases = json.loads(out.read_text())
    bad = [c for c in cases if c["outcome"] in ("other_exception", "crash", "hang", "memory")]
    assert not bad, proc.stdout[-4000:]
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes = {c["outcome"] for c in cases}
    assert {"artifact_error", "identical", "different"} <= outcomes  # the mutations reach every layer
    assert {c["kind"] for c in cases} == {
        "bitflip", "truncate", "extend", "header", "manifest", "integer_bomb", "payload", "swap"
    }  # fmt: skip
