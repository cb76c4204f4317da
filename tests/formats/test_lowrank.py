"""Low-rank correction (LQER): factor shapes and ranges, decode = base + A·B bit for bit through the
artifact file, error that falls with rank, the plan's top-k choice, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.errors import ConfigError
from bytegolf.formats import EncodeContext, get_format
from bytegolf.formats.lowrank import LowRank
from bytegolf.measure import accounting
from bytegolf.quantize import encoder
from bytegolf.quantize.lqer import LowRankPlan, apply_lowrank
from bytegolf.quantize.plan import PlanConfig, make_plan

BASE = {"name": "scalar", "bits": 4, "clip": "sdclip", "clip_k": 3.0}
PARAMS = {k: v for k, v in BASE.items() if k != "name"}


def _matrix(rows: int = 96, cols: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(rows, 3, generator=g) @ torch.randn(3, cols, generator=g)  # structure the residual keeps
    return 0.02 * torch.randn(rows, cols, generator=g) + 0.01 * low


def test_factors_have_the_records_shapes_dtypes_and_ranges() -> None:
    w = _matrix()
    enc = LowRank(BASE, rank=4).encode({"w": w}, EncodeContext())
    s = enc.streams
    assert s["lowrank.a"].data.shape == (96, 4) and s["lowrank.a"].data.dtype == np.uint8
    assert s["lowrank.b"].data.shape == (4, 128) and s["lowrank.b"].data.dtype == np.uint8
    assert s["lowrank.a"].alphabet == 4 and s["lowrank.b"].alphabet == 16
    a_q = s["lowrank.a"].data.astype(int) - 2  # int2 in [-2, 1]
    b_q = s["lowrank.b"].data.astype(int) - 8  # int4 in [-8, 7]
    assert a_q.min() == -2 or a_q.max() == 1
    assert a_q.min() >= -2 and a_q.max() <= 1 and b_q.min() >= -8 and b_q.max() <= 7
    assert s["lowrank.a_scale"].data.dtype == np.float16 and s["lowrank.a_scale"].data.shape == (1,)
    assert s["lowrank.b_scale"].data.dtype == np.float16 and s["lowrank.b_scale"].data.shape == (4 * 128 // 64,)
    # The scales follow the record's rule: |A|max / 1.5 per matrix, |B|max / 7.5 per group of 64.
    resid = w - get_format(**BASE).encode({"w": w}, EncodeContext()).recon["w"]
    u, sv, vh = torch.linalg.svd(resid, full_matrices=False)
    a, b = u[:, :4] * sv[:4], vh[:4]
    assert float(s["lowrank.a_scale"].data[0]) == pytest.approx(float(a.abs().max()) / 1.5, rel=1e-3)
    want_b = b.reshape(-1, 64).abs().amax(1) / 7.5
    np.testing.assert_allclose(s["lowrank.b_scale"].data.astype(np.float32), want_b.numpy(), rtol=1e-3)


def test_decode_is_base_plus_ab_bit_for_bit_through_the_file(tmp_path: Path) -> None:
    w = _matrix()
    fmt = LowRank(BASE, rank=4)
    enc = fmt.encode({"w": w}, EncodeContext())
    enc.meta = {**enc.meta, "params": fmt.config()}
    written = artifact.write(tmp_path / "m.bgz", [enc], "zstd", {"level": 3}, layout.LayoutConfig())
    decoded, units = artifact.read(tmp_path / "m.bgz")
    artifact.verify_bit_exact(decoded, written.units)
    base_hat = get_format(**BASE).encode({"w": w}, EncodeContext()).recon["w"]
    s = units[0].streams
    a = (torch.from_numpy(s["lowrank.a"].data.astype(np.float32)) - 2) * float(s["lowrank.a_scale"].data[0])
    b_codes = torch.from_numpy(s["lowrank.b"].data.astype(np.float32)).reshape(-1, 64) - 8
    b = (b_codes * torch.from_numpy(s["lowrank.b_scale"].data.astype(np.float32))[:, None]).reshape(4, 128)
    assert torch.equal(decoded["w"], base_hat + a @ b)


def test_error_falls_as_rank_rises() -> None:
    w = _matrix()
    base_err = float(torch.linalg.norm(w - get_format(**BASE).encode({"w": w}, EncodeContext()).recon["w"]))
    errs = [
        float(torch.linalg.norm(w - LowRank(BASE, rank=r, b_bits=8).encode({"w": w}, EncodeContext()).recon["w"]))
        for r in (1, 3, 8)
    ]
    assert errs[0] < base_err and errs[2] < errs[1] < errs[0]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"rank": 200}, "rank 200 exceeds min"),
        ({"group_size": 60}, "not divisible by its group size 60"),
        ({"a_bits": 1}, "a_bits must be an integer in 2..8"),
        ({"base": {"bits": 4}}, "base must name another format"),
        ({"base": {"name": "lowrank"}}, "base must name another format"),
    ],
)
def test_bad_settings_are_one_line_errors(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        LowRank(**{"base": BASE, **params}).encode({"w": _matrix()}, EncodeContext())
    assert "\n" not in str(info.value)


def test_plan_corrects_the_top_k_residuals_and_nothing_else() -> None:
    state = {f"blocks.{i}.w": _matrix(64, 128, seed=i) * (1 + i) for i in range(4)}  # residual grows with i
    plan = make_plan(state, PlanConfig(passthrough_max_numel=0), "scalar", PARAMS)
    units = encoder.encode_state(state, plan, EncodeContext(), progress=False)
    out, chosen = apply_lowrank(state, units, LowRankPlan(top_k=2), EncodeContext())
    assert chosen == ["blocks.2.w", "blocks.3.w"]
    assert [u.format for u in out] == ["scalar", "scalar", "lowrank", "lowrank"]
    out, chosen = apply_lowrank(state, units, LowRankPlan(match="blocks.0.*"), EncodeContext())
    assert chosen == ["blocks.0.w"]
    with pytest.raises(ConfigError, match="matches no quantized matrix"):
        apply_lowrank(state, units, LowRankPlan(match="nothing"), EncodeContext())


def test_greedy_l1_order_recovers_a_shuffled_chain() -> None:
    rng = np.random.default_rng(0)
    chain = np.cumsum(rng.integers(0, 2, size=(200, 16)), axis=0)  # each row one small step from the last
    shuffled = chain[rng.permutation(200)]
    order = layout.greedy_l1_order(shuffled)
    assert sorted(order.tolist()) == list(range(200))

    def path(x: np.ndarray) -> int:
        return int(np.abs(np.diff(x.astype(int), axis=0)).sum())

    assert path(shuffled[order]) < 0.2 * path(shuffled)


@pytest.mark.parametrize("grouping", ["family", "tensor", "all"])
def test_reordered_transposed_codes_round_trip_and_count_their_permutation(tmp_path: Path, grouping: str) -> None:
    state = {f"blocks.{i}.mlp.fc.weight": _matrix(64, 32, seed=i) for i in range(2)}
    state["blocks.0.attn.c_q.weight"] = _matrix(32, 32, seed=5)
    plan = make_plan(state, PlanConfig(passthrough_max_numel=0), "scalar", PARAMS)
    units = encoder.encode_state(state, plan, EncodeContext(), progress=False)
    cfg = layout.LayoutConfig(grouping=grouping, reorder=["*.mlp.fc.weight"], transpose=True)
    written = artifact.write(tmp_path / "m.bgz", units, "zstd", {"level": 3}, cfg)
    decoded, _ = artifact.read(tmp_path / "m.bgz")
    artifact.verify_bit_exact(decoded, units)
    perms = [st for e in written.manifest["units"] for st in e["streams"] if st["role"] == "perm"]
    assert len(perms) == 2 and all(st["shape"] == [64] for st in perms)
    report = accounting.role_report(units, written.manifest["units"], written.blob_stored, written.final_bytes)
    assert report["perm"]["bytes"] > 0 and report["perm"]["raw"] == 2 * 64 * 2
    if grouping == "family":  # fc codes of both layers share a blob; the q codes have their own
        blobs = {st["blob"] for e in written.manifest["units"] for st in e["streams"] if st["role"] == "codes"}
        assert len(blobs) == 2


def test_a_corrupt_permutation_is_an_artifact_error(tmp_path: Path) -> None:
    from bytegolf.artifact import container
    from bytegolf.errors import ArtifactError

    state = {"blocks.0.mlp.fc.weight": _matrix(16, 32)}
    plan = make_plan(state, PlanConfig(passthrough_max_numel=0), "scalar", PARAMS)
    units = encoder.encode_state(state, plan, EncodeContext(), False)
    cfg = layout.LayoutConfig(reorder=["*"])
    artifact.write(tmp_path / "m.bgz", units, "raw", {}, cfg)
    manifest, blobs = container.read_artifact(tmp_path / "m.bgz")
    entry = manifest["units"][0]
    perm = next(st for st in entry["streams"] if st["role"] == "perm")
    raw = bytearray(blobs[perm["blob"]])
    raw[perm["offset"] : perm["offset"] + 2] = raw[perm["offset"] + 2 : perm["offset"] + 4]  # a repeated row
    blobs[perm["blob"]] = bytes(raw)
    with pytest.raises(ArtifactError, match="not a permutation"):
        layout.unpack(manifest["units"], blobs)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"name": "x", "codec": "nope"}, "unknown codec 'nope'"),
        ({"name": "x"}, "needs codec"),
        ({"codec": "brotli", "layout": {"grouping": "nope"}}, "unknown layout grouping 'nope'"),
        ({"codec": "brotli", "layout": {"reorder": "fc"}}, "reorder must be a list"),
    ],
)
def test_an_unknown_serializer_is_a_one_line_error_before_any_work(entry: dict, match: str) -> None:
    from bytegolf.run.point import serializers

    with pytest.raises(ConfigError, match=match) as info:
        serializers([entry], layout.LayoutConfig())
    assert "\n" not in str(info.value)
    assert serializers(["zstd", {"name": "g", "codec": "zpaq"}], layout.LayoutConfig())[1][:2] == ("g", "zpaq")
