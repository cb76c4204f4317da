"""Sparse outliers: planted outliers recovered, fraction 0 = the base exactly, error falls with the
fraction, coarse masks cost a few bytes, exact artifact round trips, errors, the Hydra config."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from formats.base import EncodeContext, get_format
from formats.sparse_outlier import LAYOUTS, SparseOutlier
from harness import artifact, layout
from harness.errors import ConfigError
from harness.metrics import rel_mse
from harness.plan import Assignment
from tests.conftest import roundtrip

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def heavy(rows: int = 64, cols: int = 256, seed: int = 0) -> torch.Tensor:
    """Student-t (3 degrees of freedom) weights: a heavy tail, as in trained LMs."""
    g = gen(seed)
    z = torch.randn(rows, cols, generator=g)
    chi2 = torch.randn(3, rows, cols, generator=g).pow(2).sum(0)
    return 0.02 * z / (chi2 / 3).sqrt()


def hessian(cols: int, seed: int = 1) -> torch.Tensor:
    x = torch.randn(4 * cols, cols, generator=gen(seed))
    x[:, :4] *= 10
    return x.T @ x


def test_planted_outliers_are_recovered_at_fp16():
    w = torch.randn(64, 256, generator=gen(2))
    pos = torch.randperm(w.numel(), generator=gen(3))[:20].sort().values
    signs = torch.where(torch.rand(20, generator=gen(4)) < 0.5, -1.0, 1.0)
    w.view(-1)[pos] = 50 * signs + torch.rand(20, generator=gen(5))  # not fp16-representable
    fmt = SparseOutlier({"name": "scalar", "bits": 4}, fraction=20 / w.numel())
    enc, out = roundtrip(fmt, {"w": w})
    found = np.cumsum(enc.streams["mask"].data.astype(np.int64))
    assert found.tolist() == pos.tolist()
    got = out["w"].view(-1)[pos]
    assert torch.equal(got, w.view(-1)[pos].half().float())
    assert not torch.equal(got, w.view(-1)[pos])
    rest = torch.ones(w.numel(), dtype=torch.bool)
    rest[pos] = False
    hit = torch.zeros(w.shape[0], dtype=torch.bool)
    hit[pos // w.shape[1]] = True  # rows holding an outlier: their base scales were stretched
    plain = get_format("scalar", bits=4).encode({"w": w}, EncodeContext()).recon["w"]
    for keep, ratio in ((rest, 1.0), (rest & hit.repeat_interleave(w.shape[1]), 0.35)):
        err_so = rel_mse(w.view(-1)[keep], out["w"].view(-1)[keep])
        err_plain = rel_mse(w.view(-1)[keep], plain.view(-1)[keep])
        assert err_so < ratio * err_plain, (err_so, err_plain)
    base_bits = get_format("scalar", bits=4).encode({"w": w}, EncodeContext()).nominal_bits
    assert enc.nominal_bits == base_bits + 20 * (16 + 8 * enc.streams["mask"].data.itemsize)


@pytest.mark.parametrize("lay", LAYOUTS)
@pytest.mark.parametrize(
    "base", [{"name": "scalar", "bits": 3, "group_size": 64}, {"name": "clustered", "codebook_size": 16, "dim": 2}]
)
def test_fraction_zero_is_the_base_format_exactly(base, lay):
    w = heavy(32, 128).to(torch.bfloat16)
    params = {k: v for k, v in base.items() if k != "name"}
    ref = get_format(base["name"], **params).encode({"w": w}, EncodeContext())
    for fraction in (0.0, 0.2 / 32 if lay == "row" else 1e-6):  # the second rounds to 0 exceptions
        enc, out = roundtrip(SparseOutlier(base, fraction=fraction, layout=lay, block=16), {"w": w})
        assert torch.equal(out["w"], ref.recon["w"])
        assert set(enc.streams) == {f"base.{k}" for k in ref.streams}
        for k, s in ref.streams.items():
            assert np.array_equal(enc.streams[f"base.{k}"].data, s.data)
            assert (enc.streams[f"base.{k}"].role, enc.streams[f"base.{k}"].alphabet) == (s.role, s.alphabet)
        assert enc.meta["base"] == [ref.meta] and enc.nominal_bits == ref.nominal_bits


@pytest.mark.parametrize("lay", LAYOUTS)
def test_error_falls_as_the_fraction_rises(lay):
    w = heavy()
    errs, bits = [], []
    for fraction in (0.0, 0.01, 0.03, 0.1, 0.3):
        enc, out = roundtrip(SparseOutlier(fraction=fraction, layout=lay, block=16), {"w": w})
        errs.append(rel_mse(w, out["w"]))
        bits.append(enc.nominal_bits)
    assert all(b < a for a, b in pairwise(errs)), errs
    assert all(b > a for a, b in pairwise(bits)), bits
    assert errs[-1] < 0.7 * errs[0], errs


@pytest.mark.parametrize("select", ["error", "hessian"])
def test_error_and_hessian_selection(select):
    """Selections that score by the base's error: nested sets, error falls, int8 values, Hessian-weighted picks."""
    w = heavy(32, 128, seed=3)
    ctx = EncodeContext(hessians={"w": hessian(128)})
    errs = []
    for fraction in (0.0, 0.02, 0.1):
        enc, out = roundtrip(SparseOutlier(fraction=fraction, select=select, value_dtype="int8"), {"w": w}, ctx)
        errs.append(rel_mse(w, out["w"]))
    assert all(b < a for a, b in pairwise(errs)), errs
    assert enc.streams["outliers"].alphabet == 255 and enc.streams["scales"].data.dtype == np.float32
    # Columns with 10× the input energy are the most sensitive: under "hessian" they win the column picks.
    picked = SparseOutlier(fraction=4 / 128, layout="column", select=select).encode({"w": w}, ctx)
    cols = np.flatnonzero(np.unpackbits(picked.streams["mask"].data, count=128))
    assert (set(cols.tolist()) == {0, 1, 2, 3}) == (select == "hessian"), cols


def test_coarse_mask_is_a_few_bytes_where_fine_pays_per_position(tmp_path: Path):
    w = heavy()
    row = SparseOutlier(fraction=8 / 64, layout="row").encode({"w": w}, EncodeContext())
    fine = SparseOutlier(fraction=8 * 256 / w.numel(), layout="fine").encode({"w": w}, EncodeContext())
    assert row.streams["outliers"].data.size == fine.streams["outliers"].data.size == 8 * 256
    base_bits = get_format("scalar", bits=4).encode({"w": w}, EncodeContext()).nominal_bits
    assert row.nominal_bits == base_bits + 64 + 8 * 256 * 8 + 8 * 16  # mask, 8-bit codes, fp16 scales
    sizes = {}
    for name, enc in (("row", row), ("fine", fine)):
        wr = artifact.write(tmp_path / f"{name}.bgz", [enc], "zstd", {}, layout.LayoutConfig(grouping="tensor"))
        roles = layout.role_report([enc], wr.manifest["units"], wr.blob_stored, wr.final_bytes)
        (mask,) = [st for st in wr.manifest["units"][0]["streams"] if st["role"] == "mask"]
        assert roles["mask"]["bytes"] == wr.blob_stored[mask["blob"]]  # the mask is all the position metadata
        sizes[name] = roles["mask"]["bytes"]
    assert row.streams["mask"].data.nbytes == 8 and sizes["row"] <= 24, sizes  # 8 bytes + zstd's frame
    assert sizes["fine"] >= 0.5 * 8 * 256, sizes


@pytest.mark.parametrize("lay", LAYOUTS)
def test_artifact_round_trip_is_bit_exact(tmp_path: Path, lay: str):
    g = gen(7)
    state = {
        "a.weight": heavy(64, 96, seed=1),
        "b.weight": (torch.randn(32, 64, generator=g) * 0.05).to(torch.bfloat16),
        "scale": torch.rand(48, generator=g),
    }
    ctx = EncodeContext(hessians={"a.weight": hessian(96), "b.weight": hessian(64)})
    common = {"fraction": 0.1, "layout": lay, "block": 16}
    plan = [
        Assignment("a.weight", "sparse_outlier", {**common, "select": "hessian", "value_dtype": "bf16"}),
        Assignment(
            "b.weight",
            "sparse_outlier",
            {**common, "base": {"name": "clustered", "codebook_size": 16, "dim": 2}, "exception_bits": 12},
        ),
        Assignment("scale", "passthrough", {"dtype": "fp16"}),
    ]
    units = artifact.encode_state(state, plan, ctx, progress=False)
    for name, params in (("zstd", {}), ("ans", {})):
        artifact.write(tmp_path / "m.bgz", units, name, params, layout.LayoutConfig(packing="bits"))
        decoded, _ = artifact.read(tmp_path / "m.bgz")
        artifact.verify_bit_exact(decoded, units)
    for unit in units[:2]:
        assert {s.role for s in unit.streams.values()} >= {"codes", "mask", "outliers"}
    assert rel_mse(state["a.weight"], decoded["a.weight"]) < rel_mse(
        state["a.weight"], get_format("scalar", bits=4).encode({"a.weight": state["a.weight"]}, ctx).recon["a.weight"]
    )


def test_several_tensors_in_one_unit():
    tensors = {"x": heavy(16, 64, seed=1), "y": heavy(32, 32, seed=2)}
    fmt = SparseOutlier(fraction=0.1, layout="row", exception_bits=4)
    enc, out = roundtrip(fmt, tensors)
    assert {"0.mask", "1.mask", "0.base.codes", "1.base.codes"} <= set(enc.streams)
    assert len(enc.meta["base"]) == 2
    assert enc.streams["1.outliers"].data.shape == (3, 32) and enc.streams["1.outliers"].alphabet == 15
    for name, w in tensors.items():
        single = SparseOutlier(fraction=0.1, layout="row", exception_bits=4).encode({name: w}, EncodeContext())
        assert torch.equal(out[name], single.recon[name])


def test_bad_input_fails_with_clear_errors():
    for fraction in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="fraction"):
            SparseOutlier(fraction=fraction)
    with pytest.raises(ConfigError, match="layout"):
        SparseOutlier(layout="diagonal")
    with pytest.raises(ConfigError, match="select"):
        SparseOutlier(select="random")
    with pytest.raises(ConfigError, match="value_dtype"):
        SparseOutlier(value_dtype="fp8")
    with pytest.raises(ConfigError, match="exception_bits"):
        SparseOutlier(exception_bits=17)
    with pytest.raises(ConfigError, match="scope"):
        SparseOutlier({"name": "clustered", "scope": "family"})
    with pytest.raises(ConfigError, match="bits"):
        SparseOutlier({"name": "scalar", "bits": 12})
    ctx = EncodeContext()
    with pytest.raises(ConfigError, match=r"layer\.w.*block 16"):
        SparseOutlier(layout="block").encode({"layer.w": torch.randn(32, 40)}, ctx)
    bad = torch.randn(8, 8)
    bad[3, 3] = float("nan")
    with pytest.raises(ConfigError, match=r"layer\.w holds NaN"):
        SparseOutlier().encode({"layer.w": bad}, ctx)
    with pytest.raises(ConfigError, match=r"layer\.w must be a non-empty 2-D"):
        SparseOutlier().encode({"layer.w": torch.randn(64)}, ctx)
    with pytest.raises(ConfigError, match=r"Hessian for tensor layer\.w"):
        SparseOutlier(select="hessian").encode({"layer.w": torch.randn(8, 8)}, ctx)
    with pytest.raises(ConfigError, match=r"layer\.w.*fp32"):
        SparseOutlier(fraction=0.1).encode({"layer.w": torch.full((4, 4), 1e5)}, ctx)


def test_hydra_config_composes():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from harness import settings, sweep  # noqa: F401  (sweep registers the resolvers)

    settings.register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("run", overrides=["format=sparse_outlier", "format.base.bits=3", "format.layout=row"])
        scalar_keys = ("bits", "group_size", "clip", "clip_k", "gptq")
        swap = [*(f"~format.base.{k}" for k in scalar_keys), "format.base.name=clustered", "+format.base.dim=2"]
        swapped = compose("run", overrides=["format=sparse_outlier", *swap])
    params = OmegaConf.to_container(cfg.format, resolve=True)
    name = params.pop("name")
    fmt = get_format(name, **params)
    assert isinstance(fmt, SparseOutlier) and fmt.rate_knob == "fraction" and fmt.select == "hessian"
    assert fmt.config()["base"]["bits"] == 3 and fmt.base_format.config()["clip"] == "sdclip"
    assert fmt.config() == params
    assert OmegaConf.to_container(swapped.format.base) == {"name": "clustered", "dim": 2}
    params = OmegaConf.to_container(swapped.format, resolve=True)
    assert get_format(params.pop("name"), **params).base_format.config()["dim"] == 2
