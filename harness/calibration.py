"""Calibration: Gram matrices X Xᵀ of every weight matrix's inputs, gathered on training windows."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from bytegolf.model import GPT, CastedLinear

if TYPE_CHECKING:
    from bytegolf.correction import LowRankPlan
    from bytegolf.formats import EncodeContext, Encoded
    from bytegolf.plan import Assignment


@dataclass
class CalibConfig:
    """Windows of seq_len tokens taken from the start of the train shards."""

    windows: int = 16
    seq_len: int = 1024
    batch_size: int = 4
    # Sequential (GPTQ-style): each transformer block's Gram matrices come from the model whose earlier
    # blocks are already quantized (one calibration pass per block); tensors outside the blocks (the tied
    # embedding, whose Gram is the head input) last. False: every Gram from the unquantized model.
    sequential: bool = False


@torch.inference_mode()
def gram_matrices(
    model: GPT, windows: np.ndarray, device: str = "cpu", batch_size: int = 4, progress: bool = True
) -> tuple[dict[str, Tensor], int]:
    """Σ x xᵀ (fp32, on CPU) for each linear's input and for the tied head's input; plus the row count."""
    dev = torch.device(device)
    model.eval().to(dev)
    sums: dict[str, Tensor] = {}
    hooks = []

    def hook(name: str):
        def fn(_mod, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + x.T @ x

        return fn

    for mname, mod in model.named_modules():
        if isinstance(mod, CastedLinear):
            hooks.append(mod.register_forward_pre_hook(hook(f"{mname}.weight")))
    rows = 0
    try:
        for start in tqdm(range(0, len(windows), batch_size), desc="calibrate", disable=not progress, leave=False):
            ids = torch.from_numpy(windows[start : start + batch_size, :-1]).to(dev)
            h = model.hidden(ids).reshape(-1, model.cfg.model_dim).float()
            sums["tok_emb.weight"] = sums.get("tok_emb.weight", 0) + h.T @ h
            rows += h.shape[0]
    finally:
        for h in hooks:
            h.remove()
    return {k: v.cpu() for k, v in sums.items()}, rows


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def block_index(name: str) -> int | None:
    """The transformer block a tensor belongs to ("blocks.3.mlp.fc.weight" -> 3), None outside the blocks."""
    m = _BLOCK.search(name)
    return int(m.group(1)) if m else None


def encode_sequential(
    state: dict[str, Tensor],
    plan: list[Assignment],
    ctx: EncodeContext,
    grams_of: Callable[[dict[str, Tensor]], tuple[dict[str, Tensor], int]],
    lowrank: LowRankPlan | None = None,
) -> list[Encoded]:
    """Encode block by block in depth order: block i's Hessians are grams_of(the state with blocks < i
    replaced by their reconstructions). ctx holds the unquantized model's Grams (used for block 0).
    Units spanning several blocks (family or global scope) and tensors outside the blocks go last.
    The units come back in artifact.group_units order, as artifact.encode_state returns them."""
    from bytegolf.artifact import encode_state, group_units
    from bytegolf.correction import apply_lowrank

    groups = group_units(plan)
    last = max((i for g in groups for a in g if (i := block_index(a.name)) is not None), default=-1) + 1

    def stage(group: list[Assignment]) -> int:
        idx = {block_index(a.name) for a in group}
        return idx.pop() if len(idx) == 1 and None not in idx else last  # type: ignore[return-value]

    by_name: dict[str, Encoded] = {}
    current = dict(state)
    for n, s in enumerate(sorted({stage(g) for g in groups})):
        if n > 0:
            grams, rows = grams_of(current)
            ctx = replace(ctx, hessians=grams, hessian_counts=dict.fromkeys(grams, rows))
        todo = [a for g in groups if stage(g) == s for a in g]
        for unit in encode_state(state, todo, ctx, progress=False):
            by_name[unit.tensors[0].name] = unit
            current.update(unit.recon or {})
    units = [by_name[g[0].name] for g in groups]
    if lowrank is not None and lowrank.active:
        units, _ = apply_lowrank(state, units, lowrank, ctx)
    return units
