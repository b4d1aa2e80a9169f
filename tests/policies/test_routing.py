"""Routers choose as their rules say on hand-made routing observations."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from servegym.envs.features import routing_layout
from servegym.policies import (
    POLICIES,
    Cheapest,
    DifficultyCascade,
    JoinShortestQueue,
    PowerOfTwoChoices,
    RandomRouter,
    RoundRobin,
    Strongest,
    make_policy,
)
from servegym.sim.config import BackendConfig, ScenarioConfig
from servegym.sim.platform import Platform

# Listed neither by price nor by capability, so no rule can pass by picking an end of the list.
BACKENDS = (
    BackendConfig(name="small", usd_per_mtok_out=0.6, capability=0.35),
    BackendConfig(name="large", usd_per_mtok_out=15.0, capability=0.85),
    BackendConfig(name="medium", usd_per_mtok_out=4.0, capability=0.6),
)
SMALL, LARGE, MEDIUM = 0, 1, 2
NAMES = [b.name for b in BACKENDS]
LAYOUT = routing_layout(Platform(ScenarioConfig(duration_s=1.0, backends=BACKENDS)))


def obs(difficulty: float = 0.5, busy: tuple[int, int, int] = (0, 0, 0), **overrides: float) -> np.ndarray:
    """A routing observation with the backends' published capability and price."""
    vector = np.zeros(len(LAYOUT), dtype=np.float32)
    vector[LAYOUT.index["tenant_default"]] = 1.0
    vector[LAYOUT.index["log_prompt_tokens"]] = 6.0
    vector[LAYOUT.index["difficulty"]] = difficulty
    for b, n in zip(BACKENDS, busy, strict=True):
        vector[LAYOUT.index[f"busy_{b.name}"]] = n
        vector[LAYOUT.index[f"capability_{b.name}"]] = b.capability
        vector[LAYOUT.index[f"usd_per_mtok_out_{b.name}"]] = b.usd_per_mtok_out
    for name, value in overrides.items():
        vector[LAYOUT.index[name]] = value
    return vector


def test_round_robin_cycles_and_restarts_on_reset() -> None:
    policy = RoundRobin(LAYOUT, NAMES)
    assert [policy.act(obs()) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    policy.reset()
    assert policy.act(obs()) == 0


def test_join_shortest_queue_picks_the_least_busy_backend() -> None:
    policy = JoinShortestQueue(LAYOUT, NAMES)
    assert policy.act(obs(busy=(5, 3, 4))) == LARGE
    assert policy.act(obs(busy=(2, 7, 1))) == MEDIUM
    assert policy.act(obs(busy=(3, 3, 3))) == SMALL  # ties: lowest index


def test_power_of_two_choices_never_picks_the_busiest_and_follows_its_pairs() -> None:
    policy = PowerOfTwoChoices(LAYOUT, NAMES, seed=0)
    picks = Counter(policy.act(obs(busy=(5, 9, 0))) for _ in range(3000))
    # Pairs {small, large} -> small, {small, medium} -> medium, {large, medium} -> medium.
    assert set(picks) == {SMALL, MEDIUM}
    assert picks[MEDIUM] / 3000 == pytest.approx(2 / 3, abs=0.03)


def test_random_routers_are_reproducible_from_their_seed_and_reset() -> None:
    for cls in (RandomRouter, PowerOfTwoChoices):
        first, twin, other = cls(LAYOUT, NAMES, seed=7), cls(LAYOUT, NAMES, seed=7), cls(LAYOUT, NAMES, seed=8)
        run = [first.act(obs(busy=(1, 2, 3))) for _ in range(50)]
        assert [twin.act(obs(busy=(1, 2, 3))) for _ in range(50)] == run
        assert [other.act(obs(busy=(1, 2, 3))) for _ in range(50)] != run
        first.reset()
        assert [first.act(obs(busy=(1, 2, 3))) for _ in range(50)] == run
    uniform = RandomRouter(LAYOUT, NAMES, seed=1)
    picks = Counter(uniform.act(obs()) for _ in range(3000))
    assert all(picks[b] / 3000 == pytest.approx(1 / 3, abs=0.03) for b in range(3))


def test_cheapest_and_strongest_read_price_and_capability_from_the_observation() -> None:
    assert Cheapest(LAYOUT, NAMES).act(obs()) == SMALL
    assert Strongest(LAYOUT, NAMES).act(obs()) == LARGE
    # The observation, not the configuration, decides: a discounted medium becomes the cheapest.
    assert Cheapest(LAYOUT, NAMES).act(obs(usd_per_mtok_out_medium=0.1)) == MEDIUM
    assert Strongest(LAYOUT, NAMES).act(obs(capability_small=0.95)) == SMALL


@pytest.mark.parametrize(
    ("difficulty", "kwargs", "expected"),
    [
        (0.2, {}, SMALL),  # 0.35 >= 0.2
        (0.35, {}, SMALL),  # at the boundary the weaker backend still takes it
        (0.5, {}, MEDIUM),
        (0.7, {}, LARGE),
        (0.95, {}, LARGE),  # nobody is capable enough: the strongest
        (0.3, {"margin": 0.1}, MEDIUM),  # 0.35 < 0.3 + 0.1
        (0.55, {"margin": 0.1}, LARGE),
        (0.45, {"thresholds": {"small": 0.5}}, SMALL),  # an override extends the small backend's range
        (0.3, {"thresholds": {"small": 0.1, "medium": 0.4}}, MEDIUM),
    ],
)
def test_difficulty_cascade_sends_each_request_to_the_weakest_capable_backend(
    difficulty: float, kwargs: dict[str, Any], expected: int
) -> None:
    assert DifficultyCascade(LAYOUT, NAMES, **kwargs).act(obs(difficulty)) == expected


def test_routers_check_backend_names_against_the_layout() -> None:
    with pytest.raises(ValueError, match="layout's order"):
        JoinShortestQueue(LAYOUT, ["small", "medium", "large"])
    with pytest.raises(ValueError, match=r"needs the observation feature.*busy_tiny"):
        JoinShortestQueue(LAYOUT, ["small", "large", "medium", "tiny"])
    with pytest.raises(ValueError, match=r"unknown backend.*huge"):
        DifficultyCascade(LAYOUT, NAMES, thresholds={"huge": 0.5})


ROUTERS = ["random", "round_robin", "jsq", "power_of_two", "cheapest", "strongest", "cascade"]


@pytest.mark.parametrize("name", ROUTERS)
def test_every_router_returns_a_python_int_index(name: str) -> None:
    policy = make_policy(name, layout=LAYOUT, backend_names=NAMES)
    rng = np.random.default_rng(0)
    for _ in range(30):
        busy = tuple(int(n) for n in rng.integers(0, 10, 3))
        action = policy.act(obs(float(rng.random()), busy))  # type: ignore[arg-type]
        assert type(action) is int and 0 <= action < 3


@pytest.mark.parametrize("name", ROUTERS)
def test_invalid_observations_raise_naming_the_problem(name: str) -> None:
    policy = make_policy(name, layout=LAYOUT, backend_names=NAMES)
    with pytest.raises(ValueError, match=r"shape \(2, 13\), expected \(13,\)"):
        policy.act(np.stack([obs(), obs()]))
    bad = obs()
    bad[LAYOUT.index["busy_medium"]] = np.nan
    with pytest.raises(ValueError, match=r"'busy_medium'.*not a finite number"):
        policy.act(bad)
    assert set(ROUTERS) <= set(POLICIES)
