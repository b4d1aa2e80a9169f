"""The platform: wires workload, caches, pool and backends into one request lifecycle.

A request's story::

    arrive -> exact tiers (fastest first) -> semantic tier -> hit: answered after the
    lookup latency | miss: join the pool queue -> get a slot -> routing decision ->
    call a backend -> on success, admission decision -> write into the caches

Decision points call a :class:`Controller`: ``route`` per request, ``admit`` per cache
write, ``scale`` and ``semantic_threshold`` per control interval. A controller may
answer :data:`DEFER` instead of an action: the platform then parks the decision in
:attr:`Platform.pending`, and :meth:`Platform.step_to_decision` /
:meth:`Platform.resolve` let a Gymnasium environment pause the simulation at the
decision and resume it when its agent acts. Simulated time does not move in between.

The per-request path avoids SimPy processes and ``Event`` objects: each arrival, cache
answer, pool entry and backend call is one ``(time, priority, id, handler, request)``
entry in SimPy's event queue, and request attributes live in columnar lists indexed by request id. The
platform's :class:`Engine` (a ``simpy.Environment`` subclass) knows how to process such
an entry, so ``env.run()``, ``env.step()`` and every SimPy process work as usual; the
per-request methods read the engine's clock attribute (``_now``, which the ``now``
property returns) to save a property call each.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, Final, Protocol

import numpy as np
import simpy
from simpy.events import NORMAL

from servegym.sim.backends import FAILED_ERROR as BACKEND_ERROR
from servegym.sim.backends import OK, Backend
from servegym.sim.cache import ExactTier, SemanticTier
from servegym.sim.config import ControlConfig, ScenarioConfig, check_run_size
from servegym.sim.faults import schedule_faults
from servegym.sim.objective import Prices, resolve_prices
from servegym.sim.pool import Pool
from servegym.sim.random import Streams
from servegym.sim.telemetry import (
    COMPLETED,
    DROPPED_QUEUE_FULL,
    DROPPED_QUEUE_TIMEOUT,
    FAILED_ERROR,
    FAILED_TIMEOUT,
    KPI_COLUMNS,
    Incident,
    IntervalMetrics,
    Requests,
    compute_kpis,
)
from servegym.sim.workload import RequestBatch, Trace, Workload

__all__ = ["ADMIT_NONE", "DEFER", "BuiltinController", "Controller", "Decision", "Engine", "Platform"]


class _Defer:
    def __repr__(self) -> str:
        return "DEFER"


DEFER: Final[Any] = _Defer()
"""Returned by a controller to postpone a decision until :meth:`Platform.resolve`."""

ADMIT_NONE: Final = -1
"""Admission answer that stores nothing. Any other answer ``L`` writes levels ``L..``."""


class Controller(Protocol):
    """Answers the platform's decision points. Each method may return :data:`DEFER`."""

    def route(self, platform: Platform, request: int) -> int:
        """Index of the backend that serves ``request`` (it holds a pool slot now)."""

    def admit(self, platform: Platform, request: int) -> int:
        """The fastest cache level to write ``request``'s answer into, or :data:`ADMIT_NONE`.

        Levels are the exact tiers in order, then the semantic tier; writes are
        inclusive, so level ``L`` also fills every slower level.
        """

    def scale(self, platform: Platform, metrics: IntervalMetrics) -> int | None:
        """Desired replicas after this interval, or ``None`` to leave the pool alone."""

    def semantic_threshold(self, platform: Platform, metrics: IntervalMetrics) -> float | None:
        """New cosine-similarity threshold of the semantic tier, or ``None`` to keep it."""


class BuiltinController:
    """The simulator's own simple rules, chosen by :class:`ControlConfig`.

    Routing: round robin, uniform random, cheapest (lowest output price) or strongest
    (highest capability). Scaling: static, or the proportional target-utilisation rule
    ``ceil(ready * utilisation / target)`` that the Kubernetes HPA is built on (without
    HPA's tolerance and stabilisation; see ``servegym.policies`` for the full HPA).
    Admission: everything, into every level. Threshold: as configured.
    """

    def __init__(self, control: ControlConfig, scenario: ScenarioConfig, rng: np.random.Generator) -> None:
        self.control = control
        self.rng = rng
        self.n_backends = len(scenario.backends)
        self._next = 0
        self.cheapest = min(range(self.n_backends), key=lambda b: scenario.backends[b].usd_per_mtok_out)
        self.strongest = max(range(self.n_backends), key=lambda b: scenario.backends[b].capability)

    def route(self, platform: Platform, request: int) -> int:
        rule = self.control.routing
        if rule == "round_robin":
            b = self._next
            self._next = (b + 1) % self.n_backends
            return b
        if rule == "random":
            return int(self.rng.integers(self.n_backends))
        return self.cheapest if rule == "cheapest" else self.strongest

    def admit(self, platform: Platform, request: int) -> int:
        return 0

    def scale(self, platform: Platform, metrics: IntervalMetrics) -> int | None:
        if self.control.scaling == "static":
            return None
        if metrics.ready_replicas == 0:
            return max(1, metrics.target_replicas) if metrics.queue_len or metrics.arrivals else None
        # The small epsilon keeps 4 * 0.7 / 0.7 from rounding up to 5.
        return math.ceil(metrics.ready_replicas * metrics.utilisation / self.control.target_utilisation - 1e-9)

    def semantic_threshold(self, platform: Platform, metrics: IntervalMetrics) -> float | None:
        return None


@dataclass(slots=True)
class Decision:
    """A deferred decision: ``kind`` is ``route``, ``admit``, ``scale`` or ``threshold``.

    ``request`` is the request id (``-1`` for interval decisions); ``metrics`` the
    interval's metrics (``None`` for per-request decisions).
    """

    kind: str
    request: int
    metrics: IntervalMetrics | None
    event: simpy.Event | None = None


class Engine(simpy.Environment):
    """SimPy's environment with a second, cheaper kind of event for the per-request path.

    ``env.timeout(delay, request).callbacks.append(handler)`` builds a full ``Timeout``
    (environment, delay, value, callback list, scheduling call) for each of the 2-3
    events a request lives through. :meth:`after` instead pushes a five-field entry
    ``(time, priority, event id, handler, request)`` onto SimPy's event queue, timed,
    prioritised and numbered exactly as ``schedule()`` would a ``Timeout``, so ties
    resolve in the same order (ids are unique, so a comparison never reaches the
    fourth field). :meth:`step` (which ``run()`` calls) processes such an entry by
    calling ``handler(request)``, and hands SimPy's four-field entries to its own ``step()``.
    """

    def after(self, delay: float, handler: Callable[[int], None], request: int) -> None:
        """Call ``handler(request)`` in ``delay`` seconds (``delay >= 0``)."""
        queue: list[Any] = self._queue  # SimPy types it as holding Events only
        heappush(queue, (self._now + delay, NORMAL, next(self._eid), handler, request))

    def step(self) -> None:
        """Process the next event: a per-request entry here, a SimPy event by SimPy."""
        queue: list[Any] = self._queue
        if queue and len(queue[0]) == 5:
            self._now, _, _, handler, request = heappop(queue)
            handler(request)
        else:
            super().step()


class Platform:
    """One simulated platform run for a scenario, a seed and a controller.

    >>> from servegym.sim.config import ScenarioConfig
    >>> p = Platform(ScenarioConfig(duration_s=60.0))
    >>> kpis = p.run()
    >>> kpis["all"]["requests"] == p.arrived
    True
    """

    def __init__(
        self,
        scenario: ScenarioConfig,
        controller: Controller | None = None,
        *,
        seed: int | None = None,
        trace: Trace | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self.streams = Streams(self.seed)
        self.env = Engine()
        # Engine.after and the per-request handlers, bound once: 2-3 of them are scheduled
        # per request, and reading a method off the instance builds a new bound method.
        self._after = self.env.after
        self._h_arrival = self._on_arrival
        self._h_enter_pool = self._enter_pool
        self._h_cache_answer = self._on_cache_answer
        self._h_call_done = self._on_call_done
        self.controller: Controller = controller or BuiltinController(
            scenario.control, scenario, self.streams["controller"]
        )
        # The world (intent catalogues) is the scenario's; the run's seed draws the requests.
        self.workload = Workload(scenario.workload, self.streams, trace, catalogue_seed=scenario.seed)
        # An astronomically long run is refused before it starts, not left to hang.
        check_run_size(scenario, self.workload.trace)
        replayed = self.workload.trace
        self.prices: Prices = resolve_prices(
            scenario,
            replayed.prompt_tokens if replayed is not None else None,
            replayed.output_tokens if replayed is not None else None,
        )
        """The objective's prices (:mod:`servegym.sim.objective`), the drop price derived when not set."""
        self.backends = [Backend(b) for b in scenario.backends]
        self.tiers = [ExactTier(t) for t in scenario.cache.tiers]
        sem = scenario.cache.semantic
        self.semantic = (
            SemanticTier(sem, [t.weight for t in scenario.workload.tenants], scenario.workload.embedding_dim)
            if sem.enabled
            else None
        )
        self.level_names = [t.name for t in self.tiers] + (["semantic"] if self.semantic is not None else [])
        self.n_levels = len(self.level_names)
        self._billed_levels: list[ExactTier | SemanticTier] = [t for t in self.tiers if t.billed]
        if self.semantic is not None and self.semantic.billed:
            self._billed_levels.append(self.semantic)
        self.pool = Pool(scenario.pool, self.env, self.streams["cold_start"], self._dispatch)
        self.requests = Requests()
        self.incidents: list[Incident] = []
        self.intervals: list[IntervalMetrics] = []
        self.pending: deque[Decision] = deque()
        self._promote = scenario.cache.promote_on_hit
        self._n_backends = len(self.backends)
        # Per exact tier: (level, tier, its stored entries, its store's get, lookup latency
        # up to and including it). Most lookups miss, and a membership test on the
        # entries costs far less than a call to the store's get().
        reached = np.cumsum([0.0] + [t.latency_s for t in self.tiers]).tolist()
        self._lookups: list[tuple[int, ExactTier, Mapping[int, Any], Callable[[int], Any], float]] = [
            (k, t, t.store.entries, t.store.get, reached[k + 1]) for k, t in enumerate(self.tiers)
        ]
        # Per admission level: what a write from that level down touches in each exact tier.
        self._writes: list[list[tuple[ExactTier, Mapping[int, Any], int, Callable[[int, Any], None], float, bool]]] = [
            [(t, t.store.entries, t.store.capacity, t.store.put, t.ttl_s, t.billed) for t in self.tiers[k:]]
            for k in range(len(self.tiers) + 1)
        ]
        self._miss_latency_s = reached[-1] + (self.semantic.latency_s if self.semantic is not None else 0.0)
        self._embeddings = self.workload.embeddings
        self._failing: dict[int, int] = {}  # calls in progress that will fail: request -> status
        tenants = scenario.workload.tenants
        sizes = [t.n_intents * t.n_variants for t in tenants]
        self._key_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._n_variants = np.array([t.n_variants for t in tenants], dtype=np.int64)
        self.n_keys = int(sum(sizes))
        """Size of the key space: a request's ``key`` (tenant, intent, phrasing) is in ``0 .. n_keys - 1``."""

        self.completed = 0
        self.dropped = 0
        self.hits_in_flight = 0
        self.calls_in_flight = 0
        self.entering = 0
        self.token_usd = 0.0
        self.hits = [0] * self.n_levels
        self.false_hits = 0
        self.slo_violations = 0  # finished requests that missed their tenant's SLO (drops included)
        self.good_answers = 0
        self._slo_s = [t.slo_latency_s for t in scenario.workload.tenants]
        self._latencies: list[float] = []  # of requests completed in the current interval
        self._iv = _IntervalStart(self)

        self._batches: Iterator[RequestBatch] = self.workload.batches(scenario.duration_s)
        tiers: dict[str, ExactTier | SemanticTier] = {t.name: t for t in self.tiers}
        if self.semantic is not None:
            tiers["semantic"] = self.semantic
        schedule_faults(self.env, scenario.faults, self.backends, tiers, self.incidents)
        if scenario.cache.warm_top_intents:
            self._warm(scenario.cache.warm_top_intents)
        self._schedule_arrival(0)
        self.env.process(self._control())

    @property
    def arrived(self) -> int:
        """Requests that have arrived so far."""
        return self.requests.arrived

    # -- time ----------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """Simulated time in seconds."""
        return float(self.env._now)

    def run(self, until: float | None = None) -> dict[str, dict[str, float]]:
        """Run to ``until`` (default: the scenario's end) with a controller that never defers."""
        if self.step_to_decision(until) is not None:
            raise RuntimeError(
                f"{len(self.pending)} decisions are waiting: a controller returned DEFER; "
                "drive the platform with step_to_decision() and resolve() instead of run()"
            )
        return self.kpis()

    # -- the event queue ----------------------------------------------------------------------
    def step_to_decision(self, until: float | None = None) -> Decision | None:
        """Advance until a deferred decision waits (returned) or time ``until`` is reached (None)."""
        end = self.scenario.duration_s if until is None else until
        env = self.env
        pending = self.pending
        # Engine.peek() and Engine.step() inlined: the simulator's hottest loop. Reading
        # SimPy's queue (a heap of (time, priority, event id, event)) and setting its
        # clock is what Environment.step() itself does.
        queue: list[Any] = env._queue
        while not pending:
            # Like run(until=end): events at exactly ``end`` belong to the next run.
            if not queue or queue[0][0] >= end:
                if env._now < end:
                    env.run(until=end)
                if end >= self.scenario.duration_s:
                    self._close_last_interval(end)
                return None
            if len(queue[0]) == 5:
                env._now, _, _, handler, request = heappop(queue)
                handler(request)
            else:
                env.step()
        return pending[0]

    def resolve(self, decision: Decision, action: Any) -> None:
        """Carry out ``action`` for the oldest pending ``decision`` and continue its story."""
        if not self.pending or self.pending[0] is not decision:
            raise ValueError("resolve() must answer the oldest pending decision, the one step_to_decision() returned")
        # Validate before taking the decision off the queue, so a bad action can be retried.
        if decision.kind == "route":
            fast = type(action) is int and 0 <= action < self._n_backends
            backend = action if fast else self._check_backend(action)
            self.pending.popleft()
            self._call(decision.request, backend)
        elif decision.kind == "admit":
            fast = type(action) is int and ADMIT_NONE <= action < self.n_levels
            level = action if fast else self._check_level(action)
            self.pending.popleft()
            self._insert(decision.request, level)
        else:
            if action is not None:
                action = self._check_replicas(action) if decision.kind == "scale" else self._check_threshold(action)
            self.pending.popleft()
            assert decision.event is not None
            decision.event.succeed(action)

    # -- arrivals and caches ---------------------------------------------------------------
    def _load_batch(self) -> bool:
        batch = next(self._batches, None)
        if batch is None:
            return False
        keys = self._key_offset[batch.tenant] + batch.intent * self._n_variants[batch.tenant] + batch.variant
        self.requests.extend(batch, keys)
        return True

    def _schedule_arrival(self, i: int) -> None:
        """Wake up when request ``i`` arrives (if the workload has one more request)."""
        R = self.requests
        if i < R.n or self._load_batch():
            delay = R.arrival_s[i] - self.env._now
            self._after(delay if delay > 0 else 0.0, self._h_arrival, i)

    def _on_arrival(self, i: int) -> None:
        """Request ``i`` arrives: look it up in the caches, fastest first; a miss heads for the pool."""
        self._schedule_arrival(i + 1)
        R = self.requests
        R.arrived += 1
        now = self.env._now
        key = R.key[i]
        for level, tier, stored, get, latency in self._lookups:
            if key not in stored or tier.down:
                continue
            entry = get(key)
            if entry[3] <= now:
                tier.expire(key, now)
                continue
            if self._promote:
                for upper in self.tiers[:level]:
                    if not upper.down:
                        # The copy lives by the upper tier's TTL, never past the entry it copies.
                        upper.put(key, (*entry[:3], min(entry[3], now + upper.ttl_s)), now)
            R.source_tenant[i] = entry[0]
            R.good[i] = entry[2]
            self._answer_from_cache(i, level, latency)
            return
        latency = self._miss_latency_s
        sem = self.semantic
        if sem is not None and not sem.down:
            tenant = R.tenant[i]
            intent = R.intent[i]
            row = sem.lookup(tenant, self._embeddings[tenant][intent, R.variant[i]], now)
            if row >= 0:
                false_hit = sem.intent[tenant][row] != intent
                R.source_tenant[i] = tenant
                R.false_hit[i] = false_hit
                R.good[i] = sem.good[tenant][row] and not false_hit
                self.false_hits += false_hit
                self._answer_from_cache(i, self.n_levels - 1, latency)
                return
        R.lookup_s[i] = latency
        self.entering += 1
        if latency > 0:
            self._after(latency, self._h_enter_pool, i)
        else:
            self._enter_pool(i)

    def _answer_from_cache(self, i: int, level: int, latency: float) -> None:
        """A hit at ``level``: the answer reaches the client after ``latency`` seconds of lookups."""
        self.requests.hit_level[i] = level
        self.hits[level] += 1
        self.hits_in_flight += 1
        self._after(latency, self._h_cache_answer, i)

    def _on_cache_answer(self, i: int) -> None:
        self.hits_in_flight -= 1
        self._complete(i)

    def _insert(self, i: int, level: int) -> None:
        """Write request ``i``'s answer into cache levels ``level`` and slower."""
        if level == ADMIT_NONE:
            return
        R = self.requests
        now = self.env._now
        tenant = R.tenant[i]
        intent = R.intent[i]
        good = R.good[i]
        key = R.key[i]
        for tier, entries, capacity, put, ttl_s, billed in self._writes[level]:
            if not tier.down:
                # Occupancy changes only while a tier fills (a full tier evicts one per insert).
                if billed and len(entries) < capacity:
                    tier.account(now)
                put(key, (tenant, intent, good, now + ttl_s))
        sem = self.semantic
        if sem is not None and not sem.down:
            sem.put(tenant, key, self._embeddings[tenant][intent, R.variant[i]], intent, good, now)

    def _warm(self, top: int) -> None:
        """Pre-populate each tenant's ``top`` most popular intents (first phrasing) at time 0.

        The warmer's answers come from the strongest backend, offline: they cost nothing
        at run time and are good with that backend's probability.
        """
        strongest = max(self.backends, key=lambda b: b.cfg.capability)
        rng = self.streams["warmer"]
        for tenant, cat in enumerate(self.workload.catalogues):
            for intent in range(min(top, cat.cfg.n_intents)):
                good = bool(rng.random() < strongest.p_good(float(cat.difficulty[intent])))
                key = int(self._key_offset[tenant]) + intent * cat.cfg.n_variants
                for tier in self.tiers:
                    tier.put(key, (tenant, intent, good, tier.ttl_s), 0.0)
                if self.semantic is not None:
                    self.semantic.put(tenant, key, cat.embeddings[intent, 0], intent, good, 0.0)

    # -- pool and backends -------------------------------------------------------------------
    def _enter_pool(self, i: int) -> None:
        self.entering -= 1
        pool = self.pool
        if pool.queue:
            self._expire_queue()
        if pool.free and not pool.queue:
            self._start(i)
        elif len(pool.queue) >= pool.cfg.max_queue:
            self._drop(i, DROPPED_QUEUE_FULL, self.env._now)
        else:
            self.requests.enqueue_s[i] = self.env._now
            pool.queue.append(i)

    def _expire_queue(self) -> None:
        """Drop queued requests whose wait reached the timeout (FIFO: they are at the head)."""
        queue = self.pool.queue
        if not queue:
            return
        timeout = self.pool.cfg.queue_timeout_s
        now = self.env._now
        enqueue_s = self.requests.enqueue_s
        while queue and enqueue_s[queue[0]] + timeout <= now:
            i = queue.popleft()
            self._drop(i, DROPPED_QUEUE_TIMEOUT, enqueue_s[i] + timeout)

    def _dispatch(self) -> None:
        """Fill free slots from the queue (after a completion or a replica becoming ready)."""
        pool = self.pool
        if not pool.queue:
            return
        self._expire_queue()
        while pool.free and pool.queue:
            self._start(pool.queue.popleft())

    def _start(self, i: int) -> None:
        R = self.requests
        R.replica[i] = self.pool.acquire()
        now = self.env._now
        R.start_s[i] = now
        if R.enqueue_s[i] != R.enqueue_s[i]:  # nan: it never waited
            R.enqueue_s[i] = now
        self.calls_in_flight += 1
        b = self.controller.route(self, i)
        if b is DEFER:
            self.pending.append(Decision("route", i, None))
            return
        # Fast path for plain ints in range; anything else gets the full check and its error.
        self._call(i, b if type(b) is int and 0 <= b < self._n_backends else self._check_backend(b))

    def _check_backend(self, b: Any) -> int:
        if isinstance(b, (int, np.integer)) and not isinstance(b, bool) and 0 <= b < len(self.backends):
            return int(b)
        raise ValueError(f"route action {b!r} is invalid: must be a backend index in 0..{len(self.backends) - 1}")

    def _check_level(self, level: Any) -> int:
        if isinstance(level, (int, np.integer)) and not isinstance(level, bool) and ADMIT_NONE <= level < self.n_levels:
            return int(level)
        raise ValueError(
            f"admit action {level!r} is invalid: must be -1 (none) or a cache level in 0..{self.n_levels - 1}"
        )

    def _call(self, i: int, b: int) -> None:
        R = self.requests
        backend = self.backends[b]
        backend.busy += 1
        R.backend[i] = b
        duration, status, tokens_in, tokens_out = backend.call(
            R.prompt_tokens[i], R.output_tokens[i], R.u_service[i], R.z_service[i], R.u_failure[i]
        )
        R.tokens_in[i] = tokens_in
        R.tokens_out[i] = tokens_out
        if status != OK:
            self._failing[i] = status
        self._after(duration, self._h_call_done, i)

    def _on_call_done(self, i: int) -> None:
        R = self.requests
        backend = self.backends[R.backend[i]]
        backend.busy -= 1
        self.calls_in_flight -= 1
        self.pool.release(R.replica[i])
        cost = R.tokens_in[i] * backend.usd_in + R.tokens_out[i] * backend.usd_out
        R.cost_usd[i] = cost
        self.token_usd += cost
        status = self._failing.pop(i, OK) if self._failing else OK
        if status == OK:
            R.good[i] = R.u_quality[i] < backend.p_good(R.difficulty[i])
            self._complete(i)
            if self.n_levels:
                level = self.controller.admit(self, i)
                if level is DEFER:
                    self.pending.append(Decision("admit", i, None))
                else:
                    ok = type(level) is int and 0 <= level < self.n_levels
                    self._insert(i, level if ok else self._check_level(level))
        else:
            self._drop(i, FAILED_ERROR if status == BACKEND_ERROR else FAILED_TIMEOUT, self.env._now)
        if self.pool.queue:  # the freed slot goes to the queue's head
            self._dispatch()

    # -- outcomes --------------------------------------------------------------------------------
    def _complete(self, i: int) -> None:
        R = self.requests
        now = self.env._now
        R.outcome[i] = COMPLETED
        R.end_s[i] = now
        self.completed += 1
        latency = now - R.arrival_s[i]
        self._latencies.append(latency)
        if latency > self._slo_s[R.tenant[i]]:
            self.slo_violations += 1
        if R.good[i]:
            self.good_answers += 1

    def _drop(self, i: int, outcome: int, at: float) -> None:
        R = self.requests
        R.outcome[i] = outcome
        R.end_s[i] = at
        self.dropped += 1
        self.slo_violations += 1

    def in_flight(self) -> int:
        """Requests arrived but not finished, counted from where they are (not by subtraction)."""
        self._expire_queue()
        return self.entering + self.hits_in_flight + len(self.pool.queue) + self.calls_in_flight

    # -- control interval ------------------------------------------------------------------
    def _control(self) -> Generator[simpy.Event, Any, None]:
        interval = self.scenario.control.interval_s
        while True:
            yield self.env.timeout(interval)
            metrics = self._close_interval(interval)
            target = self.controller.scale(self, metrics)
            if target is DEFER:
                target = yield self._defer("scale", metrics)
            if target is not None:
                self.pool.scale_to(self._check_replicas(target))
            if self.semantic is not None:
                threshold = self.controller.semantic_threshold(self, metrics)
                if threshold is DEFER:
                    threshold = yield self._defer("threshold", metrics)
                if threshold is not None:
                    self.semantic.threshold = self._check_threshold(threshold)

    def _close_last_interval(self, end: float) -> None:
        """At the scenario's end, record the interval since the last recorded one (once: then it ends at ``end``).

        A tick falling exactly on the end belongs to the next run (as with ``run(until=)``),
        so without this the run's last interval, full or partial, would never be recorded
        and the intervals would not add up to the run's totals. No decision is asked for:
        nothing could follow it.
        """
        last = self.intervals[-1].time_s if self.intervals else 0.0
        if end > last:
            self._close_interval(end - last)

    def _defer(self, kind: str, metrics: IntervalMetrics) -> simpy.Event:
        event = self.env.event()
        self.pending.append(Decision(kind, -1, metrics, event))
        return event

    def _check_replicas(self, target: Any) -> int:
        if isinstance(target, (int, np.integer)) and not isinstance(target, bool) and target >= 0:
            return int(target)
        raise ValueError(f"scale action {target!r} is invalid: must be a replica count >= 0 (bounds are applied)")

    def _check_threshold(self, threshold: Any) -> float:
        number = isinstance(threshold, (int, float, np.floating)) and not isinstance(threshold, bool)
        if number and 0.0 < threshold <= 1.0:
            return float(threshold)
        raise ValueError(f"semantic threshold {threshold!r} is invalid: must be in (0, 1]")

    def _close_interval(self, interval: float) -> IntervalMetrics:
        pool = self.pool
        self._expire_queue()
        pool.integrate()
        start, end = self._iv, _IntervalStart(self)
        busy_area, capacity_area = end.busy_area - start.busy_area, end.capacity_area - start.capacity_area
        lat = np.asarray(self._latencies)
        self._latencies = []
        p50, p95 = np.percentile(lat, [50, 95]).tolist() if len(lat) else (math.nan, math.nan)
        arrivals = end.arrived - start.arrived
        hits = tuple(b - a for a, b in zip(start.hits, end.hits, strict=True))
        metrics = IntervalMetrics(
            time_s=self.now,
            interval_s=interval,
            arrivals=arrivals,
            arrival_rate_rps=arrivals / interval,
            completed=end.completed - start.completed,
            dropped=end.dropped - start.dropped,
            slo_violations=end.slo_violations - start.slo_violations,
            good_answers=end.good_answers - start.good_answers,
            queue_len=len(pool.queue),
            busy_slots=pool.busy,
            utilisation=busy_area / capacity_area if capacity_area > 0 else (1.0 if pool.queue else 0.0),
            ready_replicas=pool.ready,
            provisioning_replicas=pool.provisioning,
            draining_replicas=pool.draining,
            target_replicas=pool.target,
            latency_mean_s=float(lat.mean()) if len(lat) else math.nan,
            latency_p50_s=p50,
            latency_p95_s=p95,
            hits=hits,
            false_hits=end.false_hits - start.false_hits,
            hit_rate=sum(hits) / arrivals if arrivals else 0.0,
            cost_usd=end.cost_usd - start.cost_usd,
            semantic_threshold=self.semantic.threshold if self.semantic is not None else math.nan,
        )
        self.intervals.append(metrics)
        self._iv = end
        return metrics

    # -- results ------------------------------------------------------------------------------
    def storage_usd(self) -> float:
        """Cache storage billed so far, all tiers."""
        now = self.env._now
        total = 0.0
        for tier in self._billed_levels:  # unbilled levels add exactly 0.0
            total += tier.storage_usd(now)
        return total

    def replica_usd(self) -> float:
        """Replica time billed so far."""
        return self.pool.replica_seconds() * self.pool.cfg.usd_per_replica_hour / 3600.0

    def cost_usd(self) -> float:
        """Everything billed so far: replicas, tokens and cache storage."""
        return self.replica_usd() + self.token_usd + self.storage_usd()

    def kpis(self) -> dict[str, dict[str, float]]:
        """KPIs of the run so far, overall (``"all"``) and per tenant.

        A trace replay adds ``trace_requests`` and ``trace_end_s`` overall: the run has
        replayed ``requests`` of the trace's ``trace_requests``, whose last arrives at ``trace_end_s``.
        """
        self._expire_queue()
        tenants = self.scenario.workload.tenants
        trace = self.workload.trace
        return compute_kpis(
            self.requests.frame(self.arrived, KPI_COLUMNS),
            tenant_names=[t.name for t in tenants],
            tenant_slo_s=[t.slo_latency_s for t in tenants],
            level_names=self.level_names,
            duration_s=max(self.now, 1e-9),
            replica_usd=self.replica_usd(),
            storage_usd=self.storage_usd(),
            replica_seconds=self.pool.replica_seconds(),
            prices=self.prices,
            trace_requests=len(trace) if trace is not None else None,
            trace_end_s=trace.last_arrival_s / self.scenario.workload.trace_speedup if trace is not None else math.nan,
        )

    def objective_usd(self) -> float:
        """The objective of what has finished so far (:mod:`servegym.sim.objective`): cost plus the prices of
        misses, bad answers and drops. It never decreases; the run's objective (``kpis()["all"]["objective_usd"]``)
        adds the requests still in flight at the end, priced as drops."""
        return self.prices.usd(self.cost_usd(), self.slo_violations, self.completed - self.good_answers, self.dropped)


class _IntervalStart:
    """Running totals at the start of an interval; an interval's figures are differences."""

    __slots__ = (
        "arrived",
        "busy_area",
        "capacity_area",
        "completed",
        "cost_usd",
        "dropped",
        "false_hits",
        "good_answers",
        "hits",
        "slo_violations",
    )

    def __init__(self, platform: Platform) -> None:
        self.arrived = platform.arrived
        self.completed = platform.completed
        self.dropped = platform.dropped
        self.slo_violations = platform.slo_violations
        self.good_answers = platform.good_answers
        self.hits = list(platform.hits)
        self.false_hits = platform.false_hits
        self.busy_area = platform.pool.busy_area
        self.capacity_area = platform.pool.capacity_area
        self.cost_usd = platform.cost_usd()  # replicas, tokens and cache storage, as the KPIs count
