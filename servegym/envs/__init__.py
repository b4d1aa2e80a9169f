"""Gymnasium environments over the simulator's decision points, registered on import.

``servegym/Autoscaling-v0``, ``servegym/Routing-v0``, ``servegym/Caching-v0`` and
``servegym/Platform-v0``; each takes ``scenario=`` (a shipped name, a YAML path, a
``ScenarioConfig`` or a mapping), ``overrides=``, ``duration_s=`` and the reward weights.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym

from servegym.envs.autoscaling import AutoscalingEnv
from servegym.envs.base import PlatformEnv, resolve_scenario
from servegym.envs.caching import CachingEnv
from servegym.envs.platform_env import PlatformControlEnv
from servegym.envs.routing import RoutingEnv

__all__ = [
    "ENV_IDS",
    "AutoscalingEnv",
    "CachingEnv",
    "PlatformControlEnv",
    "PlatformEnv",
    "RoutingEnv",
    "make",
    "resolve_scenario",
]

ENV_IDS = ("servegym/Autoscaling-v0", "servegym/Routing-v0", "servegym/Caching-v0", "servegym/Platform-v0")

# Interval envs take one step per control interval: 3600 s / 15 s for the default
# scenario. TimeLimit guards other scenarios too; the env truncates at its own horizon.
_INTERVAL_STEPS = 240
for _id, _entry, _steps in (
    (ENV_IDS[0], "servegym.envs.autoscaling:AutoscalingEnv", _INTERVAL_STEPS),
    (ENV_IDS[1], "servegym.envs.routing:RoutingEnv", None),
    (ENV_IDS[2], "servegym.envs.caching:CachingEnv", None),
    (ENV_IDS[3], "servegym.envs.platform_env:PlatformControlEnv", _INTERVAL_STEPS),
):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry, max_episode_steps=_steps)


def make(env_id: str, **kwargs: Any) -> gym.Env[Any, Any]:
    """``gymnasium.make`` with a ``TimeLimit`` long enough for the scenario's own horizon.

    The interval environments are registered with a limit of 240 steps (one hour of 15 s
    intervals, the default scenario); a longer ``duration_s`` or a shorter control
    interval would otherwise be cut off by ``TimeLimit`` before the episode's KPIs arrive.
    """
    env = gym.make(env_id, **kwargs)
    limit = env.spec.max_episode_steps if env.spec is not None else None
    scenario = env.unwrapped.scenario  # type: ignore[attr-defined]
    needed = math.ceil(scenario.duration_s / scenario.control.interval_s) + 1
    if limit is not None and "max_episode_steps" not in kwargs and needed > limit:
        env.close()
        env = gym.make(env_id, max_episode_steps=needed, **kwargs)
    return env
