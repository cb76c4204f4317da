"""Calibration: Gram matrices X Xᵀ of every weight matrix's inputs, gathered on training windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from bytegolf.model import GPT, CastedLinear


@dataclass
class CalibConfig:
    """Windows of seq_len tokens taken from the start of the train shards."""

    windows: int = 16
    seq_len: int = 1024
    batch_size: int = 4


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
