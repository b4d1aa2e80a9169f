"""Caching policies: what to admit into the caches, and the semantic tier's threshold.

Admission policies read one admission observation (the layout of
:func:`servegym.envs.features.admission_layout`) and return an ``int`` in
``0..n_levels``: 0 stores nothing; ``k >= 1`` writes the fresh answer into cache level
``k - 1`` and every slower level (levels are the exact tiers in order, then the semantic
tier; ``n_levels`` counts the layout's ``fill_<level>`` features). Eviction (LRU, LFU,
S3-FIFO) belongs to the tiers themselves (:mod:`servegym.sim.cache`).

Threshold policies read an interval observation and return the semantic tier's
cosine-similarity threshold as a ``float``.

Policies find their features by name, so they also act on any observation that contains
them, such as Caching-v0's (``decision_is_threshold``, the admission features, the
interval features): build them with ``env.unwrapped.layout`` and combine them with
:class:`AdmissionAndThreshold`, which answers Caching-v0's two kinds of decision::

    caching = env.unwrapped
    policy = AdmissionAndThreshold(
        caching.layout, FrequencyAdmission(caching.layout), FixedThreshold(caching.layout, 0.9), caching.thresholds
    )
    observation, _ = env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step(policy.act(observation))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from servegym.envs.features import Layout
from servegym.policies.base import Policy, checked_observation, require_features

__all__ = ["AdmissionAndThreshold", "AdmitAll", "AdmitNone", "FixedThreshold", "FrequencyAdmission"]


class _AdmissionPolicy:
    """What every admission policy shares: the layout and its number of cache levels."""

    _needs: tuple[str, ...] = ()

    def __init__(self, layout: Layout) -> None:
        owner = type(self).__name__
        self.layout = layout
        self.n_levels = sum(1 for n in layout.names if n.startswith("fill_"))
        if self.n_levels == 0:
            raise ValueError(
                f"{owner}: the layout has no fill_<level> features, so the platform has no cache to admit into; "
                f"features: {', '.join(layout.names)}"
            )
        self._at = require_features(layout, self._needs, owner)

    def _observation(self, observation: np.ndarray) -> np.ndarray:
        return checked_observation(observation, self.layout, type(self).__name__)

    def reset(self) -> None:
        """Forget the past (nothing, for a policy without memory)."""


class AdmitAll(_AdmissionPolicy):
    """Every answer into every level (returns 1): the default of most caches."""

    def act(self, observation: np.ndarray) -> int:
        self._observation(observation)
        return 1


class AdmitNone(_AdmissionPolicy):
    """Nothing is cached (returns 0): the no-cache baseline."""

    def act(self, observation: np.ndarray) -> int:
        self._observation(observation)
        return 0


class FrequencyAdmission(_AdmissionPolicy):
    """Admit a phrasing only once it has been requested ``min_requests`` times (into every level).

    The doorkeeper of TinyLFU (Einziger, Friedman and Manes, "TinyLFU: A Highly Efficient
    Cache Admission Policy", ACM TOS 2017): one-hit wonders, most of a Zipf stream's
    distinct keys, never displace entries that will be hit again. ``key_requests``
    counts the phrasing's arrivals so far, the current request's included, so the
    default ``min_requests = 2`` admits on the second sighting as the doorkeeper does.
    """

    _needs = ("key_requests",)

    def __init__(self, layout: Layout, min_requests: int = 2) -> None:
        super().__init__(layout)
        if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
            raise ValueError(
                f"{type(self).__name__}: min_requests = {min_requests!r} is invalid: must be an integer >= 1"
            )
        self.min_requests = min_requests

    def act(self, observation: np.ndarray) -> int:
        obs = self._observation(observation)
        return 1 if obs[self._at["key_requests"]] >= self.min_requests else 0


class FixedThreshold:
    """A constant semantic-similarity threshold, whatever the interval looks like.

    What semantic caches such as Zilliz's GPTCache (its ``similarity_threshold`` setting)
    do: answer from the cache when a stored prompt is at least this similar. ``act``
    returns the threshold for every interval observation.
    """

    def __init__(self, layout: Layout, threshold: float = 0.9) -> None:
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0 < threshold <= 1):
            raise ValueError(
                f"FixedThreshold: threshold = {threshold!r} is invalid: must be a cosine similarity in (0, 1]"
            )
        self.layout = layout
        self.threshold = float(threshold)

    def act(self, observation: np.ndarray) -> float:
        checked_observation(observation, self.layout, type(self).__name__)
        return self.threshold

    def reset(self) -> None:
        """Nothing to forget."""


class AdmissionAndThreshold:
    """Caching-v0's action from an admission policy and a threshold policy.

    Caching-v0 asks two questions in one episode and says which in its observation's
    ``decision_is_threshold`` feature. At an admission decision this returns
    ``[admission.act(obs), i]``; at a threshold decision ``[0, i]``, where ``i`` indexes
    the grid value in ``thresholds`` (the env's ``thresholds``) nearest to
    ``threshold.act(obs)``, the lower on a tie. The component a decision does not use is
    ignored by the env; ``i`` repeats the latest threshold choice there. Both policies
    must read the same layout as this one (the env's ``layout``).
    """

    def __init__(self, layout: Layout, admission: Policy, threshold: Policy, thresholds: Sequence[float]) -> None:
        owner = type(self).__name__
        self._flag = require_features(layout, ["decision_is_threshold"], owner)["decision_is_threshold"]
        grid = list(thresholds)
        if not grid or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in grid):
            raise ValueError(f"{owner}: thresholds = {thresholds!r} is invalid: must be a non-empty list in (0, 1]")
        for name, policy in (("admission", admission), ("threshold", threshold)):
            own = getattr(policy, "layout", None)
            if isinstance(own, Layout) and own.names != layout.names:
                raise ValueError(
                    f"{owner}: the {name} policy {type(policy).__name__} reads the features {list(own.names)}, "
                    f"not this layout's {list(layout.names)}: build it with the same layout (env.unwrapped.layout)"
                )
        self.layout = layout
        self.admission = admission
        self.threshold = threshold
        self.thresholds = np.array(grid, dtype=np.float64)
        self._index = 0

    def act(self, observation: np.ndarray) -> np.ndarray:
        obs = checked_observation(observation, self.layout, type(self).__name__)
        if obs[self._flag] >= 0.5:
            value = self.threshold.act(obs)
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"threshold policy returned {value!r} ({type(value).__name__}): must be a number in (0, 1]"
                )
            self._index = int(np.argmin(np.abs(self.thresholds - float(value))))
            return np.array([0, self._index], dtype=np.int64)
        choice = self.admission.act(obs)
        if not isinstance(choice, (int, np.integer)) or isinstance(choice, (bool, np.bool_)):
            raise ValueError(
                f"admission policy returned {choice!r} ({type(choice).__name__}): must be an integer level choice"
            )
        return np.array([choice, self._index], dtype=np.int64)

    def reset(self) -> None:
        """Reset both policies and forget the latest threshold choice."""
        self.admission.reset()
        self.threshold.reset()
        self._index = 0
