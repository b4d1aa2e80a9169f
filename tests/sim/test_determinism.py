"""Same seed, same run; different seed, different run; and common random numbers across policies."""

from __future__ import annotations

import dataclasses

import numpy as np

from servegym.sim.config import ControlConfig, ScenarioConfig
from servegym.sim.platform import Platform
from servegym.sim.telemetry import KPI_COLUMNS, compute_kpis
from tests.kpis import same_kpis

REQUEST_INPUTS = ("arrival_s", "tenant", "intent", "variant", "prompt_tokens", "output_tokens", "difficulty")
PER_REQUEST_UNIFORMS = ("u_service", "z_service", "u_quality", "u_failure")


def test_same_seed_gives_identical_kpis_and_records(stressed_scenario: ScenarioConfig) -> None:
    first, second = Platform(stressed_scenario), Platform(stressed_scenario)
    kpis_first, kpis_second = first.run(), second.run()
    assert same_kpis(kpis_first, kpis_second)
    assert first.arrived == second.arrived > 1000
    cols_first, cols_second = first.requests.frame(), second.requests.frame()
    assert cols_first.keys() == cols_second.keys()
    for name in cols_first:
        assert np.array_equal(cols_first[name], cols_second[name], equal_nan=cols_first[name].dtype.kind == "f"), name
    # repr is exact for floats and treats nan alike, so it compares dataclasses holding nan.
    assert repr(first.intervals) == repr(second.intervals)
    assert repr(first.pool.replicas) == repr(second.pool.replicas)


def test_simpys_own_loop_runs_the_platform_identically(stressed_scenario: ScenarioConfig) -> None:
    """Per-request events are plain tuples in SimPy's queue: env.run() must process them as run() does."""
    ours, simpys = Platform(stressed_scenario), Platform(stressed_scenario)
    for until in (10.0, 60.0, stressed_scenario.duration_s):  # pausing and resuming, as environments do
        ours.run(until=until)
        simpys.env.run(until=until)
    assert same_kpis(ours.kpis(), simpys.kpis())
    a, b = ours.requests.frame(), simpys.requests.frame()
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), name
    # The same intervals, and Platform.run() also records the last one at the scenario's end.
    assert repr(ours.intervals[:-1]) == repr(simpys.intervals)
    assert len(ours.intervals) == len(simpys.intervals) + 1 and ours.intervals[-1].time_s == ours.now


def test_kpis_read_only_the_kpi_columns(stressed_scenario: ScenarioConfig) -> None:
    platform = Platform(stressed_scenario)
    platform.run()
    tenants = stressed_scenario.workload.tenants
    args = {
        "tenant_names": [t.name for t in tenants],
        "tenant_slo_s": [t.slo_latency_s for t in tenants],
        "level_names": platform.level_names,
        "duration_s": platform.now,
        "replica_usd": platform.replica_usd(),
        "storage_usd": platform.storage_usd(),
        "replica_seconds": platform.pool.replica_seconds(),
    }
    everything = compute_kpis(platform.requests.frame(), **args)
    assert same_kpis(compute_kpis(platform.requests.frame(columns=KPI_COLUMNS), **args), everything)


def test_seed_argument_draws_requests_in_the_scenarios_world(small_scenario: ScenarioConfig) -> None:
    """The run's seed draws the requests; the intent catalogues (the world) stay the scenario seed's."""
    by_argument = Platform(small_scenario, seed=11)
    by_scenario = Platform(dataclasses.replace(small_scenario, seed=11))
    scenario_world = Platform(small_scenario)
    for platform in (by_argument, by_scenario, scenario_world):
        platform.run(until=30.0)
    a, b = by_argument.requests.frame(), by_scenario.requests.frame()
    assert by_argument.arrived == by_scenario.arrived
    for name in ("arrival_s", "tenant", "intent", "variant", "prompt_tokens", "output_tokens", *PER_REQUEST_UNIFORMS):
        assert np.array_equal(a[name], b[name]), name
    for ours, theirs in zip(by_argument.workload.catalogues, scenario_world.workload.catalogues, strict=True):
        assert np.array_equal(ours.embeddings, theirs.embeddings)
        assert np.array_equal(ours.difficulty, theirs.difficulty)
    assert not np.array_equal(by_argument.workload.embeddings[0], by_scenario.workload.embeddings[0])


def test_different_seeds_give_different_kpis(small_scenario: ScenarioConfig) -> None:
    a = Platform(small_scenario, seed=1)
    b = Platform(small_scenario, seed=2)
    kpis_a, kpis_b = a.run(), b.run()
    assert not same_kpis(kpis_a, kpis_b)
    assert kpis_a["all"]["latency_mean_s"] != kpis_b["all"]["latency_mean_s"]
    n = min(a.arrived, b.arrived)
    assert not np.array_equal(a.requests.frame(n)["arrival_s"], b.requests.frame(n)["arrival_s"])


def test_routing_rules_see_the_same_requests(small_scenario: ScenarioConfig) -> None:
    """Common random numbers: the request stream does not depend on the policy."""
    runs = []
    for rule in ("round_robin", "cheapest"):
        scenario = dataclasses.replace(small_scenario, control=ControlConfig(routing=rule, scaling="static"))
        platform = Platform(scenario, seed=7)
        platform.run()
        runs.append(platform)
    round_robin, cheapest = runs
    assert round_robin.arrived == cheapest.arrived
    rr, ch = round_robin.requests.frame(), cheapest.requests.frame()
    for name in REQUEST_INPUTS + PER_REQUEST_UNIFORMS + ("key",):
        assert np.array_equal(rr[name], ch[name]), name
    # The policies really differed: cheapest sends every call to backend 0, round robin does not.
    called = ch["backend"] >= 0
    assert np.all(ch["backend"][called] == 0)
    assert np.any(rr["backend"] == 1)
    assert not np.array_equal(rr["end_s"], ch["end_s"], equal_nan=True)
