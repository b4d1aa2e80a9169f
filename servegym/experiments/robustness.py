"""Robustness checks shared by ``servegym train`` and ``compare``: shifted workloads and outlier flags.

A policy that wins on the seeds and workload it was tuned on can still fail badly when
the load moves. Every evaluation of a learned policy therefore also runs it on shifted
versions of its scenario (:func:`shifted_scenarios`) and reports the worst seed and the
spread beside the mean; :func:`outlier_flags` turns "far outside the baseline" into
printed sentences, so a policy that drops a quarter of its requests on one seed is named
in the output, not only visible in a column.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from servegym.sim.config import FlashCrowd, ScenarioConfig

__all__ = [
    "DROP_RATE_MARGIN",
    "LOAD_FACTOR",
    "OBJECTIVE_MARGIN",
    "SHIFTS",
    "outlier_flags",
    "shifted_scenarios",
]

LOAD_FACTOR = 1.5
"""``higher_load``: every rate (or a trace's speed-up) times this."""

SHIFTS = ("higher_load", "burstier")
"""The synthetic shifts, in the order they are reported (a replayed trace is a third when given)."""

DROP_RATE_MARGIN = 0.01
"""A seed's drop rate is flagged above twice the baseline's worst seed plus this (1 point)."""

OBJECTIVE_MARGIN = 0.10
"""A seed's objective is flagged above the baseline's worst seed by more than this share."""


def _higher_load(scenario: ScenarioConfig) -> ScenarioConfig:
    w = scenario.workload
    if w.kind == "trace":
        workload = dataclasses.replace(w, trace_speedup=w.trace_speedup * LOAD_FACTOR)
    else:
        workload = dataclasses.replace(
            w, rate_rps=w.rate_rps * LOAD_FACTOR, burst_rate_rps=w.burst_rate_rps * LOAD_FACTOR
        )
    return dataclasses.replace(scenario, name=f"{scenario.name}@higher_load", workload=workload)


def _burstier(scenario: ScenarioConfig) -> ScenarioConfig | None:
    """A renewal process twice as variable, or a flash crowd (x3 for a tenth of the run) on a rate process."""
    w = scenario.workload
    if w.kind == "trace":
        return None  # a replayed stream has no rate to make burstier
    if w.kind == "gamma":
        workload = dataclasses.replace(w, cv=w.cv * 2.0)
    else:
        crowd = FlashCrowd(start_s=0.4 * scenario.duration_s, duration_s=0.1 * scenario.duration_s, multiplier=3.0)
        workload = dataclasses.replace(w, flash_crowds=(*w.flash_crowds, crowd))
    return dataclasses.replace(scenario, name=f"{scenario.name}@burstier", workload=workload)


def shifted_scenarios(
    scenario: ScenarioConfig, shifts: Sequence[str] = SHIFTS, trace: ScenarioConfig | None = None
) -> dict[str, ScenarioConfig]:
    """The scenario under each shift of ``shifts`` (and ``trace``, a replay scenario, when given), by shift name.

    ``higher_load`` multiplies every arrival rate (a trace's speed-up) by
    :data:`LOAD_FACTOR`; ``burstier`` doubles a Gamma process's coefficient of variation,
    or adds a flash crowd (three times the rate for a tenth of the run, from 40% of it) to
    the Poisson-family processes, and does not apply to a trace. The platform, prices and
    seeds are the scenario's own, so results pair with the unshifted run seed by seed.
    """
    unknown = sorted(set(shifts) - set(SHIFTS))
    if unknown:
        raise ValueError(f"unknown workload shift {unknown[0]!r}; known: {', '.join(SHIFTS)}")
    out: dict[str, ScenarioConfig] = {}
    for shift in shifts:
        shifted = _higher_load(scenario) if shift == "higher_load" else _burstier(scenario)
        if shifted is not None:
            out[shift] = shifted
    if trace is not None:
        out["trace"] = trace
    return out


def outlier_flags(
    policy: str,
    kpis: Sequence[Mapping[str, float]],
    baseline: str,
    baseline_kpis: Sequence[Mapping[str, float]],
    seeds: Sequence[int],
    where: str = "",
) -> list[str]:
    """Sentences naming each seed on which ``policy`` is far outside ``baseline`` (same seeds, same order).

    Far outside means a drop rate above twice the baseline's worst seed plus
    :data:`DROP_RATE_MARGIN`, or an objective more than :data:`OBJECTIVE_MARGIN` above the
    baseline's worst seed. Both compare against the baseline's *worst* seed, so a flag is
    never noise the baseline shows too.
    """
    flags: list[str] = []
    at = f" on {where}" if where else ""
    worst_drop = max((k.get("drop_rate", math.nan) for k in baseline_kpis), default=math.nan)
    worst_obj = max((k.get("objective_usd", math.nan) for k in baseline_kpis), default=math.nan)
    for seed, k in zip(seeds, kpis, strict=True):
        drop = k.get("drop_rate", math.nan)
        if math.isfinite(drop) and math.isfinite(worst_drop) and drop > 2 * worst_drop + DROP_RATE_MARGIN:
            flags.append(
                f"{policy} drops {drop:.1%} of requests{at} on seed {seed} "
                f"({baseline}: at most {worst_drop:.1%} on any seed)"
            )
        obj = k.get("objective_usd", math.nan)
        if math.isfinite(obj) and math.isfinite(worst_obj) and obj > worst_obj * (1 + OBJECTIVE_MARGIN):
            flags.append(
                f"{policy}'s objective is ${obj:,.2f}{at} on seed {seed}, "
                f"{obj / worst_obj - 1:.0%} above {baseline}'s worst seed (${worst_obj:,.2f})"
            )
    return flags
