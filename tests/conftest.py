"""Shared small scenarios for the simulator tests.

Every scenario here runs in well under a second. They are session-scoped because
configurations are frozen dataclasses (nothing can mutate them) and because hypothesis
refuses function-scoped fixtures.
"""

from __future__ import annotations

import pytest

from servegym.sim.config import (
    BackendConfig,
    CacheConfig,
    CacheTierConfig,
    ControlConfig,
    FaultConfig,
    PoolConfig,
    ScenarioConfig,
    SemanticCacheConfig,
    TenantConfig,
    TokenLengths,
    WorkloadConfig,
)

# Short outputs keep service times around a second, so short runs see many completions.
SHORT_TOKENS = TokenLengths(prompt_mu=5.0, prompt_sigma=0.8, output_mu=3.0, output_sigma=0.6)


@pytest.fixture(scope="session")
def small_scenario() -> ScenarioConfig:
    """Two tenants, two backends, two exact tiers plus a semantic tier, autoscaled, 120 s."""
    return ScenarioConfig(
        name="small",
        seed=3,
        duration_s=120.0,
        workload=WorkloadConfig(
            kind="poisson",
            rate_rps=30.0,
            tenants=(
                TenantConfig(name="chat", weight=0.6, n_intents=300, n_variants=3, zipf_s=1.0, tokens=SHORT_TOKENS),
                TenantConfig(name="code", weight=0.4, n_intents=200, n_variants=2, zipf_s=0.9, tokens=SHORT_TOKENS),
            ),
            embedding_dim=16,
        ),
        backends=(
            BackendConfig(name="cheap", usd_per_mtok_in=0.15, usd_per_mtok_out=0.6, capability=0.4),
            BackendConfig(
                name="strong",
                ttft_base_s=0.4,
                tpot_base_s=0.03,
                usd_per_mtok_in=5.0,
                usd_per_mtok_out=15.0,
                capability=0.85,
            ),
        ),
        pool=PoolConfig(
            initial_replicas=4,
            min_replicas=1,
            max_replicas=10,
            slots_per_replica=2,
            max_queue=200,
            queue_timeout_s=10.0,
            cold_start_mean_s=8.0,
            usd_per_replica_hour=0.9,
        ),
        cache=CacheConfig(
            tiers=(
                CacheTierConfig(name="memory", capacity=40, latency_s=0.0005, eviction="lru"),
                CacheTierConfig(name="redis", capacity=150, latency_s=0.002, eviction="s3fifo", ttl_s=60.0),
            ),
            semantic=SemanticCacheConfig(enabled=True, capacity=60, latency_s=0.01, threshold=0.9),
        ),
        control=ControlConfig(interval_s=10.0, scaling="target_utilisation", target_utilisation=0.7),
    )


@pytest.fixture(scope="session")
def stressed_scenario(small_scenario: ScenarioConfig) -> ScenarioConfig:
    """The small scenario overloaded: a tiny queue with a short timeout, failing calls and an outage.

    Every way a request can end happens here: completion, queue full, queue timeout,
    backend error (random and during the outage) and backend timeout.
    """
    return ScenarioConfig(
        name="stressed",
        seed=5,
        duration_s=120.0,
        workload=small_scenario.workload,
        backends=(
            BackendConfig(name="cheap", failure_prob=0.05, timeout_s=2.0, capability=0.4),
            BackendConfig(name="strong", ttft_base_s=0.4, tpot_base_s=0.03, failure_prob=0.02, capability=0.85),
        ),
        pool=PoolConfig(
            initial_replicas=2,
            min_replicas=1,
            max_replicas=3,
            slots_per_replica=2,
            max_queue=8,
            queue_timeout_s=1.5,
            cold_start_mean_s=5.0,
        ),
        cache=small_scenario.cache,
        faults=(FaultConfig(kind="backend_outage", target="strong", start_s=30.0, duration_s=20.0),),
        control=ControlConfig(interval_s=10.0, scaling="target_utilisation"),
    )
