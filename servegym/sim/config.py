"""Frozen, validated configuration for every part of the simulated platform.

Every dataclass checks its own fields in ``__post_init__`` and raises
:class:`ConfigError` naming the field, the offending value and what is allowed,
so a wrong scenario fails at construction, never halfway through a run.
Scenarios load from YAML (or any nested mapping) with :func:`scenario_from_dict`,
which also rejects unknown keys by their dotted path.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

import yaml

if TYPE_CHECKING:
    from servegym.sim.workload import Trace

__all__ = [
    "BackendConfig",
    "CacheConfig",
    "CacheTierConfig",
    "ConfigError",
    "ControlConfig",
    "FaultConfig",
    "FlashCrowd",
    "ObjectiveConfig",
    "PoolConfig",
    "ScenarioConfig",
    "SemanticCacheConfig",
    "TenantConfig",
    "TokenLengths",
    "WorkloadConfig",
    "apply_overrides",
    "check_run_size",
    "expected_requests",
    "load_scenario",
    "scenario_from_dict",
    "scenario_to_dict",
    "trace_duration_s",
]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what is allowed."""


def _fail(owner: str, name: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{owner}.{name} = {value!r} is invalid: {allowed}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive(owner: str, name: str, value: float) -> None:
    if not (_number(value) and math.isfinite(value) and value > 0):
        _fail(owner, name, value, "must be a finite number > 0")


def _check_nonneg(owner: str, name: str, value: float) -> None:
    if not (_number(value) and math.isfinite(value) and value >= 0):
        _fail(owner, name, value, "must be a finite number >= 0")


def _check_unit(owner: str, name: str, value: float) -> None:
    if not (_number(value) and 0.0 <= value <= 1.0):
        _fail(owner, name, value, "must be in [0, 1]")


def _check_int(owner: str, name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(owner, name, value, f"must be an integer >= {minimum}")


def _check_choice(owner: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(owner, name, value, f"must be one of {', '.join(choices)}")


@dataclass(frozen=True)
class TokenLengths:
    """Lognormal prompt and output token lengths (parameters of the underlying normal).

    Defaults are the fit to the conversation half of the Azure LLM inference trace 2023;
    :meth:`coding` gives the fit to its coding half.
    """

    prompt_mu: float = 6.63
    prompt_sigma: float = 0.99
    output_mu: float = 5.02
    output_sigma: float = 0.86
    max_prompt_tokens: int = 32_768
    max_output_tokens: int = 8_192

    def __post_init__(self) -> None:
        owner = "tokens"
        for name in ("prompt_mu", "output_mu"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                _fail(owner, name, value, "must be a finite number")
        _check_positive(owner, "prompt_sigma", self.prompt_sigma)
        _check_positive(owner, "output_sigma", self.output_sigma)
        _check_int(owner, "max_prompt_tokens", self.max_prompt_tokens, 1)
        _check_int(owner, "max_output_tokens", self.max_output_tokens, 1)

    @classmethod
    def coding(cls) -> TokenLengths:
        """Lognormal fit to the coding half of the Azure LLM inference trace 2023."""
        return cls(prompt_mu=7.00, prompt_sigma=1.36, output_mu=2.79, output_sigma=0.85)


@dataclass(frozen=True)
class TenantConfig:
    """One tenant: its share of traffic, its latency SLO and its intent catalogue.

    Intents are the semantic equivalence classes of requests; their popularity follows a
    Zipf law with exponent ``zipf_s``. With ``drift_every_s`` set, the popularity ranking
    rotates by ``drift_shift`` intents at each period, so yesterday's hot intents cool down.
    Difficulty is Beta(``difficulty_a``, ``difficulty_b``) per intent.
    """

    name: str = "default"
    weight: float = 1.0
    slo_latency_s: float = 10.0
    n_intents: int = 2_000
    n_variants: int = 8
    zipf_s: float = 1.0
    drift_every_s: float | None = None
    drift_shift: int = 50
    difficulty_a: float = 2.0
    difficulty_b: float = 3.0
    tokens: TokenLengths = field(default_factory=TokenLengths)

    def __post_init__(self) -> None:
        owner = f"tenants[{self.name}]"
        if not isinstance(self.name, str) or not self.name:
            _fail(owner, "name", self.name, "must be a non-empty string")
        _check_positive(owner, "weight", self.weight)
        _check_positive(owner, "slo_latency_s", self.slo_latency_s)
        _check_int(owner, "n_intents", self.n_intents, 1)
        _check_int(owner, "n_variants", self.n_variants, 1)
        _check_nonneg(owner, "zipf_s", self.zipf_s)
        if self.drift_every_s is not None:
            _check_positive(owner, "drift_every_s", self.drift_every_s)
        _check_int(owner, "drift_shift", self.drift_shift, 0)
        _check_positive(owner, "difficulty_a", self.difficulty_a)
        _check_positive(owner, "difficulty_b", self.difficulty_b)


@dataclass(frozen=True)
class FlashCrowd:
    """A flash crowd: from ``start_s`` for ``duration_s`` the arrival rate is multiplied."""

    start_s: float
    duration_s: float
    multiplier: float

    def __post_init__(self) -> None:
        _check_nonneg("flash_crowds", "start_s", self.start_s)
        _check_positive("flash_crowds", "duration_s", self.duration_s)
        _check_positive("flash_crowds", "multiplier", self.multiplier)


CATALOGUE_LIMIT_BYTES = 8 * 2**30
"""The most memory one tenant's intent catalogue may take while it is built."""
_CATALOGUE_BYTES_PER_VALUE = 20  # float64 noise and sum, float32 result, per embedding value


ArrivalKind = Literal["poisson", "diurnal", "gamma", "mmpp", "trace"]
TraceSchema = Literal["azure", "plain", "mooncake"]


@dataclass(frozen=True)
class WorkloadConfig:
    """The arrival process and what arrives.

    ``kind`` selects the process: ``poisson`` (rate ``rate_rps``); ``diurnal``
    (non-homogeneous Poisson, rate ``rate_rps * (1 + amplitude * cos(2 pi (t - peak_s) /
    period_s))``, sampled by thinning); ``gamma`` (renewal process with Gamma
    inter-arrivals of mean ``1/rate_rps`` and coefficient of variation ``cv``); ``mmpp``
    (two-state Markov-modulated Poisson: calm at ``rate_rps``, bursts at
    ``burst_rate_rps``, exponential sojourns of mean ``mean_calm_s`` and ``mean_burst_s``);
    ``trace`` (replay of ``trace_path``, times divided by ``trace_speedup``). Flash crowds
    multiply the rate of the Poisson-family processes.

    Trace schemas (``trace_schema``): ``azure``, the CSV of the Azure LLM inference traces
    (``TIMESTAMP,ContextTokens,GeneratedTokens``, ISO timestamps); ``plain``, CSV
    ``time_s,prompt_tokens,output_tokens`` (seconds, header optional); ``mooncake``, the
    JSON Lines of the Mooncake traces (Qin et al., FAST 2025), one object per line with
    ``timestamp`` (milliseconds), ``input_length``, ``output_length`` and ``hash_ids`` (the
    prompt's blocks as integers; equal leading ids mean a shared prefix; read and kept on
    the :class:`~servegym.sim.workload.Trace`, not modelled). Requests must be in time
    order, and arrive at their offset from the trace's first request. A scenario with
    ``duration_s: null`` runs until the whole trace has arrived (see :class:`ScenarioConfig`).

    Request embeddings: ``embedding_dim`` dimensions; intents cluster in topics of
    ``intents_per_topic`` with spread ``intent_spread``; phrasing variants add noise of
    scale ``phrasing_noise``.
    """

    kind: ArrivalKind = "poisson"
    rate_rps: float = 50.0
    amplitude: float = 0.5
    period_s: float = 86_400.0
    peak_s: float = 50_400.0
    cv: float = 1.0
    burst_rate_rps: float = 200.0
    mean_calm_s: float = 300.0
    mean_burst_s: float = 30.0
    flash_crowds: tuple[FlashCrowd, ...] = ()
    trace_path: str | None = None
    trace_schema: TraceSchema = "azure"
    trace_speedup: float = 1.0
    tenants: tuple[TenantConfig, ...] = (TenantConfig(),)
    embedding_dim: int = 32
    intents_per_topic: int = 20
    intent_spread: float = 0.6
    phrasing_noise: float = 0.25

    def __post_init__(self) -> None:
        owner = "workload"
        _check_choice(owner, "kind", self.kind, get_args(ArrivalKind))
        _check_positive(owner, "rate_rps", self.rate_rps)
        if not (isinstance(self.amplitude, (int, float)) and 0 <= self.amplitude < 1):
            _fail(owner, "amplitude", self.amplitude, "must be in [0, 1) so the rate stays positive")
        _check_positive(owner, "period_s", self.period_s)
        _check_nonneg(owner, "peak_s", self.peak_s)
        _check_positive(owner, "cv", self.cv)
        _check_positive(owner, "burst_rate_rps", self.burst_rate_rps)
        _check_positive(owner, "mean_calm_s", self.mean_calm_s)
        _check_positive(owner, "mean_burst_s", self.mean_burst_s)
        _check_choice(owner, "trace_schema", self.trace_schema, get_args(TraceSchema))
        _check_positive(owner, "trace_speedup", self.trace_speedup)
        if self.kind == "trace" and not self.trace_path:
            _fail(owner, "trace_path", self.trace_path, "is required when workload.kind = 'trace'")
        if self.flash_crowds and self.kind in ("gamma", "trace"):
            _fail(
                owner,
                "flash_crowds",
                self.flash_crowds,
                "apply only to kind poisson, diurnal or mmpp (a renewal or replayed stream has no rate to scale)",
            )
        if not self.tenants:
            _fail(owner, "tenants", self.tenants, "must list at least one tenant")
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            _fail(owner, "tenants", names, "tenant names must be unique")
        _check_int(owner, "embedding_dim", self.embedding_dim, 2)
        _check_int(owner, "intents_per_topic", self.intents_per_topic, 1)
        for tenant in self.tenants:
            # A catalogue embeds every phrasing (float64 while built): refuse what no machine could hold.
            peak = tenant.n_intents * tenant.n_variants * self.embedding_dim * _CATALOGUE_BYTES_PER_VALUE
            if peak > CATALOGUE_LIMIT_BYTES:
                raise ConfigError(
                    f"tenants[{tenant.name}]: n_intents x n_variants x workload.embedding_dim = {tenant.n_intents:,} x "
                    f"{tenant.n_variants:,} x {self.embedding_dim:,} phrasing embeddings would take about "
                    f"{peak / 2**30:,.0f} GiB to build (at most {CATALOGUE_LIMIT_BYTES / 2**30:.0f} GiB): "
                    "make them smaller"
                )
        _check_nonneg(owner, "intent_spread", self.intent_spread)
        _check_nonneg(owner, "phrasing_noise", self.phrasing_noise)

    def peak_rate_rps(self) -> float:
        """An upper bound of the instantaneous arrival rate (used for thinning)."""
        base = self.rate_rps
        if self.kind == "diurnal":
            base *= 1 + self.amplitude
        elif self.kind == "mmpp":
            base = max(self.rate_rps, self.burst_rate_rps)
        flash = max((f.multiplier for f in self.flash_crowds), default=1.0)
        return base * max(flash, 1.0)


ServiceDistribution = Literal["deterministic", "exponential", "lognormal"]


@dataclass(frozen=True)
class BackendConfig:
    """A model backend (an LLM endpoint) that agents call.

    Service time is ``(ttft + tpot * output_tokens) * variation`` with
    ``ttft = ttft_base_s + ttft_per_prompt_token_s * prompt_tokens`` and
    ``tpot = tpot_base_s * (1 + tpot_concurrency_slope * (concurrency - 1))``, where
    ``concurrency`` counts requests in service on the backend when this one starts.
    ``variation`` has mean 1 and the chosen distribution (``service_cv`` for lognormal).
    The answer is good with probability ``1 / (1 + exp(-quality_slope * (capability -
    difficulty)))``. A request fails with probability ``failure_prob`` and times out when
    its service would exceed ``timeout_s``.
    """

    name: str = "medium"
    ttft_base_s: float = 0.25
    ttft_per_prompt_token_s: float = 0.0001
    tpot_base_s: float = 0.02
    tpot_concurrency_slope: float = 0.02
    service_distribution: ServiceDistribution = "lognormal"
    service_cv: float = 0.3
    usd_per_mtok_in: float = 1.0
    usd_per_mtok_out: float = 4.0
    capability: float = 0.6
    quality_slope: float = 8.0
    failure_prob: float = 0.001
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        owner = f"backends[{self.name}]"
        if not isinstance(self.name, str) or not self.name:
            _fail(owner, "name", self.name, "must be a non-empty string")
        for name in (
            "ttft_base_s",
            "ttft_per_prompt_token_s",
            "tpot_base_s",
            "tpot_concurrency_slope",
            "usd_per_mtok_in",
            "usd_per_mtok_out",
        ):
            _check_nonneg(owner, name, getattr(self, name))
        _check_choice(owner, "service_distribution", self.service_distribution, get_args(ServiceDistribution))
        _check_nonneg(owner, "service_cv", self.service_cv)
        _check_unit(owner, "capability", self.capability)
        _check_positive(owner, "quality_slope", self.quality_slope)
        if not (isinstance(self.failure_prob, (int, float)) and 0 <= self.failure_prob < 1):
            _fail(owner, "failure_prob", self.failure_prob, "must be in [0, 1)")
        _check_positive(owner, "timeout_s", self.timeout_s)


@dataclass(frozen=True)
class PoolConfig:
    """The agent pool: replicas, each with concurrent slots, in front of a bounded queue.

    A new replica becomes ready after a cold start drawn from a Gamma distribution of mean
    ``cold_start_mean_s`` and coefficient of variation ``cold_start_cv``. Scale-down
    drains busy replicas. Every replica-second from the start of provisioning to the end
    of draining is billed at ``usd_per_replica_hour``. A change of target within
    ``cooldown_s`` of the previous change is ignored.
    """

    initial_replicas: int = 4
    min_replicas: int = 1
    max_replicas: int = 32
    slots_per_replica: int = 4
    max_queue: int = 1_000
    queue_timeout_s: float = 30.0
    cold_start_mean_s: float = 30.0
    cold_start_cv: float = 0.3
    usd_per_replica_hour: float = 1.2
    cooldown_s: float = 0.0

    def __post_init__(self) -> None:
        owner = "pool"
        _check_int(owner, "min_replicas", self.min_replicas, 0)
        _check_int(owner, "max_replicas", self.max_replicas, 1)
        if self.max_replicas < self.min_replicas:
            _fail(owner, "max_replicas", self.max_replicas, f"must be >= pool.min_replicas ({self.min_replicas})")
        _check_int(owner, "initial_replicas", self.initial_replicas, 0)
        if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            _fail(
                owner,
                "initial_replicas",
                self.initial_replicas,
                f"must be within [min_replicas, max_replicas] = [{self.min_replicas}, {self.max_replicas}]",
            )
        _check_int(owner, "slots_per_replica", self.slots_per_replica, 1)
        _check_int(owner, "max_queue", self.max_queue, 0)
        _check_positive(owner, "queue_timeout_s", self.queue_timeout_s)
        _check_nonneg(owner, "cold_start_mean_s", self.cold_start_mean_s)
        _check_nonneg(owner, "cold_start_cv", self.cold_start_cv)
        _check_nonneg(owner, "usd_per_replica_hour", self.usd_per_replica_hour)
        _check_nonneg(owner, "cooldown_s", self.cooldown_s)


EvictionPolicy = Literal["lru", "lfu", "fifo", "s3fifo"]


@dataclass(frozen=True)
class CacheTierConfig:
    """An exact-match cache tier (memory, Redis-like, disk): capacity in entries."""

    name: str = "memory"
    capacity: int = 1_000
    latency_s: float = 0.001
    ttl_s: float | None = None
    eviction: EvictionPolicy = "lru"
    usd_per_entry_hour: float = 0.0

    def __post_init__(self) -> None:
        owner = f"cache.tiers[{self.name}]"
        _check_int(owner, "capacity", self.capacity, 1)
        _check_nonneg(owner, "latency_s", self.latency_s)
        if self.ttl_s is not None:
            _check_positive(owner, "ttl_s", self.ttl_s)
        _check_choice(owner, "eviction", self.eviction, get_args(EvictionPolicy))
        _check_nonneg(owner, "usd_per_entry_hour", self.usd_per_entry_hour)


@dataclass(frozen=True)
class SemanticCacheConfig:
    """The semantic tier: answers a request whose embedding is within ``threshold`` cosine
    similarity of a stored one. A hit on another intent is a false hit: a wrong answer."""

    enabled: bool = True
    capacity: int = 2_000
    latency_s: float = 0.01
    threshold: float = 0.9
    ttl_s: float | None = None
    usd_per_entry_hour: float = 0.0

    def __post_init__(self) -> None:
        owner = "cache.semantic"
        _check_int(owner, "capacity", self.capacity, 1)
        _check_nonneg(owner, "latency_s", self.latency_s)
        if not (isinstance(self.threshold, (int, float)) and 0.0 < self.threshold <= 1.0):
            _fail(owner, "threshold", self.threshold, "must be a cosine similarity in (0, 1]")
        if self.ttl_s is not None:
            _check_positive(owner, "ttl_s", self.ttl_s)
        _check_nonneg(owner, "usd_per_entry_hour", self.usd_per_entry_hour)


@dataclass(frozen=True)
class CacheConfig:
    """The cache hierarchy: exact tiers from fastest to slowest, then the semantic tier.

    Writes are inclusive: an admitted answer goes into the chosen tier and every slower
    one; a hit in a slower tier is promoted into the faster ones when ``promote_on_hit``.
    ``warm_top_intents`` pre-populates each tenant's most popular intents at start.
    """

    tiers: tuple[CacheTierConfig, ...] = ()
    semantic: SemanticCacheConfig = field(default_factory=lambda: SemanticCacheConfig(enabled=False))
    promote_on_hit: bool = True
    warm_top_intents: int = 0

    def __post_init__(self) -> None:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            _fail("cache", "tiers", names, "tier names must be unique")
        _check_int("cache", "warm_top_intents", self.warm_top_intents, 0)


FaultKind = Literal["backend_slowdown", "backend_outage", "cache_outage"]


@dataclass(frozen=True)
class FaultConfig:
    """A scheduled incident: ``target`` names a backend or a cache tier (or ``semantic``).

    A slowdown multiplies the backend's service time by ``factor``; an outage makes every
    call to it fail after ``outage_error_s``; a cache outage turns the tier's lookups into
    misses and drops its writes.
    """

    kind: FaultKind
    target: str
    start_s: float
    duration_s: float
    factor: float = 3.0
    outage_error_s: float = 0.05

    def __post_init__(self) -> None:
        owner = "faults"
        _check_choice(owner, "kind", self.kind, get_args(FaultKind))
        _check_nonneg(owner, "start_s", self.start_s)
        _check_positive(owner, "duration_s", self.duration_s)
        if not (isinstance(self.factor, (int, float)) and self.factor >= 1):
            _fail(owner, "factor", self.factor, "must be >= 1 (a slowdown)")
        _check_nonneg(owner, "outage_error_s", self.outage_error_s)


ScalingRule = Literal["static", "target_utilisation"]
RoutingRule = Literal["round_robin", "random", "cheapest", "strongest"]


@dataclass(frozen=True)
class ControlConfig:
    """Built-in decision rules, used when no controller is given to the platform.

    ``target_utilisation`` scales the pool every ``interval_s`` to
    ``ceil(ready * utilisation / target_utilisation)`` (the proportional rule behind the
    Kubernetes HPA) bounded by the pool limits.
    """

    interval_s: float = 15.0
    scaling: ScalingRule = "static"
    target_utilisation: float = 0.7
    routing: RoutingRule = "round_robin"

    def __post_init__(self) -> None:
        owner = "control"
        _check_positive(owner, "interval_s", self.interval_s)
        _check_choice(owner, "scaling", self.scaling, get_args(ScalingRule))
        if not (isinstance(self.target_utilisation, (int, float)) and 0 < self.target_utilisation <= 1):
            _fail(owner, "target_utilisation", self.target_utilisation, "must be in (0, 1]")
        _check_choice(owner, "routing", self.routing, get_args(RoutingRule))


@dataclass(frozen=True)
class ObjectiveConfig:
    """What one run is worth, in US dollars: the one number every verdict minimises.

    ``objective = cost + slo_miss_usd * SLO misses + bad_answer_usd * bad answers +
    drop_usd * (dropped requests, failures included, + requests unfinished at the end)``,
    where cost is everything billed (replicas, tokens, cache storage), an SLO miss is a
    finished request outside its tenant's SLO (drops and failures included) and a bad
    answer a completed request answered wrongly. A request still queued or in service when
    the run ends is priced as a drop: no policy gains by pushing work past the horizon.
    Environment rewards (their negative, step by step), ``servegym evaluate``, ``compare``,
    the leaderboard, tuning and the headline benchmark all compute it through
    :mod:`servegym.sim.objective`.

    A dropped or failed request is a user turned away. Priced only as an SLO miss it costs
    less than serving it (it uses no tokens and no slot time), so a policy could win by
    refusing work. ``drop_usd: null`` (the default) therefore derives the price from the
    scenario: one cent more than the most that serving any one request can cost — its
    largest possible prompt and output (the tenants' token caps, or a replayed trace's
    largest row) at the most expensive backend's prices, a slot held for the longest
    backend timeout, its answer stored in every billed cache tier for as long as it can
    stay, and a bad answer. Dropping is then strictly worse than serving at the
    most expensive backend, for every request. Set a number to price drops yourself.
    """

    slo_miss_usd: float = 0.01
    bad_answer_usd: float = 0.005
    drop_usd: float | None = None

    def __post_init__(self) -> None:
        owner = "objective"
        _check_nonneg(owner, "slo_miss_usd", self.slo_miss_usd)
        _check_nonneg(owner, "bad_answer_usd", self.bad_answer_usd)
        if self.drop_usd is not None:
            _check_nonneg(owner, "drop_usd", self.drop_usd)


@dataclass(frozen=True)
class ScenarioConfig:
    """A whole scenario: what arrives, what serves it, and for how long.

    A trace replay may leave its length to the trace: ``duration_s: null`` in a scenario
    file or mapping means "until the trace's last request has arrived", and
    :func:`scenario_from_dict` resolves it to a number when it builds the scenario (so
    ``duration_s`` is always a number here). The resolved length is the trace's span
    divided by ``workload.trace_speedup``, rounded up to the next whole control interval
    strictly after the last arrival: the last request arrives inside the run (one arriving
    exactly at the end would belong to the next run and be lost), the last interval is a
    full one, and the last requests have up to an interval to finish. Any number given
    (``duration_s=900``, ``--duration``) wins; ``null`` on a workload that replays no trace
    is refused.
    """

    name: str = "default"
    seed: int = 0
    # Nullable in YAML (the Hydra schema makes it Optional), resolved by scenario_from_dict.
    duration_s: float = field(default=3_600.0, metadata={"nullable": True})
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    backends: tuple[BackendConfig, ...] = (BackendConfig(),)
    pool: PoolConfig = field(default_factory=PoolConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    faults: tuple[FaultConfig, ...] = ()
    control: ControlConfig = field(default_factory=ControlConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def __post_init__(self) -> None:
        owner = "scenario"
        _check_int(owner, "seed", self.seed, 0)
        _check_positive(owner, "duration_s", self.duration_s)
        if not self.backends:
            _fail(owner, "backends", self.backends, "must list at least one backend")
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            _fail(owner, "backends", names, "backend names must be unique")
        n_tenants = len(self.workload.tenants)
        if self.cache.semantic.enabled and self.cache.semantic.capacity < n_tenants:
            _fail(
                "cache.semantic",
                "capacity",
                self.cache.semantic.capacity,
                f"must be >= the number of tenants ({n_tenants}): each tenant gets its own partition",
            )
        tiers = {t.name for t in self.cache.tiers} | {"semantic"}
        for i, fault in enumerate(self.faults):
            pool = names if fault.kind != "cache_outage" else sorted(tiers)
            if fault.target not in pool:
                _fail(f"faults[{i}]", "target", fault.target, f"must name one of {', '.join(pool)}")


T = TypeVar("T")

_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
"""A decimal number as YAML 1.2 writes it (``1e-05``, ``2E3``, ``.5``)."""


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Convert a YAML value into the annotated type, with errors that name ``path``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path} = {value!r} matches none of {options}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path} = {value!r} is invalid: must be one of {', '.join(map(str, get_args(tp)))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} = {value!r} is invalid: must be a list")
        (item_tp, _ellipsis) = get_args(tp)
        return tuple(_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} = {value!r} is invalid: must be a mapping of {tp.__name__} fields")
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} = {value!r} is invalid: must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} = {value!r} is invalid: must be an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()):
            # PyYAML reads YAML 1.1, where 1e-05 (no dot) is a string; YAML 1.2 and Hydra read a float.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} = {value!r} is invalid: must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} = {value!r} is invalid: must be a string")
        return value
    raise ConfigError(f"{path}: unsupported type {tp!r}")  # pragma: no cover - a bug in a dataclass


def _build(cls: type[T], data: Mapping[str, Any], path: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"{where}{unknown[0]}: unknown key in {cls.__name__}; allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None


def scenario_from_dict(data: Mapping[str, Any]) -> ScenarioConfig:
    """Build a validated :class:`ScenarioConfig` from a nested mapping (for example YAML).

    As in a scenario file, ``base: <shipped name or YAML path>`` starts from that scenario
    and the other keys override it (mappings merge key by key, lists are replaced whole):
    ``{"base": "default", "pool": {"max_replicas": 30}}``. Without ``base``, missing keys
    take the dataclasses' defaults. ``duration_s: None`` (YAML ``null``) becomes the
    length that replays the whole trace (:class:`ScenarioConfig`), so the scenario
    returned, written back with :func:`scenario_to_dict`, loads again as itself.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a scenario must be a mapping of keys, got {type(data).__name__}")
    if "base" in data:
        data = _merged(_base_data(data["base"]), {k: v for k, v in data.items() if k != "base"})
    if "duration_s" in data and data["duration_s"] is None:
        # Validate everything else first, with any length, then measure the trace.
        scenario = _build(ScenarioConfig, {**data, "duration_s": 1.0}, "")
        return dataclasses.replace(scenario, duration_s=trace_duration_s(scenario))
    return _build(ScenarioConfig, data, "")


MAX_RUN_REQUESTS = 50_000_000
"""The most requests one run may be expected to simulate. Request records stay in memory
(hundreds of bytes each): beyond this a run would take hours and tens of GB before it said
anything, so it is refused up front instead."""


def expected_requests(scenario: ScenarioConfig, trace: Trace | None = None) -> float:
    """How many requests a run of ``scenario`` is expected to simulate (the mean, not a bound).

    Rate processes: the mean rate times the duration (a two-state MMPP's mean weighs its
    rates by their mean sojourns; a diurnal cycle averages to ``rate_rps``), plus what the
    flash crowds add. A trace (``trace``, else the scenario's file): its requests that
    arrive before the end.
    """
    w = scenario.workload
    duration = scenario.duration_s
    if w.kind == "trace":
        from servegym.sim.workload import load_trace  # workload imports this module

        if trace is None:
            assert w.trace_path is not None
            trace = load_trace(w.trace_path, w.trace_schema)
        arrivals = trace.arrival_s / w.trace_speedup
        return float((arrivals < duration).sum())
    rate = w.rate_rps
    if w.kind == "mmpp":
        rate = (w.rate_rps * w.mean_calm_s + w.burst_rate_rps * w.mean_burst_s) / (w.mean_calm_s + w.mean_burst_s)
    crowds = sum(
        rate * (c.multiplier - 1.0) * max(0.0, min(c.duration_s, duration - c.start_s)) for c in w.flash_crowds
    )
    return rate * duration + crowds


MAX_RUN_INTERVALS = 10_000_000
"""The most control intervals one run may have: a decision and a record each, so a long run at
a tiny rate (1e13 s at 1e-7 requests/s) is as hopeless as a huge rate."""


def check_run_size(scenario: ScenarioConfig, trace: Trace | None = None) -> None:
    """Refuse a run expected to simulate more than :data:`MAX_RUN_REQUESTS` requests or
    :data:`MAX_RUN_INTERVALS` control intervals, naming what sets its size."""
    intervals = scenario.duration_s / scenario.control.interval_s
    if intervals > MAX_RUN_INTERVALS:
        raise ConfigError(
            f"duration_s = {scenario.duration_s:g} with control.interval_s = {scenario.control.interval_s:g} means "
            f"{intervals:.4g} control intervals, more than one run may simulate ({MAX_RUN_INTERVALS:,}); "
            "shorten duration_s or lengthen the interval"
        )
    n = expected_requests(scenario, trace)
    if n > MAX_RUN_REQUESTS:
        w = scenario.workload
        sized_by = "the trace's length" if w.kind == "trace" else f"workload.rate_rps = {w.rate_rps:g}"
        raise ConfigError(
            f"duration_s = {scenario.duration_s:g} with {sized_by} means about {n:.4g} requests, more than one run "
            f"may simulate ({MAX_RUN_REQUESTS:,}: hours of simulation and tens of GB of request records); "
            "shorten duration_s or lower the rate"
        )


def trace_duration_s(scenario: ScenarioConfig) -> float:
    """The length of a run that replays the scenario's whole trace (what ``duration_s: null`` means).

    The trace's span divided by the speed-up, rounded up to the next whole control
    interval strictly after the last arrival (see :class:`ScenarioConfig`). The trace is
    read once per file version (:func:`~servegym.sim.workload.load_trace`).
    """
    workload = scenario.workload
    if workload.kind != "trace":
        raise ConfigError(
            f"duration_s = None is invalid: null means 'until the replayed trace ends', but workload.kind = "
            f"{workload.kind!r} replays no trace: give the run's length in seconds"
        )
    from servegym.sim.workload import TraceError, load_trace  # workload imports this module

    assert workload.trace_path is not None  # WorkloadConfig requires it for kind 'trace'
    try:
        trace = load_trace(workload.trace_path, workload.trace_schema)
    except TraceError as exc:
        raise ConfigError(f"workload.trace_path: {exc}") from None
    last_s = trace.last_arrival_s / workload.trace_speedup
    interval = scenario.control.interval_s
    if last_s / interval >= MAX_RUN_INTERVALS:
        raise ConfigError(
            f"workload.trace_path: the trace's last request comes {last_s:.4g} s in (at trace_speedup "
            f"{workload.trace_speedup:g}): {last_s / interval:.4g} control intervals of {interval:g} s, more than one "
            f"run may simulate ({MAX_RUN_INTERVALS:,}); is a timestamp corrupt?"
        )
    intervals = math.floor(last_s / interval) + 1
    duration = intervals * interval
    if duration <= last_s:  # the division rounded down
        duration = (intervals + 1) * interval
    return float(duration)


def scenario_to_dict(scenario: ScenarioConfig) -> dict[str, Any]:
    """The scenario as plain nested dicts and lists, ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    result: dict[str, Any] = dataclasses.asdict(scenario, dict_factory=lambda kv: {k: plain(v) for k, v in kv})
    return result


SCENARIO_DIR = Path(__file__).resolve().parent.parent / "conf" / "scenario"


def _scenario_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """The file of a shipped scenario name, or a path (relative to ``relative_to``'s directory)."""
    path = Path(name_or_path)
    if path.is_dir():
        raise ConfigError(f"scenario {path} is a directory: give a scenario YAML file or a shipped name")
    if not path.suffix:
        shipped = SCENARIO_DIR / f"{name_or_path}.yaml"
        if not shipped.exists():
            available = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
            raise ConfigError(f"no shipped scenario named {name_or_path!r}; available: {available}")
        return shipped
    if relative_to is not None and not path.is_absolute():
        path = relative_to.parent / path
    if not path.exists():
        raise ConfigError(f"scenario file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"scenario {path} is a directory, not a YAML file")
    return path


def _merged(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(dict(out[key]), value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""


def _no_duplicate_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} is given twice in one mapping (first on line {seen[key] + 1}); keep one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def _undecodable(path: Path, exc: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8 text, by line: ``line 3: byte 0xff is not UTF-8 text``."""
    line = path.read_bytes()[: exc.start].count(b"\n") + 1
    return f"line {line}: byte 0x{exc.object[exc.start]:02x} is not UTF-8 text (is this a YAML file?)"


def _scenario_data(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A scenario file's mapping, with its ``base:`` (a shipped name or a path) merged in underneath."""
    if path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(f"{path}: base scenarios form a cycle: {cycle}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {_undecodable(path, exc)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None)
        if mark is not None and problem:
            raise ConfigError(f"{path}, line {mark.line + 1}: not valid YAML: {problem}") from None
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        # An empty file would silently run the dataclass defaults (one tenant, no SLO worth the name).
        raise ConfigError(
            f"{path} holds no scenario (it is empty or only comments): write its keys, or start from a shipped "
            "one with 'base: default'"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a scenario file must hold a mapping, not {type(data).__name__}")
    if "base" not in data:
        return data
    return _merged(_base_data(data.pop("base"), f"{path}: ", path, (*chain, path.resolve())), data)


def _base_data(
    base: Any, where: str = "", relative_to: Path | None = None, chain: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """The mapping of the scenario a ``base:`` names (a shipped name, or a path relative to ``relative_to``).

    ``where`` prefixes the errors about ``base`` itself (the file that names it).
    """
    if not isinstance(base, (str, Path)) or not str(base):
        raise ConfigError(f"{where}base = {base!r} is invalid: give a shipped scenario name or a YAML path")
    try:
        base_path = _scenario_path(base, relative_to=relative_to)
    except ConfigError as exc:
        raise ConfigError(f"{where}base: {exc}") from None
    return _scenario_data(base_path, chain)


def load_scenario(name_or_path: str | Path, overrides: Sequence[str] = ()) -> ScenarioConfig:
    """Load a shipped scenario by name (``default``) or any scenario YAML file by path.

    A file may start from another scenario with ``base: <shipped name or path>``: its
    keys then override the base's (mappings merge key by key, lists such as ``backends``
    are replaced whole), so ``{base: default, pool: {max_replicas: 30}}`` is the default
    scenario with a larger pool. Without ``base``, missing keys take the dataclasses'
    defaults. ``overrides`` (``dotted.key=value``) are applied to the file's contents
    *before* the scenario is validated, so a scenario that is incomplete on its own
    (``trace_replay`` needs ``workload.trace_path``) loads once the override supplies
    the missing value. A file that follows its trace (``duration_s: null``) follows it
    after the overrides too (``workload.trace_speedup=2`` doubles the run) unless they
    set ``duration_s``.
    """
    path = _scenario_path(name_or_path)
    data = _scenario_data(path)
    try:
        complete = scenario_from_dict(copy.deepcopy(data))
    except ConfigError as exc:
        if not overrides:
            raise ConfigError(f"{path}: {exc}") from None
    else:
        follows_trace = "duration_s" in data and data["duration_s"] is None
        if follows_trace and overrides and not any(item.partition("=")[0] == "duration_s" for item in overrides):
            # The file follows its trace: measure it again once the overrides have changed it.
            overrides = [*overrides, "duration_s=null"]
        return apply_overrides(complete, overrides)
    # The file alone is incomplete: let the overrides fill it in, then validate. Unknown
    # names still fail there, naming the key.
    for item in overrides:
        _set_override(data, item, create_missing=True)
    try:
        return scenario_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _set_override(data: dict[str, Any], item: str, create_missing: bool = False) -> None:
    """Set ``dotted.key=value`` (value parsed as YAML) in the nested ``data`` in place."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc.__class__.__name__})") from None
    node: Any = data
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {key}: {where} must index an existing item (0..{len(node) - 1})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if part not in node:
                if not create_missing:
                    raise ConfigError(f"override {key}: unknown key {where}; allowed: {', '.join(sorted(node))}")
                node[part] = value if last else {}
            if last:
                node[part] = value
            else:
                node = node[part]
        else:
            raise ConfigError(f"override {key}: {'.'.join(parts[:depth])} is a value, not a mapping")


def apply_overrides(scenario: ScenarioConfig, overrides: Sequence[str]) -> ScenarioConfig:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a scenario.

    List items are addressed by index: ``backends.0.capability=0.9``. A built scenario's
    ``duration_s`` is a number even when it came from its trace; ``duration_s=null``
    measures the (overridden) trace again.
    """
    data = scenario_to_dict(scenario)
    for item in overrides:
        _set_override(data, item)
    return scenario_from_dict(data)
