"""Fidelity of a quantized model to its unquantized reference, token by token.

The statistics of llama.cpp's `perplexity --kl-divergence`: for every evaluated token,
KL(p_ref ‖ p) = Σ_v p_ref(v)·(log p_ref(v) − log p(v)) over the vocabulary (nats), where p_ref is
the reference model's softmax and p the quantized model's; whether both put the same token on top
(top-1 agreement, llama.cpp's "same top p"); and Δp = p(target) − p_ref(target), the change in the
probability of the token that actually came next (reported as its RMS over tokens).

Everything is computed from logits in float64, a bounded number of rows at a time, and
`FidelityAccumulator` keeps only one float per token (its KLD, for the percentiles) plus running
sums, so the vocabulary × tokens probabilities are never held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bytegolf.errors import ConfigError

PERCENTILES = {"p99_9": 99.9, "p99": 99.0, "p95": 95.0, "p90": 90.0, "p50": 50.0, "p10": 10.0, "p5": 5.0, "p1": 1.0}
CHUNK_ELEMENTS = 1 << 24  # rows × vocab handled at once (float64: 128 MiB per temporary)


@dataclass
class TokenStats:
    """Per-token fidelity values: KLD in nats (float64), top-1 agreement (bool), Δp (float64)."""

    kld: Tensor
    top1: Tensor
    dp: Tensor


def token_stats(ref_logits: Tensor, logits: Tensor, targets: Tensor) -> TokenStats:
    """KL(softmax(ref_logits) ‖ softmax(logits)), top-1 agreement and Δp of the target, per token.

    Logits have shape (..., vocab), targets the same leading shape; the results are flat (one entry
    per token, leading dimensions in row-major order)."""
    if ref_logits.shape != logits.shape or ref_logits.ndim < 1:
        shapes = f"{tuple(ref_logits.shape)} and {tuple(logits.shape)}"
        raise ConfigError(f"fidelity: reference logits and logits must have one shape, got {shapes}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ConfigError(f"fidelity: targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}")
    vocab = logits.shape[-1]
    ref = ref_logits.reshape(-1, vocab)
    q = logits.reshape(-1, vocab)
    tgt = targets.reshape(-1, 1).long()
    rows = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    kld, top1, dp = [], [], []
    for i in range(0, ref.shape[0], rows):
        lr = F.log_softmax(ref[i : i + rows].double(), dim=-1)
        lq = F.log_softmax(q[i : i + rows].double(), dim=-1)
        kld.append((lr.exp() * (lr - lq)).sum(dim=-1))
        top1.append(ref[i : i + rows].argmax(dim=-1) == q[i : i + rows].argmax(dim=-1))
        t = tgt[i : i + rows]
        dp.append(lq.gather(1, t).exp().squeeze(1) - lr.gather(1, t).exp().squeeze(1))
    if not kld:
        empty = torch.zeros(0, dtype=torch.float64, device=logits.device)
        return TokenStats(empty, torch.zeros(0, dtype=torch.bool, device=logits.device), empty)
    return TokenStats(torch.cat(kld), torch.cat(top1), torch.cat(dp))


def summarize(kld: np.ndarray, top1: np.ndarray, dp: np.ndarray) -> dict[str, float]:
    """The reported statistics from per-token values: tokens; mean KLD and its standard error; max,
    percentiles (numpy's linear interpolation) and min of the KLD; top-1 agreement and its standard
    error; RMS and mean of Δp."""
    kld = np.asarray(kld, dtype=np.float64).reshape(-1)
    top1 = np.asarray(top1, dtype=bool).reshape(-1)
    dp = np.asarray(dp, dtype=np.float64).reshape(-1)
    if not kld.size == top1.size == dp.size:
        raise ConfigError(f"fidelity: {kld.size} KLD values, {top1.size} top-1 flags and {dp.size} Δp values differ")
    return _summary(
        kld,
        n=kld.size,
        kld_sum=math.fsum(kld),
        kld_sq=math.fsum(kld * kld),
        matches=int(top1.sum()),
        dp_sum=math.fsum(dp),
        dp_sq=math.fsum(dp * dp),
    )


def kld_table(k: dict[str, float]) -> str:
    """The statistics as llama.cpp's `perplexity --kl-divergence` prints them (KLD in nats, Δp in percent)."""
    rows = [f"  Mean    KLD: {k['mean']:10.6f} ± {k['se']:.6f}   ({k['tokens']:,} tokens)"]
    rows.append(f"  Maximum KLD: {k['max']:10.6f}")
    rows += [f"  {name.replace('p', '').replace('_', '.'):>5}%  KLD: {k[name]:10.6f}" for name in PERCENTILES]
    rows.append(f"  Minimum KLD: {k['min']:10.6f}")
    rows.append(f"  Same top p: {100 * k['top1_agreement']:6.3f} ± {100 * k['top1_se']:.3f} %")
    rows.append(f"  RMS Δp    : {100 * k['rms_dp']:6.3f} %   (mean Δp {100 * k['mean_dp']:+.3f} %)")
    return "\n".join(rows)


def _summary(
    values: np.ndarray, n: int, kld_sum: float, kld_sq: float, matches: int, dp_sum: float, dp_sq: float
) -> dict[str, float]:
    if n == 0:
        raise ConfigError("fidelity: no tokens were scored")
    mean = kld_sum / n
    agree = matches / n
    # llama.cpp's errors: sqrt(population variance / (n − 1)) = sample std / sqrt(n)
    se = math.sqrt(max(kld_sq / n - mean * mean, 0.0) / (n - 1)) if n > 1 else math.nan
    out = {"tokens": n, "mean": mean, "se": se, "max": float(values.max())}
    qs = np.percentile(values, list(PERCENTILES.values()))
    out.update({k: float(v) for k, v in zip(PERCENTILES, qs, strict=True)})
    out["min"] = float(values.min())
    out["top1_agreement"] = agree
    out["top1_se"] = math.sqrt(agree * (1 - agree) / (n - 1)) if n > 1 else math.nan
    out["rms_dp"] = math.sqrt(dp_sq / n)
    out["mean_dp"] = dp_sum / n
    return out


@dataclass
class FidelityAccumulator:
    """Streaming `summarize`: feed batches of logits, keep one float64 KLD per token and running sums."""

    _kld: list[np.ndarray] = field(default_factory=list, repr=False)
    n: int = 0
    matches: int = 0
    _sums: dict[str, list[float]] = field(default_factory=lambda: {"kld": [], "kld_sq": [], "dp": [], "dp_sq": []})

    def update(self, ref_logits: Tensor, logits: Tensor, targets: Tensor) -> TokenStats:
        """Add the tokens of one batch (shapes as in `token_stats`); returns their per-token values."""
        s = token_stats(ref_logits, logits, targets)
        k = s.kld.cpu().numpy()
        d = s.dp.cpu().numpy()
        self._kld.append(k)
        self.n += k.size
        self.matches += int(s.top1.sum().item())
        for key, v in (("kld", k), ("kld_sq", k * k), ("dp", d), ("dp_sq", d * d)):
            self._sums[key].append(math.fsum(v))
        return s

    def values(self) -> np.ndarray:
        """Every token's KLD so far, in the order fed."""
        return np.concatenate(self._kld) if self._kld else np.zeros(0)

    def summary(self) -> dict[str, float]:
        """The statistics of `summarize` over every token fed (ConfigError when none was)."""
        s = {k: math.fsum(v) for k, v in self._sums.items()}
        return _summary(self.values(), self.n, s["kld"], s["kld_sq"], self.matches, s["dp"], s["dp_sq"])
