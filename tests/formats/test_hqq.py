"""HQQ format: our decoder equals hqq's own dequantize bit for bit, exact roundtrip through a real artifact,
error vs bits and group size, the rate knob in bytes, bad settings, and a whole `bytegolf run format=hqq`."""

from __future__ import annotations

import json
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats.base import EncodeContext, Encoded, get_format
from bytegolf.formats.hqq import HQQ, dequantize
from bytegolf.measure.metrics import rel_mse
from tests.conftest import roundtrip
from tests.integration.test_run import TINY_ARGS, bytegolf

hqq_quantize = pytest.importorskip("hqq.core.quantize")

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")  # hqq's solver is ~40× slower on two busy threads


def gaussian(rows: int, cols: int, seed: int = 0, std: float = 1.0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * std


def hqq_linear(w: torch.Tensor, bits: int, group_size: int, axis: int = 1, compute_dtype: torch.dtype = torch.float16):
    """hqq's own HQQLinear on the CPU over a Linear holding w (its default config: optimize, round_zero at 4 bits)."""
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    cfg = hqq_quantize.BaseQuantizeConfig(nbits=bits, group_size=group_size, axis=axis)
    return hqq_quantize.HQQLinear(lin, cfg, compute_dtype=compute_dtype, device="cpu")


SHAPES = [(96, 256), (64, 384), (40, 128)]


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_decoder_equals_hqq_dequantize_bit_for_bit(shape, bits, group_size):
    """Our decoder (no hqq) on hqq's own unpacked codes and fp16 meta, and our whole encode → decode,
    both give exactly what HQQLinear.dequantize() gives."""
    w = gaussian(*shape, seed=bits * 1000 + group_size, std=0.02).half().float()  # the same values in fp16 and fp32
    h = hqq_linear(w, bits, group_size)
    want = h.dequantize()
    assert want.dtype == torch.float16 and want.shape == shape
    groups = w.numel() // group_size
    codes = h.unpack(dtype=torch.uint8)[:groups]  # 3-bit packing pads the group dim to a multiple of 10
    assert h.meta["scale"].dtype == torch.float16 and h.meta["zero"].dtype == torch.float16
    ours = dequantize(codes, h.meta["scale"], h.meta["zero"], group_size, 1, shape)
    assert torch.equal(ours, want)

    for dtype in (torch.float16, torch.float32):  # the decoded fp16 values, cast to the tensor's dtype
        enc, out = roundtrip(HQQ(bits=bits, group_size=group_size), {"w": w.to(dtype)})
        assert torch.equal(out["w"], want.to(dtype))
        assert np.array_equal(enc.streams["codes"].data.reshape(groups, group_size), codes.numpy())
        assert np.array_equal(enc.streams["scales"].data, h.meta["scale"].reshape(-1).numpy())
        assert np.array_equal(enc.streams["zeros"].data, h.meta["zero"].reshape(-1).numpy())


@pytest.mark.parametrize(
    "bits,group_size,axis,compute_dtype",
    [
        (4, 64, 0, torch.float16),
        (3, 32, 0, torch.float16),
        (2, 128, 0, torch.float32),
        (4, 64, 1, torch.bfloat16),
        (8, 32, 1, torch.float32),
        (3, 64, 0, torch.bfloat16),
    ],
)
def test_axis_and_compute_dtype_match_hqq(bits, group_size, axis, compute_dtype):
    w = gaussian(128, 192, seed=3, std=0.05)
    want = hqq_linear(w, bits, group_size, axis, compute_dtype).dequantize()
    assert want.dtype == compute_dtype
    name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[compute_dtype]
    enc, out = roundtrip(HQQ(bits=bits, group_size=group_size, axis=axis, compute_dtype=name), {"w": w})
    assert torch.equal(out["w"], want.float())
    assert enc.meta == {"bits": bits, "group_size": group_size, "axis": axis, "compute_dtype": name}
    assert enc.streams["scales"].data.shape == (128 * 192 // group_size,)
    assert enc.streams["scales"].data.dtype == (np.uint16 if name == "bf16" else np.dtype(f"float{name[2:]}"))


def test_roundtrip_through_a_real_artifact(tmp_path: Path):
    units, tensors = [], {}
    for i, (kw, dtype) in enumerate(
        [
            ({}, torch.float32),
            ({"bits": 3, "group_size": 128}, torch.bfloat16),
            ({"bits": 2, "group_size": 0, "axis": 0, "compute_dtype": "bf16"}, torch.float16),
            ({"bits": 8, "group_size": 32, "compute_dtype": "fp32", "optimize": False}, torch.float32),
        ]
    ):
        name = f"blocks.{i}.mlp.fc.weight"
        tensors[name] = gaussian(64, 256, seed=i, std=0.03).to(dtype)
        fmt = get_format("hqq", **kw)
        enc = fmt.encode({name: tensors[name]}, EncodeContext())
        enc.meta = {**enc.meta, "params": fmt.config()}
        units.append(enc)
    written = artifact.write(tmp_path / "m.bgz", units, "zstd", {}, layout.LayoutConfig())
    decoded, read_units = artifact.read(tmp_path / "m.bgz")
    artifact.verify_bit_exact(decoded, written.units)
    for name, w in tensors.items():
        assert decoded[name].dtype == w.dtype and decoded[name].shape == w.shape
    roles = {s["role"] for e in written.manifest["units"] for s in e["streams"]}
    assert roles == {"codes", "scales", "zeros"}
    s = read_units[0].streams
    assert s["codes"].alphabet == 16 and s["codes"].data.shape == (64, 256) and s["codes"].data.dtype == np.uint8
    assert s["scales"].data.shape == (256,) and s["scales"].data.dtype == np.float16
    assert read_units[2].meta["group_size"] == 64  # group_size 0 with axis 0: one group per column of 64 rows
    assert 0 < written.final_bytes < sum(u.nominal_bits for u in units) / 8 * 1.2


def test_missing_hqq_is_a_config_error_and_decode_does_not_need_it(monkeypatch: pytest.MonkeyPatch):
    w = gaussian(16, 64)
    enc = HQQ().encode({"w": w}, EncodeContext())
    monkeypatch.setitem(sys.modules, "hqq.core.quantize", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match="pip install hqq") as exc:
        HQQ().encode({"w": w}, EncodeContext())
    assert "\n" not in str(exc.value)
    assert torch.equal(HQQ().decode(enc)["w"], enc.recon["w"])


# rel MSE on a 512×512 N(0, 1) matrix, rows: bits 2, 3, 4, 5, 6, 8; columns: group 32, 64, 128 (measured)
MEASURED = {
    2: (0.137, 0.188, 0.242),
    3: (0.0246, 0.0334, 0.0429),
    4: (0.00574, 0.00759, 0.00955),
    5: (0.00129, 0.00174, 0.00221),
    6: (0.000311, 0.000422, 0.000538),
    8: (1.93e-05, 2.60e-05, 3.32e-05),
}


def test_error_falls_as_bits_rise_and_groups_shrink():
    w = gaussian(512, 512)
    err = {
        (b, g): rel_mse(w, HQQ(bits=b, group_size=g).encode({"w": w}, EncodeContext()).recon["w"])
        for b in MEASURED
        for g in (32, 64, 128)
    }
    for b, row in MEASURED.items():
        for g, want in zip((32, 64, 128), row, strict=True):
            assert err[(b, g)] == pytest.approx(want, rel=0.05), (b, g)
    assert err[(4, 64)] == pytest.approx(0.0075, rel=0.03)
    for g in (32, 64, 128):
        errs = [err[(b, g)] for b in MEASURED]
        assert all(a > b for a, b in pairwise(errs))
        assert all(3.0 < a / b < 6.0 for a, b in pairwise(errs[:5]))  # ≈ 4× per bit (5 → 6 → 8 is two steps)
    for b in MEASURED:
        assert err[(b, 32)] < err[(b, 64)] < err[(b, 128)]


@pytest.mark.parametrize("bits", [3, 4])
def test_solver_beats_min_max(bits):
    """hqq's proximal zero-point solver lowers the error of plain min-max rounding (measured ratio 0.90, 0.91)."""
    w = gaussian(256, 512, seed=5)
    opt = rel_mse(w, HQQ(bits=bits).encode({"w": w}, EncodeContext()).recon["w"])
    plain = rel_mse(w, HQQ(bits=bits, optimize=False).encode({"w": w}, EncodeContext()).recon["w"])
    assert opt < 0.95 * plain


def test_bytes_rise_with_the_bits_knob(tmp_path: Path):
    """The rate path: bits at group 64, zstd (default level) bytes of a 512×512 N(0, 1) matrix."""
    w = gaussian(512, 512)
    sizes = []
    for bits in (2, 3, 4, 5, 6, 8):
        fmt = HQQ(bits=bits)
        enc = fmt.encode({"w": w}, EncodeContext())
        enc.meta = {**enc.meta, "params": fmt.config()}
        written = artifact.write(tmp_path / f"{bits}.bgz", [enc], "zstd", {}, layout.LayoutConfig())
        sizes.append(written.final_bytes)
        assert enc.nominal_bits == 512 * 512 * bits + 512 * 8 * 32
    # measured (zstd level 19): 69653 102542 136617 170072 202733 267027; at 4 bits the blobs are codes 124300
    # (3.79 bits/weight), scales 5984, zeros 5893 (fp16: 8192 raw each)
    assert all(a < b for a, b in pairwise(sizes))
    assert sizes[2] == pytest.approx(136_600, rel=0.03)
    assert all(25_000 < b - a < 40_000 for a, b in pairwise(sizes[:5]))  # ≈ 32 KiB per bit on 256 Ki weights
    assert HQQ.rate_knob == "bits" and get_format("hqq", bits=3).rate_knob == "bits"


def test_yaml_matches_the_defaults():
    cfg = yaml.safe_load((REPO / "experiments/format/hqq.yaml").read_text())
    assert cfg["defaults"] == ["base_hqq", "_self_"]
    params = {k: v for k, v in cfg.items() if k != "defaults"}
    assert params == HQQ().config()
    assert (REPO / "experiments/format/hqq.yaml").read_text().startswith("# HQQ")


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"bits": 7}, "bits.*no 7-bit"),
        ({"bits": 0}, "bits"),
        ({"bits": 4.0}, "bits"),
        ({"bits": True}, "bits"),
        ({"group_size": -1}, "group_size"),
        ({"group_size": 64.0}, "group_size"),
        ({"axis": 2}, "axis"),
        ({"optimize": "yes"}, "optimize"),
        ({"round_zero": "no"}, "round_zero"),
        ({"compute_dtype": "fp8"}, "compute_dtype.*fp16, bf16, fp32"),
        ({"nbits": 4}, "nbits"),
    ],
)
def test_bad_settings_name_the_setting(kw, match):
    with pytest.raises(ConfigError, match=match) as exc:
        get_format("hqq", **kw)
    assert "\n" not in str(exc.value)


def test_bad_inputs_name_the_tensor():
    name = "blocks.1.attn.c_q.weight"
    with pytest.raises(ConfigError, match=rf"{name}.*100.*group_size 64"):
        HQQ().encode({name: torch.randn(3, 100)}, EncodeContext())
    with pytest.raises(ConfigError, match=rf"{name}.*2-D"):
        HQQ().encode({name: torch.randn(64)}, EncodeContext())
    w = torch.randn(4, 64)
    w[1, 1] = float("inf")
    with pytest.raises(ConfigError, match=rf"{name}.*NaN or inf"):
        HQQ().encode({name: w}, EncodeContext())
    with pytest.raises(ConfigError, match="fp32"):  # a range beyond fp16's zero points
        HQQ(bits=8).encode({name: torch.full((4, 64), 1e6) + torch.arange(64.0)}, EncodeContext())
    with pytest.raises(ConfigError, match="one tensor"):
        HQQ().encode({"a": w, "b": w}, EncodeContext())


def test_decoder_rejects_inconsistent_units():
    enc = HQQ(bits=3).encode({"w": gaussian(8, 128)}, EncodeContext())

    def broken(**meta) -> Encoded:
        return Encoded(enc.format, enc.tensors, dict(enc.streams), {**enc.meta, **meta})

    for meta, match in (
        ({"bits": 40}, "bits"),
        ({"group_size": 0}, "group_size"),
        ({"axis": 2}, "axis"),
        ({"compute_dtype": "fp8"}, "compute_dtype"),
        ({"group_size": 32}, "needs 1024 codes and 32 scales"),
    ):
        with pytest.raises(ArtifactError, match=match):
            HQQ().decode(broken(**meta))


def test_bytegolf_run_format_hqq(tiny_bundle: Path, tmp_path: Path):
    """The whole pipeline on the tiny bundle: quantize with hqq, write, decode alone bit for bit, evaluate."""
    t0 = time.perf_counter()
    args = ["run", f"bundle={tiny_bundle}", *TINY_ARGS, "format=hqq", "format.bits=4", "codec=zstd"]
    proc = bytegolf(*args, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - t0 < 120
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["format"] == "hqq" and r["final_bytes"] == (tmp_path / artifact.ARTIFACT_NAME).stat().st_size
    assert 0 < r["rel_mse"] < 0.02 and 4.0 < r["nominal_bits_per_weight"] < 6.0
    assert {"codes", "scales", "zeros"} <= set(r["bytes_by_role"])
    _, units = artifact.read(tmp_path / artifact.ARTIFACT_NAME)
    assert any(u.format == "hqq" for u in units)
