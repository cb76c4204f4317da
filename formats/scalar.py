"""Scalar quantization: b-bit integer codes with one scale (and, asymmetric, one zero point) per
row or per group of a row; round-to-nearest or GPTQ.

Symmetric: qmax = 2^(b-1)-1, scale = max(clip/qmax, scale_floor) computed in fp32,
q = clamp(round(clamp(w, ±clip)/scale), ±qmax), stored as q + qmax; decoded as
q·float(scale stored in scale_dtype). With bits=8, clip="percentile", clip_q=0.9999984 and
scale_floor=1/127 this is Parameter Golf's int8 rule, bit for bit. Asymmetric: range
[max(min w, -clip), min(max w, clip)] widened to hold 0, scale = range/(2^b-1), zero =
clamp(round(-lo/scale), 0, 2^b-1), q = clamp(round(w/scale)+zero, 0, 2^b-1), decoded
(q-zero)·scale. Tensors that are not 2-D get one fp32 scale for the whole tensor (no floor;
scale 1 when the clip is 0), as in Parameter Golf's vector path.

round_stored (default): codes are rounded with the scale as stored (scale_dtype read back as
fp32, and the zero point from it), so they are the nearest levels of the grid decode uses;
off, they are rounded with the fp32 scale, as Parameter Golf's baseline int8 export does.

scale_search ("mse" or "output", matrices only): each row/group tries its clip rule's scale
times 1 and times search_steps factors evenly spaced in [search_min, search_max] (the clip,
or the asymmetric range, shrinks or grows with it), quantizes with each as encode would
(stored scales, same rounding) and keeps the one with the lowest Σ (w−ŵ)², weighted for
"output" by the calibration Hessian's diagonal (per input column); ties keep the rule's
scale. GPTQ then quantizes on the grid found. Tensors that are not 2-D keep the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ConfigError
from bytegolf.formats.arrays import from_numpy, single_tensor, to_numpy, torch_dtype
from bytegolf.formats.base import (
    EncodeContext,
    Encoded,
    Format,
    Stream,
    TensorSpec,
    Trainable,
    hessian_fallback,
    meta_int,
)
from bytegolf.formats.gptq import gptq_quantize

SCALE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CLIPS = ("max", "percentile", "sdclip")
SCALE_SEARCHES = ("none", "mse", "output")
QUANTILE_LIMIT = 16_000_000  # torch.quantile refuses longer slices
SEARCH_CHUNK = 1 << 22  # rows·groups·candidates·group_size evaluated at once by the scale search


def quantile(x: Tensor, q: float, force_sort: bool = False) -> Tensor:
    """torch.quantile (linear interpolation) over the last dim; slices too long for it are sorted by hand."""
    if x.shape[-1] <= QUANTILE_LIMIT and not force_sort:
        return torch.quantile(x, q, dim=-1)
    srt = torch.sort(x, dim=-1).values
    rank = torch.tensor(q, dtype=x.dtype, device=x.device) * (x.shape[-1] - 1)
    below, above = int(rank), int(torch.ceil(rank))
    return torch.lerp(srt[..., below], srt[..., above], rank - below)


def entropy_bits(codes: Tensor) -> float:
    """Σ −log2 p(c) over integer codes, p their empirical frequencies: the order-0 entropy coder's bits."""
    if codes.numel() == 0:
        return 0.0
    flat = codes.flatten().long()
    counts = torch.bincount(flat - flat.min()).double()
    counts = counts[counts > 0]
    n = float(counts.sum())
    return float(n * math.log2(n) - (counts * counts.log2()).sum())


def dequantize(q: Tensor, scale: Tensor, zero: Tensor | None) -> Tensor:
    """fp32 values of integer codes q (..., n) under per-slice scale (...) and zero point (...) or None."""
    if zero is not None:
        q = q - zero[..., None]
    return q.float() * scale[..., None]


@dataclass
class Grid:
    """Quantization grid per (row, group): rounding scale, stored scale read as fp32, zero point."""

    bits: int
    clip: Tensor  # symmetric: |w| clip; asymmetric: unused
    scale: Tensor  # fp32 scale used for rounding (the stored one read back, with round_stored)
    deq_scale: Tensor  # the stored scale as fp32, used for reconstruction
    zero: Tensor | None  # int32 zero point (asymmetric) or None

    def quantize(self, x: Tensor) -> Tensor:
        """Signed (symmetric) or unsigned (asymmetric) int32 codes of x (..., n) for a grid of shape (...)."""
        if self.zero is None:
            qmax = 2 ** (self.bits - 1) - 1
            c = self.clip[..., None]
            clipped = torch.maximum(torch.minimum(x, c), -c)
            return torch.clamp(torch.round(clipped / self.scale[..., None]), -qmax, qmax).to(torch.int32)
        q = torch.round(x / self.scale[..., None]) + self.zero[..., None]
        return torch.clamp(q, 0, 2**self.bits - 1).to(torch.int32)

    def select(self, idx: Tensor | int) -> Grid:
        """The grid at groups idx of the last grid dim (an int drops that dim)."""
        z = None if self.zero is None else self.zero[..., idx]
        return Grid(self.bits, self.clip[..., idx], self.scale[..., idx], self.deq_scale[..., idx], z)

    def to(self, device: str | torch.device) -> Grid:
        z = None if self.zero is None else self.zero.to(device)
        return Grid(self.bits, self.clip.to(device), self.scale.to(device), self.deq_scale.to(device), z)


SDCLIP_K_INT6 = 12.85  # the leading records' clip multiple for int6 block matrices


def clip_warning(params: dict[str, Any]) -> str | None:
    """Why a scalar setting is likely a mistake, or None: SDClip at a width other than int6 with the clip
    multiple left at its default (12.85 is tuned for int6; at int4 its step is 1.8σ and most weights round
    to zero)."""
    bits = params.get("bits", 6)
    if params.get("clip", "sdclip") != "sdclip" or params.get("clip_k") is not None or bits == 6:
        return None
    keep = SDCLIP_K_INT6 * (2 ** (bits - 1) - 1) / 31
    return (
        f"scalar bits={bits} with clip_k left at {SDCLIP_K_INT6}, which is tuned for int6: the step is "
        f"{SDCLIP_K_INT6 / (2 ** (bits - 1) - 1):.2f} std of a row. Under an entropy coder the clip, not the width, "
        f"sets the rate: set format.clip_k (e.g. {keep:.2f} keeps int6's step at int{bits}) or sweep clip_k at bits=6"
    )


class Scalar(Format):
    """b-bit scalar quantization per row or group, symmetric or asymmetric, RTN or GPTQ."""

    name = "scalar"
    rate_knob = "clip_k"  # per instance: "clip_k" with sdclip, else "bits"

    def __init__(
        self,
        bits: int = 6,
        group_size: int = 0,
        symmetric: bool = True,
        clip: str = "sdclip",
        clip_q: float = 0.9999984,
        clip_k: float | None = None,
        scale_dtype: str = "fp16",
        scale_floor: float = 0.0,
        gptq: bool = False,
        damp: float = 0.01,
        act_order: bool = False,
        block_size: int = 128,
        round_stored: bool = True,
        scale_search: str = "none",
        search_min: float = 0.5,
        search_max: float = 1.2,
        search_steps: int = 36,
    ) -> None:
        """round_stored: round with the stored scale (else the fp32 one); scale_search: none, mse or
        output, over factors of the clip rule's scale in [search_min, search_max] (search_steps + 1);
        clip_k None: the records' int6 multiple 12.85 (see clip_warning for other widths)."""
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"scalar: bits must be an integer in 2..8, got {bits!r}")
        if not isinstance(group_size, int) or group_size < 0:
            raise ConfigError(f"scalar: group_size must be 0 (per row) or a positive integer, got {group_size!r}")
        if clip not in CLIPS:
            raise ConfigError(f"scalar: clip must be one of {', '.join(CLIPS)}, got {clip!r}")
        if not 0.0 < clip_q <= 1.0:
            raise ConfigError(f"scalar: clip_q must be in (0, 1], got {clip_q!r}")
        if clip_k is None:
            clip_k = SDCLIP_K_INT6
        if not clip_k > 0:
            raise ConfigError(f"scalar: clip_k must be positive, got {clip_k!r}")
        if scale_dtype not in SCALE_DTYPES:
            raise ConfigError(f"scalar: scale_dtype must be one of {', '.join(SCALE_DTYPES)}, got {scale_dtype!r}")
        if not scale_floor >= 0:
            raise ConfigError(f"scalar: scale_floor must be >= 0, got {scale_floor!r}")
        if not damp >= 0 or not isinstance(block_size, int) or block_size < 1:
            raise ConfigError(f"scalar: need damp >= 0 and block_size >= 1, got {damp!r}, {block_size!r}")
        if not isinstance(round_stored, bool):
            raise ConfigError(f"scalar: round_stored must be true or false, got {round_stored!r}")
        if scale_search not in SCALE_SEARCHES:
            raise ConfigError(f"scalar: scale_search must be one of {', '.join(SCALE_SEARCHES)}, got {scale_search!r}")
        if not 0 < search_min <= search_max < math.inf:
            raise ConfigError(f"scalar: need 0 < search_min <= search_max (finite), got {search_min!r}, {search_max!r}")
        if not isinstance(search_steps, int) or isinstance(search_steps, bool) or not 1 <= search_steps <= 1000:
            raise ConfigError(f"scalar: search_steps must be an integer in 1..1000, got {search_steps!r}")
        self.bits, self.group_size, self.symmetric = bits, group_size, bool(symmetric)
        self.clip, self.clip_q, self.clip_k = clip, float(clip_q), float(clip_k)
        self.scale_dtype, self.scale_floor = scale_dtype, float(scale_floor)
        self.gptq, self.damp, self.act_order, self.block_size = bool(gptq), float(damp), bool(act_order), block_size
        self.round_stored, self.scale_search = round_stored, scale_search
        self.search_min, self.search_max, self.search_steps = float(search_min), float(search_max), search_steps
        self.rate_knob = "clip_k" if clip == "sdclip" else "bits"

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "rate_knob"}

    def predict_bits(self, tensors: dict[str, Tensor]) -> float | None:
        """The order-0 entropy of the round-to-nearest codes at these settings (what an entropy coder stores of
        them; the clip moves it while the nominal bits stay put) plus one scale (and a bits-wide zero point,
        asymmetric) per row or group of a matrix; None for tensors that are not matrices. GPTQ's codes spread
        a little wider than round-to-nearest's: the search scales the prediction by what its probes measure."""
        total = 0.0
        for t in tensors.values():
            if t.ndim != 2 or t.numel() == 0:
                return None
            rows, cols = t.shape
            g = self.group_size or cols
            if cols % g:
                return None
            x = t.detach().float().reshape(rows, cols // g, g)
            clip, lo, hi = self._range(x)
            grid, stored = self._grid(clip, lo, hi, per_tensor=False)
            per_group = SCALE_DTYPES[self.scale_dtype].itemsize * 8 + (0 if self.symmetric else self.bits)
            total += entropy_bits(grid.quantize(x)) + stored.numel() * per_group
        return total

    def _clip(self, x: Tensor) -> Tensor:
        """Clip magnitude per slice of x (..., n) by the configured rule."""
        if x.shape[-1] == 0:
            return x.new_zeros(x.shape[:-1])
        a = x.abs()
        if self.clip == "max":
            return a.amax(-1)
        if self.clip == "percentile":
            return quantile(a.reshape(-1, x.shape[-1]), self.clip_q).reshape(x.shape[:-1])
        if x.shape[-1] == 1:  # no spread to measure: keep the value
            return a.amax(-1)
        return self.clip_k * x.std(-1)

    def _range(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Clip rule per slice of x (..., n): the |w| clip, and (asymmetric) the range [lo, hi] holding 0."""
        clip = self._clip(x)
        if self.symmetric:
            return clip, None, None
        lo = torch.maximum(x.amin(-1), -clip).clamp_max(0.0) if x.shape[-1] else clip
        hi = torch.minimum(x.amax(-1), clip).clamp_min(0.0) if x.shape[-1] else clip
        return clip, lo, hi

    def _grid(
        self, clip: Tensor, lo: Tensor | None, hi: Tensor | None, per_tensor: bool, factor: Tensor | float = 1.0
    ) -> tuple[Grid, Tensor]:
        """Grid for a clip rule's (clip, lo, hi) scaled by factor (broadcast), and the scales as stored.

        per_tensor: fp32 scale, no floor, 1 where 0.
        """
        levels = 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1
        clip = clip * factor
        if self.symmetric:
            span = clip
        else:
            lo, hi = lo * factor, hi * factor
            span = hi - lo
        if per_tensor:
            scale = torch.where(span > 0, (span.double() / levels).float(), torch.ones_like(span))
            stored = scale
        else:
            scale = (span / levels).clamp_min(self.scale_floor)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            stored = scale.to(SCALE_DTYPES[self.scale_dtype])
        deq = stored.float()
        if self.round_stored:  # a scale that underflowed to 0 decodes to 0 whatever the codes: round with fp32
            scale = torch.where(deq > 0, deq, scale)
        zero = None
        if not self.symmetric:
            zero = torch.clamp(torch.round(-lo / scale), 0, levels).to(torch.int32)
        return Grid(self.bits, clip, scale, deq, zero), stored

    def _search(self, x: Tensor, clip: Tensor, lo: Tensor | None, hi: Tensor | None, weight: Tensor | None) -> Tensor:
        """Factor per slice (rows, groups) on the clip rule's scale with the lowest Σ weight·(x−x̂)²."""
        rows, groups, n = x.shape
        cands = torch.cat([torch.ones(1), torch.linspace(self.search_min, self.search_max, self.search_steps)]).to(
            x.device
        )
        best = x.new_ones(rows, groups)
        chunk = max(1, SEARCH_CHUNK // max(1, groups * len(cands) * n))
        for r0 in range(0, rows, chunk):
            r = slice(r0, r0 + chunk)
            lo_r = None if lo is None else lo[r, :, None]
            hi_r = None if hi is None else hi[r, :, None]
            grid, _ = self._grid(clip[r, :, None], lo_r, hi_r, per_tensor=False, factor=cands)  # (r, G, C)
            xr = x[r, :, None, :]  # (r, G, 1, n)
            d = dequantize(grid.quantize(xr), grid.deq_scale, grid.zero) - xr
            d = d * d
            if weight is not None:
                d = d * weight[:, None, :]  # (G, 1, n)
            err = d.sum(-1)
            err = torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))
            best[r] = cands[err.argmin(-1)]  # first minimum: ties keep factor 1
        return best

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        name, t = single_tensor(self.name, tensors)
        if not t.is_floating_point():
            raise ConfigError(f"scalar: tensor {name} has non-float dtype {t.dtype}")
        w = t.detach().to(ctx.device, torch.float32)
        if not bool(torch.isfinite(w).all()):
            raise ConfigError(f"scalar: tensor {name} holds NaN or inf")
        matrix = t.ndim == 2 and t.numel() > 0
        if matrix:
            rows, cols = t.shape
            g = self.group_size or cols
            if cols % g:
                raise ConfigError(
                    f"scalar: tensor {name} has rows of length {cols}, not divisible by group_size {self.group_size}"
                )
            x = w.reshape(rows, cols // g, g)
        else:
            x = w.reshape(1, 1, -1)
        clip, lo, hi = self._range(x)
        factor: Tensor | float = 1.0
        if matrix and self.scale_search != "none":
            weight = None
            if self.scale_search == "output" and name not in ctx.hessians:
                hessian_fallback(self, "scale_search=output", "scale_search=mse (unweighted)", name)
            elif self.scale_search == "output":
                weight = self._column_weight(name, ctx, cols, g, w.device)
            factor = self._search(x, clip, lo, hi, weight)
        grid, stored = self._grid(clip, lo, hi, per_tensor=not matrix, factor=factor)
        if not bool(torch.isfinite(stored).all()):
            raise ConfigError(f"scalar: tensor {name} has scales beyond scale_dtype {self.scale_dtype}; use fp32")
        gptq = matrix and self.gptq
        if gptq and name not in ctx.hessians:
            hessian_fallback(self, "gptq=true", "round-to-nearest (gptq=false)", name)
            gptq = False
        if gptq:
            flat = grid.select(torch.arange(cols, device=w.device) // g)  # one grid entry per column

            def quantize_column(col: Tensor, j: int) -> tuple[Tensor, Tensor]:
                sub = flat.select(j)
                q = sub.quantize(col[:, None])
                return q[:, 0], dequantize(q, sub.deq_scale, sub.zero)[:, 0]

            hessian = ctx.hessians[name].to(ctx.device)
            q = gptq_quantize(
                w,
                hessian,
                quantize_column,
                name=name,
                block_size=self.block_size,
                damp=self.damp,
                act_order=self.act_order,
            ).reshape(x.shape)
        else:
            q = grid.quantize(x)
        q, grid, stored = q.cpu(), grid.to("cpu"), stored.cpu()

        offset = 2 ** (self.bits - 1) - 1 if self.symmetric else 0
        alphabet = 2**self.bits - 1 if self.symmetric else 2**self.bits
        sym_dtype = np.uint8 if alphabet <= 256 else np.uint16
        grid_shape = x.shape[:-1] if matrix else (1,)  # (rows, groups) or one scale
        streams = {
            "codes": Stream(
                (q + offset).numpy().astype(sym_dtype).reshape(t.shape if matrix else -1), "codes", alphabet
            ),
            "scales": Stream(to_numpy(stored.reshape(grid_shape)), "scales"),
        }
        if grid.zero is not None:
            streams["zeros"] = Stream(grid.zero.numpy().astype(sym_dtype).reshape(grid_shape), "zeros", 2**self.bits)
        meta = {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "group_size": int(x.shape[-1]),
            "scale_dtype": self.scale_dtype if matrix else "fp32",
        }
        recon = dequantize(q, grid.deq_scale, grid.zero).reshape(t.shape).to(t.dtype)
        n_scales = stored.numel()
        nominal = t.numel() * self.bits + n_scales * (8 * stored.element_size() + (0 if self.symmetric else self.bits))
        return Encoded(self.name, [TensorSpec.of(name, t)], streams, meta, {name: recon}, float(nominal))

    @staticmethod
    def _column_weight(name: str, ctx: EncodeContext, cols: int, g: int, device: torch.device) -> Tensor:
        """Diagonal of the calibration Hessian of tensor `name` as per-column weights (groups, group_size)."""
        h = ctx.hessians.get(name)
        if h is None:
            raise ConfigError(f"scalar: scale_search=output needs a Hessian for tensor {name}, none was collected")
        if tuple(h.shape) != (cols, cols):
            raise ConfigError(f"scalar: Hessian of tensor {name} has shape {tuple(h.shape)}, expected {(cols, cols)}")
        d = torch.diagonal(h).to(device, torch.float32)
        if not bool(torch.isfinite(d).all()):
            raise ConfigError(f"scalar: Hessian of tensor {name} holds NaN or inf")
        return d.clamp_min(0.0).reshape(cols // g, g)

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        (spec,) = enc.tensors
        meta = enc.meta
        bits, n = meta_int(meta, "bits", 1, 32), int(meta["group_size"])
        scale = from_numpy(enc.streams["scales"].data, SCALE_DTYPES[meta["scale_dtype"]]).float()
        codes = torch.from_numpy(np.ascontiguousarray(enc.streams["codes"].data).astype(np.int32))
        zero = None
        if meta["symmetric"]:
            codes = codes - (2 ** (bits - 1) - 1)
        else:
            zero = torch.from_numpy(np.ascontiguousarray(enc.streams["zeros"].data).astype(np.int32))
            zero = zero.reshape(scale.shape)
        q = codes.reshape(*scale.shape, n)
        return {spec.name: dequantize(q, scale, zero).reshape(spec.shape).to(torch_dtype(spec.dtype))}

    def trainable(self, enc: Encoded, device: str | torch.device) -> Trainable:
        """The scales over the frozen codes (and zero points)."""
        (spec,) = enc.tensors
        meta, s = enc.meta, enc.streams
        bits, n = int(meta["bits"]), int(meta["group_size"])
        grid = s["scales"].data.shape
        codes = torch.from_numpy(s["codes"].data.astype(np.int32)).reshape(*grid, n).to(device)
        zero = None
        if meta["symmetric"]:
            codes = codes - (2 ** (bits - 1) - 1)
        else:
            zero = torch.from_numpy(s["zeros"].data.astype(np.int32)).reshape(grid).to(device)

        def rebuild(v: dict[str, Tensor]) -> dict[str, Tensor]:
            return {spec.name: dequantize(codes, v["scales"], zero).reshape(spec.shape)}

        return Trainable({"scales": SCALE_DTYPES[meta["scale_dtype"]]}, rebuild)
