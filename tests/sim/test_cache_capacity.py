"""No cache tier ever holds more than its capacity: stores alone, and inside a running platform."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servegym.sim.cache import SemanticTier, make_store
from servegym.sim.config import (
    CacheConfig,
    CacheTierConfig,
    ConfigError,
    ScenarioConfig,
    SemanticCacheConfig,
    TenantConfig,
)
from servegym.sim.platform import Platform

POLICIES = ("lru", "lfu", "fifo", "s3fifo")

operations = st.lists(
    st.tuples(st.sampled_from(("put", "get", "discard")), st.integers(min_value=0, max_value=30)),
    max_size=300,
)


@settings(max_examples=30, deadline=None)
@given(policy=st.sampled_from(POLICIES), capacity=st.integers(min_value=1, max_value=12), ops=operations)
def test_store_never_exceeds_capacity(policy: str, capacity: int, ops: list[tuple[str, int]]) -> None:
    store = make_store(policy, capacity)
    last_value: dict[int, tuple[int, int]] = {}  # key -> the last value put (a store must not invent values)
    inserted = discarded = 0
    for step, (op, key) in enumerate(ops):
        if op == "put":
            inserted += key not in store
            value = (key, step)
            store.put(key, value)
            last_value[key] = value
            assert key in store  # the key just written survives its own insertion
        elif op == "get":
            value = store.get(key)
            assert (value is not None) == (key in store)
            if value is not None:
                assert value == last_value[key]
        else:
            discarded += key in store
            store.discard(key)
            assert key not in store
        assert len(store) <= capacity
        # Entries are conserved: what went in is still there, was evicted, or was discarded.
        assert len(store) == inserted - store.evictions - discarded
        # The read-only view the platform's lookups test membership on is the store's content.
        assert sorted(store.entries) == sorted(k for k in range(31) if k in store)
        assert all(store.entries[k] == last_value[k] for k in store.entries)


@settings(max_examples=30, deadline=None)
@given(capacity=st.integers(min_value=1, max_value=10), ops=operations)
def test_lru_store_matches_an_ordered_dict(capacity: int, ops: list[tuple[str, int]]) -> None:
    store = make_store("lru", capacity)
    model: OrderedDict[int, int] = OrderedDict()
    for step, (op, key) in enumerate(ops):
        if op == "put":
            store.put(key, step)
            if key in model:
                model.move_to_end(key)
            elif len(model) >= capacity:
                model.popitem(last=False)
            model[key] = step
        elif op == "get":
            assert store.get(key) == model.get(key)
            if key in model:
                model.move_to_end(key)
        else:
            store.discard(key)
            model.pop(key, None)
        assert sorted(k for k in range(31) if k in store) == sorted(model)


def test_unknown_eviction_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'mru' is unknown: must be one of lru, fifo, lfu, s3fifo"):
        make_store("mru", 3)


@settings(max_examples=25, deadline=None)
@given(
    weights=st.lists(st.floats(min_value=0.05, max_value=5.0), min_size=1, max_size=4),
    spare=st.integers(min_value=0, max_value=8),
    keys=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), max_size=200),
)
def test_semantic_tier_never_exceeds_capacity(weights: list[float], spare: int, keys: list[tuple[int, int]]) -> None:
    capacity = len(weights) + spare  # at least one row per tenant; see the test below for fewer
    dim = 8
    tier = SemanticTier(SemanticCacheConfig(capacity=capacity), weights, dim)
    assert sum(tier.capacities) <= capacity
    # As in the platform, a key (tenant, intent, phrasing) always comes with the same embedding.
    embedding = np.random.default_rng(0).standard_normal((len(weights), 41, dim)).astype(np.float32)
    embedding /= np.linalg.norm(embedding, axis=-1, keepdims=True)
    for step, (tenant, key) in enumerate(keys):
        tenant %= len(weights)
        query = embedding[tenant, key]
        tier.put(tenant, key, query, key, True, float(step))
        row = tier.lookup(tenant, query, float(step))
        assert row >= 0 and tier.key_of[tenant][row] == key  # what was just stored is found, in its tenant
        assert len(tier) <= capacity
        assert len(tier) == sum(len(rows) for rows in tier.row_of)
        assert all(len(rows) <= cap for rows, cap in zip(tier.row_of, tier.capacities, strict=True))


def test_semantic_capacity_smaller_than_tenant_count_is_rejected(small_scenario: ScenarioConfig) -> None:
    """Each tenant owns a partition of at least one row, so fewer rows than tenants cannot hold."""
    tenants = tuple(TenantConfig(name=f"t{k}", n_intents=20, n_variants=1) for k in range(3))
    with pytest.raises(ConfigError, match=r"cache\.semantic\.capacity = 2 is invalid: .*number of tenants \(3\)"):
        dataclasses.replace(
            small_scenario,
            workload=dataclasses.replace(small_scenario.workload, tenants=tenants),
            cache=CacheConfig(semantic=SemanticCacheConfig(capacity=2)),
        )
    # A disabled semantic tier has no partitions to fit.
    dataclasses.replace(
        small_scenario,
        workload=dataclasses.replace(small_scenario.workload, tenants=tenants),
        cache=CacheConfig(semantic=SemanticCacheConfig(enabled=False, capacity=2)),
    )


@pytest.mark.parametrize("policy", POLICIES)
def test_platform_tiers_stay_within_capacity(small_scenario: ScenarioConfig, policy: str) -> None:
    tiers = (
        CacheTierConfig(name="memory", capacity=5, latency_s=0.0005, eviction=policy),
        CacheTierConfig(name="redis", capacity=20, latency_s=0.002, eviction=policy, ttl_s=15.0),
        CacheTierConfig(name="disk", capacity=50, latency_s=0.01, eviction=policy),
    )
    scenario = dataclasses.replace(
        small_scenario,
        duration_s=60.0,
        workload=dataclasses.replace(small_scenario.workload, rate_rps=60.0),
        cache=CacheConfig(tiers=tiers, semantic=SemanticCacheConfig(capacity=7, threshold=0.95), warm_top_intents=30),
    )
    platform = Platform(scenario)
    assert platform.semantic is not None
    for t in np.linspace(0.25, scenario.duration_s, 120):
        platform.run(until=float(t))
        for tier in platform.tiers:
            assert len(tier) <= tier.cfg.capacity, (tier.name, t)
        assert len(platform.semantic) <= scenario.cache.semantic.capacity
    # The tiers were really under pressure: every one filled up and evicted.
    for tier in platform.tiers:
        assert len(tier) == tier.cfg.capacity or tier.cfg.ttl_s is not None
        assert tier.store.evictions > 0, tier.name
    assert platform.semantic.evictions > 0
    assert len(platform.semantic) == sum(platform.semantic.capacities)


def test_an_identical_phrasing_meets_a_threshold_of_one() -> None:
    """A unit vector's float32 product with itself can round below 1: it must still match at 1.0."""
    rng = np.random.default_rng(0)
    for _ in range(1000):
        query = rng.standard_normal(32).astype(np.float32)
        query /= np.linalg.norm(query)
        if query.dot(query) < 1.0:
            break
    assert query.dot(query) < 1.0  # the case is real, not hypothetical
    tier = SemanticTier(SemanticCacheConfig(capacity=4, threshold=1.0), [1.0], 32)
    tier.put(0, 7, query, 3, True, 0.0)
    assert tier.lookup(0, query, 1.0) >= 0
    other = rng.standard_normal(32).astype(np.float32)
    assert tier.lookup(0, other / np.linalg.norm(other), 1.0) == -1


def test_a_promoted_copy_never_outlives_the_entry_it_copies(small_scenario: ScenarioConfig) -> None:
    """A hit in a slower tier is copied into the faster ones with their TTL, capped at the original's."""
    tiers = (
        CacheTierConfig(name="memory", capacity=10, latency_s=0.001, ttl_s=10.0),
        CacheTierConfig(name="redis", capacity=10, latency_s=0.002, ttl_s=100.0),
    )
    cache = CacheConfig(tiers=tiers, semantic=SemanticCacheConfig(enabled=False), promote_on_hit=True)
    platform = Platform(dataclasses.replace(small_scenario, cache=cache))
    R = platform.requests
    key, tenant, intent = R.key[0], R.tenant[0], R.intent[0]
    memory, redis = platform.tiers
    redis.put(key, (tenant, intent, True, 100.0), 0.0)  # written at 0 s with redis's 100 s TTL
    platform.env._now = 95.0  # the first request arrives at 95 s: a redis hit, promoted to memory
    platform._on_arrival(0)
    assert R.hit_level[0] == 1
    assert memory.store.get(key)[3] == 100.0  # not 95 + 10
