"""Policies as the simulator's controller, without Gymnasium.

:class:`PolicyController` answers a :class:`~servegym.sim.platform.Platform`'s decision
points with policies: it builds each decision's observation with the same functions of
:mod:`servegym.envs.features` that the environments use, so a policy makes the same
decision here as inside an environment given the same state. That is how heuristics are
evaluated and compared at full simulation speed (no pause per decision)::

    controller = PolicyController(scaling=HPA(**scaling_kwargs(scenario)))
    kpis = Platform(scenario, controller).run()
"""

from __future__ import annotations

from typing import Any

import numpy as np

from servegym.envs.features import (
    KeyStats,
    Layout,
    admission_features,
    admission_layout,
    interval_features,
    interval_layout,
    routing_features,
    routing_layout,
)
from servegym.policies.base import Policy
from servegym.sim.platform import ADMIT_NONE, BuiltinController, Platform
from servegym.sim.telemetry import IntervalMetrics

__all__ = ["PolicyController"]


def _integer(action: Any, decision: str, allowed: str) -> int:
    """``action`` as a Python int, or a ValueError saying which policy returned what."""
    if isinstance(action, (int, np.integer)) and not isinstance(action, (bool, np.bool_)):
        return int(action)
    raise ValueError(f"{decision} policy returned {action!r} ({type(action).__name__}): must be an integer, {allowed}")


class PolicyController:
    """A :class:`~servegym.sim.platform.Controller` that asks policies for every decision.

    ``scaling`` and ``threshold`` read interval observations (scaling returns target
    replicas, threshold a cosine similarity); ``routing`` reads routing observations and
    returns a backend index; ``admission`` reads admission observations and returns
    ``k`` in ``0..n_levels`` (0: store nothing, ``k``: cache level ``k - 1`` and slower).
    A decision whose policy is ``None`` falls back to the platform's
    :class:`~servegym.sim.platform.BuiltinController` (the scenario's ``control``
    section), which uses the same random stream as when the platform builds it itself.

    The controller binds to a platform at its first decision: it builds the layouts,
    checks that each policy was built for them, and resets the policies. A controller
    handed to a new platform binds again, so one object can run episode after episode.
    """

    def __init__(
        self,
        *,
        scaling: Policy | None = None,
        routing: Policy | None = None,
        admission: Policy | None = None,
        threshold: Policy | None = None,
    ) -> None:
        self.scaling = scaling
        self.routing = routing
        self.admission = admission
        self.threshold = threshold
        self._platform: Platform | None = None
        self._builtin: BuiltinController | None = None
        self._keys = KeyStats()

    def _bind(self, platform: Platform) -> BuiltinController:
        """The fallback controller for ``platform``, binding to it first if it is new."""
        if platform is self._platform and self._builtin is not None:
            return self._builtin
        intervals = interval_layout(platform.scenario)
        layouts: dict[str, tuple[Policy | None, Layout]] = {
            "scaling": (self.scaling, intervals),
            "threshold": (self.threshold, intervals),
            "routing": (self.routing, routing_layout(platform)),
            "admission": (self.admission, admission_layout(platform)),
        }
        for decision, (policy, layout) in layouts.items():
            expected = getattr(policy, "layout", None)
            if isinstance(expected, Layout) and expected.names != layout.names:
                raise ValueError(
                    f"the {decision} policy {type(policy).__name__} was built for the features {list(expected.names)}, "
                    f"but this platform's {decision} observations have {list(layout.names)}: "
                    "build it with the layout of this platform's scenario"
                )
        for policy in (self.scaling, self.routing, self.admission, self.threshold):
            if policy is not None:
                policy.reset()
        self._platform = platform
        self._builtin = BuiltinController(platform.scenario.control, platform.scenario, platform.streams["controller"])
        self._keys = KeyStats()
        return self._builtin

    def route(self, platform: Platform, request: int) -> int:
        builtin = self._bind(platform)
        if self.routing is None:
            return builtin.route(platform, request)
        action = self.routing.act(routing_features(platform, request))
        return _integer(action, "routing", "a backend index")

    def admit(self, platform: Platform, request: int) -> int:
        builtin = self._bind(platform)
        if self.admission is None:
            return builtin.admit(platform, request)
        keys = self._keys
        keys.observe(platform)
        count, age_s = keys.of(platform.requests.key[request], request)
        action = self.admission.act(admission_features(platform, request, count, age_s))
        k = _integer(action, "admission", f"0 (store nothing) or a level 1..{platform.n_levels}")
        if not 0 <= k <= platform.n_levels:
            raise ValueError(
                f"admission policy returned {k}: must be 0 (store nothing) or a level 1..{platform.n_levels}"
            )
        return ADMIT_NONE if k == 0 else k - 1

    def scale(self, platform: Platform, metrics: IntervalMetrics) -> int | None:
        builtin = self._bind(platform)
        if self.scaling is None:
            return builtin.scale(platform, metrics)
        action = self.scaling.act(interval_features(metrics))
        return _integer(action, "scaling", "a target replica count")

    def semantic_threshold(self, platform: Platform, metrics: IntervalMetrics) -> float | None:
        builtin = self._bind(platform)
        if self.threshold is None:
            return builtin.semantic_threshold(platform, metrics)
        action = self.threshold.act(interval_features(metrics))
        if isinstance(action, (int, float, np.integer, np.floating)) and not isinstance(action, (bool, np.bool_)):
            return float(action)
        raise ValueError(f"threshold policy returned {action!r} ({type(action).__name__}): must be a number in (0, 1]")
