"""Low-rank error correction (LQER, asymmetric) over any base format: W ≈ base(W) + A·B.

The base format (a dict with its `name` and settings) encodes W to Ŵ. The residual E = W − Ŵ
(fp32) is cut to rank r by a plain SVD, E ≈ U_r S_r V_rᵀ, with A = U_r S_r (rows × r) and
B = V_rᵀ (r × cols). Both factors are quantized symmetric-signed with an asymmetric integer range
[−2^(b−1), 2^(b−1) − 1] and scale = absmax / (2^(b−1) − 0.5), so the range's extreme codes are
reached from both sides (b = 2: [−2, 1], scale |A|max/1.5; b = 4: [−8, 7], scale |B|max/7.5):
- A: `a_bits`, one fp16 scale per matrix (`a_group_size` 0) or per group of the flattened A;
- B: `b_bits`, one fp16 scale per group of `group_size` entries of the flattened B.
Parameter Golf's leading record uses rank 4, A int2, B int4 with groups of 64, on the three
tensors with the largest ‖W − Ŵ‖_F; which tensors get a correction is the plan's choice
(bytegolf.quantize.plan: `plan.lowrank`), this module only corrects what it is given.

Decoding: base decode, then (base(W) as fp32) + A_q·diag-scaled · B_q·scaled in fp32, cast to the
tensor's dtype. Streams: the base's streams under "base." (roles unchanged); "lowrank.a",
"lowrank.b" (codes, role "lowrank") and "lowrank.a_scale", "lowrank.b_scale" (fp16, role
"lowrank").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ConfigError
from bytegolf.formats.arrays import from_numpy, single_tensor, to_numpy, torch_dtype
from bytegolf.formats.base import EncodeContext, Encoded, Format, Stream, get_format

PREFIX = "base."


def _levels(bits: int) -> tuple[int, int, float]:
    """(lowest code, highest code, absmax divisor) of the asymmetric signed range for `bits`."""
    half = 2 ** (bits - 1)
    return -half, half - 1, half - 0.5


def quantize_factor(x: Tensor, bits: int, group: int, what: str) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """Codes (stored as q − lowest, uint8), fp16 scales per group of the flattened x, and x as decoded."""
    flat = x.reshape(-1)
    g = group or flat.numel()
    if flat.numel() % g:
        raise ConfigError(f"lowrank: {what} has {flat.numel()} entries, not divisible by its group size {group}")
    lo, hi, div = _levels(bits)
    grouped = flat.reshape(-1, g)
    scale = (grouped.abs().amax(1) / div).to(torch.float16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale decodes to 0
    s = scale.float()[:, None]
    q = torch.clamp(torch.round(grouped / s), lo, hi).to(torch.int32)
    deq = (q.float() * s).reshape(x.shape)
    return (q - lo).to(torch.uint8).numpy().reshape(x.shape), to_numpy(scale), deq


def dequantize_factor(codes: np.ndarray, scales: np.ndarray, bits: int, shape: tuple[int, ...]) -> Tensor:
    """Inverse of quantize_factor from the stored streams."""
    lo, _, _ = _levels(bits)
    s = from_numpy(scales).float()
    q = torch.from_numpy(np.ascontiguousarray(codes).astype(np.int32)).reshape(s.numel(), -1) + lo
    return (q.float() * s[:, None]).reshape(shape)


class LowRank(Format):
    """A base format plus a quantized rank-r correction of its residual (LQER)."""

    name = "lowrank"
    rate_knob = "rank"

    def __init__(
        self,
        base: dict[str, Any] | None = None,
        rank: int = 4,
        a_bits: int = 2,
        b_bits: int = 4,
        a_group_size: int = 0,
        group_size: int = 64,
    ) -> None:
        base = dict(base or {"name": "scalar"})
        if "name" not in base or base["name"] == self.name:
            raise ConfigError(f"lowrank: base must name another format, got {base!r}")
        for key, v, lo in (("rank", rank, 1), ("a_group_size", a_group_size, 0), ("group_size", group_size, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"lowrank: {key} must be an integer >= {lo}, got {v!r}")
        for key, v in (("a_bits", a_bits), ("b_bits", b_bits)):
            if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
                raise ConfigError(f"lowrank: {key} must be an integer in 2..8, got {v!r}")
        self.base = base
        self.rank, self.a_bits, self.b_bits = rank, a_bits, b_bits
        self.a_group_size, self.group_size = a_group_size, group_size
        params = {k: v for k, v in base.items() if k != "name"}
        self._base = get_format(str(base["name"]), **params)

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        name, t = single_tensor(self.name, tensors)
        return self.correct(self._base.encode({name: t}, ctx), t, ctx.device)

    def correct(self, enc: Encoded, w: Tensor, device: str = "cpu") -> Encoded:
        """Wrap the base format's encoding `enc` of the tensor `w` with the rank-r correction of its residual."""
        (spec,) = enc.tensors
        if w.ndim != 2:
            raise ConfigError(f"lowrank: tensor {spec.name} has shape {tuple(w.shape)}; a correction needs a matrix")
        rows, cols = w.shape
        if self.rank > min(rows, cols):
            raise ConfigError(f"lowrank: rank {self.rank} exceeds min(rows, cols) = {min(rows, cols)} of {spec.name}")
        if enc.recon is None:
            raise ConfigError(f"lowrank: the base encoding of {spec.name} carries no reconstruction")
        base_hat = enc.recon[spec.name].float()
        resid = w.detach().to(device, torch.float32) - base_hat.to(device)
        u, s, vh = torch.linalg.svd(resid, full_matrices=False)
        a = (u[:, : self.rank] * s[: self.rank]).cpu()
        b = vh[: self.rank].cpu()
        a_codes, a_scale, _ = quantize_factor(a, self.a_bits, self.a_group_size, f"A of {spec.name}")
        b_codes, b_scale, _ = quantize_factor(b, self.b_bits, self.group_size, f"B of {spec.name}")
        streams = {PREFIX + k: v for k, v in enc.streams.items()}
        streams["lowrank.a"] = Stream(a_codes, "lowrank", 2**self.a_bits)
        streams["lowrank.b"] = Stream(b_codes, "lowrank", 2**self.b_bits)
        streams["lowrank.a_scale"] = Stream(a_scale, "lowrank")
        streams["lowrank.b_scale"] = Stream(b_scale, "lowrank")
        meta = {"base_format": enc.format, "base_meta": enc.meta, "rank": self.rank}
        out = Encoded(self.name, enc.tensors, streams, meta)
        out.recon = {spec.name: self._apply(out, base_hat)}
        factor_bits = self.rank * (rows * self.a_bits + cols * self.b_bits) + 16 * (a_scale.size + b_scale.size)
        out.nominal_bits = enc.nominal_bits + float(factor_bits)
        return out

    def _apply(self, enc: Encoded, base_hat: Tensor) -> Tensor:
        """base(W) + A·B from the stored factor streams, cast to the tensor's dtype."""
        (spec,) = enc.tensors
        rows, cols = spec.shape
        r = int(enc.meta["rank"])
        s = enc.streams
        a = dequantize_factor(s["lowrank.a"].data, s["lowrank.a_scale"].data, self.a_bits, (rows, r))
        b = dequantize_factor(s["lowrank.b"].data, s["lowrank.b_scale"].data, self.b_bits, (r, cols))
        return (base_hat.float() + a @ b).to(torch_dtype(spec.dtype))

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        (spec,) = enc.tensors
        base_streams = {k.removeprefix(PREFIX): v for k, v in enc.streams.items() if k.startswith(PREFIX)}
        base_enc = Encoded(str(enc.meta["base_format"]), enc.tensors, base_streams, dict(enc.meta["base_meta"]))
        base_hat = self._base.decode(base_enc)[spec.name]
        return {spec.name: self._apply(enc, base_hat)}
