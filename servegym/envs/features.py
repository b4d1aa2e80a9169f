"""Observation features shared by the environments and the policy-to-controller adapter.

Each decision has one feature layout, built by one function from the platform's state,
so a policy sees the same vector whether it acts inside a Gymnasium loop or directly as
the simulator's controller. Feature names are part of the interface: policies look
features up by name (``layout.index["utilisation"]``), never by hard-coded position.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

import numpy as np

from servegym.sim.config import ScenarioConfig
from servegym.sim.platform import Platform
from servegym.sim.telemetry import IntervalMetrics

__all__ = [
    "AdmissionFeatures",
    "KeyStats",
    "Layout",
    "RoutingFeatures",
    "admission_features",
    "admission_layout",
    "interval_features",
    "interval_layout",
    "routing_features",
    "routing_layout",
]

# A finite stand-in for "unbounded" (counts and rates with no physical cap): Gymnasium
# and SB3 warn about infinite bounds, and nothing real comes near it.
_BIG = 1e9
NEVER_SEEN_AGE_S = 1e7


@dataclass(frozen=True)
class Layout:
    """Names and bounds of an observation vector, in order."""

    names: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {n: i for i, n in enumerate(self.names)})

    def __len__(self) -> int:
        return len(self.names)


def _layout(spec: list[tuple[str, float, float]]) -> Layout:
    return Layout(
        tuple(n for n, _, _ in spec),
        np.array([lo for _, lo, _ in spec], dtype=np.float32),
        np.array([hi for _, _, hi in spec], dtype=np.float32),
    )


def _max_latency_s(scenario: ScenarioConfig) -> float:
    """No request lives longer than the lookups, the queue timeout and the slowest call."""
    lookups = sum(t.latency_s for t in scenario.cache.tiers) + scenario.cache.semantic.latency_s
    return lookups + scenario.pool.queue_timeout_s + max(b.timeout_s for b in scenario.backends)


def interval_layout(scenario: ScenarioConfig) -> Layout:
    """Features of a control interval (scaling and threshold decisions).

    Latencies are 0 when nothing completed in the interval; ``time_of_day_*`` encode the
    simulated time modulo 24 h on the unit circle.
    """
    r = float(scenario.pool.max_replicas)
    latency = _max_latency_s(scenario)
    return _layout(
        [
            ("arrival_rate_rps", 0.0, _BIG),
            ("queue_len", 0.0, float(scenario.pool.max_queue)),
            ("utilisation", 0.0, 1.0),
            ("ready_replicas", 0.0, r),
            ("provisioning_replicas", 0.0, r),
            ("draining_replicas", 0.0, r),
            ("target_replicas", 0.0, r),
            ("latency_p50_s", 0.0, latency),
            ("latency_p95_s", 0.0, latency),
            ("slo_violation_rate", 0.0, 1.0),
            ("hit_rate", 0.0, 1.0),
            ("semantic_threshold", 0.0, 1.0),
            ("time_of_day_sin", -1.0, 1.0),
            ("time_of_day_cos", -1.0, 1.0),
        ]
    )


def interval_features(m: IntervalMetrics) -> np.ndarray:
    """The interval layout's vector for one interval's metrics."""
    finished = m.completed + m.dropped
    angle = 2.0 * math.pi * (m.time_s % 86_400.0) / 86_400.0
    return np.array(
        [
            m.arrival_rate_rps,
            m.queue_len,
            min(max(m.utilisation, 0.0), 1.0),
            m.ready_replicas,
            m.provisioning_replicas,
            m.draining_replicas,
            m.target_replicas,
            0.0 if math.isnan(m.latency_p50_s) else m.latency_p50_s,
            0.0 if math.isnan(m.latency_p95_s) else m.latency_p95_s,
            min(m.slo_violations / finished, 1.0) if finished else 0.0,
            min(m.hit_rate, 1.0),
            0.0 if math.isnan(m.semantic_threshold) else m.semantic_threshold,
            math.sin(angle),
            math.cos(angle),
        ],
        dtype=np.float32,
    )


def routing_layout(platform: Platform) -> Layout:
    """Features of a routing decision: the request, then one block per backend.

    ``busy_<b>`` counts calls in progress on backend ``b``; ``capability_<b>`` and
    ``usd_per_mtok_out_<b>`` are its published capability and output price.
    """
    scenario = platform.scenario
    spec: list[tuple[str, float, float]] = [(f"tenant_{t.name}", 0.0, 1.0) for t in scenario.workload.tenants]
    spec += [
        ("log_prompt_tokens", 0.0, _max_log_tokens(scenario, "max_prompt_tokens")),
        ("difficulty", 0.0, 1.0),
        ("queue_len", 0.0, float(scenario.pool.max_queue)),
    ]
    slots = float(scenario.pool.max_replicas * scenario.pool.slots_per_replica)
    for b in platform.backends:
        price = b.cfg.usd_per_mtok_out
        spec += [
            (f"busy_{b.name}", 0.0, slots),
            (f"capability_{b.name}", 0.0, 1.0),
            (f"usd_per_mtok_out_{b.name}", 0.0, price),
        ]
    return _layout(spec)


def _max_log_tokens(scenario: ScenarioConfig, field_name: str) -> float:
    """log1p of the largest token count: the tenant caps, and at least 1e7 for replayed traces."""
    cap = max(getattr(t.tokens, field_name) for t in scenario.workload.tenants)
    return math.log1p(max(cap, 10_000_000))


def routing_features(platform: Platform, request: int) -> np.ndarray:
    """The routing layout's vector for ``request`` (which holds a pool slot now)."""
    R = platform.requests
    values = [0.0] * len(platform.scenario.workload.tenants)
    values[R.tenant[request]] = 1.0
    values += [math.log1p(R.prompt_tokens[request]), R.difficulty[request], len(platform.pool.queue)]
    for b in platform.backends:
        values += [b.busy, b.cfg.capability, b.cfg.usd_per_mtok_out]
    return np.array(values, dtype=np.float32)


class RoutingFeatures:
    """:func:`routing_features` for one platform, with its constant part computed once.

    An environment builds one per platform and calls it at every routing decision (tens
    of thousands per episode): the backends' capabilities and prices sit in a template
    vector, so each call copies it and writes only what changes.
    """

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._n_tenants = n = len(platform.scenario.workload.tenants)
        template = [0.0] * (n + 3)
        for b in platform.backends:
            template += [0.0, b.cfg.capability, b.cfg.usd_per_mtok_out]
        self._template = np.array(template, dtype=np.float32)
        self._busy_at = [(n + 3 + 3 * k, b) for k, b in enumerate(platform.backends)]

    def __call__(self, request: int) -> np.ndarray:
        """The routing layout's vector for ``request``, equal to ``routing_features(platform, request)``."""
        p = self.platform
        R = p.requests
        n = self._n_tenants
        values = self._template.copy()
        values[R.tenant[request]] = 1.0
        values[n] = math.log1p(R.prompt_tokens[request])
        values[n + 1] = R.difficulty[request]
        values[n + 2] = len(p.pool.queue)
        for at, backend in self._busy_at:
            values[at] = backend.busy
        return values


def admission_layout(platform: Platform) -> Layout:
    """Features of an admission decision (writing a fresh answer into the caches).

    ``key_requests`` counts the arrivals of the same phrasing (tenant, intent, variant)
    so far, this request's included (as TinyLFU's doorkeeper counts), and
    ``log_key_age_s`` is the log of the seconds from the phrasing's previous arrival to
    this request's arrival (a large value when this is its first): the frequency and
    recency signals of admission policies.
    ``fill_<level>`` is each cache level's occupancy as a fraction of its capacity.
    """
    spec: list[tuple[str, float, float]] = [(f"tenant_{t.name}", 0.0, 1.0) for t in platform.scenario.workload.tenants]
    spec += [
        ("log_prompt_tokens", 0.0, _max_log_tokens(platform.scenario, "max_prompt_tokens")),
        ("log_output_tokens", 0.0, _max_log_tokens(platform.scenario, "max_output_tokens")),
        ("difficulty", 0.0, 1.0),
        ("good_answer", 0.0, 1.0),
        ("key_requests", 0.0, _BIG),
        ("log_key_age_s", 0.0, math.log1p(NEVER_SEEN_AGE_S)),
    ]
    spec += [(f"fill_{name}", 0.0, 1.0) for name in platform.level_names]
    return _layout(spec)


def admission_features(platform: Platform, request: int, key_requests: int, key_age_s: float) -> np.ndarray:
    """The admission layout's vector; the caller tracks the key's frequency and age."""
    R = platform.requests
    n_tenants = len(platform.scenario.workload.tenants)
    fills = [len(t.store) / t.cfg.capacity for t in platform.tiers]
    if platform.semantic is not None:
        fills.append(len(platform.semantic) / platform.semantic.cfg.capacity)
    out = np.zeros(n_tenants + 6 + len(fills), dtype=np.float32)
    out[R.tenant[request]] = 1.0
    out[n_tenants : n_tenants + 6] = (
        math.log1p(R.prompt_tokens[request]),
        math.log1p(R.output_tokens[request]),
        R.difficulty[request],
        float(R.good[request]),
        key_requests,
        math.log1p(min(key_age_s, NEVER_SEEN_AGE_S)),
    )
    out[n_tenants + 6 :] = fills
    return out


class AdmissionFeatures:
    """:func:`admission_features` for one platform as a list of floats, capacities looked up once.

    ``values(request, key_requests, key_age_s)`` returns the admission layout's values in
    order (float32 conversion is the caller's, so an environment can place them inside a
    larger observation with one conversion).
    """

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self._n_tenants = len(platform.scenario.workload.tenants)
        self._no_tenant = [0.0] * self._n_tenants
        # Each tier's entries mapping: len() of it is C-speed, len() of the store a Python call.
        self._stores = [(t.store.entries, float(t.cfg.capacity)) for t in platform.tiers]
        semantic = platform.semantic
        self._semantic = (semantic, float(semantic.cfg.capacity)) if semantic is not None else None

    def values(self, request: int, key_requests: int, key_age_s: float) -> list[float]:
        """The admission layout's values for ``request``; the caller tracks the key's frequency and age."""
        R = self.platform.requests
        values = self._no_tenant.copy()
        values[R.tenant[request]] = 1.0
        values += (
            math.log1p(R.prompt_tokens[request]),
            math.log1p(R.output_tokens[request]),
            R.difficulty[request],
            1.0 if R.good[request] else 0.0,
            key_requests,
            math.log1p(key_age_s if key_age_s < NEVER_SEEN_AGE_S else NEVER_SEEN_AGE_S),
        )
        for entries, capacity in self._stores:
            values.append(len(entries) / capacity)
        if self._semantic is not None:
            semantic, capacity = self._semantic
            values.append(semantic.size / capacity)
        return values


class KeyStats:
    """Frequency and recency of each phrasing among arrivals so far, updated incrementally.

    ``observe(platform)`` consumes the arrivals since its last call (amortised O(1) per
    request); ``of(key, request)`` gives (arrivals of ``key`` so far, seconds from the
    key's previous arrival to ``request``'s, :data:`NEVER_SEEN_AGE_S` for a first one).
    The gap is taken at the request's own arrival: an admission decision comes after
    the request was served, and the time since the key's latest arrival would then be
    this request's own latency.
    Keys are dense (``0 .. platform.n_keys - 1``), so the counts live in flat arrays
    indexed by key: a caching env observes every arrival, and indexing costs far less
    than hashing into a dict of hundreds of thousands of mostly cold keys. ``array``
    rather than ``list``: the values sit inline (no pointer to chase at a random key), and
    the cyclic garbage collector has nothing to traverse in them.
    """

    def __init__(self) -> None:
        self.count = array("q")  # sized at the first observe(), when the key space is known
        self.last_s = array("d")
        self.gap_s = array("d")  # per request: seconds since its key's previous arrival
        self.seen = 0

    def observe(self, platform: Platform) -> None:
        arrived, seen = platform.requests.arrived, self.seen
        if arrived == seen:
            return
        count, last_s = self.count, self.last_s
        if not count:
            count.frombytes(bytes(8 * platform.n_keys))
            last_s.extend(array("d", [math.nan]) * platform.n_keys)
        R = platform.requests
        keys, arrival_s, gap_s = R.key, R.arrival_s, self.gap_s
        for i in range(seen, arrived):
            key = keys[i]
            t = arrival_s[i]
            n = count[key]
            gap_s.append(t - last_s[key] if n else NEVER_SEEN_AGE_S)
            count[key] = n + 1
            last_s[key] = t
        self.seen = arrived

    def of(self, key: int, request: int) -> tuple[int, float]:
        """(Arrivals of ``key`` so far, seconds from its previous arrival to ``request``'s); ``request`` has arrived."""
        return self.count[key], self.gap_s[request]
