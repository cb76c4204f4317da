"""The baseline model: Parameter Golf's shapes, key names, causality, blocked CPU attention; checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bytegolf.errors import DataError
from bytegolf.model import checkpoint
from bytegolf.model import gpt as M
from bytegolf.model.gpt import GPT, ModelConfig
from tests.conftest import TINY


def test_baseline_shape_matches_parameter_golf() -> None:
    model = GPT(ModelConfig())
    sd = model.state_dict()
    assert sum(t.numel() for t in sd.values()) == 17_059_912
    assert tuple(sd["skip_weights"].shape) == (4, 512)
    assert tuple(sd["blocks.3.attn.c_k.weight"].shape) == (256, 512)
    assert tuple(sd["blocks.8.mlp.fc.weight"].shape) == (1024, 512)
    assert {
        "tok_emb.weight",
        "blocks.0.attn_scale",
        "blocks.0.mlp_scale",
        "blocks.0.resid_mix",
        "blocks.0.attn.q_gain",
    } <= set(sd)
    assert float(sd["blocks.0.attn.proj.weight"].abs().sum()) == 0.0  # zero-initialised output projections


def test_model_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.1)
    ids = torch.randint(0, TINY.vocab_size, (1, 16))
    ids2 = ids.clone()
    ids2[0, 10:] = (ids2[0, 10:] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = model.logits(ids), model.logits(ids2)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    assert float(a.abs().max()) <= 30.0  # softcap


@pytest.mark.parametrize("unique_blocks", [0, 2])
def test_inference_path_matches_the_training_path(unique_blocks: int) -> None:
    """The fused in-place forward that inference runs gives the training forward's logits (fp32), and
    leaves its inputs and the skip activations untouched."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY.__dict__, "num_layers": 4, "unique_blocks": unique_blocks})
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.1)  # controls and gains away from 1 and 0 too
    ids = torch.randint(0, cfg.vocab_size, (3, 24))
    trained = model.logits(ids).detach()
    with torch.inference_mode():
        fused = model.logits(ids)
        again = model.logits(ids)
    torch.testing.assert_close(fused, trained, rtol=1e-5, atol=1e-5)
    assert torch.equal(fused, again)
    assert not torch.equal(fused, torch.zeros_like(fused))


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention in float64 from its definition, kv heads repeated for grouped queries."""
    q, k, v = (x.double() for x in (q, k, v))
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = q @ k.transpose(-1, -2) / q.size(-1) ** 0.5
    t = q.size(2)
    s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize(("t", "heads", "kv_heads"), [(256, 8, 4), (320, 4, 4), (200, 4, 2), (64, 4, 2)])
def test_blocked_cpu_attention_is_causal_attention(t: int, heads: int, kv_heads: int) -> None:
    """Inference attention on the CPU (blocks of 64 queries merged by log-sum-exp when t is a multiple of
    64 above it, torch's kernel otherwise) equals causal attention computed from its definition, for the
    (batch, seq, heads, dim) layout the model passes (transposed views), grouped-query or not."""
    torch.manual_seed(0)
    q = torch.randn(2, t, heads, 16).transpose(1, 2)
    k, v = (torch.randn(2, t, kv_heads, 16).transpose(1, 2) for _ in range(2))
    want = _naive_attention(q, k, v)
    with torch.inference_mode():
        got = M.causal_attention(q, k, v)
        half = M.causal_attention(*(x.bfloat16() for x in (q, k, v)))
    assert got.shape == q.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    torch.testing.assert_close(half.double(), want, rtol=0, atol=3e-2)  # bf16 inputs: 8-bit mantissas
    assert float((half.double() - want).abs().mean()) < 4e-3
    with torch.inference_mode():  # the other half of the keys changes the late queries, not the early ones
        moved = M.causal_attention(q, torch.cat((k[:, :, : t // 2], -k[:, :, t // 2 :]), dim=2), v)
    torch.testing.assert_close(moved[:, :, : t // 2], got[:, :, : t // 2], rtol=0, atol=1e-6)
    assert not torch.allclose(moved[:, :, t // 2 :], got[:, :, t // 2 :], atol=1e-3)


def test_checkpoint_roundtrip_infers_shape(tmp_path: Path) -> None:
    model = GPT(TINY)
    checkpoint.save_state_dict(model.state_dict(), tmp_path / "m.safetensors")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    for name in ("m.safetensors", "m.pt"):
        sd = checkpoint.load_state_dict(tmp_path / name)
        rebuilt = checkpoint.build_model(sd)
        assert rebuilt.cfg.num_layers == 2 and rebuilt.cfg.num_kv_heads == 2 and rebuilt.cfg.vocab_size == 512
        for k, v in model.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[k], v)


def test_checkpoint_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="checkpoint not found"):
        checkpoint.load_state_dict(tmp_path / "missing.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read checkpoint"):
        checkpoint.load_state_dict(tmp_path / "junk.pt")
    sd = GPT(TINY).state_dict()
    del sd["blocks.1.mlp_scale"]
    with pytest.raises(DataError, match="missing"):
        checkpoint.build_model(sd)
