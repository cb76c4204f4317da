"""Plan-level low-rank correction: which encoded tensors get an LQER term (formats/lowrank.py)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import Tensor

from bytegolf.errors import ConfigError
from bytegolf.formats import EncodeContext, Encoded
from bytegolf.formats.base import TensorSpec
from bytegolf.formats.lowrank import LowRank


@dataclass
class LowRankPlan:
    """Correct the `top_k` quantized matrices with the largest ‖W − Ŵ‖_F, or every one whose name
    matches `match` (a glob); both empty (top_k 0, match null): no correction. The factors follow
    bytegolf.formats.lowrank: rank, A at a_bits (groups of a_group_size, 0: per matrix), B at b_bits in groups
    of group_size."""

    top_k: int = 0
    match: str | None = None
    rank: int = 4
    a_bits: int = 2
    b_bits: int = 4
    a_group_size: int = 0
    group_size: int = 64

    @property
    def active(self) -> bool:
        return self.top_k > 0 or bool(self.match)


def _candidates(units: list[Encoded]) -> list[tuple[int, int | None]]:
    """(unit, None) for units that hold one quantized matrix, (unit, part) for the matrix slices of a split
    weight bank (plan.reshape=split); passthrough, multi-tensor and folded units cannot be wrapped."""
    out: list[tuple[int, int | None]] = []
    for i, u in enumerate(units):
        if u.format in ("passthrough", LowRank.name):
            continue
        if "split" in u.meta:
            for p, part in enumerate(u.meta["parts"]):
                (tensor, *more) = part["tensors"]
                if not more and len(tensor["shape"]) == 2 and "format" not in part and "[" in tensor["name"]:
                    out.append((i, p))
        elif len(u.tensors) == 1 and len(u.tensors[0].shape) == 2 and "reshape" not in u.meta:
            out.append((i, None))
    return out


def _slice(name: str) -> tuple[str, int]:
    """("bank", 3) for the slice name "bank[3]" (bytegolf.artifact.reshape.slice_name)."""
    bank, index = name[:-1].rsplit("[", 1)
    return bank, int(index)


def _name(units: list[Encoded], key: tuple[int, int | None]) -> str:
    i, p = key
    return units[i].tensors[0].name if p is None else str(units[i].meta["parts"][p]["tensors"][0]["name"])


def _target(state: dict[str, Tensor], units: list[Encoded], key: tuple[int, int | None]) -> tuple[Tensor, Tensor]:
    """(W, Ŵ) of a candidate: the matrix, or the bank slice, and its reconstruction."""
    name = _name(units, key)
    tensor, k = (name, None) if key[1] is None else _slice(name)
    recon = (units[key[0]].recon or {}).get(tensor)
    if recon is None:
        raise ConfigError(f"plan.lowrank: the encoding of {name} carries no reconstruction")
    return (state[tensor], recon) if k is None else (state[tensor][k], recon[k])


def _wrap_part(unit: Encoded, p: int, w: Tensor, wrapper: LowRank, device: str) -> Encoded:
    """The split unit with its part p (one bank slice) wrapped in the correction; the part records its format."""
    part = unit.meta["parts"][p]
    (t,) = part["tensors"]
    spec = TensorSpec(str(t["name"]), tuple(t["shape"]), str(t["dtype"]))
    bank, k = _slice(spec.name)
    prefix = f"{p}."
    streams = {key[len(prefix) :]: s for key, s in unit.streams.items() if key.startswith(prefix)}
    base = Encoded(unit.format, [spec], streams, dict(part["meta"]))
    base.recon = {spec.name: unit.recon[bank][k]}
    wrapped = wrapper.correct(base, w, device)
    parts = list(unit.meta["parts"])
    parts[p] = {
        "tensors": part["tensors"],
        "meta": {**wrapped.meta, "params": wrapper.config()},
        "format": wrapper.name,
    }
    out_streams = {key: s for key, s in unit.streams.items() if not key.startswith(prefix)}
    out_streams.update({prefix + key: s for key, s in wrapped.streams.items()})
    recon = dict(unit.recon)
    recon[bank] = recon[bank].clone()
    recon[bank][k] = wrapped.recon[spec.name]
    out = Encoded(unit.format, unit.tensors, out_streams, {**unit.meta, "parts": parts}, recon)
    out.nominal_bits = unit.nominal_bits + wrapped.nominal_bits  # base.nominal_bits is 0: the factors' bits
    return out


def apply_lowrank(
    state: dict[str, Tensor], units: list[Encoded], cfg: LowRankPlan, ctx: EncodeContext
) -> tuple[list[Encoded], list[str]]:
    """The units with the chosen ones wrapped in a low-rank correction, and the chosen tensor names."""
    if isinstance(cfg.top_k, bool) or not isinstance(cfg.top_k, int) or cfg.top_k < 0:
        raise ConfigError(f"plan.lowrank.top_k must be an integer >= 0, got {cfg.top_k!r}")
    if not cfg.active:
        return units, []
    cands = _candidates(units)
    if cfg.match:
        chosen = [c for c in cands if fnmatch.fnmatchcase(_name(units, c), cfg.match)]
        if not chosen:
            raise ConfigError(f"plan.lowrank.match {cfg.match!r} matches no quantized matrix")
    else:

        def resid(c: tuple[int, int | None]) -> float:
            w, w_hat = _target(state, units, c)
            return float(torch.linalg.norm(w.float() - w_hat.float()))

        norms = {c: resid(c) for c in cands}
        chosen = sorted(sorted(cands, key=lambda c: -norms[c])[: cfg.top_k], key=lambda c: (c[0], c[1] or 0))
    out = list(units)
    for i, p in chosen:
        u = out[i]
        base = {"name": u.format, **u.meta.get("params", {})}
        wrapper = LowRank(base, cfg.rank, cfg.a_bits, cfg.b_bits, cfg.a_group_size, cfg.group_size)
        if p is not None:  # a bank slice: its part of the split unit is wrapped, the others stay
            out[i] = _wrap_part(u, p, _target(state, units, (i, p))[0], wrapper, ctx.device)
            continue
        base_enc = Encoded(u.format, u.tensors, u.streams, {k: v for k, v in u.meta.items() if k != "params"})
        base_enc.recon, base_enc.nominal_bits = u.recon, u.nominal_bits
        wrapped = wrapper.correct(base_enc, state[u.tensors[0].name], ctx.device)
        wrapped.meta = {**wrapped.meta, "params": wrapper.config()}
        out[i] = wrapped
    return out, [_name(units, c) for c in chosen]
