"""The training curve: loss, validation loss and code entropy against step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bytegolf.figure import pyplot


def training_curve(history: list[dict[str, Any]], path: Path, title: str = "training") -> Path:
    """Train loss (left axis), validation loss where entries carry `val_loss`, and, where logged, code
    entropy in bits/weight (right axis) against step."""
    plt = pyplot()
    train = [h for h in history if "loss" in h]
    steps = [h["step"] for h in train]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [h["loss"] for h in train], color="tab:blue", marker=".", label="train loss (nats/token)")
    val = [h for h in history if "val_loss" in h]
    if val:
        ax.plot([h["step"] for h in val], [h["val_loss"] for h in val], color="tab:green", marker="o",
                linestyle="--", label="validation loss (nats/token)")  # fmt: skip
        ax.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)" if val else "train loss (nats/token)", color="tab:blue")
    if any("code_bits_per_weight" in h for h in train):
        ax2 = ax.twinx()
        bits = [h.get("code_bits_per_weight", np.nan) for h in train]
        ax2.plot(steps, bits, color="tab:red", marker=".", label="code entropy (bits/weight)")
        ax2.set_ylabel("code entropy (bits/weight)", color="tab:red")
    ax.set_title(title)
    ax.grid(True, alpha=0.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
