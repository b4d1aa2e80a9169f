"""Confidence intervals and paired differences against hand computations."""

from __future__ import annotations

import math

import pytest

from servegym.experiments.stats import estimate, paired_difference


def test_t_interval_matches_hand_computation() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    # mean 2.5, sample sd sqrt(5/3), t(0.975, 3) = 3.182446305284263
    e = estimate(values)
    assert e.mean == pytest.approx(2.5)
    assert e.half_width == pytest.approx(3.182446305284263 * math.sqrt(5.0 / 3.0) / 2.0)
    assert e.n == 4


def test_paired_difference_removes_shared_noise() -> None:
    a = [10.0, 20.0, 30.0]
    b = [9.0, 19.5, 28.5]
    d = paired_difference(a, b)
    # differences 1.0, 0.5, 1.5: mean 1.0, sd 0.5, t(0.975, 2) = 4.302652729749464
    assert d.mean == pytest.approx(1.0)
    assert d.half_width == pytest.approx(4.302652729749464 * 0.5 / math.sqrt(3.0))
    assert d.half_width < estimate(a).half_width


def test_single_seed_and_nans() -> None:
    assert math.isnan(estimate([3.0]).half_width)
    assert estimate([1.0, math.nan, 3.0]).n == 2
    assert estimate([]).n == 0
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1.0], [1.0, 2.0])
