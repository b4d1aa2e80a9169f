"""The contextual-bandit router: online learning on Routing-v0, frozen evaluation, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servegym.agents.bandit import BanditRouterLearner, LinearBanditRouter
from servegym.envs.features import routing_layout
from servegym.policies import PolicyController
from servegym.sim.platform import Platform
from tests.agents.conftest import make, rollout_actions

OVERRIDES = ["workload.rate_rps=8.0"]


@pytest.mark.parametrize("algorithm", ["linucb", "thompson"])
def test_the_bandit_learns_from_per_request_rewards_and_acts_frozen(algorithm: str, tmp_path: Path) -> None:
    env = make("servegym/Routing-v0", 300.0, OVERRIDES)
    logged: list[tuple[dict[str, float], int]] = []
    router = BanditRouterLearner(algorithm=algorithm, log_every=500).learn(
        env, 1500, seed=0, log=lambda m, s: logged.append((m, s))
    )
    assert [s for _, s in logged] == [500, 1000, 1500]
    assert all(m["bandit/mean_reward"] < 0 for m, _ in logged)  # every request costs something
    assert logged[-1][0]["bandit/rewarded"] > 1400  # nearly every routed request reported back
    assert not router.explore and router.updates.sum() == logged[-1][0]["bandit/rewarded"]
    # The expensive strongest backend is rarely worth it at these weights: it loses its share.
    assert logged[-1][0]["bandit/share_large"] < logged[0][0]["bandit/share_large"] + 0.05
    actions = rollout_actions(env, router, seed=3, steps=300)
    assert len(actions) == 300
    router.save(tmp_path)
    assert rollout_actions(env, LinearBanditRouter.load(tmp_path), seed=3, steps=300) == actions
    again = BanditRouterLearner(algorithm=algorithm, log_every=500).learn(env, 1500, seed=0)
    assert np.array_equal(again.theta, router.theta)


def test_the_frozen_router_drives_a_platform_run() -> None:
    env = make("servegym/Routing-v0", 200.0, OVERRIDES)
    router = BanditRouterLearner().learn(env, 800, seed=1)
    scenario = env.unwrapped.scenario
    probe = Platform(scenario)
    assert router.layout.names == routing_layout(probe).names
    platform = Platform(scenario, PolicyController(routing=router), seed=2)
    kpis = platform.run()
    backends = platform.requests.frame()["backend"]
    assert kpis["all"]["requests"] > 1000 and (backends >= 0).any()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        BanditRouterLearner(algorithm="epsilon_greedy")
    env = make("servegym/Routing-v0", 60.0, OVERRIDES)
    with pytest.raises(ValueError, match="backend_names"):
        LinearBanditRouter(env.unwrapped.layout, ["large", "small", "medium"])
