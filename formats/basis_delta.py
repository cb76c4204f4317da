"""Basis plus delta: a family of matrices sharing one low-rank row basis, plus per-layer corrections.

A unit is a family of matrices W_l (out_l × in) with one input width (out_l may differ; they are
stacked by rows into W_all, Σout × in). W_all ≈ C B with a shared basis B (rank × in, rows of unit
norm) and per-layer coefficients C_l (out_l × rank) that carry the singular values. B spans the
top `rank` right singular vectors of W_all, or with `whiten` of W_all·S (S = chol of the family's
mean normalized Gram matrix, damped by damp·mean diag), B = Vᵀ_k S⁻¹, so that it minimises the
output error ‖ΔW X‖² rather than ‖ΔW‖² (Basis Sharing, FiPS).

Every part goes through an inner format (instantiated with scope tensor): the basis is quantized
first; each C_l is then re-fitted by least squares against the basis as stored (in the layer's own
whitened metric when `whiten`) and quantized; with `residual`, R_l = W_l − Ĉ_l B̂ is quantized too.

`coef_scale` says along which axis the coefficients get their scales. The columns of C_l carry
the singular values, so with a steep spectrum one column dwarfs the rest and a per-row scale
(set by the row's largest entry) leaves the small-σ columns a handful of levels. "row": the inner
format quantizes C_l as it is (its scales per output row); "rank": it quantizes C_lᵀ (rank ×
out_l), so its per-row scales become one scale per basis direction; "both": C_l = C'_l·diag(s_l)
with s_l the fp16 RMS of each column (stream "rank_scales.<i>", role scales, 16·rank bits), and
the inner format quantizes C'_l with its per-row scales; decoded Ĉ_l = fp32(Ĉ'_l)·s_l.

Streams: "basis.<s>" (role basis), "coef.<i>.<s>", "resid.<i>.<s>" (inner roles), i = the
tensor's position in the unit; meta nests each inner unit's meta.

Decode: W_l = fp32(Ĉ_l B̂) (+ R̂_l), the product taken in float64 and rounded once to fp32, the sum
in fp32, cast to the tensor's dtype. Bits: the sum of the inner units' nominal bits, the basis
counted once per unit; with scalar inner formats of b_B, b_C, b_R bits that is
rank·in·b_B + Σout·rank·b_C + Σout·in·b_R plus one scale per row (or group) of each part
(per rank instead of per output row for the coefficients under coef_scale "rank", both under "both").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from bytegolf.errors import ConfigError
from bytegolf.formats.arrays import check_matrix, from_numpy, to_numpy, torch_dtype
from bytegolf.formats.base import SCOPES, EncodeContext, Encoded, Format, Stream, TensorSpec, get_format

DEFAULT_BASIS: dict[str, Any] = {"name": "scalar", "bits": 8}
DEFAULT_COEF: dict[str, Any] = {"name": "scalar", "bits": 8, "clip": "max"}
DEFAULT_RESIDUAL: dict[str, Any] = {"name": "scalar", "bits": 3, "clip_k": 3.0}
COEF_SCALES = ("row", "rank", "both")


def _inner_format(part: str, spec: Any) -> tuple[dict[str, Any], Format]:
    """The settings (a plain dict) and instance of one inner format."""
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"basis_delta: {part} must be a mapping with a format `name`, got {spec!r}")
    settings = dict(spec)
    params = {k: v for k, v in settings.items() if k != "name"}
    name = settings["name"]
    if name == BasisDelta.name:
        raise ConfigError(f"basis_delta: {part} cannot itself be basis_delta")
    if params.get("scope", "tensor") != "tensor":
        raise ConfigError(f"basis_delta: {part} format must use scope tensor, got {params['scope']!r}")
    return settings, get_format(name, **params)


def product(coef: Tensor, basis: Tensor) -> Tensor:
    """fp32 C·B, accumulated in float64 and rounded once (insensitive to BLAS summation order)."""
    return (coef.double() @ basis.double()).float()


def rank_scales(coef: Tensor, name: str) -> Tensor:
    """fp16 RMS of each coefficient column (1 where it is 0 or underflows); ConfigError when it overflows."""
    rms = coef.double().pow(2).mean(0).sqrt().to(torch.float16)
    if not bool(torch.isfinite(rms).all()):
        raise ConfigError(f"basis_delta: a coefficient column of tensor {name} has a scale that overflows fp16")
    return torch.where(rms > 0, rms, torch.ones_like(rms))


def _normalized_gram(name: str, cols: int, damp: float, ctx: EncodeContext) -> Tensor:
    """float64 H/n of a tensor's input, damped by damp·mean diag; ConfigError when missing or malformed."""
    if name not in ctx.hessians:
        raise ConfigError(f"basis_delta: whiten=True needs a Hessian for tensor {name}, none was collected")
    h = ctx.hessians[name].to(ctx.device, torch.float64)
    if tuple(h.shape) != (cols, cols):
        raise ConfigError(f"basis_delta: Hessian of tensor {name} has shape {tuple(h.shape)}, expected {(cols, cols)}")
    if not bool(torch.isfinite(h).all()):
        raise ConfigError(f"basis_delta: Hessian of tensor {name} holds NaN or inf")
    h = h / max(int(ctx.hessian_counts.get(name, 1)), 1)
    mean = float(h.diagonal().mean())
    return h + damp * (mean if mean > 0 else 1.0) * torch.eye(cols, dtype=h.dtype, device=h.device)


class BasisDelta(Format):
    """A rank-k row basis shared by a family of matrices, per-layer coefficients, optional residual."""

    name = "basis_delta"
    rate_knob = "rank"

    def __init__(
        self,
        rank: int = 64,
        scope: str = "family",
        whiten: bool = False,
        damp: float = 0.01,
        basis: dict[str, Any] = DEFAULT_BASIS,
        coef: dict[str, Any] = DEFAULT_COEF,
        residual: dict[str, Any] | None = DEFAULT_RESIDUAL,
        coef_scale: str = "row",
    ) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"basis_delta: rank must be an integer >= 1, got {rank!r}")
        if scope not in SCOPES:
            raise ConfigError(f"basis_delta: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if not isinstance(damp, (int, float)) or not damp >= 0:
            raise ConfigError(f"basis_delta: damp must be >= 0, got {damp!r}")
        if not isinstance(whiten, bool):
            raise ConfigError(f"basis_delta: whiten must be true or false, got {whiten!r}")
        if coef_scale not in COEF_SCALES:
            raise ConfigError(f"basis_delta: coef_scale must be one of {', '.join(COEF_SCALES)}, got {coef_scale!r}")
        self.rank, self.scope, self.whiten, self.damp = rank, scope, whiten, float(damp)
        self.coef_scale = coef_scale
        self.basis, self._basis = _inner_format("basis", basis)
        self.coef, self._coef = _inner_format("coef", coef)
        self.residual, self._residual = (None, None) if residual is None else _inner_format("residual", residual)

    def config(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "scope": self.scope,
            "whiten": self.whiten,
            "damp": self.damp,
            "basis": dict(self.basis),
            "coef": dict(self.coef),
            "residual": None if self.residual is None else dict(self.residual),
            "coef_scale": self.coef_scale,
        }

    def _check(self, tensors: dict[str, Tensor]) -> tuple[int, int]:
        """Validate the family; (Σout, in)."""
        if not tensors:
            raise ConfigError("basis_delta: a unit needs at least one tensor")
        for name, t in tensors.items():
            check_matrix(self.name, name, t)
        widths = {name: int(t.shape[1]) for name, t in tensors.items()}
        if len(set(widths.values())) > 1:
            listing = ", ".join(f"{n}: {tuple(t.shape)}" for n, t in tensors.items())
            raise ConfigError(
                f"basis_delta: the matrices of a {self.scope} unit differ in shape; they must share one input "
                f"width (columns), got widths {sorted(set(widths.values()))} ({listing})"
            )
        rows, cols = sum(int(t.shape[0]) for t in tensors.values()), next(iter(widths.values()))
        if self.rank > min(rows, cols):
            raise ConfigError(
                f"basis_delta: rank {self.rank} exceeds the family's matrix size ({rows} × {cols}, stacked rows of "
                f"{', '.join(tensors)}); use rank <= {min(rows, cols)}"
            )
        return rows, cols

    def _shared_basis(self, ws: list[Tensor], grams: list[Tensor] | None) -> Tensor:
        """float64 (rank × in) basis with unit-norm rows: top right singular vectors of W_all (·S)."""
        w_all = torch.cat(ws)
        chol = None
        if grams is not None:
            chol, info = torch.linalg.cholesky_ex(sum(grams) / len(grams))
            if int(info):
                raise ConfigError("basis_delta: the family's mean Gram matrix is not positive definite; raise damp")
            w_all = w_all @ chol
        _, vecs = torch.linalg.eigh(w_all.T @ w_all)
        v = vecs[:, -self.rank :].flip(-1)  # in × rank, by decreasing singular value
        basis = (torch.linalg.solve_triangular(chol.T, v, upper=True) if chol is not None else v).T
        basis = basis / basis.norm(dim=1, keepdim=True)
        peak = basis.gather(1, basis.abs().argmax(1, keepdim=True))
        return basis * torch.where(peak < 0, -1.0, 1.0)  # fixed sign: largest entry positive

    def predict_bits(self, tensors: dict[str, Tensor]) -> float | None:
        """The residual's prediction on the tensors themselves (a low-rank basis takes little of their spread,
        and a clip relative to the spread codes alike) plus the basis and coefficients at 8 bits each; None
        without a residual or where it predicts nothing. The second term stays put along the residual's knob."""
        if self._residual is None:
            return None
        resid = self._residual.predict_bits(tensors)
        if resid is None:
            return None
        rows = sum(int(t.shape[0]) for t in tensors.values())
        cols = int(next(iter(tensors.values())).shape[1])
        return resid + 8 * self.rank * (rows + cols)

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        _, cols = self._check(tensors)
        names = list(tensors)
        ws = [t.detach().to(ctx.device, torch.float64) for t in tensors.values()]
        grams = [_normalized_gram(n, cols, self.damp, ctx) for n in names] if self.whiten else None
        plain = EncodeContext(device=ctx.device, seed=ctx.seed)
        rscales: dict[str, Stream] = {}

        basis = self._shared_basis(ws, grams).float().cpu()
        units = {"basis": self._basis.encode({"basis": basis}, plain)}
        b_hat = self._basis.decode(units["basis"])["basis"].cpu()
        bh = b_hat.to(ctx.device, torch.float64)
        for i, (name, w) in enumerate(zip(names, ws, strict=True)):
            bw = bh if grams is None else bh @ grams[i]  # coefficients fitted in the layer's own metric
            coef = torch.linalg.lstsq((bw @ bh.T).cpu(), (bw @ w.T).cpu()).solution.T
            if self.coef_scale == "rank":
                coef = coef.T
            elif self.coef_scale == "both":
                scale = rank_scales(coef, name)
                rscales[f"rank_scales.{i}"] = Stream(to_numpy(scale), "scales")
                coef = coef / scale.double()[None, :]
            units[f"coef.{i}"] = self._coef.encode({name: coef.float()}, plain)
            if self._residual is not None:
                c_hat = self._coefs(units[f"coef.{i}"], name, rscales.get(f"rank_scales.{i}"))
                resid = w.float().cpu() - product(c_hat, b_hat)
                inner = EncodeContext(
                    hessians={name: ctx.hessians[name]} if name in ctx.hessians else {},
                    hessian_counts={name: ctx.hessian_counts[name]} if name in ctx.hessian_counts else {},
                    device=ctx.device,
                    seed=ctx.seed,
                )
                units[f"resid.{i}"] = self._residual.encode({name: resid}, inner)

        streams: dict[str, Stream] = {}
        for prefix, u in units.items():
            for k, s in u.streams.items():
                streams[f"{prefix}.{k}"] = Stream(s.data, "basis", s.alphabet) if prefix == "basis" else s
        streams.update(rscales)
        meta = {
            "rank": self.rank,
            "coef_scale": self.coef_scale,
            "basis": units["basis"].meta,
            "coef": [units[f"coef.{i}"].meta for i in range(len(names))],
            "resid": None if self._residual is None else [units[f"resid.{i}"].meta for i in range(len(names))],
        }
        specs = [TensorSpec.of(n, t) for n, t in tensors.items()]
        nominal = sum(u.nominal_bits for u in units.values()) + sum(16 * st.data.size for st in rscales.values())
        enc = Encoded(self.name, specs, streams, meta, None, float(nominal))
        enc.recon = self.decode(enc)
        return enc

    @staticmethod
    def _inner(enc: Encoded, fmt: Format, prefix: str, spec: TensorSpec, meta: dict[str, Any]) -> Tensor:
        """Decode one inner unit from the streams under `prefix.`."""
        head = prefix + "."
        streams = {k[len(head) :]: s for k, s in enc.streams.items() if k.startswith(head)}
        return fmt.decode(Encoded(fmt.name, [spec], streams, meta))[spec.name].float()

    def _coefs(self, unit: Encoded, name: str, scales: Stream | None) -> Tensor:
        """fp32 Ĉ_l (out_l × rank) from its encoded inner unit during encode (see `_coef_hat`)."""
        return self._coef_hat(self._coef.decode(unit)[name].float(), scales)

    def _coef_hat(self, inner: Tensor, scales: Stream | None, coef_scale: str | None = None) -> Tensor:
        """Ĉ_l from the inner format's decoded tensor: transposed back ("rank"), times the fp16 rank scales ("both")."""
        mode = coef_scale or self.coef_scale
        if mode == "rank":
            return inner.T
        if mode == "both":
            return inner * from_numpy(scales.data, torch.float16).float()[None, :]
        return inner

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        meta = enc.meta
        rank, cols = int(meta["rank"]), enc.tensors[0].shape[1]
        mode = meta.get("coef_scale", "row")  # artifacts written before the option: per-row
        if mode not in COEF_SCALES:
            raise ValueError(f"basis_delta: unknown coef_scale {mode!r} in the unit's meta")
        if (meta["resid"] is None) != (self._residual is None):
            raise ValueError("basis_delta: residual streams do not match the format's residual setting")
        b_hat = self._inner(enc, self._basis, "basis", TensorSpec("basis", (rank, cols), "float32"), meta["basis"])
        out = {}
        for i, spec in enumerate(enc.tensors):
            shape = (rank, spec.shape[0]) if mode == "rank" else (spec.shape[0], rank)
            coef_spec = TensorSpec(spec.name, shape, "float32")
            inner = self._inner(enc, self._coef, f"coef.{i}", coef_spec, meta["coef"][i])
            w = product(self._coef_hat(inner, enc.streams.get(f"rank_scales.{i}"), mode), b_hat)
            if self._residual is not None:
                resid_spec = TensorSpec(spec.name, spec.shape, "float32")
                w = w + self._inner(enc, self._residual, f"resid.{i}", resid_spec, meta["resid"][i])
            out[spec.name] = w.to(torch_dtype(spec.dtype))
        return out
