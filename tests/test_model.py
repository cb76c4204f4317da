"""The baseline model: Parameter Golf's shapes, key names, causality; checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bytegolf import checkpoint
from bytegolf.errors import DataError
from bytegolf.model import GPT, ModelConfig
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
