"""The objective's derived drop price: dropping any request must cost more than serving it."""

from __future__ import annotations

import math

import pytest

from servegym.sim.config import load_scenario
from servegym.sim.objective import max_serve_usd, resolve_prices
from servegym.sim.platform import Platform


@pytest.mark.parametrize("name", ["default", "steady", "bursty", "multi_tenant"])
def test_the_derived_drop_price_is_above_the_most_a_request_can_cost(name: str) -> None:
    scenario = load_scenario(name)
    prices = resolve_prices(scenario)
    bound = max_serve_usd(scenario)
    assert prices.drop_derived and bound < prices.drop_usd <= bound + 0.01 + 1e-12
    # the drop price is a whole number of cents
    assert prices.drop_usd * 100 == pytest.approx(round(prices.drop_usd * 100))


def test_storage_of_the_answer_is_part_of_what_serving_can_cost() -> None:
    # An answer kept in a dear tier for the whole run costs 2.0 x 600 / 3600 = $0.33: the drop price follows.
    dear = load_scenario("default", ["duration_s=600", "cache.tiers.1.usd_per_entry_hour=2.0"])
    cheap = load_scenario("default", ["duration_s=600"])
    assert resolve_prices(dear).drop_usd - resolve_prices(cheap).drop_usd == pytest.approx(2.0 * 600 / 3600, abs=0.011)


def test_requests_unfinished_at_the_end_are_priced_as_drops() -> None:
    platform = Platform(load_scenario("default", ["duration_s=120"]))
    kpis = platform.run()["all"]
    assert kpis["in_flight"] > 0
    finished_only = platform.objective_usd()
    assert kpis["objective_usd"] == pytest.approx(finished_only + platform.prices.drop_usd * kpis["in_flight"])
    assert math.isfinite(kpis["objective_usd"])
