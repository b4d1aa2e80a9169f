"""Workload forecasting: the per-interval arrival rate some intervals ahead, with calibrated intervals.

:class:`WorkloadForecaster` predicts the arrival rate (requests/s) ``1..horizon``
control intervals ahead from the recent rates (lag features) and the time of day of
the target interval (calendar features, ``sin``/``cos`` of the phase within
``period_s``; used only when the training data spans a whole period, since over less
they are a time trend that models extrapolate). It is the platform's WorkloadPredictor (RandomForest, LinearRegression,
confidence) rebuilt on scikit-learn, with three changes a forecaster that drives
capacity needs:

* **Direct multi-step forecasts.** One regressor per step ahead ``h`` (the "direct"
  strategy of Taieb et al., "A review and comparison of strategies for multi-step ahead
  time series forecasting", Expert Systems with Applications 2012): no error feeds back
  through a recursion, and each horizon gets its own calibrated interval.
* **Level-free targets.** Each sample is expressed relative to the mean of its lag
  window (the *anchor*) and scaled by the Poisson noise at that level; the model
  predicts the scaled change. Trees cannot extrapolate beyond the rates they were
  trained on; changes relative to the recent level they can.
* **Split-conformal prediction intervals.** The last ``calibration_fraction`` of every
  series (in time) is held out of fitting; the scaled absolute residuals there give the
  interval half-width as their ``ceil((n + 1) coverage) / n`` empirical quantile. For
  exchangeable data this covers a new observation with probability at least
  ``coverage`` whatever the model (Vovk, Gammerman and Shafer, "Algorithmic Learning in
  a Random World", 2005; Lei et al., "Distribution-free predictive inference for
  regression", JASA 2018, whose locally weighted variant the Poisson scaling is). So
  the interval is a confidence statement one can check, not a model's opinion of itself.

When the model is unfit (too little training data) or the history is shorter than
its lags, :meth:`WorkloadForecaster.predict` falls back to Holt's linear exponential
smoothing in numpy (Holt, "Forecasting seasonals and trends by exponentially weighted
moving averages", 1957) with normal-approximation intervals, and says so in
:attr:`Forecast.source`.

The fitted regressors are :attr:`WorkloadForecaster.models` (one per step ahead) and
the conformal half-widths, in units of the Poisson scale, :attr:`WorkloadForecaster.quantiles`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, get_args

import joblib  # type: ignore[import-untyped, unused-ignore]
import numpy as np
from scipy.stats import norm
from sklearn.ensemble import (  # type: ignore[import-untyped, unused-ignore]
    GradientBoostingRegressor,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression  # type: ignore[import-untyped, unused-ignore]

from servegym.agents.io import load_joblib

__all__ = ["MODELS", "Forecast", "WorkloadForecaster", "make_regressor"]

ModelName = Literal["random_forest", "linear", "gradient_boosting"]
MODELS: tuple[str, ...] = get_args(ModelName)
"""Names of the regressors :func:`make_regressor` builds."""

_CONFIG_FILE = "forecaster.json"
_MODELS_FILE = "forecaster_models.joblib"


def make_regressor(name: str, *, random_state: int, n_estimators: int = 100, max_depth: int | None = None) -> Any:
    """A fresh scikit-learn regressor by name: ``random_forest``, ``linear`` or ``gradient_boosting``.

    ``max_depth`` defaults to unlimited for the forest and 3 for boosting (each library's
    default); ``n_estimators`` is ignored by the linear model.
    """
    if name == "random_forest":
        return RandomForestRegressor(
            n_estimators=n_estimators, max_depth=max_depth, min_samples_leaf=3, random_state=random_state, n_jobs=1
        )
    if name == "gradient_boosting":
        return GradientBoostingRegressor(
            n_estimators=n_estimators, max_depth=3 if max_depth is None else max_depth, random_state=random_state
        )
    if name == "linear":
        return LinearRegression()
    raise ValueError(f"model = {name!r} is invalid: must be one of {', '.join(MODELS)}")


@dataclass(frozen=True)
class Forecast:
    """Arrival-rate forecasts for ``1..horizon`` intervals ahead (index ``h - 1``), in requests/s.

    ``lower``/``upper`` bound each forecast at the nominal ``coverage``; ``source`` is
    ``"model"`` (conformal intervals, calibrated) or ``"fallback"`` (Holt smoothing with
    normal-approximation intervals, not calibrated).
    """

    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    coverage: float
    source: str

    @property
    def confidence(self) -> np.ndarray:
        """A score in (0, 1] per step ahead: ``1 / (1 + half_width / mean)``.

        1 for an interval of zero width; 0.5 when the interval's half-width equals the
        forecast. It summarises how tight the calibrated interval is relative to the load.
        """
        half = (self.upper - self.lower) / 2.0
        return np.asarray(1.0 / (1.0 + half / np.maximum(self.mean, 1e-9)))


class WorkloadForecaster:
    """Forecasts the per-interval arrival rate ``1..horizon`` intervals ahead (see the module docstring).

    Arguments: ``model`` (``random_forest``, ``linear`` or ``gradient_boosting``);
    ``horizon`` (steps ahead, at least 1); ``lags`` (past intervals in the features);
    ``coverage`` (nominal coverage of the intervals, in (0, 1)); ``interval_s`` (length
    of one interval: rates are counts per ``interval_s`` seconds, which sets the Poisson
    scale); ``period_s`` (the calendar period, a day by default);
    ``calibration_fraction`` (tail of each series held out for conformal calibration);
    ``min_samples`` (training samples per horizon below which the model stays unfit
    and the fallback answers); ``smoothing`` and ``trend_smoothing`` (Holt's alpha and
    beta for the fallback); ``n_estimators``, ``max_depth``, ``random_state`` for the
    regressors.
    """

    def __init__(
        self,
        model: str = "random_forest",
        *,
        horizon: int = 1,
        lags: int = 8,
        coverage: float = 0.9,
        interval_s: float = 15.0,
        period_s: float = 86_400.0,
        calibration_fraction: float = 0.3,
        min_samples: int = 30,
        smoothing: float = 0.5,
        trend_smoothing: float = 0.1,
        n_estimators: int = 100,
        max_depth: int | None = None,
        random_state: int = 0,
    ) -> None:
        owner = type(self).__name__
        if model not in MODELS:
            raise ValueError(f"{owner}: model = {model!r} is invalid: must be one of {', '.join(MODELS)}")
        for name, count, minimum in (("horizon", horizon, 1), ("lags", lags, 1), ("min_samples", min_samples, 2)):
            if isinstance(count, bool) or not isinstance(count, int) or count < minimum:
                raise ValueError(f"{owner}: {name} = {count!r} is invalid: must be an integer >= {minimum}")
        for name, value in (("coverage", coverage), ("calibration_fraction", calibration_fraction)):
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise ValueError(f"{owner}: {name} = {value!r} is invalid: must be in (0, 1)")
        for name, value in (("smoothing", smoothing), ("trend_smoothing", trend_smoothing)):
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ValueError(f"{owner}: {name} = {value!r} is invalid: must be in (0, 1]")
        for name, value in (("interval_s", interval_s), ("period_s", period_s)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{owner}: {name} = {value!r} is invalid: must be a finite number > 0")
        self.model = model
        self.horizon = horizon
        self.lags = lags
        self.coverage = float(coverage)
        self.interval_s = float(interval_s)
        self.period_s = float(period_s)
        self.calibration_fraction = float(calibration_fraction)
        self.min_samples = min_samples
        self.smoothing = float(smoothing)
        self.trend_smoothing = float(trend_smoothing)
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.random_state = random_state
        self.models: list[Any] = []
        """Fitted regressors, ``models[h - 1]`` for ``h`` steps ahead (empty while unfit)."""
        self.quantiles = np.zeros(0)
        """Conformal half-widths per step ahead, in units of :meth:`noise_scale`."""
        self.n_train = 0
        self.n_calibration = 0
        self.use_calendar = False
        """Whether the calendar features are in use: only when training spans a whole ``period_s``."""

    @property
    def fitted(self) -> bool:
        """Whether the regressors are fitted (otherwise :meth:`predict` uses the fallback)."""
        return len(self.models) == self.horizon

    def noise_scale(self, anchor: np.ndarray) -> np.ndarray:
        """Standard deviation of a Poisson rate estimate over one interval at rate ``anchor`` (requests/s).

        One request per interval is added so that the scale of an idle period is not zero.
        """
        return np.asarray(np.sqrt((np.maximum(anchor, 0.0) + 1.0 / self.interval_s) / self.interval_s))

    def _features(self, windows: np.ndarray, target_time_s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, anchors and scales for lag ``windows`` (rows, oldest first) and target times."""
        anchor = windows.mean(axis=1)
        scale = self.noise_scale(anchor)
        columns = [(windows - anchor[:, None]) / scale[:, None]]
        if self.use_calendar:
            phase = 2.0 * np.pi * (target_time_s % self.period_s) / self.period_s
            columns += [np.sin(phase), np.cos(phase)]
        return np.column_stack(columns), anchor, scale

    def _samples(
        self, series: Sequence[np.ndarray], times_s: Sequence[np.ndarray], h: int
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per series: (lag windows, target times, targets, window end times) for ``h`` steps ahead."""
        out = []
        for rates, times in zip(series, times_s, strict=True):
            n = len(rates) - self.lags - h + 1
            if n <= 0:
                continue
            windows = np.lib.stride_tricks.sliding_window_view(rates, self.lags)[:n]
            ends = np.arange(self.lags - 1, self.lags - 1 + n)
            out.append((windows, times[ends + h], rates[ends + h], times[ends]))
        return out

    def _checked(
        self, series: Sequence[np.ndarray] | np.ndarray, times_s: Sequence[np.ndarray] | np.ndarray | None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if isinstance(series, np.ndarray) and series.ndim == 1:
            series = [series]
        rates = [np.asarray(s, dtype=np.float64) for s in series]
        if times_s is None:
            times = [self.interval_s * np.arange(1, len(r) + 1, dtype=np.float64) for r in rates]
        else:
            if isinstance(times_s, np.ndarray) and times_s.ndim == 1:
                times_s = [times_s]
            times = [np.asarray(t, dtype=np.float64) for t in times_s]
        for k, (r, t) in enumerate(zip(rates, times, strict=True)):
            if r.ndim != 1 or r.shape != t.shape:
                raise ValueError(f"series {k}: rates {r.shape} and times {t.shape} must be 1-D and of equal length")
            if not (np.isfinite(r).all() and (r >= 0).all()):
                raise ValueError(f"series {k}: arrival rates must be finite and >= 0")
        return rates, times

    def fit(
        self, series: Sequence[np.ndarray] | np.ndarray, times_s: Sequence[np.ndarray] | np.ndarray | None = None
    ) -> Self:
        """Fit one regressor per step ahead on ``series`` (one or several runs of per-interval rates).

        ``times_s`` gives each rate's interval end time in seconds (default: ``k *
        interval_s``, ``k = 1, 2, ...``). With fewer than ``min_samples`` training samples
        (or fewer than 2 calibration samples) for some horizon the forecaster stays
        unfit and :meth:`predict` uses the fallback.
        """
        rates, times = self._checked(series, times_s)
        # Over less than one period, time of day is a trend in disguise, and models extrapolate it.
        stamps = np.concatenate(times) if times else np.zeros(0)
        self.use_calendar = len(stamps) > 0 and float(stamps.max() - stamps.min()) >= self.period_s - self.interval_s
        models: list[Any] = []
        quantiles = []
        n_train = n_cal = 0
        for h in range(1, self.horizon + 1):
            train_parts, cal_parts = [], []
            for windows, target_time, target, _ in self._samples(rates, times, h):
                split = len(target) - max(1, round(self.calibration_fraction * len(target)))
                train_parts.append((windows[:split], target_time[:split], target[:split]))
                cal_parts.append((windows[split:], target_time[split:], target[split:]))
            n_train = sum(len(p[2]) for p in train_parts)
            n_cal = sum(len(p[2]) for p in cal_parts)
            if n_train < self.min_samples or n_cal < 2:
                self.models, self.quantiles, self.n_train, self.n_calibration = [], np.zeros(0), n_train, n_cal
                return self
            X, anchor, scale = self._features(
                np.concatenate([p[0] for p in train_parts]), np.concatenate([p[1] for p in train_parts])
            )
            y = (np.concatenate([p[2] for p in train_parts]) - anchor) / scale
            regressor = make_regressor(
                self.model, random_state=self.random_state, n_estimators=self.n_estimators, max_depth=self.max_depth
            )
            regressor.fit(X, y)
            Xc, anchor_c, scale_c = self._features(
                np.concatenate([p[0] for p in cal_parts]), np.concatenate([p[1] for p in cal_parts])
            )
            target_c = np.concatenate([p[2] for p in cal_parts])
            scores = np.abs(target_c - (anchor_c + scale_c * regressor.predict(Xc))) / scale_c
            models.append(regressor)
            quantiles.append(_conformal_quantile(scores, self.coverage))
        self.models, self.quantiles = models, np.asarray(quantiles)
        self.n_train, self.n_calibration = n_train, n_cal
        return self

    def predict(self, history: np.ndarray, time_s: float) -> Forecast:
        """Forecasts for the ``horizon`` intervals after the last rate of ``history`` (which ends at ``time_s``).

        Uses the fitted regressors when there are ``lags`` rates of history, else the fallback.
        """
        rates = np.asarray(history, dtype=np.float64)
        if rates.ndim != 1 or len(rates) == 0 or not np.isfinite(rates).all():
            raise ValueError(f"history must be a non-empty 1-D array of finite rates, got shape {rates.shape}")
        if not self.fitted or len(rates) < self.lags:
            return self._fallback(rates)
        window = rates[None, -self.lags :]
        parts = [self._predict_model(window, np.array([time_s]), h) for h in range(1, self.horizon + 1)]
        mean = np.concatenate([m for m, _ in parts])
        half = np.concatenate([w for _, w in parts])
        return Forecast(mean, np.maximum(mean - half, 0.0), mean + half, self.coverage, "model")

    def _predict_model(self, windows: np.ndarray, end_s: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Model forecasts ``h`` steps after lag ``windows`` ending at ``end_s``, and interval half-widths."""
        X, anchor, scale = self._features(windows, end_s + h * self.interval_s)
        mean = np.maximum(anchor + scale * self.models[h - 1].predict(X), 0.0)
        return mean, self.quantiles[h - 1] * scale

    def _fallback(self, rates: np.ndarray) -> Forecast:
        """Holt's linear exponential smoothing, with intervals from its one-step errors (or Poisson noise)."""
        level, trend = rates[0], 0.0
        errors = []
        for x in rates[1:]:
            errors.append(x - (level + trend))
            previous = level
            level = self.smoothing * x + (1 - self.smoothing) * (level + trend)
            trend = self.trend_smoothing * (level - previous) + (1 - self.trend_smoothing) * trend
        steps = np.arange(1, self.horizon + 1)
        mean = np.maximum(level + steps * trend, 0.0)
        sigma = float(np.std(errors)) if len(errors) >= 5 else float(self.noise_scale(np.array([level]))[0])
        half = float(norm.ppf(0.5 + self.coverage / 2.0)) * sigma * np.sqrt(steps)
        return Forecast(mean, np.maximum(mean - half, 0.0), mean + half, self.coverage, "fallback")

    def evaluate(
        self, series: Sequence[np.ndarray] | np.ndarray, times_s: Sequence[np.ndarray] | np.ndarray | None = None
    ) -> dict[str, float]:
        """Out-of-sample quality at the full horizon on ``series``, as ``forecast/*`` metrics.

        ``forecast/mae`` and ``forecast/naive_mae`` (the last observed rate as the
        forecast) in requests/s, ``forecast/coverage`` (the share of rates inside the
        interval), ``forecast/interval_width`` (mean width, requests/s),
        ``forecast/samples`` and ``forecast/fallback`` (1 when the fallback answered).
        """
        rates, times = self._checked(series, times_s)
        h = self.horizon
        mean_parts, lower_parts, upper_parts, actual_parts, naive_parts = [], [], [], [], []
        for windows, _, actual, end_s in self._samples(rates, times, h):
            if self.fitted:
                mean, half = self._predict_model(windows, end_s, h)
                lower, upper = np.maximum(mean - half, 0.0), mean + half
            else:
                # Unfit: the fallback, on the same lag window the model would have seen.
                forecasts = [self._fallback(w) for w in windows]
                mean = np.array([f.mean[h - 1] for f in forecasts])
                lower = np.array([f.lower[h - 1] for f in forecasts])
                upper = np.array([f.upper[h - 1] for f in forecasts])
            mean_parts.append(mean)
            lower_parts.append(lower)
            upper_parts.append(upper)
            actual_parts.append(actual)
            naive_parts.append(windows[:, -1])
        if not actual_parts:
            raise ValueError(
                f"no series is longer than lags + horizon = {self.lags + h} intervals: nothing to evaluate"
            )
        mean, lower, upper = np.concatenate(mean_parts), np.concatenate(lower_parts), np.concatenate(upper_parts)
        actual, naive = np.concatenate(actual_parts), np.concatenate(naive_parts)
        return {
            "forecast/mae": float(np.mean(np.abs(mean - actual))),
            "forecast/naive_mae": float(np.mean(np.abs(naive - actual))),
            "forecast/coverage": float(np.mean((lower <= actual) & (actual <= upper))),
            "forecast/interval_width": float(np.mean(upper - lower)),
            "forecast/samples": float(len(actual)),
            "forecast/fallback": 0.0 if self.fitted else 1.0,
        }

    def _config(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "horizon": self.horizon,
            "lags": self.lags,
            "coverage": self.coverage,
            "interval_s": self.interval_s,
            "period_s": self.period_s,
            "calibration_fraction": self.calibration_fraction,
            "min_samples": self.min_samples,
            "smoothing": self.smoothing,
            "trend_smoothing": self.trend_smoothing,
            "n_estimators": self.n_estimators,
            "max_depth": self.max_depth,
            "random_state": self.random_state,
        }

    def save(self, directory: Path) -> None:
        """Write the configuration and conformal quantiles (JSON) and the fitted regressors (joblib)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "config": self._config(),
            "use_calendar": self.use_calendar,
            "quantiles": self.quantiles.tolist(),
            "n_train": self.n_train,
            "n_calibration": self.n_calibration,
        }
        (directory / _CONFIG_FILE).write_text(json.dumps(state, indent=2))
        joblib.dump(self.models, directory / _MODELS_FILE)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """The forecaster :meth:`save` wrote into ``directory``."""
        directory = Path(directory)
        state = json.loads((directory / _CONFIG_FILE).read_text())
        forecaster = cls(**state["config"])
        forecaster.models = list(load_joblib(directory / _MODELS_FILE))
        forecaster.quantiles = np.asarray(state["quantiles"], dtype=np.float64)
        forecaster.n_train, forecaster.n_calibration = state["n_train"], state["n_calibration"]
        forecaster.use_calendar = bool(state["use_calendar"])
        return forecaster


def _conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The split-conformal quantile: the ``ceil((n + 1) coverage)``-th smallest of ``n`` scores.

    With too few scores for that rank the largest score is used (the exact method would
    give an infinite interval; the caller decides how much calibration data is enough).
    """
    n = len(scores)
    rank = min(math.ceil((n + 1) * coverage), n)
    return float(np.sort(scores)[rank - 1])
