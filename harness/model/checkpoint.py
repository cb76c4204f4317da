"""Loading and saving model weights (safetensors, or a Parameter Golf torch checkpoint)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from bytegolf.errors import DataError
from bytegolf.model.gpt import GPT, ModelConfig


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a .safetensors file, or a torch .pt/.pth state dict (weights only, no code)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot read checkpoint ({exc})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise DataError(f"{path}: expected a flat state dict of tensors")
    return sd


def save_state_dict(sd: dict[str, Tensor], path: str | Path) -> None:
    """Write safetensors through a unique temporary name and a rename (parallel sweep jobs share caches)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp))
    os.replace(tmp, path)


def infer_config(sd: dict[str, Tensor], base: ModelConfig | None = None) -> ModelConfig:
    """Model shape read off the state dict; non-shape settings come from `base`."""
    base = base or ModelConfig()
    try:
        vocab, dim = sd["tok_emb.weight"].shape
        blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        loops = [int(k.split(".")[1]) for k in sd if k.startswith("loops.")]
        layers = 1 + max(loops) if loops else blocks
        heads = sd["blocks.0.attn.q_gain"].numel()
        kv_heads = sd["blocks.0.attn.c_k.weight"].shape[0] // (dim // heads)
        mlp_mult = sd["blocks.0.mlp.fc.weight"].shape[0] // dim
    except (KeyError, ValueError) as exc:
        raise DataError(f"state dict is not a Parameter Golf GPT (missing {exc})") from None
    return ModelConfig(
        vocab_size=vocab,
        num_layers=layers,
        model_dim=dim,
        num_heads=heads,
        num_kv_heads=kv_heads,
        mlp_mult=mlp_mult,
        rope_base=base.rope_base,
        logit_softcap=base.logit_softcap,
        qk_gain_init=base.qk_gain_init,
        tied_embed_init_std=base.tied_embed_init_std,
        unique_blocks=blocks if loops else 0,
    )


def build_model(sd: dict[str, Tensor], base: ModelConfig | None = None) -> GPT:
    """An fp32 GPT holding exactly the given weights (each upcast losslessly)."""
    model = GPT(infer_config(sd, base))
    expected = set(model.state_dict())
    missing, extra = expected - set(sd), set(sd) - expected
    if missing or extra:
        raise DataError(f"state dict keys differ: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if p.shape != sd[name].shape:
                raise DataError(f"{name}: shape {tuple(sd[name].shape)} where the model needs {tuple(p.shape)}")
            p.copy_(sd[name].to(p.dtype))
    return model


def unshare(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A shared-depth state dict written out as the unshared GPT it computes: layer i gets a copy of
    block i mod U's matrices and layer i's own controls (`loops.<i>.*`). Same logits, U/L the bytes'
    repetition made implicit; an unshared state dict comes back unchanged."""
    loops = sorted({int(k.split(".")[1]) for k in sd if k.startswith("loops.")})
    if not loops:
        return dict(sd)
    blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    out = {k: v for k, v in sd.items() if not k.startswith(("blocks.", "loops."))}
    for i in loops:
        head = f"blocks.{i % blocks}."
        out.update({f"blocks.{i}.{k[len(head) :]}": v.clone() for k, v in sd.items() if k.startswith(head)})
        own = f"loops.{i}."
        out.update({f"blocks.{i}.{k[len(own) :]}": v.clone() for k, v in sd.items() if k.startswith(own)})
    return out
