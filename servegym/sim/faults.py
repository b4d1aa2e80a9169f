"""Scheduled incidents: a slow or failing backend, a cache tier outage.

Each fault is a short SimPy process that switches a component's state at its start and
back at its end, and leaves an :class:`~servegym.sim.telemetry.Incident` with the ground
truth (what broke, when) for root-cause analysis and for labelling episodes.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import simpy

from servegym.sim.backends import Backend
from servegym.sim.cache import ExactTier, SemanticTier
from servegym.sim.config import FaultConfig
from servegym.sim.telemetry import Incident

__all__ = ["schedule_faults"]


def _fault(
    env: simpy.Environment,
    fault: FaultConfig,
    backends: dict[str, Backend],
    tiers: dict[str, ExactTier | SemanticTier],
    incidents: list[Incident],
) -> Generator[simpy.Event, Any, None]:
    yield env.timeout(fault.start_s)
    incidents.append(Incident(fault.kind, fault.target, fault.start_s, fault.start_s + fault.duration_s))
    if fault.kind == "backend_slowdown":
        backend = backends[fault.target]
        backend.slowdowns.append(fault.factor)
        backend.slowdown = math.prod(backend.slowdowns)
        yield env.timeout(fault.duration_s)
        backend.slowdowns.remove(fault.factor)
        backend.slowdown = math.prod(backend.slowdowns)
    elif fault.kind == "backend_outage":
        backend = backends[fault.target]
        backend.down += 1
        backend.outage_error_s = fault.outage_error_s
        yield env.timeout(fault.duration_s)
        backend.down -= 1
    else:
        tier = tiers[fault.target]
        tier.down += 1
        yield env.timeout(fault.duration_s)
        tier.down -= 1


def schedule_faults(
    env: simpy.Environment,
    faults: tuple[FaultConfig, ...],
    backends: list[Backend],
    tiers: dict[str, ExactTier | SemanticTier],
    incidents: list[Incident],
) -> None:
    """Start one process per configured fault; targets were validated by the scenario."""
    by_name = {b.name: b for b in backends}
    for fault in faults:
        env.process(_fault(env, fault, by_name, tiers, incidents))
