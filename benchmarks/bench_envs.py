"""Environment speed: env steps/s and simulated requests/s per environment, random policy.

Each environment runs full episodes of its default scenario with uniformly random
actions (``gymnasium.make``, so with the registered wrappers); the plain SimPy M/M/c
queue of ``bench_sim.py`` runs in the same process for the ratio, right after each
episode. Both start from a freshly collected heap (``gc.collect()`` before the clock
starts), so neither pays for freeing the other's garbage. Figures are medians of
``--repeats``. Target: every env at >= 0.4x the plain queue's simulated requests/s.

    python benchmarks/bench_envs.py [--repeats 5] [--duration 1800]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import gymnasium as gym
from bench_sim import mmc_requests_per_s

import servegym.envs


def episode(env_id: str, duration_s: float, seed: int) -> tuple[float, float, int]:
    """One episode with random actions; returns (steps/s, simulated requests/s, requests)."""
    env = gym.make(env_id, duration_s=duration_s)
    space = env.action_space  # the policy: Gymnasium's own uniform sampling of the space
    space.seed(seed)
    gc.collect()  # the previous run's garbage is freed now, not inside this run's timing
    start = time.perf_counter()
    env.reset(seed=seed)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(space.sample())
        steps += 1
        done = terminated or truncated
    elapsed = time.perf_counter() - start
    requests = env.unwrapped.platform.arrived  # type: ignore[attr-defined]
    env.close()
    return steps / elapsed, requests / elapsed, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=1800.0, help="simulated seconds per episode")
    args = parser.parse_args()
    print(f"default scenario, {args.duration:g} simulated s per episode, random actions, medians of {args.repeats}")
    print(f"{'environment':<26}{'steps/s':>12}{'sim req/s':>12}{'M/M/c req/s':>13}{'ratio':>8}")
    for env_id in servegym.envs.ENV_IDS:
        episode(env_id, 60.0, 0)  # warm-up: intent catalogues are built once per process
        steps, rates, ratios, refs = [], [], [], []
        for k in range(args.repeats):
            step_rate, req_rate, n = episode(env_id, args.duration, k)
            ref = mmc_requests_per_s(n)
            steps.append(step_rate)
            rates.append(req_rate)
            refs.append(ref)
            ratios.append(req_rate / ref)
        print(
            f"{env_id:<26}{statistics.median(steps):>12,.0f}{statistics.median(rates):>12,.0f}"
            f"{statistics.median(refs):>13,.0f}{statistics.median(ratios):>8.2f}"
        )
    print("target: ratio >= 0.4 for every environment")


if __name__ == "__main__":
    main()
