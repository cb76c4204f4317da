"""Loss sensitivity: known answers for the head's Fisher and the loss formula, zero where the loss cannot
see a tensor, and (slow) predictions that track the real loss increase on the committed model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bytegolf.data import shards
from bytegolf.model import checkpoint
from bytegolf.model.gpt import GPT
from bytegolf.model.grams import gram_matrices
from bytegolf.quantize.sensitivity import Sensitivity, loss_increase, output_fishers
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[2]


def _tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(TINY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "tok_emb" not in name:
                p.normal_(0, 0.05)
        model.tok_emb.weight.normal_(0, 0.3)
    return model.eval()


def _windows(n: int = 4, seq: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, size=(n, seq + 1))


def test_the_heads_fisher_is_the_mean_squared_softmax_residual_through_the_softcap() -> None:
    model, win = _tiny(), _windows()
    fish, tokens = output_fishers(model, win, batch_size=3, progress=False, sampled=False)
    assert tokens == win.shape[0] * (win.shape[1] - 1)
    with torch.no_grad():  # closed form: dℓ/dproj_j = (softmax_j − [y = j]) · (1 − tanh²(proj_j / cap))
        ids, y = torch.from_numpy(win[:, :-1]), torch.from_numpy(win[:, 1:])
        proj = torch.nn.functional.linear(model.hidden(ids), model.tok_emb.weight).double()
        cap = TINY.logit_softcap
        p = (cap * torch.tanh(proj / cap)).softmax(-1)
        resid = p - torch.nn.functional.one_hot(y, TINY.vocab_size).double()
        expected = (resid * (1 - torch.tanh(proj / cap) ** 2)).square().reshape(-1, TINY.vocab_size).mean(0)
    torch.testing.assert_close(fish["tok_emb.weight"].out.double(), expected, rtol=1e-4, atol=1e-12)
    assert fish["tok_emb.weight"].rows is not None and float(fish["tok_emb.weight"].rows.sum()) > 0
    linears = {n for n, p in model.named_parameters() if p.ndim == 2 and n.endswith(".weight")}
    assert set(fish) == linears and "tok_emb.weight" in linears


def test_a_tensor_the_loss_cannot_see_has_zero_sensitivity() -> None:
    model = _tiny()
    with torch.no_grad():
        model.blocks[1].mlp_scale.zero_()  # the last MLP's output is multiplied by 0
    fish, _ = output_fishers(model, _windows(), progress=False)
    assert float(fish["blocks.1.mlp.proj.weight"].out.abs().max()) == 0.0
    assert float(fish["blocks.1.mlp.fc.weight"].out.abs().max()) == 0.0
    assert float(fish["blocks.1.attn.c_q.weight"].out.max()) > 0.0


def test_the_loss_formula_on_a_known_case() -> None:
    dw = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.0]])
    w = torch.zeros(3, 2)
    rows = 10
    gram = torch.eye(2) * rows  # mean Gram: the identity
    s = Sensitivity(out=torch.tensor([1.0, 2.0, 0.5]))
    # ½ Σ_j F_j ‖Δw_j‖² = ½ (1·5 + 2·1 + 0.5·9)
    assert loss_increase(w, dw, gram, rows, s) == pytest.approx(0.5 * (5 + 2 + 4.5))
    s.rows = torch.tensor([2.0, 0.0, 1.0])  # + ½ Σ_j G_j ‖Δw_j‖²
    assert loss_increase(w, dw, gram, rows, s) == pytest.approx(0.5 * (5 + 2 + 4.5) + 0.5 * (10 + 9))
    assert loss_increase(w, w, gram, rows, s) == 0.0


@pytest.mark.slow
def test_predicted_loss_increase_tracks_the_real_one_on_the_committed_model() -> None:
    bundle = REPO / "results" / "default"
    model = checkpoint.build_model(checkpoint.load_state_dict(bundle / "model.safetensors")).eval()
    train = shards.read_shards([bundle / "train_000000.bin"])
    val = shards.read_shards([bundle / "val_000000.bin"])
    calib = np.stack([train[i * 1025 : (i + 1) * 1025] for i in range(4)]).astype(np.int64)
    held = np.stack([val[i * 7175 : i * 7175 + 1025] for i in range(8)]).astype(np.int64)
    fish, _ = output_fishers(model, calib, progress=False)
    grams, rows = gram_matrices(model, calib, progress=False)

    def loss() -> float:
        with torch.no_grad():
            return float(model.token_nll(torch.from_numpy(held[:, :-1]), torch.from_numpy(held[:, 1:])).mean())

    def rtn(w: torch.Tensor, bits: int) -> torch.Tensor:
        q = 2 ** (bits - 1) - 1
        s = w.abs().amax(1, keepdim=True) / q
        return torch.round(w / s).clamp(-q, q) * s

    base = loss()
    for names, bits in (
        (["tok_emb.weight"], 5),
        ([n for n, p in model.named_parameters() if ".mlp." in n and p.ndim == 2], 3),
    ):
        orig = {n: model.get_parameter(n).detach().clone() for n in names}
        predicted = 0.0
        with torch.no_grad():
            for n in names:
                wq = rtn(orig[n], bits)
                predicted += loss_increase(orig[n], wq, grams[n], rows, fish[n])
                model.get_parameter(n).copy_(wq)
            actual = loss() - base
            for n in names:
                model.get_parameter(n).copy_(orig[n])
        assert actual > 0.01 and 0.5 < predicted / actual < 2.0, (names[0], actual, predicted)
        assert math.isfinite(predicted)
