"""Pre-artifact error measures; the entropy bounds live in bytegolf.codecs.bounds (re-exported here)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

from bytegolf.artifact.reshape import matrix_shape, slice_name
from bytegolf.codecs.bounds import byte_entropy_bound, entropy_bits, entropy_bound_bytes

__all__ = [
    "byte_entropy_bound",
    "entropy_bits",
    "entropy_bound_bytes",
    "output_error",
    "rel_mse",
    "sqnr_db",
    "tensor_output_error",
    "weighted_mean",
]


def rel_mse(w: Tensor, w_hat: Tensor) -> float:
    """‖W−Ŵ‖² / ‖W‖² (0 when both are zero)."""
    w64, d = w.double(), (w.double() - w_hat.double())
    den = float((w64 * w64).sum())
    num = float((d * d).sum())
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def sqnr_db(rel: float) -> float:
    """Signal-to-quantization-noise ratio in dB for a relative MSE."""
    return math.inf if rel == 0 else -10 * math.log10(rel)


def output_error(w: Tensor, w_hat: Tensor, gram: Tensor) -> float:
    """‖(W−Ŵ)X‖² / ‖WX‖² computed as tr(ΔW G ΔWᵀ) / tr(W G Wᵀ) with G = Σ x xᵀ."""
    g = gram.double()
    w64 = w.double().reshape(w.shape[0], -1)
    d = w64 - w_hat.double().reshape(w.shape[0], -1)
    den = float(((w64 @ g) * w64).sum())
    return float(((d @ g) * d).sum()) / den if den > 0 else math.nan


def tensor_output_error(name: str, w: Tensor, w_hat: Tensor, grams: Mapping[str, Tensor]) -> tuple[float, int]:
    """The output error of tensor `name` as a run reports it, and the parameters it covers.

    A matrix: output_error with its Gram grams[name]. A tensor of 3+ dims (a weight bank (L, out, in) used
    slice by slice): each slice i (its middle dims folded into rows) with its own Gram grams[f"{name}[{i}]"],
    the slices' errors combined by their parameter-weighted mean over the slices that have one, the weighting
    of the aggregate over tensors (so a banked model reports what the same matrices stored one by one would).
    (nan, 0) without any Gram (a vector, a matrix or bank without one); a matrix or slice whose ‖WX‖² is 0
    has no error and covers nothing."""
    if w.ndim < 2:
        return math.nan, 0
    if w.ndim == 2:
        g = grams.get(name)
        err = output_error(w, w_hat, g) if g is not None else math.nan
        return err, (0 if math.isnan(err) else w.numel())
    rows, cols = matrix_shape(tuple(w.shape[1:]))
    errs = []
    for i in range(w.shape[0]):
        if (g := grams.get(slice_name(name, i))) is not None:
            errs.append(output_error(w[i].reshape(rows, cols), w_hat[i].reshape(rows, cols), g))
    covered = [e for e in errs if not math.isnan(e)]
    return (sum(covered) / len(covered) if covered else math.nan), len(covered) * rows * cols


def weighted_mean(values: list[float], weights: list[int]) -> float:
    """Parameter-weighted mean, ignoring NaN entries."""
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if not math.isnan(v)]
    tot = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / tot if tot else math.nan
