"""Parameter Golf's baseline GPT (same architecture and state-dict names)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONTROL_PATTERNS = (
    "attn_scale",
    "attn_scales",
    "mlp_scale",
    "mlp_scales",
    "resid_mix",
    "resid_mixes",
    "q_gain",
    "skip_weight",
    "skip_weights",
)


def is_control(name: str, patterns: tuple[str, ...] | list[str] = CONTROL_PATTERNS) -> bool:
    """Is this a control tensor (Parameter Golf's rule: its name contains one of the patterns)?"""
    return any(p in name for p in patterns)


@dataclass
class ModelConfig:
    """Shape of the baseline model; the defaults are Parameter Golf's."""

    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: int = 2
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    qk_gain_init: float = 1.5
    tied_embed_init_std: float = 0.005
    unique_blocks: int = 0  # shared depth: > 0 runs num_layers layers over this many blocks, looped


def _add_controls(module: nn.Module, dim: int) -> None:
    """A layer's own control vectors: residual mix, attention and MLP output scales."""
    module.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
    module.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
    module.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())


class LoopControls(nn.Module):
    """In a shared-depth model, the per-loop adapter of a layer that runs a shared block: its controls."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        _add_controls(self, dim)


def rms_norm(x: Tensor, gain: Tensor | None = None) -> Tensor:
    """RMS norm over the last dimension, times `gain` (broadcast against x's leading dimensions) if given."""
    if torch.is_grad_enabled():
        y = F.rms_norm(x, (x.size(-1),))
        return y if gain is None else y * gain
    # inference: one reduction and one pass over x (F.rms_norm on the CPU makes four), in fp32 with
    # F.rms_norm's epsilon, the gain folded into the per-row factor
    ms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_().div_(x.size(-1))
    inv = ms.add_(torch.finfo(torch.float32).eps).rsqrt_()
    return x * (inv if gain is None else inv * gain).to(x.dtype)


class CastedLinear(nn.Linear):
    """Bias-free linear whose weight is cast to the activation dtype at matmul time."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    """Rotary tables for one head dimension, cached per sequence length."""

    def __init__(self, dim: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and sin of shape (seq_len, 1, dim / 2), against activations laid out (batch, seq, heads, dim)."""
        stale = self._cache is None or self._cache[0] != seq_len or self._cache[1] != device
        if stale or (torch.is_grad_enabled() and self._cache[2].is_inference()):  # made under inference_mode
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            self._cache = (seq_len, device, freqs.cos()[:, None], freqs.sin()[:, None])
        return self._cache[2].to(dtype), self._cache[3].to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x's two halves (x1, x2) rotated by the angles of cos and sin: (x1·cos + x2·sin, x2·cos − x1·sin)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    if torch.is_grad_enabled():
        return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)  # inference: two passes over x, no concat
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=-1)
    return out


ATTN_BLOCK = 64  # queries per block of the CPU inference attention
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)  # (out, logsumexp)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax attention of q (batch, heads, seq, dim) over k and v (batch, kv_heads, seq, dim),
    grouped-query when kv_heads < heads; shape of q.

    On the CPU in eager inference, with seq a multiple of ATTN_BLOCK, the queries go in blocks of ATTN_BLOCK:
    every block attends to its own keys causally (one flash call for all blocks) and to the keys before
    it in full (one call per block), and the two partial results are merged by their log-sum-exps. So
    no key above the diagonal is computed; one causal call over the whole window (torch's CPU flash
    kernel, tiles of 256 queries by up to 512 keys) computes a quarter more pairs than causal needs."""
    b, h, t, d = q.shape
    hk, blk = k.size(1), ATTN_BLOCK
    plain = torch.is_grad_enabled() or q.device.type != "cpu" or torch.compiler.is_compiling()
    if plain or t <= blk or t % blk or _FLASH_CPU is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hk != h)
    n = t // blk

    def blocks(x: Tensor, heads: int) -> Tensor:  # (b, heads, t, d) -> (b·n, heads, blk, d), a view if (b, t, ...)
        return x.transpose(1, 2).reshape(b * n, blk, heads, d).transpose(1, 2)

    own, own_lse = _FLASH_CPU(blocks(q, h), blocks(k, hk), blocks(v, hk), is_causal=True)
    out = own.transpose(1, 2).reshape(b, t, h, d).transpose(1, 2)
    own_lse = own_lse.view(b, n, h, blk).transpose(1, 2).reshape(b, h, t)[:, :, blk:]
    parts = [_FLASH_CPU(q[:, :, a : a + blk], k[:, :, :a], v[:, :, :a]) for a in range(blk, t, blk)]
    before = torch.cat([o for o, _ in parts], dim=2)  # each block's attention over the keys before it
    share = torch.sigmoid(torch.cat([lse for _, lse in parts], dim=2) - own_lse).unsqueeze(-1)  # their mass
    if q.dtype == torch.float32:
        out[:, :, blk:].lerp_(before, share)
    else:  # merged in fp32, rounded once
        out[:, :, blk:] = torch.lerp(out[:, :, blk:].float(), before.float(), share)
    return out


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.model_dim
        if dim % cfg.num_heads or cfg.num_heads % cfg.num_kv_heads:
            raise ValueError("model_dim must divide by num_heads and num_heads by num_kv_heads")
        self.num_heads, self.num_kv_heads = cfg.num_heads, cfg.num_kv_heads
        self.head_dim = dim // cfg.num_heads
        kv_dim = cfg.num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, cfg.rope_base)

    def forward(self, x: Tensor) -> Tensor:
        b, t, dim = x.shape
        q = self.c_q(x).view(b, t, self.num_heads, self.head_dim)  # (batch, seq, heads, dim) throughout
        k = self.c_k(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.c_v(x).view(b, t, self.num_kv_heads, self.head_dim)
        q, k = rms_norm(q, self.q_gain.to(q.dtype)[:, None]), rms_norm(k)  # q_gain commutes with rotary
        cos, sin = self.rotary(t, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(y.transpose(1, 2).reshape(b, t, dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        hidden = cfg.mlp_mult * cfg.model_dim
        self.fc = CastedLinear(cfg.model_dim, hidden, bias=False)
        self.proj = CastedLinear(hidden, cfg.model_dim, bias=False)
        self.proj._zero_init = True

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if torch.is_grad_enabled():
            return self.proj(torch.relu(h).square())
        return self.proj(h.relu_().square_())  # inference: in place, no new activation buffers


class Block(nn.Module):
    """Attention and MLP; with controls, also its own control vectors (else a layer passes them in)."""

    def __init__(self, cfg: ModelConfig, controls: bool = True) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        if controls:
            _add_controls(self, cfg.model_dim)

    def forward(self, x: Tensor, x0: Tensor, ctrl: nn.Module | None = None) -> Tensor:
        c = self if ctrl is None else ctrl
        mix = c.resid_mix.to(x.dtype)
        a, m = c.attn_scale.to(x.dtype), c.mlp_scale.to(x.dtype)
        if torch.is_grad_enabled():
            x = mix[0][None, None] * x + mix[1][None, None] * x0
            x = x + a[None, None] * self.attn(rms_norm(x))
            return x + m[None, None] * self.mlp(rms_norm(x))
        x = (x * mix[0]).addcmul_(x0, mix[1])  # inference: fused, fewer temporaries
        x = torch.addcmul(x, self.attn(rms_norm(x)), a)
        return torch.addcmul(x, self.mlp(rms_norm(x)), m)


class GPT(nn.Module):
    """Baseline GPT: U-Net skips, tied embeddings, softcapped logits. With cfg.unique_blocks = U > 0, a
    shared-depth model: layer i runs block i mod U (the stack of U blocks looped num_layers / U times)
    with its own control vectors `loops.<i>.*` (per-loop adapters)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        n_skip = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(n_skip, cfg.model_dim, dtype=torch.float32))
        shared = cfg.unique_blocks
        if shared and (shared < 0 or cfg.num_layers % shared):
            raise ValueError(f"unique_blocks={shared} must divide num_layers={cfg.num_layers}")
        self.blocks = nn.ModuleList(Block(cfg, controls=not shared) for _ in range(shared or cfg.num_layers))
        self.loops = nn.ModuleList(LoopControls(cfg.model_dim) for _ in range(cfg.num_layers if shared else 0))
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=cfg.tied_embed_init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear) and getattr(m, "_zero_init", False):
                nn.init.zeros_(m.weight)

    def hidden(self, ids: Tensor) -> Tensor:
        """Final normed hidden states, shape (batch, seq, dim)."""
        x = rms_norm(self.tok_emb(ids))
        x0 = x
        skips: list[Tensor] = []
        for i in range(self.num_encoder_layers):
            x = self.layer(i, x, x0)
            skips.append(x)
        for i in range(self.num_decoder_layers):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype)[None, None] * skips.pop()
            x = self.layer(self.num_encoder_layers + i, x, x0)
        return rms_norm(x)

    def layer(self, i: int, x: Tensor, x0: Tensor) -> Tensor:
        """Layer i of num_layers: its block (shared: block i mod U, with layer i's controls)."""
        if not self.loops:
            return self.blocks[i](x, x0)
        return self.blocks[i % len(self.blocks)](x, x0, self.loops[i])

    def logits(self, ids: Tensor) -> Tensor:
        """Softcapped logits, shape (batch, seq, vocab)."""
        h = self.hidden(ids)
        proj = F.linear(h, self.tok_emb.weight.to(h.dtype))
        cap = self.cfg.logit_softcap
        if torch.is_grad_enabled():
            return cap * torch.tanh(proj / cap)
        return proj.div_(cap).tanh_().mul_(cap)

    def token_nll(self, ids: Tensor, targets: Tensor) -> Tensor:
        """Per-token negative log-likelihood in nats (fp32), shape (batch, seq)."""
        logits = self.logits(ids).float()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        return nll.view_as(targets)

    def forward(self, ids: Tensor, targets: Tensor) -> Tensor:
        return self.token_nll(ids, targets).mean()


def param_groups(model: GPT) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(embedding, block matrices, control vectors) as Parameter Golf optimizes them."""
    matrices, controls = [], []
    for name, p in model.blocks.named_parameters():
        if p.ndim == 2 and not is_control(name):
            matrices.append(p)
        else:
            controls.append(p)
    controls += [*model.loops.parameters(), model.skip_weights]
    return [model.tok_emb.weight], matrices, controls
