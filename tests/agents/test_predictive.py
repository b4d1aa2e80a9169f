"""The predictive autoscaler: learned on Autoscaling-v0, acting in the env and as the platform's controller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servegym.agents.predictive import PredictiveAutoscaler, PredictiveAutoscalerLearner, horizon_for
from servegym.policies import PolicyController
from servegym.sim.platform import Platform
from tests.agents.conftest import DIURNAL, make, rollout_actions

OVERRIDES = [*DIURNAL, "workload.rate_rps=10.0", "control.interval_s=10.0", "pool.cold_start_mean_s=25.0"]


@pytest.fixture(scope="module")
def learned() -> tuple[PredictiveAutoscaler, list[tuple[dict[str, float], int]]]:
    env = make("servegym/Autoscaling-v0", 1200.0, OVERRIDES)
    logged: list[tuple[dict[str, float], int]] = []
    learner = PredictiveAutoscalerLearner(model="random_forest", n_estimators=20, period_s=600.0)
    return learner.learn(env, 238, seed=0, log=lambda m, s: logged.append((m, s))), logged


def test_learning_logs_forecast_quality_and_scales_ahead_of_the_cold_start(
    learned: tuple[PredictiveAutoscaler, list[tuple[dict[str, float], int]]],
) -> None:
    policy, logged = learned
    metrics, step = logged[-1]
    assert step == 238
    for key in ("forecast/mae", "forecast/naive_mae", "forecast/coverage", "forecast/slot_s_per_request"):
        assert np.isfinite(metrics[key]), key
    assert policy.horizon == horizon_for(25.0, 10.0) == 4
    assert policy.forecaster.horizon == 4 and policy.forecaster.fitted


def test_the_policy_acts_in_the_env_within_bounds_and_round_trips(
    learned: tuple[PredictiveAutoscaler, list[tuple[dict[str, float], int]]], tmp_path: Path
) -> None:
    policy, _ = learned
    env = make("servegym/Autoscaling-v0", 1200.0, OVERRIDES)
    actions = rollout_actions(env, policy, seed=5, steps=60)
    pool = env.unwrapped.scenario.pool
    assert all(pool.min_replicas <= a <= pool.max_replicas for a in actions)
    assert len(set(actions)) > 2  # it follows the diurnal load
    assert policy.last_forecast is not None and policy.last_forecast.source == "model"
    policy.save(tmp_path)
    assert rollout_actions(env, PredictiveAutoscaler.load(tmp_path), seed=5, steps=60) == actions


def test_the_policy_drives_a_platform_run(
    learned: tuple[PredictiveAutoscaler, list[tuple[dict[str, float], int]]],
) -> None:
    policy, _ = learned
    env = make("servegym/Autoscaling-v0", 600.0, OVERRIDES)
    platform = Platform(env.unwrapped.scenario, PolicyController(scaling=policy), seed=11)
    kpis = platform.run()
    assert kpis["all"]["requests"] > 1000
    # Replicas follow the forecast: the target rises towards the diurnal peak at 600 s from the trough at 300 s.
    targets = {round(m.time_s): m.target_replicas for m in platform.intervals}
    assert targets[560] > targets[320]


def test_a_forecaster_too_short_for_the_cold_start_is_refused(
    learned: tuple[PredictiveAutoscaler, list[tuple[dict[str, float], int]]],
) -> None:
    policy, _ = learned
    with pytest.raises(ValueError, match="too short"):
        PredictiveAutoscaler(
            policy.layout, 1, 10, 4, 10.0, policy.forecaster, cold_start_s=120.0, slot_s_per_request=1.0
        )
