"""Every arrived request ends exactly once: completed, dropped, or still in flight."""

from __future__ import annotations

import numpy as np

from servegym.sim.config import ScenarioConfig
from servegym.sim.platform import Platform
from servegym.sim.telemetry import (
    COMPLETED,
    DROPPED_QUEUE_FULL,
    DROPPED_QUEUE_TIMEOUT,
    FAILED_ERROR,
    FAILED_TIMEOUT,
    IN_FLIGHT,
)

DROPPED = (DROPPED_QUEUE_FULL, DROPPED_QUEUE_TIMEOUT, FAILED_ERROR, FAILED_TIMEOUT)


def check_conservation(platform: Platform) -> None:
    """Counters, the places requests sit in, and the outcome column all agree."""
    # in_flight() counts from where requests are (entering, cache answers, queue, calls). Call it
    # first: it retires queued requests whose timeout has passed, which moves them into dropped.
    in_flight = platform.in_flight()
    assert platform.arrived == platform.completed + platform.dropped + in_flight
    outcome = platform.requests.frame(platform.arrived)["outcome"]
    assert len(outcome) == platform.arrived
    assert int((outcome == COMPLETED).sum()) == platform.completed
    assert int(np.isin(outcome, DROPPED).sum()) == platform.dropped
    assert int((outcome == IN_FLIGHT).sum()) == in_flight
    assert set(np.unique(outcome).tolist()) <= {IN_FLIGHT, COMPLETED, *DROPPED}


def test_conservation_at_many_times(stressed_scenario: ScenarioConfig) -> None:
    platform = Platform(stressed_scenario)
    for t in np.linspace(0.5, stressed_scenario.duration_s, 97):
        platform.run(until=float(t))
        assert platform.now == float(t)
        check_conservation(platform)
    kpis = platform.run()["all"]
    check_conservation(platform)
    assert kpis["requests"] == platform.arrived
    assert kpis["requests"] == kpis["completed"] + kpis["dropped"] + kpis["in_flight"]

    outcome = platform.requests.frame()["outcome"]
    counts = np.bincount(outcome, minlength=len(DROPPED) + 2)
    # The scenario is built so that every ending happens; otherwise this test checks less than it claims.
    assert all(counts[code] > 0 for code in (COMPLETED, *DROPPED)), counts


def test_finished_requests_have_consistent_times(stressed_scenario: ScenarioConfig) -> None:
    platform = Platform(stressed_scenario)
    platform.run()
    cols = platform.requests.frame()
    finished = cols["outcome"] != IN_FLIGHT
    assert np.all(cols["end_s"][finished] >= cols["arrival_s"][finished])
    assert np.all(np.isnan(cols["end_s"][~finished]))
    assert np.all(cols["end_s"][finished] <= platform.now)
    started = ~np.isnan(cols["start_s"])
    assert np.all(cols["enqueue_s"][started] <= cols["start_s"][started])
    assert np.all(cols["arrival_s"][started] + cols["lookup_s"][started] <= cols["enqueue_s"][started] + 1e-12)
    # A queue timeout ends exactly queue_timeout_s after enqueueing, and never started.
    timed_out = cols["outcome"] == DROPPED_QUEUE_TIMEOUT
    assert not np.any(started[timed_out])
    wait = cols["end_s"][timed_out] - cols["enqueue_s"][timed_out]
    np.testing.assert_allclose(wait, stressed_scenario.pool.queue_timeout_s, rtol=0, atol=1e-9)
    # A cache hit never reaches the pool; a call has a backend and a replica.
    hit = cols["hit_level"] >= 0
    assert not np.any(started[hit])
    assert np.all(cols["backend"][hit] == -1)
    called = cols["backend"] >= 0
    assert np.all(cols["replica"][called] >= 0)
    assert np.all(started[called])


def test_request_frame_holds_only_arrived_requests(small_scenario: ScenarioConfig) -> None:
    """``Requests.frame()`` documents its default as "all that arrived": future requests must not leak."""
    platform = Platform(small_scenario)
    platform.run(until=10.0)
    cols = platform.requests.frame()
    assert len(cols["arrival_s"]) == platform.arrived
    assert np.all(cols["arrival_s"] <= platform.now)


def test_intervals_add_up_to_the_run(stressed_scenario: ScenarioConfig) -> None:
    """Every interval is recorded, the last one (closing at the scenario's end) included."""
    import dataclasses

    interval = stressed_scenario.control.interval_s
    for duration in (12 * interval, 12.5 * interval):  # ending on a control tick, and between two
        scenario = dataclasses.replace(stressed_scenario, duration_s=duration)
        platform = Platform(scenario)
        platform.run()
        platform.run()  # a second call records nothing more
        intervals = platform.intervals
        assert len(intervals) == (12 if duration == 12 * interval else 13) and intervals[-1].time_s == duration
        assert sum(m.interval_s for m in intervals) == duration
        assert sum(m.arrivals for m in intervals) == platform.arrived
        assert sum(m.completed for m in intervals) == platform.completed
        assert sum(m.dropped for m in intervals) == platform.dropped
        assert np.isclose(sum(m.cost_usd for m in intervals), platform.cost_usd(), rtol=1e-9)
