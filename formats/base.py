"""The format protocol: tensors -> streams + meta -> tensors. Formats never see bytes or codecs."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from bytegolf.errors import ArtifactError
from bytegolf.registry import Registry, instantiate

ROLES = ("codes", "codebook", "scales", "zeros", "mask", "outliers", "basis", "lowrank", "perm", "fp")

SCOPES = ("tensor", "family", "global")  # what one codebook or basis is shared over (formats that share)
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Stream:
    """One array to be stored; symbol streams carry their alphabet size (symbols are 0..alphabet-1)."""

    data: np.ndarray
    role: str
    alphabet: int | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown stream role {self.role!r}; roles are {ROLES}")
        if self.alphabet is not None and self.data.dtype.kind not in "ui":
            raise ValueError(f"symbol stream must hold integers, got {self.data.dtype}")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and original dtype of a tensor a unit reconstructs."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32" | "float16" | "bfloat16"

    @classmethod
    def of(cls, name: str, t: Tensor) -> TensorSpec:
        return cls(name, tuple(t.shape), str(t.dtype).removeprefix("torch."))

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]


@dataclass
class Encoded:
    """A format's output for one unit (one tensor, or a family sharing structure).

    `recon` is the quantizer's own reconstruction, kept in memory only, against which the
    decoded artifact is checked bit for bit.
    """

    format: str
    tensors: list[TensorSpec]
    streams: dict[str, Stream]
    meta: dict[str, Any] = field(default_factory=dict)
    recon: dict[str, Tensor] | None = None
    nominal_bits: float = 0.0  # analytic bits for the whole unit (AQLM-style formulas)


@dataclass
class EncodeContext:
    """What a format may use besides the weights: calibration Gram matrices and a device.

    hessians[name] is the sum of x xᵀ over calibration inputs of that tensor's matmul
    (shape in_features²), with hessian_counts[name] rows; H = 2·XXᵀ/n in GPTQ terms.
    """

    hessians: dict[str, Tensor] = field(default_factory=dict)
    hessian_counts: dict[str, int] = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0


@dataclass
class Trainable:
    """Float streams of a unit that calibration may train over its frozen codes.

    dtypes: stream name -> stored dtype; rebuild: fp32 stream values (shaped as stored) -> the
    unit's fp32 tensors, differentiably and by the same arithmetic as decode.
    """

    dtypes: dict[str, torch.dtype]
    rebuild: Callable[[dict[str, Tensor]], dict[str, Tensor]]


class Format:
    """Base class for formats. Subclasses set `name` and `rate_knob` and implement encode/decode."""

    name: ClassVar[str] = ""
    rate_knob: ClassVar[str | None] = None  # one scalar the budget search may move

    def encode(self, tensors: dict[str, Tensor], ctx: EncodeContext) -> Encoded:
        raise NotImplementedError

    def decode(self, enc: Encoded) -> dict[str, Tensor]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Settings that produced this format (JSON-able)."""
        return dict(vars(self))

    def trainable(self, enc: Encoded, device: str | torch.device) -> Trainable | None:
        """What block calibration may train in this unit (harness/quantize/block_calibration.py); None: nothing."""
        return None

    def predict_bits(self, tensors: dict[str, Tensor]) -> float | None:
        """The bits a unit of these tensors takes under this format's settings, predicted analytically without
        encoding (None: no prediction); the equal-bytes search aims its probes with it. Where the format's
        Encoded.nominal_bits depends only on the settings and shapes, this is that count."""
        return None


_FALLBACKS: weakref.WeakKeyDictionary[Format, set[str]] = weakref.WeakKeyDictionary()


def hessian_fallback(fmt: Format, option: str, variant: str, tensor: str) -> None:
    """Note that `option` needs a calibration Hessian (Gram matrix) that `tensor` lacks (no calibration, a
    model=weights checkpoint, a weight the calibration cannot see), so the format encodes it by `variant`:
    one warning on the "bytegolf" logger per format instance and option, however many tensors lack one."""
    seen = _FALLBACKS.setdefault(fmt, set())
    if option in seen:
        return
    seen.add(option)
    logging.getLogger("bytegolf").warning(
        "%s: %s needs a calibration Hessian, and tensor %s has none (no calibration Gram matrix): "
        "encoding by %s instead (also for any other tensor without one)",
        fmt.name,
        option,
        tensor,
        variant,
    )


def meta_int(meta: dict[str, Any], key: str, lo: int, hi: int) -> int:
    """meta[key] checked to be an int in lo..hi (ArtifactError otherwise): decoders must not trust a file's numbers
    (a huge `bits` makes 2**bits a hang)."""
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ArtifactError(f"meta {key} must be an integer in {lo}..{hi}, got {value!r}")
    return value


BUILTIN: dict[str, str] = {
    "passthrough": "bytegolf.formats.passthrough:Passthrough",
    "scalar": "bytegolf.formats.scalar:Scalar",
    "clustered": "bytegolf.formats.clustered:Clustered",
    "additive": "bytegolf.formats.additive:Additive",
    "basis_delta": "bytegolf.formats.basis_delta:BasisDelta",
    "sparse_outlier": "bytegolf.formats.sparse_outlier:SparseOutlier",
    "lowrank": "bytegolf.formats.lowrank:LowRank",
    "kquant": "bytegolf.formats.kquant:KQuant",
    "hqq": "bytegolf.formats.hqq:HQQ",
}

# The built-ins plus the `bytegolf.formats` entry points of installed distributions (a built-in wins a clash).
REGISTRY = Registry("format", "bytegolf.formats", BUILTIN, base=Format)


def get_format(name: str, **params: Any) -> Format:
    """Instantiate a registered format by name (lazy import)."""
    return instantiate(REGISTRY, "format", name, params)
