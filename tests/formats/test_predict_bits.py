"""Format.predict_bits: the bits a unit takes, known before encoding (what the equal-bytes search aims with)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bytegolf.formats import EncodeContext, get_format


def _tensors(*shapes: tuple[int, int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"w{i}": torch.randn(*s, generator=g) for i, s in enumerate(shapes)}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("additive", {"num_codebooks": 1.0, "codebook_bits": 4, "group_size": 4, "max_rounds": 1}),
        ("additive", {"num_codebooks": 1.37, "codebook_bits": 4, "group_size": 4, "max_rounds": 1}),
        ("additive", {"num_codebooks": 2.5, "codebook_bits": 3, "group_size": 8, "max_rounds": 0}),
        ("clustered", {"codebook_size": 16, "dim": 4}),
        ("clustered", {"codebook_size": 64, "dim": 2, "normalize": True}),
        ("passthrough", {"dtype": "fp16"}),
    ],
)
def test_the_prediction_is_the_encodings_nominal_bits(name: str, params: dict) -> None:
    """Where the index width is whole (K a power of two), the prediction is exactly the count the encoding
    reports; additive's partial codebook (x = 1.37, 2.5) included."""
    fmt = get_format(name, **params)
    tensors = _tensors((48, 64)) if name == "passthrough" else _tensors((48, 64), (32, 64))
    enc = fmt.encode(tensors, EncodeContext())
    assert fmt.predict_bits(tensors) == enc.nominal_bits


def test_clustered_predicts_a_fractional_index_width() -> None:
    """K = 48 stores ⌈log2 48⌉ = 6-bit indices nominally; the entropy coder's rate follows log2 48 = 5.585, and
    so does the prediction (bytes then grow smoothly with K)."""
    tensors = _tensors((64, 64))
    fmt = get_format("clustered", codebook_size=48, dim=4)
    enc = fmt.encode(tensors, EncodeContext())
    index = 16 * 64  # sub-vectors
    assert fmt.predict_bits(tensors) == pytest.approx(enc.nominal_bits - index * (6 - math.log2(48)))


@pytest.mark.parametrize("params", [{"bits": 4}, {"bits": 3, "group_size": 16, "symmetric": False}])
def test_scalar_predicts_the_order0_entropy_of_its_round_to_nearest_codes(params: dict) -> None:
    """Scalar's prediction is Σ −log2 p over the codes it stores (counted from the encoding's own code stream)
    plus its scales (and zero points) at their nominal width: below the nominal bits, equal to them only for
    uniform codes."""
    fmt = get_format("scalar", **params)
    ((name, t),) = _tensors((48, 64)).items()
    enc = fmt.encode({name: t}, EncodeContext())
    codes = enc.streams["codes"].data.reshape(-1)
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    entropy = float(-(counts * np.log2(p)).sum())
    side = enc.nominal_bits - t.numel() * params["bits"]
    assert fmt.predict_bits({name: t}) == pytest.approx(entropy + side, rel=1e-9)
    assert fmt.predict_bits({name: t}) < enc.nominal_bits


def test_a_wider_clip_predicts_fewer_bits_for_each_clip_knob_path() -> None:
    """The clip knobs the compare searches (scalar's clip_k, sparse_outlier's base.clip_k, basis_delta's
    residual.clip_k) move the prediction the way they move bytes."""
    t = _tensors((64, 128))
    for k in (None, "base", "residual"):
        fmts = []
        for clip_k in (8.0, 16.0, 32.0):
            inner = {"name": "scalar", "bits": 6, "clip_k": clip_k}
            if k is None:
                fmts.append(get_format("scalar", bits=6, clip_k=clip_k))
            elif k == "base":
                fmts.append(get_format("sparse_outlier", base=inner))
            else:
                fmts.append(get_format("basis_delta", rank=4, residual=inner))
        bits = [f.predict_bits(t) for f in fmts]
        assert bits[0] > bits[1] > bits[2], (k, bits)


def test_no_prediction_where_the_shape_does_not_fit() -> None:
    assert get_format("additive", group_size=8).predict_bits({"w": torch.zeros(4, 12)}) is None
    assert get_format("scalar").predict_bits({"w": torch.zeros(2, 3, 4)}) is None
    assert get_format("sparse_outlier", layout="row").predict_bits({"w": torch.zeros(4, 8)}) is None  # coarse
    assert get_format("basis_delta", residual=None).predict_bits({"w": torch.zeros(4, 8)}) is None
