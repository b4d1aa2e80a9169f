"""PolicyController drives a platform with policies exactly as the built-in rules would."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from servegym.envs import AutoscalingEnv, RoutingEnv
from servegym.envs.features import Layout, admission_layout, interval_layout, routing_layout
from servegym.policies import (
    HPA,
    KPA,
    AdmitAll,
    AdmitNone,
    FixedThreshold,
    FrequencyAdmission,
    JoinShortestQueue,
    Policy,
    PolicyController,
    RoundRobin,
    scaling_kwargs,
)
from servegym.sim.config import BackendConfig, CacheConfig, ScenarioConfig, SemanticCacheConfig
from servegym.sim.platform import Platform
from tests.kpis import same_kpis


def names(platform: Platform) -> list[str]:
    return [b.name for b in platform.backends]


def test_round_robin_policy_reproduces_the_builtin_round_robin(small_scenario: ScenarioConfig) -> None:
    builtin = Platform(small_scenario)
    kpis = builtin.run()
    probe = Platform(small_scenario)
    policy = Platform(small_scenario, PolicyController(routing=RoundRobin(routing_layout(probe), names(probe))))
    assert same_kpis(policy.run(), kpis)
    assert policy.arrived == builtin.arrived > 1000
    assert np.array_equal(policy.requests.frame()["backend"], builtin.requests.frame()["backend"])


def test_without_policies_every_decision_is_the_builtin_one(small_scenario: ScenarioConfig) -> None:
    # Random routing draws from the platform's "controller" stream: the fallback must use the same one.
    scenario = dataclasses.replace(
        small_scenario, control=dataclasses.replace(small_scenario.control, routing="random")
    )
    assert same_kpis(Platform(scenario, PolicyController()).run(), Platform(scenario).run())


def test_a_scaling_policy_drives_the_pool(small_scenario: ScenarioConfig) -> None:
    controller = PolicyController(scaling=HPA(**scaling_kwargs(small_scenario), target_utilisation=0.5))
    first = Platform(small_scenario, controller)
    kpis = first.run()
    targets = [m.target_replicas for m in first.intervals]
    assert len(set(targets)) > 1
    pool = small_scenario.pool
    assert all(pool.min_replicas <= t <= pool.max_replicas for t in targets)
    # Handed a new platform, the controller starts afresh: the same seed gives the same run.
    assert same_kpis(Platform(small_scenario, controller).run(), kpis)
    assert not same_kpis(Platform(small_scenario).run(), kpis)  # and the policy did decide something


def test_the_panic_mode_of_kpa_follows_a_flash_of_traffic(small_scenario: ScenarioConfig) -> None:
    kpa = KPA(**scaling_kwargs(small_scenario))
    heavy = dataclasses.replace(
        small_scenario,
        workload=dataclasses.replace(small_scenario.workload, rate_rps=80.0),
        pool=dataclasses.replace(small_scenario.pool, initial_replicas=1),
    )
    platform = Platform(heavy, PolicyController(scaling=kpa))
    platform.step_to_decision(until=11.0)  # one control interval: 1 replica against 80 requests/s
    assert kpa.in_panic
    assert platform.pool.target == heavy.pool.max_replicas


def test_admit_none_stores_nothing(small_scenario: ScenarioConfig) -> None:
    probe = Platform(small_scenario)
    platform = Platform(small_scenario, PolicyController(admission=AdmitNone(admission_layout(probe))))
    kpis = platform.run()
    assert all(len(tier) == 0 for tier in platform.tiers)
    assert platform.semantic is not None and len(platform.semantic) == 0
    assert kpis["all"]["hit_rate"] == 0.0


class Fixed:
    """Answers every observation with one fixed action, and counts its calls."""

    def __init__(self, action: object) -> None:
        self.action = action
        self.calls: list[str] = []

    def act(self, observation: np.ndarray) -> object:
        self.calls.append("act")
        return self.action

    def reset(self) -> None:
        self.calls.append("reset")


def test_policies_are_reset_when_the_controller_meets_a_new_platform(small_scenario: ScenarioConfig) -> None:
    policy = Fixed(4)
    controller = PolicyController(scaling=policy)
    expected: list[str] = []
    for _ in range(2):
        platform = Platform(small_scenario, controller)
        platform.run()
        # One decision per interval but the last, which the end of the run records without one.
        expected += ["reset"] + ["act"] * (len(platform.intervals) - 1)
    assert policy.calls == expected


def test_admission_action_k_writes_level_k_minus_one_and_slower(small_scenario: ScenarioConfig) -> None:
    # Without promotion a tier holds only what admission wrote into it.
    scenario = dataclasses.replace(
        small_scenario, cache=dataclasses.replace(small_scenario.cache, promote_on_hit=False)
    )
    all_levels = Platform(scenario, PolicyController(admission=Fixed(1)))
    all_levels.run()
    assert [len(t) for t in all_levels.tiers] == [t.cfg.capacity for t in all_levels.tiers]  # both tiers fill up
    redis_down = Platform(scenario, PolicyController(admission=Fixed(2)))
    redis_down.run()
    assert len(redis_down.tiers[0]) == 0 and len(redis_down.tiers[1]) > 0
    assert redis_down.semantic is not None and len(redis_down.semantic) > 0
    semantic_only = Platform(scenario, PolicyController(admission=Fixed(3)))
    semantic_only.run()
    assert [len(t) for t in semantic_only.tiers] == [0, 0]
    assert semantic_only.semantic is not None and len(semantic_only.semantic) > 0


def arrivals_of_key_at_exact_hits(platform: Platform) -> Counter[int]:
    """For each exact-tier hit, how many arrivals its phrasing had by then (the hit included)."""
    cols = platform.requests.frame(platform.arrived)
    seen: Counter[int] = Counter()
    at_hit: Counter[int] = Counter()
    for key, level in zip(cols["key"].tolist(), cols["hit_level"].tolist(), strict=True):
        seen[key] += 1
        if 0 <= level < len(platform.tiers):
            at_hit[seen[key]] += 1
    return at_hit


def test_frequency_admission_caches_only_phrasings_seen_twice(small_scenario: ScenarioConfig) -> None:
    exact_only = dataclasses.replace(
        small_scenario, cache=dataclasses.replace(small_scenario.cache, semantic=SemanticCacheConfig(enabled=False))
    )
    layout = admission_layout(Platform(exact_only))
    doorkeeper = Platform(exact_only, PolicyController(admission=FrequencyAdmission(layout, min_requests=2)))
    doorkeeper.run()
    everything = Platform(exact_only, PolicyController(admission=AdmitAll(layout)))
    everything.run()
    # Admitted on its second arrival at the earliest, a phrasing is hit on its third at the earliest.
    hits = arrivals_of_key_at_exact_hits(doorkeeper)
    assert sum(hits.values()) > 100 and min(hits) >= 3
    assert min(arrivals_of_key_at_exact_hits(everything)) == 2


def test_a_threshold_policy_sets_the_semantic_threshold(small_scenario: ScenarioConfig) -> None:
    policy = FixedThreshold(interval_layout(small_scenario), threshold=0.8)
    platform = Platform(small_scenario, PolicyController(threshold=policy))
    platform.run()
    assert platform.semantic is not None and platform.semantic.threshold == 0.8
    assert [m.semantic_threshold for m in platform.intervals[1:]] == [0.8] * (len(platform.intervals) - 1)


def test_a_policy_built_for_another_platform_is_refused(small_scenario: ScenarioConfig) -> None:
    other = dataclasses.replace(small_scenario, backends=(*small_scenario.backends, BackendConfig(name="third")))
    probe = Platform(other)
    router = JoinShortestQueue(routing_layout(probe), names(probe))
    with pytest.raises(ValueError, match=r"routing policy JoinShortestQueue was built for the features .*busy_third"):
        Platform(small_scenario, PolicyController(routing=router)).run()
    uncached = dataclasses.replace(small_scenario, cache=CacheConfig())
    admission = AdmitAll(admission_layout(Platform(small_scenario)))
    with pytest.raises(ValueError, match=r"admission policy AdmitAll was built for"):
        Platform(uncached, PolicyController(admission=admission)).run()


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (1.0, r"admission policy returned 1.0 \(float\): must be an integer"),
        (True, r"admission policy returned True \(bool\)"),
        (4, r"admission policy returned 4: must be 0 \(store nothing\) or a level 1..3"),
        (-1, r"admission policy returned -1"),
    ],
)
def test_invalid_admission_actions_raise(small_scenario: ScenarioConfig, action: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Platform(small_scenario, PolicyController(admission=Fixed(action))).run()


def test_invalid_routing_and_scaling_actions_raise(small_scenario: ScenarioConfig) -> None:
    with pytest.raises(ValueError, match=r"routing policy returned 'cheap' \(str\): must be an integer"):
        Platform(small_scenario, PolicyController(routing=Fixed("cheap"))).run()
    with pytest.raises(ValueError, match=r"route action 5 is invalid"):  # the platform checks the range
        Platform(small_scenario, PolicyController(routing=Fixed(5))).run()
    with pytest.raises(ValueError, match=r"scaling policy returned 2.5 \(float\)"):
        Platform(small_scenario, PolicyController(scaling=Fixed(2.5))).run()
    with pytest.raises(ValueError, match=r"threshold policy returned None"):
        Platform(small_scenario, PolicyController(threshold=Fixed(None))).run()


def test_policies_reject_invalid_observations_from_the_platform(small_scenario: ScenarioConfig) -> None:
    """A policy given a layout longer than the platform's vectors fails on the first observation."""
    real = interval_layout(small_scenario)
    longer = Layout((*real.names, "extra"), np.append(real.low, np.float32(0)), np.append(real.high, np.float32(1)))
    hpa = HPA(**{**scaling_kwargs(small_scenario), "layout": longer})
    with pytest.raises(ValueError, match=r"scaling policy HPA was built for the features"):
        Platform(small_scenario, PolicyController(scaling=hpa)).run()
    with pytest.raises(ValueError, match=r"HPA: observation has shape \(14,\), expected \(15,\)"):
        hpa.act(np.zeros(14, dtype=np.float32))


def run_in_env(env: AutoscalingEnv | RoutingEnv, policy: Policy) -> dict[str, dict[str, float]]:
    """One episode of ``env`` with ``policy`` acting on its observations."""
    observation, _ = env.reset(seed=5)
    policy.reset()
    done = False
    while not done:
        observation, _, terminated, truncated, _ = env.step(policy.act(observation))
        done = terminated or truncated
    return env.kpis()


def test_a_policy_decides_the_same_in_an_environment_and_in_the_controller(small_scenario: ScenarioConfig) -> None:
    hpa = HPA(**scaling_kwargs(small_scenario), target_utilisation=0.5)
    autoscaling = AutoscalingEnv(small_scenario)
    in_env = run_in_env(autoscaling, hpa)
    direct = Platform(small_scenario, PolicyController(scaling=hpa), seed=autoscaling.platform.seed)
    assert same_kpis(direct.run(), in_env)

    routing = RoutingEnv(small_scenario)
    jsq = JoinShortestQueue(routing.layout, names(routing.platform))
    in_env = run_in_env(routing, jsq)
    direct = Platform(small_scenario, PolicyController(routing=jsq), seed=routing.platform.seed)
    assert same_kpis(direct.run(), in_env)
    assert np.array_equal(direct.requests.frame()["backend"], routing.platform.requests.frame()["backend"])


def test_make_policy_names_an_unknown_argument() -> None:
    import pytest

    from servegym.policies import make_policy

    with pytest.raises(ValueError, match=r"policy 'hpa' has no argument 'target_util'; it accepts: .*"):
        make_policy("hpa", target_util=0.5)
