"""A predictive autoscaler: replicas for the load forecast to arrive, ordered a cold start ahead.

Reactive autoscalers (HPA, KPA) see load only after it arrived, and a replica ordered
then serves a cold start later. :class:`PredictiveAutoscaler` instead sizes the pool for
the *upper* prediction bound of the arrival rate over the next ``horizon =
ceil(cold_start_s / interval_s) + 1`` intervals, from a
:class:`~servegym.agents.forecast.WorkloadForecaster`: capacity ordered now is ready
before the load it was ordered for. It is the forecasting half of predictive
autoscalers in practice (AWS EC2 predictive scaling; Google's Autopilot, Rzadca et al.,
EuroSys 2020), with conformal intervals as the safety margin instead of a fixed
headroom.

The rate is turned into replicas with the work one arrival brings, in slot-seconds
(``slot_s_per_request``: busy slots per arrival per second, Little's law over the
intervals seen in training, cache hits included), refreshed online by an exponential
moving average of the same ratio in unsaturated intervals. The demand of queued
requests (cleared within one interval) is added. The target is the largest demand over
the horizon, not the one at its end: replicas removed now are gone at once, so they
must not be needed sooner.

:class:`PredictiveAutoscalerLearner` collects arrival series by running
``Autoscaling-v0`` under Kubernetes HPA (the arrivals do not depend on the scaling
policy: common random numbers), fits the forecaster and reports its out-of-sample
quality.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import gymnasium as gym
import numpy as np

from servegym.agents.forecast import Forecast, WorkloadForecaster
from servegym.agents.io import layout_from_json, layout_to_json
from servegym.agents.seeds import training_seed
from servegym.envs.features import Layout
from servegym.policies.base import require_features
from servegym.policies.scaling import HPA, ScalingPolicy, scaling_kwargs

__all__ = ["PredictiveAutoscaler", "PredictiveAutoscalerLearner", "horizon_for"]

_CONFIG_FILE = "predictive.json"
_FORECASTER_DIR = "forecaster"
_NEEDS = ("arrival_rate_rps", "queue_len", "utilisation", "ready_replicas", "time_of_day_sin", "time_of_day_cos")
# An interval this busy may have had more demand than slots: its ratio underestimates the work per request.
_SATURATED = 0.95
DAY_S = 86_400.0


def horizon_for(cold_start_s: float, interval_s: float) -> int:
    """Intervals to look ahead: the cold start, rounded up to whole intervals, plus the interval it serves."""
    return math.ceil(cold_start_s / interval_s - 1e-9) + 1


class PredictiveAutoscaler(ScalingPolicy):
    """Targets the replicas the forecast's upper bound needs over the cold-start horizon.

    ``act(observation)`` reads an interval observation (``interval_layout``) and returns
    the target replica count in ``[min_replicas, max_replicas]``. Arguments: the five of
    :func:`servegym.policies.scaling.scaling_kwargs`, the fitted ``forecaster`` (whose
    ``horizon`` must reach ``horizon_for(cold_start_s, interval_s)``), ``cold_start_s``
    (the pool's mean cold start), ``slot_s_per_request`` (the work per arrival learned in
    training), ``target_utilisation`` (slots kept busy at the forecast bound) and
    ``service_smoothing`` (weight of each new interval in the online work estimate; 0
    keeps the learned value). ``last_forecast`` holds the latest :class:`Forecast` (its
    ``source`` says whether the fallback answered).

    Time is counted in intervals from the first observation's time of day, so the
    forecaster's calendar features see the same clock as in training.
    """

    _needs = _NEEDS

    def __init__(
        self,
        layout: Layout,
        min_replicas: int,
        max_replicas: int,
        slots_per_replica: int,
        interval_s: float,
        forecaster: WorkloadForecaster,
        cold_start_s: float,
        slot_s_per_request: float,
        target_utilisation: float = 0.7,
        service_smoothing: float = 0.1,
    ) -> None:
        super().__init__(layout, min_replicas, max_replicas, slots_per_replica, interval_s)
        owner = type(self).__name__
        needed = horizon_for(cold_start_s, interval_s)
        if forecaster.horizon < needed:
            raise ValueError(
                f"{owner}: forecaster.horizon = {forecaster.horizon} is too short: a cold start of {cold_start_s} s "
                f"with {interval_s} s intervals needs forecasts {needed} intervals ahead"
            )
        if not (math.isfinite(slot_s_per_request) and slot_s_per_request > 0):
            raise ValueError(f"{owner}: slot_s_per_request = {slot_s_per_request!r} is invalid: must be > 0")
        if not 0 < target_utilisation <= 1:
            raise ValueError(f"{owner}: target_utilisation = {target_utilisation!r} is invalid: must be in (0, 1]")
        if not 0 <= service_smoothing <= 1:
            raise ValueError(f"{owner}: service_smoothing = {service_smoothing!r} is invalid: must be in [0, 1]")
        self.forecaster = forecaster
        self.cold_start_s = float(cold_start_s)
        self.horizon = needed
        self.learned_slot_s_per_request = float(slot_s_per_request)
        self.target_utilisation = float(target_utilisation)
        self.service_smoothing = float(service_smoothing)
        self.last_forecast: Forecast | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the episode: rate history, clock and the online work estimate."""
        self._history: deque[float] = deque(maxlen=max(self.forecaster.lags, 64))
        self._start_s: float | None = None
        self._steps = 0
        self.slot_s_per_request = self.learned_slot_s_per_request
        self.last_forecast = None

    def act(self, observation: np.ndarray) -> int:
        f = self._features(observation)
        if self._start_s is None:
            angle = math.atan2(f["time_of_day_sin"], f["time_of_day_cos"]) % (2.0 * math.pi)
            self._start_s = angle / (2.0 * math.pi) * DAY_S
        now_s = self._start_s + self._steps * self.interval_s
        self._steps += 1
        rate = f["arrival_rate_rps"]
        self._history.append(rate)
        busy = f["utilisation"] * f["ready_replicas"] * self.slots_per_replica
        if rate > 0 and busy > 0 and f["utilisation"] < _SATURATED:
            a = self.service_smoothing
            self.slot_s_per_request = (1 - a) * self.slot_s_per_request + a * busy / rate
        forecast = self.forecaster.predict(np.asarray(self._history), now_s)
        self.last_forecast = forecast
        peak_rps = float(forecast.upper[: self.horizon].max())
        slots = (peak_rps + f["queue_len"] / self.interval_s) * self.slot_s_per_request / self.target_utilisation
        replicas = math.ceil(slots / self.slots_per_replica - 1e-9)
        return self._bound(replicas)

    def save(self, directory: Path) -> None:
        """Write the policy's parameters and layout (JSON) and the forecaster (its own subdirectory)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "slots_per_replica": self.slots_per_replica,
            "interval_s": self.interval_s,
            "cold_start_s": self.cold_start_s,
            "slot_s_per_request": self.learned_slot_s_per_request,
            "target_utilisation": self.target_utilisation,
            "service_smoothing": self.service_smoothing,
            "layout": layout_to_json(self.layout),
        }
        (directory / _CONFIG_FILE).write_text(json.dumps(state, indent=2))
        self.forecaster.save(directory / _FORECASTER_DIR)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The policy :meth:`save` wrote into ``directory``."""
        directory = Path(directory)
        state = json.loads((directory / _CONFIG_FILE).read_text())
        layout = layout_from_json(state.pop("layout"))
        return cls(layout=layout, forecaster=WorkloadForecaster.load(directory / _FORECASTER_DIR), **state)


class PredictiveAutoscalerLearner:
    """Fits a :class:`PredictiveAutoscaler` on ``Autoscaling-v0``.

    ``learn`` runs the env for ``total_timesteps`` intervals under HPA (target
    ``collect_utilisation``), records each interval's arrival rate and time and the busy
    slots per arrival, evaluates a forecaster fitted on all but the held-out data
    (the last ``eval_fraction`` of every episode), logs the
    ``forecast/*`` metrics of :meth:`WorkloadForecaster.evaluate` plus
    ``forecast/slot_s_per_request``, then refits on everything and returns the policy.

    Hyperparameters: ``model``, ``lags``, ``coverage``, ``n_estimators``, ``max_depth``,
    ``calibration_fraction``, ``min_samples``, ``period_s`` (see
    :class:`WorkloadForecaster`); ``target_utilisation`` and ``service_smoothing`` (see
    :class:`PredictiveAutoscaler`); ``collect_utilisation``; ``eval_fraction``.
    """

    def __init__(
        self,
        model: str = "random_forest",
        lags: int = 8,
        coverage: float = 0.9,
        n_estimators: int = 100,
        max_depth: int | None = None,
        calibration_fraction: float = 0.3,
        min_samples: int = 30,
        period_s: float = 86_400.0,
        target_utilisation: float = 0.7,
        service_smoothing: float = 0.1,
        collect_utilisation: float = 0.7,
        eval_fraction: float = 0.25,
    ) -> None:
        if not 0 < eval_fraction < 1:
            raise ValueError(f"{type(self).__name__}: eval_fraction = {eval_fraction!r} is invalid: must be in (0, 1)")
        self.forecaster_kwargs: dict[str, Any] = {
            "model": model,
            "lags": lags,
            "coverage": coverage,
            "n_estimators": n_estimators,
            "max_depth": max_depth,
            "calibration_fraction": calibration_fraction,
            "min_samples": min_samples,
            "period_s": period_s,
        }
        # Fail on a bad forecaster argument now, not after collecting data.
        WorkloadForecaster(**self.forecaster_kwargs)
        self.target_utilisation = target_utilisation
        self.service_smoothing = service_smoothing
        self.collect_utilisation = collect_utilisation
        self.eval_fraction = eval_fraction

    def learn(
        self,
        env: gym.Env[Any, Any],
        total_timesteps: int,
        seed: int,
        log: Callable[[dict[str, float], int], None] | None = None,
    ) -> PredictiveAutoscaler:
        """Collect ``total_timesteps`` intervals on ``env`` (Autoscaling-v0), fit, and return the policy."""
        base: Any = env.unwrapped
        scenario = base.scenario
        kwargs = scaling_kwargs(scenario)
        if tuple(base.layout.names) != tuple(kwargs["layout"].names):
            raise ValueError(
                f"{type(self).__name__} needs Autoscaling-v0's interval observations, not {base.layout.names}"
            )
        interval_s = scenario.control.interval_s
        cold_start_s = scenario.pool.cold_start_mean_s
        hpa = HPA(**kwargs, target_utilisation=self.collect_utilisation)
        at = require_features(kwargs["layout"], _NEEDS, type(self).__name__)
        rates: list[list[float]] = []
        times: list[list[float]] = []
        busy_total = arrivals_total = 0.0
        steps = 0
        obs, info = env.reset(seed=training_seed(seed))
        while True:
            hpa.reset()
            rates.append([])
            times.append([])
            done = False
            while not done and steps < total_timesteps:
                rate, util = float(obs[at["arrival_rate_rps"]]), float(obs[at["utilisation"]])
                rates[-1].append(rate)
                times[-1].append(float(info["time_s"]))
                if util < _SATURATED:
                    busy_total += util * float(obs[at["ready_replicas"]]) * kwargs["slots_per_replica"]
                    arrivals_total += rate
                obs, _, terminated, truncated, info = env.step(hpa.act(obs))
                steps += 1
                done = terminated or truncated
            if steps >= total_timesteps:
                break
            obs, info = env.reset()
        if arrivals_total <= 0 or busy_total <= 0:
            raise ValueError(
                f"{type(self).__name__}: no request was served in {steps} intervals; give a larger total_timesteps"
            )
        slot_s = busy_total / arrivals_total
        series = [np.asarray(r) for r in rates if r]
        stamps = [np.asarray(t) for t in times if t]
        horizon = horizon_for(cold_start_s, interval_s)

        def make() -> WorkloadForecaster:
            return WorkloadForecaster(
                **self.forecaster_kwargs, horizon=horizon, interval_s=interval_s, random_state=seed
            )

        # Hold out the tail of every episode; its forecasts start from the lag window before it.
        lags = self.forecaster_kwargs["lags"]
        train, train_t, held, held_t = [], [], [], []
        for rates_k, times_k in zip(series, stamps, strict=True):
            cut = len(rates_k) - max(1, round(self.eval_fraction * len(rates_k)))
            train.append(rates_k[:cut])
            train_t.append(times_k[:cut])
            held.append(rates_k[max(0, cut - lags) :])
            held_t.append(times_k[max(0, cut - lags) :])
        metrics = {"forecast/slot_s_per_request": slot_s, "forecast/intervals": float(steps)}
        try:
            metrics.update(make().fit(train, train_t).evaluate(held, held_t))
        except ValueError:
            metrics["forecast/samples"] = 0.0  # too little held-out data to score: reported, not hidden
        if log is not None:
            log(metrics, steps)
        forecaster = make().fit(series, stamps)
        return PredictiveAutoscaler(
            **kwargs,
            forecaster=forecaster,
            cold_start_s=cold_start_s,
            slot_s_per_request=slot_s,
            target_utilisation=self.target_utilisation,
            service_smoothing=self.service_smoothing,
        )
