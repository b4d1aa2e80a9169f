"""Autoscaling under bursty load keeps replica counts within the pool's bounds."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from servegym.sim.config import ControlConfig, FlashCrowd, PoolConfig, ScenarioConfig, WorkloadConfig
from servegym.sim.platform import Platform
from servegym.sim.pool import DRAINING, PROVISIONING, READY, STOPPED, Pool

BURSTY = {
    "mmpp": WorkloadConfig(kind="mmpp", rate_rps=5.0, burst_rate_rps=80.0, mean_calm_s=40.0, mean_burst_s=15.0),
    "flash": WorkloadConfig(
        kind="poisson",
        rate_rps=8.0,
        flash_crowds=(FlashCrowd(start_s=60.0, duration_s=40.0, multiplier=10.0), FlashCrowd(200.0, 30.0, 6.0)),
    ),
}


def _check_pool(pool: Pool) -> None:
    """The pool's counters agree with its replicas' states, and stay within bounds."""
    cfg = pool.cfg
    states = [r.state for r in pool.replicas]
    assert pool.ready == states.count(READY)
    assert pool.provisioning == states.count(PROVISIONING)
    assert pool.draining == states.count(DRAINING)
    assert cfg.min_replicas <= pool.replica_count <= cfg.max_replicas
    assert cfg.min_replicas <= pool.target <= cfg.max_replicas
    assert 0 <= pool.busy <= (pool.ready + pool.draining) * cfg.slots_per_replica
    assert pool.busy == sum(r.busy for r in pool.replicas)
    assert all(0 <= r.busy <= cfg.slots_per_replica for r in pool.replicas)
    assert len(pool.free) == sum(cfg.slots_per_replica - r.busy for r in pool.replicas if r.state == READY)


def _check_lifecycle(pool: Pool, now: float) -> None:
    for r in pool.replicas:
        times = [t for t in (r.provision_s, r.ready_s, r.drain_s, r.stop_s) if not math.isnan(t)]
        assert times == sorted(times), r
        assert all(0.0 <= t <= now for t in times), r
        assert (r.state == STOPPED) == (not math.isnan(r.stop_s)), r
        if r.state == PROVISIONING:
            assert math.isnan(r.ready_s) and math.isnan(r.drain_s), r
        if r.state in (READY, DRAINING):
            assert not math.isnan(r.ready_s), r
        if r.state == DRAINING:
            assert not math.isnan(r.drain_s) and r.busy > 0, r
        if r.state == STOPPED:
            assert r.busy == 0, r


@pytest.mark.parametrize("burst", sorted(BURSTY))
def test_replicas_within_bounds_under_bursts(small_scenario: ScenarioConfig, burst: str) -> None:
    pool_cfg = PoolConfig(
        initial_replicas=3,
        min_replicas=2,
        max_replicas=7,
        slots_per_replica=2,
        max_queue=100,
        queue_timeout_s=20.0,
        cold_start_mean_s=6.0,
        cold_start_cv=0.5,
    )
    scenario = dataclasses.replace(
        small_scenario,
        duration_s=300.0,
        workload=dataclasses.replace(BURSTY[burst], tenants=small_scenario.workload.tenants, embedding_dim=16),
        pool=pool_cfg,
        control=ControlConfig(interval_s=5.0, scaling="target_utilisation", target_utilisation=0.6),
    )
    platform = Platform(scenario)
    for t in np.linspace(1.0, scenario.duration_s, 150):
        platform.run(until=float(t))
        _check_pool(platform.pool)
        _check_lifecycle(platform.pool, platform.now)

    intervals = platform.intervals
    # One interval per control period (whether the one closing exactly at the end counts is not at stake here).
    periods = round(scenario.duration_s / scenario.control.interval_s)
    assert len(intervals) in (periods - 1, periods)
    for m in intervals:
        assert pool_cfg.min_replicas <= m.ready_replicas + m.provisioning_replicas <= pool_cfg.max_replicas, m
        assert pool_cfg.min_replicas <= m.target_replicas <= pool_cfg.max_replicas, m
        assert 0.0 <= m.utilisation <= 1.0 + 1e-12, m
    # The bursts really moved the pool across its whole range, and down again by draining.
    targets = {m.target_replicas for m in intervals}
    assert pool_cfg.max_replicas in targets and pool_cfg.min_replicas in targets
    assert any(not math.isnan(r.drain_s) for r in platform.pool.replicas)


def test_scale_to_clamps_and_cancels_starting_replicas(small_scenario: ScenarioConfig) -> None:
    scenario = dataclasses.replace(
        small_scenario,
        duration_s=50.0,
        pool=PoolConfig(initial_replicas=2, min_replicas=1, max_replicas=5, cold_start_mean_s=20.0, cold_start_cv=0.0),
        control=ControlConfig(scaling="static"),
    )
    platform = Platform(scenario)
    pool = platform.pool
    platform.run(until=1.0)
    assert pool.scale_to(100) == 5  # clamped to max_replicas
    assert (pool.ready, pool.provisioning) == (2, 3)
    platform.run(until=2.0)
    assert pool.scale_to(0) == 1  # clamped to min_replicas: first the starting replicas go
    assert pool.provisioning == 0 and pool.ready + pool.draining >= 1
    cancelled = [r for r in pool.replicas if math.isnan(r.ready_s)]
    assert len(cancelled) == 3
    assert all(r.state == STOPPED and r.stop_s == 2.0 for r in cancelled)
    platform.run(until=30.0)  # after the cold start would have ended: the cancelled replicas stay stopped
    assert all(r.state == STOPPED for r in cancelled)
    _check_pool(pool)
    _check_lifecycle(pool, platform.now)
    assert pool.replica_count == 1
