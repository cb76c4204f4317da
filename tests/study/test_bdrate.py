"""BD-rate and BD-bpb between (final bytes, bpb) fronts on known answers; errors for fronts that admit none."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bytegolf.errors import BytegolfError
from bytegolf.study import bdrate

BYTES = np.array([2e6, 4e6, 8e6, 16e6])
BPB = np.array([2.6, 2.0, 1.78, 1.70])


def test_the_reference_at_ninety_percent_of_the_bytes_is_minus_ten_percent() -> None:
    assert bdrate.bd_rate(BYTES, BPB, 0.9 * BYTES, BPB) == pytest.approx(-10.0, abs=1e-6)


def test_identical_fronts_give_zero() -> None:
    assert bdrate.bd_rate(BYTES, BPB, BYTES, BPB) == pytest.approx(0.0, abs=1e-12)
    assert bdrate.bd_bpb(BYTES, BPB, BYTES, BPB) == pytest.approx(0.0, abs=1e-12)


def test_swapping_the_fronts_gives_the_inverse_relation() -> None:
    test_bytes, test_bpb = np.array([3e6, 6e6, 12e6]), np.array([2.2, 1.85, 1.72])  # sampled elsewhere
    ab = bdrate.bd_rate(BYTES, BPB, test_bytes, test_bpb)
    ba = bdrate.bd_rate(test_bytes, test_bpb, BYTES, BPB)
    assert (1 + ab / 100) * (1 + ba / 100) == pytest.approx(1.0, abs=1e-12)
    assert bdrate.bd_rate(0.9 * BYTES, BPB, BYTES, BPB) == pytest.approx(100 / 0.9 - 100, abs=1e-6)  # +11.1%
    q_ab = bdrate.bd_bpb(BYTES, BPB, test_bytes, test_bpb)
    assert bdrate.bd_bpb(test_bytes, test_bpb, BYTES, BPB) == pytest.approx(-q_ab, abs=1e-12)


def test_bd_bpb_of_a_front_lower_by_a_hundredth_is_minus_a_hundredth() -> None:
    assert bdrate.bd_bpb(BYTES, BPB, BYTES, BPB - 0.01) == pytest.approx(-0.01, abs=1e-12)
    # fewer bytes for the same bpb is lower bpb for the same bytes: both deltas negative
    assert bdrate.bd_bpb(BYTES, BPB, 0.9 * BYTES, BPB) < 0


def test_dominated_points_are_dropped_before_fitting() -> None:
    # the same front plus points that do worse than it (more bytes and more bpb): the answer does not move
    noisy_bytes = np.concatenate([0.9 * BYTES, [5e6, 15e6, 3e6]])
    noisy_bpb = np.concatenate([BPB, [2.3, 1.9, 3.0]])
    f = bdrate.front(noisy_bytes, noisy_bpb)
    assert np.exp(f.log_rate) == pytest.approx(0.9 * BYTES) and f.quality == pytest.approx(BPB)
    assert bdrate.bd_rate(BYTES, BPB, noisy_bytes, noisy_bpb) == pytest.approx(-10.0, abs=1e-6)


def test_too_few_points_and_no_overlap_are_clear_errors() -> None:
    with pytest.raises(bdrate.FrontError, match="1 Pareto point"):
        bdrate.bd_rate(BYTES, BPB, np.array([3e6]), np.array([2.1]))
    with pytest.raises(bdrate.FrontError, match="1 Pareto point"):  # two points, one dominating the other
        bdrate.bd_rate(BYTES, BPB, np.array([3e6, 4e6]), np.array([2.1, 2.2]))
    with pytest.raises(bdrate.FrontError, match="do not overlap in quality"):
        bdrate.bd_rate(BYTES, BPB, np.array([3e7, 6e7]), np.array([1.60, 1.55]))
    with pytest.raises(bdrate.FrontError, match="do not overlap in log bytes"):
        bdrate.bd_bpb(BYTES, BPB, np.array([3e7, 6e7]), np.array([1.80, 1.75]))
    assert issubclass(bdrate.FrontError, ValueError) and issubclass(bdrate.FrontError, BytegolfError)
    assert math.isnan(bdrate.bd_rate_or_nan(BYTES, BPB, np.array([3e6]), np.array([2.1])))  # the NaN-returning form
