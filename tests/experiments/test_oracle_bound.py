"""The clairvoyant scaler is a bound: no shipped scaler beats it on the objective, wherever it runs.

:class:`~servegym.sim.oracles.ClairvoyantScaler` plans in hindsight over replica
schedules, its search warm-started with the schedule every shipped scaler produces. Its
guarantee rests on two facts, checked here through the path users take
(:func:`servegym.experiments.evaluate.simulate` and ``run_policy`` on ``Autoscaling-v0``):
a recorded schedule replayed open-loop repeats its run bit for bit, and so, on every
shipped scenario (shortened), on random scenarios and on replayed traces, no shipped
scaler at its shipped defaults, nor the built-in rule, has a lower objective than the
oracle on the same seed. The oracle router is a privileged heuristic, not a bound: a
heuristic beats it, and :data:`~servegym.sim.oracles.ORACLE_KINDS` says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servegym.experiments.evaluate import DECISIONS, ORACLES, _controller, run_policy, simulate
from servegym.policies import POLICIES
from servegym.sim.config import (
    BackendConfig,
    ControlConfig,
    PoolConfig,
    ScenarioConfig,
    TenantConfig,
    TokenLengths,
    WorkloadConfig,
    apply_overrides,
    load_scenario,
)
from servegym.sim.oracles import ORACLE_KINDS, ClairvoyantScaler, _Recorder, _Replay
from servegym.sim.platform import Platform
from tests.kpis import same_kpis

ENV = "Autoscaling-v0"
# Every shipped scaler that runs at its shipped defaults (scheduled has no default schedule), and the built-in rule.
SCALERS = [*sorted(n for n, d in DECISIONS.items() if d == "scaling" and n in POLICIES and n != "scheduled"), "builtin"]
# The shipped suite cut to 6 minutes, each scenario's feature (day, bursts, crowd) scaled into the cut.
SHORT = {
    "steady": [],
    "diurnal": ["workload.period_s=360", "workload.peak_s=180", "workload.tenants.0.drift_every_s=120"],
    "bursty": ["workload.mean_calm_s=60", "workload.mean_burst_s=30"],
    "flash_crowd": ["workload.flash_crowds.0.start_s=120", "workload.flash_crowds.0.duration_s=90"],
    "multi_tenant": [],
    "default": [],
}
AZURE_CODE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "AzureLLMInferenceTrace_code.csv"
SHORT_TOKENS = TokenLengths(prompt_mu=5.0, prompt_sigma=0.8, output_mu=3.0, output_sigma=0.6)


def _short(name: str) -> ScenarioConfig:
    return apply_overrides(load_scenario(name), ["duration_s=360", *SHORT[name]])


def assert_bound(
    scenario: ScenarioConfig, seed: int, params: Mapping[str, Mapping[str, Any]] | None = None
) -> ClairvoyantScaler:
    """The oracle's objective is no higher than any shipped scaler's on ``seed``, and its run is its plan."""
    platform = simulate("clairvoyant", ENV, scenario, seed, params)
    oracle = platform.controller
    assert isinstance(oracle, ClairvoyantScaler)
    oracle_usd = platform.kpis()["all"]["objective_usd"]
    # The run replays the plan: its objective is, bit for bit, the one the search measured.
    assert oracle_usd == oracle.objective_usd
    pool = scenario.pool
    assert all(pool.min_replicas <= m.target_replicas <= pool.max_replicas for m in platform.intervals)
    scalers = SCALERS + sorted(set(oracle.candidates) - set(SCALERS))
    assert set(oracle.scores) == {"foresight", *scalers}
    for name in scalers:
        usd = run_policy(name, ENV, scenario, seed, params)["all"]["objective_usd"]
        assert oracle_usd <= usd, (scenario.name, seed, name, oracle_usd, usd)
        # The warm start ran the scaler as users do, unless it stopped it as certain to lose.
        assert oracle.scores[name] == usd or (oracle.scores[name] == math.inf and usd > oracle_usd), name
    assert oracle.simulations <= len(oracle.scores) + oracle.budget
    return oracle


def test_oracle_kinds_name_every_oracle_and_only_the_clairvoyant_scaler_is_a_bound() -> None:
    assert set(ORACLE_KINDS) == set(ORACLES)
    assert ORACLE_KINDS == {"clairvoyant": "bound", "oracle_router": "privileged heuristic"}


@pytest.mark.parametrize("scaler", [s for s in SCALERS if s != "builtin"])
def test_a_recorded_schedule_replays_its_run_bit_for_bit(scaler: str) -> None:
    scenario = _short("bursty")
    recorded = Platform(scenario, seed=1)
    recorder = _Recorder(_controller(scaler, ENV, recorded, {}, 1) or recorded.controller, math.inf)
    recorded.controller = recorder
    kpis = recorded.run()
    assert len(recorder.targets) == len(recorded.intervals) - 1  # the last interval asks for no decision
    replayed = Platform(scenario, _Replay(tuple(recorder.targets)), seed=1)
    assert same_kpis(replayed.run(), kpis)
    assert [m.target_replicas for m in replayed.intervals] == [m.target_replicas for m in recorded.intervals]


@pytest.mark.parametrize("scenario", sorted(SHORT))
def test_no_shipped_scaler_beats_the_oracle_on_a_shipped_scenario(scenario: str) -> None:
    oracle = assert_bound(_short(scenario), seed=1)
    if scenario in ("bursty", "flash_crowd"):
        # Where load jumps, the search's lead moves (replicas ordered a cold start ahead) pay:
        # the plan is well below the best warm-start schedule.
        assert oracle.moves and oracle.objective_usd < 0.9 * min(oracle.scores.values())


@st.composite
def scenarios(draw: st.DrawFn) -> ScenarioConfig:
    """Small random scenarios: arrivals steady, bursty or daily; a pool with or without cold starts."""
    kind = draw(st.sampled_from(["poisson", "mmpp", "diurnal"]))
    rate = draw(st.floats(2.0, 12.0))
    workload = WorkloadConfig(
        kind=kind,
        rate_rps=rate,
        burst_rate_rps=rate * draw(st.floats(2.0, 5.0)),
        mean_calm_s=60.0,
        mean_burst_s=20.0,
        amplitude=0.7,
        period_s=240.0,
        peak_s=120.0,
        tenants=(TenantConfig(name="t", n_intents=500, n_variants=2, slo_latency_s=4.0, tokens=SHORT_TOKENS),),
        embedding_dim=8,
    )
    low = draw(st.integers(0, 2))
    high = draw(st.integers(max(low, 1) + 1, 12))
    pool = PoolConfig(
        initial_replicas=draw(st.integers(low, high)),
        min_replicas=low,
        max_replicas=high,
        slots_per_replica=draw(st.integers(1, 4)),
        max_queue=200,
        queue_timeout_s=20.0,
        cold_start_mean_s=draw(st.sampled_from([0.0, 10.0, 30.0])),
        cold_start_cv=draw(st.sampled_from([0.0, 0.5])),
    )
    control = ControlConfig(
        interval_s=draw(st.sampled_from([5.0, 10.0, 15.0])),
        scaling=draw(st.sampled_from(["static", "target_utilisation"])),
        routing=draw(st.sampled_from(["round_robin", "random", "cheapest"])),
    )
    backends = (
        BackendConfig(name="small", failure_prob=0.01),
        BackendConfig(name="large", capability=0.9, usd_per_mtok_out=12.0),
    )
    return ScenarioConfig(
        name="random",
        seed=draw(st.integers(0, 100)),
        duration_s=240.0,
        workload=workload,
        backends=backends,
        pool=pool,
        control=control,
    )


@settings(max_examples=6, deadline=None)
@given(scenario=scenarios(), seed=st.integers(0, 1000))
def test_no_shipped_scaler_beats_the_oracle_on_a_random_scenario(scenario: ScenarioConfig, seed: int) -> None:
    assert_bound(scenario, seed)


def _write_trace(path: Path, seed: int) -> None:
    """A bursty trace in the Azure schema: 4 minutes of calm with a surge in the middle."""
    rng = np.random.default_rng(seed)
    calm = np.cumsum(rng.exponential(1 / 6.0, 1500))
    calm = calm[calm < 240.0]
    surge = 90.0 + np.cumsum(rng.exponential(1 / 24.0, 1500))
    times = np.sort(np.concatenate([calm, surge[surge < 150.0]]))
    rows = [
        f"2023-11-16 18:{17 + int(t // 60):02d}:{t % 60:010.7f},{rng.integers(50, 3000)},{rng.integers(5, 300)}"
        for t in times
    ]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")


def test_no_shipped_scaler_beats_the_oracle_on_a_replayed_trace(tmp_path: Path) -> None:
    trace = tmp_path / "surge.csv"
    _write_trace(trace, seed=5)
    scenario = load_scenario("trace_replay", [f"workload.trace_path={trace}", "workload.trace_speedup=1.0"])
    assert 240.0 <= scenario.duration_s <= 255.0
    assert_bound(scenario, seed=2)


@pytest.mark.skipif(not AZURE_CODE.exists(), reason="the shared Azure trace is not available here")
def test_no_shipped_scaler_beats_the_oracle_on_the_azure_code_trace() -> None:
    # The trace on which the foresight rule alone lost to HPA and KPA (issue 13).
    assert_bound(load_scenario("trace_replay", [f"workload.trace_path={AZURE_CODE}"]), seed=0)


def test_the_oracle_also_bounds_scalers_at_the_arguments_the_evaluation_gives() -> None:
    scenario = _short("flash_crowd")
    params = {"hpa": {"target_utilisation": 0.5}, "scheduled": {"schedule": [[0, 6], [120, 30], [210, 8]]}}
    oracle = _controller("clairvoyant", ENV, Platform(scenario, seed=0), params, 0)
    assert isinstance(oracle, ClairvoyantScaler) and "scheduled" in oracle.candidates
    bare = _controller("clairvoyant", ENV, Platform(scenario, seed=0), {"scheduled": {"schedule": "???"}}, 0)
    assert isinstance(bare, ClairvoyantScaler) and sorted(bare.candidates) == sorted(set(SCALERS) - {"builtin"})
    assert_bound(scenario, seed=0, params=params)
    with pytest.raises(ValueError, match="clairvoyant warm-starts with kpa, whose arguments are wrong"):
        _controller("clairvoyant", ENV, Platform(scenario, seed=0), {"kpa": {"stable_window_s": -1.0}}, 0)


def test_the_oracle_router_is_a_privileged_heuristic_that_a_heuristic_beats() -> None:
    scenario = apply_overrides(load_scenario("steady"), ["duration_s=300"])
    oracle = run_policy("oracle_router", "Routing-v0", scenario, 0)["all"]["objective_usd"]
    cheapest = run_policy("cheapest", "Routing-v0", scenario, 0)["all"]["objective_usd"]
    assert cheapest < oracle and ORACLE_KINDS["oracle_router"] != "bound"


def test_a_budget_of_zero_replays_the_best_warm_start_schedule() -> None:
    scenario = dataclasses.replace(_short("bursty"), duration_s=240.0)
    platform = simulate("clairvoyant", ENV, scenario, 3, {"clairvoyant": {"budget": 0}})
    oracle = platform.controller
    assert isinstance(oracle, ClairvoyantScaler)
    assert oracle.moves == [] and oracle.simulations == len(oracle.scores)
    assert platform.kpis()["all"]["objective_usd"] == oracle.objective_usd == min(oracle.scores.values())
    with pytest.raises(ValueError, match="budget = -1 is invalid"):
        ClairvoyantScaler(budget=-1)
