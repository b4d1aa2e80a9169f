"""Figures of a comparison (matplotlib, Agg backend: no display needed).

Each function takes the per-policy results of one comparison and returns a saved PNG:

- :func:`cost_vs_latency`: mean cost against mean p95 latency with 95% error bars in both,
  one panel per scenario, the Pareto set ringed;
- :func:`latency_cdfs`: the distribution of completed requests' latency, one panel per
  scenario (quantile functions averaged over seeds);
- :func:`replicas_and_load`: arrival rate and ready replicas over time for one scenario;
- :func:`hit_rates_over_time`: each cache tier's hit rate per control interval for one scenario.

Time series show the comparison's first seed: averaging over seeds would smooth away
the bursts the policies react to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from servegym.experiments.leaderboard import ScenarioSummary

__all__ = ["cost_vs_latency", "hit_rates_over_time", "latency_cdfs", "replicas_and_load"]

Telemetry = Mapping[str, Any]
"""What a comparison job records for the figures (see :func:`servegym.experiments.compare.telemetry_of`)."""


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _grid(n: int, width: float = 5.0, height: float = 3.8) -> tuple[Figure, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _colours(policies: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(policies) <= 10 else "tab20")
    return {p: cmap(i % cmap.N) for i, p in enumerate(policies)}


def _nonnegative_bar(mean: float, half_width: float) -> list[list[float]] | None:
    """An error bar (below, above) for a quantity that cannot be negative: the interval stops at 0.

    With few seeds a t interval can reach below zero (cost, latency); drawing that part
    would show impossible values, so the bar is the interval intersected with [0, inf).
    """
    if math.isnan(half_width):
        return None
    return [[min(half_width, max(mean, 0.0))], [half_width]]


def cost_vs_latency(summaries: Sequence[ScenarioSummary], path: Path) -> Path:
    """Cost against p95 latency, means with 95% intervals as error bars; Pareto set ringed."""
    policies = list(dict.fromkeys(p for s in summaries for p in s.policies))
    colour = _colours(policies)
    fig, axes = _grid(len(summaries))
    for ax, s in zip(axes, summaries, strict=True):
        for p in s.policies:
            cost = s.estimates[p]["cost_usd"]
            p95 = s.estimates[p]["latency_p95_s"]
            xerr, yerr = _nonnegative_bar(cost.mean, cost.half_width), _nonnegative_bar(p95.mean, p95.half_width)
            ax.errorbar(cost.mean, p95.mean, xerr=xerr, yerr=yerr, fmt="o", color=colour[p], capsize=3, label=p)
            if p in s.pareto:
                ax.plot(cost.mean, p95.mean, "o", ms=14, mfc="none", mec="black", mew=1.2)
        ax.set_title(s.scenario)
        ax.set_xlabel("cost (USD)")
        ax.set_ylabel("p95 latency (s)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(len(labels), 4),
        bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(labels) // 4)),
    )
    fig.suptitle("cost vs p95 latency (mean ± 95% CI over seeds, cut at 0; ringed: Pareto set)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return _save(fig, path)


def latency_cdfs(telemetry: Mapping[str, Mapping[str, Telemetry]], path: Path) -> Path:
    """Latency CDF of completed requests per scenario and policy (quantile functions averaged over seeds)."""
    scenarios = list(telemetry)
    policies = list(dict.fromkeys(p for s in scenarios for p in telemetry[s]))
    colour = _colours(policies)
    fig, axes = _grid(len(scenarios))
    for ax, scenario in zip(axes, scenarios, strict=True):
        for p, t in telemetry[scenario].items():
            quantiles = np.asarray(t["latency_quantiles"], dtype=np.float64)
            if quantiles.size == 0:
                continue
            probs = np.asarray(t["quantile_probs"], dtype=np.float64)
            ax.plot(np.nanmean(quantiles, axis=0), probs, color=colour[p], label=p)
        ax.set_xscale("log")
        ax.set_title(scenario)
        ax.set_xlabel("latency (s, log scale)")
        ax.set_ylabel("share of completed requests")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="small")
    fig.suptitle("latency CDF of completed requests")
    fig.tight_layout()
    return _save(fig, path)


def replicas_and_load(scenario: str, telemetry: Mapping[str, Telemetry], path: Path) -> Path:
    """Arrival rate (top) and ready replicas per policy (bottom) over time, first seed."""
    colour = _colours(list(telemetry))
    fig, (load, reps) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    shown_load = False
    for p, t in telemetry.items():
        series = t["intervals"]
        time_min = np.asarray(series["time_s"], dtype=np.float64) / 60.0
        if not shown_load:
            load.plot(time_min, series["arrival_rate_rps"], color="black")
            shown_load = True
        reps.step(time_min, series["ready_replicas"], where="post", color=colour[p], label=p)
    load.set_ylabel("arrivals (requests/s)")
    load.set_title(f"{scenario}: load and replicas over time (seed {_first_seed(telemetry)})")
    load.grid(alpha=0.3)
    reps.set_ylabel("ready replicas")
    reps.set_xlabel("simulated time (min)")
    reps.grid(alpha=0.3)
    reps.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def hit_rates_over_time(scenario: str, telemetry: Mapping[str, Telemetry], path: Path) -> Path:
    """Hit rate of each cache tier per control interval (hits / arrivals), one panel per tier, first seed."""
    tiers = list(dict.fromkeys(tier for t in telemetry.values() for tier in t["level_names"]))
    colour = _colours(list(telemetry))
    fig, axes = _grid(max(len(tiers), 1), width=4.5, height=3.2)
    if not tiers:
        axes[0].text(0.5, 0.5, "no cache tiers in this scenario", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, tier in zip(axes, tiers, strict=False):
        for p, t in telemetry.items():
            series = t["intervals"]
            key = f"hit_rate_{tier}"
            if key not in series:
                continue
            ax.plot(np.asarray(series["time_s"], dtype=np.float64) / 60.0, series[key], color=colour[p], label=p)
        ax.set_title(tier)
        ax.set_xlabel("simulated time (min)")
        ax.set_ylabel("hit rate")
        ax.grid(alpha=0.3)
    if tiers:
        axes[0].legend(fontsize="small")
    fig.suptitle(f"{scenario}: hit rate per tier over time (seed {_first_seed(telemetry)})")
    fig.tight_layout()
    return _save(fig, path)


def _first_seed(telemetry: Mapping[str, Telemetry]) -> str:
    seeds = {str(t.get("series_seed")) for t in telemetry.values()}
    return ", ".join(sorted(seeds))
