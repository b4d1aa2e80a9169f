"""Policies act inside the registered environments (``gymnasium.make``), on the envs' own observations.

Each policy is built with ``env.unwrapped.layout`` and resolves its features there by
name. Where a decision can also be driven by :class:`PolicyController`, the episode in
the env must give exactly the KPIs of the direct run with the same policy and seed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import servegym.envs  # noqa: F401 - registers the environments
from servegym.envs.features import admission_layout, interval_layout, routing_layout
from servegym.policies import (
    AdmitAll,
    AdmitNone,
    FixedThreshold,
    FrequencyAdmission,
    PolicyController,
    make_policy,
    scaling_kwargs,
)
from servegym.policies.caching import AdmissionAndThreshold
from servegym.sim.config import ScenarioConfig
from servegym.sim.platform import Platform
from tests.kpis import same_kpis


@pytest.fixture(scope="module")
def scenario(small_scenario: ScenarioConfig) -> ScenarioConfig:
    return dataclasses.replace(small_scenario, duration_s=60.0)


ADMISSION = {"AdmitAll": AdmitAll, "AdmitNone": AdmitNone, "FrequencyAdmission": FrequencyAdmission}


@pytest.mark.parametrize("name", sorted(ADMISSION))
def test_admission_policy_and_fixed_threshold_run_inside_caching_v0(scenario: ScenarioConfig, name: str) -> None:
    env = gym.make("servegym/Caching-v0", scenario=scenario)
    caching: Any = env.unwrapped
    layout = caching.layout
    admission = ADMISSION[name](layout)
    policy = AdmissionAndThreshold(layout, admission, FixedThreshold(layout, 0.8), caching.thresholds)
    observation, _ = env.reset(seed=5)
    policy.reset()
    flag = layout.index["decision_is_threshold"]
    counts = {"admit": 0, "threshold": 0}
    done = False
    while not done:
        action = policy.act(observation)
        assert env.action_space.contains(action)
        if observation[flag]:
            counts["threshold"] += 1
            assert caching.thresholds[action[1]] == 0.8
        else:
            counts["admit"] += 1
            assert action[0] == admission.act(observation)
        observation, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    assert counts["admit"] > 100 and counts["threshold"] >= 3
    assert caching.platform.semantic.threshold == 0.8
    # The same policies as the simulator's controller decide exactly alike.
    probe = Platform(scenario)
    controller = PolicyController(
        admission=ADMISSION[name](admission_layout(probe)), threshold=FixedThreshold(interval_layout(scenario), 0.8)
    )
    direct = Platform(scenario, controller, seed=caching.platform.seed)
    assert same_kpis(direct.run(), caching.kpis())


def test_admission_and_threshold_checks_its_parts(scenario: ScenarioConfig) -> None:
    caching: Any = gym.make("servegym/Caching-v0", scenario=scenario).unwrapped
    layout = caching.layout
    threshold = FixedThreshold(layout, 0.9)
    with pytest.raises(ValueError, match="decision_is_threshold"):
        AdmissionAndThreshold(admission_layout(caching.platform), AdmitAll(layout), threshold, caching.thresholds)
    with pytest.raises(ValueError, match="build it with the same layout"):
        AdmissionAndThreshold(layout, AdmitAll(admission_layout(caching.platform)), threshold, caching.thresholds)
    with pytest.raises(ValueError, match=r"thresholds = \[\] is invalid"):
        AdmissionAndThreshold(layout, AdmitAll(layout), threshold, [])
    policy = AdmissionAndThreshold(layout, AdmitAll(layout), FixedThreshold(layout, 0.91), (0.8, 0.9, 0.92))
    observation = np.zeros(len(layout), dtype=np.float32)
    observation[layout.index["decision_is_threshold"]] = 1.0
    assert policy.act(observation).tolist() == [0, 1]  # 0.91 is nearest to 0.9 (a tie would go lower)
    observation[layout.index["decision_is_threshold"]] = 0.0
    assert policy.act(observation).tolist() == [1, 1]


ROUTERS = ["random", "round_robin", "jsq", "power_of_two", "cheapest", "strongest", "cascade"]


@pytest.mark.parametrize("name", ROUTERS)
def test_every_router_runs_inside_routing_v0(scenario: ScenarioConfig, name: str) -> None:
    env = gym.make("servegym/Routing-v0", scenario=scenario)
    routing: Any = env.unwrapped
    backend_names = [b.name for b in routing.platform.backends]
    kwargs: dict[str, Any] = {"seed": 1} if name in ("random", "power_of_two") else {}
    router = make_policy(name, layout=routing.layout, backend_names=backend_names, **kwargs)
    observation, _ = env.reset(seed=2)
    router.reset()
    steps, done = 0, False
    while not done:
        observation, _, terminated, truncated, _ = env.step(router.act(observation))
        steps, done = steps + 1, terminated or truncated
    assert steps > 100
    twin = make_policy(name, layout=routing_layout(Platform(scenario)), backend_names=backend_names, **kwargs)
    direct = Platform(scenario, PolicyController(routing=twin), seed=routing.platform.seed)
    assert same_kpis(direct.run(), routing.kpis())


SCALING: dict[str, dict[str, Any]] = {
    "static": {"replicas": 4},
    "hpa": {},
    "kpa": {},
    "step": {},
    "scheduled": {"schedule": [(0.0, 4)]},
}


@pytest.mark.parametrize("name", sorted(SCALING))
@pytest.mark.parametrize("env_id", ["servegym/Autoscaling-v0", "servegym/Platform-v0"])
def test_every_scaling_policy_runs_inside_the_interval_envs(scenario: ScenarioConfig, name: str, env_id: str) -> None:
    env = gym.make(env_id, scenario=scenario)
    unwrapped: Any = env.unwrapped
    kwargs = {**scaling_kwargs(scenario), "layout": unwrapped.layout, **SCALING[name]}
    policy = make_policy(name, **kwargs)
    observation, _ = env.reset(seed=4)
    policy.reset()
    steps, done = 0, False
    while not done:
        replicas = policy.act(observation)
        # Platform-v0 also sets the routing margin and the threshold: keep margin 0 and 0.9.
        action = replicas if env_id.endswith("Autoscaling-v0") else np.array([replicas, 3, 5])
        observation, _, terminated, truncated, _ = env.step(action)
        steps, done = steps + 1, terminated or truncated
    # Decisions at 10 s, 20 s, ..., 50 s (the one at the horizon belongs to no episode): one step each.
    assert steps == int(scenario.duration_s / scenario.control.interval_s) - 1
    if env_id.endswith("Autoscaling-v0"):
        twin = make_policy(name, **{**scaling_kwargs(scenario), **SCALING[name]})
        direct = Platform(scenario, PolicyController(scaling=twin), seed=unwrapped.platform.seed)
        assert same_kpis(direct.run(), unwrapped.kpis())
