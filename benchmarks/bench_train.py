"""Training speed: PPO on Autoscaling-v0 against PPO on CartPole-v1, and the cost of MLflow tracking.

Prints, from one process (medians over repeats):

- PPO timesteps/s on ``servegym/Autoscaling-v0`` (default scenario) and on ``CartPole-v1``
  with the same SB3 set-up (the agent config ``agent=ppo``: 4 envs in a DummyVecEnv,
  VecNormalize, the same PPO hyperparameters, one torch thread), and their ratio.
  Target: >= 0.5, i.e. the simulator costs no more than SB3's own per-step overhead. It
  also prints the split of a timestep between SB3 and the simulator: one Autoscaling-v0
  step is one 15 s control interval, about 300 simulated requests in the default
  scenario, so the ratio is bounded by the simulator's requests/s, not by env overhead.
  The "bound" line puts those requests through the plain SimPy M/M/c queue of
  ``bench_sim.py`` instead: the ratio even a bare SimPy queue, with no platform, could reach.
  Autoscaling-v0 is measured once more with the envs in SubprocVecEnv workers (the
  agent config's ``subprocess: true``): what spreading the simulation over the cores buys.
- the wall time of the same Autoscaling-v0 training without tracking (bare ``learn``) and
  through ``run_training`` with MLflow tracking (params, config artifact, batched metrics,
  checkpoints, policy artifact; final evaluation off), and the overhead in percent.
  Target: at most 10%.

Usage: ``python benchmarks/bench_train.py [--timesteps N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import mlflow
import torch
from bench_sim import mmc_requests_per_s
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import servegym.envs  # noqa: F401 - registers the environments
from servegym.agents.sb3 import build_model, make_vec_env
from servegym.experiments.schema import register_configs
from servegym.experiments.train import run_training


def _agent_config() -> dict[str, Any]:
    register_configs()
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        cfg = compose("train", overrides=["agent=ppo"])
    agent = OmegaConf.to_container(cfg.agent, resolve=True)
    assert isinstance(agent, dict)
    return {str(k): v for k, v in agent.items()}


def ppo_steps_per_s(
    env_id: str, timesteps: int, agent: dict[str, Any], seed: int = 0, subprocess: bool = False
) -> float:
    """Timesteps/s of bare PPO ``learn`` on ``env_id`` with the agent config's set-up.

    ``subprocess`` steps the servegym envs in SubprocVecEnv worker processes (the agent
    config's ``subprocess: true``) instead of in this process.
    """
    n_envs = int(agent["n_envs"])
    if env_id.startswith("servegym/"):
        venv = make_vec_env(env_id, {}, n_envs, seed, "ppo", subprocess=subprocess)
    else:
        venv = DummyVecEnv([lambda: gym.make(env_id) for _ in range(n_envs)])
        venv.seed(seed)
    gamma = float(agent["hyperparams"].get("gamma", 0.99))
    model = build_model("ppo", VecNormalize(venv, gamma=gamma), agent["hyperparams"], seed)
    start = time.perf_counter()
    model.learn(timesteps)
    rate = timesteps / (time.perf_counter() - start)
    venv.close()
    return rate


def _requests_per_step() -> float:
    """Simulated requests per Autoscaling-v0 step: one control interval of the default scenario."""
    env = gym.make("servegym/Autoscaling-v0")
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps, done = steps + 1, terminated or truncated
    return float(env.unwrapped.platform.arrived) / steps  # type: ignore[attr-defined]


def tracked_wall_s(timesteps: int, store: Path) -> float:
    """Wall time of ``run_training`` (PPO, Autoscaling-v0) with MLflow tracking to a SQLite store."""
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        cfg = compose(
            "train",
            overrides=[
                "agent=ppo",
                f"total_timesteps={timesteps}",
                f"checkpoint_every_steps={max(timesteps // 2, 1)}",
                "eval_seeds=[]",
                "progress_bar=false",
                f"tracking.uri=sqlite:///{store}",
            ],
        )
    start = time.perf_counter()
    run_training(cfg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    agent = _agent_config()
    torch.set_num_threads(1)  # as servegym train does (torch_threads: 1), for every path measured here
    n = args.timesteps
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlflow.db"
        tracked_wall_s(1024, store)  # create the store's tables outside the measurement (one whole rollout)
        cartpole, autoscaling, subproc, bare_wall, tracked_wall = [], [], [], [], []
        for _ in range(args.repeats):
            cartpole.append(ppo_steps_per_s("CartPole-v1", n, agent))
            rate = ppo_steps_per_s("servegym/Autoscaling-v0", n, agent)
            autoscaling.append(rate)
            subproc.append(ppo_steps_per_s("servegym/Autoscaling-v0", n, agent, subprocess=True))
            bare_wall.append(n / rate)
            tracked_wall.append(tracked_wall_s(n, store))
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    cp, au = statistics.median(cartpole), statistics.median(autoscaling)
    bare, tracked = statistics.median(bare_wall), statistics.median(tracked_wall)
    print(f"PPO, {n} timesteps, {agent['n_envs']} envs, VecNormalize; medians of {args.repeats}")
    print(f"  CartPole-v1              {cp:9.0f} timesteps/s")
    print(f"  servegym/Autoscaling-v0  {au:9.0f} timesteps/s")
    print(
        f"  servegym/Autoscaling-v0  {statistics.median(subproc):9.0f} timesteps/s with subprocess: true "
        f"({agent['n_envs']} worker processes on {os.cpu_count()} cores)"
    )
    print(f"  ratio Autoscaling/CartPole {au / cp:.3f}  (target >= 0.5)")
    sb3_ms, sim_ms = 1e3 / cp, 1e3 / au - 1e3 / cp
    per_step = _requests_per_step()
    print(
        f"  per timestep: SB3 {sb3_ms:.2f} ms (CartPole), simulator {sim_ms:.2f} ms for ~{per_step:.0f} simulated "
        f"requests ({per_step * au:,.0f} simulated requests/s while training)"
    )
    # The bound the target meets: the same requests per step through the plain SimPy
    # M/M/c queue of bench_sim (the reference of bench_envs), with no platform at all.
    mmc_ms = 1e3 * per_step / statistics.median(mmc_requests_per_s(int(per_step) * 200, seed=k) for k in range(3))
    print(
        f"  bound: with the plain SimPy M/M/c queue as the whole simulator ({mmc_ms:.2f} ms for those requests), "
        f"the ratio could reach at most {sb3_ms / (sb3_ms + mmc_ms):.3f}"
    )
    print(f"  wall without tracking {bare:7.2f} s, with MLflow tracking {tracked:7.2f} s, "
          f"overhead {100 * (tracked / bare - 1):+.1f}%  (target <= 10%)")


if __name__ == "__main__":
    main()
