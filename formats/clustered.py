"""Clustered (ClusComp-style) vector quantization: k-means over sub-vectors of d output channels.

A matrix W (d_out, d_in) is cut into sub-vectors W[r:r+d, c] (d consecutive output channels of
one input feature). Rows not divisible by d: W is padded with zero rows to the next multiple of d
(the last block's sub-vectors end in zeros, clustered like the rest, their indices stored and
counted in the nominal bits), and decode drops the padding, so the shape is kept. All
sub-vectors of the unit (one tensor, or a family / the whole model under scope "family" /
"global") are clustered together into one codebook of K centroids, stored once in
`codebook_dtype`; each sub-vector stores its index. Every sub-vector has length d whatever its
tensor's shape, so the tensors of a unit may differ in both dimensions (a global unit of 512×512
attention and 1024×512 / 512×1024 MLP matrices shares one codebook). d = 1 is non-uniform
scalar quantization (SqueezeLLM-like).

Options: `normalize` divides every row by its RMS first (one fp16 scale per row, multiplied
back on decode); `weighted` (Hessian weighting; a unit with a tensor lacking its Hessian falls back to unweighted
k-means with one warning) weights each sub-vector W[r:r+d, c] in k-means by
diag(H)[c] of its own tensor's calibration Gram matrix (times the mean squared row scale of its d
rows when normalized), so the assignment minimises and the centroid update (a weighted mean)
fits Σ_c H_cc‖w_c − ŵ_c‖², the diagonal part of the output error tr(ΔW H ΔWᵀ);
`lam` > 0 turns k-means into ECVQ, minimising distortion + lam_eff·(−log2 p_k) with
lam_eff = lam · (mean weighted sub-vector energy), so lam reads as "fraction of the mean
energy one bit is worth" and does not depend on the tensor's scale.

Codes are re-assigned against the codebook as stored (after rounding to its dtype), so every
code is the best one for the codebook the decoder sees. Reconstruction: codebook rows read as
fp32, gathered by the codes, times the fp16 row scale read as fp32, cast to the tensor's dtype.
Bits: Σ ⌈rows/d⌉·cols·ceil(log2 K) + K·d·(codebook bits) (+ 16 per row when normalized), i.e.
ClusComp's ceil(log2 n)/d + 16·n·d/(d_in·d_out) per weight for one tensor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ConfigError
from bytegolf.formats.arrays import check_matrix, from_numpy, index_bits, symbol_dtype, to_numpy, torch_dtype
from bytegolf.formats.base import (
    SCOPES,
    EncodeContext,
    Encoded,
    Format,
    Stream,
    TensorSpec,
    Trainable,
    hessian_fallback,
)
from bytegolf.formats.kmeans import assign, kmeans

CODEBOOK_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DIMS = (1, 2, 4, 8)


def is_int(v: Any) -> bool:
    """An integer setting (bool is not one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def cluscomp_bits(
    shapes: list[tuple[int, int]], k: int, d: int, codebook_bits: int = 16, normalize: bool = False
) -> int:
    """Analytic bits of a unit: one ceil(log2 K)-bit index per sub-vector (a last block padded to d rows
    included), the codebook once, fp16 row scales."""
    per = sum(blocks(r, d) * c * index_bits(k) + (16 * r if normalize else 0) for r, c in shapes)
    return per + k * d * codebook_bits


def blocks(rows: int, d: int) -> int:
    """Row blocks of d rows (the last one padded): ⌈rows/d⌉."""
    return -(-rows // d)


def subvectors(w: Tensor, d: int) -> Tensor:
    """(R, C) -> (⌈R/d⌉ · C, d): row block b, column c is sub-vector b·C + c = W[b·d:(b+1)·d, c]; a last block
    short of d rows is padded with zeros."""
    rows, cols = w.shape
    pad = blocks(rows, d) * d - rows
    if pad:
        w = torch.cat([w, w.new_zeros(pad, cols)])
    return w.reshape(-1, d, cols).permute(0, 2, 1).reshape(-1, d)


def reconstruct(codebook: Tensor, codes: Tensor, d: int, scales: Tensor | None, rows: int | None = None) -> Tensor:
    """fp32 (R, C) from an fp32 codebook (K, d), int64 codes (⌈R/d⌉, C) and fp32 row scales (R,) or None;
    rows R (None: all ⌈R/d⌉·d) drops the padding of the last block."""
    nblocks, cols = codes.shape
    w = codebook[codes].permute(0, 2, 1).reshape(nblocks * d, cols)[:rows]
    return w * scales[:, None] if scales is not None else w


def row_scales(w: Tensor, name: str, fmt: str) -> Tensor:
    """fp16 per-row RMS (1 for rows whose RMS is 0 or underflows); ConfigError when it overflows fp16."""
    rms = w.pow(2).mean(1).sqrt().to(torch.float16)
    if not bool(torch.isfinite(rms).all()):
        raise ConfigError(f"{fmt}: tensor {name} has a row whose scale overflows fp16")
    return torch.where(rms > 0, rms, torch.ones_like(rms))


class Clustered(Format):
    """One shared codebook of K d-dim centroids per unit; one index per d×1 sub-vector."""

    name = "clustered"
    rate_knob = "codebook_size"  # per instance: "lam" when ECVQ is in use
    randomized = True  # k-means++ init draws from ctx.seed

    def __init__(
        self,
        codebook_size: int = 256,
        dim: int = 4,
        codebook_dtype: str = "fp16",
        normalize: bool = False,
        weighted: bool = False,
        lam: float = 0.0,
        iters: int = 20,
        scope: str = "tensor",
    ) -> None:
        if not is_int(codebook_size) or not 2 <= codebook_size <= 65536:
            raise ConfigError(f"clustered: codebook_size must be an integer in 2..65536, got {codebook_size!r}")
        if not is_int(dim) or dim not in DIMS:
            raise ConfigError(f"clustered: dim must be one of {DIMS}, got {dim!r}")
        if codebook_dtype not in CODEBOOK_DTYPES:
            raise ConfigError(
                f"clustered: codebook_dtype must be one of {', '.join(CODEBOOK_DTYPES)}, got {codebook_dtype!r}"
            )
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < math.inf:
            raise ConfigError(f"clustered: lam must be a finite number >= 0, got {lam!r}")
        if not is_int(iters) or iters < 0:
            raise ConfigError(f"clustered: iters must be a non-negative integer, got {iters!r}")
        for key, val in (("normalize", normalize), ("weighted", weighted)):
            if not isinstance(val, bool):
                raise ConfigError(f"clustered: {key} must be true or false, got {val!r}")
        if scope not in SCOPES:
            raise ConfigError(f"clustered: scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        self.codebook_size, self.dim, self.codebook_dtype = codebook_size, dim, codebook_dtype
        self.normalize, self.weighted, self.lam, self.iters = bool(normalize), bool(weighted), float(lam), iters
        self.scope = scope
        self.rate_knob = "lam" if self.lam > 0 else "codebook_size"

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "rate_knob"}

    def _weights(self, name: str, shape: tuple[int, int], scales: Tensor | None, ctx: EncodeContext) -> Tensor:
        """Importance of each sub-vector: diag(H)[c] (times the mean squared scale of its d rows)."""
        if name not in ctx.hessians:
            raise ConfigError(f"clustered: weighted=True needs a Hessian for tensor {name}, none was collected")
        rows, cols = shape
        h = ctx.hessians[name]
        if tuple(h.shape) != (cols, cols):
            raise ConfigError(
                f"clustered: Hessian of tensor {name} has shape {tuple(h.shape)}, expected {(cols, cols)}"
            )
        diag = h.diagonal().to(ctx.device, torch.float32).clamp_min(0.0)
        if not bool(torch.isfinite(diag).all()):
            raise ConfigError(f"clustered: Hessian of tensor {name} holds NaN or inf")
        mean = float(diag.mean())
        diag = diag.clamp_min(mean * 1e-6) if mean > 0 else torch.ones_like(diag)
        n = blocks(rows, self.dim)
        if scales is None:
            blk = torch.ones(n, device=diag.device)
        else:  # the mean over a block's real rows (the last block's padding has none)
            sq = torch.zeros(n * self.dim, device=diag.device)
            real = torch.zeros(n * self.dim, device=diag.device)
            sq[:rows], real[:rows] = scales.to(diag.device).float().pow(2), 1.0
            blk = sq.reshape(n, self.dim).sum(1) / real.reshape(n, self.dim).sum(1)  # (⌈R/d⌉,)
        return (blk[:, None] * diag[None, :]).reshape(-1)  # sub-vector b·C + c

    def predict_bits(self, tensors: dict[str, Tensor]) -> float | None:
        """log2 K bits per sub-vector of dim rows (an index of K equally likely values), the unit's codebook
        (K·dim values) and, with normalize, an fp16 scale per row."""
        if any(t.ndim != 2 for t in tensors.values()):
            return None
        index = sum(blocks(int(t.shape[0]), self.dim) * int(t.shape[1]) for t in tensors.values())
        cbits = CODEBOOK_DTYPES[self.codebook_dtype].itemsize * 8
        scales = 16 * sum(int(t.shape[0]) for t in tensors.values()) if self.normalize else 0
        return float(index * math.log2(self.codebook_size) + self.codebook_size * self.dim * cbits + scales)

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        if not tensors:
            raise ConfigError("clustered: a unit needs at least one tensor")
        d, k = self.dim, self.codebook_size
        for name, t in tensors.items():  # shapes may differ: every sub-vector is d rows of one column
            check_matrix(self.name, name, t)
        weighted = self.weighted
        missing = [name for name in tensors if name not in ctx.hessians] if weighted else []
        if missing:  # one codebook per unit: its k-means weights all sub-vectors alike or none
            hessian_fallback(self, "weighted=true", "unweighted k-means (weighted=false)", missing[0])
            weighted = False
        xs, ws, scales = [], [], []
        for name, t in tensors.items():
            w = t.detach().to(ctx.device, torch.float32)
            s = row_scales(w, name, self.name) if self.normalize else None
            if s is not None:
                w = w / s.float()[:, None]
            scales.append(s)
            xs.append(subvectors(w, d))
            if weighted:
                ws.append(self._weights(name, tuple(w.shape), s, ctx))
        x = torch.cat(xs) if len(xs) > 1 else xs[0]
        n = x.shape[0]
        if k > n:
            raise ConfigError(
                f"clustered: codebook_size {k} is larger than the {n} sub-vectors of "
                f"{', '.join(tensors)} (dim {d}); lower codebook_size"
            )
        weights = torch.cat(ws) if weighted else None
        energy = float(((weights if weights is not None else 1.0) * x.pow(2).sum(1)).sum()) / n
        lam_eff = self.lam * energy
        res = kmeans(x, k, weights=weights, iters=self.iters, seed=ctx.seed, lam=lam_eff)
        stored = res.centroids.to(CODEBOOK_DTYPES[self.codebook_dtype])
        if not bool(torch.isfinite(stored).all()):
            raise ConfigError(
                f"clustered: centroids of {', '.join(tensors)} overflow {self.codebook_dtype}; use fp32 or normalize"
            )
        codes = assign(x, stored.float(), lam_eff, res.rate_bits, weights).cpu()
        codebook32 = stored.cpu().float()

        streams = {"codebook": Stream(to_numpy(stored), "codebook")}
        specs, recon, start = [], {}, 0
        for i, (name, t) in enumerate(tensors.items()):
            rows, cols = t.shape
            c = codes[start : start + blocks(rows, d) * cols].reshape(blocks(rows, d), cols)
            start += c.numel()
            streams[f"{i}.codes"] = Stream(c.numpy().astype(symbol_dtype(k)), "codes", k)
            s = scales[i]
            if s is not None:
                s = s.cpu()
                streams[f"{i}.scales"] = Stream(to_numpy(s), "scales")
            recon[name] = reconstruct(codebook32, c, d, None if s is None else s.float(), rows).to(t.dtype)
            specs.append(TensorSpec.of(name, t))
        meta = {
            "codebook_size": k,
            "dim": d,
            "codebook_dtype": self.codebook_dtype,
            "normalize": self.normalize,
            "lam_eff": lam_eff,
            "kmeans_iters": res.iters,
        }
        shapes = [(int(t.shape[0]), int(t.shape[1])) for t in tensors.values()]
        nominal = cluscomp_bits(shapes, k, d, 8 * stored.element_size(), self.normalize)
        return Encoded(self.name, specs, streams, meta, recon, float(nominal))

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        meta = enc.meta
        d = int(meta["dim"])
        codebook = from_numpy(enc.streams["codebook"].data, CODEBOOK_DTYPES[meta["codebook_dtype"]]).float()
        codebook = codebook.reshape(-1, d)
        out = {}
        for i, spec in enumerate(enc.tensors):
            rows, cols = spec.shape
            codes = torch.from_numpy(np.ascontiguousarray(enc.streams[f"{i}.codes"].data).astype(np.int64))
            scales = None
            if meta["normalize"]:
                scales = from_numpy(enc.streams[f"{i}.scales"].data, torch.float16).float()
            w = reconstruct(codebook, codes.reshape(blocks(rows, d), cols), d, scales, rows)
            out[spec.name] = w.to(torch_dtype(spec.dtype))
        return out

    def trainable(self, enc: Encoded, device: str | torch.device) -> Trainable:
        """The codebook (and row scales) over the frozen codes."""
        meta, d = enc.meta, int(enc.meta["dim"])
        codes = [
            torch.from_numpy(enc.streams[f"{i}.codes"].data.astype(np.int64))
            .reshape(blocks(s.shape[0], d), -1)
            .to(device)
            for i, s in enumerate(enc.tensors)
        ]
        dtypes = {"codebook": CODEBOOK_DTYPES[meta["codebook_dtype"]]}
        if meta["normalize"]:
            dtypes.update((f"{i}.scales", torch.float16) for i in range(len(enc.tensors)))

        def rebuild(v: dict[str, Tensor]) -> dict[str, Tensor]:
            cb = v["codebook"].reshape(-1, d)
            return {
                s.name: reconstruct(cb, codes[i], d, v.get(f"{i}.scales"), s.shape[0])
                for i, s in enumerate(enc.tensors)
            }

        return Trainable(dtypes, rebuild)
