"""Oracles: decision rules with privileged knowledge, and which of them bound the shipped heuristics.

An oracle sees what no deployable policy can: the future request stream, each request's
draw of answer quality, the cold starts to come. It relies on common random numbers:
everything about a request, and every cold start, is drawn from named streams in an
order no decision changes (see :mod:`servegym.sim.random`), so a fresh
:class:`~servegym.sim.platform.Platform` on the same scenario, seed and trace, driven by
the same decisions, repeats a run bit for bit. The simulator is its own exact model of
the future.

:data:`ORACLE_KINDS` says what each oracle policy is worth, by its name:

* ``"bound"``: by construction, on the scenario and seed of the run, no shipped
  heuristic for the same decision has a lower objective (:mod:`servegym.sim.objective`)
  when it makes that decision and the built-in controller makes the others; a property
  test checks it. Gaps to an oracle are computed only to bounds.
* ``"privileged heuristic"``: a strong rule with privileged knowledge that nothing
  guarantees; reported by name, never as a bound.

* :class:`ClairvoyantScaler` (``clairvoyant``, a bound) plans the run's replica schedule
  in hindsight by simulating candidate schedules, and replays the best; its docstring
  says exactly what it bounds. :class:`ForesightScaler`, its foresight rule (the
  replicas the known arrivals need), is one of its candidates and a privileged heuristic.
* :class:`OracleRouter` (``oracle_router``, a privileged heuristic) knows which backends
  would answer each request well and picks the cheapest of them; cheaper routers beat it
  on the objective on most shipped scenarios.
* :func:`belady_hits` is the offline optimum of cache hits (Belady's MIN), :func:`lru_hits`
  the online LRU on the same stream: a bound on hits, not on the objective.
"""

from __future__ import annotations

import functools
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from servegym.sim.platform import BuiltinController, Controller, Platform
from servegym.sim.random import Streams
from servegym.sim.telemetry import IntervalMetrics
from servegym.sim.workload import Workload

__all__ = [
    "ORACLE_KINDS",
    "ClairvoyantScaler",
    "ControllerFactory",
    "ForesightScaler",
    "OracleRouter",
    "Schedule",
    "belady_hits",
    "lru_hits",
]

ORACLE_KINDS: dict[str, str] = {"clairvoyant": "bound", "oracle_router": "privileged heuristic"}
"""Each oracle's standing: ``"bound"`` (by construction and by the property test, no shipped
heuristic for its decision beats it on the objective when the built-in controller makes the
other decisions; gaps are computed to it) or ``"privileged heuristic"`` (strong, with knowledge
no policy has, but not a bound: reported as such, no gap)."""

Schedule = tuple[int, ...]
"""Replica targets, one per control interval of a run, in order."""

ControllerFactory = Callable[[Platform], Controller]
"""Builds the controller that drives a fresh platform (for example a shipped heuristic for it)."""


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
    """Routes each request to the cheapest backend that will answer it well: a privileged heuristic, not a bound.

    The oracle reads the request's quality draw: backend ``b`` answers request ``i``
    well exactly when ``u_quality[i] < p_good_b(difficulty[i])``, the platform's own
    rule, so it knows the outcome of every choice before making it. "Cheapest" is the
    request's token cost on the backend (its prompt and output tokens at the backend's
    prices, known in advance to the oracle), the lowest output price whenever backends'
    input and output prices rank alike; ties go to the lower index. A request no backend
    answers well goes to the cheapest backend for it: its answer is bad wherever it goes,
    so the oracle pays the least it can for it. Failures, timeouts and the latency a busy
    backend adds are not foreseen, and answer quality is bought whatever it costs, so
    heuristics can beat it on the objective (:mod:`servegym.sim.objective`): on the
    shipped steady, diurnal and multi_tenant scenarios ``cheapest`` does, on bursty
    ``power_of_two`` does. It is reported by name and no gap is computed to it
    (:data:`ORACLE_KINDS`). Admission, scaling and the threshold follow
    :class:`BuiltinController`.
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


class ForesightScaler(_BuiltinFallback):
    """Scales for the arrivals that are coming, which it knows exactly: a privileged heuristic, not a bound.

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

    It ignores queueing and the objective's prices, so heuristics can beat it (on the
    diurnal scenario KPA does, by a wide margin): :class:`ClairvoyantScaler` plans with it
    instead of trusting it.
    """

    def __init__(self, target_utilisation: float = 0.7) -> None:
        super().__init__()
        if not (isinstance(target_utilisation, (int, float)) and 0 < target_utilisation <= 1):
            raise ValueError(
                f"ForesightScaler: target_utilisation = {target_utilisation!r} is invalid: must be in (0, 1]"
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


class _CannotWin(Exception):  # noqa: N818 (a signal, not an error)
    """A simulation's objective so far has passed the bound: it cannot end below it."""


class _Recorder:
    """Drives a platform with ``inner`` and writes down the replica target of each scaling decision.

    A scaling answer of ``None`` (leave the pool alone) is written as the pool's current
    count, which asks for nothing either; targets are clipped to the pool's bounds as the
    pool clips them. At each control interval, before deciding, it raises :class:`_CannotWin`
    once the run's objective so far exceeds ``bound_usd``.
    """

    def __init__(self, inner: Controller, bound_usd: float) -> None:
        self.inner = inner
        self.bound_usd = bound_usd
        self.targets: list[int] = []

    def route(self, platform: Platform, request: int) -> int:
        return self.inner.route(platform, request)

    def admit(self, platform: Platform, request: int) -> int:
        return self.inner.admit(platform, request)

    def scale(self, platform: Platform, metrics: IntervalMetrics) -> int | None:
        if platform.objective_usd() > self.bound_usd:
            raise _CannotWin
        target = self.inner.scale(platform, metrics)
        pool = platform.pool
        wanted = pool.replica_count if target is None else int(target)
        self.targets.append(min(max(wanted, pool.cfg.min_replicas), pool.cfg.max_replicas))
        return target

    def semantic_threshold(self, platform: Platform, metrics: IntervalMetrics) -> float | None:
        return self.inner.semantic_threshold(platform, metrics)


class _Hindsight:
    """Fresh runs of one platform's scenario, seed and trace under other controllers: a planner's workbench."""

    def __init__(self, platform: Platform) -> None:
        self.scenario = platform.scenario
        self.seed = platform.seed
        self.trace = platform.workload.trace
        self.simulations = 0

    def run(self, factory: ControllerFactory, bound_usd: float = math.inf) -> tuple[float, _Recorder]:
        """The objective of a fresh run driven by ``factory``'s controller, and the recorder of its decisions.

        The objective so far never decreases (costs accrue; misses, bad answers and drops
        only add up), so a run whose objective so far passes ``bound_usd`` cannot end below
        it: it stops at that control interval and scores ``inf``. The margin covers the
        rounding by which the running total and the KPIs' sum of the same terms differ.
        """
        run = Platform(self.scenario, seed=self.seed, trace=self.trace)
        recorder = _Recorder(factory(run), bound_usd + 1e-9 * max(1.0, abs(bound_usd)))
        run.controller = recorder
        self.simulations += 1
        try:
            return run.run()["all"]["objective_usd"], recorder
        except _CannotWin:
            return math.inf, recorder


def _builtin(run: Platform) -> Controller:
    """The built-in controller of ``run``, as the platform builds it when given none."""
    return BuiltinController(run.scenario.control, run.scenario, run.streams["controller"])


class _Replay(_BuiltinFallback):
    """Replays a schedule open-loop: at the ``k``-th control interval it asks for ``schedule[k]``."""

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule

    def scale(self, platform: Platform, metrics: IntervalMetrics) -> int:
        return self.schedule[len(platform.intervals) - 1]  # the interval just closed is the k-th


def _replaying(schedule: Schedule) -> ControllerFactory:
    return lambda run: _Replay(schedule)


class ClairvoyantScaler(_BuiltinFallback):
    """Scales with hindsight: plans the run's replica schedule by simulating it, then replays the plan.

    At its first decision on a platform it reads the platform's scenario, seed and trace
    and searches replica schedules (one target per control interval). It scores a
    schedule by running a fresh platform on the same scenario, seed and trace with the
    schedule replayed and the other decisions made by the built-in controller, exactly as
    in the run itself, and reading the run's objective (``kpis()["all"]["objective_usd"]``,
    :mod:`servegym.sim.objective`; lower is better):

    1. Warm start. Each candidate controller drives a fresh run once and the target it
       asks for at each interval is recorded: the built-in rule (``"builtin"``),
       :class:`ForesightScaler` at ``target_utilisation`` (``"foresight"``) and every
       factory in :attr:`candidates` (``servegym evaluate`` and ``compare`` put each
       shipped scaler there, see :mod:`servegym.experiments.evaluate`). A recorded
       schedule replayed open-loop repeats the candidate's run exactly (the same
       decisions on the same requests and cold starts), so its objective is the
       candidate's; :attr:`scores` holds them.
    2. Local search from the best schedule, first improvement, at most ``budget``
       simulations. The moves, in order: lead by ``s`` intervals, ``s`` from 1 to a cold
       start's worth (each target becomes the largest of the next ``s``: replicas
       ordered ahead of the load); every target -1 and +1; every target x0.9 and x1.1;
       then -1 and +1 on each half of the run, each quarter, and so on down to single
       intervals. After an improvement the moves start again from the new best, the move
       that paid first; a schedule already simulated is not simulated again; the search
       ends when the budget is spent or no move improves. :attr:`moves` lists the
       improvements. On the shipped bursty and flash_crowd scenarios the lead moves cut
       the best shipped scaler's objective by 15-30%; elsewhere the search finds 0-1.5%.
    3. Pruning: a simulation stops at the control interval where its objective so far
       passes the best found. The objective so far never decreases, so it could not win.

    The run then replays the best schedule: its objective is the least of every schedule
    simulated, and no candidate's is lower (ties go to the earlier candidate).

    What this guarantees, and what not:

    * It is a bound relative to the candidates and the schedules the search visits, not
      a global optimum over schedules: a scaler outside the warm start (a learned
      policy, a heuristic at other arguments, ``scheduled`` with a schedule the
      evaluation was not given) may beat it.
    * It bounds the objective, not each KPI: a heuristic may have a lower p95 latency or
      a higher SLO attainment by paying more for it.
    * It bounds scaling with the other decisions made by the built-in controller, the
      setting of ``Autoscaling-v0`` and of an oracle run alone on ``Platform-v0``. A
      policy that also routes or caches differently (``hpa+jsq``) is not bounded.

    Cost: up to ``2 + len(candidates) + budget`` simulations of the scenario before the
    run itself (with evaluate's four shipped scalers and the default budget, 14); pruned
    ones stop early. :attr:`simulations` counts them.

    Arguments:
        target_utilisation: the utilisation :class:`ForesightScaler`, the warm start's
            foresight candidate, provisions for.
        budget: simulations the local search may spend after the warm start (0: the best
            of the warm start).
    """

    def __init__(self, target_utilisation: float = 0.7, budget: int = 8) -> None:
        super().__init__()
        if not (isinstance(target_utilisation, (int, float)) and 0 < target_utilisation <= 1):
            raise ValueError(
                f"ClairvoyantScaler: target_utilisation = {target_utilisation!r} is invalid: must be in (0, 1]"
            )
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ValueError(f"ClairvoyantScaler: budget = {budget!r} is invalid: must be an integer >= 0")
        self.target_utilisation = float(target_utilisation)
        self.budget = budget
        self.candidates: dict[str, ControllerFactory] = {}
        """Warm-start candidates by name, besides the built-in rule and the foresight rule."""
        self.schedule: Schedule = ()
        """The plan for the bound platform: the replica target of each control interval."""
        self.objective_usd = math.nan
        """The plan's objective, as the search measured it (the run's own, for a run it plans)."""
        self.scores: dict[str, float] = {}
        """Each warm-start candidate's objective; ``inf`` for one stopped as certain to lose."""
        self.moves: list[tuple[str, float]] = []
        """The local-search moves that improved the plan, each with the objective it reached."""
        self.simulations = 0
        """Simulations the plan took (the run itself not counted)."""

    def _prepare(self, platform: Platform, builtin: BuiltinController) -> None:
        bench = _Hindsight(platform)
        warm: dict[str, ControllerFactory] = {
            "builtin": _builtin,
            "foresight": lambda run: ForesightScaler(self.target_utilisation),
            **self.candidates,
        }
        self.scores, self.moves = {}, []
        visited: dict[Schedule, float] = {}
        best_usd = math.inf
        for name, factory in warm.items():
            objective, recorder = bench.run(factory, best_usd)
            self.scores[name] = objective
            if objective < math.inf:
                visited.setdefault(tuple(recorder.targets), objective)
                best_usd = min(best_usd, objective)
        best = min(visited, key=visited.__getitem__)
        pool = platform.scenario.pool
        lead = max(1, math.ceil(pool.cold_start_mean_s / platform.scenario.control.interval_s - 1e-9))
        moves = _moves(len(best), lead)
        searched, improved = 0, True
        while improved and searched < self.budget:
            improved = False
            for move in moves:
                name, change = move
                schedule = tuple(min(max(t, pool.min_replicas), pool.max_replicas) for t in change(best))
                if schedule in visited:
                    continue
                if searched == self.budget:
                    break
                searched += 1
                objective, _ = bench.run(_replaying(schedule), visited[best])
                visited[schedule] = objective
                if objective < visited[best]:
                    best, improved = schedule, True
                    self.moves.append((name, objective))
                    moves.remove(move)
                    moves.insert(0, move)  # a move that paid is tried first from the new best
                    break
        self.schedule, self.objective_usd, self.simulations = best, visited[best], bench.simulations

    def scale(self, platform: Platform, metrics: IntervalMetrics) -> int:
        self._bind(platform)
        return self.schedule[len(platform.intervals) - 1]


def _moves(n: int, lead: int) -> list[tuple[str, Callable[[Schedule], list[int]]]]:
    """The local search's moves on schedules of ``n`` intervals, named, in the order they are first tried."""
    moves: list[tuple[str, Callable[[Schedule], list[int]]]] = [
        (f"lead {s}", functools.partial(_lead, s)) for s in range(1, lead + 1)
    ]
    moves += [(f"all {d:+d}", functools.partial(_add, d, 0, n)) for d in (-1, 1)]
    moves += [(f"all x{f:g}", functools.partial(_times, f)) for f in (0.9, 1.1)]
    size = n
    while size > 1:
        size = math.ceil(size / 2)
        for start in range(0, n, size):
            stop = min(start + size, n)
            moves += [
                (f"intervals {start}-{stop - 1} {d:+d}", functools.partial(_add, d, start, stop)) for d in (-1, 1)
            ]
    return moves


def _lead(s: int, schedule: Schedule) -> list[int]:
    """Each target raised to the largest of the next ``s``: replicas ordered ``s`` intervals ahead of the load."""
    return [max(schedule[k : k + s + 1]) for k in range(len(schedule))]


def _add(d: int, start: int, stop: int, schedule: Schedule) -> list[int]:
    """``d`` replicas more at the intervals ``start .. stop - 1``."""
    return [t + d if start <= k < stop else t for k, t in enumerate(schedule)]


def _times(factor: float, schedule: Schedule) -> list[int]:
    """Every target times ``factor``, rounded."""
    return [round(t * factor) for t in schedule]
