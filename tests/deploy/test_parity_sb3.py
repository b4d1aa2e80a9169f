"""SB3 networks exported as numpy layers and ONNX decide as SB3Policy does.

Models train for a few hundred steps only: parity needs a network whose decisions vary
with the observation, not a good one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import servegym.envs  # noqa: F401 - registers the environments
from servegym.agents.sb3 import DiscreteAsBox, SB3Policy, build_model, to_discrete
from servegym.deploy import runtime
from servegym.deploy.export import export_policy
from servegym.envs.features import Layout
from tests.deploy.conftest import Recorded

# A light load keeps each training step's simulated interval cheap; the features are the same.
ENV_KW: dict[str, Any] = {"duration_s": 600.0, "overrides": ["workload.rate_rps=3.0"]}
SMALL = {"policy_kwargs": {"net_arch": [32, 32]}}
HYPER: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 32, "batch_size": 16, "n_epochs": 1},
    "a2c": {"n_steps": 8},
    "dqn": {"learning_starts": 16, "train_freq": 4, "batch_size": 16},
    "sac": {"learning_starts": 16, "batch_size": 16, "train_freq": 8},
    "maskable_ppo": {"n_steps": 32, "batch_size": 16, "n_epochs": 1},
}
TRAIN_STEPS = 64


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny networks on a shared two-core machine: threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _train(algo: str, env_id: str, normalise: bool) -> SB3Policy:
    def make() -> gym.Env[Any, Any]:
        env: gym.Env[Any, Any] = gym.make(env_id, **ENV_KW)
        return DiscreteAsBox(env) if algo == "sac" else env

    venv: Any = DummyVecEnv([make])
    if normalise:
        venv = VecNormalize(venv, norm_reward=False)
    hyper = {**HYPER[algo], "policy_kwargs": dict(SMALL["policy_kwargs"])}  # SB3 writes into policy_kwargs
    model = build_model(algo, venv, hyper, seed=0)
    model.learn(TRAIN_STEPS)
    base = gym.make(env_id, **ENV_KW).unwrapped
    names = tuple(getattr(base, "names", None) or base.layout.names)  # type: ignore[attr-defined]
    space = base.observation_space
    layout = Layout(names, np.asarray(space.low, np.float32), np.asarray(space.high, np.float32))
    return SB3Policy.from_training(model, algo, layout, env_id)


def _act(policy: SB3Policy, obs: np.ndarray, mask: np.ndarray | None) -> Any:
    return policy.act(obs, action_masks=mask) if policy.algo == "maskable_ppo" else policy.act(obs)


def _tie(policy: SB3Policy, obs: np.ndarray, mask: np.ndarray | None, got: Any, want: Any) -> bool:
    """Whether ``got`` and ``want`` are both best to float32 precision in the network's own scores."""
    x = torch.as_tensor(policy.normalise(obs)[None, :])
    net: Any = policy.model.policy
    with torch.no_grad():
        if policy.algo == "sac":
            a = float(net.actor(x, deterministic=True)[0, 0])
            n = policy.discrete_n or 2
            position = (a + 1.0) / 2.0 * (n - 1)
            return abs(position - np.floor(position) - 0.5) < 1e-4  # on a rounding boundary
        scores = (net.q_net(x) if policy.algo == "dqn" else net.action_net(net.mlp_extractor.forward_actor(x)))[0]
    s = scores.numpy().astype(np.float64)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    got_a, want_a = np.atleast_1d(got), np.atleast_1d(want)
    parts = np.split(s, np.cumsum(np.asarray(net.action_space.nvec))[:-1]) if len(got_a) > 1 else [s]
    return all(abs(p[g] - p[w]) <= 1e-6 * max(1.0, abs(p.max())) for p, g, w in zip(parts, got_a, want_a, strict=True))


def assert_same_decisions(
    got: np.ndarray, batch_expected: np.ndarray, policy: SB3Policy, obs: np.ndarray, masks: np.ndarray | None
) -> None:
    """``got`` equals what SB3Policy.act decides, except where the network's scores tie in float32.

    SB3's batched ``predict`` stands in for 10,000 calls of ``act``. Wherever ``got``
    differs from it, ``got`` must equal ``act`` on that observation, or both actions must
    score the same to float32 precision (torch and numpy sum in different orders, so a
    near-tie can fall either way); such ties must stay rare.
    """
    differ = np.flatnonzero((got != batch_expected).reshape(len(obs), -1).any(axis=1))
    assert len(differ) <= len(obs) // 1000, f"{len(differ)} of {len(obs)} decisions differ"
    for k in differ:
        mask = None if masks is None else masks[k]
        want = _act(policy, obs[k], mask)
        if not np.array_equal(got[k], want):
            assert _tie(policy, obs[k], mask, got[k], want), f"observation {k}: {got[k]} instead of {want}"


def _batch_actions(policy: SB3Policy, obs: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """What SB3Policy.act gives, for a whole batch at once (SB3's vectorised predict)."""
    x = policy.normalise(obs)
    if masks is not None:
        actions, _ = policy.model.predict(x, deterministic=True, action_masks=masks)  # type: ignore[call-arg]
    else:
        actions, _ = policy.model.predict(x, deterministic=True)
    if policy.discrete_n is not None:
        return np.array([to_discrete(a, policy.discrete_n) for a in actions])
    return np.asarray(actions)


CASES = [
    ("ppo", "servegym/Autoscaling-v0", False),
    ("ppo_vecnormalize", "servegym/Autoscaling-v0", True),
    ("a2c", "servegym/Autoscaling-v0", False),
    ("dqn", "servegym/Autoscaling-v0", False),
    ("sac", "servegym/Autoscaling-v0", True),
    ("maskable_ppo", "servegym/Autoscaling-v0", True),
    ("ppo_multidiscrete", "servegym/Platform-v0", False),
]


def _observations(recorded: Recorded, n_features: int) -> np.ndarray:
    obs = recorded.interval
    if n_features == obs.shape[1] + 1:  # Platform-v0 adds routing_margin
        margin = np.random.default_rng(0).choice([-1.0, -0.2, 0.0, 0.1, 1.0], size=len(obs)).astype(np.float32)
        obs = np.column_stack([obs, margin])
    return obs


@pytest.mark.parametrize(("case", "env_id", "normalise"), CASES, ids=[c[0] for c in CASES])
def test_sb3_parity(recorded: Recorded, tmp_path: Path, case: str, env_id: str, normalise: bool) -> None:
    algo = case.removesuffix("_vecnormalize").removesuffix("_multidiscrete")
    policy = _train(algo, env_id, normalise)
    obs = _observations(recorded, len(policy.layout.names))
    assert len(obs) >= 10_000
    masks = None
    if algo == "maskable_ppo":  # random masks with at least one allowed target, so masking decides often
        rng = np.random.default_rng(1)
        masks = rng.random((len(obs), 49)) < 0.3
        masks[np.arange(len(obs)), rng.integers(0, 49, len(obs))] = True

    expected = _batch_actions(policy, obs, masks)
    assert len(np.unique(expected, axis=0)) > 1, "the network decides the same on every observation"
    bundle = runtime.load(export_policy(policy, tmp_path / case, env_id=env_id))
    assert (bundle.spec["policy"]["normalisation"] is not None) == normalise
    if normalise:
        np.testing.assert_array_equal(bundle.spec["policy"]["normalisation"]["mean"], policy.obs_rms[0])  # type: ignore[index]

    assert_same_decisions(bundle.decide_batch(obs, masks), expected, policy, obs, masks)
    # The single-decision path against SB3Policy.act itself, on a slice (predict is slow).
    for k in range(0, len(obs), 25):
        mask = None if masks is None else masks[k]
        got = bundle.decide(obs[k], mask)
        want = _act(policy, obs[k], mask)
        assert np.array_equal(got, want) or _tie(policy, obs[k], mask, got, want)
        assert type(got) is type(want)

    session = ort.InferenceSession(str(tmp_path / case / "policy.onnx"), providers=["CPUExecutionProvider"])
    onnx_actions, scores = session.run(None, {"observation": obs})
    if masks is not None:  # masks apply to the graph's scores output
        onnx_actions = np.where(masks, scores, -np.inf).argmax(axis=1)
    assert_same_decisions(onnx_actions, expected, policy, obs, masks)


def test_sac_continuous_output_within_tolerance(recorded: Recorded, tmp_path: Path) -> None:
    """The squashed Box action itself (before rounding to a replica count) matches to 1e-5."""
    trained = _train("sac", "servegym/Autoscaling-v0", True)
    # The same actor without the mapping to Discrete(n): its raw continuous action.
    policy = SB3Policy(trained.model, "sac", trained.layout, trained.obs_rms, trained.clip_obs, trained.epsilon)
    obs = recorded.interval
    expected, _ = policy.model.predict(policy.normalise(obs), deterministic=True)
    bundle = runtime.load(export_policy(policy, tmp_path / "sac_box"))
    got = bundle.decide_batch(obs)
    assert got.shape == expected.shape == (len(obs), 1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(bundle.decide(obs[7]), expected[7], rtol=0, atol=1e-5)
