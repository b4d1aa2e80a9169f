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

# No registered step limit: an episode's length is the scenario's (duration_s over the
# control interval, or one step per request or cache write), and every env truncates at
# the scenario's horizon itself, with the episode's KPIs in the last info. A fixed
# TimeLimit would cut a longer duration_s or a shorter interval short, silently and
# without KPIs; pass max_episode_steps to gymnasium.make for a shorter episode.
for _id, _entry in (
    (ENV_IDS[0], "servegym.envs.autoscaling:AutoscalingEnv"),
    (ENV_IDS[1], "servegym.envs.routing:RoutingEnv"),
    (ENV_IDS[2], "servegym.envs.caching:CachingEnv"),
    (ENV_IDS[3], "servegym.envs.platform_env:PlatformControlEnv"),
):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry)
