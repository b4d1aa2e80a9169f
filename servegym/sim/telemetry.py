"""Telemetry: columnar request records, interval metrics, KPIs and trace export.

Request records are Python lists while the simulation writes them (the fastest thing
to assign one slot of) and numpy arrays once read (:meth:`Requests.frame`); KPIs are
computed from those arrays in a vectorised way. One format feeds everything that
reads results: the CLI table, the environments, evaluation and benchmarks.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from servegym.sim.objective import Prices, objective_usd

if TYPE_CHECKING:
    from servegym.sim.pool import Replica
    from servegym.sim.workload import RequestBatch

__all__ = [
    "COMPLETED",
    "DROPPED_QUEUE_FULL",
    "DROPPED_QUEUE_TIMEOUT",
    "FAILED_ERROR",
    "FAILED_TIMEOUT",
    "IN_FLIGHT",
    "KPI_COLUMNS",
    "OUTCOME_NAMES",
    "Incident",
    "IntervalMetrics",
    "Requests",
    "compute_kpis",
    "format_kpi_table",
    "trace_summary",
    "write_chrome_trace",
    "write_table",
]

IN_FLIGHT = 0
COMPLETED = 1
DROPPED_QUEUE_FULL = 2
DROPPED_QUEUE_TIMEOUT = 3
FAILED_ERROR = 4
FAILED_TIMEOUT = 5
OUTCOME_NAMES = {
    IN_FLIGHT: "in_flight",
    COMPLETED: "completed",
    DROPPED_QUEUE_FULL: "dropped_queue_full",
    DROPPED_QUEUE_TIMEOUT: "dropped_queue_timeout",
    FAILED_ERROR: "failed_error",
    FAILED_TIMEOUT: "failed_timeout",
}

_INPUT_COLUMNS = (
    "arrival_s",
    "tenant",
    "intent",
    "variant",
    "prompt_tokens",
    "output_tokens",
    "difficulty",
    "u_service",
    "z_service",
    "u_quality",
    "u_failure",
)
# Output columns and their initial value (what an unfinished request shows).
_OUTPUT_COLUMNS: dict[str, Any] = {
    "key": -1,
    "outcome": IN_FLIGHT,
    "lookup_s": 0.0,
    "enqueue_s": math.nan,
    "start_s": math.nan,
    "end_s": math.nan,
    "replica": -1,
    "backend": -1,
    "hit_level": -1,
    "source_tenant": -1,
    "false_hit": False,
    "good": False,
    "tokens_in": 0,
    "tokens_out": 0,
    "cost_usd": 0.0,
}
_DTYPES = {
    "tenant": np.int32,
    "intent": np.int32,
    "variant": np.int32,
    "prompt_tokens": np.int64,
    "output_tokens": np.int64,
    "key": np.int64,
    "outcome": np.int8,
    "replica": np.int32,
    "backend": np.int16,
    "hit_level": np.int16,
    "source_tenant": np.int32,
    "false_hit": np.bool_,
    "good": np.bool_,
    "tokens_in": np.int64,
    "tokens_out": np.int64,
}


class Requests:
    """Columnar per-request records, one list per column, indexed by request id.

    ``hit_level`` is -1 for a miss, ``k`` for exact tier ``k`` and ``len(tiers)`` for the
    semantic tier. ``source_tenant`` is the tenant that owned the cache entry that
    answered a hit (it must equal ``tenant``: the isolation invariant).
    """

    columns = _INPUT_COLUMNS + tuple(_OUTPUT_COLUMNS)

    def __init__(self) -> None:
        self.n = 0  # records loaded (arrivals are generated a batch ahead)
        self.arrived = 0  # records whose request has arrived
        for name in self.columns:
            setattr(self, name, [])

    # Typed attribute declarations for readers (mypy); lists are created in __init__.
    arrival_s: list[float]
    tenant: list[int]
    intent: list[int]
    variant: list[int]
    prompt_tokens: list[int]
    output_tokens: list[int]
    difficulty: list[float]
    u_service: list[float]
    z_service: list[float]
    u_quality: list[float]
    u_failure: list[float]
    key: list[int]
    outcome: list[int]
    lookup_s: list[float]
    enqueue_s: list[float]
    start_s: list[float]
    end_s: list[float]
    replica: list[int]
    backend: list[int]
    hit_level: list[int]
    source_tenant: list[int]
    false_hit: list[bool]
    good: list[bool]
    tokens_in: list[int]
    tokens_out: list[int]
    cost_usd: list[float]

    def extend(self, batch: RequestBatch, keys: np.ndarray) -> None:
        """Append a batch of arrivals with blank outcomes."""
        n = len(batch)
        for name in _INPUT_COLUMNS:
            getattr(self, name).extend(getattr(batch, name).tolist())
        self.key.extend(keys.tolist())
        for name, blank in _OUTPUT_COLUMNS.items():
            if name != "key":
                getattr(self, name).extend([blank] * n)
        self.n += n

    def frame(self, upto: int | None = None, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """The first ``upto`` records (default: all that arrived) as numpy columns (default: all)."""
        n = self.arrived if upto is None else upto
        names = self.columns if columns is None else columns
        return {name: np.asarray(getattr(self, name)[:n], dtype=_DTYPES.get(name, np.float64)) for name in names}


@dataclass(frozen=True)
class IntervalMetrics:
    """What happened during one control interval, as a controller or observation sees it.

    Latency figures are over requests completed in the interval (``nan`` when none);
    ``utilisation`` is time-averaged busy slots over slots of ready and draining replicas.
    ``hits`` counts hits per level (exact tiers, then the semantic tier).
    ``slo_violations`` counts requests finished in the interval that missed their tenant's
    SLO (drops and failures included); ``good_answers`` completed requests answered well.
    ``cost_usd`` is everything billed in the interval: replicas, tokens and cache storage.
    The run's last interval ends at the scenario's end (``interval_s`` may be shorter) and
    comes with no decision; the intervals add up to the run's totals.
    """

    time_s: float
    interval_s: float
    arrivals: int
    arrival_rate_rps: float
    completed: int
    dropped: int
    slo_violations: int
    good_answers: int
    queue_len: int
    busy_slots: int
    utilisation: float
    ready_replicas: int
    provisioning_replicas: int
    draining_replicas: int
    target_replicas: int
    latency_mean_s: float
    latency_p50_s: float
    latency_p95_s: float
    hits: tuple[int, ...]
    false_hits: int
    hit_rate: float
    cost_usd: float
    semantic_threshold: float


@dataclass(frozen=True)
class Incident:
    """A scheduled fault, with its ground-truth label, for root-cause analysis."""

    kind: str
    target: str
    start_s: float
    end_s: float


def _percentiles(x: np.ndarray, qs: list[float]) -> list[float]:
    """Percentiles ``qs`` of ``x`` in one pass (``nan`` for an empty ``x``)."""
    return np.percentile(x, qs).tolist() if len(x) else [math.nan] * len(qs)


def _percentile_counting_drops(latency: np.ndarray, drops: int, q: float) -> float:
    """Percentile ``q`` of the finished requests' latencies with every drop counted as infinitely slow.

    The same linear interpolation as :func:`numpy.percentile` over ``latency`` plus
    ``drops`` infinite values: ``inf`` as soon as the percentile reaches a drop, so a
    policy cannot shorten its tail by turning the slowest requests away.
    """
    n = len(latency) + drops
    if n == 0:
        return math.nan
    if math.ceil(q / 100.0 * (n - 1)) >= len(latency):
        return math.inf
    # Below the drops: stand-ins above every latency leave numpy's interpolation unchanged.
    filler = np.full(drops, float(latency.max()) + 1.0)
    return float(np.percentile(np.concatenate([latency, filler]), q))


def _group_kpis(
    cols: dict[str, np.ndarray],
    mask: np.ndarray,
    slo_s: np.ndarray,
    duration_s: float,
    n_levels: int,
) -> dict[str, float]:
    outcome = cols["outcome"][mask]
    arrived = int(mask.sum())
    done = outcome == COMPLETED
    latency = (cols["end_s"] - cols["arrival_s"])[mask][done]
    finished = int((outcome != IN_FLIGHT).sum())
    within = (cols["end_s"] - cols["arrival_s"] <= slo_s)[mask] & done
    hit_level = cols["hit_level"][mask]
    hits = hit_level >= 0
    p50, p95, p99 = _percentiles(latency, [50, 95, 99])
    dropped = int(((outcome != IN_FLIGHT) & ~done).sum())
    failed = int(((outcome == FAILED_ERROR) | (outcome == FAILED_TIMEOUT)).sum())
    good = cols["good"][mask][done]
    out: dict[str, float] = {
        "requests": float(arrived),
        "completed": float(done.sum()),
        "dropped": float(dropped),
        "failed": float(failed),
        "in_flight": float((outcome == IN_FLIGHT).sum()),
        "slo_misses": float(finished - int(within.sum())),
        "bad_answers": float(len(good) - int(good.sum())),
        "throughput_rps": float(done.sum()) / duration_s,
        "latency_mean_s": float(latency.mean()) if len(latency) else math.nan,
        "latency_p50_s": p50,
        "latency_p95_s": p95,
        "latency_p99_s": p99,
        "latency_p95_all_s": _percentile_counting_drops(latency, dropped, 95),
        "slo_attainment": float(within.sum()) / finished if finished else math.nan,
        "drop_rate": dropped / finished if finished else math.nan,
        "failure_rate": failed / finished if finished else math.nan,
        "hit_rate": float(hits.sum()) / arrived if arrived else math.nan,
        "false_hit_rate": float(cols["false_hit"][mask].sum()) / max(int(hits.sum()), 1),
        "quality": float(good.mean()) if done.any() else math.nan,
        "token_cost_usd": float(cols["cost_usd"][mask].sum()),
    }
    for level in range(n_levels):
        out[f"hit_rate_l{level}"] = float((hit_level == level).sum()) / arrived if arrived else math.nan
    return out


KPI_COLUMNS = ("tenant", "arrival_s", "end_s", "outcome", "hit_level", "false_hit", "good", "cost_usd")
"""The request columns :func:`compute_kpis` reads: a frame of only these converts far fewer lists."""


def compute_kpis(
    cols: dict[str, np.ndarray],
    *,
    tenant_names: list[str],
    tenant_slo_s: list[float],
    level_names: list[str],
    duration_s: float,
    replica_usd: float,
    storage_usd: float,
    replica_seconds: float,
    prices: Prices | None = None,
    trace_requests: int | None = None,
    trace_end_s: float = math.nan,
) -> dict[str, dict[str, float]]:
    """KPIs overall (key ``"all"``) and per tenant, from request columns (at least :data:`KPI_COLUMNS`).

    Latency percentiles are over completed requests, and ``latency_p95_all_s`` over
    finished ones with drops counted as infinitely slow; SLO attainment, drop and failure
    rates are over finished requests (completed, dropped or failed), so requests still in
    flight at the end count for none of them. ``dropped`` counts failures too
    (``failed`` is their share of it). ``cost_usd`` (overall only) is replicas + tokens +
    storage; with ``prices``, ``objective_usd`` (overall only) is the run's objective.
    A trace replay passes the trace's length and when its last request arrives (seconds
    of simulated time): overall, ``trace_requests`` and ``trace_end_s`` then say how much
    of the trace the run replayed (``requests`` of ``trace_requests``).
    """
    slo = np.asarray(tenant_slo_s, dtype=np.float64)[cols["tenant"]] if len(cols["tenant"]) else np.zeros(0)
    everything = np.ones(len(cols["tenant"]), dtype=bool)
    result = {"all": _group_kpis(cols, everything, slo, duration_s, len(level_names))}
    overall = result["all"]
    overall["replica_cost_usd"] = replica_usd
    overall["storage_cost_usd"] = storage_usd
    overall["cost_usd"] = replica_usd + overall["token_cost_usd"] + storage_usd
    overall["mean_replicas"] = replica_seconds / duration_s
    requests = max(overall["requests"], 1.0)
    overall["cost_per_1k_requests_usd"] = overall["cost_usd"] * 1000.0 / requests
    if prices is not None:
        overall["objective_usd"] = objective_usd(overall, prices)
    if trace_requests is not None:
        overall["trace_requests"] = float(trace_requests)
        overall["trace_end_s"] = trace_end_s
    for k, name in enumerate(tenant_names):
        result[name] = _group_kpis(cols, cols["tenant"] == k, slo, duration_s, len(level_names))
    return result


_TABLE_COLUMNS = (
    ("requests", "requests", "{:.0f}"),
    ("completed", "done", "{:.0f}"),
    ("dropped", "dropped", "{:.0f}"),
    ("throughput_rps", "thr/s", "{:.2f}"),
    ("latency_p50_s", "p50 s", "{:.3f}"),
    ("latency_p95_s", "p95 s", "{:.3f}"),
    ("latency_p99_s", "p99 s", "{:.3f}"),
    ("slo_attainment", "SLO", "{:.1%}"),
    ("hit_rate", "hit", "{:.1%}"),
    ("false_hit_rate", "false hit", "{:.2%}"),
    ("quality", "quality", "{:.1%}"),
    ("token_cost_usd", "tokens $", "{:.2f}"),
)


def format_kpi_table(kpis: dict[str, dict[str, float]], level_names: list[str], end_s: float | None = None) -> str:
    """A plain-text KPI table: one row overall and one per tenant, then cost and cache lines.

    A trace replay adds a line saying how much of the trace was replayed (:func:`trace_summary`;
    ``end_s`` is the run's end, for that line).
    """
    header = ["scope"] + [label for _, label, _ in _TABLE_COLUMNS]
    rows = [header]
    for scope, values in kpis.items():
        rows.append(
            [scope]
            + [fmt.format(values[key]) if not math.isnan(values[key]) else "-" for key, _, fmt in _TABLE_COLUMNS]
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    total = kpis["all"]
    lines.append("")
    lines.append(
        f"cost: ${total['cost_usd']:.2f} total = replicas ${total['replica_cost_usd']:.2f}"
        f" + tokens ${total['token_cost_usd']:.2f} + storage ${total['storage_cost_usd']:.2f}"
        f"; ${total['cost_per_1k_requests_usd']:.3f} per 1k requests; mean replicas {total['mean_replicas']:.2f}"
    )
    if level_names:
        per_level = ", ".join(f"{name} {total[f'hit_rate_l{k}']:.1%}" for k, name in enumerate(level_names))
        lines.append(f"hit rate by tier: {per_level}")
    if "trace_requests" in total:
        lines.append(trace_summary(total, end_s))
    return "\n".join(lines)


def trace_summary(kpis: Mapping[str, float], end_s: float | None = None) -> str:
    """How much of its trace a replay replayed, from its overall KPIs; ``end_s``, the run's end, when known.

    ``trace: replayed 8,700 of 8,819 requests (the run ended at 840 s, before the
    trace's last request at 859 s)``, or ``trace: replayed all 8,819 requests``.
    """
    replayed, total = int(kpis["requests"]), int(kpis["trace_requests"])
    if replayed >= total:
        return f"trace: replayed all {total:,} requests (the last at {kpis['trace_end_s']:,.0f} s)"
    ended = f"the run ended at {end_s:,.0f} s, " if end_s is not None else "the run ended "
    return (
        f"trace: replayed {replayed:,} of {total:,} requests ({ended}before the trace's last request "
        f"at {kpis['trace_end_s']:,.0f} s)"
    )


def write_table(columns: Mapping[str, np.ndarray | list[Any]], path: Path) -> Path:
    """Write columns as CSV or Parquet, chosen by the file suffix."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({k: np.asarray(v) for k, v in columns.items()}), path)
        return path
    if path.suffix != ".csv":
        raise ValueError(f"{path}: the suffix must be .csv or .parquet")
    names = list(columns)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows(zip(*(np.asarray(columns[n]).tolist() for n in names), strict=True))
    return path


def intervals_to_columns(intervals: list[IntervalMetrics], level_names: list[str]) -> dict[str, np.ndarray]:
    """Interval metrics as columns; per-level hits become ``hits_<tier>`` columns."""
    out: dict[str, np.ndarray] = {}
    for f in fields(IntervalMetrics):
        if f.name == "hits":
            for k, name in enumerate(level_names):
                out[f"hits_{name}"] = np.asarray([m.hits[k] for m in intervals], dtype=np.int64)
        else:
            out[f.name] = np.asarray([getattr(m, f.name) for m in intervals])
    return out


def write_chrome_trace(
    cols: dict[str, np.ndarray],
    replicas: list[Replica],
    incidents: list[Incident],
    backend_names: list[str],
    level_names: list[str],
    path: Path,
    end_s: float,
    max_requests: int = 20_000,
) -> Path:
    """Write spans in the Chrome trace event format (open in https://ui.perfetto.dev).

    Requests are async spans (they overlap freely) split into queue and backend phases;
    replicas are complete spans for cold start, serving and draining; incidents are
    spans on their own track. Only the first ``max_requests`` requests are written.
    """
    us = 1e6
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "requests"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "replicas"}},
        {"ph": "M", "name": "process_name", "pid": 3, "args": {"name": "incidents"}},
    ]
    n = min(len(cols["arrival_s"]), max_requests)
    for i in range(n):
        arrival = float(cols["arrival_s"][i])
        end = float(cols["end_s"][i]) if not math.isnan(cols["end_s"][i]) else end_s
        outcome = OUTCOME_NAMES[int(cols["outcome"][i])]
        level = int(cols["hit_level"][i])
        args = {"tenant": int(cols["tenant"][i]), "intent": int(cols["intent"][i]), "outcome": outcome}
        common = {"cat": "request", "id": i, "pid": 1, "tid": int(cols["tenant"][i])}
        name = f"hit {level_names[level]}" if level >= 0 else "request"
        events.append({**common, "ph": "b", "name": name, "ts": arrival * us, "args": args})
        start = float(cols["start_s"][i])
        if not math.isnan(start):
            events.append({**common, "ph": "b", "name": "queue", "ts": float(cols["enqueue_s"][i]) * us})
            events.append({**common, "ph": "e", "name": "queue", "ts": start * us})
            backend = int(cols["backend"][i])
            if backend >= 0:
                label = f"call {backend_names[backend]}"
                events.append({**common, "ph": "b", "name": label, "ts": start * us})
                events.append({**common, "ph": "e", "name": label, "ts": end * us})
        events.append({**common, "ph": "e", "name": name, "ts": end * us})
    for rep in replicas:
        stop = rep.stop_s if not math.isnan(rep.stop_s) else end_s
        ready = rep.ready_s if not math.isnan(rep.ready_s) else stop
        drain = rep.drain_s if not math.isnan(rep.drain_s) else stop
        for name, a, b in (
            ("cold start", rep.provision_s, ready),
            ("serving", ready, drain),
            ("draining", drain, stop),
        ):
            if b > a:
                events.append({"ph": "X", "name": name, "pid": 2, "tid": rep.id, "ts": a * us, "dur": (b - a) * us})
    for k, inc in enumerate(incidents):
        events.append(
            {
                "ph": "X",
                "name": f"{inc.kind} {inc.target}",
                "pid": 3,
                "tid": k,
                "ts": inc.start_s * us,
                "dur": (inc.end_s - inc.start_s) * us,
                "args": asdict(inc),
            }
        )
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return path
