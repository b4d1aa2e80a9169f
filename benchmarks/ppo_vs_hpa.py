"""Does PPO beat a tuned Kubernetes HPA on Autoscaling-v0's default scenario? Measured, not assumed.

1. Tune HPA: grid over ``target_utilisation``, each value scored by its mean episode
   return (the env's reward: minus the scenario's objective, that is cost plus the prices of
   SLO misses, bad answers and dropped or failed requests) on tuning seeds that are
   disjoint from the test seeds.
2. Train PPO with ``servegym train`` (``agent=ppo``, tracked in MLflow) for ``--timesteps``.
3. Evaluate both on the same 5 test seeds (common random numbers) and print their KPI rows
   (mean ± 95% CI over seeds, the worst seed's objective and drop rate) and the paired
   differences.

Usage: ``python benchmarks/ppo_vs_hpa.py [--timesteps 100000] [--tracking-uri sqlite:///mlflow.db]``.
Takes minutes: PPO on Autoscaling-v0 runs at about 100-200 timesteps/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from hydra import compose, initialize_config_module

import servegym.envs  # noqa: F401 - registers the environments
from servegym.experiments.schema import register_configs
from servegym.experiments.stats import estimate, paired_difference
from servegym.experiments.train import evaluate_in_env, run_training
from servegym.policies import HPA, scaling_kwargs
from servegym.policies.base import Policy
from servegym.sim.config import load_scenario
from servegym.sim.objective import resolve_prices

ENV_ID = "servegym/Autoscaling-v0"
COLUMNS = ("episode_return", "latency_p95_s", "slo_attainment", "cost_usd", "drop_rate", "failure_rate")
TEST_SEEDS = (0, 1, 2, 3, 4)
TUNE_SEEDS = (100, 101, 102)


def hpa(target: float) -> Policy:
    return HPA(**scaling_kwargs(load_scenario("default")), target_utilisation=target)


def mean_return(policy: Policy, seeds: Sequence[int]) -> float:
    runs = evaluate_in_env(policy, ENV_ID, {}, seeds)
    return sum(r["episode_return"] for r in runs) / len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()

    start = time.perf_counter()
    grid = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    scores = {t: mean_return(hpa(t), TUNE_SEEDS) for t in grid}
    best = max(scores, key=lambda t: scores[t])
    print("HPA tuning (mean return on tuning seeds): " + ", ".join(f"{t:.1f}: {s:.2f}" for t, s in scores.items()))
    print(f"  best target_utilisation = {best} ({time.perf_counter() - start:.0f} s)")

    register_configs()
    overrides = [
        "agent=ppo",
        f"total_timesteps={args.timesteps}",
        "eval_seeds=[]",  # evaluated below, on the test seeds, beside HPA
        "robustness.enabled=false",
        "progress_bar=auto",
    ]
    if args.tracking_uri:
        overrides.append(f"tracking.uri={args.tracking_uri}")
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        cfg = compose("train", overrides=overrides)
    start = time.perf_counter()
    trained = run_training(cfg)
    print(f"PPO: {trained.timesteps} timesteps in {time.perf_counter() - start:.0f} s (MLflow run {trained.run_id})")

    rows = {
        f"hpa(target={best})": evaluate_in_env(hpa(best), ENV_ID, {}, TEST_SEEDS),
        "ppo": evaluate_in_env(trained.policy, ENV_ID, {}, TEST_SEEDS),
    }
    print(f"\nAutoscaling-v0, default scenario, test seeds {list(TEST_SEEDS)} (mean ± 95% CI)")
    print(resolve_prices(load_scenario("default")).describe() + "; the return is minus the objective")
    print(f"{'policy':24}" + "".join(f"{c:>26}" for c in COLUMNS))
    for name, runs in rows.items():
        print(f"{name:24}" + "".join(f"{estimate([r[c] for r in runs])!s:>26}" for c in COLUMNS))
    for name, runs in rows.items():
        worst = max(zip((r["episode_return"] for r in runs), TEST_SEEDS, strict=True), key=lambda p: -p[0])
        drops = max(zip((r["drop_rate"] for r in runs), TEST_SEEDS, strict=True))
        print(f"{name:24} worst seed: return {worst[0]:.1f} (seed {worst[1]}), drops {drops[0]:.2%} (seed {drops[1]})")
    names = list(rows)
    for c in COLUMNS:
        diff = paired_difference([r[c] for r in rows[names[1]]], [r[c] for r in rows[names[0]]])
        print(f"ppo - hpa  {c:16} {diff}")


if __name__ == "__main__":
    main()
