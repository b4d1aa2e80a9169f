"""Heuristics exported as parameters decide exactly as in servegym on recorded sequences."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from servegym.deploy import runtime
from servegym.deploy.export import export_policy
from servegym.policies import (
    HPA,
    KPA,
    AdmitAll,
    AdmitNone,
    Cheapest,
    DifficultyCascade,
    FixedThreshold,
    FrequencyAdmission,
    JoinShortestQueue,
    PowerOfTwoChoices,
    RandomRouter,
    RoundRobin,
    ScheduledScaling,
    StaticScaling,
    StepScaling,
    Strongest,
    scaling_kwargs,
)
from tests.deploy.conftest import Recorded

Factory = Callable[[Recorded], Any]

# (name, builder, which recorded sequence, whether its actions must vary along the sequence)
CASES: list[tuple[str, Factory, str, bool]] = [
    ("static", lambda r: StaticScaling(**scaling_kwargs(r.scenario), replicas=5), "interval", False),
    (
        "hpa",
        lambda r: HPA(**scaling_kwargs(r.scenario), target_utilisation=0.55, scale_down_stabilisation_s=120),
        "interval",
        True,
    ),
    ("hpa_defaults", lambda r: HPA(**scaling_kwargs(r.scenario)), "interval", True),
    ("kpa", lambda r: KPA(**scaling_kwargs(r.scenario), stable_window_s=30, panic_threshold=1.5), "interval", True),
    ("step", lambda r: StepScaling(**scaling_kwargs(r.scenario), cooldown_s=20), "interval", True),
    (
        "scheduled",
        lambda r: ScheduledScaling(**scaling_kwargs(r.scenario), schedule=[(0, 2), (3_000, 8), (7_000, 4)]),
        "interval",
        True,
    ),
    ("round_robin", lambda r: RoundRobin(r.routing_layout, r.backend_names), "routing", True),
    ("random", lambda r: RandomRouter(r.routing_layout, r.backend_names, seed=7), "routing", True),
    ("power_of_two", lambda r: PowerOfTwoChoices(r.routing_layout, r.backend_names, seed=3), "routing", True),
    ("jsq", lambda r: JoinShortestQueue(r.routing_layout, r.backend_names), "routing", True),
    ("cheapest", lambda r: Cheapest(r.routing_layout, r.backend_names), "routing", False),
    ("strongest", lambda r: Strongest(r.routing_layout, r.backend_names), "routing", False),
    ("cascade", lambda r: DifficultyCascade(r.routing_layout, r.backend_names, margin=0.05), "routing", True),
    (
        "cascade_thresholds",
        lambda r: DifficultyCascade(r.routing_layout, r.backend_names, thresholds={r.backend_names[0]: 0.2}),
        "routing",
        True,
    ),
    ("admit_all", lambda r: AdmitAll(r.admission_layout), "admission", False),
    ("admit_none", lambda r: AdmitNone(r.admission_layout), "admission", False),
    ("frequency", lambda r: FrequencyAdmission(r.admission_layout, min_requests=2), "admission", True),
    ("fixed_threshold", lambda r: FixedThreshold(r.interval_layout, threshold=0.85), "interval", False),
]


@pytest.mark.parametrize(("name", "build", "sequence", "varies"), CASES, ids=[c[0] for c in CASES])
def test_heuristic_parity(
    recorded: Recorded, tmp_path: Path, name: str, build: Factory, sequence: str, varies: bool
) -> None:
    observations = getattr(recorded, sequence)
    assert len(observations) >= 10_000
    policy = build(recorded)
    expected = [policy.act(o) for o in observations]
    if varies:
        assert len(set(expected)) > 1, f"{name} never changes its decision on the recorded sequence"

    bundle = runtime.load(export_policy(build(recorded), tmp_path / name))
    assert bundle.spec["onnx"]["file"] is None and bundle.spec["onnx"]["reason"]
    single = [bundle.decide(o) for o in observations]
    assert single == expected
    assert all(type(a) is type(e) for a, e in zip(single[:50], expected[:50], strict=True))

    bundle.reset()  # a new episode: windows, counters and random streams start again
    assert bundle.decide_batch(observations).tolist() == expected


def test_stateful_bundle_resets_like_the_policy(recorded: Recorded, tmp_path: Path) -> None:
    policy = HPA(**scaling_kwargs(recorded.scenario), target_utilisation=0.5)
    bundle = runtime.load(export_policy(policy, tmp_path / "hpa"))
    first = recorded.interval[:3_000]
    second = recorded.interval[3_000:6_000]
    for part in (first, second):
        policy.reset()
        bundle.reset()
        assert [bundle.decide(o) for o in part] == [policy.act(o) for o in part]


def test_hpa_parameters_are_readable_in_the_spec(recorded: Recorded, tmp_path: Path) -> None:
    policy = HPA(**scaling_kwargs(recorded.scenario), target_utilisation=0.65, tolerance=0.05)
    spec = runtime.load(export_policy(policy, tmp_path / "hpa")).spec
    assert spec["policy"]["kind"] == "hpa"
    assert spec["policy"]["params"]["target_utilisation"] == 0.65
    assert spec["policy"]["params"]["tolerance"] == 0.05
    assert spec["action"]["valid_range"] == [recorded.scenario.pool.min_replicas, recorded.scenario.pool.max_replicas]
    assert [f["name"] for f in spec["features"]] == list(recorded.interval_layout.names)
    assert spec["features"][0]["unit"] == "requests/s"


@pytest.mark.parametrize("kind", ["hpa", "kpa"])
def test_scaling_parity_on_random_pool_states(recorded: Recorded, tmp_path: Path, kind: str) -> None:
    """Pool states a recorded run rarely shows: replicas still starting, surges, idle pools, none ready."""
    import numpy as np

    rng = np.random.default_rng(5)
    layout = recorded.interval_layout
    observations = np.zeros((3_000, len(layout)), dtype=np.float32)
    ready = rng.integers(0, 12, len(observations))
    observations[:, layout.index["ready_replicas"]] = ready
    observations[:, layout.index["target_replicas"]] = ready + rng.integers(0, 6, len(observations))
    observations[:, layout.index["utilisation"]] = rng.choice([0.0, 0.2, 0.5, 0.7, 0.9, 1.0], len(observations))
    observations[:, layout.index["queue_len"]] = rng.choice([0, 0, 3, 40], len(observations))
    observations[:, layout.index["arrival_rate_rps"]] = rng.choice([0.0, 2.0], len(observations))

    def build() -> Any:
        cls = HPA if kind == "hpa" else KPA
        return cls(**scaling_kwargs(recorded.scenario))

    policy = build()
    expected = [policy.act(o) for o in observations]
    assert len(set(expected)) > 2  # the decision varies along the sequence
    bundle = runtime.load(export_policy(build(), tmp_path / kind))
    assert [bundle.decide(o) for o in observations] == expected
