"""spec.json carries the environment's action grids, so a service can turn an action index into a value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import mlflow
import numpy as np
import pytest
import yaml
from sklearn.tree import DecisionTreeClassifier
from stable_baselines3.common.vec_env import DummyVecEnv

import servegym.envs  # noqa: F401 - registers the environments
from servegym.agents.admission import CachingEnvPolicy
from servegym.agents.distill import DistilledTreePolicy
from servegym.agents.io import save_policy
from servegym.agents.sb3 import SB3Policy, build_model
from servegym.deploy import runtime
from servegym.deploy.export import UNKNOWN, ExportError, action_grid, export_policy
from servegym.envs.caching import DEFAULT_THRESHOLDS
from servegym.envs.features import Layout
from servegym.envs.platform_env import DEFAULT_MARGINS
from servegym.experiments.export import export_source
from servegym.policies import FrequencyAdmission

MARGINS = (-0.3, 0.0, 0.3)
THRESHOLDS = (0.8, 0.9, 0.95)
PLATFORM_KW: dict[str, Any] = {"duration_s": 120.0, "margins": MARGINS, "thresholds": THRESHOLDS}


def _layout(env: gym.Env[Any, Any]) -> Layout:
    base: Any = env.unwrapped
    space = base.observation_space
    return Layout(tuple(base.layout.names), np.asarray(space.low, np.float32), np.asarray(space.high, np.float32))


def _ppo(env_id: str, **kwargs: Any) -> SB3Policy:
    """An untrained PPO on ``env_id``: its decisions vary, which is all the grid needs."""
    venv: Any = DummyVecEnv([lambda: gym.make(env_id, **kwargs)])
    model = build_model("ppo", venv, {"n_steps": 16, "batch_size": 16, "policy_kwargs": {"net_arch": [8]}}, seed=0)
    return SB3Policy.from_training(model, "ppo", _layout(gym.make(env_id, **kwargs)), env_id)


@pytest.fixture(scope="module")
def platform_policy() -> SB3Policy:
    return _ppo("servegym/Platform-v0", **PLATFORM_KW)


def test_platform_bundle_carries_the_envs_grids(platform_policy: SB3Policy, tmp_path: Path) -> None:
    env = gym.make("servegym/Platform-v0", **PLATFORM_KW)
    base: Any = env.unwrapped
    bundle = runtime.load(export_policy(platform_policy, tmp_path / "platform", grid=action_grid(env)))
    action = bundle.spec["action"]
    assert action["nvec"] == [int(n) for n in base.action_space.nvec]
    replicas, margins, thresholds = action["components"]
    assert replicas["name"] == "target_replicas"
    assert replicas["values"] == list(range(base.scenario.pool.max_replicas + 1))
    assert replicas["valid_range"] == [base.scenario.pool.min_replicas, base.scenario.pool.max_replicas]
    assert margins == {"name": "routing_margin", "unit": "capability", "n": 3, "values": list(base.margins)}
    assert thresholds["name"] == "semantic_threshold" and thresholds["values"] == list(base.thresholds)
    assert "scenario 'default'" in action["grid_source"]
    assert bundle.action_components == ("target_replicas", "routing_margin", "semantic_threshold")

    obs, _ = env.reset(seed=0)
    for _ in range(5):
        a = bundle.decide(obs)
        values = bundle.action_values(a)
        assert values == {
            "target_replicas": int(a[0]),
            "routing_margin": base.margins[int(a[1])],
            "semantic_threshold": base.thresholds[int(a[2])],
        }
        obs, *_ = env.step(a)
        assert base.margin == values["routing_margin"]  # the env applied what the grid says
    with pytest.raises(ValueError, match="outside its grid"):
        bundle.action_values([0, 3, 0])
    with pytest.raises(ValueError, match="the grid has 3"):
        bundle.action_values(1)


def test_a_grid_the_policy_disagrees_with_is_refused(platform_policy: SB3Policy, tmp_path: Path) -> None:
    other = gym.make("servegym/Platform-v0", duration_s=120.0)  # the default grids: 7 margins, not 3
    with pytest.raises(ExportError, match="'routing_margin' has 3 choices"):
        export_policy(platform_policy, tmp_path / "bad", grid=action_grid(other))


def test_without_the_env_the_grid_is_assumed_and_says_so(tmp_path: Path) -> None:
    policy = _ppo("servegym/Platform-v0", duration_s=120.0)  # default grids
    directory = save_policy(policy, tmp_path / "policy")  # a policy directory: no env, no run
    bundle = runtime.load(export_source(str(directory), tmp_path / "assumed").bundle)  # env_id from the policy
    action = bundle.spec["action"]
    assert action["grid_source"].startswith("assumed:")
    assert action["components"][1]["values"] == list(DEFAULT_MARGINS)
    assert action["components"][2]["values"] == list(DEFAULT_THRESHOLDS)
    assert action["components"][0]["valid_range"] == [UNKNOWN, action["nvec"][0] - 1]

    # Grids whose size the policy contradicts are unknown, not guessed.
    custom = runtime.load(export_policy(_ppo_custom(), tmp_path / "custom"))
    components = custom.spec["action"]["components"]
    assert components[1] == {"name": "routing_margin", "unit": "capability", "n": 3, "values": UNKNOWN}
    with pytest.raises(runtime.BundleError, match="routing_margin"):
        custom.action_values([1, 0, 0])


def _ppo_custom() -> SB3Policy:
    return _ppo("servegym/Platform-v0", **PLATFORM_KW)


def test_caching_bundle_carries_the_threshold_grid(tmp_path: Path) -> None:
    env = gym.make("servegym/Caching-v0", duration_s=120.0, thresholds=THRESHOLDS)
    base: Any = env.unwrapped
    policy = CachingEnvPolicy.nearest(env, FrequencyAdmission(base.admission))
    bundle = runtime.load(export_policy(policy, tmp_path / "caching", grid=action_grid(env)))
    action = bundle.spec["action"]
    assert action["nvec"] == [int(n) for n in base.action_space.nvec] == [base.platform.n_levels + 1, 3]
    admission, thresholds = action["components"]
    assert admission["values"][0] == "none" and len(admission["values"]) == base.platform.n_levels + 1
    assert thresholds["values"] == list(base.thresholds) == list(THRESHOLDS)
    obs, _ = env.reset(seed=0)
    values = bundle.action_values(bundle.decide(obs))
    assert values["semantic_threshold"] == THRESHOLDS[policy.threshold_index]


def test_truly_unknown_grids_are_written_unknown(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    trees = [DecisionTreeClassifier(max_depth=2).fit(X, rng.integers(0, 3, 50)) for _ in range(2)]
    layout = Layout(("a", "b", "c"), np.full(3, -10.0, np.float32), np.full(3, 10.0, np.float32))
    bundle = runtime.load(export_policy(DistilledTreePolicy(layout, trees, "multi_discrete"), tmp_path / "trees"))
    action = bundle.spec["action"]
    assert action["nvec"] == [UNKNOWN, UNKNOWN]
    assert action["grid_source"].startswith(f"{UNKNOWN}:")
    with pytest.raises(runtime.BundleError, match="no action grid"):
        bundle.action_values(bundle.decide(X[0]))


def test_export_from_a_run_takes_the_grid_from_its_logged_config(
    store: str, platform_policy: SB3Policy, tmp_path: Path
) -> None:
    """The run's config/config.yaml (as servegym train logs it) names the env's grids and scenario."""
    from servegym.sim.config import load_scenario, scenario_to_dict

    config = {
        "scenario": scenario_to_dict(load_scenario("default")),
        "env": {"id": "servegym/Platform-v0", "kwargs": {"margins": list(MARGINS), "thresholds": list(THRESHOLDS)}},
    }
    mlflow.set_experiment("grid")
    with mlflow.start_run() as run:
        mlflow.set_tags({"servegym.env": "servegym/Platform-v0"})
        mlflow.log_text(yaml.safe_dump(config), "config/config.yaml")
        mlflow.log_artifacts(str(save_policy(platform_policy, tmp_path / "policy")), "policy")
    result = export_source(run.info.run_id, tmp_path / "bundle", log_model=False)
    action = runtime.load(result.bundle).spec["action"]
    assert action["components"][1]["values"] == list(MARGINS)
    assert action["components"][2]["values"] == list(THRESHOLDS)
    assert action["grid_source"].startswith("the run's logged config")
