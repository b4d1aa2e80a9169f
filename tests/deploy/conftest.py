"""Recorded observation sequences and trained models shared by the deployment tests.

One simulator run records every observation the platform's decision points produced:
scaling (interval features, one per second of simulated time), routing (one per
request) and admission (one per cache insert), each at least 10,000 long. Parity tests
replay them through the in-framework policy and through the exported bundle.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from servegym.envs.features import Layout, admission_layout, interval_layout, routing_layout
from servegym.policies import HPA, FrequencyAdmission, JoinShortestQueue, PolicyController, scaling_kwargs
from servegym.sim.config import ScenarioConfig, apply_overrides, load_scenario
from servegym.sim.platform import Platform

N_PARITY = 10_000


class Recorder:
    """A policy that records every observation it is asked about, deciding with ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.layout = inner.layout
        self.seen: list[np.ndarray] = []

    def act(self, observation: np.ndarray) -> Any:
        self.seen.append(np.array(observation, dtype=np.float32))
        return self.inner.act(observation)

    def reset(self) -> None:
        self.inner.reset()


@dataclass(frozen=True)
class Recorded:
    scenario: ScenarioConfig
    interval_layout: Layout
    routing_layout: Layout
    admission_layout: Layout
    backend_names: list[str]
    interval: np.ndarray
    routing: np.ndarray
    admission: np.ndarray


RECORDED_OVERRIDES = [
    "control.interval_s=1.0",
    "workload.kind=mmpp",
    "workload.rate_rps=2.0",
    "workload.burst_rate_rps=12.0",
    "workload.mean_calm_s=300",
    "workload.mean_burst_s=90",
    "pool.initial_replicas=2",
    "pool.min_replicas=1",
    "pool.max_replicas=24",
    "pool.cold_start_mean_s=8",
]
"""The recorded scenario's overrides of ``default`` (besides its duration), for envs that train on it."""


@pytest.fixture(scope="session")
def recorded() -> Recorded:
    """A bursty day-time hour and more with a one-second control interval, so windows and cooldowns matter."""
    scenario = apply_overrides(load_scenario("default"), ["duration_s=10100", *RECORDED_OVERRIDES])
    platform = Platform(scenario)
    scaling = Recorder(HPA(**scaling_kwargs(scenario), target_utilisation=0.6, scale_down_stabilisation_s=60))
    r_layout = routing_layout(platform)
    routing = Recorder(JoinShortestQueue(r_layout, [b.name for b in platform.backends]))
    a_layout = admission_layout(platform)
    admission = Recorder(FrequencyAdmission(a_layout))
    platform.controller = PolicyController(scaling=scaling, routing=routing, admission=admission)
    platform.run()
    rec = Recorded(
        scenario=scenario,
        interval_layout=interval_layout(scenario),
        routing_layout=r_layout,
        admission_layout=a_layout,
        backend_names=[b.name for b in platform.backends],
        interval=np.stack(scaling.seen),
        routing=np.stack(routing.seen),
        admission=np.stack(admission.seen),
    )
    for name in ("interval", "routing", "admission"):
        assert len(getattr(rec, name)) >= N_PARITY, (name, len(getattr(rec, name)))
    return rec


@pytest.fixture
def store(tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite tracking store, set as MLflow's tracking URI for the test (restored after)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(before)
