"""Plan-level low-rank correction: which encoded tensors get an LQER term (formats/lowrank.py)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import Tensor

from bytegolf.errors import ConfigError
from bytegolf.formats import EncodeContext, Encoded
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


def _candidates(units: list[Encoded]) -> list[int]:
    """Units that hold one quantized matrix (passthrough, multi-tensor and reshaped units cannot be wrapped)."""
    return [
        i
        for i, u in enumerate(units)
        if u.format not in ("passthrough", LowRank.name)
        and len(u.tensors) == 1
        and len(u.tensors[0].shape) == 2
        and "reshape" not in u.meta
    ]


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
        chosen = [i for i in cands if fnmatch.fnmatchcase(units[i].tensors[0].name, cfg.match)]
        if not chosen:
            raise ConfigError(f"plan.lowrank.match {cfg.match!r} matches no quantized matrix")
    else:

        def resid(i: int) -> float:
            name = units[i].tensors[0].name
            recon = (units[i].recon or {}).get(name)
            if recon is None:
                raise ConfigError(f"plan.lowrank: the encoding of {name} carries no reconstruction")
            return float(torch.linalg.norm(state[name].float() - recon.float()))

        norms = {i: resid(i) for i in cands}
        chosen = sorted(sorted(cands, key=lambda i: -norms[i])[: cfg.top_k])
    out = list(units)
    for i in chosen:
        u = units[i]
        name = u.tensors[0].name
        base = {"name": u.format, **u.meta.get("params", {})}
        wrapper = LowRank(base, cfg.rank, cfg.a_bits, cfg.b_bits, cfg.a_group_size, cfg.group_size)
        base_enc = Encoded(u.format, u.tensors, u.streams, {k: v for k, v in u.meta.items() if k != "params"})
        base_enc.recon, base_enc.nominal_bits = u.recon, u.nominal_bits
        wrapped = wrapper.correct(base_enc, state[name], ctx.device)
        wrapped.meta = {**wrapped.meta, "params": wrapper.config()}
        out[i] = wrapped
    return out, [units[i].tensors[0].name for i in chosen]
