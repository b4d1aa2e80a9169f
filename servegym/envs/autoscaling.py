"""Autoscaling-v0: size the agent pool every control interval."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from servegym.envs.base import PlatformEnv
from servegym.envs.features import interval_features, interval_layout
from servegym.sim.config import ScenarioConfig
from servegym.sim.platform import Decision

__all__ = ["AutoscalingEnv"]


class AutoscalingEnv(PlatformEnv):
    """Choose how many agent replicas the pool should have, once per control interval.

    ## Description
    The simulated platform serves its scenario's workload (caches, backends, routing as
    configured). Every ``control.interval_s`` seconds the agent sees the interval's
    metrics and sets the pool's target replica count. New replicas pay a sampled cold
    start before serving; removed ones drain. The problem is the one Kubernetes HPA and
    Knative KPA solve: enough capacity for the SLO, no more than needed for the bill.

    ## Action Space
    ``Discrete(max_replicas + 1)``: the target replica count. Targets below
    ``pool.min_replicas`` are invalid; ``action_masks()`` marks them (for MaskablePPO)
    and the pool raises them to the minimum if taken anyway.

    ## Observation Space
    ``Box(float32)`` with the interval features of :func:`servegym.envs.features.interval_layout`:

    | index | feature | min | max |
    |---|---|---|---|
    | 0 | arrival_rate_rps | 0 | inf |
    | 1 | queue_len | 0 | inf |
    | 2 | utilisation (time-averaged busy slots / slots) | 0 | 1 |
    | 3 | ready_replicas | 0 | max_replicas |
    | 4 | provisioning_replicas | 0 | max_replicas |
    | 5 | draining_replicas | 0 | inf |
    | 6 | target_replicas | 0 | max_replicas |
    | 7 | latency_p50_s (0 if none completed) | 0 | inf |
    | 8 | latency_p95_s (0 if none completed) | 0 | inf |
    | 9 | slo_violation_rate | 0 | 1 |
    | 10 | hit_rate | 0 | 1 |
    | 11 | semantic_threshold (0 without a semantic tier) | 0 | 1 |
    | 12 | time_of_day_sin | -1 | 1 |
    | 13 | time_of_day_cos | -1 | 1 |

    ## Rewards
    Minus the objective of the interval (:mod:`servegym.sim.objective`): the dollars spent
    (replicas, tokens, storage) plus ``slo_weight`` per request that missed its SLO,
    ``quality_weight`` per bad answer and ``drop_weight`` per request dropped, failed or (at the end) unfinished
    (see :mod:`servegym.envs.base`). The weights default to the scenario's objective
    prices, so the return is minus the objective ``servegym evaluate`` ranks by.

    ## Starting State
    The scenario's initial pool and empty caches (or warmed ones, as configured); the
    first observation is the first interval, run with the initial pool.

    ## Episode End
    Truncation when the scenario's ``duration_s`` is reached (a time limit the env
    applies itself, so any ``duration_s`` and control interval run to their end; pass
    ``max_episode_steps`` to ``gymnasium.make`` for shorter episodes). There is no terminal state.
    ``info["kpis"]`` carries the episode's KPIs on the last step.

    ## Arguments
    ``scenario`` (name, YAML path, ``ScenarioConfig`` or mapping), ``overrides``
    (``key=value`` strings), ``duration_s``, ``cost_weight`` (1), and ``slo_weight``,
    ``quality_weight``, ``drop_weight`` (default: the scenario's ``objective`` prices).

    ## Version History
    * v0: initial version. Since December 2026 the reward also prices dropped and failed
      requests (``drop_weight``, by default the scenario's ``objective.drop_usd``) and
      ``reset(seed=s)`` simulates platform seed ``s`` (the seed ``servegym evaluate`` uses).
    """

    deferred: ClassVar[frozenset[str]] = frozenset({"scale"})

    def __init__(self, scenario: str | ScenarioConfig | Mapping[str, Any] = "default", **kwargs: Any) -> None:
        super().__init__(scenario, **kwargs)
        pool = self.scenario.pool
        self.layout = interval_layout(self.scenario)
        self.observation_space = spaces.Box(self.layout.low, self.layout.high, dtype=np.float32)
        self.action_space = spaces.Discrete(pool.max_replicas + 1)
        self._last = np.zeros(len(self.layout), dtype=np.float32)

    def action_masks(self) -> np.ndarray:
        """Valid targets: ``min_replicas..max_replicas``."""
        mask = np.ones(self.scenario.pool.max_replicas + 1, dtype=bool)
        mask[: self.scenario.pool.min_replicas] = False
        return mask

    def _observe(self, decision: Decision | None) -> np.ndarray:
        if decision is not None and decision.metrics is not None:
            self._last = interval_features(decision.metrics)
        return self._last.copy()

    def _act(self, decision: Decision, action: Any) -> Any:
        return int(action)
