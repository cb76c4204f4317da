"""SpQR pieces (Dettmers et al. 2023, arXiv 2306.03078) for sparse_outlier: a GPTQ pass that picks
outliers while it quantizes, and SpQR's small-group base with second-level quantized statistics.

GPTQ with outliers (`gptq_pass`): columns are visited in order (act-order: by descending diag H)
with U = upper Cholesky factor of (H + λI)⁻¹. At column j the current (already updated) values
w are quantized on the grid; sensitivity = (w − ŵ)²/U_jj², the OBS cost of that error. Given a
quota k_j, the k_j most sensitive weights of the column become outliers: their visit-time value
is kept (stored by the caller), their code is the code of 0, and their error pushed onto later
columns is zero; the rest are quantized and their error propagated as usual (lazy blocks).

Outlier budget (`select_in_gptq`): exactly n = round(fraction·rows·cols) outliers in two
passes. Pass 1 runs GPTQ without outliers on the grid fitted to all weights and records every
weight's sensitivity (over SpQR groups: the larger of it and the weight's leave-one-out gain
when its group starts, which catches weights that min-max covers by stretching the range); the
n highest overall (a global threshold, as SpQR's) fix the quota k_j of each column and a
provisional outlier set S. Pass 2 fits the grid without S and runs GPTQ again, choosing in each
column its k_j most sensitive weights at visit time. Pass 1 does not depend on n and is cached.

`SpqrGroups` ("spqr", only as sparse_outlier's base: `base: {name: spqr, ...}`): asymmetric
min-max b-bit codes over groups of `group_size` (β1 = 16) consecutive input columns of a row,
the range widened to hold 0 (GPTQ's quantizer). Each group's scale s = (hi − lo)/(2^b − 1) and
zero z = −lo/s are quantized again: per group of columns, over chunks of `stat_group` (β2 = 16)
consecutive rows, min-max at `stat_bits` bits with an fp16 step and fp16 minimum per chunk and
statistic; v̂ = min + q·step (scales floored at 2^−24). Codes q = clamp(round(w/ŝ + ẑ), 0,
2^b − 1), decoded (q − ẑ)·ŝ. With gptq (default) the statistics of a group are fitted when GPTQ
reaches it, on the updated weights (SpQR's dynamic groups), leaving out the pass-1 outlier set;
with act_order (GPTQ only) the columns, and so the groups, follow descending diag H and the
permutation is stored. Without gptq the groups are fitted to W and rounded to nearest. Bits =
rows·cols·b + rows·(cols/β1)·2·stat_bits + ⌈rows/β2⌉·(cols/β1)·64 (+ 16·cols for the
permutation): b + 2·stat_bits/β1 + 64/(β1β2) per weight, SpQR's formula.
Streams: "codes" (rows, cols) in visit order, alphabet 2^b; "scales" / "zeros" (rows, groups)
stat codes, alphabet 2^stat_bits; "scale_stats" / "zero_stats" (chunks, groups, 2) fp16
(step, minimum); "perm" (cols,) uint16 with act_order.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ConfigError
from bytegolf.formats.arrays import check_matrix, from_numpy, single_tensor, to_numpy, torch_dtype
from bytegolf.formats.base import EncodeContext, Encoded, Format, Stream, TensorSpec, get_format
from bytegolf.formats.gptq import inverse_hessian_factor

STAT_FLOOR = 2.0**-24  # smallest scale a decoded statistic may take (fp16's smallest subnormal)
SCALE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# ---- GPTQ with outliers -------------------------------------------------------------------------


class ColumnGrid(Protocol):
    """What gptq_pass needs of a quantization grid. group_size > 0: begin() is called at every
    group start (visit positions 0, g, 2g, ...) with the group's current weights, before quantize."""

    group_size: int

    def begin(self, j: int, block: Tensor) -> None: ...

    def quantize(self, col: Tensor, j: int) -> tuple[Tensor, Tensor]:
        """(symbols, dequantized values) of column values col (rows,) at visit position j."""
        ...


def prepare_gptq(
    t: Tensor, h: Tensor, damp: float, act_order: bool, name: str, device: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(weights in visit order, U of the visit-ordered H, visit order), fp32 on `device`, as GPTQ sets
    them up: dead inputs (diag H = 0) get diag 1 and zero weights; act_order visits by descending diag."""
    cols = t.shape[1]
    if tuple(h.shape) != (cols, cols) or not bool(torch.isfinite(h).all()):
        raise ConfigError(f"GPTQ: Hessian of tensor {name} must be a finite {cols}×{cols} matrix, got {tuple(h.shape)}")
    h = h.to(device, torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w = t.detach().to(device, torch.float32).clone()
    w[:, dead] = 0.0
    if act_order:
        perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        h = h[perm][:, perm]
    else:
        perm = torch.arange(cols, device=w.device)
    return w[:, perm], inverse_hessian_factor(h, damp, name), perm


@dataclass
class PassResult:
    """One GPTQ pass, in visit order: symbols, sensitivities, outlier mask and visit-time values."""

    codes: Tensor  # (rows, cols) int32
    sens: Tensor  # (rows, cols) fp32, (w − ŵ)²/U_jj² before the outlier decision
    outliers: Tensor  # (rows, cols) bool
    values: Tensor  # (rows, cols) fp32, the outliers' values when visited (0 elsewhere)


def gptq_pass(w: Tensor, u: Tensor, grid: ColumnGrid, block_size: int, quota: list[int] | None = None) -> PassResult:
    """GPTQ over w (rows, cols, visit order) with factor u; quota[j] outliers in column j (none: no outliers)."""
    rows, cols = w.shape
    g = grid.group_size
    bs = block_size if not g else -(-block_size // g) * g  # whole groups per block
    wt = w.T.contiguous()  # column-major: one column is one contiguous row of wt
    codes = torch.zeros(cols, rows, dtype=torch.int32, device=w.device)
    sens = torch.zeros(cols, rows, device=w.device)
    outliers = torch.zeros(cols, rows, dtype=torch.bool, device=w.device)
    values = torch.zeros(cols, rows, device=w.device)
    loo = getattr(grid, "loo", None)
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        w1 = wt[i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if g and j % g == 0:
                grid.begin(j, w1[i : i + g].T)
            col = w1[i]
            q, deq = grid.quantize(col, j)
            d = u1[i, i]
            s = ((col - deq) / d).square()
            sens[j] = s if loo is None else torch.maximum(s, loo[:, j])
            k = quota[j] if quota is not None else 0
            if k > 0:
                m = torch.zeros(rows, dtype=torch.bool, device=w.device)
                m[torch.topk(s, k).indices] = True
                q0, _ = grid.quantize(torch.where(m, torch.zeros_like(col), col), j)
                q = torch.where(m, q0, q)
                deq = torch.where(m, col, deq)
                outliers[j] = m
                values[j] = torch.where(m, col, torch.zeros_like(col))
            codes[j] = q
            e = (col - deq) / d
            w1[i:] -= u1[i, i:, None] * e[None, :]
            err1[i] = e
        wt[i2:] -= u[i1:i2, i2:].T @ err1
    return PassResult(*(x.T.contiguous() for x in (codes, sens, outliers, values)))


FIRST_PASS_CACHE: OrderedDict[str, Tensor] = OrderedDict()  # pass-1 sensitivities (CPU) by content key
FIRST_PASS_ENTRIES = 256  # a model's matrices; the rate search probes each at many fractions


def _content_key(tag: str, *tensors: Tensor) -> str:
    h = hashlib.blake2b(tag.encode(), digest_size=16)
    for t in tensors:
        c = t.detach().cpu().contiguous()
        h.update(f"{c.dtype}{tuple(c.shape)}".encode())
        h.update(c.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def select_in_gptq(
    w: Tensor,
    u: Tensor,
    make_grid: Callable[[Tensor | None], ColumnGrid],
    n: int,
    block_size: int,
    tag: str,
    source: Tensor,
) -> tuple[ColumnGrid, PassResult]:
    """Two passes (module docstring): exactly n outliers, each column's quota from pass 1's global top n.

    Pass 1 does not depend on n: its sensitivities are kept in memory by the content of the
    tensor `source` (that w came from), u and `tag` (which must name every setting the grid
    depends on), so a search over the fraction runs it once per tensor."""
    key = _content_key(f"{tag}|{block_size}", source, u)
    sens = FIRST_PASS_CACHE.get(key)
    if sens is None:
        sens = gptq_pass(w, u, make_grid(None), block_size).sens.cpu()
        FIRST_PASS_CACHE[key] = sens
        while len(FIRST_PASS_CACHE) > FIRST_PASS_ENTRIES:
            FIRST_PASS_CACHE.popitem(last=False)
    else:
        FIRST_PASS_CACHE.move_to_end(key)
    top = torch.topk(sens.reshape(-1), n).indices
    provisional = torch.zeros(w.numel(), dtype=torch.bool)
    provisional[top] = True
    provisional = provisional.reshape(w.shape)
    quota = provisional.sum(0).tolist()
    grid = make_grid(provisional.to(w.device))
    return grid, gptq_pass(w, u, grid, block_size, quota)


# ---- a scalar base, its grid read from an RTN encode ------------------------------------------


class StaticGrid:
    """Scalar's per-row / per-group grid as stored (scales as decoded, zero points), by original column."""

    group_size = 0

    def __init__(self, enc: Encoded, order: Tensor, device: str) -> None:
        meta = enc.meta
        self.bits, self.symmetric, self.n = int(meta["bits"]), bool(meta["symmetric"]), int(meta["group_size"])
        dt = SCALE_DTYPES[meta["scale_dtype"]]
        self.scale = from_numpy(enc.streams["scales"].data, dt).float().to(device)
        self.zero = None
        if not self.symmetric:
            z = np.ascontiguousarray(enc.streams["zeros"].data).astype(np.int64)
            self.zero = torch.from_numpy(z).float().reshape(self.scale.shape).to(device)
        self.order = order.tolist()

    def begin(self, j: int, block: Tensor) -> None:
        pass

    def quantize(self, col: Tensor, j: int) -> tuple[Tensor, Tensor]:
        gi = self.order[j] // self.n
        s = self.scale[:, gi]
        if self.zero is None:
            qmax = 2 ** (self.bits - 1) - 1
            q = torch.clamp(torch.round(col / s), -qmax, qmax)
            return (q + qmax).to(torch.int32), q * s
        z = self.zero[:, gi]
        q = torch.clamp(torch.round(col / s) + z, 0, 2**self.bits - 1)
        return q.to(torch.int32), (q - z) * s


def scalar_in_gptq(base: Format, name: str, t: Tensor, n: int, ctx: EncodeContext) -> tuple[Encoded, Tensor, Tensor]:
    """A GPTQ scalar base with n outliers picked in the pass: (base encoding with its recon, outlier
    mask, outlier values), mask and values (rows, cols) on the CPU in the original column order.

    The grid is the base's own, as an RTN encode stores it: pass 1 on W, pass 2 on W with the
    provisional outliers set to 0. Codes are rounded against the stored (decoded) scales."""
    cfg = base.config()
    rtn = get_format("scalar", **{**cfg, "gptq": False})
    if name not in ctx.hessians:
        raise ConfigError(f"sparse_outlier: select=hessian needs a Hessian for tensor {name}, none was collected")
    w, u, perm = prepare_gptq(t, ctx.hessians[name], float(cfg["damp"]), bool(cfg["act_order"]), name, ctx.device)
    inv = torch.argsort(perm)
    encs: dict[str, Encoded] = {}

    def make_grid(exclude: Tensor | None) -> ColumnGrid:
        src = t.detach().cpu()
        if exclude is not None:
            src = src.clone()
            src[exclude[:, inv].cpu()] = 0
        encs["rtn"] = rtn.encode({name: src}, ctx)
        return StaticGrid(encs["rtn"], perm.cpu(), ctx.device)

    tag = "scalar" + json.dumps(cfg, sort_keys=True, default=str)
    _, res = select_in_gptq(w, u, make_grid, n, int(cfg["block_size"]), tag, t)
    enc = encs["rtn"]
    codes = res.codes[:, inv].cpu().numpy()
    streams = dict(enc.streams)
    old = streams["codes"]
    streams["codes"] = Stream(codes.astype(old.data.dtype).reshape(old.data.shape), old.role, old.alphabet)
    spec = TensorSpec.of(name, t)
    recon = base.decode(Encoded(base.name, [spec], streams, enc.meta))[name]
    out = Encoded(base.name, [spec], streams, enc.meta, {name: recon}, enc.nominal_bits)
    return out, res.outliers[:, inv].cpu(), res.values[:, inv].cpu()


# ---- SpQR's small groups with quantized statistics -----------------------------------------------


def quantize_stat(v: Tensor, bits: int, chunk: int) -> tuple[Tensor, Tensor]:
    """Min-max `bits`-bit codes (int32, like v (rows,)) per chunk of `chunk` rows, and the chunk stats
    (chunks, 2) as fp16 values held in fp32: (step, minimum)."""
    rows = v.shape[0]
    pad = -rows % chunk
    x = torch.cat([v, v[-1:].expand(pad)]) if pad else v
    x = x.reshape(-1, chunk)
    lo, hi = x.amin(1), x.amax(1)
    levels = 2**bits - 1
    step = ((hi - lo) / levels).half().float()
    mn = lo.half().float()
    stats = torch.stack([step, mn], 1)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.clamp(torch.round((x - mn[:, None]) / safe[:, None]), 0, levels)
    q = torch.where(step[:, None] > 0, q, torch.zeros_like(q))
    return q.reshape(-1)[:rows].to(torch.int32), stats


def dequantize_stat(q: Tensor, stats: Tensor, chunk: int, floor: float | None) -> Tensor:
    """The values of stat codes q (rows, ...) from chunk stats (chunks, ..., 2); floored when floor is set."""
    rows = q.shape[0]
    step = stats[..., 0].repeat_interleave(chunk, 0)[:rows]
    mn = stats[..., 1].repeat_interleave(chunk, 0)[:rows]
    v = mn + q.float() * step
    return v.clamp_min(floor) if floor is not None else v


def dequantize_codes(codes: Tensor, scale: Tensor, zero: Tensor, group_size: int) -> Tensor:
    """(codes − ẑ)·ŝ with one (ŝ, ẑ) per row and group of columns; codes (rows, cols), stats (rows, groups)."""
    rows, cols = codes.shape
    q = codes.float().reshape(rows, cols // group_size, group_size)
    return ((q - zero[..., None]) * scale[..., None]).reshape(rows, cols)


def _minmax_step(x: Tensor, levels: int) -> Tensor:
    """Min-max step over the last dim, the range widened to hold 0."""
    return ((x.amax(-1).clamp_min(0.0) - x.amin(-1).clamp_max(0.0)) / levels).clamp_min(STAT_FLOOR)


def leave_one_out_gain(x: Tensor, weight: Tensor, bits: int) -> Tensor:
    """SpQR's leave-one-out saliency of each weight of row groups x (rows, g), per-column weights (g,):
    how much the group's weighted squared error falls when that weight is left out of the min-max
    fit and kept exactly: its own weighted error, plus the others' expected error step²/12 under
    the full range less that under the range without it. (The others' realized rounding errors,
    which SpQR sums, are noise that can swamp the signal when the weights differ by orders of
    magnitude across a group's columns.)"""
    g, levels = x.shape[1], 2**bits - 1
    s = _minmax_step(x, levels)[:, None]
    z = -x.amin(1, keepdim=True).clamp_max(0.0) / s
    q = torch.clamp(torch.round(x / s + z), 0, levels)
    own = ((q - z) * s - x).square() * weight
    idx = torch.arange(g, device=x.device)
    others = idx[1:] - (idx[:, None] >= idx[1:]).long()  # row l: every index but l
    s_l = _minmax_step(x[:, others], levels)
    rest = weight.sum() - weight
    return own + rest * (s.square() - s_l.square()) / 12


class GroupGrid:
    """SpQR's groups, fitted when begin() reaches them (leaving out `exclude`, visit order). With
    `weight` (cols,) per-column error weights, begin() also fills `loo` (rows, cols) with each
    weight's leave-one-out gain under those weights."""

    def __init__(
        self,
        fmt: SpqrGroups,
        rows: int,
        cols: int,
        device: str,
        exclude: Tensor | None,
        weight: Tensor | None = None,
    ) -> None:
        self.bits, self.group_size = fmt.bits, fmt.group_size
        self.stat_bits, self.stat_group = fmt.stat_bits, fmt.stat_group
        groups, chunks = cols // self.group_size, -(-rows // self.stat_group)
        self.s_codes = torch.zeros(rows, groups, dtype=torch.int32)
        self.z_codes = torch.zeros(rows, groups, dtype=torch.int32)
        self.s_stats = torch.zeros(chunks, groups, 2)
        self.z_stats = torch.zeros(chunks, groups, 2)
        self.exclude, self.device = exclude, device
        self.scale = self.zero = torch.zeros(rows, device=device)
        self.weight = weight
        self.loo = None if weight is None else torch.zeros(rows, cols, device=device)

    def begin(self, j: int, block: Tensor) -> None:
        gi, levels = j // self.group_size, 2**self.bits - 1
        x = block
        if self.loo is not None and self.weight is not None:
            cols = slice(j, j + self.group_size)
            self.loo[:, cols] = leave_one_out_gain(x, self.weight[cols], self.bits)
        if self.exclude is not None:
            keep = ~self.exclude[:, j : j + self.group_size]
            lo = torch.where(keep, x, torch.full_like(x, float("inf"))).amin(1)
            hi = torch.where(keep, x, torch.full_like(x, float("-inf"))).amax(1)
            lo, hi = torch.where(keep.any(1), lo, 0.0), torch.where(keep.any(1), hi, 0.0)
        else:
            lo, hi = x.amin(1), x.amax(1)
        lo, hi = lo.clamp_max(0.0), hi.clamp_min(0.0)
        scale = ((hi - lo) / levels).clamp_min(STAT_FLOOR)
        zero = -lo / scale
        # The statistics are quantized on the CPU, the same arithmetic decode uses.
        sq, ss = quantize_stat(scale.cpu(), self.stat_bits, self.stat_group)
        zq, zs = quantize_stat(zero.cpu(), self.stat_bits, self.stat_group)
        if not bool(torch.isfinite(ss).all() and torch.isfinite(zs).all()):
            raise ConfigError("spqr: group statistics beyond fp16")
        self.s_codes[:, gi], self.s_stats[:, gi] = sq, ss
        self.z_codes[:, gi], self.z_stats[:, gi] = zq, zs
        self.scale = dequantize_stat(sq, ss, self.stat_group, STAT_FLOOR).to(self.device)
        self.zero = dequantize_stat(zq, zs, self.stat_group, None).to(self.device)

    def quantize_block(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Symbols and values of x (rows, k) in the current group."""
        s, z = self.scale[:, None], self.zero[:, None]
        q = torch.clamp(torch.round(x / s + z), 0, 2**self.bits - 1)
        return q.to(torch.int32), (q - z) * s

    def quantize(self, col: Tensor, j: int) -> tuple[Tensor, Tensor]:
        q, deq = self.quantize_block(col[:, None])
        return q[:, 0], deq[:, 0]


def _int(name: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"spqr: {name} must be an integer {rng}, got {v!r}")
    return v


class SpqrGroups(Format):
    """b-bit min-max codes over small groups, their scales and zeros quantized again (module docstring)."""

    name = "spqr"
    rate_knob = "bits"

    def __init__(
        self,
        bits: int = 3,
        group_size: int = 16,
        stat_bits: int = 3,
        stat_group: int = 16,
        gptq: bool = True,
        damp: float = 0.01,
        act_order: bool = False,
        block_size: int = 128,
    ) -> None:
        self.bits = _int("bits", bits, 2, 8)
        self.group_size = _int("group_size", group_size, 2)
        self.stat_bits = _int("stat_bits", stat_bits, 2, 8)
        self.stat_group = _int("stat_group", stat_group, 1)
        self.block_size = _int("block_size", block_size, 1)
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp >= 0:
            raise ConfigError(f"spqr: damp must be a number >= 0, got {damp!r}")
        if not isinstance(gptq, bool) or not isinstance(act_order, bool):
            raise ConfigError(f"spqr: gptq and act_order must be true or false, got {gptq!r}, {act_order!r}")
        self.gptq, self.damp, self.act_order = gptq, float(damp), act_order

    def config(self) -> dict[str, Any]:
        return dict(vars(self))

    def _check(self, name: str, t: Tensor, ctx: EncodeContext) -> None:
        check_matrix("spqr", name, t)
        if t.shape[1] % self.group_size:
            raise ConfigError(
                f"spqr: tensor {name} has rows of length {t.shape[1]}, not divisible by group_size {self.group_size}"
            )
        if t.shape[1] > 1 << 16 and self.gptq and self.act_order:
            raise ConfigError(f"spqr: tensor {name} has too many columns for a 16-bit permutation")
        if self.gptq and name not in ctx.hessians:
            raise ConfigError(f"spqr: gptq needs a Hessian for tensor {name}, none was collected")

    def _prepare(self, name: str, t: Tensor, ctx: EncodeContext) -> tuple[Tensor, Tensor | None, Tensor]:
        """(weights in visit order on the device, U or None (RTN), visit order)."""
        if self.gptq:
            return prepare_gptq(t, ctx.hessians[name], self.damp, self.act_order, name, ctx.device)
        w = t.detach().to(ctx.device, torch.float32)
        return w, None, torch.arange(w.shape[1], device=w.device)

    def _finish(self, name: str, t: Tensor, grid: GroupGrid, codes: Tensor, perm: Tensor) -> Encoded:
        """Streams, meta, nominal bits and (decoded) reconstruction."""
        rows, cols = t.shape
        sa = 2**self.stat_bits
        streams = {
            "codes": Stream(np.ascontiguousarray(codes.cpu().numpy(), np.uint8), "codes", 2**self.bits),
            "scales": Stream(grid.s_codes.numpy().astype(np.uint8), "scales", sa),
            "zeros": Stream(grid.z_codes.numpy().astype(np.uint8), "zeros", sa),
            "scale_stats": Stream(to_numpy(grid.s_stats.half()), "scales"),
            "zero_stats": Stream(to_numpy(grid.z_stats.half()), "zeros"),
        }
        if self.gptq and self.act_order:
            streams["perm"] = Stream(perm.cpu().numpy().astype(np.uint16), "mask", cols)
        meta = {
            "bits": self.bits,
            "group_size": self.group_size,
            "stat_bits": self.stat_bits,
            "stat_group": self.stat_group,
        }
        groups, chunks = cols // self.group_size, -(-rows // self.stat_group)
        bits = rows * cols * self.bits + rows * groups * 2 * self.stat_bits + chunks * groups * 64
        bits += 16 * cols if self.gptq and self.act_order else 0
        enc = Encoded(self.name, [TensorSpec.of(name, t)], streams, meta, None, float(bits))
        enc.recon = self.decode(enc)
        return enc

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        name, t = single_tensor(self.name, tensors)
        self._check(name, t, ctx)
        w, u, perm = self._prepare(name, t, ctx)
        grid = GroupGrid(self, *w.shape, ctx.device, None)
        codes = self._rtn(w, grid) if u is None else gptq_pass(w, u, grid, self.block_size).codes
        return self._finish(name, t, grid, codes, perm)

    def _rtn(self, w: Tensor, grid: GroupGrid) -> Tensor:
        """Round-to-nearest codes of w, group by group."""
        codes = torch.zeros(w.shape, dtype=torch.int32, device=w.device)
        for j in range(0, w.shape[1], self.group_size):
            grid.begin(j, w[:, j : j + self.group_size])
            codes[:, j : j + self.group_size] = grid.quantize_block(w[:, j : j + self.group_size])[0]
        return codes

    def rtn_saliency(self, name: str, t: Tensor, hdiag: Tensor, ctx: EncodeContext) -> Tensor:
        """Without GPTQ: max((w − ŵ)²·H_jj, leave-one-out gain under H_jj) per weight, fp32 on the CPU
        (the first term alone misses weights that min-max covers by stretching their group's range)."""
        self._check(name, t, ctx)
        w = t.detach().to(ctx.device, torch.float32)
        hd = hdiag.to(ctx.device, torch.float32)
        grid = GroupGrid(self, *w.shape, ctx.device, None, hd)
        enc = self._finish(name, t, grid, self._rtn(w, grid), torch.arange(w.shape[1]))
        err = w.cpu() - enc.recon[name].float()
        assert grid.loo is not None
        return torch.maximum(err.square() * hd.cpu()[None, :], grid.loo.cpu())

    def encode_outliers(self, name: str, t: Tensor, n: int, ctx: EncodeContext) -> tuple[Encoded, Tensor, Tensor]:
        """GPTQ with n outliers picked in the pass: (base encoding, outlier mask, values), the last two
        (rows, cols) on the CPU in the original column order. Pass 1 scores a weight by the larger of
        its sensitivity and its leave-one-out gain under 1/U_jj² (SpQR's test for weights that
        stretch their group)."""
        self._check(name, t, ctx)
        w, u, perm = self._prepare(name, t, ctx)
        assert u is not None
        rows, cols = w.shape
        inv_u2 = torch.diagonal(u).square().reciprocal()

        def make_grid(exclude: Tensor | None) -> ColumnGrid:
            return GroupGrid(self, rows, cols, ctx.device, exclude, inv_u2 if exclude is None else None)

        tag = "spqr" + json.dumps(self.config(), sort_keys=True)
        grid, res = select_in_gptq(w, u, make_grid, n, self.block_size, tag, t)
        assert isinstance(grid, GroupGrid)
        inv = torch.argsort(perm)
        enc = self._finish(name, t, grid, res.codes, perm)
        return enc, res.outliers[:, inv].cpu(), res.values[:, inv].cpu()

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        (spec,) = enc.tensors
        rows, cols = spec.shape
        meta, s = enc.meta, enc.streams
        g, sg = int(meta["group_size"]), int(meta["stat_group"])
        s_stats = from_numpy(s["scale_stats"].data, torch.float16).float()
        z_stats = from_numpy(s["zero_stats"].data, torch.float16).float()
        sq = torch.from_numpy(s["scales"].data.astype(np.int32))
        zq = torch.from_numpy(s["zeros"].data.astype(np.int32))
        scale = dequantize_stat(sq, s_stats, sg, STAT_FLOOR)
        zero = dequantize_stat(zq, z_stats, sg, None)
        codes = torch.from_numpy(s["codes"].data.astype(np.int32)).reshape(rows, cols)
        w = dequantize_codes(codes, scale, zero, g)
        if "perm" in s:
            perm = torch.from_numpy(s["perm"].data.astype(np.int64))
            out = torch.empty_like(w)
            out[:, perm] = w
            w = out
        return {spec.name: w.to(torch_dtype(spec.dtype))}
