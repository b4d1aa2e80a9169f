"""What every servegym environment shares: scenario loading, the pausing controller,
the reward, seeding, pickling by replay, and the end of an episode.

An environment owns a :class:`~servegym.sim.platform.Platform` whose controller answers
:data:`~servegym.sim.platform.DEFER` for the decisions the agent makes; ``step`` resolves
the pending decision with the action and runs the simulation to the next one.

The reward is the negative objective (:mod:`servegym.sim.objective`) of what finished
since the previous step, in US dollars: ``-(cost_weight * usd + slo_weight *
slo_violations + quality_weight * bad_answers + drop_weight * drops)``, where ``usd`` is
everything billed in between (replicas, tokens, storage), ``slo_violations`` counts
finished requests that missed their tenant's SLO (drops included), ``bad_answers``
completed requests with a wrong answer and ``drops`` requests dropped or failed (and, on
the last step, those still in flight at the horizon, unserved in time). The
weights say what one violation, bad answer or drop is worth in dollars; left unset they
are the scenario's objective prices (``scenario.objective``), so an episode's return is
minus the objective that ``servegym evaluate`` and ``compare`` rank by.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from servegym.sim.config import ConfigError, ScenarioConfig, apply_overrides, load_scenario, scenario_from_dict
from servegym.sim.objective import Prices
from servegym.sim.platform import DEFER, BuiltinController, Decision, Platform
from servegym.sim.telemetry import IntervalMetrics

__all__ = ["PlatformEnv", "resolve_scenario"]


def resolve_scenario(
    scenario: str | ScenarioConfig | Mapping[str, Any],
    overrides: Sequence[str] = (),
    duration_s: float | None = None,
) -> ScenarioConfig:
    """A scenario from a shipped name, a YAML path, a config or a mapping, plus overrides."""
    if isinstance(overrides, str):
        raise ConfigError(
            f"overrides = {overrides!r} is invalid: give a list of key=value strings, e.g. [{overrides!r}]"
        )
    if isinstance(scenario, ScenarioConfig):
        resolved = scenario
    elif isinstance(scenario, Mapping):
        resolved = scenario_from_dict(scenario)
    elif isinstance(scenario, str):
        extra = list(overrides) + ([f"duration_s={duration_s}"] if duration_s is not None else [])
        return load_scenario(scenario, extra)
    else:
        raise ConfigError(
            f"scenario = {scenario!r} is invalid: give a name, a YAML path, a ScenarioConfig or a mapping"
        )
    extra = list(overrides) + ([f"duration_s={duration_s}"] if duration_s is not None else [])
    return apply_overrides(resolved, extra) if extra else resolved


_INT64 = np.dtype(np.int64)


def _integer_bounds(space: gym.Space[Any]) -> list[tuple[int, int]] | None:
    """Inclusive bounds per component of an int64 Discrete or 1-D MultiDiscrete space, else None."""
    if isinstance(space, gym.spaces.Discrete) and space.dtype == _INT64:
        return [(int(space.start), int(space.start + space.n - 1))]
    if isinstance(space, gym.spaces.MultiDiscrete) and space.dtype == _INT64 and space.nvec.ndim == 1:
        return list(zip(space.start.tolist(), (space.start + space.nvec - 1).tolist(), strict=True))
    return None


def _has_bool(action: Any) -> bool:
    """Whether ``action`` is, or holds, a boolean (Python or numpy)."""
    if isinstance(action, (bool, np.bool_)):
        return True
    if isinstance(action, np.ndarray):
        return action.dtype == np.bool_ or (action.dtype == object and any(_has_bool(a) for a in action.flat))
    if isinstance(action, (list, tuple)):
        return any(_has_bool(a) for a in action)
    return False


def _defer_request(platform: Platform, request: int) -> Any:
    return DEFER


def _defer_interval(platform: Platform, metrics: IntervalMetrics) -> Any:
    return DEFER


class _PausingController:
    """Defers the decisions in ``deferred``; answers the rest like the built-in controller.

    Each decision point is bound once to the one function that answers it (per-request
    decisions come tens of thousands of times per episode): a function returning
    :data:`DEFER` for the agent's decisions, the built-in rule (or, for routing, the
    env's own rule) for the others.
    """

    route: Callable[[Platform, int], Any]
    admit: Callable[[Platform, int], Any]
    scale: Callable[[Platform, IntervalMetrics], Any]
    semantic_threshold: Callable[[Platform, IntervalMetrics], Any]

    def __init__(self, deferred: frozenset[str], env: PlatformEnv, builtin: BuiltinController) -> None:
        self.route = _defer_request if "route" in deferred else env._route
        self.admit = _defer_request if "admit" in deferred else builtin.admit
        self.scale = _defer_interval if "scale" in deferred else builtin.scale
        self.semantic_threshold = _defer_interval if "threshold" in deferred else builtin.semantic_threshold


class PlatformEnv(gym.Env[np.ndarray, Any]):
    """Base class; subclasses set ``deferred`` and implement observation and action handling."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - Gymnasium declares it per instance
    deferred: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        scenario: str | ScenarioConfig | Mapping[str, Any] = "default",
        *,
        overrides: Sequence[str] = (),
        duration_s: float | None = None,
        cost_weight: float = 1.0,
        slo_weight: float | None = None,
        quality_weight: float | None = None,
        drop_weight: float | None = None,
    ) -> None:
        for name, value in (
            ("cost_weight", cost_weight),
            ("slo_weight", slo_weight),
            ("quality_weight", quality_weight),
            ("drop_weight", drop_weight),
        ):
            if value is None and name != "cost_weight":
                continue
            if not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
            ):
                raise ConfigError(f"{type(self).__name__}.{name} = {value!r} is invalid: must be a finite number >= 0")
        self._init_args: dict[str, Any] = {
            "scenario": scenario,
            "overrides": tuple(overrides),
            "duration_s": duration_s,
            "cost_weight": cost_weight,
            "slo_weight": slo_weight,
            "quality_weight": quality_weight,
            "drop_weight": drop_weight,
        }
        self.scenario = resolve_scenario(scenario, overrides, duration_s)
        interval = self.scenario.control.interval_s
        if "scale" in self.deferred and self.scenario.duration_s <= interval:
            raise ConfigError(
                f"{type(self).__name__}: duration_s = {self.scenario.duration_s:g} is invalid: its first decision "
                f"comes after one control interval ({interval:g} s), so duration_s must be longer than that"
            )
        self.cost_weight = float(cost_weight)
        self.platform = self._new_platform(self.scenario.seed)
        scenario_prices = self.platform.prices
        self.prices = Prices(
            scenario_prices.slo_miss_usd if slo_weight is None else float(slo_weight),
            scenario_prices.bad_answer_usd if quality_weight is None else float(quality_weight),
            scenario_prices.drop_usd if drop_weight is None else float(drop_weight),
            scenario_prices.drop_derived and drop_weight is None,
        )
        """The reward's prices: the scenario's objective, with the weights given as arguments in its place."""
        self.slo_weight = self.prices.slo_miss_usd
        self.quality_weight = self.prices.bad_answer_usd
        self.drop_weight = self.prices.drop_usd
        self._decision: Decision | None = None
        self._platform_seed = self.scenario.seed
        # The episode's actions, for pickling by replay. A MultiDiscrete action's ints are
        # stored flat (see step()): a list per step would be a garbage-collected container
        # per step, and tens of thousands of them make the cyclic GC run twice as often.
        self._actions: list[Any] = []
        self._totals = (0.0, 0, 0, 0)
        self._bounds_of: gym.Space[Any] | None = None
        self._bounds: list[tuple[int, int]] | None = None

    # -- subclass hooks ------------------------------------------------------------------
    def _observe(self, decision: Decision | None) -> np.ndarray:
        raise NotImplementedError

    def _act(self, decision: Decision, action: Any) -> Any:
        """Translate a checked action (Python ints, see ``_checked_action``) into the platform's action."""
        raise NotImplementedError

    def _route(self, platform: Platform, request: int) -> int:
        """Routing for envs that do not defer it: the scenario's built-in rule."""
        return self.platform_builtin.route(platform, request)

    # -- the platform ------------------------------------------------------------------------
    def _new_platform(self, seed: int) -> Platform:
        platform = Platform(self.scenario, seed=seed)
        # The platform's own "controller" stream: built-in decisions match a plain run's.
        self.platform_builtin = BuiltinController(self.scenario.control, self.scenario, platform.streams["controller"])
        platform.controller = _PausingController(self.deferred, self, self.platform_builtin)
        return platform

    def _advance(self) -> Decision | None:
        self._decision = self.platform.step_to_decision()
        return self._decision

    def _reward(self, done: bool = False) -> float:
        p = self.platform
        usd = p.cost_usd()
        bad = p.completed - p.good_answers
        last_usd, last_slo, last_bad, last_drops = self._totals
        self._totals = (usd, p.slo_violations, bad, p.dropped)
        return -self.prices.usd(
            self.cost_weight * (usd - last_usd),
            p.slo_violations - last_slo,
            bad - last_bad,
            p.dropped - last_drops,
            # At the horizon, requests still queued or in service were not served in time: priced as drops.
            p.in_flight() if done else 0,
        )

    def _info(self, done: bool) -> dict[str, Any]:
        info: dict[str, Any] = {"time_s": self.platform.now, "cost_usd": self._totals[0]}
        decision = self._decision
        if done:
            info["kpis"] = self.platform.kpis()
        elif decision is not None and decision.metrics is not None:
            info["interval"] = decision.metrics
        return info

    # -- Gymnasium API ---------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        # One seed space: reset(seed=s) simulates the requests of platform seed s, as
        # `servegym evaluate --seeds s`, compare's seeds and train's eval_seeds do, so an
        # env-based and a CLI evaluation pair on common random numbers. Later resets
        # without a seed draw the next episode's seed from the env's own generator.
        # (drawn far above the small seeds evaluations use, so an unseeded episode never replays one)
        self._platform_seed = int(seed) if seed is not None else int(self.np_random.integers(2**48, 2**62))
        self.platform = self._new_platform(self._platform_seed)
        self._actions = []
        self._totals = (0.0, 0, 0, 0)
        self._on_reset()
        decision = self._advance()
        if decision is None:
            raise ConfigError(
                f"{type(self).__name__}: the scenario ended (duration_s = {self.scenario.duration_s:g}) before "
                f"its first decision ({', '.join(sorted(self.deferred))}) for this seed: "
                "an episode needs at least one step; increase duration_s"
            )
        info = self._info(False)
        # What was billed before the first decision (the first step's reward includes it).
        info["cost_usd"] = self.platform.cost_usd()
        return self._observe(decision), info

    def _on_reset(self) -> None:
        """Clear per-episode state of a subclass."""

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        decision = self._decision
        if decision is None:
            raise RuntimeError(
                "step() called without a pending decision: call reset() first (or after the episode ended)"
            )
        action = self._checked_action(action)
        platform = self.platform
        platform.resolve(decision, self._act(decision, action))
        if type(action) is list and self._bounds is not None:  # an int64 MultiDiscrete action
            self._actions += action
        else:
            self._actions.append(action)
        decision = self._decision = platform.step_to_decision()
        done = decision is None
        reward = self._reward(done)
        # The scenario's horizon is a time limit, not a terminal state: truncation.
        return self._observe(decision), reward, False, done, self._info(done)

    def _checked_action(self, action: Any) -> Any:
        """``action`` as plain Python ints (an int, or a list for MultiDiscrete), or a ValueError.

        Per-request envs step tens of thousands of times per episode: the integers that
        policies and ``Space.sample()`` return skip Gymnasium's generic ``contains``.
        """
        space = self.action_space
        if self._bounds_of is not space:
            self._bounds_of, self._bounds = space, _integer_bounds(space)
        bounds = self._bounds
        if bounds is not None:
            kind = type(action)
            if isinstance(space, gym.spaces.Discrete):
                if (kind is int or kind is np.int64) and bounds[0][0] <= action <= bounds[0][1]:
                    return int(action)
            elif kind is np.ndarray and action.dtype is _INT64 and action.ndim == 1 and len(action) == len(bounds):
                values = action.tolist()
                for v, (lo, hi) in zip(values, bounds):  # noqa: B905 - equal lengths checked above
                    if not lo <= v <= hi:
                        break
                else:
                    return values
        if _has_bool(action) or not space.contains(action):
            # Gymnasium's contains() takes True for 1: a boolean here is a bug in the caller.
            raise ValueError(f"action {action!r} is not in the action space {space}")
        if isinstance(space, gym.spaces.Discrete):
            return int(action)
        if isinstance(space, gym.spaces.MultiDiscrete):
            return np.asarray(action).tolist()
        return action

    def kpis(self) -> dict[str, dict[str, float]]:
        """KPIs of the episode so far (overall and per tenant)."""
        return self.platform.kpis()

    # -- pickling: rebuild the simulation by replaying the episode (it is deterministic) ------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            "init_args": self._init_args,
            "np_random_state": self._np_random.bit_generator.state if self._np_random is not None else None,
            "platform_seed": self._platform_seed,
            "actions": self._recorded_actions(),
            "started": self._decision is not None or bool(self._actions),
        }

    def _recorded_actions(self) -> list[Any]:
        """The episode's actions, one per step (``step()`` stores MultiDiscrete ones flat)."""
        bounds = _integer_bounds(self.action_space)
        if bounds is None or not isinstance(self.action_space, gym.spaces.MultiDiscrete):
            return list(self._actions)
        width, flat = len(bounds), self._actions
        return [flat[k : k + width] for k in range(0, len(flat), width)]

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, **state["init_args"])
        if state["np_random_state"] is not None:
            self._np_random = np.random.Generator(np.random.PCG64())
            self._np_random.bit_generator.state = state["np_random_state"]
        if state["started"]:
            self._platform_seed = state["platform_seed"]
            self.platform = self._new_platform(self._platform_seed)
            self._on_reset()
            self._advance()
            for action in state["actions"]:
                self.step(action)
