"""The statistics of a comparison: per-scenario estimates, paired differences, oracle gaps, Pareto sets.

Every policy of a comparison runs on the same seeds of each scenario, so seed ``s`` gives
every policy the same requests (common random numbers). A scenario's summary holds:

- each KPI's mean over seeds with its 95% Student-t interval (:func:`~servegym.experiments.stats.estimate`);
- each policy's paired difference against the baseline, seed by seed
  (:func:`~servegym.experiments.stats.paired_difference`) — far tighter than the
  difference of two independent intervals;
- the worst seed of the objective and of the drop rate beside the means, and a sentence
  for every seed on which a policy is far outside the baseline
  (:func:`~servegym.experiments.robustness.outlier_flags`);
- the share of the baseline-to-oracle gap a policy closes, ``(policy - baseline) /
  (oracle - baseline)`` on the means, where the oracle is the best of the evaluated
  oracles that are proven bounds (:func:`is_bound`) on that KPI (undefined, ``nan``, when
  none beats the baseline), and only for policies the bound covers (:func:`bounded_by`: a
  scaler against the clairvoyant scaler, not ``hpa+jsq``); an oracle that is only a
  privileged heuristic gets no gap;
- the Pareto set on mean cost, mean p95 latency of completed requests and mean drop rate
  (all lower is better): the policies no other policy matches or beats on all three with a
  strict improvement on one, so a policy cannot join it by serving fewer requests.

Rows are ranked by mean objective, lowest first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from servegym.experiments.evaluate import DECISIONS, PolicyResult, align_columns, format_worst
from servegym.experiments.robustness import outlier_flags
from servegym.experiments.stats import Estimate, format_estimate, paired_difference
from servegym.sim.oracles import ORACLE_KINDS

__all__ = [
    "HIGHER_IS_BETTER",
    "HoldoutCheck",
    "ScenarioSummary",
    "bounded_by",
    "format_holdout",
    "format_summary",
    "gap_closed",
    "is_bound",
    "is_oracle",
    "pareto_set",
    "share_text",
    "summarise",
]

HIGHER_IS_BETTER: frozenset[str] = frozenset({"slo_attainment", "quality", "hit_rate", "throughput_rps", "completed"})
"""KPIs where more is better; every other KPI (latency, cost, drops, objective) is better lower."""

PARETO_KPIS = ("cost_usd", "latency_p95_s", "drop_rate")
"""The Pareto set's axes, all lower is better: the drop rate keeps failure off the front."""

BOUNDED_KPIS = frozenset({"objective_usd"})
"""What an oracle that is a bound bounds: the objective, not each KPI (a heuristic may have a lower p95)."""

WORST_KPIS = ("objective_usd", "drop_rate")
"""KPIs whose worst seed stands beside the means."""


def higher_is_better(kpi: str) -> bool:
    """Whether a larger value of ``kpi`` is better (hit rates per tier included)."""
    return kpi in HIGHER_IS_BETTER or kpi.startswith("hit_rate")


def is_oracle(spec: str) -> bool:
    """Whether a policy spec names an oracle (privileged knowledge, not a deployable candidate)."""
    return any(part in ORACLE_KINDS for part in spec.split("+"))


def is_bound(spec: str) -> bool:
    """Whether a policy spec is an oracle proven to bound the shipped heuristics (gaps are computed only to these)."""
    return any(ORACLE_KINDS.get(part) == "bound" for part in spec.split("+"))


def bounded_by(spec: str, oracle: str) -> bool:
    """Whether the bound ``oracle`` covers policy ``spec``: every part of it makes the oracle's decision.

    The clairvoyant scaler bounds scalers run with the built-in rules for every other
    decision, as it runs itself; ``hpa+jsq`` also routes, and may beat it by routing better.
    Names the evaluation does not know (trained runs, variant labels) are not covered.
    """
    decision = {DECISIONS.get(part) for part in oracle.split("+")}
    return all(
        part in ("builtin", oracle) or (part not in ORACLE_KINDS and {DECISIONS.get(part)} == decision)
        for part in spec.split("+")
    )


def _mean(result: PolicyResult, kpi: str) -> float:
    values = [v for v in result.values(kpi) if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def gap_closed(policy: PolicyResult, baseline: PolicyResult, oracle: PolicyResult, kpi: str) -> float:
    """Share of the baseline-to-oracle gap on ``kpi`` that ``policy`` closes (1 = as good as the oracle).

    ``nan`` when the oracle is not better than the baseline on ``kpi`` — or not
    significantly so: when the 95% interval of their paired difference contains zero, any
    share of that gap is noise divided by noise.
    """
    base = _mean(baseline, kpi)
    gap = _mean(oracle, kpi) - base
    sign = 1.0 if higher_is_better(kpi) else -1.0
    if not math.isfinite(gap) or sign * gap <= 1e-12 * max(abs(base), 1.0):
        return math.nan
    if len(oracle.seeds) > 1:
        diff = paired_difference(oracle.values(kpi), baseline.values(kpi))
        if math.isfinite(diff.half_width) and abs(diff.mean) <= diff.half_width:
            return math.nan
    return (_mean(policy, kpi) - base) / gap


def pareto_set(results: Sequence[PolicyResult], axes: Sequence[str] = PARETO_KPIS) -> list[str]:
    """Policies on the Pareto front of the means of ``axes`` (all lower is better), in input order."""
    points = [(r.policy, [_mean(r, k) for k in axes]) for r in results]
    points = [(name, v) for name, v in points if all(math.isfinite(x) for x in v)]
    front = []
    for name, p in points:
        dominated = any(
            all(q_k <= p_k for q_k, p_k in zip(q, p, strict=True))
            and any(q_k < p_k for q_k, p_k in zip(q, p, strict=True))
            for other, q in points
            if other != name
        )
        if not dominated:
            front.append(name)
    return front


@dataclass
class ScenarioSummary:
    """Everything the leaderboard reports for one scenario."""

    scenario: str
    seeds: tuple[int, ...]
    kpis: tuple[str, ...]
    baseline: str
    estimates: dict[str, dict[str, Estimate]]
    differences: dict[str, dict[str, Estimate]]
    gap_kpis: tuple[str, ...]
    gap_reference: dict[str, str]
    gaps: dict[str, dict[str, float]]
    pareto: list[str]
    policies: list[str] = field(default_factory=list)
    worst: dict[str, dict[str, str]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    objective: str = ""
    decisions: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per policy, who made each decision (a named policy, a trained one, or the scenario's builtin)."""

    def mixed(self) -> list[str]:
        """A sentence for each row that differs from the baseline in more than one decision.

        Its differences then mix the effects of several decisions (``oracle_router`` on
        Platform-v0 also scales by the scenario's own rule while a static baseline holds its
        pool): a comparison is about one decision at a time unless it says otherwise.
        """
        base = self.decisions.get(self.baseline)
        if not base:
            return []
        out = []
        for p in self.policies:
            row = self.decisions.get(p)
            if p == self.baseline or not row:
                continue
            differ = [d for d in base if row.get(d) != base.get(d)]
            if len(differ) > 1:
                what = "; ".join(f"{d}: {row.get(d)} vs {base.get(d)}" for d in differ)
                out.append(f"{p} differs from {self.baseline} in {len(differ)} decisions ({what})")
        return out


def summarise(
    scenario: str,
    results: Sequence[PolicyResult],
    kpis: Sequence[str],
    baseline: str | None = None,
    gap_kpis: Sequence[str] = (),
    objective: str = "",
) -> ScenarioSummary:
    """Summarise one scenario's results (see the module docstring); ``baseline`` defaults to the first policy.

    ``objective`` is the line that states the objective's prices, printed atop the tables.
    """
    if not results:
        raise ValueError(f"scenario {scenario!r} has no results to summarise")
    seeds = results[0].seeds
    for r in results:
        if r.seeds != seeds:
            raise ValueError(
                f"scenario {scenario!r}: policy {r.policy!r} ran seeds {list(r.seeds)}, but {results[0].policy!r} "
                f"ran {list(seeds)}; paired comparisons need the same seeds for every policy"
            )
    by_name = {r.policy: r for r in results}
    base_name = baseline if baseline is not None else results[0].policy
    if base_name not in by_name:
        raise ValueError(f"baseline {base_name!r} is not among the policies of scenario {scenario!r}: {list(by_name)}")
    base = by_name[base_name]
    estimates = {r.policy: {k: r.estimate(k) for k in kpis} for r in results}
    differences = {
        r.policy: {k: paired_difference(r.values(k), base.values(k)) for k in kpis} for r in results if r is not base
    }
    oracles = [r for r in results if is_bound(r.policy)]
    gap_reference: dict[str, str] = {}
    gaps: dict[str, dict[str, float]] = {r.policy: {} for r in results}
    for kpi in gap_kpis:
        if not oracles:
            continue
        sign = 1.0 if higher_is_better(kpi) else -1.0
        best = max(oracles, key=lambda o: sign * _mean(o, kpi) if math.isfinite(_mean(o, kpi)) else -math.inf)
        if kpi not in BOUNDED_KPIS or not bounded_by(base.policy, best.policy):
            continue  # a bound holds on the objective only, and for the rows it covers
        gap_reference[kpi] = best.policy
        for r in results:
            gaps[r.policy][kpi] = gap_closed(r, base, best, kpi) if bounded_by(r.policy, best.policy) else math.nan
    return ScenarioSummary(
        scenario=scenario,
        seeds=tuple(seeds),
        kpis=tuple(kpis),
        baseline=base_name,
        estimates=estimates,
        differences=differences,
        gap_kpis=tuple(k for k in gap_kpis if k in gap_reference),
        gap_reference=gap_reference,
        gaps=gaps,
        pareto=pareto_set(results) if set(PARETO_KPIS) <= set(kpis) else [],
        policies=[r.policy for r in sorted(results, key=_rank_key)],
        worst={r.policy: {k: format_worst(r, k) for k in WORST_KPIS if k in kpis} for r in results},
        flags=[
            flag
            for r in results
            if r is not base and not is_oracle(r.policy)
            for flag in outlier_flags(r.policy, r.kpis, base.policy, base.kpis, r.seeds)
        ],
        objective=objective,
    )


def _rank_key(result: PolicyResult) -> float:
    """Rows rank by mean objective, lowest first; a policy without one goes last."""
    mean = _mean(result, "objective_usd")
    return mean if math.isfinite(mean) else math.inf


def share_text(value: float) -> str:
    """A share as a whole percentage, ``-`` when undefined."""
    return "-" if math.isnan(value) else f"{value + 0.0:.0%}".replace("-0%", "0%")


def format_summary(summary: ScenarioSummary, labels: Mapping[str, str] | None = None) -> str:
    """The scenario's tables as plain text: estimates, paired differences, gap closed, Pareto set."""
    labels = labels or {}
    names = [labels.get(k, k) for k in summary.kpis]
    worst_kpis = [k for k in WORST_KPIS if any(k in w for w in summary.worst.values())]
    lines = [
        f"scenario {summary.scenario}: mean ± 95% CI half-width over {len(summary.seeds)} seeds "
        f"{list(summary.seeds)}, ranked by mean objective, worst seed at the right; shares in %, their differences "
        "in percentage points (pts); drops count dropped and failed requests; * = Pareto set on cost, "
        "p95 (done) and drop rate; (oracle) = privileged knowledge, not a deployable policy",
    ]
    if summary.objective:
        lines.append(summary.objective)
    rows = [["policy", *names, *(f"worst {labels.get(k, k)}" for k in worst_kpis)]]
    for p in summary.policies:
        mark = (" *" if p in summary.pareto else "") + (" (oracle)" if is_oracle(p) else "")
        rows.append(
            [
                p + mark,
                *(format_estimate(summary.estimates[p][k], k) for k in summary.kpis),
                *(summary.worst.get(p, {}).get(k, "-") for k in worst_kpis),
            ]
        )
    lines += align_columns(rows)
    if summary.differences:
        lines += ["", f"paired differences against {summary.baseline} (same seeds, same requests):"]
        rows = [["policy - baseline", *names]]
        for p in summary.policies:
            if p in summary.differences:
                rows.append(
                    [p, *(format_estimate(summary.differences[p][k], k, difference=True) for k in summary.kpis)]
                )
        lines += align_columns(rows)
    if summary.gap_kpis:
        refs = ", ".join(f"{labels.get(k, k)}: {summary.gap_reference[k]}" for k in summary.gap_kpis)
        lines += ["", f"share of the baseline-to-oracle gap closed (oracle per KPI — {refs}):"]
        rows = [["policy", *(labels.get(k, k) for k in summary.gap_kpis)]]
        for p in summary.policies:
            rows.append([p, *(share_text(summary.gaps[p][k]) for k in summary.gap_kpis)])
        lines += align_columns(rows)
    if summary.flags:
        lines += ["", f"far outside the baseline ({summary.baseline}):", *(f"  ! {f}" for f in summary.flags)]
    if summary.decisions:
        names = sorted({d for row in summary.decisions.values() for d in row}, key=DECISION_ORDER.index)
        rows = [["who decides", *names]]
        rows += [[p, *(summary.decisions.get(p, {}).get(d, "-") for d in names)] for p in summary.policies]
        lines += ["", *align_columns(rows)]
        mixed = summary.mixed()
        if mixed:
            lines += ["rows whose differences mix decisions:", *(f"  ~ {m}" for m in mixed)]
    return "\n".join(lines)


DECISION_ORDER = ("scaling", "routing", "admission", "threshold", "trained")
"""The order of the decision columns in the "who decides" table."""


@dataclass(frozen=True)
class HoldoutCheck:
    """The best job of a scenario, scored on the seeds it was picked on and on held-out seeds.

    Picking the best of many trials by their score on the tuning seeds favours trials whose
    seeds happened to be kind: the winner's own score is biased optimistically (the
    winner's curse). Its score on seeds no trial saw is not.
    """

    scenario: str
    policy: str
    candidates: int
    tuning: PolicyResult
    holdout: PolicyResult


def holdout_rows(check: HoldoutCheck, kpis: Sequence[str]) -> list[list[str]]:
    """The check's table: one row for the tuning seeds, one for the held-out seeds."""
    return [
        [
            f"tuning seeds {list(check.tuning.seeds)} (picked on)",
            *(format_estimate(check.tuning.estimate(k), k) for k in kpis),
        ],
        [f"held-out seeds {list(check.holdout.seeds)}", *(format_estimate(check.holdout.estimate(k), k) for k in kpis)],
    ]


def holdout_heading(check: HoldoutCheck) -> str:
    """What the check is, in one sentence."""
    return (
        f"held-out check on {check.scenario}: {check.policy} has the lowest mean objective of "
        f"{check.candidates} job(s) on the tuning seeds, a score biased low by the pick (winner's curse); "
        "its score on held-out seeds is the one to report"
    )


def format_holdout(check: HoldoutCheck, kpis: Sequence[str], labels: Mapping[str, str] | None = None) -> str:
    """The held-out check as plain text: the pick, and its KPIs on the tuning and the held-out seeds."""
    labels = labels or {}
    rows = [["seeds", *(labels.get(k, k) for k in kpis)], *holdout_rows(check, kpis)]
    return "\n".join([holdout_heading(check) + ":", *align_columns(rows)])
