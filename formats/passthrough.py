"""Passthrough: store a tensor as floats of a chosen dtype (or raw, for non-float tensors).

Parameter Golf's rule for small tensors: float tensors are stored fp16 (control tensors fp32)
and cast back to their original dtype on load; non-float tensors pass through exactly.

A tensor whose values fp16 cannot hold (the cast would turn them into Inf: |x| >= 65520) is
stored in fp32 instead, whole; the dtype actually used is the unit's meta "storage", and
"widened_from": "fp16" says it was widened. Values beyond fp32/bf16 range (only a float64
tensor has them) and NaN or Inf in the input are errors naming the tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bytegolf.errors import ConfigError, DataError
from bytegolf.formats.arrays import from_numpy, single_tensor, to_numpy, torch_dtype
from bytegolf.formats.base import EncodeContext, Encoded, Format, Stream, TensorSpec

STORAGE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
_NAMES = {v: k for k, v in STORAGE.items()}
_WIDER = {torch.float16: torch.float32}  # layouts store fp16/fp32 (bf16 as its bits); fp32 has bf16's range


class Passthrough(Format):
    """Store the tensor in `dtype` (fp32, fp16, bf16, or "keep" = its own dtype); decode casts back."""

    name = "passthrough"
    rate_knob = None

    def __init__(self, dtype: str = "fp16") -> None:
        if dtype not in ("fp32", "fp16", "bf16", "keep"):
            raise ConfigError(f"passthrough dtype must be one of fp32, fp16, bf16, keep; got {dtype!r}")
        self.dtype = dtype

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        name, t = single_tensor(self.name, tensors)
        t = t.detach().cpu()
        meta: dict[str, str] = {}
        if not t.is_floating_point():
            stored = t
            meta["storage"] = "raw"
        else:
            target = t.dtype if self.dtype == "keep" else STORAGE[self.dtype]
            if target not in _NAMES:
                raise ConfigError(f"passthrough: tensor {name} has unsupported dtype {t.dtype}")
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                raise DataError(f"tensor {name} holds {int((~finite).sum())} NaN/Inf value(s) of {t.numel()}")
            stored = t.to(target)
            if target in _WIDER and not bool(torch.isfinite(stored).all()):  # the cast overflowed: widen
                meta["widened_from"] = _NAMES[target]
                target = _WIDER[target]
                stored = t.to(target)
            if not bool(torch.isfinite(stored).all()):
                raise DataError(f"tensor {name}: values beyond the range of {_NAMES[target]} (max |x| {t.abs().max()})")
            meta["storage"] = _NAMES[target]
        return Encoded(
            format=self.name,
            tensors=[TensorSpec.of(name, t)],
            streams={"fp": Stream(to_numpy(stored), "fp")},
            meta=meta,
            recon={name: stored.to(t.dtype)},
            nominal_bits=float(t.numel() * stored.element_size() * 8),
        )

    def predict_bits(self, tensors: dict[str, Tensor]) -> float | None:
        """Every value at the storage dtype's width."""
        total = 0
        for t in tensors.values():
            keep = self.dtype == "keep" or not t.is_floating_point()
            total += t.numel() * (t.element_size() if keep else STORAGE[self.dtype].itemsize) * 8
        return float(total)

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        (spec,) = enc.tensors
        storage = enc.meta["storage"]
        t = from_numpy(enc.streams["fp"].data, STORAGE.get(storage))
        return {spec.name: t.reshape(spec.shape).to(torch_dtype(spec.dtype))}
