"""Training the baseline model (Muon on block matrices, Adam elsewhere) and writing a model bundle."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bytegolf.data import bundle as data
from bytegolf.data import shards, tokenizer
from bytegolf.measure.evaluate import autocast, evaluate, unigram_bpb
from bytegolf.model import checkpoint
from bytegolf.model.curve import training_curve
from bytegolf.model.gpt import GPT, ModelConfig, param_groups
from bytegolf.model.muon import Muon

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Recipe knobs; `steps` > 0 fixes the run length, otherwise `minutes` of wall clock do."""

    steps: int = 0
    minutes: float = 15.0
    seq_len: int = 1024
    batch_seqs: int = 8
    seed: int = 1337
    matrix_lr: float = 0.04
    embed_lr: float = 0.05
    scalar_lr: float = 0.04
    muon_momentum: float = 0.95
    muon_momentum_start: float = 0.85
    muon_momentum_warmup_steps: int = 300
    warmup_steps: int = 20
    warmdown_frac: float = 0.3
    precision: str = "bf16"
    eval_every: int = 200
    eval_windows: int = 16
    log_every: int = 20
    calib_tokens: int = 262_144
    store_dtype: str = "fp16"


def _lr_scale(progress: float, step: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
    down = 1.0 if progress < 1 - cfg.warmdown_frac else max(0.0, (1 - progress) / cfg.warmdown_frac)
    return warm * down


def train(cfg: TrainConfig, files: data.DataFiles, out_dir: Path, model_cfg: ModelConfig, device: str = "cpu") -> dict:
    """Train from scratch on the files' train shards; write the bundle into out_dir; return its stats."""
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    sp = tokenizer.load_tokenizer(files.tokenizer)
    tables = tokenizer.byte_tables(sp, model_cfg.vocab_size)
    train_tokens = shards.read_shards(files.train)
    val_windows = data.windows(shards.read_shards(files.val), cfg.seq_len, cfg.eval_windows)
    model = GPT(model_cfg).to(dev)
    model.tok_emb.to(torch.bfloat16)  # as Parameter Golf trains it
    emb, mats, ctrl = param_groups(model)
    adam = dict(betas=(0.9, 0.95), eps=1e-8)
    opts = [
        torch.optim.Adam([{"params": emb, "lr": cfg.embed_lr, "base_lr": cfg.embed_lr}], **adam),
        Muon([{"params": mats, "lr": cfg.matrix_lr, "base_lr": cfg.matrix_lr}], lr=cfg.matrix_lr),
        torch.optim.Adam([{"params": ctrl, "lr": cfg.scalar_lr, "base_lr": cfg.scalar_lr}], **adam),
    ]
    span = cfg.batch_seqs * cfg.seq_len + 1
    pos, step, seen = 0, 0, 0
    budget_s = cfg.minutes * 60
    t0 = time.perf_counter()
    history, losses = [], []
    while True:
        elapsed = time.perf_counter() - t0
        progress = step / cfg.steps if cfg.steps > 0 else elapsed / budget_s
        if progress >= 1:
            break
        if pos + span > train_tokens.size:
            pos = 0
        chunk = torch.from_numpy(train_tokens[pos : pos + span].astype(np.int64)).to(dev)
        pos += span - 1
        x = chunk[:-1].view(cfg.batch_seqs, cfg.seq_len)
        y = chunk[1:].view(cfg.batch_seqs, cfg.seq_len)
        model.train()
        with autocast(dev, cfg.precision):
            loss = model(x, y)
        loss.backward()
        frac = min(step / max(cfg.muon_momentum_warmup_steps, 1), 1.0)
        opts[1].param_groups[0]["momentum"] = (1 - frac) * cfg.muon_momentum_start + frac * cfg.muon_momentum
        scale = _lr_scale(progress, step, cfg)
        for opt in opts:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * scale
            opt.step()
            opt.zero_grad(set_to_none=True)
        step += 1
        seen += x.numel()
        if step % cfg.log_every == 0 or step == 1:
            el = time.perf_counter() - t0
            losses.append({"step": step, "loss": loss.item()})
            log.info(
                "step %d loss %.4f lr_scale %.3f tokens %d (%.0f tok/s) %.1f min",
                step,
                loss.item(),
                scale,
                seen,
                seen / el,
                el / 60,
            )
        if cfg.eval_every > 0 and step % cfg.eval_every == 0:
            r = evaluate(model, val_windows, tables, dev, cfg.precision, progress=False)
            history.append({"step": step, "val_loss": r.loss, "val_bpb": r.bpb})
            log.info("step %d val_loss %.4f val_bpb %.4f", step, r.loss, r.bpb)
    seconds = time.perf_counter() - t0
    stats = _write_bundle(
        model, cfg, files, out_dir, steps=step, tokens=seen, seconds=seconds, history=history, device=dev
    )
    title = f"train: {model_cfg.num_layers} layers" + (
        f" over {model_cfg.unique_blocks} blocks" if model_cfg.unique_blocks else ""
    )
    training_curve(losses + history, out_dir / "curve.png", title)
    return stats


def _write_bundle(
    model: GPT,
    cfg: TrainConfig,
    files: data.DataFiles,
    out: Path,
    *,
    steps: int,
    tokens: int,
    seconds: float,
    history: list,
    device: torch.device,
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    store = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.store_dtype]
    sd = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        sd[name] = t.to(store) if t.ndim == 2 and t.numel() > 65_536 else t.float()
    checkpoint.save_state_dict(sd, out / "model.safetensors")
    if files.tokenizer.resolve() != (out / "tokenizer.model").resolve():
        shutil.copyfile(files.tokenizer, out / "tokenizer.model")
        shards.write_shard(out / "val_000000.bin", shards.read_shards(files.val))
        shards.write_shard(out / "train_000000.bin", shards.read_shards(files.train)[: cfg.calib_tokens])
    stored = checkpoint.build_model(sd, model.cfg)
    sp = tokenizer.load_tokenizer(out / "tokenizer.model")
    val = data.windows(shards.read_shards([out / "val_000000.bin"]), cfg.seq_len)
    tables = tokenizer.byte_tables(sp, model.cfg.vocab_size)
    r = evaluate(stored, val, tables, device, "fp32")
    unigram = unigram_bpb(shards.read_shards(files.train), val[:, 1:], r.bytes, model.cfg.vocab_size)
    stats = {
        "train": asdict(cfg),
        "model": asdict(model.cfg),
        "steps": steps,
        "tokens_seen": tokens,
        "train_seconds": round(seconds, 1),
        "device": str(device),
        "torch": torch.__version__,
        "val_windows": int(val.shape[0]),
        "val_loss": r.loss,
        "val_bpb": r.bpb,
        "unigram_bpb": unigram,
        "history": history,
    }
    (out / "model.json").write_text(json.dumps(stats, indent=2))
    log.info(
        "bundle written to %s: val_loss %.4f val_bpb %.4f (%d steps, %d tokens, %.1f min)",
        out,
        r.loss,
        r.bpb,
        steps,
        tokens,
        seconds / 60,
    )
    return stats
