"""The one interface every decision rule implements, and the checks its observations pass.

A policy maps an observation (a float32 vector in one of the layouts of
:mod:`servegym.envs.features`) to an action, and ``reset()`` forgets whatever it
remembered (windows, counters, random state), so the same object can run episode after
episode. Heuristics, oracles and learned models all answer through it, which is what
lets one evaluation loop compare them like for like (see ARCHITECTURE.md, "Policies and
agents").

Policies find their inputs by feature name through :attr:`Layout.index`, never by
position: :func:`require_features` resolves the names once, at construction, and fails
there when a layout lacks one. :func:`checked_observation` guards every ``act``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from servegym.envs.features import Layout

__all__ = ["Policy", "checked_observation", "require_features"]


class Policy(Protocol):
    """A decision rule: ``act(observation) -> action`` and ``reset()`` between episodes."""

    def act(self, observation: np.ndarray) -> Any:
        """The action for one observation in the policy's layout."""
        ...

    def reset(self) -> None:
        """Forget everything learned from earlier observations (start of an episode)."""
        ...


def require_features(layout: Layout, names: Iterable[str], owner: str) -> dict[str, int]:
    """Positions of the features ``owner`` needs, or a ValueError naming the missing ones."""
    wanted = list(names)
    missing = [n for n in wanted if n not in layout.index]
    if missing:
        raise ValueError(
            f"{owner} needs the observation feature(s) {', '.join(missing)}, which this layout lacks; "
            f"it has: {', '.join(layout.names)}"
        )
    return {n: layout.index[n] for n in wanted}


def checked_observation(observation: np.ndarray, layout: Layout, owner: str) -> np.ndarray:
    """``observation`` as an array, after checking its shape and that every feature is finite.

    The error names the feature that is bad, so a broken feature pipeline is found at the
    first decision rather than as a silently wrong action.
    """
    obs = np.asarray(observation)
    if obs.shape != (len(layout),):
        raise ValueError(
            f"{owner}: observation has shape {obs.shape}, expected ({len(layout)},) for the features "
            f"{', '.join(layout.names)}"
        )
    if obs.dtype.kind not in "fiu":
        raise ValueError(f"{owner}: observation has dtype {obs.dtype}, expected a real number type such as float32")
    finite = np.isfinite(obs)
    if not finite.all():
        k = int(np.argmin(finite))
        name = layout.names[k]
        raise ValueError(f"{owner}: observation feature {name!r} (index {k}) is {obs[k]}, not a finite number")
    return obs
