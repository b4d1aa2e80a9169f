"""Leaderboard statistics against hand computations: t intervals, paired differences, gaps, Pareto sets."""

from __future__ import annotations

import math

import pytest

from servegym.experiments.compare import resolve_policy, seeds_of, sweep_values
from servegym.experiments.evaluate import PolicyResult
from servegym.experiments.leaderboard import bounded_by, format_summary, gap_closed, pareto_set, summarise
from servegym.sim.config import ConfigError
from servegym.sim.objective import Prices, objective_usd


def result(name: str, **kpis: list[float]) -> PolicyResult:
    n = len(next(iter(kpis.values())))
    return PolicyResult(name, tuple(range(n)), tuple({k: v[i] for k, v in kpis.items()} for i in range(n)))


def test_estimates_and_paired_differences_match_a_hand_computation() -> None:
    base = result("base", latency_p95_s=[10.0, 12.0, 14.0], cost_usd=[5.0, 6.0, 7.0])
    fast = result("fast", latency_p95_s=[8.0, 11.0, 11.0], cost_usd=[6.0, 7.0, 8.5])
    s = summarise("steady", [base, fast], ["latency_p95_s", "cost_usd"])
    # base p95: mean 12, sd 2, t(0.975, 2) = 4.302653 -> half-width 4.302653 * 2 / sqrt(3).
    e = s.estimates["base"]["latency_p95_s"]
    assert e.mean == pytest.approx(12.0)
    assert e.half_width == pytest.approx(4.302653 * 2.0 / math.sqrt(3), rel=1e-6)
    # Paired differences fast - base: -2, -1, -3 -> mean -2, sd 1.
    d = s.differences["fast"]["latency_p95_s"]
    assert d.mean == pytest.approx(-2.0)
    assert d.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    # The paired interval is tighter than the difference of the two independent ones.
    assert d.half_width < s.estimates["fast"]["latency_p95_s"].half_width + e.half_width
    assert "fast" not in s.differences["fast"] and "base" not in s.differences
    text = format_summary(s)
    assert "paired differences against base" in text and "-2.0 ± 2.5" in text


def test_gap_closed_and_its_undefined_cases() -> None:
    base = result("static", latency_p95_s=[10.0, 10.0], quality=[0.6, 0.6])
    half = result("hpa", latency_p95_s=[8.0, 8.0], quality=[0.7, 0.7])
    oracle = result("clairvoyant", latency_p95_s=[6.0, 6.0], quality=[0.6, 0.6])
    assert gap_closed(half, base, oracle, "latency_p95_s") == pytest.approx(0.5)
    assert gap_closed(oracle, base, oracle, "latency_p95_s") == pytest.approx(1.0)
    # The oracle is no better on quality: no gap, no share.
    assert math.isnan(gap_closed(half, base, oracle, "quality"))
    # The leaderboard computes gaps to a bound on the objective only: it bounds that, not each KPI.
    base = result("static", latency_p95_s=[10.0, 10.0], objective_usd=[10.0, 10.0])
    half = result("hpa", latency_p95_s=[8.0, 8.0], objective_usd=[8.0, 8.0])
    oracle = result("clairvoyant", latency_p95_s=[6.0, 6.0], objective_usd=[6.0, 6.0])
    s = summarise(
        "x", [base, half, oracle], ["latency_p95_s", "objective_usd"], "static", ["latency_p95_s", "objective_usd"]
    )
    assert s.gap_reference == {"objective_usd": "clairvoyant"}
    assert s.gaps["hpa"]["objective_usd"] == pytest.approx(0.5)
    # An oracle that is only a privileged heuristic (not a proven bound) defines no gap at all.
    router = result("oracle_router", latency_p95_s=[1.0, 1.0], objective_usd=[1.0, 1.0])
    s = summarise("x", [base, half, router], ["objective_usd"], "static", ["objective_usd"])
    assert s.gap_kpis == () and s.gap_reference == {}
    assert "(oracle)" in format_summary(s)
    # Higher-is-better KPIs: an oracle with better quality defines the gap the other way.
    base = result("static", latency_p95_s=[10.0, 10.0], quality=[0.6, 0.6])
    half = result("hpa", latency_p95_s=[8.0, 8.0], quality=[0.7, 0.7])
    better = result("clairvoyant", latency_p95_s=[10.0, 10.0], quality=[0.8, 0.8])
    assert gap_closed(half, base, better, "quality") == pytest.approx(0.5)
    # An oracle better on average but not significantly (paired differences -3, +1: the
    # interval contains zero) defines no gap: a share of it would be noise over noise.
    noisy = result("oracle_router", latency_p95_s=[7.0, 11.0], quality=[0.6, 0.6])
    assert math.isnan(gap_closed(half, base, noisy, "latency_p95_s"))


def test_gaps_only_for_policies_the_bound_covers() -> None:
    # The clairvoyant scaler bounds scalers; hpa+jsq also routes and may beat it by routing.
    assert bounded_by("hpa", "clairvoyant") and bounded_by("static+builtin", "clairvoyant")
    assert not bounded_by("hpa+jsq", "clairvoyant") and not bounded_by("run:abc", "clairvoyant")
    assert not bounded_by("oracle_router", "clairvoyant")  # another oracle routes: not covered
    static = result("static", objective_usd=[10.0, 10.2])
    hpa = result("hpa", objective_usd=[8.0, 8.1])
    both = result("hpa+jsq", objective_usd=[5.0, 5.1])
    oracle = result("clairvoyant", objective_usd=[6.0, 6.2])
    s = summarise("x", [static, hpa, both, oracle], ["objective_usd"], "static", ["objective_usd"])
    assert s.gaps["hpa"]["objective_usd"] == pytest.approx((8.05 - 10.1) / (6.1 - 10.1))
    assert math.isnan(s.gaps["hpa+jsq"]["objective_usd"])
    # A baseline the bound does not cover: no gap table at all.
    s = summarise("x", [both, hpa, oracle], ["objective_usd"], "hpa+jsq", ["objective_usd"])
    assert s.gap_kpis == ()


def test_pareto_set_on_cost_p95_and_drops() -> None:
    rs = [
        result("cheap_slow", cost_usd=[1.0], latency_p95_s=[10.0], drop_rate=[0.0]),
        result("dear_fast", cost_usd=[5.0], latency_p95_s=[2.0], drop_rate=[0.0]),
        result("dominated", cost_usd=[5.0], latency_p95_s=[10.0], drop_rate=[0.0]),
        result("middle", cost_usd=[3.0], latency_p95_s=[5.0], drop_rate=[0.0]),
        result("tie_on_cost_worse", cost_usd=[3.0], latency_p95_s=[6.0], drop_rate=[0.0]),
        # Cheaper and faster than "middle" only because it turns half the users away:
        # it joins the front (nothing beats it on all three) but cannot push "middle" off it.
        result("dropper", cost_usd=[2.0], latency_p95_s=[4.0], drop_rate=[0.5]),
        result("worse_dropper", cost_usd=[2.0], latency_p95_s=[4.0], drop_rate=[0.6]),
    ]
    assert pareto_set(rs) == ["cheap_slow", "dear_fast", "middle", "dropper"]
    assert pareto_set(rs, ("cost_usd", "latency_p95_s")) == ["cheap_slow", "dear_fast", "dropper", "worse_dropper"]


def test_a_policy_that_drops_requests_ranks_below_and_is_flagged() -> None:
    # As the issue found on a replayed trace: cheaper and "faster" by dropping half the requests.
    hpa = result("hpa", objective_usd=[161.0, 160.0, 162.0], drop_rate=[0.04, 0.03, 0.04], cost_usd=[150.0] * 3)
    ppo = result("ppo", objective_usd=[900.0, 880.0, 950.0], drop_rate=[0.50, 0.48, 0.55], cost_usd=[120.0] * 3)
    s = summarise("trace", [ppo, hpa], ["objective_usd", "drop_rate", "cost_usd"], "hpa")
    assert s.policies == ["hpa", "ppo"]  # ranked by mean objective
    text = format_summary(s, {"objective_usd": "objective $"})
    assert "far outside the baseline (hpa)" in text
    assert "ppo drops 55.0% of requests on seed 2 (hpa: at most 4.0% on any seed)" in text
    assert "worst objective $" in text and "950.00 (s2)" in text


def test_summaries_need_the_same_seeds_and_a_known_baseline() -> None:
    a = PolicyResult("a", (0, 1), ({"cost_usd": 1.0}, {"cost_usd": 2.0}))
    b = PolicyResult("b", (0, 2), ({"cost_usd": 1.0}, {"cost_usd": 2.0}))
    with pytest.raises(ValueError, match="same seeds"):
        summarise("s", [a, b], ["cost_usd"])
    with pytest.raises(ValueError, match="baseline 'c'"):
        summarise("s", [a], ["cost_usd"], baseline="c")


def test_objective_prices_misses_bad_answers_and_drops() -> None:
    kpis = {"cost_usd": 3.0, "slo_misses": 20.0, "bad_answers": 45.0, "dropped": 4.0, "in_flight": 2.0}
    # 3 + 0.01 * 20 + 0.005 * 45 + 0.5 * (4 dropped + 2 unfinished at the end).
    assert objective_usd(kpis, Prices(0.01, 0.005, 0.5)) == pytest.approx(3.0 + 0.2 + 0.225 + 3.0)


def test_config_helpers_reject_bad_values_by_name() -> None:
    assert seeds_of(3) == [0, 1, 2]
    assert seeds_of([4, 7]) == [4, 7]
    for bad in (0, True, [1, 1], [], "x"):
        with pytest.raises(ConfigError, match="seeds"):
            seeds_of(bad)
    assert sweep_values(["a", "hpa+cascade"]) == "'a','hpa+cascade'"
    with pytest.raises(ConfigError, match="at least one"):
        sweep_values([])
    with pytest.raises(ConfigError, match="'hpx' is not a policy"):
        resolve_policy("hpx+round_robin", {}, {})
    d = resolve_policy("plain", {"plain": {"spec": "static+round_robin", "scenario": ["cache.tiers=[]"]}}, {})
    assert d.spec == "static+round_robin" and d.scenario_overrides == ("cache.tiers=[]",)
    assert resolve_policy("run:abc+cascade", {}, {}).spec == "run:abc+cascade"
