"""Validation loss, perplexity and bits-per-byte on fixed non-overlapping windows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from bytegolf.errors import ConfigError
from bytegolf.model import GPT
from bytegolf.tokenizer import ByteTables

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EvalResult:
    """Totals plus per-window NLL sums (nats) and byte counts, for paired statistics."""

    loss: float
    ppl: float
    bpb: float
    tokens: int
    bytes: int
    window_nll: list[float] = field(repr=False)
    window_bytes: list[int] = field(repr=False)


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Autocast context for an evaluation or training precision name."""
    if precision not in DTYPES:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {sorted(DTYPES)}")
    return torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32")


@torch.inference_mode()
def evaluate(
    model: GPT,
    windows: np.ndarray,
    tables: ByteTables,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    batch_size: int = 8,
    progress: bool = True,
) -> EvalResult:
    """Evaluate on windows of shape (n, seq_len+1); loss is the mean NLL per token in nats."""
    device = torch.device(device)
    model.eval().to(device)
    nll_sums: list[float] = []
    byte_counts = tables.count(windows[:, :-1], windows[:, 1:]).sum(axis=1)
    bar = tqdm(range(0, len(windows), batch_size), desc="eval", unit="batch", disable=not progress, leave=False)
    for start in bar:
        chunk = torch.from_numpy(windows[start : start + batch_size]).to(device)
        with autocast(device, precision):
            nll = model.token_nll(chunk[:, :-1], chunk[:, 1:])
        nll_sums.extend(nll.double().sum(dim=1).cpu().tolist())
    tokens = int(windows.shape[0] * (windows.shape[1] - 1))
    total_nll = math.fsum(nll_sums)
    total_bytes = int(byte_counts.sum())
    loss = total_nll / tokens
    return EvalResult(
        loss=loss,
        ppl=math.exp(loss),
        bpb=total_nll / math.log(2) / total_bytes,
        tokens=tokens,
        bytes=total_bytes,
        window_nll=nll_sums,
        window_bytes=[int(b) for b in byte_counts],
    )
