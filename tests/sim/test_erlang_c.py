"""The pool as an M/M/c queue agrees with Erlang C.

A degenerate scenario turns the platform into a textbook M/M/c queue: Poisson arrivals,
one backend whose service time is exponential with mean 1/mu (no token terms, no
failures, no timeouts), no caches, and a static pool of c slots with an unbounded queue
and no queue timeout. The mean wait in queue must match Erlang C,
``W_q = C(c, a) / (c mu - lambda)`` with ``a = lambda / mu``.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest

from servegym.sim.config import (
    BackendConfig,
    CacheConfig,
    ControlConfig,
    PoolConfig,
    ScenarioConfig,
    SemanticCacheConfig,
    TenantConfig,
    WorkloadConfig,
)
from servegym.sim.platform import Platform
from servegym.sim.telemetry import COMPLETED

SERVERS = 4
MU = 1.0
RHO = 0.8
LAMBDA = RHO * SERVERS * MU
DURATION_S = 20_000.0  # about 64,000 requests
WARMUP_S = 500.0
BATCHES = 25
INTERVAL_S = 400.0  # control intervals double as batches for utilisation


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load ``a`` (Erlang C)."""
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def test_erlang_c_formula_known_values() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # a^2/2 * 2 / (1 + 1 + 1) by hand


@pytest.fixture(scope="module")
def mmc() -> Platform:
    scenario = ScenarioConfig(
        name="mmc",
        seed=2024,
        duration_s=DURATION_S,
        workload=WorkloadConfig(
            kind="poisson", rate_rps=LAMBDA, tenants=(TenantConfig(n_intents=10, n_variants=1),), embedding_dim=2
        ),
        backends=(
            BackendConfig(
                name="exp",
                service_distribution="exponential",
                ttft_base_s=1.0 / MU,
                ttft_per_prompt_token_s=0.0,
                tpot_base_s=0.0,
                failure_prob=0.0,
                timeout_s=1e12,
            ),
        ),
        pool=PoolConfig(
            initial_replicas=1,
            min_replicas=1,
            max_replicas=1,
            slots_per_replica=SERVERS,
            max_queue=10**9,
            queue_timeout_s=1e12,
            cold_start_mean_s=0.0,
        ),
        cache=CacheConfig(tiers=(), semantic=SemanticCacheConfig(enabled=False)),
        control=ControlConfig(interval_s=INTERVAL_S, scaling="static"),
    )
    platform = Platform(scenario)
    platform.run()
    return platform


def _batch_means(values: np.ndarray, batches: int) -> tuple[float, float]:
    """Grand mean and its standard error from the means of consecutive batches."""
    means = np.array([chunk.mean() for chunk in np.array_split(values, batches)])
    return float(means.mean()), float(means.std(ddof=1) / math.sqrt(batches))


def test_mean_wait_matches_erlang_c(mmc: Platform) -> None:
    cols = mmc.requests.frame()
    done = (cols["outcome"] == COMPLETED) & (cols["arrival_s"] >= WARMUP_S)
    assert done.sum() > 50_000
    # FIFO: completed requests in arrival order are the waits in order; consecutive batches of
    # ~2,500 requests are long against the queue's relaxation time, so their means are close to
    # independent and their spread gives an honest standard error of the grand mean.
    wait = cols["start_s"][done] - cols["enqueue_s"][done]
    assert np.all(wait >= 0)
    mean, se = _batch_means(wait, BATCHES)
    expected = erlang_c(SERVERS, LAMBDA / MU) / (SERVERS * MU - LAMBDA)  # 0.746 s
    # 4 standard errors: a false alarm has probability well under 1e-3 (t with 24 df: ~5e-4).
    assert abs(mean - expected) < 4 * se, (mean, expected, se)
    assert se < 0.1 * expected  # the sample is large enough for the check to have teeth

    # The probability of waiting at all is Erlang C itself.
    p_wait, se_p = _batch_means((wait > 0).astype(np.float64), BATCHES)
    assert abs(p_wait - erlang_c(SERVERS, LAMBDA / MU)) < 4 * se_p

    # Service times are exponential with mean 1/mu.
    service, se_s = _batch_means(cols["end_s"][done] - cols["start_s"][done], BATCHES)
    assert abs(service - 1.0 / MU) < 4 * se_s


def test_utilisation_and_throughput_match_load(mmc: Platform) -> None:
    intervals = mmc.intervals[math.ceil(WARMUP_S / INTERVAL_S) :]
    utilisation = np.array([m.utilisation for m in intervals])
    mean, se = _batch_means(utilisation, len(utilisation))  # one batch per control interval
    assert abs(mean - RHO) < 4 * se, (mean, se)
    # Arrivals are Poisson: the count over the run has standard deviation sqrt(lambda T).
    expected = LAMBDA * DURATION_S
    assert abs(mmc.arrived - expected) < 4 * math.sqrt(expected)
    # In a stable queue, throughput equals the arrival rate up to the few requests still inside.
    assert mmc.arrived - mmc.completed == mmc.in_flight() < 100
    assert mmc.dropped == 0


def test_start_times_are_first_come_first_served_on_c_servers(mmc: Platform) -> None:
    """Sample-path check: given arrivals and service times, FCFS on c servers fixes every start time."""
    cols = mmc.requests.frame()
    started = np.flatnonzero(~np.isnan(cols["start_s"]))
    assert len(started) == mmc.completed + mmc.calls_in_flight
    service = np.where(np.isnan(cols["end_s"]), np.inf, cols["end_s"] - cols["start_s"])
    free_at = [0.0] * SERVERS
    expected = np.empty(len(started))
    for n, i in enumerate(started):
        start = max(cols["arrival_s"][i], heapq.heappop(free_at))
        expected[n] = start
        heapq.heappush(free_at, start + service[i])
    np.testing.assert_allclose(cols["start_s"][started], expected, rtol=0, atol=1e-9)
