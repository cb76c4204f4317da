"""Storage-native finetuning: train a model with its export quantizer in the loop and a differentiable
estimate of the coded size of its codes (an entropy-constrained, ECVQ-style rate term).

For every matrix the export quantizes (2-D, more than `min_numel` values, not a control tensor), the
forward pass uses the scalar format's reconstruction: per-row SDClip scale s = clip_k·std(row)/Q,
codes q = clamp(round(W/s), -Q, Q), Ŵ = q·s, with a straight-through gradient (`ste`); int`bits` at
`clip_k` for the block matrices and int`embed_bits` at `embed_clip_k` for the tied embedding, as the
compare exports them (with the embedding at int6 too, the first batch's loss rose by 0.53 nats on the
default model, nearly all of it the embedding's: every block matrix at int4 RTN costs about 0.013). The
rate term
is the entropy of each tensor's codes under their own empirical distribution, made differentiable by
a triangular-kernel histogram of u = W/s (each value splits its mass between its two nearest integer
codes), summed over tensors in bits. The loss is

    cross-entropy (nats per token) + lam · (rate bits / quantized weights)

so lam trades nats of loss against bits per weight. Training state (weights, optimizer, data position,
RNG) is saved every `save_every` steps and at the end; the same out_dir resumes. The model is then
exported through the normal pipeline (`bytegolf run model.checkpoint=OUT/model.safetensors ...`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from bytegolf.errors import ConfigError
from bytegolf.model import checkpoint
from bytegolf.model.curve import training_curve
from bytegolf.model.gpt import GPT, is_control

log = logging.getLogger("bytegolf")
STATE = "train_state.pt"


@dataclass
class RateConfig:
    """Rate-aware finetuning settings (lam = 0 with ste: quantization-aware finetuning only;
    lam = 0 without ste: plain finetuning, the baseline that separates the rate term from more steps)."""

    lam: float = 0.0
    steps: int = 200
    lr: float = 3e-4
    bits: int = 6
    clip_k: float = 12.85
    ste: bool = True
    embed_bits: int = 7  # the tied embedding's own export setting (compare.embedding: GPTQ int7, k 14)
    embed_clip_k: float = 14.0
    seq_len: int = 1024
    batch_seqs: int = 4
    min_numel: int = 65_536
    save_every: int = 50
    log_every: int = 10
    seed: int = 0


def quantized_names(model: GPT, min_numel: int) -> list[str]:
    """The matrices the export quantizes: 2-D, more than min_numel values, not control tensors."""

    return [n for n, p in model.named_parameters() if p.ndim == 2 and p.numel() > min_numel and not is_control(n)]


def sdclip_scale(w: Tensor, bits: int, clip_k: float) -> Tensor:
    """Per-row scale k·std(row)/(2^(b-1)-1), as the scalar format's SDClip rule (a column vector)."""
    q = 2 ** (bits - 1) - 1
    return (clip_k * w.float().std(-1, keepdim=True) / q).clamp_min(1e-12)


def fake_quant(w: Tensor, bits: int, clip_k: float, ste: bool = True) -> tuple[Tensor, Tensor]:
    """(Ŵ, u): the reconstruction q·s (straight-through when ste, else w itself) and u = w/s (clipped)."""
    q = 2 ** (bits - 1) - 1
    s = sdclip_scale(w, bits, clip_k)
    u = (w.float() / s).clamp(-q, q)
    if not ste:
        return w, u
    w_hat = (torch.round(u) * s).to(w.dtype)
    return w + (w_hat - w).detach(), u


def soft_entropy_bits(u: Tensor, bits: int) -> Tensor:
    """Differentiable estimate of Σ over values of -log2 p(code): numel × the entropy of the triangular-
    kernel histogram of u over the integer codes -Q..Q."""
    q = 2 ** (bits - 1) - 1
    x = u.reshape(-1) + q  # 0 .. 2q
    lo = x.detach().floor().clamp(0, 2 * q - 1)
    frac = x - lo  # in [0, 1]; its gradient moves mass between the two neighbouring codes
    hist = torch.zeros(2 * q + 1, dtype=x.dtype, device=x.device)
    hist = hist.index_add(0, lo.long(), 1 - frac).index_add(0, lo.long() + 1, frac)
    p = hist / x.numel()
    return -(p * torch.log2(p.clamp_min(1e-12))).sum() * x.numel()


def hard_entropy_bits(w: Tensor, bits: int, clip_k: float) -> float:
    """Σ -log2 p(code) of the actual rounded codes (the order-0 bound a codec approaches)."""
    q = 2 ** (bits - 1) - 1
    codes = torch.round((w.float() / sdclip_scale(w, bits, clip_k)).clamp(-q, q)).long() + q
    p = torch.bincount(codes.reshape(-1), minlength=2 * q + 1).double() / codes.numel()
    return float(-(p[p > 0] * torch.log2(p[p > 0])).sum() * codes.numel())


def _save(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(body, tmp)
    os.replace(tmp, path)


def rate_finetune(
    model: GPT, tokens: np.ndarray, cfg: RateConfig, out_dir: Path, device: str = "cpu"
) -> dict[str, Any]:
    """Finetune model in place on tokens with the rate term; write OUT/model.safetensors (the source
    dtypes kept), OUT/rate_train.json (settings, time, history) and OUT/curve.png; resume from
    OUT/train_state.pt when it is there."""
    if cfg.steps < 0 or cfg.lam < 0 or not 2 <= cfg.bits <= 8 or not 2 <= cfg.embed_bits <= 8:
        raise ConfigError(f"rate: need steps >= 0, lam >= 0 and bits, embed_bits in 2..8, got {cfg}")
    dev = torch.device(device)
    dtypes = {n: t.dtype for n, t in model.state_dict().items()}
    model.float().to(dev).train()
    names = quantized_names(model, cfg.min_numel)
    if not names:
        raise ConfigError(f"rate: no matrix has more than min_numel={cfg.min_numel} values to quantize")
    n_weights = sum(model.get_parameter(n).numel() for n in names)
    setting = {
        n: (cfg.embed_bits, cfg.embed_clip_k) if n == "tok_emb.weight" else (cfg.bits, cfg.clip_k) for n in names
    }
    span = cfg.batch_seqs * cfg.seq_len + 1
    if tokens.size < span:
        raise ConfigError(f"rate: {tokens.size} train tokens, a batch needs {span}")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / STATE
    step, pos, history, seconds = 0, 0, [], 0.0
    torch.manual_seed(cfg.seed)
    if state_path.is_file():
        st = torch.load(state_path, map_location=dev, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, pos, history, seconds = st["step"], st["pos"], st["history"], st["seconds"]
        torch.set_rng_state(st["rng"])
        log.info("rate: resumed at step %d from %s", step, state_path)
    t0 = time.perf_counter() - seconds
    while step < cfg.steps:
        if pos + span > tokens.size:
            pos = 0
        chunk = torch.from_numpy(tokens[pos : pos + span].astype(np.int64)).to(dev)
        pos += span - 1
        x, y = chunk[:-1].view(cfg.batch_seqs, cfg.seq_len), chunk[1:].view(cfg.batch_seqs, cfg.seq_len)
        params = dict(model.named_parameters())
        rate = torch.zeros((), device=dev)
        for n in names:
            bits, k = setting[n]
            params[n], u = fake_quant(params[n], bits, k, cfg.ste)
            if cfg.lam > 0:
                rate = rate + soft_entropy_bits(u, bits)
        ce = functional_call(model, params, (x, y))
        loss = ce + cfg.lam * rate / n_weights
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % cfg.log_every == 0 or step == 1 or step == cfg.steps:
            bpw = sum(hard_entropy_bits(model.get_parameter(n).detach(), *setting[n]) for n in names)
            history.append({"step": step, "loss": float(ce.detach()), "code_bits_per_weight": bpw / n_weights})
            log.info("rate step %d loss %.4f codes %.4f bits/weight", step, float(ce.detach()), bpw / n_weights)
        if step % cfg.save_every == 0 or step == cfg.steps:
            body = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "pos": pos}
            body |= {"history": history, "seconds": time.perf_counter() - t0, "rng": torch.get_rng_state()}
            _save(state_path, body)
    sd = {n: t.detach().cpu().to(dtypes[n]) for n, t in model.state_dict().items()}
    checkpoint.save_state_dict(sd, out_dir / "model.safetensors")
    stats = {
        "rate": asdict(cfg),
        "steps": step,
        "tokens_seen": step * cfg.batch_seqs * cfg.seq_len,
        "seconds": round(time.perf_counter() - t0, 1),
        "quantized_tensors": names,
        "history": history,
    }
    (out_dir / "rate_train.json").write_text(json.dumps(stats, indent=2))
    if history:
        training_curve(history, out_dir / "curve.png", f"rate finetune, lam {cfg.lam}, int{cfg.bits}")
    return stats
