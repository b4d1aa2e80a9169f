"""The objective: one price in US dollars for a run, defined once.

``objective = cost + slo_miss_usd * SLO misses + bad_answer_usd * bad answers +
drop_usd * (dropped requests, failures included, + requests unfinished at the end)`` (see
:class:`~servegym.sim.config.ObjectiveConfig` for why each term is there). A request still
queued or in service when the run ends was not served within the horizon: it is priced as
a drop, so no policy gains by pushing work past the end (a queue filled in the last
interval would otherwise cost nothing, not even its tokens). A scenario carries its prices (``scenario.objective``);
:func:`resolve_prices` turns them into a :class:`Prices` with the drop price derived from
the scenario when it is not given. Everything that ranks or rewards — the environments'
rewards, ``servegym evaluate``, ``compare``, the leaderboard, tuning and the headline
benchmark — prices a run through :meth:`Prices.usd`, so no two tools can disagree on
what "better" means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from servegym.sim.config import ScenarioConfig

__all__ = ["Prices", "max_serve_usd", "objective_usd", "prices_of", "resolve_prices"]


@dataclass(frozen=True)
class Prices:
    """The resolved prices of the objective; ``drop_derived`` says whether ``drop_usd`` came from the scenario."""

    slo_miss_usd: float
    bad_answer_usd: float
    drop_usd: float
    drop_derived: bool = False

    def usd(
        self, cost_usd: float, slo_misses: float, bad_answers: float, drops: float, unfinished: float = 0.0
    ) -> float:
        """The objective of a run (or of a stretch of one) with these counts; lower is better.

        ``drops`` count failures too; ``unfinished`` are the requests still in flight at the
        end of the run, priced as drops.
        """
        return float(
            cost_usd
            + self.slo_miss_usd * slo_misses
            + self.bad_answer_usd * bad_answers
            + self.drop_usd * (drops + unfinished)
        )

    def describe(self) -> str:
        """One line for the top of every table that ranks by the objective."""
        derived = " (derived from the scenario: dropping costs more than serving)" if self.drop_derived else ""
        return (
            f"objective = cost + ${self.slo_miss_usd:g} per SLO miss + ${self.bad_answer_usd:g} per bad answer"
            f" + ${self.drop_usd:g} per request dropped, failed or unfinished at the end{derived}"
        )

    def params(self) -> dict[str, float]:
        """The prices as flat ``objective/*`` parameters for MLflow."""
        return {
            "objective/slo_miss_usd": self.slo_miss_usd,
            "objective/bad_answer_usd": self.bad_answer_usd,
            "objective/drop_usd": self.drop_usd,
        }


def max_serve_usd(
    scenario: ScenarioConfig, max_prompt_tokens: int | None = None, max_output_tokens: int | None = None
) -> float:
    """The most that serving one request of ``scenario`` can cost, bad answer included.

    Its largest prompt and output (the tenants' token caps, or the given maxima of a
    replayed trace) at the most expensive backend's prices, plus one agent slot held for
    the longest backend timeout (a call never holds its slot longer), plus its answer
    stored in every billed cache tier for as long as it can stay (the tier's TTL, at most
    the run), plus the price of a bad answer. An SLO miss is left out: a drop is one too,
    so it cancels in the comparison.
    """
    tenants = scenario.workload.tenants
    prompt = max_prompt_tokens if max_prompt_tokens is not None else max(t.tokens.max_prompt_tokens for t in tenants)
    output = max_output_tokens if max_output_tokens is not None else max(t.tokens.max_output_tokens for t in tenants)
    tokens_usd = max((prompt * b.usd_per_mtok_in + output * b.usd_per_mtok_out) / 1e6 for b in scenario.backends)
    pool = scenario.pool
    slot_usd = max(b.timeout_s for b in scenario.backends) * pool.usd_per_replica_hour / 3600.0 / pool.slots_per_replica
    cache = scenario.cache
    tiers = [(t.usd_per_entry_hour, t.ttl_s) for t in cache.tiers]
    if cache.semantic.enabled:
        tiers.append((cache.semantic.usd_per_entry_hour, cache.semantic.ttl_s))
    storage_usd = sum(
        price * min(ttl if ttl is not None else scenario.duration_s, scenario.duration_s) / 3600.0
        for price, ttl in tiers
    )
    return tokens_usd + slot_usd + storage_usd + scenario.objective.bad_answer_usd


def resolve_prices(
    scenario: ScenarioConfig,
    trace_prompt_tokens: np.ndarray | None = None,
    trace_output_tokens: np.ndarray | None = None,
) -> Prices:
    """The scenario's prices, with ``drop_usd`` derived when the scenario leaves it null.

    The derived price is one cent above :func:`max_serve_usd`, rounded to the cent, so
    dropping any request is strictly worse than serving it at the most expensive backend.
    For a trace replay pass the trace's token columns: its largest row sets the bound.
    """
    objective = scenario.objective
    if objective.drop_usd is not None:
        return Prices(objective.slo_miss_usd, objective.bad_answer_usd, objective.drop_usd)
    prompt = int(trace_prompt_tokens.max()) if trace_prompt_tokens is not None and len(trace_prompt_tokens) else None
    output = int(trace_output_tokens.max()) if trace_output_tokens is not None and len(trace_output_tokens) else None
    bound = max_serve_usd(scenario, prompt, output)
    drop = (math.floor(bound * 100.0) + 1) / 100.0
    return Prices(objective.slo_miss_usd, objective.bad_answer_usd, drop, drop_derived=True)


def prices_of(scenario: ScenarioConfig) -> Prices:
    """The prices a run of ``scenario`` uses, as :class:`~servegym.sim.platform.Platform` resolves them."""
    w = scenario.workload
    if w.kind != "trace" or w.trace_path is None:
        return resolve_prices(scenario)
    from servegym.sim.workload import load_trace  # workload's import chain reaches this module

    trace = load_trace(w.trace_path, w.trace_schema)
    return resolve_prices(scenario, trace.prompt_tokens, trace.output_tokens)


def objective_usd(kpis: Mapping[str, float], prices: Prices) -> float:
    """The objective of a run from its overall KPIs (``cost_usd``, ``slo_misses``, ``bad_answers``, ``dropped``,
    ``in_flight``: requests unfinished at the end count as drops)."""
    return prices.usd(kpis["cost_usd"], kpis["slo_misses"], kpis["bad_answers"], kpis["dropped"], kpis["in_flight"])
