"""Declared reshapes (bytegolf.artifact.reshape): weight banks split into slices of their own (plan.reshape=split) or
folded into one matrix, through real artifact files; corrupt split manifests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from bytegolf.artifact import container, reshape
from bytegolf.artifact import file as artifact
from bytegolf.artifact.container import Blob
from bytegolf.artifact.layout import LayoutConfig
from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats import EncodeContext, Encoded
from bytegolf.measure import metrics
from bytegolf.quantize import encoder
from bytegolf.quantize.plan import PlanConfig, make_plan

SCALAR = ("scalar", {"bits": 4})
CLUSTERED = ("clustered", {"dim": 2, "codebook_size": 16, "iters": 8})


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    scale = torch.tensor([0.01, 1.0, 30.0])[:, None, None]  # slices of very different magnitudes
    return {
        "bank": torch.randn(3, 40, 32) * scale,
        "deep": torch.randn(2, 3, 8, 32),  # 4-D: split along dim 0, each slice's middle dims folded: (24, 32)
        "m": torch.randn(64, 32),
        "v": torch.randn(5000),
    }


def _write(tmp_path: Path, state: dict, fmt: tuple[str, dict], mode: str) -> tuple[Path, list[Encoded]]:
    plan = make_plan(state, PlanConfig(passthrough_max_numel=100, reshape=mode), fmt[0], dict(fmt[1]))
    units = encoder.encode_state(state, plan, EncodeContext(), progress=False)
    path = tmp_path / f"{fmt[0]}-{mode}.bgz"
    artifact.write(path, units, "zstd", {}, LayoutConfig())
    return path, units


@pytest.mark.parametrize("fmt", [SCALAR, CLUSTERED], ids=["scalar", "clustered"])
def test_split_and_fold_round_trip_byte_exact(tmp_path: Path, fmt: tuple[str, dict]) -> None:
    state = _state()
    decoded = {}
    for mode in ("fold", "split"):
        path, units = _write(tmp_path, state, fmt, mode)
        out, read_units = artifact.read(path)
        artifact.verify_bit_exact(out, units)  # the file decodes to the encoder's reconstructions bit for bit
        for name, t in state.items():
            assert out[name].shape == t.shape and out[name].dtype == t.dtype, (mode, name)
            assert units[list(state).index(name)].recon[name].shape == t.shape  # in memory: the original shape
        again = tmp_path / "again.bgz"
        artifact.write(again, units, "zstd", {}, LayoutConfig())
        assert again.read_bytes() == path.read_bytes()  # deterministic bytes
        decoded[mode] = out
        bank = read_units[0]
        if mode == "fold":
            assert bank.tensors[0].shape == (120, 32) and bank.meta["reshape"] == {"bank": [3, 40, 32]}
            continue
        # split: the unit keeps the bank's name and shape, each slice a tensor of its own with its own streams
        assert bank.tensors[0].shape == (3, 40, 32) and bank.meta["split"] == {"bank": [3, 40, 32]}
        assert [p["tensors"] for p in bank.meta["parts"]] == [
            [{"name": f"bank[{i}]", "shape": [40, 32], "dtype": "float32"}] for i in range(3)
        ]
        assert {k.split(".")[0] for k in bank.streams} == {"0", "1", "2"}
        deep = read_units[1]
        assert [p["tensors"][0]["shape"] for p in deep.meta["parts"]] == [[24, 32], [24, 32]]
        assert "split" not in read_units[2].meta and "reshape" not in read_units[2].meta  # a matrix as it is
    for name in ("m", "v") if fmt[0] == "clustered" else state:
        assert torch.equal(decoded["split"][name], decoded["fold"][name])  # per-row scales: the same values
    if fmt[0] == "clustered":  # a codebook per slice: the 0.01-scale slice is no longer lost among the others
        small = state["bank"][0]
        err = {m: metrics.rel_mse(small, decoded[m]["bank"][0]) for m in decoded}
        assert err["split"] < 0.2 and err["fold"] > 10, err


def test_split_family_unit_is_one_part(tmp_path: Path) -> None:
    state = _state()
    fmt = ("clustered", {**CLUSTERED[1], "scope": "global"})
    path, units = _write(tmp_path, state, fmt, "split")
    out, read_units = artifact.read(path)
    artifact.verify_bit_exact(out, units)
    unit = read_units[0]
    assert [t.name for t in unit.tensors] == ["bank", "deep", "m"] and len(unit.meta["parts"]) == 1
    names = [t["name"] for t in unit.meta["parts"][0]["tensors"]]
    assert names == ["bank[0]", "bank[1]", "bank[2]", "deep[0]", "deep[1]", "m"]
    assert out["bank"].shape == (3, 40, 32) and out["deep"].shape == (2, 3, 8, 32)


def test_bad_reshape_mode_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^plan\.reshape must be one of fold, split, got 'slice'$"):
        make_plan(_state(), PlanConfig(reshape="slice"), "scalar", {})
    with pytest.raises(ConfigError, match=r"plan\.reshape"):
        reshape.fold({"b": torch.zeros(2, 3, 4)}, "scalar", "nope")


def _corrupt(tmp_path: Path, edit) -> Path:
    path, _ = _write(tmp_path, _state(), SCALAR, "split")
    manifest, blobs = container.read_artifact(path)
    manifest = copy.deepcopy(manifest)
    edit(manifest["units"][0])
    bad = tmp_path / "bad.bgz"
    container.write_artifact(bad, manifest, [Blob("raw", {}, b) for b in blobs])
    return bad


def _drop_part(u: dict[str, Any]) -> None:
    u["meta"]["parts"].pop()
    u["streams"] = [s for s in u["streams"] if not s["name"].startswith("2.")]


def _rename_slice(u: dict[str, Any]) -> None:
    u["meta"]["parts"][1]["tensors"][0]["name"] = "bank[7]"


def _no_stack(u: dict[str, Any]) -> None:  # every slice decodes, but (40, 32) slices do not make (3, 20, 64)
    u["meta"]["split"]["bank"] = [3, 20, 64]
    u["tensors"][0]["shape"] = [3, 20, 64]


def _stray_stream(u: dict[str, Any]) -> None:
    u["meta"]["parts"].pop()  # part 2's streams are left over


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop_part, r"slice bank\[2\] of bank \[3, 40, 32\] is missing"),
        (_rename_slice, r"slice bank\[1\] of bank .* is missing"),
        (_no_stack, r"slice bank\[0\] \[40, 32\] \(torch.float32\) does not stack into bank \[3, 20, 64\]"),
        (_stray_stream, r"streams \['2.codes', '2.scales'\] belong to no part"),
        (lambda u: u["meta"].update(parts={}), "non-empty 'parts' list"),
        (lambda u: u["meta"]["split"].update(bank=[3, -1, 32]), "3 or more dims"),
        (lambda u: u["meta"]["parts"][0]["tensors"][0].update(dtype="int8"), "not a float dtype"),
    ],
    ids=["slice-missing", "slice-renamed", "no-stack", "stray-stream", "parts", "split-shape", "dtype"],
)
def test_corrupt_split_manifest_is_an_artifact_error(tmp_path: Path, edit, message: str) -> None:
    bad = _corrupt(tmp_path, edit)
    with pytest.raises(ArtifactError, match=message) as exc:
        artifact.read(bad)
    assert str(bad) in str(exc.value) and "unit 0 (bank)" in str(exc.value)


def test_lqer_corrects_the_bank_slices_with_the_largest_residual(tmp_path: Path) -> None:
    from bytegolf.measure import codebytes
    from bytegolf.quantize.lqer import LowRankPlan

    torch.manual_seed(1)
    bank = torch.randn(4, 40, 32) * 0.02
    bank[2] += torch.randn(40, 4) @ torch.randn(4, 32)  # slice 2: a large low-rank part int3 rounds badly
    state = {"bank": bank, "m": torch.randn(48, 32) * 0.02}
    plan = make_plan(state, PlanConfig(passthrough_max_numel=100, reshape="split"), "scalar", {"bits": 3})
    lqer = LowRankPlan(top_k=1, rank=4, a_bits=4, b_bits=4, group_size=32)
    plain = encoder.encode_state(state, plan, EncodeContext(), progress=False)
    units = encoder.encode_state(state, plan, EncodeContext(), progress=False, lowrank=lqer)
    (unit,) = [u for u in units if u.tensors[0].name == "bank"]
    assert [p.get("format") for p in unit.meta["parts"]] == [None, None, "lowrank", None]  # the worst slice
    path = tmp_path / "lqer.bgz"
    artifact.write(path, units, "zstd", {}, LayoutConfig())
    decoded, _ = artifact.read(path)
    artifact.verify_bit_exact(decoded, units)  # the corrected slice decodes through its part's own format
    before, _ = artifact.read(_written(tmp_path / "plain.bgz", plain))
    err = [metrics.rel_mse(bank[k], decoded["bank"][k]) for k in range(4)]
    err0 = [metrics.rel_mse(bank[k], before["bank"][k]) for k in range(4)]
    assert err[2] < 0.3 * err0[2]  # rank 4 recovers much of what the rounding lost (measured 0.19 vs 0.95)
    assert all(torch.equal(decoded["bank"][k], before["bank"][k]) for k in (0, 1, 3))  # the others untouched
    assert unit.nominal_bits > next(u for u in plain if u.tensors[0].name == "bank").nominal_bits
    assert "lowrank" in codebytes.artifact_names(path)[0]  # the corrected slice's decoder is counted
    broken = copy.deepcopy(container.read_manifest(path))
    broken["units"][0]["meta"]["parts"][2]["format"] = "nope"
    with pytest.raises(ArtifactError, match="part 2 format 'nope'"):
        reshape.decode(_scalar(3), Encoded("scalar", unit.tensors, unit.streams, broken["units"][0]["meta"]))


def _written(path: Path, units: list[Encoded]) -> Path:
    artifact.write(path, units, "zstd", {}, LayoutConfig())
    return path


def _scalar(bits: int):
    from bytegolf.formats import get_format

    return get_format("scalar", bits=bits)
