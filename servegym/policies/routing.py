"""Routing policies: which model backend serves a request.

Each policy reads one routing observation (the layout of
:func:`servegym.envs.features.routing_layout`: the request, then ``busy_<b>``,
``capability_<b>`` and ``usd_per_mtok_out_<b>`` per backend) and returns the backend's
index as a Python ``int``, the index of ``backend_names``, which must list the
platform's backends in the platform's order (it is checked against the layout). Random
policies draw from their own ``numpy.random.Generator`` seeded by ``seed``; ``reset()``
re-seeds it, so every episode routes alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from servegym.envs.features import Layout
from servegym.policies.base import checked_observation, require_features

__all__ = [
    "Cheapest",
    "DifficultyCascade",
    "JoinShortestQueue",
    "PowerOfTwoChoices",
    "RandomRouter",
    "RoundRobin",
    "Strongest",
]

_PER_BACKEND = ("busy", "capability", "usd_per_mtok_out")


class _Router:
    """What every router shares: the layout and the positions of each backend's features."""

    def __init__(self, layout: Layout, backend_names: Sequence[str]) -> None:
        owner = type(self).__name__
        names = list(backend_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{owner}: backend_names = {names!r} is invalid: must list distinct backend names")
        at = require_features(layout, ["difficulty"] + [f"{k}_{b}" for b in names for k in _PER_BACKEND], owner)
        in_layout = [n.removeprefix("busy_") for n in layout.names if n.startswith("busy_")]
        if in_layout != names:
            raise ValueError(
                f"{owner}: backend_names = {names!r} must list the platform's backends in the layout's order, "
                f"{in_layout!r}: the index a router returns is a position in that order"
            )
        self.layout = layout
        self.backend_names = names
        self.n_backends = len(names)
        self._difficulty = at["difficulty"]
        self._busy = np.array([at[f"busy_{b}"] for b in names])
        self._capability = np.array([at[f"capability_{b}"] for b in names])
        self._price = np.array([at[f"usd_per_mtok_out_{b}"] for b in names])

    def _observation(self, observation: np.ndarray) -> np.ndarray:
        return checked_observation(observation, self.layout, type(self).__name__)

    def reset(self) -> None:
        """Forget the past (nothing, for a router without memory)."""


class _RandomRouter(_Router):
    """A router with its own random generator, re-seeded by ``reset()``."""

    def __init__(self, layout: Layout, backend_names: Sequence[str], seed: int | None = None) -> None:
        super().__init__(layout, backend_names)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)


class RandomRouter(_RandomRouter):
    """Uniformly random backend: the no-information baseline."""

    def act(self, observation: np.ndarray) -> int:
        self._observation(observation)
        return int(self.rng.integers(self.n_backends))


class RoundRobin(_Router):
    """Backends in turn, 0, 1, ..., n-1, 0, ...: the default of most load balancers (nginx, Envoy).

    It makes the same choices as the simulator's built-in ``round_robin`` rule.
    """

    def __init__(self, layout: Layout, backend_names: Sequence[str]) -> None:
        super().__init__(layout, backend_names)
        self._next = 0

    def reset(self) -> None:
        self._next = 0

    def act(self, observation: np.ndarray) -> int:
        self._observation(observation)
        b = self._next
        self._next = (b + 1) % self.n_backends
        return b


class JoinShortestQueue(_Router):
    """The backend with the fewest calls in progress (``busy_<b>``), lowest index on ties.

    Join-the-shortest-queue is optimal for identical exponential servers (Winston,
    "Optimality of the shortest line discipline", J. Appl. Prob. 1977); here it also
    keeps each backend's concurrency, hence its time per output token, low.
    """

    def act(self, observation: np.ndarray) -> int:
        obs = self._observation(observation)
        return int(np.argmin(obs[self._busy]))


class PowerOfTwoChoices(_RandomRouter):
    """Two distinct backends drawn at random; the less busy one wins (the first drawn on ties).

    Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing", IEEE TPDS
    2001: two random probes cut the maximum load exponentially against one, at a fraction
    of the state join-shortest-queue needs.
    """

    def act(self, observation: np.ndarray) -> int:
        obs = self._observation(observation)
        if self.n_backends == 1:
            return 0
        a, b = self.rng.choice(self.n_backends, size=2, replace=False)
        return int(a) if obs[self._busy[a]] <= obs[self._busy[b]] else int(b)


class Cheapest(_Router):
    """The backend with the lowest output-token price (``usd_per_mtok_out_<b>``), lowest index on ties."""

    def act(self, observation: np.ndarray) -> int:
        obs = self._observation(observation)
        return int(np.argmin(obs[self._price]))


class Strongest(_Router):
    """The backend with the highest capability (``capability_<b>``), lowest index on ties."""

    def act(self, observation: np.ndarray) -> int:
        obs = self._observation(observation)
        return int(np.argmax(obs[self._capability]))


class DifficultyCascade(_Router):
    """The weakest backend able to take the request's difficulty, else the strongest.

    A routing form of the LLM cascade of FrugalGPT (Chen, Zaharia and Zou, "FrugalGPT:
    How to Use Large Language Models While Reducing Cost and Improving Performance", 2023)
    and of RouteLLM's difficulty-aware routers (Ong et al. 2024): try backends from the
    least to the most capable and stop at the first that should answer well. Backend
    ``b`` takes difficulty ``d`` when ``capability_b >= d + margin`` (default margin 0:
    the point where its chance of a good answer passes one half); ``thresholds`` may
    instead give, by backend name, the highest difficulty a backend takes.
    """

    def __init__(
        self,
        layout: Layout,
        backend_names: Sequence[str],
        margin: float = 0.0,
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(layout, backend_names)
        owner = type(self).__name__
        if not isinstance(margin, (int, float)) or not np.isfinite(margin):
            raise ValueError(f"{owner}: margin = {margin!r} is invalid: must be a finite number")
        overrides = dict(thresholds or {})
        unknown = sorted(set(overrides) - set(self.backend_names))
        if unknown:
            raise ValueError(
                f"{owner}: thresholds name unknown backend(s) {', '.join(unknown)}; "
                f"backends: {', '.join(self.backend_names)}"
            )
        for name, value in overrides.items():
            if not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{owner}: thresholds[{name!r}] = {value!r} is invalid: must be a finite number")
        self.margin = float(margin)
        self.thresholds = overrides
        # Backends without an override take difficulty up to capability - margin (read from the observation).
        self._fixed = np.array([overrides.get(b, np.nan) for b in self.backend_names], dtype=np.float64)
        self._derived = np.isnan(self._fixed)

    def act(self, observation: np.ndarray) -> int:
        obs = self._observation(observation)
        capability = obs[self._capability].astype(np.float64)
        highest = np.where(self._derived, capability - self.margin, self._fixed)
        difficulty = float(obs[self._difficulty])
        for b in np.argsort(capability, kind="stable"):
            if highest[b] >= difficulty:
                return int(b)
        return int(np.argmax(capability))
