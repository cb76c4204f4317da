"""Shared-depth models: a few blocks looped over the layers with per-loop control vectors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from bytegolf.errors import ConfigError
from bytegolf.model import checkpoint
from bytegolf.model.gpt import GPT, param_groups
from bytegolf.quantize.block_calibration import FinetuneConfig, finetune
from tests.conftest import TINY
from tests.integration.test_run import TINY_ARGS, bytegolf

SHARED = replace(TINY, num_layers=4, unique_blocks=2)


def _shared_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(SHARED)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # every weight and control away from its init
    return model


def test_a_shared_depth_state_dict_round_trips_through_a_file(tmp_path: Path) -> None:
    model = _shared_model()
    sd = model.state_dict()
    assert {k.split(".")[1] for k in sd if k.startswith("blocks.")} == {"0", "1"}
    assert {k.split(".")[1] for k in sd if k.startswith("loops.")} == {"0", "1", "2", "3"}
    assert not any(k.startswith("blocks.") and k.endswith(("attn_scale", "mlp_scale", "resid_mix")) for k in sd)
    unshared = sum(p.numel() for p in GPT(replace(SHARED, unique_blocks=0)).parameters())
    block = sum(p.numel() for p in model.blocks[0].parameters())
    assert sum(p.numel() for p in model.parameters()) == unshared - 2 * block  # two blocks fewer, same controls
    checkpoint.save_state_dict(sd, tmp_path / "m.safetensors")
    back = checkpoint.build_model(checkpoint.load_state_dict(tmp_path / "m.safetensors"))
    assert back.cfg.unique_blocks == 2 and back.cfg.num_layers == 4
    ids = torch.randint(0, SHARED.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(back.logits(ids), model.eval().logits(ids))
    _, mats, ctrl = param_groups(back)
    assert len(mats) == 2 * 6 and len(ctrl) == 2 + 4 * 3 + 1  # q_gain per block, 3 vectors per loop, skips


def test_unshare_writes_the_unshared_model_with_the_same_logits() -> None:
    model = _shared_model().eval()
    sd = checkpoint.unshare(model.state_dict())
    assert not any(k.startswith("loops.") for k in sd)
    flat = checkpoint.build_model(sd)
    assert flat.cfg.unique_blocks == 0 and flat.cfg.num_layers == 4
    assert torch.equal(sd["blocks.2.mlp.fc.weight"], sd["blocks.0.mlp.fc.weight"])  # layer 2 runs block 0
    assert not torch.equal(sd["blocks.2.resid_mix"], sd["blocks.0.resid_mix"])  # with its own controls
    ids = torch.randint(0, SHARED.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(flat.logits(ids), model.logits(ids))
    plain = checkpoint.unshare(sd)
    assert plain.keys() == sd.keys() and all(torch.equal(plain[k], sd[k]) for k in sd)


def test_the_loops_run_the_shared_blocks_with_their_own_controls() -> None:
    model = _shared_model().eval()
    ids = torch.randint(0, SHARED.vocab_size, (1, 8))
    with torch.no_grad():
        before = model.logits(ids)
        model.loops[3].mlp_scale.mul_(2.0)  # layer 3 runs block 1; only its own control changes
        assert not torch.allclose(model.logits(ids), before)
        model.loops[3].mlp_scale.div_(2.0)
        assert torch.equal(model.logits(ids), before)
    calls = []
    model.blocks[1].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model.logits(ids)
    assert len(calls) == 2  # block 1 serves layers 1 and 3


def test_bytegolf_run_evaluates_a_shared_depth_checkpoint(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    checkpoint.save_state_dict(_shared_model().state_dict(), bundle / "model.safetensors")
    proc = bytegolf(
        "run", f"bundle={bundle}", *TINY_ARGS, "calib.windows=1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "run" / "result.json").read_text())
    names = {t["name"] for t in r["tensors"]}
    assert "blocks.1.mlp.fc.weight" in names and "blocks.2.mlp.fc.weight" not in names and "loops.3.mlp_scale" in names
    assert 0 < r["bpb"] < 20 and r["ref_bpb"] > 0


def test_bytegolf_train_trains_a_shared_depth_model_and_refuses_a_split_that_does_not_divide(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    args = [f"data.tokenizer={tiny_bundle}/tokenizer.model", f"data.train={tiny_bundle}/train_*.bin"]
    args += [f"data.val={tiny_bundle}/val_*.bin", "data.vocab_size=512", "model.model_dim=64", "model.num_heads=4"]
    args += ["model.num_kv_heads=2", "model.num_layers=4", "train.steps=2", "train.seq_len=64", "train.batch_seqs=2"]
    args += ["train.eval_every=0", "train.precision=fp32"]
    proc = bytegolf(
        "train",
        *args,
        "model.unique_blocks=2",
        f"out={tmp_path / 'b'}",
        f"hydra.run.dir={tmp_path / 't'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = checkpoint.build_model(checkpoint.load_state_dict(tmp_path / "b" / "model.safetensors"))
    assert model.cfg.unique_blocks == 2 and len(model.blocks) == 2 and len(model.loops) == 4
    proc = bytegolf(
        "train",
        *args,
        "model.unique_blocks=3",
        f"out={tmp_path / 'c'}",
        f"hydra.run.dir={tmp_path / 'u'}",
        cwd=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "unique_blocks=3 must divide num_layers=4" in out and "Traceback" not in out


def test_block_calibration_of_a_shared_depth_model_is_a_clear_error() -> None:
    windows = np.zeros((2, 9), dtype=np.int64)
    with pytest.raises(ConfigError, match="shares blocks across layers"):
        finetune([], _shared_model(), windows, FinetuneConfig(steps=1), progress=False)
