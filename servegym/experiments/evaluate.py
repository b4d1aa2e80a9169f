"""Evaluate policies on a scenario over seeds: KPI means with 95% intervals, paired comparisons.

A policy is evaluated on the decision its environment exposes (``Autoscaling-v0``:
scaling; ``Routing-v0``: routing; ``Caching-v0``: admission and semantic threshold;
``Platform-v0``: any of them, joined with ``+``, e.g. ``hpa+cascade``). It runs as the
simulator's controller through :class:`~servegym.policies.PolicyController` — the same
observations and actions as inside the environment, without Gymnasium's per-step
overhead. Oracles run alone, with the built-in controller making the other decisions:
``clairvoyant`` plans in hindsight and bounds every shipped scaler, ``oracle_router`` is
a privileged heuristic (:data:`~servegym.sim.oracles.ORACLE_KINDS`). Seed ``s`` runs the
platform with request seed ``s`` for every policy, so policies are compared on identical
request streams and their paired differences are tight.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from servegym.envs.features import admission_layout, interval_layout, routing_layout
from servegym.experiments.robustness import outlier_flags, worst_seed
from servegym.experiments.stats import Estimate, estimate, few_seeds_warning, format_estimate, paired_difference
from servegym.policies import (
    ENV_FILLED_ARGUMENTS,
    POLICIES,
    Policy,
    PolicyController,
    build_checked,
    make_policy,
    scaling_kwargs,
)
from servegym.sim.config import ScenarioConfig
from servegym.sim.objective import Prices, prices_of
from servegym.sim.oracles import ClairvoyantScaler, ControllerFactory, OracleRouter
from servegym.sim.platform import Controller, Platform
from servegym.sim.telemetry import trace_summary

__all__ = [
    "DECISIONS",
    "ENV_DECISIONS",
    "KPI_COLUMNS",
    "PolicyResult",
    "align_columns",
    "builtin_decisions",
    "decisions_of",
    "evaluate",
    "format_comparison",
    "format_worst",
    "run_policy",
    "simulate",
]

DECISIONS: dict[str, str] = {
    "static": "scaling",
    "hpa": "scaling",
    "kpa": "scaling",
    "step": "scaling",
    "scheduled": "scaling",
    "random": "routing",
    "round_robin": "routing",
    "jsq": "routing",
    "power_of_two": "routing",
    "cheapest": "routing",
    "strongest": "routing",
    "cascade": "routing",
    "admit_all": "admission",
    "admit_none": "admission",
    "frequency": "admission",
    "fixed_threshold": "threshold",
    "oracle_router": "routing",
    "clairvoyant": "scaling",
    "builtin": "none",
}
"""The decision each named policy makes."""

ENV_DECISIONS: dict[str, frozenset[str]] = {
    "Autoscaling-v0": frozenset({"scaling"}),
    "Routing-v0": frozenset({"routing"}),
    "Caching-v0": frozenset({"admission", "threshold"}),
    "Platform-v0": frozenset({"scaling", "routing", "admission", "threshold"}),
}

ORACLES: dict[str, Callable[..., Controller]] = {"oracle_router": OracleRouter, "clairvoyant": ClairvoyantScaler}
"""The oracles by name; each runs alone, the built-in controller making the other decisions (see :func:`_oracle`)."""

_NO_SHIPPED_DEFAULT = {"scheduled": "schedule"}
"""Heuristics with an argument that has no shipped default: an oracle's warm start has them only when it is given."""

KPI_COLUMNS = (
    ("objective_usd", "objective $"),
    ("latency_p95_s", "p95 s (done)"),
    ("latency_p95_all_s", "p95 s (drop=inf)"),
    ("slo_attainment", "SLO"),
    ("drop_rate", "drops"),
    ("failure_rate", "failed"),
    ("cost_usd", "cost $"),
    ("hit_rate", "hit"),
    ("quality", "quality"),
)
"""The columns of every evaluation table, the objective first. Drops (dropped or failed
requests, of those that finished) and failures stand beside every mean, and the p95 over
completed requests sits next to the p95 that counts a drop as infinitely slow, so a
policy cannot look fast by serving fewer requests."""

WORST_COLUMNS = (("objective_usd", "worst objective $"), ("drop_rate", "worst drops"))
"""Per policy, the worst seed of these KPIs (the highest value), beside the means."""


@dataclass(frozen=True)
class PolicyResult:
    """Per-seed overall KPIs of one policy (seeds in the order given) and the objective's prices."""

    policy: str
    seeds: tuple[int, ...]
    kpis: tuple[dict[str, float], ...]
    prices: Prices | None = None

    def values(self, kpi: str) -> list[float]:
        return [k.get(kpi, math.nan) for k in self.kpis]

    def estimate(self, kpi: str) -> Estimate:
        return estimate(self.values(kpi))

    def worst(self, kpi: str) -> tuple[float, int | None]:
        """The highest per-seed value of ``kpi`` (worst for costs, drops, latency) and its seed."""
        return worst_seed(self.kpis, self.seeds, kpi)


def _controller(
    spec: str,
    env_id: str,
    platform: Platform,
    params: Mapping[str, Mapping[str, Any]],
    seed: int,
    trained: Mapping[str, Policy] | None = None,
) -> Controller | None:
    """The controller for policy ``spec`` (names joined by ``+``) on ``platform``.

    ``trained`` gives ready-made policies by decision (``"scaling"``, ``"routing"``, ...);
    the names in ``spec`` make the other decisions. Arguments that default to the run's
    own setting — ``static``'s ``replicas`` (the pool's initial size), the random routers'
    ``seed`` (this seed) and ``fixed_threshold``'s ``threshold`` (the scenario's) — take it
    when absent or null, as ``servegym/conf/policy/`` writes them.
    """
    names = spec.split("+")
    if not all(names):
        raise ValueError(f"policy spec {spec!r} has an empty name: join policy names with single + signs")
    allowed = ENV_DECISIONS.get(env_id.removeprefix("servegym/"))
    if allowed is None:
        raise ValueError(f"unknown environment {env_id!r}; known: {', '.join(ENV_DECISIONS)}")
    trained = dict(trained or {})
    if names == ["builtin"] and not trained:
        return None
    if names == ["builtin"]:
        names = []
    chosen: dict[str, Any] = {}
    for fixed in trained:
        if fixed not in allowed:
            raise ValueError(f"a trained {fixed} policy does not fit {env_id} ({', '.join(sorted(allowed))})")
    for name in names:
        decision = DECISIONS.get(name)
        if decision is None:
            raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(DECISIONS))}")
        if decision not in allowed:
            raise ValueError(
                f"policy {name!r} decides {decision}, which {env_id} does not expose ({', '.join(allowed)})"
            )
        if decision in chosen or decision in trained:
            raise ValueError(f"policy spec {spec!r} names two {decision} policies")
        chosen[decision] = name
    scenario = platform.scenario
    oracles = [n for n in chosen.values() if n in ORACLES]
    if oracles:
        if len(chosen) > 1:
            raise ValueError(f"oracle {oracles[0]!r} runs alone; it cannot be combined in {spec!r}")
        return _oracle(oracles[0], platform, params, seed)
    built: dict[str, Any] = dict(trained)
    for decision, name in chosen.items():
        kwargs = dict(params.get(name, {}))
        for structural in ENV_FILLED_ARGUMENTS:
            if structural in kwargs:
                raise ValueError(f"{name}.{structural} comes from the environment's observations; it cannot be given")
        if decision == "scaling":
            kwargs = {**scaling_kwargs(scenario), **kwargs}
            if name == "static" and kwargs.get("replicas") is None:
                kwargs["replicas"] = scenario.pool.initial_replicas
        elif decision == "routing":
            kwargs = {
                "layout": routing_layout(platform),
                "backend_names": [b.name for b in scenario.backends],
                **kwargs,
            }
            if name in ("random", "power_of_two") and kwargs.get("seed") is None:
                kwargs["seed"] = seed
        elif decision == "admission":
            kwargs = {"layout": admission_layout(platform), **kwargs}
        elif decision == "threshold":
            kwargs = {"layout": interval_layout(scenario), **kwargs}
            if kwargs.get("threshold") is None:
                kwargs["threshold"] = scenario.cache.semantic.threshold
        built[decision] = make_policy(name, **kwargs)
    return PolicyController(**built)


def _oracle(name: str, platform: Platform, params: Mapping[str, Mapping[str, Any]], seed: int) -> Controller:
    """Oracle ``name`` with its arguments from ``params``; ``clairvoyant`` gets every shipped scaler as a candidate.

    The clairvoyant scaler is a bound only relative to its warm start
    (:class:`~servegym.sim.oracles.ClairvoyantScaler`), so it is given every scaler of
    :data:`~servegym.policies.POLICIES`, each built as ``servegym evaluate`` builds it for
    ``Autoscaling-v0``: at the arguments ``params`` gives it, its shipped defaults
    (``servegym/conf/policy/``) otherwise. ``scheduled`` has no default schedule and joins
    only when ``params`` gives one. Each candidate is built once here, so a bad argument
    fails before anything runs.
    """
    oracle: Controller = build_checked(name, ORACLES[name], dict(params.get(name, {})))
    if isinstance(oracle, ClairvoyantScaler):
        for heuristic, decision in DECISIONS.items():
            if decision != "scaling" or heuristic not in POLICIES:
                continue
            required = _NO_SHIPPED_DEFAULT.get(heuristic)
            if required is not None and (params.get(heuristic) or {}).get(required, MISSING) in (None, MISSING):
                continue
            try:
                _controller(heuristic, "Autoscaling-v0", platform, params, seed)
            except ValueError as exc:
                raise ValueError(f"{name} warm-starts with {heuristic}, whose arguments are wrong: {exc}") from exc
            oracle.candidates[heuristic] = _shipped_scaler(heuristic, params, seed)
    return oracle


def _shipped_scaler(name: str, params: Mapping[str, Mapping[str, Any]], seed: int) -> ControllerFactory:
    """Builds scaler ``name`` for a fresh platform, as :func:`_controller` does for ``Autoscaling-v0``."""

    def build(run: Platform) -> Controller:
        controller = _controller(name, "Autoscaling-v0", run, params, seed)
        assert controller is not None  # only the spec "builtin" has none
        return controller

    return build


def builtin_decisions(scenario: ScenarioConfig) -> dict[str, str]:
    """What the scenario's built-in controller does for each decision, in words (``"builtin static"``)."""
    control = scenario.control
    scaling = (
        f"builtin {control.scaling} (target {control.target_utilisation:g})"
        if control.scaling == "target_utilisation"
        else f"builtin static ({scenario.pool.initial_replicas} replicas)"
    )
    return {
        "scaling": scaling,
        "routing": f"builtin {control.routing}",
        "admission": "builtin admit to every tier",
        "threshold": f"builtin fixed {scenario.cache.semantic.threshold:g}",
    }


def decisions_of(spec: str, env_id: str, scenario: ScenarioConfig) -> dict[str, str]:
    """Who makes each decision ``env_id`` exposes when ``spec`` runs: a named policy, a trained one, or the builtin.

    A row of a comparison is every decision it ran with, including those it left to the
    scenario's built-in controller: ``oracle_router`` on Platform-v0 also scales, by the
    scenario's rule, and a table must say so. Trained references (``run:``, ``models:/``)
    are named as ``trained <ref>`` for the decision they make, when it is known from
    their environment (a scaler or router), else for the whole row.
    """
    allowed = ENV_DECISIONS.get(env_id.removeprefix("servegym/"), frozenset())
    builtin = builtin_decisions(scenario)
    made: dict[str, str] = {}
    for part in spec.split("+"):
        decision = DECISIONS.get(part)
        if decision is not None and decision != "none":
            made[decision] = part
        elif part.startswith(("run:", "models:/")):
            made.setdefault("trained", part)
    return {d: made.get(d, builtin[d]) for d in ("scaling", "routing", "admission", "threshold") if d in allowed} | (
        {"trained": made["trained"]} if "trained" in made else {}
    )


def run_policy(
    spec: str,
    env_id: str,
    scenario: ScenarioConfig,
    seed: int,
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """Run one seed of ``scenario`` with policy ``spec``; returns KPIs overall and per tenant."""
    return simulate(spec, env_id, scenario, seed, params).kpis()


def simulate(
    spec: str,
    env_id: str,
    scenario: ScenarioConfig,
    seed: int,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    trained: Mapping[str, Policy] | None = None,
) -> Platform:
    """Run one seed of ``scenario`` with policy ``spec`` to its end; returns the platform with its telemetry.

    ``trained`` adds ready-made policies by decision (for example a trained scaler), which
    the heuristics named in ``spec`` complement.
    """
    platform = Platform(scenario, seed=seed)
    controller = _controller(spec, env_id, platform, params or {}, seed, trained)
    if controller is not None:
        platform.controller = controller
    platform.run()
    return platform


def evaluate(
    policies: Sequence[str],
    env_id: str,
    scenario: ScenarioConfig,
    seeds: Sequence[int],
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[PolicyResult]:
    """Evaluate each policy on every seed; the same seeds for all (common random numbers).

    With fewer than 3 seeds, a warning (:func:`~servegym.experiments.stats.few_seeds_warning`)
    heads :func:`format_comparison`'s table; when stdout is not a terminal (a file, a pipe)
    it also goes to stderr, so whoever watches the terminal sees it, once.
    """
    if not seeds:
        raise ValueError("evaluate needs at least one seed")
    results = []
    prices = prices_of(scenario)
    for spec in policies:
        kpis = tuple(simulate(spec, env_id, scenario, s, params).kpis()["all"] for s in seeds)
        results.append(PolicyResult(spec, tuple(seeds), kpis, prices))
    warning = few_seeds_warning(len(seeds), "evaluation")
    if warning and results and not sys.stdout.isatty():
        print(f"servegym evaluate: {warning}", file=sys.stderr)
    return results


def format_comparison(results: Sequence[PolicyResult], baseline: str | None = None) -> str:
    """KPI table (mean ± 95% half-width over seeds, and the worst seed) and, with a baseline, paired differences.

    The table opens with the objective's prices; with a baseline, every seed on which a
    policy is far outside it (:func:`~servegym.experiments.robustness.outlier_flags`) is
    named under the tables.
    """
    header = ["policy"] + [label for _, label in KPI_COLUMNS] + [label for _, label in WORST_COLUMNS]
    rows = [header] + [
        [r.policy]
        + [format_estimate(r.estimate(k), k) for k, _ in KPI_COLUMNS]
        + [format_worst(r, k) for k, _ in WORST_COLUMNS]
        for r in results
    ]
    lines = align_columns(rows)
    n = len(results[0].seeds) if results else 0
    lines.insert(
        0,
        f"mean ± 95% CI half-width over {n} seeds, worst seed (seed) at the right; shares in %, their differences "
        "in percentage points; drops count dropped and failed requests; p95 (done) is over completed requests, "
        "p95 (drop=inf) over finished ones with each drop counted as infinitely slow",
    )
    prices = next((r.prices for r in results if r.prices is not None), None)
    if prices is not None:
        lines.insert(0, prices.describe())
    replay = results[0].kpis[0] if results and results[0].kpis else {}
    if "trace_requests" in replay:  # a replay that ends before its trace says how much of it ran
        lines.insert(0, trace_summary(replay))
    warning = few_seeds_warning(n, "evaluation")
    if warning and results:
        lines.insert(0, warning)
    if baseline is not None:
        base = next((r for r in results if r.policy == baseline), None)
        if base is None:
            raise ValueError(f"baseline {baseline!r} is not among the evaluated policies")
        diff_rows = [["policy - " + baseline] + [label for _, label in KPI_COLUMNS]]
        for r in results:
            if r is not base:
                diff_rows.append(
                    [r.policy]
                    + [format_estimate(paired_difference(r.values(k), base.values(k)), k, True) for k, _ in KPI_COLUMNS]
                )
        lines += ["", "paired differences against the baseline (same seeds, same requests):", *align_columns(diff_rows)]
        flags = [
            flag
            for r in results
            if r is not base and not any(part in ORACLES for part in r.policy.split("+"))
            for flag in outlier_flags(r.policy, r.kpis, base.policy, base.kpis, r.seeds)
        ]
        if flags:
            lines += ["", "far outside the baseline:", *(f"  ! {flag}" for flag in flags)]
    return "\n".join(lines)


def format_worst(result: PolicyResult, kpi: str) -> str:
    """The worst seed's value of ``kpi`` as a cell, ``"$412.3 (s3)"``, in the KPI's unit."""
    value, seed = result.worst(kpi)
    if seed is None:
        return "-"
    return f"{format_estimate(Estimate(value, math.nan, 1), kpi)} (s{seed})"


def align_columns(rows: list[list[str]]) -> list[str]:
    """Rows of cells as aligned text lines: first column left, the rest right, a rule under the header."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    out = [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


assert set(DECISIONS) >= set(POLICIES), "every registered policy needs its decision here"
