"""Upper bounds with privileged knowledge: Belady's cache, an oracle router, a clairvoyant scaler.

An oracle sees what no deployable policy can (the future request stream, each request's
draw of answer quality) and so bounds what any policy could achieve; the leaderboard
reports gaps to these bounds. They are controllers and functions of the simulator, not
observation policies, and they rely on common random numbers: everything about a request
is drawn from streams that no decision touches (see :mod:`servegym.sim.workload`).

* :func:`belady_hits` is the offline optimum of hits for a cache of a given size
  (Belady's MIN), :func:`lru_hits` the online LRU on the same stream for comparison.
* :class:`OracleRouter` knows which backends would answer each request well.
* :class:`ClairvoyantScaler` knows the arrivals to come.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from servegym.sim.platform import BuiltinController, Platform
from servegym.sim.random import Streams
from servegym.sim.telemetry import IntervalMetrics
from servegym.sim.workload import Workload

__all__ = ["ORACLE_KINDS", "ClairvoyantScaler", "OracleRouter", "belady_hits", "lru_hits"]

ORACLE_KINDS: dict[str, str] = {"clairvoyant": "bound", "oracle_router": "privileged heuristic"}
"""Each oracle's standing: ``"bound"`` (proven by the property test never to lose to a shipped
heuristic on the objective; the leaderboard computes gaps to it) or ``"privileged heuristic"``
(strong, with knowledge no policy has, but not a bound: reported as such, no gap)."""


def _check_capacity(capacity: int) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 0:
        raise ValueError(f"capacity = {capacity!r} is invalid: must be an integer >= 0 (entries)")


def belady_hits(keys: Sequence[int], capacity: int, *, bypass: bool = False) -> int:
    """Hits of the optimal offline cache of ``capacity`` entries on the stream ``keys``.

    Belady's MIN (Belady, "A study of replacement algorithms for a virtual-storage
    computer", IBM Systems Journal 1966): on a miss the key is inserted and, when the
    cache is full, the cached key whose next use is farthest in the future is evicted.
    That is optimal when every miss must be inserted (demand paging, the model of
    :func:`lru_hits`). With ``bypass=True`` the incoming key is itself a candidate and is
    not inserted when its next use is no sooner than every cached key's: the optimum
    when admission may refuse a write, which bounds any admission-plus-eviction policy.

    O(n log n): next uses are precomputed in one backward pass, and a max-heap on next
    use finds the victim, skipping stale entries (lazy deletion).
    """
    _check_capacity(capacity)
    if capacity == 0:
        return 0
    n = len(keys)
    next_use = [n] * n  # n stands for "never again"
    seen: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        next_use[i] = seen.get(keys[i], n)
        seen[keys[i]] = i
    cached: dict[int, int] = {}  # key -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, key); an entry is stale once the key's next use moved on
    hits = 0
    for i, key in enumerate(keys):
        if key in cached:
            hits += 1
        elif len(cached) >= capacity:
            while cached.get(heap[0][1]) != -heap[0][0]:
                heapq.heappop(heap)
            farthest, victim = -heap[0][0], heap[0][1]
            if bypass and next_use[i] >= farthest:
                continue
            heapq.heappop(heap)
            del cached[victim]
        cached[key] = next_use[i]
        heapq.heappush(heap, (-next_use[i], key))
    return hits


def lru_hits(keys: Sequence[int], capacity: int) -> int:
    """Hits of an LRU cache of ``capacity`` entries that looks each key up and inserts it on a miss."""
    _check_capacity(capacity)
    if capacity == 0:
        return 0
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for key in keys:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
        else:
            if len(cache) >= capacity:
                cache.popitem(last=False)
            cache[key] = None
    return hits


class _BuiltinFallback:
    """A controller that owns one decision and leaves the others to :class:`BuiltinController`.

    It binds to a platform at the platform's first decision (the fallback needs the
    platform's scenario and random stream) and again if handed a new platform.
    """

    def __init__(self) -> None:
        self._platform: Platform | None = None
        self._builtin: BuiltinController | None = None

    def _bind(self, platform: Platform) -> BuiltinController:
        if platform is self._platform and self._builtin is not None:
            return self._builtin
        self._platform = platform
        self._builtin = BuiltinController(platform.scenario.control, platform.scenario, platform.streams["controller"])
        self._prepare(platform, self._builtin)
        return self._builtin

    def _prepare(self, platform: Platform, builtin: BuiltinController) -> None:
        """Precompute what the oracle needs for ``platform`` (nothing by default)."""

    def route(self, platform: Platform, request: int) -> int:
        return self._bind(platform).route(platform, request)

    def admit(self, platform: Platform, request: int) -> int:
        return self._bind(platform).admit(platform, request)

    def scale(self, platform: Platform, metrics: IntervalMetrics) -> int | None:
        return self._bind(platform).scale(platform, metrics)

    def semantic_threshold(self, platform: Platform, metrics: IntervalMetrics) -> float | None:
        return self._bind(platform).semantic_threshold(platform, metrics)


class OracleRouter(_BuiltinFallback):
    """Routes each request to the cheapest backend that will answer it well, else the strongest.

    The oracle reads the request's quality draw: backend ``b`` answers request ``i``
    well exactly when ``u_quality[i] < p_good_b(difficulty[i])``, the platform's own
    rule, so it knows the outcome of every choice before making it. "Cheapest" is the
    request's token cost on the backend (its prompt and output tokens at the backend's
    prices, known in advance to the oracle), the lowest output price whenever backends'
    input and output prices rank alike; ties go to the lower index. A request no backend
    answers well goes to the cheapest backend for it: its answer is bad wherever it goes,
    so the oracle pays the least it can for it. Failures and timeouts are not foreseen.
    Admission, scaling and the threshold follow :class:`BuiltinController`.
    """

    def route(self, platform: Platform, request: int) -> int:
        self._bind(platform)
        R = platform.requests
        difficulty, u = R.difficulty[request], R.u_quality[request]
        prompt, output = R.prompt_tokens[request], R.output_tokens[request]
        good, good_usd = -1, math.inf  # the cheapest backend that answers well
        cheapest, cheapest_usd = 0, math.inf  # the cheapest of all
        for b, backend in enumerate(platform.backends):
            usd = prompt * backend.usd_in + output * backend.usd_out
            if usd < cheapest_usd:
                cheapest, cheapest_usd = b, usd
            if usd < good_usd and u < backend.p_good(difficulty):
                good, good_usd = b, usd
        return good if good >= 0 else cheapest


class ClairvoyantScaler(_BuiltinFallback):
    """Scales for the arrivals that are coming, which it knows exactly.

    It rebuilds the platform's request stream from the same scenario and seed
    (``Workload(scenario.workload, Streams(seed))`` yields the identical stream) and, at
    each control interval, asks for the replicas that keep utilisation at
    ``target_utilisation`` over the first interval a replica ordered now can serve,
    ``[now + cold_start_mean_s, now + cold_start_mean_s + interval_s]``, and never fewer
    than the intervals before that need (a replica shed now could not come back in time).
    The work of a window is the expected service time of its arrivals (each request's
    own tokens through the backends' latency models, weighted by the scenario's routing
    rule) times the cache miss rate observed so far. Targets stay within the pool's
    bounds. Routing, admission and the threshold follow :class:`BuiltinController`.
    """

    def __init__(self, target_utilisation: float = 0.7) -> None:
        super().__init__()
        if not (isinstance(target_utilisation, (int, float)) and 0 < target_utilisation <= 1):
            raise ValueError(
                f"ClairvoyantScaler: target_utilisation = {target_utilisation!r} is invalid: must be in (0, 1]"
            )
        self.target_utilisation = float(target_utilisation)
        self.arrival_s = np.zeros(0)  # the arrivals it foresees, the platform's own
        self._work_s = np.zeros(1)  # cumulative expected service seconds, before each arrival

    def _prepare(self, platform: Platform, builtin: BuiltinController) -> None:
        scenario = platform.scenario
        weights = np.zeros(len(platform.backends))
        rule = scenario.control.routing
        if rule in ("round_robin", "random"):
            weights[:] = 1.0 / len(weights)
        else:
            weights[builtin.cheapest if rule == "cheapest" else builtin.strongest] = 1.0
        workload = Workload(scenario.workload, Streams(platform.seed), platform.workload.trace)
        arrivals, services = [], []
        for batch in workload.batches(scenario.duration_s):
            arrivals.append(batch.arrival_s)
            service = np.zeros(len(batch))
            for w, backend in zip(weights, platform.backends, strict=True):
                if w:
                    cfg = backend.cfg
                    ttft = cfg.ttft_base_s + cfg.ttft_per_prompt_token_s * batch.prompt_tokens
                    service += w * np.minimum(ttft + cfg.tpot_base_s * batch.output_tokens, cfg.timeout_s)
            services.append(service)
        self.arrival_s = np.concatenate(arrivals) if arrivals else np.zeros(0)
        self._work_s = np.concatenate([[0.0], np.cumsum(np.concatenate(services))]) if services else np.zeros(1)

    def _work_between(self, start_s: float, end_s: float) -> float:
        """Expected service seconds of the requests arriving in ``[start_s, end_s)``."""
        lo, hi = np.searchsorted(self.arrival_s, [start_s, end_s])
        return float(self._work_s[hi] - self._work_s[lo])

    def scale(self, platform: Platform, metrics: IntervalMetrics) -> int:
        self._bind(platform)
        pool = platform.pool.cfg
        interval = metrics.interval_s
        now = platform.now
        miss_rate = 1.0 - sum(platform.hits) / platform.arrived if platform.arrived else 1.0
        capacity_s = interval * pool.slots_per_replica * self.target_utilisation  # work one replica takes per window
        ready_at = now + pool.cold_start_mean_s
        needed, start = 0, now
        while True:
            start = min(start, ready_at)
            work = self._work_between(start, start + interval) * miss_rate
            needed = max(needed, math.ceil(work / capacity_s - 1e-9))
            if start >= ready_at:
                break
            start += interval
        return min(max(needed, pool.min_replicas), pool.max_replicas)
