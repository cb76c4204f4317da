"""Calibration: Gram matrices, and sequential (GPTQ-style) encoding block by block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bytegolf.formats import EncodeContext
from bytegolf.model.gpt import GPT
from bytegolf.model.grams import block_index, gram_matrices
from bytegolf.quantize.encoder import encode_sequential
from bytegolf.quantize.plan import PlanConfig, make_plan
from tests.conftest import TINY


def test_block_index_reads_the_block_number() -> None:
    assert block_index("blocks.3.mlp.fc.weight") == 3
    assert block_index("model.blocks.12.attn.c_q.weight") == 12
    assert block_index("tok_emb.weight") is None and block_index("myblocks.2.x") is None


@pytest.fixture(scope="module")
def tiny_model_and_windows(one_thread) -> tuple[GPT, np.ndarray]:
    torch.manual_seed(0)
    model = GPT(TINY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "tok_emb" not in name:
                p.normal_(0, 0.05)
    rng = np.random.default_rng(0)
    return model.eval(), rng.integers(0, TINY.vocab_size, size=(4, 65)).astype(np.int32)


def _encode(model: GPT, windows: np.ndarray, gptq: bool) -> tuple[list, list, list[dict]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    plan = make_plan(state, PlanConfig(passthrough_max_numel=1024), "scalar", {"bits": 3, "gptq": gptq})
    grams, rows = gram_matrices(model, windows, progress=False)
    ctx = EncodeContext(hessians=grams, hessian_counts=dict.fromkeys(grams, rows))
    seen: list[dict] = []

    def grams_of(current: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        seen.append(dict(current))
        m = GPT(TINY)
        m.load_state_dict(current)
        return gram_matrices(m, windows, progress=False)

    from bytegolf.quantize.encoder import encode_state

    return encode_state(state, plan, ctx, progress=False), encode_sequential(state, plan, ctx, grams_of), seen


def test_sequential_recalibrates_once_per_later_stage_on_the_quantized_prefix(tiny_model_and_windows) -> None:
    model, windows = tiny_model_and_windows
    plain, seq, seen = _encode(model, windows, gptq=True)
    assert [t.name for u in seq for t in u.tensors] == [t.name for u in plain for t in u.tensors]
    assert len(seen) == TINY.num_layers  # stages: block 0 (reference Grams), block 1, then the rest
    recon = {t.name: u.recon[t.name] for u in seq for t in u.tensors}
    orig = model.state_dict()
    for name in orig:
        block = block_index(name)
        # before block 1 is encoded: block 0 is quantized, block 1 and the embedding are not
        expected = recon[name] if block == 0 else orig[name]
        assert torch.equal(seen[0][name], expected), name
    by_block: dict[int | None, bool] = {}
    for up, us in zip(plain, seq, strict=True):
        same = all(torch.equal(up.recon[n], us.recon[n]) for n in up.recon)
        b = block_index(up.tensors[0].name)
        by_block[b] = by_block.get(b, True) and same
    assert by_block[0] is True  # block 0 sees the same (unquantized) inputs either way
    assert by_block[1] is False  # GPTQ on block 1 now sees block 0's quantized outputs


def test_sequential_changes_nothing_for_a_format_without_hessians(tiny_model_and_windows) -> None:
    model, windows = tiny_model_and_windows
    plain, seq, seen = _encode(model, windows, gptq=False)
    assert len(seen) == TINY.num_layers
    for up, us in zip(plain, seq, strict=True):
        assert all(torch.equal(up.recon[n], us.recon[n]) for n in up.recon)
