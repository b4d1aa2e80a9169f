"""Every registered environment: checkers, determinism, pickling, vectorisation, errors."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

import servegym.envs
from servegym.envs import ENV_IDS
from servegym.sim.config import ConfigError

SHORT = {"duration_s": 240.0, "overrides": ["workload.rate_rps=8.0"]}


def make(env_id: str, **kwargs: Any) -> gym.Env[Any, Any]:
    return gym.make(env_id, **{**SHORT, **kwargs})


def rollout(env: gym.Env[Any, Any], seed: int, steps: int) -> list[tuple[Any, ...]]:
    """Seeded rollout with seeded random actions; returns (obs, reward, terminated, truncated)."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out: list[tuple[Any, ...]] = [(obs,)]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        out.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            break
    return out


def same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    return len(a) == len(b) and all(
        all(np.array_equal(x, y) for x, y in zip(sa, sb, strict=True)) for sa, sb in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_checkers_pass_without_warnings(env_id: str) -> None:
    env = make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_trajectory_and_observations_in_space(env_id: str) -> None:
    env = make(env_id)
    first = rollout(env, seed=11, steps=400)
    second = rollout(make(env_id), seed=11, steps=400)
    assert same(first, second)
    assert all(env.observation_space.contains(step[0]) for step in first)
    assert not same(first, rollout(env, seed=12, steps=400))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_episode_ends_by_truncation_with_kpis(env_id: str) -> None:
    env = make(env_id)
    env.reset(seed=0)
    total, info, truncated, terminated = 0.0, {}, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += float(reward)
    assert truncated and not terminated
    assert info["time_s"] == pytest.approx(240.0)
    # Rewards are minus the dollars billed when only cost is weighted.
    kpis = info["kpis"]["all"]
    assert kpis["requests"] > 0
    assert total <= 0.0


def test_rewards_sum_to_minus_episode_cost_when_only_cost_counts() -> None:
    env = make("servegym/Routing-v0", slo_weight=0.0, quality_weight=0.0, drop_weight=0.0)
    env.reset(seed=5)
    total, done, info = 0.0, False, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += float(reward)
        done = terminated or truncated
    assert total == pytest.approx(-info["kpis"]["all"]["cost_usd"], rel=1e-9)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_return_is_minus_the_objective_that_evaluate_ranks_by(env_id: str) -> None:
    # Tight pool and queue: the episode drops requests, so the drop price is exercised.
    env = make(env_id, overrides=["pool.max_queue=5", "pool.max_replicas=3", "pool.initial_replicas=2"])
    env.reset(seed=2)
    env.action_space.seed(2)
    total, done, info = 0.0, False, {}
    while not done:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        total += float(reward)
        done = terminated or truncated
    kpis = info["kpis"]["all"]
    assert kpis["dropped"] > 0
    assert env.unwrapped.prices.drop_usd > 0 and env.unwrapped.prices.drop_derived
    assert total == pytest.approx(-kpis["objective_usd"], rel=1e-9)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_pickled_env_continues_identically(env_id: str) -> None:
    env = make(env_id)
    env.reset(seed=3)
    env.action_space.seed(3)
    for _ in range(7):
        env.step(env.action_space.sample())
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(7):
        action = env.action_space.sample()
        a, b = env.step(action), clone.step(action)
        assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2:4] == b[2:4]


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_gymnasium_vector_env_of_two(env_id: str, mode: str) -> None:
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, **SHORT)
    try:
        obs, _ = envs.reset(seed=[1, 2])
        assert obs.shape == (2, *envs.single_observation_space.shape)
        for _ in range(3):
            obs, rewards, _, _, _ = envs.step(envs.action_space.sample())
        assert rewards.shape == (2,)
    finally:
        envs.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_sb3_vec_env_of_two(env_id: str, vec_cls: type[DummyVecEnv] | type[SubprocVecEnv]) -> None:
    venv = vec_cls([lambda: make(env_id) for _ in range(2)])
    try:
        venv.seed(4)
        obs = venv.reset()
        assert obs.shape[0] == 2
        for _ in range(3):
            obs, rewards, _, _ = venv.step(np.array([venv.action_space.sample() for _ in range(2)]))
        assert rewards.shape == (2,)
    finally:
        venv.close()


@pytest.mark.parametrize(
    ("env_id", "bad"),
    [
        ("servegym/Autoscaling-v0", 10_000),
        ("servegym/Autoscaling-v0", -1),
        ("servegym/Routing-v0", 3),
        ("servegym/Caching-v0", np.array([9, 0])),
        ("servegym/Platform-v0", np.array([1, 2])),
    ],
)
def test_invalid_actions_raise_clear_errors(env_id: str, bad: Any) -> None:
    env = make(env_id)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in the action space"):
        env.step(bad)


def test_step_before_reset_is_a_clear_error() -> None:
    env = servegym.envs.AutoscalingEnv(**SHORT)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(3)


def test_action_masks_mark_targets_below_the_minimum() -> None:
    env = servegym.envs.AutoscalingEnv(**SHORT)
    mask = env.action_masks()
    assert mask.shape == (env.action_space.n,)
    assert not mask[: env.scenario.pool.min_replicas].any() and mask[env.scenario.pool.min_replicas :].all()


def test_autoscaling_action_sets_the_pool_target() -> None:
    env = servegym.envs.AutoscalingEnv(**SHORT)
    env.reset(seed=0)
    obs, *_ = env.step(7)
    assert obs[env.layout.index["target_replicas"]] == 7


def test_bad_constructor_arguments_name_the_argument() -> None:
    with pytest.raises(ConfigError, match="slo_weight"):
        servegym.envs.AutoscalingEnv(slo_weight=-1.0)
    with pytest.raises(ConfigError, match="thresholds"):
        servegym.envs.CachingEnv(thresholds=[1.5])
    with pytest.raises(ConfigError, match="unknown key"):
        servegym.envs.RoutingEnv(overrides=["pool.nope=1"])


def test_per_step_feature_builders_equal_the_shared_feature_functions() -> None:
    from servegym.envs.features import AdmissionFeatures, RoutingFeatures, admission_features, routing_features
    from servegym.sim.platform import Platform

    platform = Platform(servegym.envs.resolve_scenario("default", ["workload.rate_rps=8.0"], 120.0))
    platform.run()
    routing, admission = RoutingFeatures(platform), AdmissionFeatures(platform)
    for request in range(0, platform.arrived, 7):
        assert np.array_equal(routing(request), routing_features(platform, request))
        for count, age_s in ((1, 1e9), (3, 2.5)):
            built = np.array(admission.values(request, count, age_s), dtype=np.float32)
            assert np.array_equal(built, admission_features(platform, request, count, age_s))


def test_caching_observation_counts_the_phrasing_and_its_gap_to_the_previous_arrival() -> None:
    """key_requests: arrivals of the phrasing so far (this one included); log_key_age_s: the
    seconds from its previous arrival to this request's, worked out here from the records."""
    from servegym.envs.features import NEVER_SEEN_AGE_S

    env = make("servegym/Caching-v0", duration_s=300.0, overrides=["workload.rate_rps=20.0"])
    unwrapped: Any = env.unwrapped
    at = unwrapped.layout.index
    obs, _ = env.reset(seed=3)
    env.action_space.seed(3)
    checked, repeats, done = 0, 0, False
    while not done:
        decision = unwrapped._decision
        if decision is not None and decision.kind == "admit":
            R = unwrapped.platform.requests
            i, key = decision.request, R.key[decision.request]
            earlier = [j for j in range(i) if R.key[j] == key]
            so_far = sum(1 for j in range(R.arrived) if R.key[j] == key)
            gap = R.arrival_s[i] - R.arrival_s[earlier[-1]] if earlier else NEVER_SEEN_AGE_S
            assert obs[at["key_requests"]] == so_far >= 1
            assert obs[at["log_key_age_s"]] == np.float32(np.log1p(gap))
            checked, repeats = checked + 1, repeats + bool(earlier)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        done = terminated or truncated
    assert checked > 100 and repeats > 10  # phrasings seen before are part of the check


@pytest.mark.parametrize(
    ("env_id", "good", "bad"),
    [
        ("servegym/Routing-v0", [1, np.int64(2), np.int32(0)], [1.0, np.int64(3), -1, "1", np.array([1])]),
        (
            "servegym/Caching-v0",
            [np.array([1, 0]), [0, 9], (4, 2), np.array([1, 1], dtype=np.int32)],
            [np.array([5, 0]), np.array([1, 10]), np.array([1.0, 0.0]), np.array([[1, 0]]), [1], 1],
        ),
    ],
)
def test_integer_actions_take_the_fast_check_and_others_the_full_one(env_id: str, good: Any, bad: Any) -> None:
    env = make(env_id)
    env.reset(seed=0)
    unwrapped: Any = env.unwrapped
    for action in good:
        assert env.action_space.contains(action)
        checked = unwrapped._checked_action(action)
        assert checked == (int(action) if np.ndim(action) == 0 else [int(a) for a in action])
        env.step(action)
    for action in bad:
        assert not env.action_space.contains(action), action
        with pytest.raises(ValueError, match="not in the action space"):
            env.step(action)


@pytest.mark.parametrize(
    ("kwargs", "steps"),
    [
        ({"duration_s": 7200.0}, 479),  # two hours of 15 s intervals: one decision per boundary inside
        ({"duration_s": 1800.0, "overrides": ["control.interval_s=5"]}, 359),
    ],
)
def test_gymnasium_make_runs_any_horizon_to_its_end(kwargs: dict[str, Any], steps: int) -> None:
    """No registered step limit cuts a longer scenario short: the env truncates at its own horizon."""
    env = gym.make("servegym/Autoscaling-v0", **kwargs)
    env.reset(seed=0)
    n, done, info = 0, False, {}
    while not done:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        n, done = n + 1, terminated or truncated
    assert n == steps and truncated and info["time_s"] == kwargs["duration_s"] and "kpis" in info
    # A step limit asked for is still applied (by Gymnasium's TimeLimit).
    short = gym.make("servegym/Autoscaling-v0", max_episode_steps=3, **kwargs)
    short.reset(seed=0)
    assert [short.step(3)[3] for _ in range(3)] == [False, False, True]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_booleans_are_not_actions(env_id: str) -> None:
    """Gymnasium's contains() takes True for 1; the env refuses booleans, alone or inside an array or list."""
    env = make(env_id)
    env.reset(seed=0)
    width = int(np.prod(env.action_space.shape)) if env.action_space.shape else 0
    bads: list[Any] = [True, np.True_] if width == 0 else [np.ones(width, dtype=bool), [True] + [0] * (width - 1)]
    for bad in bads:
        with pytest.raises(ValueError, match="not in the action space"):
            env.step(bad)


def test_an_episode_without_a_decision_is_refused_with_the_duration() -> None:
    with pytest.raises(ConfigError, match="duration_s = 15 is invalid"):
        gym.make("servegym/Autoscaling-v0", duration_s=15.0)
    env = gym.make("servegym/Routing-v0", duration_s=0.01)
    with pytest.raises(ConfigError, match=r"duration_s = 0.01\) before its first decision"):
        env.reset(seed=0)


def test_overrides_given_as_one_string_are_refused() -> None:
    with pytest.raises(ConfigError, match="give a list of key=value strings"):
        gym.make("servegym/Routing-v0", overrides="pool.max_replicas=30")


def test_reset_info_reports_what_was_billed_before_the_first_decision() -> None:
    env = make("servegym/Autoscaling-v0")
    _, info = env.reset(seed=0)
    unwrapped: Any = env.unwrapped
    assert info["time_s"] == 15.0 and info["cost_usd"] == unwrapped.platform.cost_usd() > 0


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_seed_pairs_with_evaluate_seeds(env_id: str) -> None:
    # One seed space: reset(seed=s) and `servegym evaluate --seeds s` see the same requests.
    from servegym.experiments.evaluate import simulate

    env = make(env_id)
    env.reset(seed=7)
    env.action_space.seed(0)
    done = False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        done = terminated or truncated
    inner = env.unwrapped.platform
    reference = simulate("builtin", env_id, env.unwrapped.scenario, 7)
    assert inner.seed == reference.seed == 7
    columns = ("arrival_s", "tenant", "intent", "variant", "prompt_tokens", "output_tokens", "difficulty")
    ours, theirs = inner.requests.frame(None, columns), reference.requests.frame(None, columns)
    assert len(ours["arrival_s"]) == len(theirs["arrival_s"]) > 0
    for name in columns:
        assert np.array_equal(ours[name], theirs[name]), name


def test_training_never_simulates_an_evaluation_seed() -> None:
    # reset(seed=s) simulates platform seed s, so training must draw its own seeds (issue 13's review):
    # train seed=0 with 4 envs once trained on the requests of evaluation seeds 0-3.
    from servegym.agents.sb3 import make_vec_env
    from servegym.agents.seeds import TRAINING_SEEDS

    venv = make_vec_env("servegym/Autoscaling-v0", dict(SHORT), 4, 0, "ppo")
    try:
        venv.reset()
        seeds = [e.unwrapped.platform.seed for e in venv.envs]  # type: ignore[attr-defined]
        assert all(s >= TRAINING_SEEDS for s in seeds) and len(set(seeds)) == 4
    finally:
        venv.close()
    env = make("servegym/Autoscaling-v0")
    env.reset(seed=3)
    env.reset()  # an unseeded episode draws its seed far from the small ones evaluations use
    assert env.unwrapped.platform.seed >= 2**48
