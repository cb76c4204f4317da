"""Block-by-block calibration (ClusComp): codes frozen, codebooks (and scales) trained on block outputs.

For each transformer block in order, the quantized block's float streams (what its format's
`trainable` hook exposes: codebooks, row scales) are trained with AdamW on the MSE between the
quantized block's output and the full-precision block's output, on calibration windows.

Inputs. Block i sees the activations of the quantized model as it stands: token embedding,
every earlier block (already calibrated) and the U-Net skip connections all decoded. The target
is the full-precision block applied to those same inputs (x and x0). So each block learns to
act like its original on the inputs it will meet at inference, and the error of earlier blocks
is not propagated into a target it cannot reach (ClusComp's choice: training on full-precision
inputs would fit the block to activations the quantized model never produces, and errors would
accumulate).

What is trained. Units whose tensors all lie in one block and whose format has a hook. Units
outside the blocks (tok_emb) and units shared across blocks (scope family / global) are left as
they are: a codebook shared by several blocks cannot be fitted to one block's output without
moving the others off theirs. Formats without a hook (passthrough) are left as they are.

Exactness. The forward pass sees the parameters rounded to their stored dtype and the weights
rounded to the tensor's dtype (straight-through), so it computes what the decoder will. The
trained values are written back into the streams in their stored dtype and `recon` is the
format's own decode of the new streams, so the bit-exact check decode(file) == recon holds.
A block keeps its new streams only when its output MSE on all calibration windows fell.
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from bytegolf.errors import ConfigError
from bytegolf.formats import Encoded, Stream, get_format
from bytegolf.formats.arrays import from_numpy, to_numpy
from bytegolf.formats.base import Format, Trainable
from bytegolf.model.gpt import GPT, rms_norm

BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass
class FinetuneConfig:
    """Block calibration of codebook formats (steps = 0: off). Windows: of calib.seq_len tokens
    from the train shards (0: as many as calib.windows)."""

    steps: int = 0
    lr: float = 5e-3
    weight_decay: float = 0.1
    batch_size: int = 4
    train_scales: bool = True
    windows: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.windows < 0 or self.batch_size < 1:
            raise ConfigError(f"finetune: need steps >= 0, windows >= 0, batch_size >= 1; got {self}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ConfigError(f"finetune: need lr > 0 and weight_decay >= 0; got {self}")


def _ste(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x rounded to dtype (read back as fp32) in the forward pass, identity in the backward pass."""
    if dtype == torch.float32:
        return x
    return x + (x.detach().to(dtype).float() - x.detach())


class TrainableUnit:
    """One unit's float streams as fp32 Parameters; weights() rebuilds its tensors, commit() stores them."""

    def __init__(self, fmt: Format, enc: Encoded, hook: Trainable, device: torch.device, train_scales: bool) -> None:
        self.fmt, self.enc, self.hook = fmt, enc, hook
        self.params: dict[str, nn.Parameter] = {}
        for name, dtype in hook.dtypes.items():
            stream = enc.streams[name]
            value = from_numpy(stream.data, dtype).float().to(device)
            self.params[name] = nn.Parameter(value, requires_grad=train_scales or stream.role != "scales")

    def trained(self) -> list[nn.Parameter]:
        return [p for p in self.params.values() if p.requires_grad]

    def weights(self) -> dict[str, Tensor]:
        """The unit's tensors (fp32 holding values of their own dtype), differentiable in the params."""
        values = {k: _ste(p, self.hook.dtypes[k]) for k, p in self.params.items()}
        out = self.hook.rebuild(values)
        return {s.name: _ste(out[s.name], s.torch_dtype) for s in self.enc.tensors}

    def commit(self) -> Encoded:
        """A new Encoded: trained streams in their stored dtype (old values where not finite), recon = decode."""
        streams = dict(self.enc.streams)
        for name, p in self.params.items():
            if not p.requires_grad:
                continue
            dtype, old = self.hook.dtypes[name], self.enc.streams[name]
            prev = from_numpy(old.data, dtype)
            new = p.detach().cpu().to(dtype).reshape(prev.shape)
            new = torch.where(torch.isfinite(new), new, prev)
            data = to_numpy(new)
            assert data.dtype == old.data.dtype and data.shape == old.data.shape
            streams[name] = Stream(data, old.role, old.alphabet)
        enc = Encoded(self.enc.format, self.enc.tensors, streams, dict(self.enc.meta), None, self.enc.nominal_bits)
        enc.recon = self.fmt.decode(enc)
        return enc


def decays(tu: TrainableUnit, name: str) -> bool:
    """Whether a stream takes weight decay: codebooks do; scales (decay towards 0 is no prior for them) do not."""
    return tu.enc.streams[name].role != "scales"


def unit_block(enc: Encoded) -> int | None:
    """The block index every tensor of the unit lies in, or None (outside the blocks, or several)."""
    found = {m.group(1) if (m := BLOCK.match(s.name)) else None for s in enc.tensors}
    if len(found) != 1 or None in found:
        return None
    return int(found.pop())


def _load(model: GPT, units: list[Encoded]) -> None:
    """Put the units' reconstructions into the model (each upcast to the parameter's dtype)."""
    state = model.state_dict()
    with torch.no_grad():
        for u in units:
            for name, t in (u.recon or {}).items():
                state[name].copy_(t.to(state[name].dtype))


@torch.no_grad()
def _apply(block: nn.Module, x: Tensor, x0: Tensor, batch: int) -> Tensor:
    """block(x, x0) in batches of windows."""
    return torch.cat([block(x[s : s + batch], x0[s : s + batch]) for s in range(0, x.shape[0], batch)])


@torch.no_grad()
def _mse(block: nn.Module, x: Tensor, x0: Tensor, target: Tensor, batch: int) -> float:
    total = sum(
        float((block(x[s : s + batch], x0[s : s + batch]) - target[s : s + batch]).double().pow(2).sum())
        for s in range(0, x.shape[0], batch)
    )
    return total / target.numel()


@torch.no_grad()
def model_loss(model: GPT, ids: Tensor, targets: Tensor, batch: int) -> float:
    """Mean next-token NLL (nats) of the model on the windows."""
    total = sum(
        float(model.token_nll(ids[s : s + batch], targets[s : s + batch]).double().sum())
        for s in range(0, ids.shape[0], batch)
    )
    return total / targets.numel()


def finetune(
    units: list[Encoded],
    model: GPT,
    windows: np.ndarray,
    cfg: FinetuneConfig,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[Encoded], dict[str, Any]]:
    """Calibrate the units block by block against the full-precision `model` on `windows` (n, seq_len+1).

    Returns the units in the same order (untouched ones are the same objects) and a JSON-able
    report: per block the output MSE before / after, and the quantized model's loss on the
    windows before / after (and the full-precision model's).
    """
    if cfg.steps <= 0:
        return list(units), {"steps": 0}
    if len(model.loops):
        raise ConfigError(
            "finetune: block calibration needs one block per layer; this model shares blocks across layers"
        )
    t_start = time.perf_counter()
    dev = torch.device(device)
    fp = copy.deepcopy(model).to(dev).float().eval().requires_grad_(False)
    q = copy.deepcopy(fp)
    _load(q, units)
    out = list(units)
    ids = torch.from_numpy(np.ascontiguousarray(windows[:, :-1])).long().to(dev)
    targets = torch.from_numpy(np.ascontiguousarray(windows[:, 1:])).long().to(dev)
    n, bs = ids.shape[0], max(1, cfg.batch_size)
    loss_fp = model_loss(fp, ids, targets, bs)
    loss_before = model_loss(q, ids, targets, bs)

    by_block: dict[int, list[int]] = {}
    skipped: list[dict[str, Any]] = []
    formats: dict[int, Format] = {}
    for ui, u in enumerate(units):
        names = [s.name for s in u.tensors]
        block = unit_block(u)
        if block is None:
            if len(names) > 1 or BLOCK.match(names[0]):
                skipped.append({"tensors": names, "why": "shared across blocks"})
            elif u.format != "passthrough":
                skipped.append({"tensors": names, "why": "outside the blocks"})
            continue
        fmt = get_format(u.format, **u.meta.get("params", {}))
        if type(fmt).trainable is Format.trainable:
            continue
        formats[ui] = fmt
        by_block.setdefault(block, []).append(ui)

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x0 = rms_norm(q.tok_emb(ids))
    x, skips = x0, []
    n_enc = q.num_encoder_layers
    rows = []
    bar = tqdm(total=cfg.steps * len(by_block), desc="finetune", unit="step", disable=not progress, leave=False)
    for i, block in enumerate(q.blocks):
        if i >= n_enc and skips:
            x = x + q.skip_weights[i - n_enc].to(x.dtype)[None, None] * skips.pop()
        row: dict[str, Any] = {"block": i}
        if i in by_block:
            t0 = time.perf_counter()
            target = _apply(fp.blocks[i], x, x0, bs)
            before = _mse(block, x, x0, target, bs)
            tus = []
            for ui in by_block[i]:
                hook = formats[ui].trainable(units[ui], dev)
                if hook is not None:
                    tus.append((ui, TrainableUnit(formats[ui], units[ui], hook, dev, cfg.train_scales)))
            params = [p for _, tu in tus for p in tu.trained()]
            row.update(units=len(tus), params=sum(p.numel() for p in params), mse_before=before)
            if params:
                prefix = f"blocks.{i}."
                decay = [p for _, tu in tus for k, p in tu.params.items() if p.requires_grad and decays(tu, k)]
                plain = [p for _, tu in tus for k, p in tu.params.items() if p.requires_grad and not decays(tu, k)]
                groups = [{"params": decay}, {"params": plain, "weight_decay": 0.0}]
                opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)
                order = torch.empty(0, dtype=torch.long)
                losses = []
                for _ in range(cfg.steps):
                    if order.numel() < min(bs, n):
                        order = torch.cat([order, torch.randperm(n, generator=gen)])
                    idx, order = order[: min(bs, n)].to(dev), order[min(bs, n) :]
                    w = {k.removeprefix(prefix): v for _, tu in tus for k, v in tu.weights().items()}
                    y = torch.func.functional_call(block, w, (x[idx], x0[idx]))
                    loss = F.mse_loss(y, target[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(loss.detach())
                    bar.update()
                new = {ui: tu.commit() for ui, tu in tus}
                _load(q, list(new.values()))
                after = _mse(block, x, x0, target, bs)
                kept = after < before and math.isfinite(after)
                if kept:
                    for ui, enc in new.items():
                        out[ui] = enc
                else:
                    _load(q, [units[ui] for ui in new])
                    after = _mse(block, x, x0, target, bs)
                row.update(mse_after=after, kept=kept, first_loss=float(losses[0]), last_loss=float(losses[-1]))
            row["seconds"] = round(time.perf_counter() - t0, 3)
            bar.set_postfix(block=i, mse=f"{row['mse_before']:.3g}->{row.get('mse_after', before):.3g}")
        x = _apply(block, x, x0, bs)
        if i < n_enc:
            skips.append(x)
        rows.append(row)
    bar.close()
    loss_after = model_loss(q, ids, targets, bs)
    report = {
        "steps": cfg.steps,
        "windows": n,
        "blocks": rows,
        "skipped": skipped,
        "loss_fp": loss_fp,
        "loss_before": loss_before,
        "loss_after": loss_after,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    return out, report
