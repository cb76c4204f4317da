"""Sparse outliers (SpQR / PTQ1.61-style): a base format plus a set of exceptions kept at higher precision.

Every tensor is a matrix W (rows, cols) cut into exception units: single weights ("fine"), whole
rows ("row"), whole input columns ("column") or b×b blocks ("block", b = `block`, which must
divide both dims); round(fraction · #units) units become exceptions. Selection (`select`):
- "magnitude": |w|; "error": |w − ŵ|, ŵ a first encode of W by the base;
- "hessian", SpQR's saliency, matched to the base (H = the tensor's calibration Gram matrix):
  - over a base without error feedback (RTN scalar, spqr with gptq false, any other format):
    (w − ŵ)²·H_jj, the weight's own share of the output error ŵ leaves (spqr: the larger of it
    and the weight's leave-one-out gain under H_jj, formats/spqr.py);
  - over a GPTQ base (scalar or spqr with gptq true), fine layout: the outliers are chosen inside
    the GPTQ pass (formats/spqr.py): at its visit a weight's sensitivity is (w − q)²/U_jj², U the
    upper Cholesky factor of H⁻¹; exactly round(fraction·rows·cols) outliers, each column's quota
    fixed by the global top sensitivities of a first pass without outliers, the column's most
    sensitive weights chosen in a second pass whose grid is fitted without the first pass's
    picks; an outlier's value is w as GPTQ updated it when visited, its error is not propagated,
    its code is the code of 0. (The base's grid is kept as the base stores it; a scalar base's
    codes are rounded against its stored scales.)
  - over a GPTQ base, coarse layouts: (w − ŵ)²/[(H + 1%·mean diag·I)⁻¹]_jj with ŵ the GPTQ encode.
  A unit's score is the sum over its weights (so "column" + "hessian" ranks input columns by their
  summed sensitivity, a calibration-aware form of PTQ1.61's activation mask).
Dead inputs (diag H = 0) score 0 under H_jj and get diag 1 elsewhere.

Outside the in-GPTQ path the base is fitted to W with every exception weight set to 0, so
outliers do not stretch its scales or codebooks (a GPTQ base then quantizes the zeroed positions
like any weight, unaware that they are overwritten); decode runs the base decoder and
overwrites the exception positions with the stored exception values (cast to the tensor's
dtype). The base is any registered format of scope "tensor", given as a dict with its `name`,
or {name: spqr, bits, group_size, stat_bits, stat_group, gptq, damp, act_order, block_size}:
SpQR's small groups (16) with min-max scales and zeros themselves quantized to 3 bits
(formats/spqr.py; only as a base here). Streams:
- "base.*": the base format's streams, roles and alphabets unchanged (its meta per tensor in the list meta["base"]);
- fine: "mask" = the sorted flat indices as gaps g_i = idx_i − idx_{i−1} − 1 (idx_{−1} = −1),
  each written as ⌊g/255⌋ escape symbols 255 followed by g mod 255, in uint8 (alphabet 256): a
  rare long gap costs a few escapes instead of widening every position, and the unary quotient
  plus remainder is a Golomb code that an entropy coder brings close to the gaps' entropy at any
  fraction (the escapes of a very sparse tensor cost little once coded, though nominal bits
  count them at 8 bits). "outliers" = the values in `value_dtype` (fp16,
  bf16, fp32, or int8 codes stored as q + 127, alphabet 255, with one fp32 absmax/127 scale per
  tensor in "scales");
- coarse: "mask" = np.packbits of one bool per unit (rows, columns, or blocks in row-major
  order); "outliers" = each excepted unit's weights (a row, a column, or a flattened block)
  quantized symmetric at `exception_bits` b_e (q + qmax, qmax = 2^(b_e−1) − 1, alphabet
  2^b_e − 1), one fp16 absmax/qmax scale per excepted unit in "scales".
With no exception (fraction 0, or a count that rounds to 0) the unit is the base format's output
exactly, with no exception streams. A unit of several tensors prefixes tensor i's streams "i.".

Bits: base bits + fine: k·value bits + 8·(mask bytes) (+ 32 for the int8 scale); coarse:
8·⌈#units/8⌉ + n·L·b_e + 16·n for n excepted units of L weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ConfigError
from bytegolf.formats.arrays import check_matrix, from_numpy, to_numpy
from bytegolf.formats.base import EncodeContext, Encoded, Format, Stream, TensorSpec, get_format, hessian_fallback
from bytegolf.formats.spqr import SpqrGroups, scalar_in_gptq

LAYOUTS = ("fine", "row", "column", "block")
SELECTS = ("magnitude", "error", "hessian")
VALUE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "int8": torch.int8}
DAMP = 0.01  # Hessian damping, fraction of its mean diagonal
DEFAULT_BASE = {"name": "scalar", "bits": 4}


def to_units(w: Tensor, layout: str, b: int) -> Tensor:
    """(R, C) -> (#units, weights per unit): one weight, row, column or flattened b×b block per row."""
    rows, cols = w.shape
    if layout == "fine":
        return w.reshape(-1, 1)
    if layout == "row":
        return w
    if layout == "column":
        return w.T
    return w.reshape(rows // b, b, cols // b, b).permute(0, 2, 1, 3).reshape(-1, b * b)


def from_units(u: Tensor, shape: tuple[int, int], layout: str, b: int) -> Tensor:
    """Inverse of to_units."""
    rows, cols = shape
    if layout == "column":
        return u.T.contiguous()
    if layout == "block":
        return u.reshape(rows // b, cols // b, b, b).permute(0, 2, 1, 3).reshape(rows, cols)
    return u.reshape(rows, cols)


ESCAPE = 255  # fine positions: a gap symbol that adds 255 and continues


def gap_symbols(idx: np.ndarray) -> np.ndarray:
    """Sorted distinct flat indices as escape-coded gaps in uint8 (module docstring)."""
    gaps = np.diff(idx.astype(np.int64), prepend=-1) - 1
    counts = gaps // ESCAPE + 1
    out = np.full(int(counts.sum()), ESCAPE, dtype=np.uint8)
    out[np.cumsum(counts) - 1] = gaps % ESCAPE
    return out


def gap_positions(sym: np.ndarray) -> np.ndarray:
    """Inverse of gap_symbols: the flat indices (int64)."""
    s = sym.astype(np.int64).reshape(-1)
    ends = np.cumsum(s)[s != ESCAPE]
    return ends + np.arange(len(ends))


class SparseOutlier(Format):
    """A base format fitted without the exceptions, plus the exceptions (weights, rows, columns or blocks)."""

    name = "sparse_outlier"
    rate_knob = "fraction"

    def __init__(
        self,
        base: dict[str, Any] | None = None,
        fraction: float = 0.01,
        layout: str = "fine",
        select: str = "magnitude",
        value_dtype: str = "fp16",
        exception_bits: int = 8,
        block: int = 16,
    ) -> None:
        base = dict(DEFAULT_BASE if base is None else base)
        if not isinstance(base.get("name"), str):
            raise ConfigError(f"sparse_outlier: base must be a dict with a format `name`, got {base!r}")
        if base.get("scope", "tensor") != "tensor":
            raise ConfigError(f"sparse_outlier: the base format must have scope tensor, got {base['scope']!r}")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise ConfigError(f"sparse_outlier: exception fraction must be in [0, 1), got {fraction!r}")
        if layout not in LAYOUTS:
            raise ConfigError(f"sparse_outlier: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if select not in SELECTS:
            raise ConfigError(f"sparse_outlier: select must be one of {', '.join(SELECTS)}, got {select!r}")
        if value_dtype not in VALUE_DTYPES:
            raise ConfigError(
                f"sparse_outlier: value_dtype must be one of {', '.join(VALUE_DTYPES)}, got {value_dtype!r}"
            )
        if isinstance(exception_bits, bool) or not isinstance(exception_bits, int) or not 2 <= exception_bits <= 16:
            raise ConfigError(f"sparse_outlier: exception_bits must be an integer in 2..16, got {exception_bits!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ConfigError(f"sparse_outlier: block must be a positive integer, got {block!r}")
        self.base = base
        self.fraction, self.layout, self.select = float(fraction), layout, select
        self.value_dtype, self.exception_bits, self.block = value_dtype, exception_bits, block
        params = {k: v for k, v in base.items() if k != "name"}
        if base["name"] == SpqrGroups.name:
            try:
                self.base_format: Format = SpqrGroups(**params)
            except TypeError as exc:
                raise ConfigError(f"sparse_outlier: base spqr: {exc}") from None
        else:
            self.base_format = get_format(base["name"], **params)
        self.base_gptq = bool(self.base_format.config().get("gptq", False))

    def config(self) -> dict[str, Any]:
        return {
            "base": dict(self.base),
            "fraction": self.fraction,
            "layout": self.layout,
            "select": self.select,
            "value_dtype": self.value_dtype,
            "exception_bits": self.exception_bits,
            "block": self.block,
        }

    def predict_bits(self, tensors: dict[str, Tensor]) -> float | None:
        """The base's prediction on the whole tensors plus, fine layout, each exception's value and about
        log2(e / fraction) bits of its gap (a geometric gap's entropy); None where the base predicts nothing or
        the layout is coarse. The exceptions' term stays put along the base's knob."""
        base = self.base_format.predict_bits(tensors)
        if base is None or self.layout != "fine":
            return None
        if self.fraction == 0:
            return base
        k = sum(round(self.fraction * t.numel()) for t in tensors.values())
        return base + k * (VALUE_DTYPES[self.value_dtype].itemsize * 8 + math.log2(math.e / self.fraction))

    # ---- encode ----------------------------------------------------------------------------------

    def _select(self, name: str, ctx: EncodeContext) -> str:
        """The selection for a tensor: select=hessian without the tensor's Hessian is its unweighted form, error
        (the saliency with H = I)."""
        if self.select == "hessian" and name not in ctx.hessians:
            hessian_fallback(self, "select=hessian", "select=error (the saliency unweighted)", name)
            return "error"
        return self.select

    def _scores(self, name: str, t: Tensor, w: Tensor, ctx: EncodeContext) -> Tensor:
        """Per-weight exception score (R, C), fp32 on the CPU."""
        select = self._select(name, ctx)
        if select == "magnitude":
            return w.abs()
        h = ctx.hessians.get(name)
        if select == "hessian" and not self.base_gptq:
            self._check_hessian(name, h, w.shape[1])
            hdiag = torch.diagonal(h).float().cpu()
            if isinstance(self.base_format, SpqrGroups):
                return self.base_format.rtn_saliency(name, t, hdiag, ctx)
        err = w - self.base_format.encode({name: t}, ctx).recon[name].float().cpu()
        if select == "error":
            return err.abs()
        if not self.base_gptq:
            return err.pow(2) * hdiag[None, :]
        return err.pow(2) / self._hinv_diag(name, h, w.shape[1], ctx.device)[None, :]

    @staticmethod
    def _check_hessian(name: str, h: Tensor | None, cols: int) -> None:
        if h is None or tuple(h.shape) != (cols, cols) or not bool(torch.isfinite(h).all()):
            got = None if h is None else tuple(h.shape)
            raise ConfigError(f"sparse_outlier: Hessian of tensor {name} must be finite {cols}×{cols}, got {got}")

    @staticmethod
    def _hinv_diag(name: str, h: Tensor, cols: int, device: str) -> Tensor:
        """diag((H + 1%·mean diag·I)⁻¹), dead inputs (diag 0) set to 1 first, as fp32 on the CPU."""
        SparseOutlier._check_hessian(name, h, cols)
        h = h.to(device, torch.float64).clone()
        dead = torch.diagonal(h) == 0
        h[dead, dead] = 1.0
        eye = torch.eye(cols, dtype=h.dtype, device=h.device) * float(torch.diagonal(h).mean())
        damp = DAMP
        for _ in range(4):  # damping grows 10× while H is not positive definite
            lower, info = torch.linalg.cholesky_ex(h + damp * eye)
            if int(info) == 0:
                return torch.cholesky_inverse(lower).diagonal().float().cpu()
            damp *= 10
        raise ConfigError(f"sparse_outlier: Hessian of tensor {name} is not positive definite even with damping")

    def _encode_one(
        self, name: str, t: Tensor, ctx: EncodeContext, prefix: str
    ) -> tuple[TensorSpec, dict[str, Stream], Tensor, dict[str, Any], float]:
        """Spec, streams (named with `prefix`), reconstruction, base meta and nominal bits of one tensor."""
        check_matrix(self.name, name, t)
        rows, cols = t.shape
        b = self.block
        if self.layout == "block" and (rows % b or cols % b):
            raise ConfigError(
                f"sparse_outlier: tensor {name} has shape {(rows, cols)}, not divisible by block {b} in both dims"
            )
        if self.layout == "fine" and t.numel() >= 1 << 32:
            raise ConfigError(f"sparse_outlier: tensor {name} has too many weights for 32-bit positions")
        w = t.detach().float().cpu()
        n_units = to_units(w, self.layout, b).shape[0]
        n = round(self.fraction * n_units)
        if n > 0 and self._select(name, ctx) == "hessian" and self.layout == "fine" and self.base_gptq:
            return self._encode_in_gptq(name, t, n, ctx, prefix)
        w0 = t
        if n > 0:
            score = to_units(self._scores(name, t, w, ctx), self.layout, b).sum(1)
            sel = torch.sort(torch.argsort(score, descending=True, stable=True)[:n]).values
            zeroed = to_units(t.detach().cpu(), self.layout, b).clone()
            zeroed[sel] = 0
            w0 = from_units(zeroed, (rows, cols), self.layout, b)
        base = self.base_format.encode({name: w0}, ctx)
        streams = {f"{prefix}base.{k}": s for k, s in base.streams.items()}
        bits = base.nominal_bits
        if n > 0:
            exc, exc_bits = self._store(name, to_units(w, self.layout, b)[sel], sel, n_units)
            streams.update((prefix + k, s) for k, s in exc.items())
            bits += exc_bits
        recon = self._overwrite(base.recon[name], streams, prefix)
        return TensorSpec.of(name, t), streams, recon, base.meta, float(bits)

    def _encode_in_gptq(
        self, name: str, t: Tensor, n: int, ctx: EncodeContext, prefix: str
    ) -> tuple[TensorSpec, dict[str, Stream], Tensor, dict[str, Any], float]:
        """_encode_one for fine Hessian outliers over a GPTQ base: picked inside the GPTQ pass."""
        if name not in ctx.hessians:
            raise ConfigError(f"sparse_outlier: select=hessian needs a Hessian for tensor {name}, none was collected")
        if isinstance(self.base_format, SpqrGroups):
            base, mask, values = self.base_format.encode_outliers(name, t, n, ctx)
        elif self.base["name"] == "scalar":
            base, mask, values = scalar_in_gptq(self.base_format, name, t, n, ctx)
        else:
            got = self.base["name"]
            raise ConfigError(f"sparse_outlier: outliers inside GPTQ need a scalar or spqr base, got {got}")
        sel = torch.from_numpy(np.flatnonzero(mask.reshape(-1).numpy()))
        exc, exc_bits = self._store(name, values.reshape(-1)[sel][:, None], sel, t.numel())
        streams = {f"{prefix}base.{k}": s for k, s in base.streams.items()}
        streams.update((prefix + k, s) for k, s in exc.items())
        recon = self._overwrite(base.recon[name], streams, prefix)
        return TensorSpec.of(name, t), streams, recon, base.meta, float(base.nominal_bits + exc_bits)

    def _store(self, name: str, vals: Tensor, sel: Tensor, n_units: int) -> tuple[dict[str, Stream], int]:
        """Exception streams for values vals (n, L) at units sel, and their nominal bits."""
        idx = sel.numpy()
        if self.layout == "fine":
            sym = gap_symbols(idx)
            streams = {"mask": Stream(sym, "mask", ESCAPE + 1)}
            pos_bits = 8 * sym.nbytes
            v = vals[:, 0]
            if self.value_dtype == "int8":
                amax = float(v.abs().max())
                scale = torch.tensor([amax / 127 if amax > 0 else 1.0], dtype=torch.float32)
                q = torch.clamp(torch.round(v / scale), -127, 127).to(torch.int64) + 127
                streams["outliers"] = Stream(q.numpy().astype(np.uint8), "outliers", 255)
                streams["scales"] = Stream(scale.numpy(), "scales")
                return streams, len(idx) * 8 + pos_bits + 32
            stored = v.to(VALUE_DTYPES[self.value_dtype])
            if not bool(torch.isfinite(stored).all()):
                raise ConfigError(f"sparse_outlier: tensor {name} has outliers beyond {self.value_dtype}; use fp32")
            streams["outliers"] = Stream(to_numpy(stored), "outliers")
            return streams, len(idx) * 8 * stored.element_size() + pos_bits
        mask = np.zeros(n_units, dtype=bool)
        mask[idx] = True
        qmax = 2 ** (self.exception_bits - 1) - 1
        scale = (vals.abs().amax(1) / qmax).to(torch.float16)
        if not bool(torch.isfinite(scale).all()):
            raise ConfigError(f"sparse_outlier: tensor {name} has exception scales beyond fp16")
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(vals / scale.float()[:, None]), -qmax, qmax).to(torch.int64) + qmax
        packed = np.packbits(mask)
        streams = {
            "mask": Stream(packed, "mask"),
            "outliers": Stream(q.numpy().astype(np.uint8 if qmax < 128 else np.uint16), "outliers", 2 * qmax + 1),
            "scales": Stream(to_numpy(scale), "scales"),
        }
        return streams, 8 * packed.size + vals.numel() * self.exception_bits + 16 * len(idx)

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        if not tensors:
            raise ConfigError("sparse_outlier: a unit needs at least one tensor")
        enc = Encoded(self.name, [], {}, {"base": []}, {}, 0.0)
        for i, (name, t) in enumerate(tensors.items()):
            spec, streams, recon, base_meta, bits = self._encode_one(name, t, ctx, "" if len(tensors) == 1 else f"{i}.")
            enc.tensors.append(spec)
            enc.streams.update(streams)
            enc.recon[name] = recon
            enc.meta["base"].append(base_meta)
            enc.nominal_bits += bits
        return enc

    # ---- decode ----------------------------------------------------------------------------------

    def _overwrite(self, base_recon: Tensor, streams: dict[str, Stream], prefix: str) -> Tensor:
        """The base reconstruction with the exception units in `streams` (if any) written over it."""
        if prefix + "mask" not in streams:
            return base_recon
        shape, b = tuple(base_recon.shape), self.block
        units = to_units(base_recon, self.layout, b).clone()
        mask = streams[prefix + "mask"].data
        if self.layout == "fine":
            if streams[prefix + "mask"].alphabet != ESCAPE + 1:  # delta codes of an older writer
                raise ConfigError("sparse_outlier: fine positions must be escape-coded gaps (alphabet 256)")
            sel = torch.from_numpy(gap_positions(mask))
            stored = streams[prefix + "outliers"].data
            if self.value_dtype == "int8":
                scale = torch.from_numpy(np.ascontiguousarray(streams[prefix + "scales"].data, np.float32))
                vals = (torch.from_numpy(stored.astype(np.int64)) - 127).float() * scale
            else:
                vals = from_numpy(stored, VALUE_DTYPES[self.value_dtype]).float()
            vals = vals.reshape(-1, 1)
        else:
            bits_ = np.unpackbits(np.ascontiguousarray(mask, np.uint8), count=units.shape[0])
            sel = torch.from_numpy(np.flatnonzero(bits_).astype(np.int64))
            qmax = 2 ** (self.exception_bits - 1) - 1
            codes = torch.from_numpy(streams[prefix + "outliers"].data.astype(np.int64)).reshape(len(sel), -1)
            scale = from_numpy(streams[prefix + "scales"].data, torch.float16).float()
            vals = (codes - qmax).float() * scale[:, None]
        units[sel] = vals.to(units.dtype)
        return from_units(units, shape, self.layout, b)

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        out = {}
        metas = enc.meta["base"]
        if not isinstance(metas, list) or len(metas) != len(enc.tensors):
            raise ConfigError("sparse_outlier: meta 'base' must list one base meta per tensor")
        base_name = self.base["name"]
        for i, (spec, meta) in enumerate(zip(enc.tensors, metas, strict=True)):
            prefix = "" if len(enc.tensors) == 1 else f"{i}."
            mine = {k: s for k, s in enc.streams.items() if k.startswith(prefix)}
            base_streams = {
                k.removeprefix(prefix + "base."): s for k, s in mine.items() if k.startswith(prefix + "base.")
            }
            base_recon = self.base_format.decode(Encoded(base_name, [spec], base_streams, meta))[spec.name]
            out[spec.name] = self._overwrite(base_recon, mine, prefix)
        return out
