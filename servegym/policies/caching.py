"""Caching policies: what to admit into the caches, and the semantic tier's threshold.

Admission policies read one admission observation (the layout of
:func:`servegym.envs.features.admission_layout`) and return an ``int`` in
``0..n_levels``: 0 stores nothing; ``k >= 1`` writes the fresh answer into cache level
``k - 1`` and every slower level (levels are the exact tiers in order, then the semantic
tier; ``n_levels`` counts the layout's ``fill_<level>`` features). Eviction (LRU, LFU,
S3-FIFO) belongs to the tiers themselves (:mod:`servegym.sim.cache`).

Threshold policies read an interval observation and return the semantic tier's
cosine-similarity threshold as a ``float``.
"""

from __future__ import annotations

import math

import numpy as np

from servegym.envs.features import Layout
from servegym.policies.base import checked_observation, require_features

__all__ = ["AdmitAll", "AdmitNone", "FixedThreshold", "FrequencyAdmission"]


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
