"""The bench's FLOP count per token, against the model's own weights and torch's FLOP counter."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bytegolf.data import bundle as data
from bytegolf.data import shards
from bytegolf.formats import EncodeContext
from bytegolf.model import checkpoint
from bytegolf.model.gpt import GPT, ModelConfig
from bytegolf.tools.bench import _codebook_rows, forward_flops_per_token, matmul_gflops
from tests.conftest import TINY


@pytest.mark.parametrize("cfg", [TINY, ModelConfig()])
def test_weight_flops_are_twice_every_linear_weight(cfg: ModelConfig) -> None:
    model = GPT(cfg)
    # every linear's weight, and tok_emb.weight as the tied output head (its lookup costs no FLOPs)
    linear = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and n.endswith(".weight"))
    attention = cfg.num_layers * 2 * cfg.model_dim * (64 + 1)
    assert forward_flops_per_token(cfg, 64) == 2 * linear + attention


def test_default_model_count() -> None:
    # 9 layers × (2·512² + 2·512·256 + 2·512·1024) weights + 1024·512 head; attention 9 · 4·512 · 1025/2
    assert forward_flops_per_token(ModelConfig(), 1024) == 2 * (9 * 1_835_008 + 524_288) + 9 * 2 * 512 * 1025


def test_weight_flops_match_torch_flop_counter(one_thread) -> None:
    """torch's counter sees the linears' matmuls (not the CPU flash-attention kernel): they are the weight part."""
    cfg, t, b = TINY, 32, 2
    model = GPT(cfg).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.logits(torch.randint(0, cfg.vocab_size, (b, t)))
    matmuls = sum(v for k, v in fc.get_flop_counts()["Global"].items() if str(k) in ("aten.mm", "aten.addmm"))
    attention = cfg.num_layers * 2 * cfg.model_dim * (t + 1)
    assert matmuls == b * t * (forward_flops_per_token(cfg, t) - attention)


def test_matmul_gflops_is_a_positive_rate_below_its_peak(one_thread) -> None:
    sustained, peak = matmul_gflops(64, torch.float32, seconds=0.05)
    assert 0 < sustained <= peak and math.isfinite(peak)


def test_codebook_rows_time_an_additive_probe_and_a_cluscomp_landing(tiny_bundle, one_thread) -> None:
    """--codebooks: one row each, with its bytes, and the clustered row with the compare's calibration."""
    state = checkpoint.load_state_dict(tiny_bundle / "model.safetensors")
    windows = data.windows(shards.read_shards(sorted(tiny_bundle.glob("train_*.bin"))), 32, 4)
    rows = _codebook_rows(state, checkpoint.build_model(state), EncodeContext(), windows)
    assert [r[0] for r in rows] == ["additive probe, 1.5 codebooks", "clustered landing, K 128 + ClusComp"]
    assert all(int(r[1].removesuffix(" B").replace(",", "")) > 0 and r[2] > 0 for r in rows)
    assert "calibration" in rows[1][3] and "(50 steps of 1)" in rows[1][3] and "calibration" not in rows[0][3]
