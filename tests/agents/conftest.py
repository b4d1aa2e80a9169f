"""Small environments and a save/load helper shared by the learner tests."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

import servegym.envs  # noqa: F401 - registers the environments

# A diurnal workload whose period fits several times into a short episode.
DIURNAL = ["workload.kind=diurnal", "workload.period_s=600.0", "workload.peak_s=0.0", "workload.amplitude=0.6"]


def make(env_id: str, duration_s: float, overrides: list[str]) -> gym.Env[Any, Any]:
    return gym.make(env_id, duration_s=duration_s, overrides=overrides)


def rollout_actions(env: gym.Env[Any, Any], policy: Any, seed: int, steps: int) -> list[Any]:
    """The actions ``policy`` takes in a seeded episode of ``env`` (at most ``steps``)."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    actions = []
    for _ in range(steps):
        action = policy.act(obs)
        assert env.action_space.contains(np.asarray(action) if not isinstance(action, int) else action)
        actions.append(np.asarray(action).tolist())
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return actions
