"""A small production-style agent service whose scaling and routing come from exported bundles.

An asyncio agent pool (replicas with a few slots each, a bounded queue, cold starts)
serves requests from a load generator by calling model backends (simulated with
sleeps). Every control interval the service measures the interval's features, asks the
scaling bundle for a target replica count; for every request it asks the routing
bundle for a backend. In ``control`` mode the decisions are applied; in ``shadow`` mode
the service keeps its fallback (fixed replicas, round robin) and logs what the policy
would have done, which is how a new policy earns trust before it takes over.

The service imports each bundle's own ``servegym_runtime.py``: servegym need not be
installed where it runs. ::

    servegym export run=heuristic:hpa out=bundles/hpa
    servegym export run=heuristic:jsq out=bundles/jsq
    python examples/agent_service.py --scaling bundles/hpa --routing bundles/jsq --mode shadow --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("agent_service")


def load_bundle(directory: str | Path) -> Any:
    """The bundle in ``directory``, loaded (and hash-verified) by the runtime module it ships."""
    root = Path(directory)
    spec = importlib.util.spec_from_file_location(f"servegym_runtime_{root.name}", root / "servegym_runtime.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{root}: no servegym_runtime.py; is this a bundle from `servegym export`?")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load(root)


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
    ) -> None:
        if mode not in ("control", "shadow"):
            raise ValueError(f"mode={mode!r} must be control or shadow")
        self.scaling, self.routing, self.mode = scaling, routing, mode
        self.interval_s, self.slots_per_replica = interval_s, slots_per_replica
        self.cold_start_s, self.slo_s = cold_start_s, slo_s
        self.rng = random.Random(seed)
        names = routing.feature_names if routing is not None else ()
        backend_names = [n.removeprefix("busy_") for n in names if n.startswith("busy_")] or ["default"]
        self.backends = [
            Backend(
                name,
                capability=0.3 + 0.5 * k / max(1, len(backend_names) - 1),
                usd_per_mtok_out=0.6 * 4**k,
                latency_s=0.02 * (1 + k),
            )
            for k, name in enumerate(backend_names)
        ]
        self.tenants = [n.removeprefix("tenant_") for n in names if n.startswith("tenant_")] or ["default"]
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
        choice = int(self.routing.decide({n: features[n] for n in self.routing.feature_names}))
        self.stats.routing_decisions.append(choice)
        return choice if self.mode == "control" else fallback

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
        self.total.served += self.stats.served
        log.info(json.dumps({"mode": self.mode, "features": features, "scaling_decision": decision}))
        if self.mode == "control":
            self.scale_to(max(1, decision))
        self.stats = Stats()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scaling", required=True, help="bundle directory of a scaling policy")
    parser.add_argument("--routing", default=None, help="bundle directory of a routing policy")
    parser.add_argument("--mode", choices=["control", "shadow"], default="shadow")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds to serve")
    parser.add_argument("--interval", type=float, default=1.0, help="control interval in seconds")
    parser.add_argument("--rate", type=float, default=50.0, help="calm arrival rate, requests/s")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    service = AgentService(
        load_bundle(args.scaling),
        load_bundle(args.routing) if args.routing else None,
        mode=args.mode,
        interval_s=args.interval,
    )
    total = asyncio.run(service.run(args.duration, args.rate, 4 * args.rate))
    print(
        f"{args.mode}: served {total.served} requests; {len(total.scaling_decisions)} scaling decisions "
        f"(last {total.scaling_decisions[-1:]}), {len(total.routing_decisions)} routing decisions"
    )


if __name__ == "__main__":
    main()
