"""Decision speed of an exported policy: the numpy runtime against ONNX, torch and SB3.

A PPO ``MlpPolicy`` (SB3's default actor, 64x64 tanh) for Autoscaling-v0 with
VecNormalize statistics is exported to a temporary bundle; the same observations are
then decided by

* the bundle's numpy runtime (``decide``: checks included),
* the bundle's ONNX graph through onnxruntime,
* the raw torch actor (normalisation in numpy, forward pass and argmax under ``no_grad``),
* SB3's ``predict`` (what ``SB3Policy.act`` calls), and ``SB3Policy.act`` itself,

one observation at a time (median µs per decision over ``--repeats`` runs), and in
batches of ``--batch`` (decisions per second). The exported HPA (stateful windows)
is timed too. Targets: the runtime at <= 10 µs per decision and >= 15x SB3 ``predict``.

    python benchmarks/bench_runtime.py [--decisions 5000] [--repeats 5] [--batch 10000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped, unused-ignore]
import torch
from stable_baselines3 import PPO

import servegym.envs  # noqa: F401 - registers the environments
from servegym.agents.sb3 import SB3Policy
from servegym.deploy import runtime
from servegym.deploy.export import export_policy
from servegym.policies import HPA, scaling_kwargs
from servegym.sim.config import load_scenario


def per_decision_us(decide: Callable[[np.ndarray], Any], observations: np.ndarray, repeats: int) -> float:
    """Median over ``repeats`` of the mean µs per single decision over ``observations``."""
    for o in observations[:100]:  # warm-up
        decide(o)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for o in observations:
            decide(o)
        runs.append((time.perf_counter() - start) / len(observations) * 1e6)
    return statistics.median(runs)


def per_second(decide_batch: Callable[[np.ndarray], Any], batch: np.ndarray, repeats: int) -> float:
    """Median decisions per second when ``batch`` is decided in one call."""
    decide_batch(batch[:10])
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        decide_batch(batch)
        runs.append(len(batch) / (time.perf_counter() - start))
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=5000, help="single decisions per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    env = gym.make("servegym/Autoscaling-v0")
    layout = env.unwrapped.layout  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    span = np.minimum(layout.high, 100.0)
    observations = (rng.random((max(args.decisions, args.batch), len(layout))) * span).astype(np.float32)
    obs_rms = (observations.mean(axis=0).astype(np.float64), observations.var(axis=0).astype(np.float64))
    model = PPO("MlpPolicy", env, seed=0, device="cpu")
    policy = SB3Policy(model, "ppo", layout, obs_rms, env_id="servegym/Autoscaling-v0")
    singles, batch = observations[: args.decisions], observations[: args.batch]

    with tempfile.TemporaryDirectory() as tmp:
        bundle = runtime.load(export_policy(policy, Path(tmp) / "ppo", env_id="servegym/Autoscaling-v0"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(Path(tmp) / "ppo" / "policy.onnx"), options, ["CPUExecutionProvider"])
        scenario = load_scenario("default")
        hpa = runtime.load(export_policy(HPA(**scaling_kwargs(scenario)), Path(tmp) / "hpa"))

    actor: Any = model.policy
    mean, std = obs_rms[0], np.sqrt(obs_rms[1] + 1e-8)

    def torch_decide(o: np.ndarray) -> int:
        x = torch.as_tensor(np.clip((o - mean) / std, -10, 10).astype(np.float32)[None, :])
        with torch.no_grad():
            return int(actor.action_net(actor.mlp_extractor.forward_actor(x)).argmax())

    def torch_batch(xs: np.ndarray) -> Any:
        x = torch.as_tensor(np.clip((xs - mean) / std, -10, 10).astype(np.float32))
        with torch.no_grad():
            return actor.action_net(actor.mlp_extractor.forward_actor(x)).argmax(dim=1)

    def sb3_predict(o: np.ndarray) -> Any:
        return model.predict(policy.normalise(o), deterministic=True)[0]

    def sb3_batch(xs: np.ndarray) -> Any:
        return model.predict(policy.normalise(xs), deterministic=True)[0]

    def onnx_decide(o: np.ndarray) -> Any:
        return session.run(["action"], {"observation": o[None, :]})[0]

    def onnx_batch(xs: np.ndarray) -> Any:
        return session.run(["action"], {"observation": xs})[0]

    rows: list[tuple[str, float, float | None]] = []
    r = args.repeats
    runtime_us = per_decision_us(bundle.decide, singles, r)
    rows.append(("servegym runtime (numpy)", runtime_us, per_second(bundle.decide_batch, batch, r)))
    onnx_us = per_decision_us(onnx_decide, singles, r)
    rows.append(("ONNX graph (onnxruntime)", onnx_us, per_second(onnx_batch, batch, r)))
    rows.append(("raw torch actor", per_decision_us(torch_decide, singles, r), per_second(torch_batch, batch, r)))
    predict_us = per_decision_us(sb3_predict, singles, r)
    rows.append(("SB3 predict", predict_us, per_second(sb3_batch, batch, r)))
    rows.append(("SB3Policy.act", per_decision_us(policy.act, singles, r), None))
    interval = np.abs(observations[: args.decisions]) % 1.0  # utilisation-like values keep HPA busy
    rows.append(("HPA bundle (stateful)", per_decision_us(hpa.decide, interval.astype(np.float32), r), None))

    print(f"PPO MlpPolicy 64x64 tanh, 14 features, VecNormalize; {args.threads} thread(s); medians of {r} runs")
    print(f"{'path':<28}{'us/decision':>13}{'batch decisions/s':>20}")
    for name, us, rate in rows:
        print(f"{name:<28}{us:>13.2f}{'' if rate is None else f'{rate:,.0f}':>20}")
    print(f"runtime vs SB3 predict: {predict_us / runtime_us:.1f}x faster (target >= 15x); "
          f"runtime {runtime_us:.2f} us per decision (target <= 10 us)")


if __name__ == "__main__":
    main()
