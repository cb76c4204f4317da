"""Options that need a calibration Hessian fall back, for a tensor without one, to their magnitude / unweighted
variant: the encoding equals that variant's, and one warning per format instance says which and why."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bytegolf.formats.base import EncodeContext, Encoded, get_format

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "blocks.0.mlp.fc.weight"


def _same(a: Encoded, b: Encoded) -> None:
    assert sorted(a.streams) == sorted(b.streams)
    for k, s in a.streams.items():
        assert np.array_equal(s.data, b.streams[k].data), k
    assert a.nominal_bits == b.nominal_bits
    assert all(torch.equal(a.recon[n], b.recon[n]) for n in a.recon)


@pytest.mark.parametrize(
    ("fmt", "params", "plain", "says"),
    [
        ("scalar", {"gptq": True, "act_order": True}, {"gptq": False, "act_order": True}, "round-to-nearest"),
        (
            "scalar",
            {"bits": 4, "clip": "max", "scale_search": "output"},
            {"bits": 4, "clip": "max", "scale_search": "mse"},
            "scale_search=mse",
        ),
        (
            "sparse_outlier",
            {"base": {"name": "scalar", "bits": 4, "gptq": True}, "select": "hessian", "fraction": 0.02},
            {"base": {"name": "scalar", "bits": 4, "gptq": False}, "select": "error", "fraction": 0.02},
            "select=error",
        ),
        ("clustered", {"codebook_size": 16, "weighted": True}, {"codebook_size": 16}, "unweighted k-means"),
    ],
    ids=["scalar-gptq", "scalar-output-search", "sparse_outlier-hessian", "clustered-weighted"],
)
def test_no_hessian_encodes_as_the_unweighted_variant_with_one_warning(fmt, params, plain, says, caplog) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = [{NAME.replace("0", str(i)): torch.randn(32, 64, generator=g) * 0.05} for i in range(3)]
    f = get_format(fmt, **params)
    with caplog.at_level(logging.WARNING, logger="bytegolf"):
        got = [f.encode(t, EncodeContext()) for t in tensors]  # three tensors, one format instance
    for t, enc in zip(tensors, got, strict=True):
        _same(enc, get_format(fmt, **plain).encode(t, EncodeContext()))
        assert torch.equal(f.decode(enc)[next(iter(t))], enc.recon[next(iter(t))])
    warned = [r for r in caplog.records if r.name == "bytegolf" and r.levelno == logging.WARNING]
    mine = [r for r in warned if r.getMessage().startswith(f"{fmt}:")]
    assert len(mine) == 1, [r.getMessage() for r in warned]
    msg = mine[0].getMessage()
    assert "needs a calibration Hessian" in msg and NAME in msg and says in msg
    # another instance warns again; with the Hessian there is no fallback and no warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bytegolf"):
        get_format(fmt, **params).encode(tensors[0], EncodeContext())
        assert sum(r.getMessage().startswith(f"{fmt}:") for r in caplog.records) == 1
        caplog.clear()
        x = torch.randn(256, 64, generator=g)
        get_format(fmt, **params).encode(tensors[0], EncodeContext(hessians={NAME: x.T @ x}))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
