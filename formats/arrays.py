"""Array helpers the formats share: tensor <-> numpy (bf16 as its bits), dtype names, input checks, symbol sizes.

Nothing here is about one format. It imports only numpy, torch and bytegolf.errors; code bytes
(bytegolf.measure.codebytes) count it for every format that imports it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ConfigError


def to_numpy(t: Tensor) -> np.ndarray:
    """A CPU tensor as a numpy array; bf16 becomes its uint16 bit patterns."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).copy()
    return t.numpy().copy()


def from_numpy(a: np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
    """Inverse of to_numpy: `dtype` is the tensor dtype the array was made from (needed for bf16 only)."""
    a = np.ascontiguousarray(a)
    if dtype == torch.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def torch_dtype(name: str) -> torch.dtype:
    """torch dtype from its TensorSpec name ("float32", "bfloat16", "int64", ...)."""
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ConfigError(f"unknown tensor dtype {name!r}")
    return dt


def single_tensor(fmt: str, tensors: dict[str, Tensor]) -> tuple[str, Tensor]:
    """The one (name, tensor) of a unit; formats that take one tensor per call raise otherwise."""
    if len(tensors) != 1:
        raise ConfigError(f"format {fmt} encodes exactly one tensor per unit, got {len(tensors)}: {sorted(tensors)}")
    ((name, t),) = tensors.items()
    return name, t


def check_matrix(fmt: str, name: str, t: Tensor) -> None:
    """2-D float tensor without NaN / inf, or ConfigError naming it."""
    if not t.is_floating_point():
        raise ConfigError(f"{fmt}: tensor {name} has non-float dtype {t.dtype}")
    if t.ndim != 2 or t.numel() == 0:
        raise ConfigError(f"{fmt}: tensor {name} must be a non-empty 2-D matrix, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{fmt}: tensor {name} holds NaN or inf")


def index_bits(k: int) -> int:
    """ceil(log2 k) for k >= 2, exactly."""
    return (k - 1).bit_length()


def symbol_dtype(alphabet: int) -> type:
    """The narrowest unsigned numpy type for symbols 0..alphabet-1 (uint8, uint16 or uint32)."""
    return np.uint8 if alphabet <= 256 else np.uint16 if alphabet <= 65536 else np.uint32
