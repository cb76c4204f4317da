"""Loss sensitivity of each weight matrix, and the loss increase a weight error is expected to cause.

For a linear map y = W x inside the model, a weight error ΔW moves y by ΔW x. To second order, with the
Fisher (Gauss–Newton) matrix of the loss in place of its Hessian and Kronecker-factored between the
input and output sides (K-FAC, Martens & Grosse 2015) with its output side kept diagonal, the increase
of the mean per-token loss is

    ΔL ≈ ½ Σ_j F_j · (ΔW H̄ ΔWᵀ)_jj,   F_j = mean over tokens of (∂ℓ/∂y_j)²,   H̄ = mean of x xᵀ,

where ℓ is the summed token loss. F (one value per output row) is the output side gathered here;
H̄ is the calibration Gram matrix divided by its row count. The tied embedding has two roles: as the
output head (y = the logits before the softcap, x = the final hidden state), which the formula above
covers, and as the input lookup, where an error Δe_j of token j's row moves the loss at every position
holding token j: ½ Σ_j G_j ‖Δe_j‖², G_j = Σ over positions holding j of ‖∂ℓ/∂e‖² / (tokens · dim)
(isotropic within the row). Both are summed.

`output_fishers` gathers F (and G for the embedding) for the built-in GPT on calibration windows;
`loss_increase` applies them to one tensor's error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from bytegolf.model.gpt import GPT, CastedLinear


@dataclass
class Sensitivity:
    """One tensor's loss weights: per output row on (ΔW H̄ ΔWᵀ)_jj, and (the embedding) per row on ‖Δw_j‖²."""

    out: Tensor
    rows: Tensor | None = None


def output_fishers(
    model: GPT,
    windows: np.ndarray,
    device: str = "cpu",
    batch_size: int = 4,
    progress: bool = True,
    sampled: bool = True,
    seed: int = 0,
) -> tuple[dict[str, Sensitivity], int]:
    """Sensitivity of every linear weight of the model and of the tied embedding, from the summed
    next-token loss on windows (n, seq_len + 1); plus the number of tokens. sampled: the loss of targets
    drawn from the model's prediction (seeded), whose squared gradients average to the Fisher; else of
    the windows' own next tokens (the empirical Fisher)."""
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    model.eval().to(dev)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n == "tok_emb.weight")  # activations then carry gradients; no other weight needs one
    sums: dict[str, Tensor] = {}
    vocab, dim = model.tok_emb.weight.shape
    emb_rows = torch.zeros(vocab, dtype=torch.float64, device=dev)
    hooks = []

    def add(name: str, g: Tensor) -> None:
        g2 = g.detach().double().reshape(-1, g.shape[-1]).square().sum(0)
        sums[name] = sums.get(name, 0) + g2

    def add_rows(ids: Tensor, g: Tensor) -> None:
        emb_rows.index_add_(0, ids.reshape(-1), g.detach().double().square().sum(-1).reshape(-1))

    def linear_hook(name: str):
        def fn(_mod, _args, out):
            out.register_hook(lambda g: add(name, g))

        return fn

    def emb_hook(_mod, args, out):
        ids = args[0]
        out.register_hook(lambda g: add_rows(ids, g))

    hooks.append(model.tok_emb.register_forward_hook(emb_hook))
    for mname, mod in model.named_modules():
        if isinstance(mod, CastedLinear):
            hooks.append(mod.register_forward_hook(linear_hook(f"{mname}.weight")))
    tokens = 0
    try:
        for start in tqdm(range(0, len(windows), batch_size), desc="sensitivity", disable=not progress, leave=False):
            chunk = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch_size])).long().to(dev)
            ids, targets = chunk[:, :-1], chunk[:, 1:]
            h = model.hidden(ids)
            proj = F.linear(h, model.tok_emb.weight.to(h.dtype))
            proj.register_hook(lambda g: add("tok_emb.weight", g))
            cap = model.cfg.logit_softcap
            logits = cap * torch.tanh(proj / cap)
            flat = logits.float().reshape(-1, vocab)
            if sampled:  # targets drawn from the model's own prediction: the Fisher proper (Gauss–Newton)
                targets = torch.multinomial(flat.detach().softmax(-1), 1, generator=gen).reshape(targets.shape)
            loss = F.cross_entropy(flat, targets.reshape(-1), reduction="sum")
            loss.backward()
            model.tok_emb.weight.grad = None
            tokens += targets.numel()
    finally:
        for hk in hooks:
            hk.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    out = {k: Sensitivity((v / tokens).float().cpu()) for k, v in sums.items()}
    out["tok_emb.weight"].rows = (emb_rows / (tokens * dim)).float().cpu()
    return out, tokens


def loss_increase(w: Tensor, w_hat: Tensor, gram: Tensor, gram_rows: int, s: Sensitivity) -> float:
    """The expected increase of the mean per-token loss (nats) from replacing w by w_hat (module docstring)."""
    dw = (w_hat.double() - w.double()).reshape(w.shape[0], -1)
    per_row = ((dw @ (gram.detach().double() / max(gram_rows, 1))) * dw).sum(1)
    total = float((s.out.double() * per_row.detach()).sum())
    if s.rows is not None:
        total += float((s.rows.double() * dw.square().sum(1)).sum())
    return 0.5 * total
