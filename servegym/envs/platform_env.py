"""Platform-v0: scaling, routing mix and semantic threshold together, per interval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from servegym.envs.base import PlatformEnv
from servegym.envs.caching import DEFAULT_THRESHOLDS
from servegym.envs.features import Layout, interval_features, interval_layout
from servegym.sim.config import ConfigError
from servegym.sim.platform import Decision, Platform

__all__ = ["DEFAULT_MARGINS", "PlatformControlEnv"]

DEFAULT_MARGINS = (-1.0, -0.2, -0.1, 0.0, 0.1, 0.2, 1.0)


class PlatformControlEnv(PlatformEnv):
    """Run the whole platform: pool size, routing mix and semantic threshold, every interval.

    ## Description
    Every control interval the agent sets three things at once: the target replica count;
    the routing mix, as the margin of a difficulty cascade (a request goes to the weakest
    backend whose capability is at least its difficulty plus the margin, else to the
    strongest: margin -1 sends everything to the weakest, +1 everything to the
    strongest); and the semantic cache's similarity threshold.

    ## Action Space
    ``MultiDiscrete([max_replicas + 1, len(margins), len(thresholds)])``: target replicas
    (below ``min_replicas`` is masked by ``action_masks()`` and raised to the minimum),
    an index into ``margins``, an index into ``thresholds`` (ignored without a semantic tier).

    ## Observation Space
    ``Box(float32)``: the interval layout of :func:`servegym.envs.features.interval_layout`
    (the table in :class:`~servegym.envs.autoscaling.AutoscalingEnv`) followed by
    ``routing_margin`` (-1..1). ``env.unwrapped.layout`` names them, so scaling policies
    built with it read this observation.

    ## Rewards
    As every servegym env (:mod:`servegym.envs.base`): minus the objective (dollars, SLO
    misses, bad answers and drops) of what finished in the interval.

    ## Starting State
    The scenario's initial pool, margin 0 and the scenario's threshold; the first
    observation is the first interval.

    ## Episode End
    Truncation at the scenario's ``duration_s``; no terminal state.

    ## Arguments
    As :class:`~servegym.envs.autoscaling.AutoscalingEnv`, plus ``margins`` and ``thresholds`` (the grids).

    ## Version History
    * v0: initial version. Since December 2026 the reward also prices dropped and failed
      requests (``drop_weight``, by default the scenario's ``objective.drop_usd``) and
      ``reset(seed=s)`` simulates platform seed ``s`` (the seed ``servegym evaluate`` uses).
    """

    deferred: ClassVar[frozenset[str]] = frozenset({"scale"})

    def __init__(
        self,
        scenario: Any = "default",
        *,
        margins: Sequence[float] = DEFAULT_MARGINS,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(scenario, **kwargs)
        if not margins or not all(isinstance(m, (int, float)) and -1 <= m <= 1 for m in margins):
            raise ConfigError(
                f"PlatformControlEnv.margins = {margins!r} is invalid: must be a non-empty list in [-1, 1]"
            )
        if not thresholds or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in thresholds):
            raise ConfigError(
                f"PlatformControlEnv.thresholds = {thresholds!r} is invalid: must be a non-empty list in (0, 1]"
            )
        self._init_args.update(margins=tuple(margins), thresholds=tuple(thresholds))
        self.margins = tuple(float(m) for m in margins)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.margin = 0.0
        by_capability = sorted(range(len(self.scenario.backends)), key=lambda b: self.scenario.backends[b].capability)
        self._ladder = [(self.scenario.backends[b].capability, b) for b in by_capability]
        pool = self.scenario.pool
        base = interval_layout(self.scenario)
        self.names = (*base.names, "routing_margin")
        low = np.append(base.low, np.float32(-1.0)).astype(np.float32)
        high = np.append(base.high, np.float32(1.0)).astype(np.float32)
        self.layout = Layout(self.names, low, high)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.MultiDiscrete([pool.max_replicas + 1, len(self.margins), len(self.thresholds)])
        self._last = np.zeros(len(self.names), dtype=np.float32)

    def _on_reset(self) -> None:
        self.margin = 0.0

    def action_masks(self) -> np.ndarray:
        """Concatenated per-component masks (the MaskablePPO convention for MultiDiscrete)."""
        pool = self.scenario.pool
        replicas = np.ones(pool.max_replicas + 1, dtype=bool)
        replicas[: pool.min_replicas] = False
        return np.concatenate([replicas, np.ones(len(self.margins), bool), np.ones(len(self.thresholds), bool)])

    def _route(self, platform: Platform, request: int) -> int:
        need = platform.requests.difficulty[request] + self.margin
        for capability, backend in self._ladder:
            if capability >= need:
                return backend
        return self._ladder[-1][1]

    def _observe(self, decision: Decision | None) -> np.ndarray:
        if decision is not None and decision.metrics is not None:
            self._last = np.append(interval_features(decision.metrics), np.float32(self.margin)).astype(np.float32)
        return self._last.copy()

    def _act(self, decision: Decision, action: Any) -> Any:
        self.margin = self.margins[int(action[1])]
        if self.platform.semantic is not None:
            self.platform.semantic.threshold = self.thresholds[int(action[2])]
        return int(action[0])
