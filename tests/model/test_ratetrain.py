"""Storage-native finetuning: the soft rate estimate, its effect on real artifact bytes, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bytegolf.artifact import file as artifact
from bytegolf.artifact import layout
from bytegolf.data import shards
from bytegolf.formats import EncodeContext
from bytegolf.model import checkpoint
from bytegolf.model.ratetrain import RateConfig, hard_entropy_bits, rate_finetune, soft_entropy_bits
from bytegolf.quantize import encoder
from bytegolf.quantize.plan import PlanConfig, make_plan

pytestmark = pytest.mark.usefixtures("one_thread")


def test_soft_entropy_is_close_to_the_entropy_of_the_rounded_codes() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.distributions.Laplace(0.0, 1.0).sample((64, 4096))
    hard = hard_entropy_bits(w, 6, 12.85)
    from bytegolf.model.ratetrain import sdclip_scale

    soft = float(soft_entropy_bits((w / sdclip_scale(w, 6, 12.85)).clamp(-31, 31), 6))
    assert soft == pytest.approx(hard, rel=0.06)  # the kernel smooths the histogram a little
    u = torch.randn(1000, generator=g, requires_grad=True)
    soft_entropy_bits(u, 4).backward()
    assert u.grad is not None and bool(torch.isfinite(u.grad).all()) and float(u.grad.abs().sum()) > 0


def _model(bundle: Path):
    return checkpoint.build_model(checkpoint.load_state_dict(bundle / "model.safetensors"), None)


def _artifact_bytes(state: dict[str, torch.Tensor], tmp: Path) -> int:
    plan = make_plan(state, PlanConfig(passthrough_max_numel=1024), "scalar", {"bits": 6, "clip_k": 12.85})
    units = encoder.encode_state(state, plan, EncodeContext(), progress=False)
    written = artifact.write(tmp, units, "ans", {}, layout.LayoutConfig())
    assert tmp.stat().st_size == written.final_bytes
    return written.final_bytes


def test_raising_lambda_lowers_the_coded_bytes_of_the_exported_artifact(tiny_bundle: Path, tmp_path: Path) -> None:
    tokens = shards.read_shards(sorted(tiny_bundle.glob("train_*.bin")))
    sizes = {}
    for lam in (0.0, 0.5):
        cfg = RateConfig(lam=lam, steps=30, lr=3e-3, seq_len=64, batch_seqs=4, min_numel=1024, save_every=100)
        out = tmp_path / f"lam{lam}"
        stats = rate_finetune(_model(tiny_bundle), tokens, cfg, out)
        assert stats["steps"] == 30 and (out / "model.safetensors").is_file()
        state = checkpoint.load_state_dict(out / "model.safetensors")
        sizes[lam] = _artifact_bytes(state, tmp_path / f"lam{lam}.bgz")  # through the file, as exported
    assert sizes[0.5] < 0.97 * sizes[0.0], sizes


def test_a_rate_training_run_resumes_to_the_same_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    tokens = shards.read_shards(sorted(tiny_bundle.glob("train_*.bin")))
    base = dict(lam=0.2, lr=1e-3, seq_len=64, batch_seqs=2, min_numel=1024, save_every=2)
    straight = tmp_path / "straight"
    rate_finetune(_model(tiny_bundle), tokens, RateConfig(steps=4, **base), straight)
    split = tmp_path / "split"
    rate_finetune(_model(tiny_bundle), tokens, RateConfig(steps=2, **base), split)
    stats = rate_finetune(_model(tiny_bundle), tokens, RateConfig(steps=4, **base), split)  # resumes at step 2
    assert stats["steps"] == 4 and [h["step"] for h in stats["history"]] == [1, 2, 4]
    a = checkpoint.load_state_dict(straight / "model.safetensors")
    b = checkpoint.load_state_dict(split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_rate_settings_are_one_line_errors(tiny_bundle: Path, tmp_path: Path) -> None:
    from bytegolf.errors import ConfigError

    tokens = np.zeros(10, dtype=np.uint16)
    with pytest.raises(ConfigError, match="no matrix has more than min_numel"):
        rate_finetune(_model(tiny_bundle), tokens, RateConfig(min_numel=10**9), tmp_path / "a")
    with pytest.raises(ConfigError, match="train tokens, a batch needs"):
        rate_finetune(_model(tiny_bundle), tokens, RateConfig(min_numel=1024, seq_len=64), tmp_path / "b")
    with pytest.raises(ConfigError, match="lam >= 0"):
        rate_finetune(_model(tiny_bundle), tokens, RateConfig(lam=-1), tmp_path / "c")


def test_bytegolf_train_with_rate_init_finetunes_a_checkpoint(tiny_bundle: Path, tmp_path: Path) -> None:
    from tests.integration.test_run import bytegolf

    args = [f"data.tokenizer={tiny_bundle}/tokenizer.model", f"data.train={tiny_bundle}/train_*.bin"]
    args += [f"data.val={tiny_bundle}/val_*.bin", f"rate.init={tiny_bundle}/model.safetensors", "rate.lam=0.5"]
    args += ["rate.steps=3", "rate.seq_len=64", "rate.batch_seqs=2", "rate.min_numel=1024", f"out={tmp_path / 'o'}"]
    proc = bytegolf("train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rate-finetuned" in proc.stdout and "3 steps" in proc.stdout
    state = checkpoint.load_state_dict(tmp_path / "o" / "model.safetensors")
    before = checkpoint.load_state_dict(tiny_bundle / "model.safetensors")
    fc = "blocks.0.mlp.fc.weight"
    assert set(state) == set(before) and not torch.equal(state[fc], before[fc])
    # progress and logging: the settings and curve in the output dir, the config and log in the run dir
    stats = json.loads((tmp_path / "o" / "rate_train.json").read_text())
    assert stats["steps"] == 3 and [h["step"] for h in stats["history"]] == [1, 3]
    assert (tmp_path / "o" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file() and (tmp_path / "run" / "train.log").is_file()
