"""Deferred decisions: the hook environments use to pause the simulation at a decision.

A controller that defers everything, answered from outside exactly as the builtin rules
would answer, must reproduce the builtin run bit for bit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from servegym.sim.config import ScenarioConfig
from servegym.sim.platform import DEFER, Decision, Platform
from servegym.sim.telemetry import IntervalMetrics


class DeferAll:
    """Defers every decision to whoever drives the platform."""

    def route(self, platform: Platform, request: int) -> int:
        return DEFER  # type: ignore[no-any-return]

    def admit(self, platform: Platform, request: int) -> int:
        return DEFER  # type: ignore[no-any-return]

    def scale(self, platform: Platform, metrics: IntervalMetrics) -> int | None:
        return DEFER  # type: ignore[no-any-return]

    def semantic_threshold(self, platform: Platform, metrics: IntervalMetrics) -> float | None:
        return DEFER  # type: ignore[no-any-return]


class BuiltinAnswers:
    """Answers decisions the way BuiltinController does, written out independently."""

    def __init__(self, scenario: ScenarioConfig) -> None:
        self.n_backends = len(scenario.backends)
        self.target_utilisation = scenario.control.target_utilisation
        self.next_backend = 0
        self.counts = {"route": 0, "admit": 0, "scale": 0, "threshold": 0}

    def answer(self, decision: Decision) -> Any:
        self.counts[decision.kind] += 1
        if decision.kind == "route":
            assert decision.metrics is None and decision.request >= 0
            backend = self.next_backend
            self.next_backend = (backend + 1) % self.n_backends
            return backend
        if decision.kind == "admit":
            return 0  # everything, into every level
        if decision.kind == "scale":
            m = decision.metrics
            assert m is not None and decision.request == -1
            if m.ready_replicas == 0:
                return max(1, m.target_replicas) if m.queue_len or m.arrivals else None
            return math.ceil(m.ready_replicas * m.utilisation / self.target_utilisation - 1e-9)
        assert decision.kind == "threshold"
        return None


def _drive(platform: Platform, answers: BuiltinAnswers, until: float | None = None) -> None:
    while (decision := platform.step_to_decision(until)) is not None:
        assert platform.pending[0] is decision
        now = platform.now
        platform.resolve(decision, answers.answer(decision))
        assert platform.now == now  # answering a decision does not move time


def _assert_same_run(builtin: Platform, deferred: Platform, *, replicas: bool = True) -> None:
    assert builtin.now == deferred.now
    assert repr(builtin.kpis()) == repr(deferred.kpis())  # repr: exact floats, nan equal to nan
    assert builtin.arrived == deferred.arrived
    a, b = builtin.requests.frame(), deferred.requests.frame()
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=a[name].dtype.kind == "f"), name
    assert builtin.cost_usd() == deferred.cost_usd()
    if replicas:
        assert repr(builtin.pool.replicas) == repr(deferred.pool.replicas)


@pytest.fixture(params=["small", "stressed"])
def scenario(request: pytest.FixtureRequest) -> ScenarioConfig:
    fixture: ScenarioConfig = request.getfixturevalue(f"{request.param}_scenario")
    return fixture


def test_deferred_answers_reproduce_builtin_run(scenario: ScenarioConfig) -> None:
    builtin = Platform(scenario)
    builtin.run()
    deferred = Platform(scenario, DeferAll())
    answers = BuiltinAnswers(scenario)
    _drive(deferred, answers)
    assert not deferred.pending
    # Replicas are compared by test_step_to_decision_stops_where_run_stops: at the very end the two
    # drivers differ in whether the control interval closing exactly at duration_s runs.
    _assert_same_run(builtin, deferred, replicas=False)
    # Every kind of decision was really deferred and answered.
    assert answers.counts["route"] > 500 and answers.counts["admit"] > 500
    assert answers.counts["scale"] >= 10 and answers.counts["threshold"] >= 10


def test_deferred_run_can_stop_and_resume(small_scenario: ScenarioConfig) -> None:
    builtin = Platform(small_scenario)
    deferred = Platform(small_scenario, DeferAll())
    answers = BuiltinAnswers(small_scenario)
    for t in (7.5, 31.0, 64.25):
        builtin.run(until=t)
        _drive(deferred, answers, until=t)
        _assert_same_run(builtin, deferred)


def test_step_to_decision_stops_where_run_stops(small_scenario: ScenarioConfig) -> None:
    """Driving to the end with decisions must process the same events as run() to the end.

    The scenario lasts 120 s with a 10 s control interval: run() does not close an
    interval at exactly t = 120 s, so a deferred run must not either (nor ask the agent
    a scaling question whose answer can never matter).
    """
    builtin = Platform(small_scenario)
    builtin.run()
    deferred = Platform(small_scenario, DeferAll())
    _drive(deferred, BuiltinAnswers(small_scenario))
    assert len(deferred.intervals) == len(builtin.intervals)
    assert repr(deferred.intervals) == repr(builtin.intervals)
    assert repr(deferred.pool.replicas) == repr(builtin.pool.replicas)


def test_run_refuses_a_deferring_controller(small_scenario: ScenarioConfig) -> None:
    platform = Platform(small_scenario, DeferAll())
    with pytest.raises(RuntimeError, match=r"DEFER.*step_to_decision"):
        platform.run(until=5.0)


def test_resolve_must_answer_the_oldest_decision(small_scenario: ScenarioConfig) -> None:
    platform = Platform(small_scenario, DeferAll())
    decision = platform.step_to_decision()
    assert decision is not None
    stranger = Decision("route", 10**6, None)
    with pytest.raises(ValueError, match="oldest pending decision"):
        platform.resolve(stranger, 0)
    platform.resolve(decision, 0)
    with pytest.raises(ValueError, match="oldest pending decision"):
        platform.resolve(decision, 0)  # already answered


def _first(platform: Platform, kind: str) -> Decision:
    """Answer decisions like the builtin rules until one of ``kind`` waits; return it."""
    answers = BuiltinAnswers(platform.scenario)
    while (decision := platform.step_to_decision()) is not None:
        if decision.kind == kind:
            return decision
        platform.resolve(decision, answers.answer(decision))
    raise AssertionError(f"no {kind} decision in the run")


INVALID = [
    ("route", 2, r"route action 2 is invalid: must be a backend index in 0\.\.1"),
    ("route", -1, "route action -1 is invalid"),
    ("route", True, "route action True is invalid"),
    ("route", 0.0, "route action 0.0 is invalid"),
    ("route", "0", "route action '0' is invalid"),
    ("admit", 3, r"admit action 3 is invalid: must be -1 \(none\) or a cache level in 0\.\.2"),
    ("admit", -2, "admit action -2 is invalid"),
    ("admit", None, "admit action None is invalid"),
    ("scale", -1, r"scale action -1 is invalid: must be a replica count >= 0"),
    ("scale", 2.5, "scale action 2.5 is invalid"),
    ("threshold", 0.0, r"semantic threshold 0.0 is invalid: must be in \(0, 1\]"),
    ("threshold", 1.5, "semantic threshold 1.5 is invalid"),
    ("threshold", True, "semantic threshold True is invalid"),  # bools are rejected for every other decision
]


ONE_PER_KIND = [INVALID[0], INVALID[5], INVALID[8], INVALID[10]]


@pytest.mark.parametrize(("kind", "action", "message"), INVALID, ids=[f"{k}={a!r}" for k, a, _ in INVALID])
def test_invalid_action_raises_value_error_at_resolve(
    small_scenario: ScenarioConfig, kind: str, action: Any, message: str
) -> None:
    platform = Platform(small_scenario, DeferAll())
    decision = _first(platform, kind)
    with pytest.raises(ValueError, match=message):
        platform.resolve(decision, action)


@pytest.mark.parametrize(("kind", "action", "message"), ONE_PER_KIND, ids=[f"{k}={a!r}" for k, a, _ in ONE_PER_KIND])
def test_invalid_action_leaves_the_decision_to_answer_again(
    small_scenario: ScenarioConfig, kind: str, action: Any, message: str
) -> None:
    """A rejected action changes nothing: the decision still waits, and a valid answer continues the run."""
    platform = Platform(small_scenario, DeferAll())
    decision = _first(platform, kind)
    with pytest.raises(ValueError, match=message):
        platform.resolve(decision, action)
    assert platform.pending and platform.pending[0] is decision
    platform.resolve(decision, BuiltinAnswers(small_scenario).answer(decision))
    _drive(platform, BuiltinAnswers(small_scenario), until=platform.now + 20.0)


def test_valid_numpy_actions_are_accepted(small_scenario: ScenarioConfig) -> None:
    """Agents answer with numpy scalars; they count as the plain numbers they hold."""
    platform = Platform(small_scenario, DeferAll())
    answers = BuiltinAnswers(small_scenario)
    while (decision := platform.step_to_decision(40.0)) is not None:
        action = answers.answer(decision)
        if decision.kind in ("route", "admit", "scale") and action is not None:
            action = np.int64(action)
        platform.resolve(decision, action)
    builtin = Platform(small_scenario)
    builtin.run(until=40.0)
    _assert_same_run(builtin, platform)
