"""KL-divergence statistics (llama.cpp perplexity --kl-divergence) against known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bytegolf.errors import ConfigError
from bytegolf.measure.fidelity import PERCENTILES, FidelityAccumulator, summarize, token_stats


def test_identical_logits_give_zero_kld_and_full_agreement() -> None:
    logits = torch.randn(3, 7, 11, generator=torch.Generator().manual_seed(0)) * 4
    targets = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(1))
    acc = FidelityAccumulator()
    acc.update(logits, logits.clone(), targets)
    s = acc.summary()
    assert s["tokens"] == 21
    assert s["mean"] == 0.0 and s["se"] == 0.0 and s["max"] == 0.0 and s["min"] == 0.0
    assert all(s[k] == 0.0 for k in PERCENTILES)
    assert s["top1_agreement"] == 1.0 and s["rms_dp"] == 0.0 and s["mean_dp"] == 0.0


def test_shifted_logits_are_the_same_distribution() -> None:
    logits = torch.randn(50, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    st = token_stats(logits, logits + 3.0, torch.zeros(50, dtype=torch.long))
    assert float(st.kld.abs().max()) < 1e-12 and bool(st.top1.all()) and float(st.dp.abs().max()) < 1e-12


def test_two_tokens_three_words_by_hand() -> None:
    p_ref = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]], dtype=torch.float64)
    p_q = torch.tensor([[0.3, 0.5, 0.2], [0.2, 0.2, 0.6]], dtype=torch.float64)
    targets = torch.tensor([1, 2])
    st = token_stats(p_ref.log(), p_q.log(), targets)
    kl1 = 0.5 * math.log(0.5 / 0.3) + 0.3 * math.log(0.3 / 0.5)  # = 0.2 ln(5/3); the third word adds 0
    kl2 = 0.1 * math.log(0.1 / 0.2) + 0.7 * math.log(0.7 / 0.6)
    assert st.kld.tolist() == pytest.approx([kl1, kl2], abs=1e-12)
    assert st.top1.tolist() == [False, True]  # argmax 0 vs 1, then 2 vs 2
    assert st.dp.tolist() == pytest.approx([0.5 - 0.3, 0.6 - 0.7], abs=1e-12)
    s = summarize(st.kld.numpy(), st.top1.numpy(), st.dp.numpy())
    assert s["tokens"] == 2
    assert s["mean"] == pytest.approx((kl1 + kl2) / 2, abs=1e-12)
    assert s["se"] == pytest.approx(abs(kl1 - kl2) / 2, abs=1e-12)  # n = 2: sample std / sqrt(2)
    assert s["top1_agreement"] == 0.5
    assert s["rms_dp"] == pytest.approx(math.sqrt((0.2**2 + 0.1**2) / 2), abs=1e-12)
    assert s["max"] == pytest.approx(max(kl1, kl2)) and s["min"] == pytest.approx(min(kl1, kl2))


def test_streaming_matches_numpy_on_the_per_token_values() -> None:
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(1000, 64, generator=g) * 3
    q = ref + 0.5 * torch.randn(1000, 64, generator=g)
    targets = torch.randint(0, 64, (1000,), generator=g)
    acc = FidelityAccumulator()
    for i in range(0, 1000, 128):  # batches of different sizes (the last is short)
        acc.update(ref[i : i + 128], q[i : i + 128], targets[i : i + 128])
    # the same quantities from scratch in numpy
    lr = ref.double().log_softmax(-1).numpy()
    lq = q.double().log_softmax(-1).numpy()
    kld = (np.exp(lr) * (lr - lq)).sum(-1)
    top1 = ref.argmax(-1).numpy() == q.argmax(-1).numpy()
    idx = targets.numpy()
    dp = np.exp(lq[np.arange(1000), idx]) - np.exp(lr[np.arange(1000), idx])
    np.testing.assert_allclose(acc.values(), kld, rtol=1e-10, atol=1e-13)
    s = acc.summary()
    assert s["tokens"] == 1000
    assert s["mean"] == pytest.approx(kld.mean(), rel=1e-10)
    assert s["se"] == pytest.approx(kld.std(ddof=1) / math.sqrt(1000), rel=1e-8)
    for key, q_ in PERCENTILES.items():
        assert s[key] == pytest.approx(np.percentile(kld, q_), rel=1e-10), key
    assert s["max"] == pytest.approx(kld.max()) and s["min"] == pytest.approx(kld.min())
    assert s["top1_agreement"] == pytest.approx(top1.mean())
    assert 0.5 < s["top1_agreement"] < 1.0  # the perturbation changes some, not all, top tokens
    assert s["top1_se"] == pytest.approx(math.sqrt(top1.mean() * (1 - top1.mean()) / 999))
    assert s["rms_dp"] == pytest.approx(math.sqrt((dp**2).mean()), rel=1e-10)
    assert s["mean_dp"] == pytest.approx(dp.mean(), rel=1e-8, abs=1e-15)
    assert summarize(kld, top1, dp) == pytest.approx(s, rel=1e-9)
    assert (kld >= -1e-12).all() and s["mean"] > 0


def test_chunked_rows_match_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(4)
    ref, q = torch.randn(37, 16, generator=g), torch.randn(37, 16, generator=g)
    t = torch.randint(0, 16, (37,), generator=g)
    whole = token_stats(ref, q, t)
    monkeypatch.setattr("bytegolf.measure.fidelity.CHUNK_ELEMENTS", 16 * 5)  # 5 rows at a time
    parts = token_stats(ref, q, t)
    assert torch.equal(whole.kld, parts.kld) and torch.equal(whole.top1, parts.top1) and torch.equal(whole.dp, parts.dp)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="one shape"):
        token_stats(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="targets"):
        token_stats(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="no tokens"):
        FidelityAccumulator().summary()
    with pytest.raises(ConfigError, match="differ"):
        summarize(np.zeros(2), np.zeros(3, dtype=bool), np.zeros(2))
