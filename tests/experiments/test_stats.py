"""Confidence intervals and paired differences against hand computations."""

from __future__ import annotations

import math

import pytest

from servegym.experiments.stats import Estimate, estimate, few_seeds_warning, format_estimate, paired_difference


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


@pytest.mark.parametrize(
    ("e", "kpi", "difference", "text"),
    [
        # Shares in percent, their differences in points; decimals follow the half-width.
        (Estimate(0.92784, 0.0024, 3), "slo_attainment", False, "92.78% ± 0.24"),
        (Estimate(0.0056, 0.0031, 3), "slo_attainment", True, "+0.56 pts ± 0.31"),
        (Estimate(-8.202e-05, 1e-4, 3), "hit_rate_memory", True, "-0.01 pts ± 0.01"),
        # A wide two-seed interval: no scientific notation, no digits the interval cannot resolve.
        (Estimate(19.28, 120.0, 2), "latency_p95_s", False, "19 ± 120"),
        (Estimate(181.02, 1.83, 5), "cost_usd", False, "181.0 ± 1.8"),
        (Estimate(4.0, 1.7, 5), "objective_usd", True, "+4.0 ± 1.7"),
        # One seed: no interval; fixed decimals per unit; a rounded zero has no sign.
        (Estimate(0.9278, math.nan, 1), "quality", False, "92.78%"),
        (Estimate(12.1704, math.nan, 1), "latency_p95_s", False, "12.170"),
        (Estimate(72368.0, math.nan, 1), "requests", False, "72368"),
        (Estimate(-1e-5, 1e-6, 3), "latency_p95_s", True, "0.000 ± 0.000"),
        (Estimate(math.nan, math.nan, 0), "cost_usd", False, "-"),
    ],
)
def test_table_cells_carry_units_and_sensible_precision(e: Estimate, kpi: str, difference: bool, text: str) -> None:
    assert format_estimate(e, kpi, difference) == text


def test_fewer_than_three_seeds_are_warned_about() -> None:
    assert few_seeds_warning(3) is None
    two = few_seeds_warning(2)
    assert two is not None and "very wide" in two and "t = 12.7" in two and "seeds>=5" in two
    one = few_seeds_warning(1, "evaluation")
    assert one is not None and "this evaluation has 1 seed" in one


def test_share_intervals_never_reach_past_the_possible_range() -> None:
    # Two seeds: t = 12.7 makes "SLO 75% ± 250" out of any spread; a share lies in [0, 100%].
    assert format_estimate(Estimate(0.75, 2.5, 2), "slo_attainment") == "75% [0, 100%]"
    assert format_estimate(Estimate(0.02, 0.05, 3), "drop_rate") == "2.0% [0.0, 7.0%]"
    assert format_estimate(Estimate(0.9, 0.5, 2), "slo_attainment", True) == "+90 pts [+40, +100 pts]"
    assert format_estimate(Estimate(0.9353, 0.0024, 5), "slo_attainment") == "93.53% ± 0.24"  # inside: unchanged
    assert format_estimate(Estimate(12.0, 30.0, 2), "latency_p95_s") == "12 ± 30"  # not a share: unchanged
