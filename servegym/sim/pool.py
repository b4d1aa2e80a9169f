"""The agent pool: replicas with concurrent slots, a bounded FIFO queue, elastic size.

SimPy's ``Resource`` has a fixed capacity, so the pool keeps its own dispatch: a stack
of free-slot tokens (one replica id per free slot on a ready replica). Scale-up starts
replicas that become ready after a sampled cold start; scale-down first cancels replicas
still starting, then drains the least busy ready ones, which stop taking work and
terminate when their last request finishes. Every replica-second from the start of
provisioning to termination is billed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simpy

from servegym.sim.config import PoolConfig

__all__ = ["DRAINING", "PROVISIONING", "READY", "STOPPED", "Pool", "Replica"]

PROVISIONING = "provisioning"
READY = "ready"
DRAINING = "draining"
STOPPED = "stopped"


@dataclass
class Replica:
    """One agent replica and its lifecycle times (``nan`` until reached)."""

    id: int
    provision_s: float
    ready_s: float = float("nan")
    drain_s: float = float("nan")
    stop_s: float = float("nan")
    state: str = PROVISIONING
    busy: int = 0


class Pool:
    """Replicas x slots behind a bounded queue; see the module docstring."""

    def __init__(
        self, cfg: PoolConfig, env: simpy.Environment, rng: np.random.Generator, on_ready: Callable[[], None]
    ) -> None:
        self.cfg = cfg
        self.env = env
        self.rng = rng
        self.on_ready = on_ready
        self.slots = cfg.slots_per_replica
        self.replicas: list[Replica] = []
        self.free: list[int] = []
        self.queue: deque[int] = deque()
        self.busy = 0
        self.ready = 0
        self.provisioning = 0
        self.draining = 0
        self.target = cfg.initial_replicas
        self.last_change_s = -float("inf")
        self.replica_seconds_closed = 0.0
        # Live (not stopped) replicas and the sum of their provisioning times: billed
        # replica-seconds in O(1) as closed + live * now - provisioned_sum.
        self._live = 0
        self._provisioned_sum = 0.0
        # Time integrals of busy slots and ready slots, for utilisation.
        self.busy_area = 0.0
        self.capacity_area = 0.0
        self._area_t = 0.0
        for _ in range(cfg.initial_replicas):
            self._make_ready(self._new_replica(warm=True))

    # -- slots ---------------------------------------------------------------------------
    def _integrate(self) -> None:
        now = self.env.now
        dt = now - self._area_t
        if dt:
            self.busy_area += self.busy * dt
            self.capacity_area += (self.ready + self.draining) * self.slots * dt
            self._area_t = now

    def acquire(self) -> int:
        """Take a free slot (the caller checked ``self.free``); returns the replica id."""
        now = self.env._now  # the clock without the property call: per-request path
        dt = now - self._area_t
        if dt:  # _integrate(), inlined on this per-request path
            self.busy_area += self.busy * dt
            self.capacity_area += (self.ready + self.draining) * self.slots * dt
            self._area_t = now
        rid = self.free.pop()
        self.replicas[rid].busy += 1
        self.busy += 1
        return rid

    def release(self, rid: int) -> None:
        """Give a slot back; a draining replica stops when its last slot is free."""
        now = self.env._now  # the clock without the property call: per-request path
        dt = now - self._area_t
        if dt:  # _integrate(), inlined on this per-request path
            self.busy_area += self.busy * dt
            self.capacity_area += (self.ready + self.draining) * self.slots * dt
            self._area_t = now
        rep = self.replicas[rid]
        rep.busy -= 1
        self.busy -= 1
        if rep.state == READY:
            self.free.append(rid)
        elif rep.state == DRAINING and rep.busy == 0:
            self.draining -= 1
            self._stop(rep)

    # -- scaling -------------------------------------------------------------------------
    @property
    def replica_count(self) -> int:
        """Replicas that are ready or starting (draining ones are on their way out)."""
        return self.ready + self.provisioning

    def scale_to(self, target: int) -> int:
        """Move towards ``target`` replicas within bounds and cooldown; returns the target in force."""
        now = self.env.now
        target = min(max(int(target), self.cfg.min_replicas), self.cfg.max_replicas)
        current = self.replica_count
        if target == current or now - self.last_change_s < self.cfg.cooldown_s:
            return self.target
        self.last_change_s = now
        self.target = target
        self._integrate()
        if target > current:
            for _ in range(target - current):
                self._new_replica()
            return target
        excess = current - target
        starting = [r for r in reversed(self.replicas) if r.state == PROVISIONING]
        for rep in starting[:excess]:
            self.provisioning -= 1
            self._stop(rep)
            excess -= 1
        if excess:
            ready = sorted((r for r in self.replicas if r.state == READY), key=lambda r: (r.busy, -r.id))
            for rep in ready[:excess]:
                self.ready -= 1
                rep.state = DRAINING
                rep.drain_s = now
                if rep.busy == 0:
                    self._stop(rep)
                else:
                    self.draining += 1
            gone = {r.id for r in ready[:excess]}
            self.free = [rid for rid in self.free if rid not in gone]
        return target

    def _new_replica(self, warm: bool = False) -> Replica:
        """Start a replica; a warm one (present at time 0) skips the cold start."""
        rep = Replica(id=len(self.replicas), provision_s=self.env.now)
        self.replicas.append(rep)
        self.provisioning += 1
        self._live += 1
        self._provisioned_sum += rep.provision_s
        if not warm:
            self.env.timeout(self._cold_start_s(), rep.id).callbacks.append(self._on_cold_start_done)
        return rep

    def _cold_start_s(self) -> float:
        mean, cv = self.cfg.cold_start_mean_s, self.cfg.cold_start_cv
        if mean == 0 or cv == 0:
            return mean
        shape = 1.0 / cv**2
        return float(self.rng.gamma(shape, mean / shape))

    def _on_cold_start_done(self, event: simpy.Event) -> None:
        rep = self.replicas[event._value]
        if rep.state != PROVISIONING:
            return  # cancelled while starting
        self._integrate()
        self._make_ready(rep)
        self.on_ready()

    def _make_ready(self, rep: Replica) -> None:
        self.provisioning -= 1
        self.ready += 1
        rep.state = READY
        rep.ready_s = self.env.now
        self.free.extend([rep.id] * self.slots)

    def _stop(self, rep: Replica) -> None:
        rep.state = STOPPED
        rep.stop_s = self.env.now
        self.replica_seconds_closed += rep.stop_s - rep.provision_s
        self._live -= 1
        self._provisioned_sum -= rep.provision_s

    def replica_seconds(self) -> float:
        """Billed replica-seconds up to now."""
        # The clock without the property call: environments bill replicas at every step.
        return self.replica_seconds_closed + self._live * self.env._now - self._provisioned_sum

    def integrate(self) -> None:
        """Bring the utilisation integrals up to now."""
        self._integrate()
