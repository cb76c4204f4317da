"""Declared reshapes: tensors that are not matrices, encoded as matrices by a format (`plan.reshape`).

fold (default): weight banks (L, out, in) and conv kernels (out, in, kh, kw) given to a matrix format have
their leading dimensions folded into rows, (d0, ..., dk, n) -> (d0·…·dk, n). The format encodes (and its
unit's tensor specs describe) the matrix; the unit's meta records {"reshape": {name: original shape}} in the
artifact's manifest, and the reader gives each tensor its original shape back.

split: a tensor of 3 or more dimensions is cut along dim 0 into d0 slices, each a tensor of its own named
f"{name}[{i}]" (a slice of more than 2 dims has its middle dims folded into rows: (d0, d1, …, n) gives d0
matrices of (d1·…, n)). A unit of one tensor encodes each slice by a call of its own (per-slice scales,
codebooks and Hessians: calibration keys a bank slice's Gram matrix by the same name); a unit of several
tensors (family / global scope) encodes all of them, slices included, in one call. The unit's tensor specs
keep the original names and shapes; its meta records {"split": {name: original shape}, "parts": [{"tensors":
[{name, shape, dtype} of each slice or matrix], "meta": the format's meta}, …]} and part p's streams are
stored as f"{p}.{stream}". The reader decodes every part and stacks the slices back (bit for bit).

Reconstructions kept in memory have the original shape in both modes. Passthrough units store any shape
as it is and are never reshaped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bytegolf.errors import ArtifactError, BytegolfError, ConfigError
from bytegolf.formats import EncodeContext, Encoded, Format, get_format
from bytegolf.formats.base import TORCH_DTYPES, TensorSpec

MODES = ("fold", "split")
NATIVE = ("passthrough",)  # formats that store any shape


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The matrix a tensor of `shape` is folded into."""
    if len(shape) == 0:
        return (1, 1)
    return (math.prod(shape[:-1]), shape[-1]) if len(shape) > 1 else (1, shape[0])


def slice_name(name: str, i: int) -> str:
    """The name of slice i of a split tensor (also its calibration Gram matrix's key)."""
    return f"{name}[{i}]"


def check_mode(mode: str) -> str:
    """A plan.reshape setting, checked."""
    if mode not in MODES:
        raise ConfigError(f"plan.reshape must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


@dataclass
class Reshaped:
    """What `fold` did to a unit's tensors: the mode, the original shapes of the reshaped tensors and
    (split) the tensor names each encode call takes."""

    mode: str = "fold"
    shapes: dict[str, list[int]] = field(default_factory=dict)
    parts: list[list[str]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # the unit's tensors in order (original names)

    @property
    def split(self) -> bool:
        """Whether the unit is encoded as slices (split mode with a tensor to split)."""
        return self.mode == "split" and bool(self.shapes)


def fold(tensors: dict[str, Tensor], fmt: str, mode: str = "fold") -> tuple[dict[str, Tensor], Reshaped]:
    """The tensors a `fmt` unit encodes (non-matrices folded or split by `mode`, unless the format stores any
    shape) and what was done to them (for `encode` and `record`)."""
    check_mode(mode)
    r = Reshaped(mode, names=list(tensors))
    if fmt in NATIVE:
        return tensors, r
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        if t.ndim <= 2:  # matrices, and vectors and scalars, which formats take as they are
            out[name] = t
        elif mode == "fold":
            out[name] = t.reshape(matrix_shape(tuple(t.shape)))
            r.shapes[name] = list(t.shape)
        else:
            if t.numel() == 0:
                raise ConfigError(f"{name}: plan.reshape=split cannot split the empty tensor of shape {list(t.shape)}")
            for i in range(t.shape[0]):
                out[slice_name(name, i)] = t[i].reshape(matrix_shape(tuple(t.shape[1:])))
            r.shapes[name] = list(t.shape)
    if r.split:
        r.parts = [[n] for n in out] if len(tensors) == 1 else [list(out)]
    return out, r


def encode(fmt: Format, tensors: dict[str, Tensor], r: Reshaped, ctx: EncodeContext) -> Encoded:
    """`fmt` encodes the unit's (folded) tensors; a split unit part by part, its parts gathered into one unit
    whose specs and reconstructions have the original names and shapes (see the module docstring)."""
    if not r.split:
        return fmt.encode(tensors, ctx)
    specs: dict[str, TensorSpec] = {}
    streams, parts, recon, nominal, name_of = {}, [], {}, 0.0, fmt.name
    for p, names in enumerate(r.parts):
        enc = fmt.encode({n: tensors[n] for n in names}, ctx)
        name_of = enc.format
        parts.append({"tensors": [_spec_json(s) for s in enc.tensors], "meta": enc.meta})
        streams.update({f"{p}.{k}": s for k, s in enc.streams.items()})
        specs.update({s.name: s for s in enc.tensors})
        recon.update(enc.recon or {})
        nominal += enc.nominal_bits
    out_specs, out_recon = [], {}
    for name in r.names:
        if name in r.shapes:
            shape = r.shapes[name]
            keys = [slice_name(name, i) for i in range(shape[0])]
            out_specs.append(TensorSpec(name, tuple(shape), specs[keys[0]].dtype))
            if all(k in recon for k in keys):
                out_recon[name] = torch.stack([recon[k] for k in keys]).reshape(shape)
        else:
            out_specs.append(specs[name])
            if name in recon:
                out_recon[name] = recon[name]
    meta = {"split": dict(r.shapes), "parts": parts}
    return Encoded(name_of, out_specs, streams, meta, out_recon if recon else None, nominal)


def record(enc: Encoded, r: Reshaped) -> Encoded:
    """Record the folds in the unit's meta and give its reconstructions their original shapes (a split unit
    was recorded by `encode`)."""
    if r.mode == "fold" and r.shapes:
        shapes = r.shapes
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


def decode(fmt: Format, unit: Encoded) -> dict[str, Tensor]:
    """A unit's tensors as `fmt` decodes them; a split unit's parts decoded one by one and their slices
    stacked into the original tensors. A split manifest that does not add up raises ArtifactError."""
    if "split" not in unit.meta:
        return fmt.decode(unit)
    shapes, parts = unit.meta.get("split"), unit.meta.get("parts")
    if not isinstance(shapes, dict) or not isinstance(parts, list) or not parts:
        raise ArtifactError("split unit: meta needs a 'split' object and a non-empty 'parts' list")
    for name, shape in shapes.items():
        if not _dims(shape) or len(shape) < 3:
            raise ArtifactError(f"split unit: recorded shape of {name} must be 3 or more dims, got {shape!r}")
    decoded: dict[str, Tensor] = {}
    claimed: set[str] = set()
    for p, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("tensors"), list) or not part["tensors"]:
            raise ArtifactError(f"split unit: part {p} must be an object with a non-empty 'tensors' list")
        if not isinstance(part.get("meta"), dict):
            raise ArtifactError(f"split unit: part {p} meta must be an object")
        specs = [_spec(t, p) for t in part["tensors"]]
        prefix = f"{p}."
        streams = {k[len(prefix) :]: s for k, s in unit.streams.items() if k.startswith(prefix)}
        claimed.update(prefix + k for k in streams)
        part_fmt = fmt
        if "format" in part:  # a part encoded otherwise than the unit's format (an LQER-corrected slice)
            params = part["meta"].get("params")
            try:
                if not isinstance(params, dict):
                    raise ArtifactError("its meta needs the format's params")
                part_fmt = get_format(str(part["format"]), **params)
            except BytegolfError as exc:
                raise ArtifactError(f"split unit: part {p} format {part['format']!r}: {exc}") from None
        got = part_fmt.decode(Encoded(part_fmt.name, specs, streams, part["meta"]))
        for s in specs:
            t = got.get(s.name)
            if t is None or tuple(t.shape) != s.shape:
                raise ArtifactError(f"split unit: part {p} decoded {s.name} with the wrong shape")
            if s.name in decoded:
                raise ArtifactError(f"split unit: tensor {s.name} appears in more than one part")
            decoded[s.name] = t
    if stray := sorted(set(unit.streams) - claimed):
        raise ArtifactError(f"split unit: streams {stray} belong to no part")
    out, used = {}, set()
    for spec in unit.tensors:
        if spec.name not in shapes:
            if spec.name not in decoded:
                raise ArtifactError(f"split unit: no part holds tensor {spec.name}")
            out[spec.name], used = decoded[spec.name], used | {spec.name}
            continue
        shape = shapes[spec.name]
        if tuple(shape) != spec.shape:
            raise ArtifactError(f"split unit: {spec.name} is recorded as {shape}, its spec says {list(spec.shape)}")
        slices = []
        for i in range(shape[0]):
            key = slice_name(spec.name, i)
            t = decoded.get(key)
            if t is None:
                raise ArtifactError(f"split unit: slice {key} of {spec.name} {shape} is missing")
            if tuple(t.shape) != matrix_shape(tuple(shape[1:])) or t.dtype != spec.torch_dtype:
                raise ArtifactError(
                    f"split unit: slice {key} {list(t.shape)} ({t.dtype}) does not stack into {spec.name} {shape}"
                )
            slices.append(t)
            used.add(key)
        if not slices:
            raise ArtifactError(f"split unit: {spec.name} {shape} has no slices")
        out[spec.name] = torch.stack(slices).reshape(shape)
    if extra := sorted(set(decoded) - used):
        raise ArtifactError(f"split unit: parts hold tensors {extra} the unit does not have")
    return out


def _spec_json(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "shape": list(s.shape), "dtype": s.dtype}


def _dims(shape: Any) -> bool:
    return isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


def _spec(t: Any, p: int) -> TensorSpec:
    """A part's tensor entry, checked."""
    if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not _dims(t.get("shape")):
        raise ArtifactError(f"split unit: part {p} has a malformed tensor entry {t!r}")
    if t.get("dtype") not in TORCH_DTYPES:
        raise ArtifactError(f"split unit: part {p} tensor {t['name']}: dtype {t.get('dtype')!r} is not a float dtype")
    return TensorSpec(t["name"], tuple(t["shape"]), t["dtype"])
