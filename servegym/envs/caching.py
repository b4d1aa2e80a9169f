"""Caching-v0: admission into the cache hierarchy, and the semantic threshold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from servegym.envs.base import PlatformEnv
from servegym.envs.features import (
    AdmissionFeatures,
    KeyStats,
    Layout,
    admission_layout,
    interval_features,
    interval_layout,
)
from servegym.sim.config import ConfigError
from servegym.sim.platform import ADMIT_NONE, Decision

__all__ = ["DEFAULT_THRESHOLDS", "CachingEnv"]

DEFAULT_THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)


class CachingEnv(PlatformEnv):
    """Decide which answers to cache, in which tier, and how similar a semantic hit must be.

    ## Description
    Two kinds of decision share one episode. An *admission* decision comes each time a
    backend's answer could be written into the cache hierarchy: write it from some level
    down (inclusive), or not at all. A *threshold* decision comes every control interval
    (only with a semantic tier): the cosine similarity a semantic hit needs. Lower
    thresholds hit more often but return wrong answers (false hits) for near-miss intents.

    ## Action Space
    ``MultiDiscrete([n_levels + 1, len(thresholds)])``. Component 0, used at admission
    decisions: 0 = do not cache, ``k`` = write into level ``k - 1`` and every slower level
    (levels are the exact tiers in order, then the semantic tier). Component 1, used at
    threshold decisions: an index into ``thresholds``. The component a decision does not
    use is ignored.

    ## Observation Space
    ``Box(float32)``: ``decision_is_threshold`` (0 or 1), then the admission layout of
    :func:`servegym.envs.features.admission_layout` (zeros at threshold decisions), then
    the interval layout of :func:`servegym.envs.features.interval_layout` (the latest
    interval). ``env.unwrapped.layout.names`` lists every feature in order.

    ## Rewards
    As every servegym env (:mod:`servegym.envs.base`): hits save token cost and latency,
    false hits cost bad answers, cached entries cost storage; all land in the dollar
    reward when the affected requests finish.

    ## Starting State
    Empty caches (or warmed, as the scenario says); the first observation is the first decision.

    ## Episode End
    Truncation at the scenario's ``duration_s``; no terminal state.

    ## Arguments
    As :class:`~servegym.envs.autoscaling.AutoscalingEnv`, plus ``thresholds`` (the grid
    of semantic thresholds, each in (0, 1]).

    ## Version History
    * v0: initial version. Since December 2026 the reward also prices dropped and failed
      requests (``drop_weight``, by default the scenario's ``objective.drop_usd``) and
      ``reset(seed=s)`` simulates platform seed ``s`` (the seed ``servegym evaluate`` uses).
    """

    deferred: ClassVar[frozenset[str]] = frozenset({"admit", "threshold"})

    def __init__(
        self, scenario: Any = "default", *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, **kwargs: Any
    ) -> None:
        super().__init__(scenario, **kwargs)
        if not thresholds or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in thresholds):
            raise ConfigError(f"CachingEnv.thresholds = {thresholds!r} is invalid: must be a non-empty list in (0, 1]")
        self._init_args["thresholds"] = tuple(thresholds)
        self.thresholds = tuple(float(t) for t in thresholds)
        if self.platform.n_levels == 0:
            raise ConfigError(
                "CachingEnv needs a scenario with at least one cache level (cache.tiers or cache.semantic)"
            )
        self.admission = admission_layout(self.platform)
        self.interval = interval_layout(self.scenario)
        names = ("decision_is_threshold", *self.admission.names, *self.interval.names)
        low = np.concatenate([[0.0], self.admission.low, self.interval.low]).astype(np.float32)
        high = np.concatenate([[1.0], self.admission.high, self.interval.high]).astype(np.float32)
        self.layout = Layout(names, low, high)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.MultiDiscrete([self.platform.n_levels + 1, len(self.thresholds)])
        self._on_reset()

    def _on_reset(self) -> None:
        self._keys = KeyStats()
        self._features = AdmissionFeatures(self.platform)
        # The observation at an admission: a template holding the latest interval's
        # features (zeros before the first interval), copied and filled per request.
        self._admit_obs = np.zeros(len(self.layout), dtype=np.float32)
        self._admission_part = slice(1, 1 + len(self.admission))

    def _observe(self, decision: Decision | None) -> np.ndarray:
        # This runs at every admission (per request): one copy, one slice assignment.
        if decision is not None and decision.kind == "admit":
            keys = self._keys
            platform = self.platform
            keys.observe(platform)
            request = decision.request
            count, age = keys.of(platform.requests.key[request], request)
            obs = self._admit_obs.copy()
            obs[self._admission_part] = self._features.values(request, count, age)
            return obs
        if decision is not None and decision.metrics is not None:
            self._admit_obs[self._admission_part.stop :] = interval_features(decision.metrics)
            obs = self._admit_obs.copy()
            obs[0] = 1.0  # decision_is_threshold; the admission features stay zeros
            return obs
        return self._admit_obs.copy()  # the episode ended: no decision, the latest interval

    def _act(self, decision: Decision, action: Any) -> Any:
        if decision.kind == "admit":
            choice = action[0]
            return ADMIT_NONE if choice == 0 else choice - 1
        return self.thresholds[action[1]]
