"""Gymnasium environments over the simulator's decision points, registered on import.

``servegym/Autoscaling-v0``, ``servegym/Routing-v0``, ``servegym/Caching-v0`` and
``servegym/Platform-v0``; each takes ``scenario=`` (a shipped name, a YAML path, a
``ScenarioConfig`` or a mapping), ``overrides=``, ``duration_s=`` and the reward weights.
"""

from __future__ import annotations

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
