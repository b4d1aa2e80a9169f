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
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from servegym.sim.config import FlashCrowd, ScenarioConfig, TraceSchema, expected_requests, trace_duration_s
from servegym.sim.workload import Trace, TraceError, load_trace

__all__ = [
    "DROP_RATE_MARGIN",
    "LOAD_FACTOR",
    "OBJECTIVE_MARGIN",
    "SHIFTS",
    "WorkloadCheck",
    "check_table",
    "mean_rate_rps",
    "outlier_flags",
    "shifted_scenarios",
    "trace_shift",
    "worst_seed",
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
    the Poisson-family processes, and does not apply to a trace. The platform, objective and
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
    never noise the baseline shows too. ``where`` names the workload in the sentence
    (``... on seed 7 of default@burstier``).
    """
    flags: list[str] = []
    of = f" of {where}" if where else ""
    worst_drop = max((k.get("drop_rate", math.nan) for k in baseline_kpis), default=math.nan)
    worst_obj = max((k.get("objective_usd", math.nan) for k in baseline_kpis), default=math.nan)
    for seed, k in zip(seeds, kpis, strict=True):
        drop = k.get("drop_rate", math.nan)
        if math.isfinite(drop) and math.isfinite(worst_drop) and drop > 2 * worst_drop + DROP_RATE_MARGIN:
            flags.append(
                f"{policy} drops {drop:.1%} of requests on seed {seed}{of} "
                f"({baseline}: at most {worst_drop:.1%} on any seed)"
            )
        obj = k.get("objective_usd", math.nan)
        if math.isfinite(obj) and math.isfinite(worst_obj) and obj > worst_obj * (1 + OBJECTIVE_MARGIN):
            flags.append(
                f"{policy}'s objective is ${obj:,.2f} on seed {seed}{of}, "
                f"{obj / worst_obj - 1:.0%} above {baseline}'s worst seed (${worst_obj:,.2f})"
            )
    return flags


def mean_rate_rps(scenario: ScenarioConfig, trace: Trace | None = None) -> float:
    """The long-run mean arrival rate of ``scenario`` over its run, in requests per second.

    ``rate_rps`` for the Poisson, diurnal (its mean over a period) and Gamma processes; the
    stationary mix of calm and burst rates for MMPP; flash crowds add their extra arrivals
    spread over the run. A trace replay (``trace``: the scenario's trace, read when not
    given) counts the requests that arrive within the run.
    """
    w = scenario.workload
    duration = scenario.duration_s
    if w.kind == "trace":
        if trace is None:
            assert w.trace_path is not None  # WorkloadConfig requires it for kind trace
            trace = load_trace(w.trace_path, w.trace_schema)
        arrival = trace.arrival_s / w.trace_speedup
        within = int((arrival < duration).sum())
        return within / min(duration, max(float(arrival[-1]), 1e-9))
    return expected_requests(scenario) / duration


def trace_shift(scenario: ScenarioConfig, trace_path: str | Path, schema: str = "azure") -> ScenarioConfig:
    """``scenario`` with its arrivals and token lengths replayed from a recorded trace: the ``trace`` shift.

    The platform, tenants, objective settings and seeds stay the scenario's (a derived drop
    price then follows the trace's largest row, as for any replay); the trace is sped up (or
    slowed down) to the scenario's mean arrival rate (:func:`mean_rate_rps`), so the shift
    is in the pattern of arrivals and in the token lengths, not in the load. The run ends
    with the trace (at the next control interval after its last request) when that comes
    before the scenario's end. Raises
    :class:`~servegym.sim.workload.TraceError` for a trace that cannot be replayed.
    """
    trace = load_trace(trace_path, schema)
    span_s = float(trace.arrival_s[-1])
    if len(trace) < 2 or span_s <= 0:
        raise TraceError(f"{trace_path}: a trace needs requests at two different times to be replayed at a rate")
    speedup = mean_rate_rps(scenario) / ((len(trace) - 1) / span_s)
    workload = dataclasses.replace(
        scenario.workload,
        kind="trace",
        trace_path=str(trace_path),
        trace_schema=cast(TraceSchema, schema),  # load_trace accepted it
        trace_speedup=speedup,
        flash_crowds=(),
    )
    replay = dataclasses.replace(scenario, name=f"{scenario.name}@trace", workload=workload)
    # Never cut the trace's last request: its whole replay ends at the next control interval after it.
    return dataclasses.replace(replay, duration_s=min(scenario.duration_s, trace_duration_s(replay)))


def worst_seed(kpis: Sequence[Mapping[str, float]], seeds: Sequence[int], kpi: str) -> tuple[float, int | None]:
    """The highest value of ``kpi`` over the seeds (the worst, for an objective or a drop rate) and its seed."""
    pairs = [(k[kpi], s) for k, s in zip(kpis, seeds, strict=True) if kpi in k and not math.isnan(k[kpi])]
    if not pairs:
        return math.nan, None
    return max(pairs, key=lambda pair: pair[0])


@dataclass(frozen=True)
class WorkloadCheck:
    """A policy and its baseline on one workload, seed by seed (the same seeds, the same requests).

    ``workload`` is the shift's name (``higher_load``, ``burstier``, ``trace``) or the
    unshifted scenario's own name; ``flags`` are :func:`outlier_flags` of the policy
    against the baseline there.
    """

    workload: str
    scenario: str
    seeds: tuple[int, ...]
    policy: tuple[Mapping[str, float], ...]
    baseline: tuple[Mapping[str, float], ...]
    flags: tuple[str, ...]


def _mean(kpis: Sequence[Mapping[str, float]], kpi: str) -> float:
    values = [k[kpi] for k in kpis if kpi in k and not math.isnan(k[kpi])]
    return sum(values) / len(values) if values else math.nan


def _usd(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.2f}"


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2%}"


def check_table(checks: Sequence[WorkloadCheck], policy: str, baseline: str) -> list[str]:
    """The checks as aligned text lines: objective (USD) and drop rate, mean and worst seed, and the flags.

    One row per workload; ``worst`` cells name their seed (``s1001``). The flag sentences
    follow under the table, each on its own line starting ``!``.
    """

    def worst(kpis: Sequence[Mapping[str, float]], seeds: Sequence[int], kpi: str) -> str:
        value, seed = worst_seed(kpis, seeds, kpi)
        text = _usd(value) if kpi == "objective_usd" else _share(value)
        return "-" if seed is None else f"{text} (s{seed})"

    header = [
        "workload", "seeds", f"{policy} $", "worst $", f"{baseline} $", "worst $",
        f"{policy} drops", "worst", f"{baseline} drops", "worst", "flags",
    ]  # fmt: skip
    rows = [header]
    for c in checks:
        rows.append(
            [
                c.workload,
                str(len(c.seeds)),
                _usd(_mean(c.policy, "objective_usd")),
                worst(c.policy, c.seeds, "objective_usd"),
                _usd(_mean(c.baseline, "objective_usd")),
                worst(c.baseline, c.seeds, "objective_usd"),
                _share(_mean(c.policy, "drop_rate")),
                worst(c.policy, c.seeds, "drop_rate"),
                _share(_mean(c.baseline, "drop_rate")),
                worst(c.baseline, c.seeds, "drop_rate"),
                str(len(c.flags)),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    flags = [flag for c in checks for flag in c.flags]
    if flags:
        lines += [f"far outside {baseline} ({len(flags)}):", *(f"  ! {flag}" for flag in flags)]
    else:
        lines.append(f"no seed far outside {baseline} on any workload")
    return lines
