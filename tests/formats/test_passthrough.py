"""Passthrough format: Parameter Golf's small-tensor rule (store fp16/fp32, cast back), exact for ints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bytegolf.errors import ConfigError
from bytegolf.formats.base import EncodeContext, get_format


def roundtrip(dtype: str, t: torch.Tensor):
    fmt = get_format("passthrough", dtype=dtype)
    enc = fmt.encode({"t": t}, EncodeContext())
    out = fmt.decode(enc)["t"]
    assert out.dtype == t.dtype and out.shape == t.shape
    assert torch.equal(out, enc.recon["t"])
    return enc, out


def test_fp16_of_fp32_casts_back():
    t = torch.randn(7, 33) * 3
    enc, out = roundtrip("fp16", t)
    assert torch.equal(out, t.half().float()) and not torch.equal(out, t)
    assert enc.streams["fp"].data.dtype == np.float16 and enc.streams["fp"].role == "fp"
    assert enc.meta == {"storage": "fp16"} and enc.nominal_bits == 7 * 33 * 16


def test_fp32_keeps_exactly():
    t = torch.randn(512)
    enc, out = roundtrip("fp32", t)
    assert torch.equal(out, t) and enc.nominal_bits == 512 * 32


def test_bf16_input_stored_fp16():
    t = torch.randn(3, 4, 5).to(torch.bfloat16)
    _, out = roundtrip("fp16", t)
    assert torch.equal(out, t.to(torch.float16).to(torch.bfloat16))


@pytest.mark.parametrize("src", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_keep_and_bf16_storage(src):
    t = (torch.randn(10, 6) * 100).to(src)
    enc, out = roundtrip("keep", t)
    assert torch.equal(out, t)
    enc, out = roundtrip("bf16", t)
    assert enc.streams["fp"].data.dtype == np.uint16 and enc.meta["storage"] == "bf16"
    assert torch.equal(out, t.to(torch.bfloat16).to(src)) and enc.nominal_bits == 60 * 16


@pytest.mark.parametrize("t", [torch.arange(-5, 20, dtype=torch.int64), torch.tensor([True, False]), torch.tensor(3)])
def test_non_float_passes_exactly(t):
    enc, out = roundtrip("fp16", t)
    assert torch.equal(out, t) and enc.meta["storage"] == "raw"
    assert enc.nominal_bits == t.numel() * t.element_size() * 8


def test_bad_config():
    with pytest.raises(ConfigError, match="dtype"):
        get_format("passthrough", dtype="int8")
    with pytest.raises(ConfigError, match="one tensor"):
        get_format("passthrough").encode({"a": torch.ones(1), "b": torch.ones(1)}, EncodeContext())
    assert get_format("passthrough").rate_knob is None
