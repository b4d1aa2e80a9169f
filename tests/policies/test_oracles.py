"""Oracles and their rules: Belady's cache, the oracle router, the clairvoyant scaler's foresight rule.

That the clairvoyant scaler bounds every shipped scaler is tested in tests/experiments/test_oracle_bound.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servegym.envs.features import routing_layout
from servegym.policies import (
    Cheapest,
    DifficultyCascade,
    JoinShortestQueue,
    Policy,
    PolicyController,
    PowerOfTwoChoices,
    RandomRouter,
    RoundRobin,
    StaticScaling,
    Strongest,
    scaling_kwargs,
)
from servegym.sim.cache import LRUStore
from servegym.sim.config import (
    BackendConfig,
    ControlConfig,
    PoolConfig,
    ScenarioConfig,
    TenantConfig,
    TokenLengths,
    WorkloadConfig,
)
from servegym.sim.oracles import ForesightScaler, OracleRouter, belady_hits, lru_hits
from servegym.sim.platform import Platform
from servegym.sim.telemetry import COMPLETED

SHORT_TOKENS = TokenLengths(prompt_mu=5.0, prompt_sigma=0.8, output_mu=3.0, output_sigma=0.6)

# -- Belady and LRU ------------------------------------------------------------------------


def optimum_hits(keys: tuple[int, ...], capacity: int, bypass: bool) -> int:
    """Most hits over every possible eviction (and, with ``bypass``, admission) choice."""

    @functools.cache
    def best(i: int, cache: frozenset[int]) -> int:
        if i == len(keys):
            return 0
        key = keys[i]
        if key in cache:
            return 1 + best(i + 1, cache)
        if len(cache) < capacity:
            return best(i + 1, cache | {key})
        options = [best(i + 1, (cache - {victim}) | {key}) for victim in cache]
        if bypass:
            options.append(best(i + 1, cache))
        return max(options)

    return best(0, frozenset())


@pytest.mark.parametrize("bypass", [False, True])
def test_belady_equals_the_brute_force_optimum_on_every_tiny_stream(bypass: bool) -> None:
    for keys in itertools.product(range(3), repeat=6):
        for capacity in (1, 2):
            assert belady_hits(keys, capacity, bypass=bypass) == optimum_hits(keys, capacity, bypass), (keys, capacity)


@settings(max_examples=30, deadline=None)
@given(
    keys=st.lists(st.integers(0, 5), min_size=0, max_size=11).map(tuple),
    capacity=st.integers(1, 4),
)
def test_belady_equals_the_brute_force_optimum_on_random_small_streams(keys: tuple[int, ...], capacity: int) -> None:
    assert belady_hits(keys, capacity) == optimum_hits(keys, capacity, bypass=False)
    assert belady_hits(keys, capacity, bypass=True) == optimum_hits(keys, capacity, bypass=True)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    zipf_s=st.floats(0.5, 1.5),
    n_keys=st.integers(2, 300),
    capacity=st.integers(1, 60),
    length=st.integers(0, 3000),
)
def test_belady_hits_at_least_lru_on_zipf_streams(
    seed: int, zipf_s: float, n_keys: int, capacity: int, length: int
) -> None:
    weights = np.arange(1, n_keys + 1, dtype=np.float64) ** -zipf_s
    keys = np.random.default_rng(seed).choice(n_keys, size=length, p=weights / weights.sum()).tolist()
    lru, belady, bypass = (
        lru_hits(keys, capacity),
        belady_hits(keys, capacity),
        belady_hits(keys, capacity, bypass=True),
    )
    assert lru <= belady <= bypass <= length - len(set(keys))
    if capacity >= n_keys:  # everything fits: only first sightings miss
        assert lru == belady == length - len(set(keys))


def test_lru_hits_matches_the_simulators_lru_tier() -> None:
    keys = np.random.default_rng(3).zipf(1.3, 5000).tolist()
    store, hits = LRUStore(50), 0
    for key in keys:
        if store.get(key) is not None:
            hits += 1
        else:
            store.put(key, True)
    assert lru_hits(keys, 50) == hits


def test_cache_oracles_reject_a_negative_capacity_and_allow_zero() -> None:
    assert belady_hits([1, 1, 1], 0) == lru_hits([1, 1, 1], 0) == 0
    with pytest.raises(ValueError, match="capacity = -1 is invalid"):
        belady_hits([1], -1)
    with pytest.raises(ValueError, match=r"capacity = 2.5 is invalid"):
        lru_hits([1], 2.5)  # type: ignore[arg-type]


# -- the oracle router ------------------------------------------------------------------------

# No caches, no failures, ample capacity: every request is answered by a backend under every
# router, so requests can be compared one by one across runs (same seed, same requests).
ROUTING = ScenarioConfig(
    name="routing",
    seed=11,
    duration_s=120.0,
    workload=WorkloadConfig(
        rate_rps=10.0,
        tenants=(TenantConfig(name="t", n_intents=500, n_variants=2, tokens=SHORT_TOKENS),),
        embedding_dim=8,
    ),
    backends=(
        BackendConfig(name="cheap", usd_per_mtok_in=0.15, usd_per_mtok_out=0.6, capability=0.35, failure_prob=0.0),
        BackendConfig(
            name="strong",
            ttft_base_s=0.4,
            tpot_base_s=0.03,
            usd_per_mtok_in=5.0,
            usd_per_mtok_out=15.0,
            capability=0.85,
            failure_prob=0.0,
        ),
        BackendConfig(name="medium", usd_per_mtok_in=1.0, usd_per_mtok_out=4.0, capability=0.6, failure_prob=0.0),
    ),
    pool=PoolConfig(initial_replicas=10, min_replicas=1, max_replicas=10, slots_per_replica=4),
    control=ControlConfig(interval_s=10.0, scaling="static"),
)


def test_oracle_router_dominates_every_heuristic_in_quality_and_in_the_price_of_quality() -> None:
    """What "the oracle router's quality-per-cost is never worse than any heuristic's" can soundly mean.

    Read literally (good answers per dollar over the whole run) it is false: always-cheapest
    buys few good answers very cheaply and so has a *higher* ratio than the oracle, which
    pays for the expensive backends that hard requests need. The test asserts that this happens here,
    so the distinction is not hypothetical. What is true, and asserted, for every heuristic
    H on the same requests (same seed, so identical request streams):

    1. Quality dominance, request by request: every request H answers well, the oracle
       answers well; so the oracle's good answers are at least H's.
    2. Price of quality: on every request the oracle answers well, it pays the least that
       any backend would charge for a good answer to it (checked against every backend,
       so against every possible router, not only the seven heuristics).
    3. The ratio form that follows: on the good answers H obtains, the oracle's good
       answers per dollar are at least H's on those same answers, hence at least H's
       good answers per dollar over the whole run.
    """
    oracle = Platform(ROUTING, OracleRouter())
    oracle.run()
    o = oracle.requests.frame(oracle.arrived)
    probe = Platform(ROUTING)
    layout, names = routing_layout(probe), [b.name for b in probe.backends]
    routers: list[Policy] = [
        RandomRouter(layout, names, seed=0),
        RoundRobin(layout, names),
        JoinShortestQueue(layout, names),
        PowerOfTwoChoices(layout, names, seed=0),
        Cheapest(layout, names),
        Strongest(layout, names),
        DifficultyCascade(layout, names),
    ]
    answered = o["outcome"] == COMPLETED
    assert answered.sum() > 0.98 * oracle.arrived > 1000 and oracle.dropped == 0

    # 2. Every backend's token cost and outcome for every request, by the platform's own rules.
    usd_on = np.stack([o["prompt_tokens"] * b.usd_in + o["output_tokens"] * b.usd_out for b in probe.backends])
    good_on = np.stack([o["u_quality"] < np.array([b.p_good(d) for d in o["difficulty"]]) for b in probe.backends])
    cheapest_good_usd = np.where(good_on, usd_on, np.inf).min(axis=0)
    won = answered & o["good"]
    assert np.allclose(o["cost_usd"][won], cheapest_good_usd[won], rtol=1e-12, atol=0.0)
    assert (won == answered & good_on.any(axis=0)).all()  # it misses only what no backend answers well
    # What no backend answers well goes where it costs least: a bad answer either way.
    lost = answered & ~good_on.any(axis=0)
    assert lost.sum() > 0
    assert np.allclose(o["cost_usd"][lost], usd_on.min(axis=0)[lost], rtol=1e-12, atol=0.0)

    good_per_usd, good, token_usd = {}, {}, {}
    for router in routers:
        name = type(router).__name__
        run = Platform(ROUTING, PolicyController(routing=router))
        run.run()
        h = run.requests.frame(run.arrived)
        assert run.arrived == oracle.arrived and run.dropped == 0, name
        for column in ("arrival_s", "prompt_tokens", "output_tokens", "difficulty", "u_quality"):
            assert np.array_equal(h[column], o[column]), (name, column)  # the same requests
        both = answered & (h["outcome"] == COMPLETED)
        assert both.sum() > 0.98 * oracle.arrived, name
        # 1. Quality dominance, request by request.
        bought = both & h["good"]
        assert o["good"][bought].all(), name
        assert oracle.good_answers >= run.good_answers, name
        # 3. The oracle buys H's good answers for no more than H pays for them, let alone in all.
        assert (o["cost_usd"][bought] <= h["cost_usd"][bought] * (1 + 1e-12)).all(), name
        n_bought = bought.sum()
        oracle_rate = n_bought / o["cost_usd"][bought].sum()
        assert oracle_rate >= n_bought / h["cost_usd"][bought].sum() >= run.good_answers / run.token_usd, name
        good_per_usd[name] = run.good_answers / run.token_usd
        good[name], token_usd[name] = run.good_answers, run.token_usd

    # The literal reading is false: always-cheapest gets more good answers per dollar overall.
    assert good_per_usd["Cheapest"] > oracle.good_answers / oracle.token_usd
    # The bound is not vacuous: more good answers than the cheap and the fair routers, and the
    # strongest backend's quality at a fraction of its cost.
    assert oracle.good_answers > max(good["Cheapest"], good["RoundRobin"], good["JoinShortestQueue"])
    assert oracle.token_usd < 0.5 * token_usd["Strongest"]


# -- the clairvoyant scaler's foresight rule --------------------------------------------------

DIURNAL = ScenarioConfig(
    name="diurnal",
    seed=0,
    duration_s=600.0,
    workload=WorkloadConfig(
        kind="diurnal",
        rate_rps=15.0,
        amplitude=0.8,
        period_s=600.0,
        peak_s=300.0,
        tenants=(TenantConfig(name="t", n_intents=2000, n_variants=2, slo_latency_s=3.0, tokens=SHORT_TOKENS),),
        embedding_dim=8,
    ),
    backends=(BackendConfig(name="b", failure_prob=0.0),),
    pool=PoolConfig(
        initial_replicas=4, min_replicas=1, max_replicas=20, slots_per_replica=2, cold_start_mean_s=10.0, max_queue=500
    ),
    control=ControlConfig(interval_s=10.0, scaling="static"),
)


def test_the_foresight_rule_foresees_the_platforms_own_arrivals() -> None:
    scaler = ForesightScaler()
    platform = Platform(DIURNAL, scaler, seed=4)  # a seed other than the scenario's
    platform.run()
    assert len(scaler.arrival_s) == platform.arrived > 1000
    assert np.array_equal(scaler.arrival_s, platform.requests.frame()["arrival_s"])


@pytest.mark.parametrize("cold_start_s", [10.0, 40.0])
def test_the_foresight_rule_beats_static_scaling_at_the_same_cost(cold_start_s: float) -> None:
    # A 40 s cold start spans four intervals: replicas shed now are needed again before new ones are ready.
    scenario = dataclasses.replace(DIURNAL, pool=dataclasses.replace(DIURNAL.pool, cold_start_mean_s=cold_start_s))
    scaler = ForesightScaler()
    platform = Platform(scenario, scaler)
    kpis = platform.run()["all"]
    targets = [m.target_replicas for m in platform.intervals]
    assert min(targets) < max(targets)  # it follows the day
    # As many replicas on average, held fixed: the same bill, and a queue through the peak.
    replicas = math.ceil(kpis["mean_replicas"])
    static = Platform(scenario, PolicyController(scaling=StaticScaling(**scaling_kwargs(scenario), replicas=replicas)))
    baseline = static.run()["all"]
    assert kpis["slo_attainment"] >= baseline["slo_attainment"]
    assert kpis["slo_attainment"] > 0.97
    assert kpis["cost_usd"] <= 1.05 * baseline["cost_usd"]


def test_the_foresight_rule_keeps_replicas_within_bounds() -> None:
    tight = dataclasses.replace(DIURNAL, pool=dataclasses.replace(DIURNAL.pool, min_replicas=3, max_replicas=6))
    platform = Platform(tight, ForesightScaler())
    platform.run()
    targets = [m.target_replicas for m in platform.intervals]
    assert all(3 <= t <= 6 for t in targets)
    assert max(targets) == 6 and min(targets) == 3  # the peak wants more and the night less
    assert all(m.ready_replicas + m.provisioning_replicas <= 6 for m in platform.intervals)
