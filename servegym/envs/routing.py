"""Routing-v0: choose the model backend for every request that reaches an agent."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from servegym.envs.base import PlatformEnv
from servegym.envs.features import RoutingFeatures, routing_layout
from servegym.sim.platform import Decision

__all__ = ["RoutingEnv"]


class RoutingEnv(PlatformEnv):
    """Pick the backend (model) that answers each request, trading price, speed and quality.

    ## Description
    One step per request that missed the caches and got an agent slot: the agent sees the
    request (tenant, prompt length, difficulty) and each backend's load, capability and
    price, and picks a backend. Stronger backends answer hard requests well but cost more
    and are slower; loaded backends slow down (time per output token grows with
    concurrency). Pool scaling, caching and admission follow the scenario's built-in rules.

    ## Action Space
    ``Discrete(n_backends)``: the index of the backend, in the scenario's order.

    ## Observation Space
    ``Box(float32)``, the layout of :func:`servegym.envs.features.routing_layout`: one-hot
    tenant (``tenant_<name>``, 0..1), ``log_prompt_tokens`` (0..inf), ``difficulty``
    (0..1), ``queue_len`` (0..inf), then per backend ``busy_<b>`` (calls in progress,
    0..inf), ``capability_<b>`` (0..1) and ``usd_per_mtok_out_<b>`` (0..inf).
    ``env.unwrapped.layout.names`` lists them in order.

    ## Rewards
    A request's outcome is known only when it finishes, after later requests were
    routed. The reward of a step is therefore the negative cost of everything that
    finished since the previous step (dollars billed, SLO misses, bad answers, drops; see
    :mod:`servegym.envs.base`): delayed credit, as in any queueing control problem. Over
    an episode the rewards sum to minus the episode's objective.

    ## Starting State
    The scenario at time 0; the first observation is the first request to reach an agent.

    ## Episode End
    Truncation when the scenario's ``duration_s`` is reached; no terminal state.
    ``info["kpis"]`` carries the episode's KPIs on the last step.

    ## Arguments
    As :class:`~servegym.envs.autoscaling.AutoscalingEnv`.

    ## Version History
    * v0: initial version. Since December 2026 the reward also prices dropped and failed
      requests (``drop_weight``, by default the scenario's ``objective.drop_usd``) and
      ``reset(seed=s)`` simulates platform seed ``s`` (the seed ``servegym evaluate`` uses).
    """

    deferred: ClassVar[frozenset[str]] = frozenset({"route"})

    def __init__(self, scenario: Any = "default", **kwargs: Any) -> None:
        super().__init__(scenario, **kwargs)
        self.layout = routing_layout(self.platform)
        self.observation_space = spaces.Box(self.layout.low, self.layout.high, dtype=np.float32)
        self.action_space = spaces.Discrete(len(self.scenario.backends))
        self._features = RoutingFeatures(self.platform)
        self._last = np.zeros(len(self.layout), dtype=np.float32)

    def _on_reset(self) -> None:
        self._features = RoutingFeatures(self.platform)

    def _observe(self, decision: Decision | None) -> np.ndarray:
        if decision is None:  # the episode ended: repeat the last observation
            return self._last.copy()
        self._last = obs = self._features(decision.request)
        return obs.copy()

    def _act(self, decision: Decision, action: Any) -> Any:
        return action
