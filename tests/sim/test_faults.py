"""Scheduled incidents change exactly what they should, when they should.

Each faulty run is compared with the same scenario and seed without the fault (common
random numbers): the pool is large enough that no request ever waits, so every request
starts on arrival, routing order is the same, and any difference is the fault's doing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
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
from servegym.sim.platform import Platform
from servegym.sim.telemetry import FAILED_ERROR, IN_FLIGHT, Incident

SLOWDOWN = FaultConfig(kind="backend_slowdown", target="a", start_s=40.0, duration_s=30.0, factor=3.0)
OUTAGE = FaultConfig(kind="backend_outage", target="b", start_s=100.0, duration_s=20.0, outage_error_s=0.2)


@pytest.fixture(scope="module")
def baseline_scenario() -> ScenarioConfig:
    return ScenarioConfig(
        name="faults",
        seed=21,
        duration_s=150.0,
        workload=WorkloadConfig(
            rate_rps=10.0,
            tenants=(TenantConfig(n_intents=50, tokens=TokenLengths(prompt_mu=5.0, output_mu=3.0)),),
            embedding_dim=4,
        ),
        # No concurrency slope: a call's duration must not depend on what else the fault changed.
        backends=(
            BackendConfig(name="a", tpot_concurrency_slope=0.0, failure_prob=0.05, timeout_s=1e6),
            BackendConfig(name="b", tpot_concurrency_slope=0.0, ttft_base_s=0.1, timeout_s=1e6),
        ),
        pool=PoolConfig(initial_replicas=20, min_replicas=20, max_replicas=20, slots_per_replica=8),
        cache=CacheConfig(semantic=SemanticCacheConfig(enabled=False)),
        control=ControlConfig(scaling="static", routing="round_robin"),
    )


def _run(scenario: ScenarioConfig) -> tuple[Platform, dict[str, np.ndarray]]:
    platform = Platform(scenario)
    platform.run()
    cols = platform.requests.frame()
    called = cols["backend"] >= 0
    assert np.array_equal(cols["start_s"][called], cols["arrival_s"][called])  # nobody waited
    return platform, cols


def test_backend_slowdown_and_outage(baseline_scenario: ScenarioConfig) -> None:
    _, base = _run(baseline_scenario)
    faulty, cols = _run(dataclasses.replace(baseline_scenario, faults=(SLOWDOWN, OUTAGE)))
    assert faulty.incidents == [
        Incident("backend_slowdown", "a", 40.0, 70.0),
        Incident("backend_outage", "b", 100.0, 120.0),
    ]
    assert np.array_equal(cols["backend"], base["backend"])
    finished = (cols["outcome"] != IN_FLIGHT) & (base["outcome"] != IN_FLIGHT) & (cols["backend"] >= 0)
    duration = cols["end_s"] - cols["start_s"]
    base_duration = base["end_s"] - base["start_s"]
    start = cols["start_s"]

    slowed = finished & (cols["backend"] == 0) & (start >= 40.0) & (start < 70.0)
    down = finished & (cols["backend"] == 1) & (start >= 100.0) & (start < 120.0)
    untouched = finished & ~slowed & ~down
    assert slowed.sum() > 50 and down.sum() > 50

    np.testing.assert_allclose(duration[slowed], 3.0 * base_duration[slowed], rtol=1e-9)
    assert np.array_equal(cols["outcome"][slowed], base["outcome"][slowed])
    assert np.all(cols["outcome"][down] == FAILED_ERROR)
    np.testing.assert_allclose(duration[down], 0.2, rtol=1e-9)
    assert np.all(cols["tokens_in"][down] == 0) and np.all(cols["cost_usd"][down] == 0.0)
    np.testing.assert_allclose(duration[untouched], base_duration[untouched], rtol=1e-9, atol=1e-12)
    for name in ("outcome", "good", "tokens_in", "tokens_out"):
        assert np.array_equal(cols[name][untouched], base[name][untouched]), name


def test_overlapping_slowdowns_multiply(baseline_scenario: ScenarioConfig) -> None:
    second = dataclasses.replace(SLOWDOWN, start_s=55.0, duration_s=30.0, factor=2.0)
    _, base = _run(baseline_scenario)
    _, cols = _run(dataclasses.replace(baseline_scenario, faults=(SLOWDOWN, second)))
    on_a = (cols["backend"] == 0) & (cols["outcome"] != IN_FLIGHT)
    ratio = (cols["end_s"] - cols["start_s"]) / (base["end_s"] - base["start_s"])
    start = cols["start_s"]
    for lo, hi, factor in ((0, 40, 1.0), (40, 55, 3.0), (55, 70, 6.0), (70, 85, 2.0), (85, 150, 1.0)):
        window = on_a & (start >= lo) & (start < hi)
        assert window.any()
        np.testing.assert_allclose(ratio[window], factor, rtol=1e-9, err_msg=f"[{lo}, {hi})")


def test_cache_outages_stop_hits_and_writes(baseline_scenario: ScenarioConfig) -> None:
    scenario = dataclasses.replace(
        baseline_scenario,
        cache=CacheConfig(
            tiers=(CacheTierConfig(name="memory", capacity=20, latency_s=0.001),),
            semantic=SemanticCacheConfig(capacity=30, threshold=0.95),
        ),
        faults=(
            FaultConfig(kind="cache_outage", target="memory", start_s=30.0, duration_s=30.0),
            FaultConfig(kind="cache_outage", target="semantic", start_s=90.0, duration_s=30.0),
        ),
    )
    platform = Platform(scenario)
    tenant = scenario.workload.tenants[0]
    keys = range(tenant.n_intents * tenant.n_variants)
    platform.run(until=30.0)
    memory_before = [k for k in keys if k in platform.tiers[0].store]
    platform.run(until=60.0)
    assert [k for k in keys if k in platform.tiers[0].store] == memory_before  # no writes while down
    platform.run()
    cols = platform.requests.frame()
    t, level = cols["arrival_s"], cols["hit_level"]
    memory_down = (t >= 30.0) & (t < 60.0)
    semantic_down = (t >= 90.0) & (t < 120.0)
    assert not np.any(level[memory_down] == 0)
    assert not np.any(level[semantic_down] == 1)
    assert np.any(level[memory_down] == 1)  # the semantic tier still answered
    assert np.any(level[semantic_down] == 0)
    assert np.any(level[~memory_down & ~semantic_down] == 0) and np.any(level[~memory_down & ~semantic_down] == 1)
