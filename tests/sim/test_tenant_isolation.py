"""No cache hit crosses tenants, even when two tenants ask for the same intent index."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from servegym.sim.config import (
    CacheConfig,
    CacheTierConfig,
    ScenarioConfig,
    SemanticCacheConfig,
    TenantConfig,
)
from servegym.sim.platform import Platform
from servegym.sim.telemetry import COMPLETED

TINY = 6  # intents per tenant: both tenants' catalogues are the same indices 0..5


def _tiny_tenants(small_scenario: ScenarioConfig, cache: CacheConfig) -> ScenarioConfig:
    tokens = small_scenario.workload.tenants[0].tokens
    tenants = (
        TenantConfig(name="a", weight=1.0, n_intents=TINY, n_variants=1, tokens=tokens),
        TenantConfig(name="b", weight=1.0, n_intents=TINY, n_variants=1, tokens=tokens),
        TenantConfig(name="c", weight=0.5, n_intents=TINY, n_variants=2, tokens=tokens),
    )
    return dataclasses.replace(
        small_scenario,
        duration_s=60.0,
        workload=dataclasses.replace(small_scenario.workload, tenants=tenants, intents_per_topic=TINY),
        cache=cache,
    )


def _check_isolation(platform: Platform, semantic_level: int | None) -> None:
    cols = platform.requests.frame()
    hit = cols["hit_level"] >= 0
    assert hit.mean() > 0.5, "hits must be frequent for this test to mean anything"
    assert np.all(cols["source_tenant"][hit] == cols["tenant"][hit])
    assert np.all(cols["source_tenant"][~hit] == -1)
    # Keys are namespaced: one key never belongs to two tenants.
    for key in np.unique(cols["key"]):
        assert len(np.unique(cols["tenant"][cols["key"] == key])) == 1
    # A hit is answered by something its own tenant wrote earlier: an exact hit by an earlier
    # completed miss of the same key, a semantic hit by an earlier completed miss of the tenant.
    written = (cols["outcome"] == COMPLETED) & ~hit
    for i in np.flatnonzero(hit):
        earlier = written & (cols["end_s"] < cols["arrival_s"][i])
        if cols["hit_level"][i] == semantic_level:
            assert np.any(earlier & (cols["tenant"] == cols["tenant"][i])), i
        else:
            assert np.any(earlier & (cols["key"] == cols["key"][i])), i
    # Tenants share intent indices and both hit on them: the namespacing is what keeps them apart.
    shared = set(cols["intent"][hit & (cols["tenant"] == 0)].tolist()) & set(
        cols["intent"][hit & (cols["tenant"] == 1)].tolist()
    )
    assert len(shared) >= TINY // 2


@pytest.mark.parametrize("eviction", ["lru", "s3fifo"])
def test_exact_hits_stay_within_tenant(small_scenario: ScenarioConfig, eviction: str) -> None:
    cache = CacheConfig(
        tiers=(
            CacheTierConfig(name="memory", capacity=4, latency_s=0.0005, eviction=eviction),
            CacheTierConfig(name="disk", capacity=100, latency_s=0.01, eviction=eviction),
        ),
        semantic=SemanticCacheConfig(enabled=False),
    )
    platform = Platform(_tiny_tenants(small_scenario, cache))
    platform.run()
    _check_isolation(platform, semantic_level=None)


def test_semantic_hits_stay_within_tenant(small_scenario: ScenarioConfig) -> None:
    # A low threshold makes the semantic tier answer almost anything, so a lookup that
    # searched other tenants' rows would be caught answering from them.
    cache = CacheConfig(semantic=SemanticCacheConfig(capacity=6, threshold=0.2, latency_s=0.01))
    platform = Platform(_tiny_tenants(small_scenario, cache))
    platform.run()
    _check_isolation(platform, semantic_level=0)
    cols = platform.requests.frame()
    assert cols["false_hit"].any()  # the threshold is loose enough to confuse intents, not tenants
