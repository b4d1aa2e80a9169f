"""A small production-style agent service whose scaling and routing come from exported bundles.

An asyncio agent pool (replicas with a few slots each, a bounded queue, cold starts)
serves requests from a load generator by calling model backends (simulated with
sleeps). Every control interval the service measures the interval's features, asks the
scaling bundle for a target replica count; for every request it asks the routing
bundle for a backend. In ``control`` mode the decisions are applied; in ``shadow`` mode
the service keeps its fallback (fixed replicas, round robin) and logs what the policy
would have done, which is how a new policy earns trust before it takes over.

Every control interval logs one JSON line: the interval's features, the scaling
decision, and the interval's routing decisions aggregated (per backend, what was
applied, how often policy and applied choice agreed) with a random sample of
per-request routing decisions and the features they saw (``--routing-sample`` per
interval). The lines go to stderr, or to ``--log-file``; the summary goes to stdout.

At start-up the service checks that each bundle is intact (its runtime's sha256, then
every file through the runtime), that the scaling bundle decides a replica count and
the routing bundle a backend, and that every feature they read is one the service
measures; otherwise it exits with status 2 and a one-line error.

The service imports each bundle's own ``servegym_runtime.py``: servegym need not be
installed where it runs. ::

    servegym export run=heuristic:hpa out=bundles/hpa
    servegym export run=heuristic:jsq out=bundles/jsq
    python examples/agent_service.py --scaling bundles/hpa --routing bundles/jsq --mode shadow --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("agent_service")

INTERVAL_FEATURES = (
    "arrival_rate_rps",
    "queue_len",
    "utilisation",
    "ready_replicas",
    "provisioning_replicas",
    "draining_replicas",
    "target_replicas",
    "latency_p50_s",
    "latency_p95_s",
    "slo_violation_rate",
    "hit_rate",
    "semantic_threshold",
    "time_of_day_sin",
    "time_of_day_cos",
)
"""The features the service measures every control interval (servegym's interval layout)."""

ROUTING_REQUEST_FEATURES = ("log_prompt_tokens", "difficulty", "queue_len")
ROUTING_BACKEND_PREFIXES = ("busy_", "capability_", "usd_per_mtok_out_")
"""Per request the service measures these, ``tenant_<t>`` one-hot, and per backend ``<prefix><backend>``."""


class SetupError(Exception):
    """A bundle the service must not start with: missing, tampered, or not the decision it is given for."""


def load_bundle(directory: str | Path, flag: str = "bundle") -> Any:
    """The bundle in ``directory``, loaded (and hash-verified) by the runtime module it ships.

    Raises :class:`SetupError` (naming ``flag``) when the directory or its runtime is
    missing, the runtime's sha256 differs from ``spec.json``'s, or the runtime refuses
    the bundle (its ``BundleError``: a missing or tampered file).
    """
    root = Path(directory)
    runtime_file = root / "servegym_runtime.py"
    if not root.is_dir():
        raise SetupError(f"{flag} {root}: no such directory; write one with `servegym export ... out={root}`")
    if not runtime_file.is_file() or not (root / "spec.json").is_file():
        raise SetupError(
            f"{flag} {root}: not a bundle (no servegym_runtime.py or spec.json); is it from `servegym export`?"
        )
    # The runtime verifies every file, itself included, but only once it runs: check it before importing it.
    try:
        recorded = json.loads((root / "spec.json").read_text(encoding="utf-8"))["files"]["servegym_runtime.py"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SetupError(
            f"{flag} {root}: spec.json is unreadable or lists no runtime ({exc}); export it again"
        ) from None
    actual = hashlib.sha256(runtime_file.read_bytes()).hexdigest()
    if actual != recorded:
        raise SetupError(
            f"{flag} {root}: tampered, servegym_runtime.py's sha256 does not match spec.json; export it again"
        )
    spec = importlib.util.spec_from_file_location(f"servegym_runtime_{root.name}", runtime_file)
    if spec is None or spec.loader is None:
        raise SetupError(f"{flag} {root}: cannot import servegym_runtime.py")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.load(root)
    except module.BundleError as exc:
        raise SetupError(f"{flag} {root}: {exc}") from None


def decision_of(bundle: Any) -> str:
    """What a bundle decides: ``scaling`` (a replica count), ``routing`` (a backend), or what else it decides."""
    action = bundle.spec.get("action") or {}
    components = [str(c.get("name")) for c in action.get("components") or [] if isinstance(c, dict)]
    meaning = [str(m) for m in action.get("meaning") or []]
    if components == ["target_replicas"] or (
        not components and len(meaning) == 1 and meaning[0].startswith("target replica count")
    ):
        return "scaling"
    if components == ["backend"] or (
        not components and len(meaning) == 1 and meaning[0].startswith("index of the model backend")
    ):
        return "routing"
    what = " + ".join(components) if components else "; ".join(meaning) or f"a {action.get('type')} action"
    return f"something else ({what})"


def routing_features(names: Any) -> tuple[list[str], list[str], set[str]]:
    """The backends and tenants a routing bundle's features name, and every feature the service then provides."""
    backends = [n.removeprefix("busy_") for n in names if n.startswith("busy_")] or ["default"]
    tenants = [n.removeprefix("tenant_") for n in names if n.startswith("tenant_")] or ["default"]
    provided = set(ROUTING_REQUEST_FEATURES) | {f"tenant_{t}" for t in tenants}
    provided |= {p + b for p in ROUTING_BACKEND_PREFIXES for b in backends}
    return backends, tenants, provided


def check_bundles(
    scaling: Any, routing: Any | None, scaling_flag: str = "--scaling", routing_flag: str = "--routing"
) -> None:
    """Refuse (:class:`SetupError`) bundles given for the wrong decision, or reading features the service lacks."""
    for bundle, flag, want in ((scaling, scaling_flag, "scaling"), (routing, routing_flag, "routing")):
        if bundle is None:
            continue
        got = decision_of(bundle)
        if got != want:
            other = routing_flag if want == "scaling" else scaling_flag
            hint = f"; did you swap {scaling_flag} and {routing_flag}?" if got in ("scaling", "routing") else ""
            raise SetupError(
                f"{flag} {bundle.root}: this bundle decides {got} (policy {bundle.kind!r}), not {want}{hint}"
                if got in ("scaling", "routing")
                else f"{flag} {bundle.root}: this bundle decides {got} (policy {bundle.kind!r}), not {want}; "
                f"{flag} takes a {want} policy (and {other} a {'routing' if want == 'scaling' else 'scaling'} one)"
            )
        provided = set(INTERVAL_FEATURES) if want == "scaling" else routing_features(bundle.feature_names)[2]
        missing = [n for n in bundle.feature_names if n not in provided]
        if missing:
            raise SetupError(
                f"{flag} {bundle.root}: the policy reads feature(s) this service does not measure: {', '.join(missing)}"
            )


@dataclass
class Backend:
    """A model endpoint: latency per call and what the router sees of it."""

    name: str
    capability: float
    usd_per_mtok_out: float
    latency_s: float
    busy: int = 0


@dataclass
class Stats:
    """What one control interval measured, and every decision taken or shadowed."""

    arrivals: int = 0
    latencies_s: list[float] = field(default_factory=list)
    slo_violations: int = 0
    busy_slot_s: float = 0.0
    scaling_decisions: list[int] = field(default_factory=list)
    routing_decisions: list[int] = field(default_factory=list)
    routing_applied: list[int] = field(default_factory=list)
    routing_sample: list[dict[str, Any]] = field(default_factory=list)
    served: int = 0


class AgentService:
    """Replicas x slots serving a queue; scaling and routing from bundles, applied or shadowed."""

    def __init__(
        self,
        scaling: Any,
        routing: Any | None,
        *,
        mode: str = "control",
        interval_s: float = 1.0,
        slots_per_replica: int = 4,
        initial_replicas: int = 2,
        cold_start_s: float = 0.5,
        slo_s: float = 0.5,
        seed: int = 0,
        routing_sample: int = 5,
    ) -> None:
        if mode not in ("control", "shadow"):
            raise ValueError(f"mode={mode!r} must be control or shadow")
        check_bundles(scaling, routing)
        self.scaling, self.routing, self.mode = scaling, routing, mode
        self.interval_s, self.slots_per_replica = interval_s, slots_per_replica
        self.cold_start_s, self.slo_s = cold_start_s, slo_s
        self.rng = random.Random(seed)
        self.sample_rng = random.Random(seed + 1)  # its own stream: sampling does not change the load
        self.routing_sample = routing_sample
        self.routed = 0  # routing decisions this interval, for the reservoir sample
        names = routing.feature_names if routing is not None else ()
        backend_names, tenants, _ = routing_features(names)
        self.backends = [
            Backend(
                name,
                capability=0.3 + 0.5 * k / max(1, len(backend_names) - 1),
                usd_per_mtok_out=0.6 * 4**k,
                latency_s=0.02 * (1 + k),
            )
            for k, name in enumerate(backend_names)
        ]
        self.tenants = tenants
        self.queue: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue(maxsize=500)
        self.ready = 0
        self.provisioning = 0
        self.target = initial_replicas
        self.replicas: list[asyncio.Task[None]] = []
        self.next_backend = 0
        self.stats = Stats()
        self.total = Stats()
        self.started_s = time.monotonic()
        self.initial_replicas = initial_replicas
        self._tasks: list[asyncio.Task[None]] = []

    # -- the pool ----------------------------------------------------------------------

    def _add_replica(self, cold: bool = True) -> None:
        self.replicas.append(asyncio.ensure_future(self._replica(cold)))

    async def _replica(self, cold: bool) -> None:
        if cold:
            self.provisioning += 1
            try:
                await asyncio.sleep(self.cold_start_s)
            finally:
                self.provisioning -= 1
        self.ready += 1
        slots = [asyncio.ensure_future(self._slot()) for _ in range(self.slots_per_replica)]
        try:
            await asyncio.gather(*slots)
        finally:  # cancelled: drain by cancelling the slots (their requests are dropped in this toy)
            for s in slots:
                s.cancel()
            self.ready -= 1

    async def _slot(self) -> None:
        while True:
            arrived_s, request = await self.queue.get()
            start = time.monotonic()
            backend = self.backends[self._route(request)]
            backend.busy += 1
            try:
                await asyncio.sleep(backend.latency_s * (0.5 + request["difficulty"]))
            finally:
                backend.busy -= 1
            done = time.monotonic()
            self.stats.busy_slot_s += done - start
            latency = done - arrived_s
            self.stats.latencies_s.append(latency)
            self.stats.slo_violations += latency > self.slo_s
            self.stats.served += 1

    def _route(self, request: dict[str, Any]) -> int:
        fallback = self.next_backend
        self.next_backend = (fallback + 1) % len(self.backends)
        if self.routing is None:
            return fallback
        features = {f"tenant_{t}": float(t == request["tenant"]) for t in self.tenants}
        features |= {
            "log_prompt_tokens": math.log1p(request["prompt_tokens"]),
            "difficulty": request["difficulty"],
            "queue_len": float(self.queue.qsize()),
        }
        for b in self.backends:
            features |= {
                f"busy_{b.name}": float(b.busy),
                f"capability_{b.name}": b.capability,
                f"usd_per_mtok_out_{b.name}": b.usd_per_mtok_out,
            }
        observation = {n: features[n] for n in self.routing.feature_names}
        choice = int(self.routing.decide(observation))
        applied = choice if self.mode == "control" else fallback
        self.stats.routing_decisions.append(choice)
        self.stats.routing_applied.append(applied)
        # A uniform sample of the interval's decisions (reservoir sampling), with what the policy saw.
        self.routed += 1
        record = {"features": observation, "routing_decision": choice, "applied": applied}
        sample = self.stats.routing_sample
        if len(sample) < self.routing_sample:
            sample.append(record)
        elif self.routing_sample > 0:
            k = self.sample_rng.randrange(self.routed)
            if k < self.routing_sample:
                sample[k] = record
        return applied

    def routing_summary(self) -> dict[str, Any]:
        """The interval's routing decisions: per backend as the policy chose and as applied, agreement, a sample."""
        s = self.stats
        names = [b.name for b in self.backends]
        agreed = sum(c == a for c, a in zip(s.routing_decisions, s.routing_applied, strict=True))
        return {
            "decisions": len(s.routing_decisions),
            "policy_by_backend": {names[k]: n for k, n in sorted(Counter(s.routing_decisions).items())},
            "applied_by_backend": {names[k]: n for k, n in sorted(Counter(s.routing_applied).items())},
            "agreement": agreed / len(s.routing_decisions) if s.routing_decisions else None,
            "sample": s.routing_sample,
        }

    # -- control -----------------------------------------------------------------------

    def interval_features(self) -> dict[str, float]:
        """The interval layout's features, measured over the last control interval."""
        s = self.stats
        lat = sorted(s.latencies_s)
        finished = len(lat)
        slots = max(1, self.ready * self.slots_per_replica)
        angle = 2 * math.pi * ((time.time() % 86_400) / 86_400)
        return {
            "arrival_rate_rps": s.arrivals / self.interval_s,
            "queue_len": float(self.queue.qsize()),
            "utilisation": min(1.0, s.busy_slot_s / (slots * self.interval_s)),
            "ready_replicas": float(self.ready),
            "provisioning_replicas": float(self.provisioning),
            "draining_replicas": 0.0,
            "target_replicas": float(self.target),
            "latency_p50_s": lat[finished // 2] if lat else 0.0,
            "latency_p95_s": lat[min(finished - 1, int(0.95 * finished))] if lat else 0.0,
            "slo_violation_rate": s.slo_violations / finished if finished else 0.0,
            "hit_rate": 0.0,
            "semantic_threshold": 0.0,
            "time_of_day_sin": math.sin(angle),
            "time_of_day_cos": math.cos(angle),
        }

    def control_step(self) -> int:
        """One scaling decision: applied in control mode, logged in shadow mode."""
        features = self.interval_features()
        decision = int(self.scaling.decide({n: features[n] for n in self.scaling.feature_names}))
        self.total.scaling_decisions.append(decision)
        self.total.routing_decisions += self.stats.routing_decisions
        self.total.routing_applied += self.stats.routing_applied
        self.total.served += self.stats.served
        self.total.arrivals += self.stats.arrivals
        self.total.latencies_s += self.stats.latencies_s
        self.total.slo_violations += self.stats.slo_violations
        entry: dict[str, Any] = {"mode": self.mode, "features": features, "scaling_decision": decision}
        if self.routing is not None:
            entry["routing"] = self.routing_summary()
        log.info(json.dumps(entry))
        if self.mode == "control":
            self.scale_to(max(1, decision))
        self.stats = Stats()
        self.routed = 0
        return decision

    def scale_to(self, replicas: int) -> None:
        self.target = replicas
        while len(self.replicas) < replicas:
            self._add_replica()
        while len(self.replicas) > replicas:
            self.replicas.pop().cancel()

    async def _controller(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.control_step()

    async def _load(self, rate_rps: float, burst_rps: float) -> None:
        while True:
            elapsed = time.monotonic() - self.started_s
            rate = burst_rps if int(elapsed / (4 * self.interval_s)) % 2 else rate_rps  # calm, burst, calm, ...
            await asyncio.sleep(self.rng.expovariate(rate))
            request = {
                "tenant": self.rng.choice(self.tenants),
                "prompt_tokens": int(self.rng.lognormvariate(6.6, 1.0)),
                "difficulty": self.rng.betavariate(2, 3),
            }
            self.stats.arrivals += 1
            if not self.queue.full():
                self.queue.put_nowait((time.monotonic(), request))

    async def run(self, duration_s: float, rate_rps: float = 50.0, burst_rps: float = 200.0) -> Stats:
        """Serve load for ``duration_s`` seconds, then stop every task cleanly."""
        self.started_s = time.monotonic()
        for _ in range(self.initial_replicas):  # tasks belong to the running loop: start them here
            self._add_replica(cold=False)
        self._tasks = [
            asyncio.ensure_future(self._controller()),
            asyncio.ensure_future(self._load(rate_rps, burst_rps)),
        ]
        try:
            await asyncio.sleep(duration_s)
        finally:
            await self.stop()
        return self.total

    async def stop(self) -> None:
        """Cancel the controller, the load generator and every replica, and wait for them."""
        tasks = self._tasks + self.replicas
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self.replicas = [], []


def _positive(text: str) -> float:
    """A finite number > 0 (a duration, an interval, a rate): 0 or less would spin or do nothing."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is invalid: must be a finite number > 0")
    return value


def _count(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid: must be an integer >= 0")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--scaling", required=True, help="bundle directory of a scaling policy")
    parser.add_argument("--routing", default=None, help="bundle directory of a routing policy")
    parser.add_argument("--mode", choices=["control", "shadow"], default="shadow")
    parser.add_argument("--duration", type=_positive, default=20.0, help="seconds to serve")
    parser.add_argument("--interval", type=_positive, default=1.0, help="control interval in seconds")
    parser.add_argument("--rate", type=_positive, default=50.0, help="calm arrival rate, requests/s")
    parser.add_argument(
        "--routing-sample",
        type=_count,
        default=5,
        help="per-request routing decisions logged per interval (a random sample)",
    )
    parser.add_argument("--log-file", default=None, help="write the decision log (JSON lines) here instead of stderr")
    args = parser.parse_args(argv)
    if args.interval > args.duration:
        parser.error(f"--interval {args.interval:g} is longer than --duration {args.duration:g}: no decision would run")
    try:
        scaling = load_bundle(args.scaling, "--scaling")
        routing = load_bundle(args.routing, "--routing") if args.routing else None
        check_bundles(scaling, routing)
    except SetupError as exc:
        print(f"agent_service: error: {exc}", file=sys.stderr)
        return 2
    handler: logging.Handler = (
        logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    service = AgentService(
        scaling, routing, mode=args.mode, interval_s=args.interval, routing_sample=args.routing_sample
    )
    total = asyncio.run(service.run(args.duration, args.rate, 4 * args.rate))
    print(summary(args.mode, total, service.slo_s) + (f"; decision log in {args.log_file}" if args.log_file else ""))
    return 0


def summary(mode: str, total: Stats, slo_s: float) -> str:
    """One line on what the service did over its completed control intervals.

    In shadow mode the latencies are the fallback's (the policy only watched), and the
    routing agreement says how often the policy would have chosen what the fallback did.
    """
    lat = sorted(total.latencies_s)
    served = len(lat)
    parts = [f"{mode}: {total.arrivals} arrivals, {total.served} served"]
    if served:
        p50, p95 = lat[served // 2], lat[min(served - 1, int(0.95 * served))]
        parts.append(
            f"latency p50 {p50:.3f} s, p95 {p95:.3f} s, "
            f"{100.0 * total.slo_violations / served:.1f}% over the {slo_s:g} s SLO"
        )
    if total.scaling_decisions:
        parts.append(
            f"{len(total.scaling_decisions)} scaling decisions "
            f"(replicas {min(total.scaling_decisions)}..{max(total.scaling_decisions)}, "
            f"last {total.scaling_decisions[-1]})"
        )
    if total.routing_decisions:
        agree = sum(a == b for a, b in zip(total.routing_decisions, total.routing_applied, strict=True))
        parts.append(
            f"{len(total.routing_decisions)} routing decisions "
            f"({100.0 * agree / len(total.routing_decisions):.0f}% as applied)"
        )
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
