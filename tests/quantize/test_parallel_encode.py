"""Parallel encoding (encode_jobs): worker processes give the same artifact, byte for byte, as one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.data import bundle as data
from bytegolf.data import shards
from bytegolf.errors import ConfigError
from bytegolf.formats import EncodeContext
from bytegolf.model import checkpoint
from bytegolf.model.grams import gram_matrices
from bytegolf.quantize import encoder
from bytegolf.quantize.plan import PlanConfig, make_plan
from bytegolf.run import point as runner


@pytest.fixture(scope="module")
def tiny_state_and_ctx(tiny_bundle: Path, one_thread) -> tuple[dict[str, torch.Tensor], EncodeContext]:
    state = checkpoint.load_state_dict(tiny_bundle / "model.safetensors")
    model = checkpoint.build_model(state)
    calib = data.windows(shards.read_shards(sorted(tiny_bundle.glob("train_*.bin"))), 64, 4)
    grams, rows = gram_matrices(model, calib, progress=False)
    return state, EncodeContext(hessians=grams, hessian_counts=dict.fromkeys(grams, rows), seed=3)


def _artifact_bytes(units: list, path: Path) -> bytes:
    artifact.write(path, units, "zstd", {"level": 3}, layout.LayoutConfig())
    return path.read_bytes()


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("scalar", {"bits": 4, "clip_k": 4.0, "gptq": True}),
        ("clustered", {"codebook_size": 16, "weighted": True, "iters": 4}),
        ("clustered", {"codebook_size": 16, "iters": 4, "scope": "family"}),  # units of several tensors
    ],
)
def test_two_jobs_give_the_same_artifact_as_one(
    tiny_state_and_ctx: tuple, tmp_path: Path, fmt: str, params: dict
) -> None:
    state, ctx = tiny_state_and_ctx
    plan = make_plan(state, PlanConfig(passthrough_max_numel=1024), fmt, params)
    one = encoder.encode_state(state, plan, ctx, progress=False)
    two = encoder.encode_state(state, plan, ctx, progress=False, jobs=2)
    assert [[t.name for t in u.tensors] for u in two] == [[t.name for t in u.tensors] for u in one]
    for a, b in zip(one, two, strict=True):
        assert a.meta == b.meta and a.nominal_bits == b.nominal_bits
        assert all(torch.equal(a.recon[k], b.recon[k]) for k in a.recon)
    assert _artifact_bytes(two, tmp_path / "two.bgz") == _artifact_bytes(one, tmp_path / "one.bgz")


def test_an_error_in_a_worker_reaches_the_caller_as_itself(tiny_state_and_ctx: tuple) -> None:
    state, _ = tiny_state_and_ctx
    plan = make_plan(state, PlanConfig(passthrough_max_numel=1024), "scalar", {"bits": 4, "group_size": 7})
    with pytest.raises(ConfigError, match="not divisible by group_size 7"):
        encoder.encode_state(state, plan, EncodeContext(), progress=False, jobs=2)


@pytest.mark.parametrize("jobs", [0, -1, True, 1.5, "2"])
def test_bad_jobs_are_a_config_error(tiny_state_and_ctx: tuple, jobs: object) -> None:
    state, ctx = tiny_state_and_ctx
    plan = make_plan(state, PlanConfig(passthrough_max_numel=1024), "scalar", {"bits": 4})
    with pytest.raises(ConfigError, match="encode_jobs"):
        encoder.encode_state(state, plan, ctx, progress=False, jobs=jobs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("setting", "expected"), [({}, 1), ({"encode_jobs": None}, 1), ({"encode_jobs": 3}, 3)])
def test_runner_passes_encode_jobs(monkeypatch: pytest.MonkeyPatch, setting: dict, expected: int) -> None:
    seen = {}

    def fake(state, plan, ctx, progress=True, lowrank=None, jobs=1):
        seen["jobs"] = jobs
        return []

    monkeypatch.setattr(encoder, "encode_state", fake)
    cfg = OmegaConf.create({"calib": {"windows": 4, "sequential": False}, **setting})
    runner.encode_units(cfg, {}, [], EncodeContext(), None, None, progress=False)
    assert seen["jobs"] == expected


def test_encode_jobs_is_not_part_of_a_point_key() -> None:
    """Like threads, encode_jobs changes how fast a point runs, not what it computes: same config hash."""
    from bytegolf.run import store

    base = {"format": {"name": "scalar", "bits": 6}, "seed": 0, "source": "abc"}
    keys = {store.config_hash({**base, **extra}) for extra in ({}, {"encode_jobs": 1}, {"encode_jobs": 4})}
    assert len(keys) == 1
