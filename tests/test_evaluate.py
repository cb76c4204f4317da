"""bits-per-byte against a hand-computed example."""

from __future__ import annotations

import math

import numpy as np
import torch

from bytegolf.evaluate import evaluate
from bytegolf.tokenizer import ByteTables


class Uniform(torch.nn.Module):
    """A 'model' that assigns probability 1/4 to every token of a vocab of 4."""

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.full(targets.shape, math.log(4.0), dtype=torch.float64)


def test_bpb_matches_hand_computation() -> None:
    # vocab: 0 = control (boundary, 0 bytes), 1 = "▁ab" (2 + leading space), 2 = "c" (1), 3 = byte token (1)
    tables = ByteTables(
        base_bytes=np.array([0, 2, 1, 1]),
        has_leading_space=np.array([False, True, False, False]),
        is_boundary=np.array([True, False, False, False]),
        drop_space_after_boundary=True,
    )
    windows = np.array([[0, 1, 2, 3], [3, 1, 1, 0]])
    # window 0 targets 1,2,3 after 0,1,2: (2 + 0, space dropped after boundary) + 1 + 1 = 4
    # window 1 targets 1,1,0 after 3,1,1: (2+1) + (2+1) + 0 = 6
    r = evaluate(Uniform(), windows, tables, progress=False)
    assert r.window_bytes == [4, 6]
    assert r.tokens == 6 and r.bytes == 10
    assert math.isclose(r.loss, math.log(4))
    assert math.isclose(r.bpb, 6 * 2 / 10)  # 2 bits per token, 6 tokens, 10 bytes
    assert math.isclose(r.ppl, 4.0)
