"""HQQ (Half-Quadratic Quantization): calibration-free b-bit codes with a float scale and zero point per
group, the zero points fitted by hqq's half-quadratic proximal solver (pip package `hqq`).

Encode runs hqq's own quantizer (hqq.core.quantize.Quantizer.quantize, optimize=True, unpacked codes)
on the CPU in fp32, so the artifact does not depend on the machine (on CUDA hqq's solver would switch to
fp16). Its output becomes three streams: `codes` (the tensor's shape, symbols 0..2^b−1), `scales` and
`zeros` (one per group, 1-D in hqq's group order), the scale and zero stored in `compute_dtype` (fp16
by default), as HQQLinear keeps its meta. Codes are rounded with hqq's fp32 scale and zero, as hqq does.

Groups follow hqq's layout: axis=1 cuts the row-major tensor into consecutive runs of group_size
(groups inside rows when group_size divides the row length), axis=0 views it as (group_size, numel /
group_size) and groups its columns. group_size 0: one group per row (axis 1) or per column (axis 0).

Decode needs no hqq: per group, W = (q − zero)·scale computed in compute_dtype, the two operations
in that order, which is hqq's dequantize (HQQLinear.dequantize) bit for bit; then cast to the
tensor's dtype.

Rate knob: `bits` (1, 2, 3, 4, 5, 6 or 8: hqq has no 7-bit) at a fixed group_size (64 by default).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats.arrays import check_matrix, from_numpy, single_tensor, to_numpy, torch_dtype
from bytegolf.formats.base import EncodeContext, Encoded, Format, Stream, TensorSpec, meta_int

BITS = (1, 2, 3, 4, 5, 6, 8)  # hqq's integer widths (Quantizer.SUPPORTED_BITS less 1.58)
COMPUTE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
AXES = (0, 1)


def group_view(x: Tensor, group_size: int, axis: int) -> Tensor:
    """x as hqq groups it: (numel/g, g) for axis 1, (g, numel/g) for axis 0."""
    return x.reshape(-1, group_size) if axis == 1 else x.reshape(group_size, -1)


def dequantize(
    codes: Tensor, scale: Tensor, zero: Tensor, group_size: int, axis: int, shape: tuple[int, ...]
) -> Tensor:
    """(codes − zero)·scale per group in scale's dtype, reshaped to `shape`: hqq's dequantize arithmetic.

    codes: integer symbols (any shape holding numel entries); scale, zero: one per group in hqq's group
    order (any shape holding numel/group_size entries), of the same float dtype.
    """
    side = (-1, 1) if axis == 1 else (1, -1)
    grouped = group_view(codes, group_size, axis).to(scale.dtype)
    return ((grouped - zero.reshape(side)) * scale.reshape(side)).reshape(shape)


def _quantizer() -> Any:
    """hqq's Quantizer class, imported only when encoding."""
    try:
        from hqq.core.quantize import Quantizer
    except ImportError as exc:
        raise ConfigError(
            f"hqq: encoding needs the hqq package ({exc}); pip install hqq==0.2.8.post1 (decoding does not)"
        ) from None
    return Quantizer


class HQQ(Format):
    """HQQ: b-bit codes with an fp16 scale and zero point per group, zeros fitted by hqq's solver."""

    name = "hqq"
    rate_knob = "bits"

    def __init__(
        self,
        bits: int = 4,
        group_size: int = 64,
        axis: int = 1,
        optimize: bool = True,
        round_zero: bool | None = None,
        compute_dtype: str = "fp16",
    ) -> None:
        """bits: 1, 2, 3, 4, 5, 6 or 8; group_size: entries per group (0: a whole row for axis 1, a whole
        column for axis 0); axis: hqq's grouping axis; optimize: run hqq's proximal solver (else plain
        min-max); round_zero: round the initial zero point (None: hqq's BaseQuantizeConfig rule, on at
        4 bits only); compute_dtype: the stored scale/zero dtype and the decode arithmetic's."""
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
            raise ConfigError(f"hqq: bits must be one of {', '.join(map(str, BITS))} (hqq has no 7-bit), got {bits!r}")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
            raise ConfigError(f"hqq: group_size must be 0 (a row or column) or a positive integer, got {group_size!r}")
        if isinstance(axis, bool) or axis not in AXES:
            raise ConfigError(f"hqq: axis must be 0 or 1, got {axis!r}")
        if not isinstance(optimize, bool):
            raise ConfigError(f"hqq: optimize must be true or false, got {optimize!r}")
        if round_zero is not None and not isinstance(round_zero, bool):
            raise ConfigError(f"hqq: round_zero must be true, false or null (hqq's rule), got {round_zero!r}")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"hqq: compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}")
        self.bits, self.group_size, self.axis = bits, group_size, axis
        self.optimize, self.round_zero, self.compute_dtype = optimize, round_zero, compute_dtype

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        name, t = single_tensor(self.name, tensors)
        check_matrix(self.name, name, t)
        rows, cols = t.shape
        g = self.group_size or (cols if self.axis == 1 else rows)
        if t.numel() % g:
            raise ConfigError(
                f"hqq: tensor {name} has {rows}×{cols} = {t.numel()} entries, not divisible by group_size {g}"
            )
        quantizer = _quantizer()
        round_zero = self.bits == 4 if self.round_zero is None else self.round_zero
        with torch.no_grad():  # hqq solves under inference_mode; the copies made here are ordinary tensors
            w_q, hmeta = quantizer.quantize(
                t.detach().to("cpu", torch.float32),
                nbits=self.bits,
                channel_wise=True,
                group_size=g,
                optimize=self.optimize,
                round_zero=round_zero,
                axis=self.axis,
                bitpack=False,
                device="cpu",
            )
            cdt = COMPUTE_DTYPES[self.compute_dtype]
            scale = hmeta["scale"].to(cdt).reshape(-1).clone()
            zero = hmeta["zero"].to(cdt).reshape(-1).clone()
            codes = w_q.reshape(rows, cols).to(torch.uint8).clone()
        if not (bool(torch.isfinite(scale).all()) and bool(torch.isfinite(zero).all())):
            raise ConfigError(
                f"hqq: tensor {name} has scales or zero points beyond compute_dtype {self.compute_dtype}; use fp32"
            )
        streams = {
            "codes": Stream(codes.numpy().copy(), "codes", 2**self.bits),
            "scales": Stream(to_numpy(scale), "scales"),
            "zeros": Stream(to_numpy(zero), "zeros"),
        }
        meta = {"bits": self.bits, "group_size": g, "axis": self.axis, "compute_dtype": self.compute_dtype}
        recon = dequantize(codes, scale, zero, g, self.axis, tuple(t.shape)).to(t.dtype)
        nominal = t.numel() * self.bits + scale.numel() * 2 * 8 * scale.element_size()
        return Encoded(self.name, [TensorSpec.of(name, t)], streams, meta, {name: recon}, float(nominal))

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        (spec,) = enc.tensors
        meta = enc.meta
        meta_int(meta, "bits", 1, 8)
        g = meta_int(meta, "group_size", 1, 1 << 48)
        axis = meta_int(meta, "axis", 0, 1)
        cdt = COMPUTE_DTYPES.get(meta.get("compute_dtype"))  # type: ignore[arg-type]
        if cdt is None:
            raise ArtifactError(f"meta compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}")
        codes = torch.from_numpy(np.array(enc.streams["codes"].data, copy=True))  # the file's arrays are read-only
        scale = from_numpy(enc.streams["scales"].data, cdt)
        zero = from_numpy(enc.streams["zeros"].data, cdt)
        numel = math.prod(spec.shape)
        if codes.numel() != numel or numel % g or scale.numel() != numel // g or zero.numel() != numel // g:
            raise ArtifactError(
                f"hqq: {spec.name} {spec.shape} with group_size {g} needs {numel} codes and {numel // g} scales and "
                f"zeros, got {codes.numel()}, {scale.numel()}, {zero.numel()}"
            )
        if scale.dtype != cdt or zero.dtype != cdt:
            raise ArtifactError(f"hqq: scales and zeros of {spec.name} must be stored as {meta['compute_dtype']}")
        w = dequantize(codes, scale, zero, g, axis, spec.shape)
        return {spec.name: w.to(torch_dtype(spec.dtype))}
