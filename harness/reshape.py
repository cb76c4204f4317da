"""Declared reshapes: tensors that are not matrices, encoded as matrices by a format.

Weight banks (L, out, in) and conv kernels (out, in, kh, kw) given to a matrix format are folded
(`plan.reshape: fold`): the leading dimensions become rows, (d0, ..., dk, n) -> (d0·…·dk, n). The format
encodes (and its unit's tensor specs describe) the matrix; the unit's meta records
{"reshape": {name: original shape}} in the artifact's manifest, and the reader gives each tensor its
original shape back. Reconstructions kept in memory have the original shape.
Passthrough units store any shape as it is and are never reshaped.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from bytegolf.errors import ArtifactError, ConfigError
from bytegolf.formats import Encoded

MODES = ("fold",)
NATIVE = ("passthrough",)  # formats that store any shape


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The matrix a tensor of `shape` is folded into."""
    if len(shape) == 0:
        return (1, 1)
    return (math.prod(shape[:-1]), shape[-1]) if len(shape) > 1 else (1, shape[0])


def check_mode(mode: str) -> str:
    """A plan.reshape setting, checked."""
    if mode not in MODES:
        raise ConfigError(f"plan.reshape must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def fold(tensors: dict[str, Tensor], fmt: str) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
    """The tensors a `fmt` unit encodes (non-matrices folded, unless the format stores any shape) and the
    original shapes of those that were folded."""
    if fmt in NATIVE:
        return tensors, {}
    out, shapes = {}, {}
    for name, t in tensors.items():
        if t.ndim <= 2:  # matrices, and vectors and scalars, which formats take as they are
            out[name] = t
        else:
            out[name] = t.reshape(matrix_shape(tuple(t.shape)))
            shapes[name] = list(t.shape)
    return out, shapes


def record(enc: Encoded, shapes: dict[str, list[int]]) -> Encoded:
    """Record the folds in the unit's meta and give its reconstructions their original shapes."""
    if shapes:
        enc.meta = {**enc.meta, "reshape": dict(shapes)}
        if enc.recon is not None:
            enc.recon = {k: v.reshape(shapes[k]) if k in shapes else v for k, v in enc.recon.items()}
    return enc


def unfold(name: str, t: Tensor, meta: dict[str, Any]) -> Tensor:
    """A decoded tensor in the shape its unit's meta records (as decoded when none is recorded)."""
    shapes = meta.get("reshape")
    if shapes is None or name not in shapes:
        return t
    shape = shapes[name] if isinstance(shapes, dict) else None
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or tuple(matrix_shape(tuple(shape))) != tuple(t.shape)
    ):
        raise ArtifactError(f"{name}: recorded reshape {shape!r} does not fold to the decoded {tuple(t.shape)}")
    return t.reshape(shape)
