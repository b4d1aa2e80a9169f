"""Cost equals billed replica-seconds and tokens times prices, recomputed independently."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from servegym.sim.config import CacheConfig, CacheTierConfig, ScenarioConfig, SemanticCacheConfig
from servegym.sim.platform import Platform
from servegym.sim.telemetry import FAILED_ERROR, IN_FLIGHT


def _recomputed_cost(platform: Platform) -> tuple[float, float, np.ndarray]:
    """(replica usd, token usd over finished calls, per-request token usd) from replicas and records."""
    scenario = platform.scenario
    now = platform.now
    replica_s = sum((now if math.isnan(r.stop_s) else r.stop_s) - r.provision_s for r in platform.pool.replicas)
    replica_usd = replica_s * scenario.pool.usd_per_replica_hour / 3600.0
    cols = platform.requests.frame()
    price_in = np.array([b.usd_per_mtok_in for b in scenario.backends]) / 1e6
    price_out = np.array([b.usd_per_mtok_out for b in scenario.backends]) / 1e6
    # Tokens are billed when a call finishes (successfully or not): calls still running are not billed yet.
    billed = (cols["backend"] >= 0) & (cols["outcome"] != IN_FLIGHT)
    b = cols["backend"][billed]
    per_request = cols["tokens_in"][billed] * price_in[b] + cols["tokens_out"][billed] * price_out[b]
    return replica_usd, float(per_request.sum()), per_request


@pytest.mark.parametrize("until", [37.3, None])
def test_cost_is_replicas_plus_tokens(stressed_scenario: ScenarioConfig, until: float | None) -> None:
    # Storage prices are zero, so storage must be exactly zero and everything else is accounted for.
    cache = dataclasses.replace(
        stressed_scenario.cache,
        tiers=tuple(dataclasses.replace(t, usd_per_entry_hour=0.0) for t in stressed_scenario.cache.tiers),
        semantic=dataclasses.replace(stressed_scenario.cache.semantic, usd_per_entry_hour=0.0),
    )
    platform = Platform(dataclasses.replace(stressed_scenario, cache=cache))
    kpis = platform.run(until)["all"]
    replica_usd, token_usd, per_request = _recomputed_cost(platform)

    assert platform.storage_usd() == 0.0
    assert platform.replica_usd() == pytest.approx(replica_usd, rel=1e-9)
    assert platform.token_usd == pytest.approx(token_usd, rel=1e-9)
    assert platform.cost_usd() == pytest.approx(replica_usd + token_usd, rel=1e-9)
    assert kpis["cost_usd"] == pytest.approx(platform.cost_usd(), rel=1e-9)
    assert kpis["replica_cost_usd"] + kpis["token_cost_usd"] == pytest.approx(kpis["cost_usd"], rel=1e-9)
    cols = platform.requests.frame()
    billed = (cols["backend"] >= 0) & (cols["outcome"] != IN_FLIGHT)
    np.testing.assert_allclose(cols["cost_usd"][billed], per_request, rtol=1e-12, atol=0)
    assert np.all(cols["cost_usd"][~billed] == 0.0)
    # Failed calls pay for their input only; cache hits and drops before a call pay nothing.
    failed = cols["outcome"] == FAILED_ERROR
    assert failed.any()
    assert np.all(cols["tokens_out"][failed] == 0)
    assert np.all(cols["tokens_in"][failed] <= cols["prompt_tokens"][failed])
    assert replica_usd > 0 and token_usd > 0


def test_storage_is_billed_per_entry_hour(small_scenario: ScenarioConfig) -> None:
    """One never-expiring tier that fills at time 0 (warm) and stays full: storage = capacity x time x price."""
    capacity, price = 25, 0.36
    cache = CacheConfig(
        tiers=(CacheTierConfig(name="memory", capacity=capacity, usd_per_entry_hour=price),),
        semantic=SemanticCacheConfig(enabled=False),
        warm_top_intents=capacity,  # the first tenant's warm set alone fills the tier
    )
    platform = Platform(dataclasses.replace(small_scenario, cache=cache, duration_s=60.0))
    platform.run()
    assert len(platform.tiers[0]) == capacity
    assert platform.storage_usd() == pytest.approx(capacity * platform.now * price / 3600.0, rel=1e-9)
    replica_usd, token_usd, _ = _recomputed_cost(platform)
    assert platform.cost_usd() == pytest.approx(replica_usd + token_usd + platform.storage_usd(), rel=1e-9)


def test_reading_the_cost_changes_nothing(stressed_scenario: ScenarioConfig) -> None:
    """Environments read cost_usd() at every step; a run read often must equal a run read once, bit for bit."""
    tiers = tuple(dataclasses.replace(t, usd_per_entry_hour=0.01) for t in stressed_scenario.cache.tiers)
    semantic = dataclasses.replace(stressed_scenario.cache.semantic, usd_per_entry_hour=0.01)
    scenario = dataclasses.replace(
        stressed_scenario, cache=dataclasses.replace(stressed_scenario.cache, tiers=tiers, semantic=semantic)
    )
    read_often, read_once = Platform(scenario), Platform(scenario)
    t = 0.0
    while t < scenario.duration_s:
        t = min(t + 0.37, scenario.duration_s)
        read_often.run(until=t)
        read_often.cost_usd()
    read_once.run()
    assert read_often.storage_usd() > 0
    assert read_often.cost_usd() == read_once.cost_usd()
    assert read_often.kpis() == read_once.kpis()


def test_interval_costs_include_cache_storage(small_scenario: ScenarioConfig) -> None:
    """Interval cost is what the KPIs and the env reward count: replicas, tokens and storage."""
    import dataclasses

    cache = small_scenario.cache
    billed = dataclasses.replace(cache, semantic=dataclasses.replace(cache.semantic, usd_per_entry_hour=0.01))
    platform = Platform(dataclasses.replace(small_scenario, cache=billed))
    platform.run()
    assert platform.storage_usd() > 0
    assert np.isclose(sum(m.cost_usd for m in platform.intervals), platform.cost_usd(), rtol=1e-9)
    assert np.isclose(platform.cost_usd(), platform.kpis()["all"]["cost_usd"], rtol=1e-9)
