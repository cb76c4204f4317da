"""Pre-artifact error measures; the entropy bounds live in bytegolf.codecs.bounds (re-exported here)."""

from __future__ import annotations

import math

from torch import Tensor

from bytegolf.codecs.bounds import byte_entropy_bound, entropy_bits, entropy_bound_bytes

__all__ = [
    "byte_entropy_bound",
    "entropy_bits",
    "entropy_bound_bytes",
    "output_error",
    "rel_mse",
    "sqnr_db",
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


def weighted_mean(values: list[float], weights: list[int]) -> float:
    """Parameter-weighted mean, ignoring NaN entries."""
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if not math.isnan(v)]
    tot = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / tot if tot else math.nan
