"""The workload forecaster: accuracy against a naive forecast, calibrated intervals, fallback, persistence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from servegym.agents.forecast import WorkloadForecaster
from servegym.sim.config import TenantConfig, WorkloadConfig
from servegym.sim.random import Streams
from servegym.sim.workload import Workload

INTERVAL_S = 15.0
PERIOD_S = 3600.0


def diurnal_rates(seed: int, duration_s: float = 4 * 3600.0) -> np.ndarray:
    """Per-interval arrival rates of the simulator's diurnal workload (thinned Poisson)."""
    cfg = WorkloadConfig(
        kind="diurnal",
        rate_rps=10.0,
        amplitude=0.6,
        period_s=PERIOD_S,
        peak_s=0.0,
        tenants=(TenantConfig(n_intents=10, n_variants=1),),
        embedding_dim=2,
    )
    arrivals = np.concatenate([b.arrival_s for b in Workload(cfg, Streams(seed)).batches(duration_s)])
    return np.bincount((arrivals // INTERVAL_S).astype(int), minlength=round(duration_s / INTERVAL_S)) / INTERVAL_S


@pytest.fixture(scope="module")
def train() -> list[np.ndarray]:
    return [diurnal_rates(seed) for seed in range(3)]


@pytest.fixture(scope="module")
def test_series() -> list[np.ndarray]:
    return [diurnal_rates(seed) for seed in range(100, 104)]


@pytest.mark.parametrize("model", ["linear", "random_forest", "gradient_boosting"])
def test_the_forecaster_beats_the_last_value_and_covers_its_nominal_rate(
    model: str, train: list[np.ndarray], test_series: list[np.ndarray]
) -> None:
    forecaster = WorkloadForecaster(
        model, horizon=4, interval_s=INTERVAL_S, period_s=PERIOD_S, n_estimators=30, random_state=0
    ).fit(train)
    assert forecaster.fitted and forecaster.use_calendar
    metrics = forecaster.evaluate(test_series)
    # Four steps ahead on Poisson noise, the last value errs by about sqrt(2) noise sd; the model averages it away.
    assert metrics["forecast/mae"] < 0.85 * metrics["forecast/naive_mae"]
    # Conformal coverage is Beta-distributed around 0.9 given the calibration set (sd sqrt(0.09 / n_cal)),
    # and the test share adds binomial noise (sd sqrt(0.09 / n_test)): allow four of the combined sd.
    n_cal, n_test = forecaster.n_calibration, metrics["forecast/samples"]
    tolerance = 4 * math.sqrt(0.09 / n_cal + 0.09 / n_test)
    assert n_cal > 600 and n_test > 3000
    assert abs(metrics["forecast/coverage"] - 0.9) < tolerance, (metrics, tolerance)


def test_same_seed_same_model_and_a_saved_forecaster_predicts_alike(train: list[np.ndarray], tmp_path: Path) -> None:
    def fit() -> WorkloadForecaster:
        return WorkloadForecaster(
            "random_forest", horizon=2, interval_s=INTERVAL_S, period_s=PERIOD_S, n_estimators=10, random_state=7
        ).fit(train)

    a, b = fit(), fit()
    history, now = train[0][:100], 100 * INTERVAL_S
    assert np.array_equal(a.predict(history, now).upper, b.predict(history, now).upper)
    a.save(tmp_path)
    loaded = WorkloadForecaster.load(tmp_path)
    fa, fl = a.predict(history, now), loaded.predict(history, now)
    assert fl.source == "model"
    assert np.array_equal(fa.mean, fl.mean) and np.array_equal(fa.upper, fl.upper)
    assert np.all(fa.lower <= fa.mean) and np.all(fa.mean <= fa.upper)
    assert np.all((fa.confidence > 0) & (fa.confidence <= 1))


def test_too_little_history_falls_back_to_holt_and_says_so(train: list[np.ndarray]) -> None:
    unfit = WorkloadForecaster("linear", horizon=3, interval_s=INTERVAL_S, min_samples=50).fit([train[0][:30]])
    assert not unfit.fitted
    forecast = unfit.predict(train[0][:30], 30 * INTERVAL_S)
    assert forecast.source == "fallback"
    assert forecast.mean.shape == (3,) and np.all(forecast.upper > forecast.mean)
    # Holt's level follows a step in the series.
    stepped = unfit.predict(np.r_[np.full(20, 5.0), np.full(20, 15.0)], 600.0)
    assert 12.0 < stepped.mean[0] < 18.0
    fitted = WorkloadForecaster("linear", horizon=3, interval_s=INTERVAL_S, lags=8).fit(train)
    assert fitted.predict(train[0][:4], 60.0).source == "fallback"  # shorter than its lags
    assert fitted.predict(train[0][:8], 120.0).source == "model"
    assert unfit.evaluate([train[1][:200]])["forecast/fallback"] == 1.0


def test_invalid_arguments_name_the_key() -> None:
    with pytest.raises(ValueError, match="model = 'arima'"):
        WorkloadForecaster("arima")
    with pytest.raises(ValueError, match="coverage"):
        WorkloadForecaster(coverage=1.5)
