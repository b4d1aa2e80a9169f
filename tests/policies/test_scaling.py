"""Scaling policies reproduce their published rules on hand-made interval observations.

Expected replica counts are worked out by hand from the formulas in the docstrings
(Kubernetes HPA, Knative KPA, AWS step and scheduled scaling), not by re-running the code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from servegym.envs.features import Layout, interval_features, interval_layout
from servegym.policies import (
    HPA,
    KPA,
    POLICIES,
    ScheduledScaling,
    StaticScaling,
    StepScaling,
    make_policy,
    scaling_kwargs,
)
from servegym.sim.config import ControlConfig, PoolConfig, ScenarioConfig
from servegym.sim.telemetry import IntervalMetrics

SCENARIO = ScenarioConfig(
    pool=PoolConfig(initial_replicas=4, min_replicas=1, max_replicas=50, slots_per_replica=4),
    control=ControlConfig(interval_s=15.0),
)
LAYOUT = interval_layout(SCENARIO)


def common(**overrides: Any) -> dict[str, Any]:
    """The shared constructor arguments for SCENARIO, with ``overrides``."""
    return {**scaling_kwargs(SCENARIO), **overrides}


def obs(**features: float) -> np.ndarray:
    """An interval observation with the given features by name, the others zero (midnight)."""
    vector = np.zeros(len(LAYOUT), dtype=np.float32)
    vector[LAYOUT.index["time_of_day_cos"]] = 1.0
    for name, value in features.items():
        vector[LAYOUT.index[name]] = value
    return vector


def steady(replicas: int, utilisation: float, **features: float) -> np.ndarray:
    """``replicas`` ready and targeted, at ``utilisation``."""
    return obs(ready_replicas=replicas, target_replicas=replicas, utilisation=utilisation, **features)


# -- HPA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ready", "utilisation", "target_utilisation", "expected"),
    [
        (4, 0.9, 0.7, 6),  # ceil(4 * 0.9 / 0.7) = ceil(5.14)
        (3, 1.0, 0.7, 5),  # ceil(3 / 0.7) = ceil(4.29)
        (10, 0.35, 0.7, 5),  # ceil(10 * 0.5): no earlier recommendation holds it up
        (5, 1.0, 0.5, 10),  # the docs' example: metric at twice the target doubles the replicas
        (10, 0.25, 0.5, 5),  # ... and at half the target halves them
    ],
)
def test_hpa_recommends_ceil_of_ready_times_ratio(
    ready: int, utilisation: float, target_utilisation: float, expected: int
) -> None:
    hpa = HPA(**common(target_utilisation=target_utilisation))
    assert hpa.act(steady(ready, utilisation)) == expected


def test_hpa_ceil_is_exact_on_float32_observations() -> None:
    # 14 * 0.2 / 0.7 = 4 exactly, but computed from float32(0.2) it is 4.00000006: not 5.
    assert 14 * float(np.float32(0.2)) / 0.7 > 4.0
    hpa = HPA(**common(target_utilisation=0.7))
    assert hpa.act(steady(14, 0.2)) == 4


@pytest.mark.parametrize("utilisation", [0.75, 0.65, 0.7, 0.634])
def test_hpa_tolerance_band_keeps_the_current_scale(utilisation: float) -> None:
    hpa = HPA(**common(target_utilisation=0.7))
    # Within 10 % of the target: no change, even though ceil(8 * ratio) would differ for 0.75.
    assert hpa.act(steady(8, utilisation)) == 8


def test_hpa_just_outside_tolerance_scales() -> None:
    hpa = HPA(**common(target_utilisation=0.7))
    assert hpa.act(steady(8, 0.8)) == 10  # ratio 1.143 > 1.1: ceil(9.14)
    assert HPA(**common(target_utilisation=0.7)).act(steady(8, 0.6)) == 7  # ratio 0.857: ceil(6.86)


def test_hpa_tolerance_keeps_the_target_not_the_ready_count() -> None:
    # Two replicas still starting: "no change" means the scale in force (6), not the 4 ready.
    hpa = HPA(**common(target_utilisation=0.7))
    assert hpa.act(obs(ready_replicas=4, target_replicas=6, utilisation=0.72)) == 6


def test_hpa_stabilisation_window_holds_the_highest_recommendation_during_scale_down() -> None:
    hpa = HPA(**common(target_utilisation=0.7, scale_down_stabilisation_s=300.0))
    out = [hpa.act(steady(10, 0.7))]  # t = 0: recommendation 10
    out += [hpa.act(steady(10, 0.35)) for _ in range(4)]  # t = 15..60: recommendation 5
    out.append(hpa.act(steady(10, 0.56)))  # t = 75: recommendation 8
    out += [hpa.act(steady(10, 0.35)) for _ in range(30)]  # t = 90..525: recommendation 5
    # 10 stays the highest within 300 s until t = 300 (20 intervals), then 8 until t = 375, then 5.
    assert out[:20] == [10] * 20
    assert out[20:25] == [8] * 5
    assert out[25:] == [5] * 11


def test_hpa_stabilisation_never_raises_the_scale_on_the_way_down() -> None:
    # A capped surge leaves a raw recommendation of 20 in the window while the scale is 6;
    # when the load falls, Kubernetes keeps min(current, highest in the window) = 6, not 20.
    hpa = HPA(**common(target_utilisation=0.1))
    assert hpa.act(steady(2, 1.0)) == 6  # raw 20, capped at max(2 + 4, 2 * 2)
    assert hpa.act(obs(ready_replicas=2, target_replicas=6, utilisation=0.0)) == 6
    assert hpa.act(obs(ready_replicas=6, target_replicas=6, utilisation=0.0)) == 6


def test_hpa_counts_starting_replicas_at_zero_on_a_scale_up() -> None:
    # 4 ready at 0.9 of a 0.7 target, 6 more starting: over all 10 the ratio is 1.286 * 4 / 10 = 0.51,
    # the direction flips, so Kubernetes keeps 10 (it never scales down on a scale-up signal).
    assert HPA(**common(target_utilisation=0.7)).act(obs(ready_replicas=4, target_replicas=10, utilisation=0.9)) == 10
    # 4 ready at 1.0 of a 0.2 target, 2 starting: 5 * 4 / 6 = 3.33 over all 6 asks for 20, and the
    # scale-up limit from 6 allows max(6 + 4, 2 * 6) = 12.
    assert HPA(**common(target_utilisation=0.2)).act(obs(ready_replicas=4, target_replicas=6, utilisation=1.0)) == 12
    # Scale-down ignores the starting replicas: ceil(4 * 0.35 / 0.7) = 2.
    hpa = HPA(**common(target_utilisation=0.7, scale_down_stabilisation_s=0.0))
    assert hpa.act(obs(ready_replicas=4, target_replicas=10, utilisation=0.35)) == 2


def test_hpa_keeps_the_scale_with_nothing_ready_to_measure() -> None:
    # All 5 replicas still starting and a queue: no metric, the scale stays (not ceil(5 * 1.43) = 8).
    assert HPA(**common(target_utilisation=0.7)).act(obs(target_replicas=5, utilisation=1.0, queue_len=3)) == 5


def test_hpa_scale_up_is_not_stabilised() -> None:
    hpa = HPA(**common(target_utilisation=0.7))
    assert hpa.act(steady(10, 0.35)) == 5
    assert hpa.act(steady(5, 0.98)) == 7  # ceil(5 * 1.4): straight up, the window only holds scale-down


def test_hpa_scale_up_limit_caps_a_jump() -> None:
    # Ratio 10 asks for 20 replicas from 2: the default behaviour allows max(2 + 4, 2 * 2) = 6.
    hpa = HPA(**common(target_utilisation=0.1))
    assert hpa.act(steady(2, 1.0)) == 6
    # One period (15 s) later the count can double again from the scale in force: max(6 + 4, 12).
    assert hpa.act(obs(ready_replicas=2, target_replicas=6, utilisation=1.0)) == 12
    # And from 12: max(16, 24) = 24, then the metric's 20 applies (ceil(2 * 10)).
    assert hpa.act(obs(ready_replicas=2, target_replicas=12, utilisation=1.0)) == 20


def test_hpa_scale_up_limit_counts_replicas_added_within_the_period() -> None:
    # With a 5 s interval three decisions share one 15 s period: the second and third add nothing.
    hpa = HPA(**common(interval_s=5.0, target_utilisation=0.1))
    assert hpa.act(steady(2, 1.0)) == 6
    assert hpa.act(obs(ready_replicas=2, target_replicas=6, utilisation=1.0)) == 6
    assert hpa.act(obs(ready_replicas=2, target_replicas=6, utilisation=1.0)) == 6
    assert hpa.act(obs(ready_replicas=2, target_replicas=6, utilisation=1.0)) == 12


def test_hpa_respects_bounds_and_wakes_from_zero() -> None:
    hpa = HPA(**common(min_replicas=0, max_replicas=7, target_utilisation=0.5))
    assert hpa.act(steady(6, 1.0)) == 7  # wants 12, capped by max_replicas
    cold = HPA(**common(min_replicas=0, target_utilisation=0.7))
    assert cold.act(obs(arrival_rate_rps=0.5)) == 1  # nothing ready, a request arrived
    assert HPA(**common(min_replicas=0)).act(obs()) == 0  # nothing ready, nothing to do
    floor = HPA(**common(min_replicas=3, scale_down_stabilisation_s=0.0))
    assert floor.act(steady(4, 0.05)) == 3


def test_hpa_reset_forgets_the_window() -> None:
    hpa = HPA(**common())
    hpa.act(steady(10, 0.7))
    assert hpa.act(steady(10, 0.35)) == 10
    hpa.reset()
    assert hpa.act(steady(10, 0.35)) == 5


# -- KPA ----------------------------------------------------------------------------------


def kpa(**overrides: Any) -> KPA:
    # Target concurrency 2 per replica keeps the hand arithmetic exact.
    return KPA(**common(target_concurrency=2.0, **overrides))


def panicking(policy: KPA) -> bool:
    """``policy.in_panic``, read afresh (a plain attribute read would be narrowed by earlier asserts)."""
    return policy.in_panic


def concurrency(ready: int, in_service: float, queue: int = 0) -> np.ndarray:
    """An observation whose observed concurrency is ``in_service + queue`` (4 slots per replica)."""
    return obs(ready_replicas=ready, target_replicas=ready, utilisation=in_service / (4 * ready), queue_len=queue)


def test_kpa_default_target_is_seventy_percent_of_slots() -> None:
    assert KPA(**common()).target_concurrency == pytest.approx(2.8)
    assert KPA(**common()).act(concurrency(4, 11.2)) == 4  # 11.2 / 2.8


def test_kpa_steady_state_desires_observed_over_target() -> None:
    policy = kpa()
    assert [policy.act(concurrency(4, 8.0)) for _ in range(6)] == [4] * 6
    assert not policy.in_panic  # the start's panic mode ended after its stable window


def test_kpa_starts_in_panic_above_one_replica_and_holds_the_initial_scale_for_a_stable_window() -> None:
    # Knative's newAutoscaler: panic from the start when more than one pod is ready. Decisions
    # come at 15, 30, 45, 60 s (inside the 60 s stable window from the start: 10 held), then 75 s.
    policy = kpa()
    held = []
    for _ in range(4):
        held.append(policy.act(concurrency(10, 0.0)))
        assert policy.in_panic
    assert held == [10] * 4
    assert policy.act(concurrency(10, 0.0)) == 5  # panic over: wants 0, at most halves
    assert not panicking(policy)
    single = kpa()
    assert single.act(concurrency(1, 0.0)) == 1 and not single.in_panic  # one pod: normal behaviour


def test_kpa_enters_panic_when_concurrency_doubles_within_the_panic_window() -> None:
    calm = kpa()
    for _ in range(4):
        calm.act(concurrency(4, 8.0))
    calm.act(concurrency(4, 14.0))  # wants 7 = 1.75x the 4 ready replicas: below the threshold
    assert not calm.in_panic

    policy = kpa()
    for _ in range(4):
        policy.act(concurrency(4, 8.0))
    # Concurrency doubles: the panic window (the latest interval) wants 8 = 2x the ready replicas.
    # The stable window averages (8, 8, 8, 16) = 10 and wants 5; in panic the larger count wins.
    assert policy.act(concurrency(4, 16.0)) == 8
    assert policy.in_panic


def test_kpa_queue_counts_as_concurrency() -> None:
    policy = kpa()
    assert policy.act(concurrency(4, 8.0, queue=20)) == 14  # (8 + 20) / 2
    assert policy.in_panic  # 14 >= 2 * 4


def test_kpa_never_scales_down_in_panic_and_leaves_after_a_calm_stable_window() -> None:
    policy = kpa()
    for _ in range(4):
        policy.act(concurrency(4, 8.0))
    surge = [policy.act(concurrency(4, 16.0, queue=16))]  # wants 16 in panic
    assert policy.in_panic and surge == [16]
    # Calm: the stable window still averages high, then drains; in panic the count never drops.
    calm = []
    for _ in range(4):
        calm.append(policy.act(concurrency(16, 8.0)))
        assert policy.in_panic
    assert calm == [16, 16, 16, 16]  # 60 s after the last panic interval: still inside the stable window
    after = policy.act(concurrency(16, 8.0))  # 75 s > 60 s of calm: panic ends
    assert not panicking(policy)
    assert after == 8  # floor(16 / 2): the default max scale-down rate halves at most


def test_kpa_scale_down_rate_and_bounds() -> None:
    policy = kpa()
    assert [policy.act(concurrency(10, 0.0)) for _ in range(5)][-1] == 5  # after the start's panic: halves
    assert kpa(max_replicas=6).act(concurrency(4, 16.0, queue=24)) == 6
    assert kpa(min_replicas=0).act(obs()) == 0  # nothing ready, nothing to serve


def test_kpa_reset_leaves_panic() -> None:
    policy = kpa()
    policy.act(concurrency(4, 16.0, queue=16))
    assert policy.in_panic
    policy.reset()
    assert not panicking(policy)
    assert policy.act(concurrency(4, 8.0)) == 4


# -- step, scheduled and static scaling -------------------------------------------------------


def test_step_scaling_adjusts_by_the_matching_step_and_cools_down() -> None:
    policy = StepScaling(**common(steps=[(0.0, 0.3, -1), (0.8, 0.9, 1), (0.9, math.inf, 2)], cooldown_s=30.0))
    assert policy.act(obs(target_replicas=4, utilisation=0.95)) == 6
    assert policy.act(obs(target_replicas=6, utilisation=0.95)) == 6  # 15 s: cooling down
    assert policy.act(obs(target_replicas=6, utilisation=0.85)) == 7  # 30 s: cooldown over
    assert policy.act(obs(target_replicas=7, utilisation=0.5)) == 7
    assert policy.act(obs(target_replicas=7, utilisation=0.5)) == 7  # 60 s: no step matches 0.5
    assert policy.act(obs(target_replicas=7, utilisation=0.1)) == 6


def test_step_scaling_bounds_are_lower_inclusive_upper_exclusive() -> None:
    policy = StepScaling(**common(steps=[(0.8, 0.9, 1), (0.9, math.inf, 3)], cooldown_s=0.0))
    assert policy.act(obs(target_replicas=4, utilisation=0.75)) == 4
    assert policy.act(obs(target_replicas=4, utilisation=0.875)) == 5
    assert policy.act(obs(target_replicas=4, utilisation=1.0)) == 7
    assert float(np.float32(0.9)) < 0.9  # yet an observed 0.9 meets the bound 0.9
    assert policy.act(obs(target_replicas=4, utilisation=0.9)) == 7


def test_step_scaling_rejects_overlapping_steps() -> None:
    with pytest.raises(ValueError, match="overlap"):
        StepScaling(**common(steps=[(0.5, 0.9, 1), (0.8, 1.0, 2)]))
    with pytest.raises(ValueError, match="lower_bound < upper_bound"):
        StepScaling(**common(steps=[(0.9, 0.5, 1)]))


def at_time(seconds: float) -> np.ndarray:
    """The observation the platform produces at simulated time ``seconds``."""
    return interval_features(
        IntervalMetrics(
            time_s=seconds,
            interval_s=15.0,
            arrivals=0,
            arrival_rate_rps=0.0,
            completed=0,
            dropped=0,
            slo_violations=0,
            good_answers=0,
            queue_len=0,
            busy_slots=0,
            utilisation=0.0,
            ready_replicas=4,
            provisioning_replicas=0,
            draining_replicas=0,
            target_replicas=4,
            latency_mean_s=math.nan,
            latency_p50_s=math.nan,
            latency_p95_s=math.nan,
            hits=(),
            false_hits=0,
            hit_rate=0.0,
            cost_usd=0.0,
            semantic_threshold=math.nan,
        )
    )


@pytest.mark.parametrize(
    ("hour", "expected"),
    [(0.0, 3), (7.5, 3), (8.0, 10), (12.0, 10), (19.99, 10), (20.0, 3), (23.99, 3), (24.0, 3), (32.0, 10)],
)
def test_scheduled_scaling_applies_the_latest_entry(hour: float, expected: int) -> None:
    policy = ScheduledScaling(**common(schedule=[(20 * 3600.0, 3), (8 * 3600.0, 10)]))
    assert policy.act(at_time(hour * 3600.0)) == expected


def test_scheduled_scaling_entry_at_midnight() -> None:
    policy = ScheduledScaling(**common(schedule=[(0.0, 2), (12 * 3600.0, 9)]))
    assert [policy.act(at_time(h * 3600.0)) for h in (0, 11.99, 12, 23.999, 24)] == [2, 2, 9, 9, 2]


def test_static_and_schedules_must_fit_the_bounds() -> None:
    assert StaticScaling(**common(replicas=7)).act(steady(4, 1.0)) == 7
    with pytest.raises(ValueError, match="replicas = 60 is invalid"):
        StaticScaling(**common(replicas=60))
    with pytest.raises(ValueError, match="start_time_of_day_s"):
        ScheduledScaling(**common(schedule=[(90_000.0, 3)]))


# -- the interface ------------------------------------------------------------------------------

ALL_SCALING: dict[str, dict[str, Any]] = {
    "static": {"replicas": 4},
    "hpa": {},
    "kpa": {},
    "step": {},
    "scheduled": {"schedule": [(0.0, 4)]},
}


@pytest.mark.parametrize("name", sorted(ALL_SCALING))
def test_every_scaling_policy_returns_a_bounded_python_int(name: str) -> None:
    policy = make_policy(name, **common(**ALL_SCALING[name]))
    rng = np.random.default_rng(0)
    for _ in range(50):
        ready = int(rng.integers(0, 51))
        action = policy.act(
            obs(
                ready_replicas=ready,
                target_replicas=ready,
                utilisation=rng.random(),
                queue_len=int(rng.integers(0, 50)),
            )
        )
        assert type(action) is int
        assert SCENARIO.pool.min_replicas <= action <= SCENARIO.pool.max_replicas


@pytest.mark.parametrize("name", sorted(ALL_SCALING))
def test_invalid_observations_raise_naming_the_problem(name: str) -> None:
    policy = make_policy(name, **common(**ALL_SCALING[name]))
    with pytest.raises(ValueError, match=r"shape \(13,\), expected \(14,\)"):
        policy.act(steady(4, 0.5)[:-1])
    bad = steady(4, 0.5)
    bad[LAYOUT.index["utilisation"]] = np.nan
    with pytest.raises(ValueError, match=r"'utilisation'.*not a finite number"):
        policy.act(bad)
    bad = steady(4, 0.5)
    bad[LAYOUT.index["latency_p95_s"]] = np.inf
    with pytest.raises(ValueError, match="'latency_p95_s'"):
        policy.act(bad)


def test_a_layout_without_a_needed_feature_fails_at_construction() -> None:
    names = tuple(n for n in LAYOUT.names if n != "utilisation")
    layout = Layout(names, np.zeros(len(names), dtype=np.float32), np.ones(len(names), dtype=np.float32))
    with pytest.raises(ValueError, match=r"HPA needs the observation feature.*utilisation"):
        HPA(**common(layout=layout))
    StaticScaling(**common(layout=layout, replicas=2))  # reads nothing, so any layout will do


def test_make_policy_names_unknown_policies() -> None:
    with pytest.raises(ValueError, match=r"unknown policy 'hpaa'; known policies: .*hpa.*kpa"):
        make_policy("hpaa")
    assert isinstance(make_policy("hpa", **common()), HPA)
    assert set(ALL_SCALING) <= set(POLICIES)
