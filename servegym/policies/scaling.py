"""Scaling policies: the autoscalers practice uses, as observation-to-replica-count rules.

Each policy reads one control interval's observation (the layout of
:func:`servegym.envs.features.interval_layout`) and returns the desired TARGET replica
count as a Python ``int`` within ``[min_replicas, max_replicas]``: the action of the
Autoscaling environment (``Discrete(max_replicas + 1)``), and what
:class:`servegym.policies.adapter.PolicyController` hands to the pool.

Vocabulary: ``ready_replicas`` serve now; ``target_replicas`` is the scale in force (the
pool's target, Kubernetes' ``spec.replicas``), which also counts replicas still cold
starting. Policies that remember the past (HPA, KPA, step scaling) count time in
control intervals of ``interval_s`` seconds, one per ``act`` call.

:func:`scaling_kwargs` gives the five arguments every policy shares for a scenario::

    hpa = HPA(**scaling_kwargs(scenario), target_utilisation=0.6)
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from servegym.envs.features import Layout, interval_layout
from servegym.policies.base import checked_observation, require_features
from servegym.sim.config import ScenarioConfig

__all__ = [
    "DEFAULT_STEPS",
    "HPA",
    "KPA",
    "ScalingPolicy",
    "ScheduledScaling",
    "StaticScaling",
    "StepScaling",
    "scaling_kwargs",
]

DAY_S = 86_400.0

# Observations are float32 (about 1e-7 relative error): without slack, ceil(5 * 0.8)
# computed from float32 inputs can come out as ceil(4.0000001) = 5.
_CEIL_SLACK = 1e-6


def _ceil(x: float) -> int:
    """``math.ceil`` that forgives float32 rounding just above an integer."""
    return math.ceil(x - _CEIL_SLACK * max(1.0, abs(x)))


def _fail(owner: str, name: str, value: object, allowed: str) -> NoReturn:
    raise ValueError(f"{owner}: {name} = {value!r} is invalid: {allowed}")


def _check_int(owner: str, name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(owner, name, value, f"must be an integer >= {minimum}")


def _check_positive(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        _fail(owner, name, value, "must be a finite number > 0")


def _check_nonneg(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        _fail(owner, name, value, "must be a finite number >= 0")


def scaling_kwargs(scenario: ScenarioConfig) -> dict[str, Any]:
    """The arguments every scaling policy shares, taken from ``scenario``'s pool and control interval."""
    pool = scenario.pool
    return {
        "layout": interval_layout(scenario),
        "min_replicas": pool.min_replicas,
        "max_replicas": pool.max_replicas,
        "slots_per_replica": pool.slots_per_replica,
        "interval_s": scenario.control.interval_s,
    }


class ScalingPolicy:
    """What every scaling policy shares: its layout, pool bounds, slots and control interval.

    Learned scalers (:class:`servegym.agents.predictive.PredictiveAutoscaler`) build on it too.

    Subclasses list the features they read in ``_needs``; they are resolved by name here,
    once, so a layout without one fails at construction.
    """

    _needs: tuple[str, ...] = ()

    def __init__(
        self, layout: Layout, min_replicas: int, max_replicas: int, slots_per_replica: int, interval_s: float
    ) -> None:
        owner = type(self).__name__
        _check_int(owner, "min_replicas", min_replicas, 0)
        _check_int(owner, "max_replicas", max_replicas, 1)
        if max_replicas < min_replicas:
            _fail(owner, "max_replicas", max_replicas, f"must be >= min_replicas ({min_replicas})")
        _check_int(owner, "slots_per_replica", slots_per_replica, 1)
        _check_positive(owner, "interval_s", interval_s)
        self.layout = layout
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.slots_per_replica = slots_per_replica
        self.interval_s = float(interval_s)
        self._at = require_features(layout, self._needs, owner)

    def _features(self, observation: np.ndarray) -> dict[str, float]:
        """The needed features of a checked observation, by name."""
        obs = checked_observation(observation, self.layout, type(self).__name__)
        return {name: float(obs[i]) for name, i in self._at.items()}

    def _bound(self, replicas: int) -> int:
        return min(max(int(replicas), self.min_replicas), self.max_replicas)

    def _check_replicas(self, name: str, replicas: int) -> None:
        _check_int(type(self).__name__, name, replicas, 0)
        if not self.min_replicas <= replicas <= self.max_replicas:
            _fail(
                type(self).__name__,
                name,
                replicas,
                f"must be within [min_replicas, max_replicas] = [{self.min_replicas}, {self.max_replicas}]",
            )

    def reset(self) -> None:
        """Forget the past (nothing, for a policy without memory)."""


class StaticScaling(ScalingPolicy):
    """A fixed number of replicas, whatever happens: the baseline every autoscaler must beat."""

    def __init__(
        self,
        layout: Layout,
        min_replicas: int,
        max_replicas: int,
        slots_per_replica: int,
        interval_s: float,
        replicas: int,
    ) -> None:
        super().__init__(layout, min_replicas, max_replicas, slots_per_replica, interval_s)
        self._check_replicas("replicas", replicas)
        self.replicas = replicas

    def act(self, observation: np.ndarray) -> int:
        self._features(observation)
        return self.replicas


class HPA(ScalingPolicy):
    """The Kubernetes Horizontal Pod Autoscaler on utilisation, with its default behaviour.

    The algorithm of the Kubernetes documentation ("Horizontal Pod Autoscaling":
    algorithm details, configurable scaling behaviour) as the controller implements it
    (``pkg/controller/podautoscaler``), run once per control interval:

    1. Recommendation: ``ceil(ready_replicas * utilisation / target_utilisation)``
       (utilisation is the mean over ready replicas, as for a resource metric). When
       ``|utilisation / target_utilisation - 1| <= tolerance`` (default 0.1) the current
       scale ``target_replicas`` is kept. Replicas still starting count only on a
       scale-up, at zero usage: if the ratio over all replicas is then within the
       tolerance or below 1, the current scale is kept, and a scale-up never lowers it.
       With no ready replica there is no metric and the current scale stays, except that
       any arrival or queued request asks for at least one replica.
    2. Scale-down stabilisation: a recommendation below the current scale is replaced by
       the highest recommendation of the last ``scale_down_stabilisation_s`` seconds
       (default 300 s, this one included), capped at the current scale, so a brief dip
       never sheds replicas and a fall in load never adds any.
    3. Scale-up rate: at most ``max(start + scale_up_pods, ceil(start * (1 +
       scale_up_percent / 100)))`` replicas, where ``start`` is the current scale minus
       the replicas this policy added during the last ``scale_up_period_s`` (defaults
       4 pods, 100 %, 15 s: "double or add four per 15 s"). A control interval longer
       than the period gets the allowance of ``interval_s / scale_up_period_s`` periods.
       (The default scale-down rule, 100 % per 15 s, limits nothing and is not modelled.)
    4. Bounds ``[min_replicas, max_replicas]``.
    """

    _needs = ("utilisation", "ready_replicas", "target_replicas", "arrival_rate_rps", "queue_len")

    def __init__(
        self,
        layout: Layout,
        min_replicas: int,
        max_replicas: int,
        slots_per_replica: int,
        interval_s: float,
        target_utilisation: float = 0.7,
        tolerance: float = 0.1,
        scale_down_stabilisation_s: float = 300.0,
        scale_up_pods: int = 4,
        scale_up_percent: float = 100.0,
        scale_up_period_s: float = 15.0,
    ) -> None:
        super().__init__(layout, min_replicas, max_replicas, slots_per_replica, interval_s)
        owner = type(self).__name__
        if not (isinstance(target_utilisation, (int, float)) and 0 < target_utilisation <= 1):
            _fail(owner, "target_utilisation", target_utilisation, "must be in (0, 1]")
        _check_nonneg(owner, "tolerance", tolerance)
        _check_nonneg(owner, "scale_down_stabilisation_s", scale_down_stabilisation_s)
        _check_int(owner, "scale_up_pods", scale_up_pods, 0)
        _check_nonneg(owner, "scale_up_percent", scale_up_percent)
        _check_positive(owner, "scale_up_period_s", scale_up_period_s)
        self.target_utilisation = float(target_utilisation)
        self.tolerance = float(tolerance)
        self.scale_down_stabilisation_s = float(scale_down_stabilisation_s)
        self.scale_up_pods = scale_up_pods
        self.scale_up_percent = float(scale_up_percent)
        self.scale_up_period_s = float(scale_up_period_s)
        self._step = 0
        self._recommendations: deque[tuple[int, int]] = deque()  # (interval, raw recommendation)
        self._scale_ups: deque[tuple[int, int]] = deque()  # (interval, replicas added)

    def reset(self) -> None:
        self._step = 0
        self._recommendations.clear()
        self._scale_ups.clear()

    def _recommend(self, features: dict[str, float]) -> int:
        """Step 1: the replica count the metric asks for, before stabilisation and limits.

        Kubernetes' ``GetResourceReplicas``: the usage ratio is over the ready replicas.
        Within the tolerance the scale stays. Replicas still starting (the target minus
        the ready ones) count only when the ratio asks to scale up, and then at zero
        usage: if that flips the direction or lands within the tolerance, the scale stays
        (the new replicas may be enough), and it never goes down on a scale-up.
        """
        current = round(features["target_replicas"])
        ready = round(features["ready_replicas"])
        ratio = features["utilisation"] / self.target_utilisation
        if ready == 0:
            desired = current
            if features["arrival_rate_rps"] > 0 or features["queue_len"] > 0:
                desired = max(desired, 1)
            return desired
        starting = max(current - ready, 0)
        if starting == 0 or ratio <= 1.0:
            return current if abs(ratio - 1.0) <= self.tolerance else _ceil(ratio * ready)
        ratio_all = ratio * ready / (ready + starting)  # the starting replicas at zero usage
        if abs(ratio_all - 1.0) <= self.tolerance or ratio_all < 1.0:
            return current
        return max(_ceil(ratio_all * (ready + starting)), current)

    def act(self, observation: np.ndarray) -> int:
        features = self._features(observation)
        step, interval = self._step, self.interval_s
        self._step += 1
        current = round(features["target_replicas"])
        desired = self._recommend(features)

        window = self._recommendations
        while window and (step - window[0][0]) * interval >= self.scale_down_stabilisation_s:
            window.popleft()
        # Kubernetes' stabilizeRecommendationWithBehaviors: on the way down, the highest
        # recommendation of the window, but never more than the current scale.
        stabilised = min(current, max([desired] + [r for _, r in window])) if desired < current else desired
        window.append((step, desired))

        if stabilised > current:
            period = max(self.scale_up_period_s, interval)
            periods = period / self.scale_up_period_s
            events = self._scale_ups
            while events and (step - events[0][0]) * interval >= period:
                events.popleft()
            start = current - sum(added for _, added in events)
            limit = max(
                start + math.floor(self.scale_up_pods * periods),
                math.ceil(start * (1.0 + self.scale_up_percent / 100.0 * periods)),
            )
            stabilised = min(stabilised, max(limit, current))

        target = self._bound(stabilised)
        if target > current:
            self._scale_ups.append((step, target - current))
        return target


class KPA(ScalingPolicy):
    """The Knative Pod Autoscaler: concurrency over a stable window, with a panic mode.

    As the Knative documentation ("Autoscaling concepts", "Configuring scale bounds and
    rates") describes it and ``pkg/autoscaler/scaling/autoscaler.go`` implements it, run
    once per control interval:

    * observed concurrency = ``utilisation * ready_replicas * slots_per_replica +
      queue_len`` (requests in service, on average over the interval, plus those waiting);
    * the stable window (default 60 s) and the panic window (``panic_window_percentage``
      of it, default 10 %, at least the latest interval) average it;
    * desired replicas = ``ceil(average / target_concurrency)`` per window (default target
      70 % of a replica's slots), kept within ``[floor(ready / max_scale_down_rate),
      ceil(ready * max_scale_up_rate)]`` (defaults 2 and 1000, with ready at least 1);
    * panic mode starts when the panic window's desired count reaches ``panic_threshold``
      (default 2.0, Knative's 200 %) times the ready replicas. In panic mode the larger
      of the two windows' counts is used and the scale never goes down; the mode ends
      once a whole stable window has passed without the panic condition.
    * like Knative's ``newAutoscaler``, it starts in panic mode when more than one
      replica is ready at its first decision: the initial scale holds until a stable
      window of data has been seen (from the start of the run).
    """

    _needs = ("utilisation", "ready_replicas", "queue_len")

    def __init__(
        self,
        layout: Layout,
        min_replicas: int,
        max_replicas: int,
        slots_per_replica: int,
        interval_s: float,
        target_concurrency: float | None = None,
        stable_window_s: float = 60.0,
        panic_window_percentage: float = 10.0,
        panic_threshold: float = 2.0,
        max_scale_up_rate: float = 1000.0,
        max_scale_down_rate: float = 2.0,
    ) -> None:
        super().__init__(layout, min_replicas, max_replicas, slots_per_replica, interval_s)
        owner = type(self).__name__
        target = 0.7 * slots_per_replica if target_concurrency is None else target_concurrency
        _check_positive(owner, "target_concurrency", target)
        _check_positive(owner, "stable_window_s", stable_window_s)
        if not (isinstance(panic_window_percentage, (int, float)) and 0 < panic_window_percentage <= 100):
            _fail(owner, "panic_window_percentage", panic_window_percentage, "must be in (0, 100]")
        _check_positive(owner, "panic_threshold", panic_threshold)
        for name, rate in (("max_scale_up_rate", max_scale_up_rate), ("max_scale_down_rate", max_scale_down_rate)):
            if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 1):
                _fail(owner, name, rate, "must be a finite number > 1")
        self.target_concurrency = float(target)
        self.stable_window_s = float(stable_window_s)
        self.panic_threshold = float(panic_threshold)
        self.max_scale_up_rate = float(max_scale_up_rate)
        self.max_scale_down_rate = float(max_scale_down_rate)
        # Windows as numbers of control intervals (the 1e-9 keeps 60 / 15 at exactly 4).
        self.stable_intervals = max(1, math.ceil(stable_window_s / self.interval_s - 1e-9))
        panic_s = stable_window_s * panic_window_percentage / 100.0
        self.panic_intervals = min(max(1, math.ceil(panic_s / self.interval_s - 1e-9)), self.stable_intervals)
        self._concurrency: deque[float] = deque(maxlen=self.stable_intervals)
        self._step = 0
        self._panic_since: int | None = None  # the latest interval that met the panic condition
        self._max_panic = 0

    @property
    def in_panic(self) -> bool:
        """Whether the autoscaler is in panic mode (set by the latest ``act``)."""
        return self._panic_since is not None

    def reset(self) -> None:
        self._concurrency.clear()
        self._step = 0
        self._panic_since = None
        self._max_panic = 0

    def act(self, observation: np.ndarray) -> int:
        features = self._features(observation)
        step = self._step
        self._step += 1
        ready = round(features["ready_replicas"])
        history = self._concurrency
        history.append(features["utilisation"] * ready * self.slots_per_replica + features["queue_len"])
        stable = sum(history) / len(history)
        recent = list(history)[-self.panic_intervals :]
        panic = sum(recent) / len(recent)

        pods = max(1, ready)
        most = math.ceil(self.max_scale_up_rate * pods)
        least = math.floor(pods / self.max_scale_down_rate)
        wanted_stable = _ceil(stable / self.target_concurrency)
        wanted_panic = _ceil(panic / self.target_concurrency)
        desired_stable = min(max(wanted_stable, least), most)
        desired_panic = min(max(wanted_panic, least), most)

        if step == 0 and ready > 1:
            # Knative starts in panic mode above one pod (newAutoscaler): without a stable
            # window of data yet, the current scale holds until one has passed.
            self._panic_since, self._max_panic = -1, ready
        if wanted_panic / pods >= self.panic_threshold:
            self._panic_since = step
        elif self._panic_since is not None and (step - self._panic_since) * self.interval_s > self.stable_window_s:
            self._panic_since = None
            self._max_panic = 0

        desired = desired_stable
        if self._panic_since is not None:
            desired = max(desired, desired_panic)
            if desired > self._max_panic:
                self._max_panic = desired
            else:
                desired = self._max_panic
        return self._bound(desired)


DEFAULT_STEPS: tuple[tuple[float, float, int], ...] = ((0.0, 0.3, -1), (0.8, 0.9, 1), (0.9, math.inf, 2))
"""Illustrative step adjustments on utilisation: shed one below 30 %, add one or two above 80 % / 90 %."""


class StepScaling(ScalingPolicy):
    """AWS step scaling on utilisation (Amazon EC2 Auto Scaling, "Step and simple scaling policies").

    ``steps`` lists ``(lower_bound, upper_bound, adjustment)``: when the interval's
    utilisation is in ``[lower_bound, upper_bound)`` the adjustment (a change in capacity,
    ``ChangeInCapacity``) is added to the current scale ``target_replicas``. Ranges must
    not overlap; utilisation outside every range changes nothing. After a change, the
    policy waits ``cooldown_s`` seconds (AWS's default cooldown, 300 s) before the next.
    """

    _needs = ("utilisation", "target_replicas")

    def __init__(
        self,
        layout: Layout,
        min_replicas: int,
        max_replicas: int,
        slots_per_replica: int,
        interval_s: float,
        steps: Sequence[tuple[float, float, int]] = DEFAULT_STEPS,
        cooldown_s: float = 300.0,
    ) -> None:
        super().__init__(layout, min_replicas, max_replicas, slots_per_replica, interval_s)
        owner = type(self).__name__
        if not steps:
            _fail(owner, "steps", steps, "must list at least one (lower_bound, upper_bound, adjustment)")
        for step in steps:
            entry: tuple[Any, ...] = tuple(step)  # configs may hand over lists of any length
            if len(entry) != 3:
                _fail(owner, "steps", step, "each step must be (lower_bound, upper_bound, adjustment)")
            lower, upper, adjustment = entry
            if not (isinstance(lower, (int, float)) and isinstance(upper, (int, float)) and lower < upper):
                _fail(owner, "steps", step, "each step needs numeric bounds with lower_bound < upper_bound")
            if isinstance(adjustment, bool) or not isinstance(adjustment, int):
                _fail(owner, "steps", step, "the adjustment must be an integer change in replicas")
        ordered = sorted(steps, key=lambda s: s[0])
        for before, after in itertools.pairwise(ordered):
            if before[1] > after[0]:
                _fail(owner, "steps", steps, f"ranges {before} and {after} overlap")
        _check_nonneg(owner, "cooldown_s", cooldown_s)
        # Bounds in float32, the observation's precision: a utilisation of 0.9 then meets a bound of 0.9.
        self.steps = tuple((float(np.float32(lo)), float(np.float32(hi)), int(change)) for lo, hi, change in ordered)
        self.cooldown_s = float(cooldown_s)
        self._step = 0
        self._last_change: int | None = None

    def reset(self) -> None:
        self._step = 0
        self._last_change = None

    def act(self, observation: np.ndarray) -> int:
        features = self._features(observation)
        step = self._step
        self._step += 1
        current = round(features["target_replicas"])
        cooling = self._last_change is not None and (step - self._last_change) * self.interval_s < self.cooldown_s
        if cooling:
            return self._bound(current)
        utilisation = features["utilisation"]
        for lower, upper, adjustment in self.steps:
            if lower <= utilisation < upper:
                target = self._bound(current + adjustment)
                if target != current:
                    self._last_change = step
                return target
        return self._bound(current)


# Time of day is decoded from float32 sin/cos (about 1e-3 s of error): a schedule entry
# applies from this much before its start, so one at 08:00 is not missed at 07:59:59.999.
_TIME_OF_DAY_SLACK_S = 0.01


class ScheduledScaling(ScalingPolicy):
    """Scheduled scaling (AWS scheduled actions, KEDA's cron scaler): replicas by time of day.

    ``schedule`` lists ``(start_time_of_day_s, replicas)``; the latest entry whose start
    has passed applies, and before the day's first entry the previous day's last one
    does. The time of day is recovered from the ``time_of_day_sin`` / ``time_of_day_cos``
    features with ``atan2``.
    """

    _needs = ("time_of_day_sin", "time_of_day_cos")

    def __init__(
        self,
        layout: Layout,
        min_replicas: int,
        max_replicas: int,
        slots_per_replica: int,
        interval_s: float,
        schedule: Sequence[tuple[float, int]],
    ) -> None:
        super().__init__(layout, min_replicas, max_replicas, slots_per_replica, interval_s)
        owner = type(self).__name__
        if not schedule:
            _fail(owner, "schedule", schedule, "must list at least one (start_time_of_day_s, replicas)")
        ordered = sorted(schedule, key=lambda entry: entry[0])
        for start, replicas in ordered:
            if not (isinstance(start, (int, float)) and 0 <= start < DAY_S):
                _fail(owner, "start_time_of_day_s", start, f"must be in [0, {DAY_S:.0f}) seconds")
            self._check_replicas("replicas", replicas)
        starts = [float(start) for start, _ in ordered]
        if len(set(starts)) != len(starts):
            _fail(owner, "schedule", schedule, "two entries start at the same time of day")
        self.starts = starts
        self.replicas = [replicas for _, replicas in ordered]

    def time_of_day_s(self, features: dict[str, float]) -> float:
        """Seconds since midnight, decoded from the time-of-day features."""
        angle = math.atan2(features["time_of_day_sin"], features["time_of_day_cos"]) % (2.0 * math.pi)
        return angle / (2.0 * math.pi) * DAY_S

    def act(self, observation: np.ndarray) -> int:
        now = self.time_of_day_s(self._features(observation)) + _TIME_OF_DAY_SLACK_S
        if now >= DAY_S:  # just before midnight by rounding: it is the new day
            now -= DAY_S
        k = bisect.bisect_right(self.starts, now) - 1
        return self.replicas[k]  # k = -1 before the first start: the previous day's last entry
