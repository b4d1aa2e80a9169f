"""Simulated requests per second: the full platform against a plain SimPy M/M/c queue.

Both run in this process, alternately, and each figure is the median of ``--repeats``
runs, so the ratio holds up on a shared, noisy machine. The platform runs the shipped
default scenario: two tenants, three backends, three exact cache tiers plus the
semantic tier, and target-utilisation autoscaling every control interval. The
reference is the textbook SimPy model: one process per request and a
``simpy.Resource`` of c servers. Target: ratio >= 0.5.

    python benchmarks/bench_sim.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from servegym.sim.config import load_scenario
from servegym.sim.platform import Platform


def mmc_requests_per_s(n: int, servers: int = 8, load: float = 0.85, seed: int = 0) -> float:
    """Run a plain SimPy M/M/c queue for ``n`` requests; return requests simulated per wall second."""
    rng = np.random.default_rng(seed)
    mu = 1.0
    lam = load * servers * mu
    gaps = rng.exponential(1.0 / lam, n).tolist()
    service = rng.exponential(1.0 / mu, n).tolist()
    env = simpy.Environment()
    servers_res = simpy.Resource(env, capacity=servers)
    waits: list[float] = []

    def request(i: int) -> Generator[simpy.Event, Any, None]:
        arrived = env.now
        with servers_res.request() as slot:
            yield slot
            waits.append(env.now - arrived)
            yield env.timeout(service[i])

    def source() -> Generator[simpy.Event, Any, None]:
        for i in range(n):
            yield env.timeout(gaps[i])
            env.process(request(i))

    env.process(source())
    gc.collect()  # earlier runs' garbage is freed now, not inside this run's timing
    start = time.perf_counter()
    env.run()
    elapsed = time.perf_counter() - start
    assert len(waits) == n
    return n / elapsed


def platform_requests_per_s(scenario_name: str) -> tuple[float, int, float]:
    """Run the scenario once; return (requests per wall second, requests, construction seconds)."""
    scenario = load_scenario(scenario_name)
    gc.collect()
    start = time.perf_counter()
    platform = Platform(scenario)
    built = time.perf_counter()
    platform.run()
    elapsed = time.perf_counter() - built
    return platform.arrived / elapsed, platform.arrived, built - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenario", default="default")
    args = parser.parse_args()
    platform_build = platform_requests_per_s(args.scenario)  # warm-up: builds and caches the intent catalogues
    n = platform_build[1]
    ours, ref, builds = [], [], []
    for _ in range(args.repeats):
        rate, n, build_s = platform_requests_per_s(args.scenario)
        ours.append(rate)
        builds.append(build_s)
        ref.append(mmc_requests_per_s(n))
    ratios = [a / b for a, b in zip(ours, ref, strict=True)]
    print(f"scenario {args.scenario!r}: {n} requests per run, {args.repeats} repeats (medians)")
    print(f"  platform (full scenario):        {statistics.median(ours):>10,.0f} simulated requests/s")
    print(f"  plain SimPy M/M/8 (Resource):    {statistics.median(ref):>10,.0f} simulated requests/s")
    print(f"  ratio platform / M/M/c:          {statistics.median(ratios):>10.2f}   (target >= 0.5)")
    print(
        f"  first build (intent catalogues): {platform_build[2]:>10.3f} s; "
        f"later builds {statistics.median(builds):.4f} s"
    )


if __name__ == "__main__":
    main()
