"""Whole-model artifact files: write encoded units into a container file, and decode them back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from bytegolf.artifact import container, layout, reshape
from bytegolf.errors import ArtifactError, BytegolfError
from bytegolf.formats import Encoded, get_format

ARTIFACT_NAME = "model.bgz"


@dataclass
class Written:
    """What writing an artifact produced: units (with reconstructions), blob sizes, file size."""

    units: list[Encoded]
    final_bytes: int
    blob_stored: list[int] = field(default_factory=list)
    blob_raw: list[int] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def write(
    path: Path,
    units: list[Encoded],
    codec: str,
    codec_params: dict[str, Any],
    lay: layout.LayoutConfig,
    extra: dict[str, Any] | None = None,
) -> Written:
    """Serialize the units through the layout and codec into one container file.

    Codec "best" is resolved per blob by layout.pack: the container stores each blob under the
    winning candidate's own name and parameters. seconds: "pack" (layout, plus trying the
    candidates for "best") and "write" (final compression and the file).
    """
    t0 = time.perf_counter()
    entries, blobs = layout.pack(units, codec, codec_params, lay)
    t1 = time.perf_counter()
    manifest = {"units": entries, "layout": lay.describe(), **(extra or {})}
    size = container.write_artifact(path, manifest, blobs)
    stored = container.stored_sizes(path)
    seconds = {"pack": t1 - t0, "write": time.perf_counter() - t0}
    return Written(units, size, stored, [len(b.raw) for b in blobs], manifest, seconds)


def read(path: Path, progress: bool = True) -> tuple[dict[str, Tensor], list[Encoded]]:
    """Decode every tensor from an artifact file alone; any inconsistency raises ArtifactError.
    progress: a bar of units decoded."""
    manifest, blobs = container.read_artifact(path)
    units = layout.unpack(manifest.get("units"), blobs)
    out: dict[str, Tensor] = {}
    for ui, unit in enumerate(tqdm(units, desc="decode", unit="unit", leave=False, disable=not progress)):
        names = [t.name for t in unit.tensors]
        try:
            params = unit.meta.get("params", {})
            if not isinstance(params, dict):
                raise ArtifactError("format params must be an object")
            fmt = get_format(unit.format, **params)
            tensors = reshape.decode(fmt, unit)
        except BytegolfError as exc:
            raise ArtifactError(f"{path}: unit {ui} ({', '.join(names)}): {exc}") from None
        except Exception as exc:  # a format's decoder meeting inconsistent streams
            raise ArtifactError(
                f"{path}: unit {ui} ({', '.join(names)}) does not decode: {type(exc).__name__}: {exc}"
            ) from None
        for spec in unit.tensors:
            t = tensors.get(spec.name)
            if t is None or tuple(t.shape) != spec.shape:
                raise ArtifactError(f"{path}: unit {ui} decoded {spec.name} with the wrong shape")
            out[spec.name] = reshape.unfold(spec.name, t, unit.meta)
    return out, units


def verify_bit_exact(decoded: dict[str, Tensor], units: list[Encoded]) -> None:
    """Fail loudly unless every decoded tensor equals its quantizer's reconstruction bit for bit."""
    for unit in units:
        for spec in unit.tensors:
            rec = (unit.recon or {}).get(spec.name)
            got = decoded.get(spec.name)
            if rec is not None and rec.is_floating_point() and not bool(torch.isfinite(rec).all()):
                raise ArtifactError(
                    f"the {unit.format} reconstruction of {spec.name} holds NaN or Inf: the format produced "
                    "non-finite values (a stored value overflowed its dtype?)"
                )
            if rec is None or got is None or rec.dtype != got.dtype or not torch.equal(rec, got):
                raise ArtifactError(
                    f"decode(encode(W)) differs from the {unit.format} reconstruction for {spec.name}: "
                    "the format's decoder does not match its encoder"
                )
