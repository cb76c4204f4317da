"""Pre-artifact error measures against known answers: output error of matrices and of weight banks (per slice)."""

from __future__ import annotations

import math

import pytest
import torch

from bytegolf.measure import metrics


def _gram(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(64, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.T @ x


def test_output_error_of_a_matrix_with_identity_gram_is_rel_mse() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    w_hat = torch.tensor([[3.0, 3.0], [0.0, 0.0]])
    assert metrics.output_error(w, w_hat, torch.eye(2)) == pytest.approx(1 / 25)
    assert metrics.rel_mse(w, w_hat) == pytest.approx(1 / 25)
    # G = diag(4, 1): ‖ΔW X‖² weighs column 0 by 4: (0·4 + 1·1) / (9·4 + 16·1)
    assert metrics.output_error(w, w_hat, torch.diag(torch.tensor([4.0, 1.0]))) == pytest.approx(1 / 52)
    assert metrics.tensor_output_error("w", w, w_hat, {"w": torch.eye(2)}) == (pytest.approx(1 / 25), 4)
    assert math.isnan(metrics.tensor_output_error("w", w, w_hat, {})[0])
    assert metrics.tensor_output_error("w", w, w_hat, {})[1] == 0


def test_bank_output_error_is_the_params_weighted_mean_over_its_slices() -> None:
    torch.manual_seed(0)
    bank = torch.randn(2, 3, 4, dtype=torch.float64)
    hat = bank.clone()
    hat[1, 0, 0] += 0.5  # slice 0 exact, slice 1 off by one entry
    grams = {"bank[0]": _gram(4, 1), "bank[1]": _gram(4, 2)}
    e1 = metrics.output_error(bank[1], hat[1], grams["bank[1]"])
    assert metrics.output_error(bank[0], hat[0], grams["bank[0]"]) == 0.0 and e1 > 0
    err, covered = metrics.tensor_output_error("bank", bank, hat, grams)
    assert err == pytest.approx(e1 / 2, rel=1e-12) and covered == 24  # slice 1's share: 12 of 24 params
    # the same two matrices stored as two tensors give the same params-weighted aggregate
    assert metrics.weighted_mean([0.0, e1], [12, 12]) == pytest.approx(err, rel=1e-12)
    # the bank's own (summed) Gram is no slice's: a bank without slice Grams has no output error
    assert metrics.tensor_output_error("bank", bank, hat, {"bank": grams["bank[1]"]})[1] == 0


def test_bank_with_a_missing_slice_gram_covers_the_others_only() -> None:
    torch.manual_seed(1)
    bank = torch.randn(3, 2, 5, dtype=torch.float64)
    hat = bank * 1.1  # every slice: ‖ΔW X‖² / ‖W X‖² = 0.01 for any Gram
    grams = {"b[0]": _gram(5, 3), "b[2]": _gram(5, 4)}
    err, covered = metrics.tensor_output_error("b", bank, hat, grams)
    assert err == pytest.approx(0.01, rel=1e-9) and covered == 20  # 2 of 3 slices of 10 params
    zero = {"b[0]": torch.zeros(5, 5)}  # a slice whose inputs are all zero has no error and covers nothing
    assert metrics.tensor_output_error("b", bank, hat, zero)[1] == 0


def test_four_dim_bank_slices_fold_their_middle_dims_into_rows() -> None:
    bank = torch.arange(2 * 2 * 3 * 4, dtype=torch.float64).reshape(2, 2, 3, 4) + 1
    hat = bank.clone()
    hat[0] *= 1.2  # slice 0: 0.04, slice 1: exact
    err, covered = metrics.tensor_output_error("k", bank, hat, {"k[0]": _gram(4, 5), "k[1]": _gram(4, 6)})
    assert err == pytest.approx(0.02, rel=1e-9) and covered == 48


def test_vectors_have_no_output_error() -> None:
    v = torch.ones(8)
    err, covered = metrics.tensor_output_error("v", v, v * 0.5, {"v": torch.eye(8)})
    assert math.isnan(err) and covered == 0


def test_weighted_mean_ignores_nan() -> None:
    assert metrics.weighted_mean([0.1, math.nan, 0.4], [1, 5, 3]) == pytest.approx(0.325)
    assert math.isnan(metrics.weighted_mean([math.nan], [3]))
